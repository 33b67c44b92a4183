"""Checks the hand-written kafkawire helper against an independent implementation: the message
classes kafka-python generates from Apache Kafka's own JSON message definitions. A bug in the
helper would make bad-input tests send something other than what they claim, so it is checked
byte for byte here. Needs no broker."""

import uuid

import pytest
from kafka.protocol.metadata import (
    ApiVersionsRequest,
    ApiVersionsResponse,
    MetadataRequest,
    MetadataResponse,
)

import kafkawire as kw


@pytest.mark.parametrize("version", range(0, 14))
@pytest.mark.parametrize("topics", [None, [], ["a", "topic-b"]], ids=["all", "none", "two"])
def test_metadata_request_matches_kafka_python(version, topics):
    if version == 0 and topics is None:
        topics = []  # v0 has no null array: an empty list means "all topics"
    ref_topics = None if topics is None else [
        MetadataRequest.MetadataRequestTopic(name=n, topic_id=uuid.UUID(int=0)) for n in topics]
    ref = MetadataRequest(topics=ref_topics, allow_auto_topic_creation=True,
                          include_cluster_authorized_operations=False,
                          include_topic_authorized_operations=False)
    ref.with_header(correlation_id=7, client_id="kafkawire")
    mine = kw.request_header(kw.METADATA, version, 7) + kw.metadata_request(version, topics, True)
    assert mine == ref.encode(version=version, header=True)


@pytest.mark.parametrize("version", range(0, 14))
def test_metadata_response_parses_kafka_python_encoding(version):
    R = MetadataResponse
    topic = R.MetadataResponseTopic(
        error_code=0, name="t1", topic_id=uuid.UUID(int=42), is_internal=False,
        authorized_operations=set(),
        partitions=[R.MetadataResponseTopic.MetadataResponsePartition(
            error_code=0, partition_index=3, leader_id=2, leader_epoch=5, replica_nodes=[2, 1],
            isr_nodes=[2], offline_replicas=[1])])
    resp = R(throttle_time_ms=5, cluster_id="cid-1", controller_id=2, error_code=0,
             authorized_operations=set(),
             brokers=[R.MetadataResponseBroker(node_id=2, host="127.0.0.1", port=9092, rack="az-a")],
             topics=[topic])
    m = kw.parse_metadata_response(resp.encode(version=version), version)
    assert [(b.node_id, b.host, b.port) for b in m.brokers] == [(2, "127.0.0.1", 9092)]
    t = m.topic("t1")
    assert t is not None and t.error_code == 0
    p = t.partitions[0]
    assert (p.partition_index, p.leader_id, p.replica_nodes, p.isr_nodes) == (3, 2, [2, 1], [2])
    assert m.controller_id == (2 if version >= 1 else -1)
    assert m.brokers[0].rack == ("az-a" if version >= 1 else None)
    assert m.cluster_id == ("cid-1" if version >= 2 else None)
    assert m.throttle_time_ms == (5 if version >= 3 else 0)
    assert p.offline_replicas == ([1] if version >= 5 else [])
    assert p.leader_epoch == (5 if version >= 7 else -1)
    assert t.topic_id == (uuid.UUID(int=42) if version >= 10 else None)


@pytest.mark.parametrize("version", range(0, 5))
def test_api_versions_request_matches_kafka_python(version):
    ref = ApiVersionsRequest(client_software_name="kafkawire", client_software_version="0.1")
    ref.with_header(correlation_id=9, client_id="kafkawire")
    mine = kw.request_header(kw.API_VERSIONS, version, 9) + kw.api_versions_request(version)
    assert mine == ref.encode(version=version, header=True)


@pytest.mark.parametrize("version", range(0, 5))
def test_api_versions_response_parses_kafka_python_encoding(version):
    R = ApiVersionsResponse
    resp = R(error_code=0, throttle_time_ms=3, api_keys=[
        R.ApiVersion(api_key=18, min_version=0, max_version=4),
        R.ApiVersion(api_key=3, min_version=0, max_version=12)])
    a = kw.parse_api_versions_response(resp.encode(version=version), version)
    assert a.error_code == 0
    assert a.supports(kw.API_VERSIONS, 4) and a.supports(kw.METADATA, 12)
    assert not a.supports(kw.METADATA, 13) and not a.supports(kw.PRODUCE, 3)
    assert a.throttle_time_ms == (3 if version >= 1 else 0)


def test_api_versions_error_response_is_read_as_v0():
    # KIP-511: the answer to a too-new request is UNSUPPORTED_VERSION in v0 form.
    resp = ApiVersionsResponse(error_code=kw.UNSUPPORTED_VERSION, throttle_time_ms=0, api_keys=[
        ApiVersionsResponse.ApiVersion(api_key=18, min_version=0, max_version=4)])
    a = kw.parse_api_versions_response(resp.encode(version=0), 99)
    assert a.error_code == kw.UNSUPPORTED_VERSION and a.parsed_as_version == 0
    assert a.api_keys[18].max_version == 4


def test_flexible_version_table_matches_kafka_message_definitions():
    from kafka.protocol.schemas import load_json  # noqa: F401  (the JSON loader kafka-python ships)
    import glob
    import json
    import os
    import re

    import kafka.protocol.schemas as schemas
    resources = os.path.join(os.path.dirname(schemas.__file__), "resources")
    checked = 0
    for path in glob.glob(os.path.join(resources, "*Request.json")):
        with open(path) as f:
            spec = json.loads(re.sub(r"^\s*//.*$", "", f.read(), flags=re.M))
        if spec.get("type") != "request" or spec["apiKey"] not in kw.FIRST_FLEXIBLE_VERSION:
            continue
        flex = spec["flexibleVersions"]
        want = None if flex == "none" else int(flex.rstrip("+"))
        assert kw.FIRST_FLEXIBLE_VERSION[spec["apiKey"]] == want, spec["name"]
        checked += 1
    assert checked >= 40


def test_varints_round_trip():
    for v in [0, 1, -1, 63, -64, 64, 300, -300, 2**31 - 1, -(2**31), 2**62]:
        w = kw.Writer().varint(v)
        assert kw.Reader(w.bytes()).varint() == v
    for v in [0, 1, 127, 128, 16383, 16384, 2**32]:
        assert kw.Reader(kw.Writer().uvarint(v).bytes()).uvarint() == v
    assert kw.Writer().uvarint(300).bytes() == b"\xac\x02"


def test_reader_reports_underflow():
    with pytest.raises(kw.WireError, match="underflow"):
        kw.Reader(b"\x00\x05ab").string()


@pytest.mark.parametrize("version", range(2, 8))
def test_create_topics_request_matches_kafka_python(version):
    from kafka.protocol.admin import CreateTopicsRequest as Req
    T = Req.CreatableTopic
    ref = Req(topics=[
        T(name="rf3", num_partitions=3, replication_factor=3, assignments=[], configs=[
            T.CreatableTopicConfig(name="retention.ms", value="1000"),
            T.CreatableTopicConfig(name="cleanup.policy", value=None)]),
        T(name="placed", num_partitions=-1, replication_factor=-1, configs=[], assignments=[
            T.CreatableReplicaAssignment(partition_index=0, broker_ids=[1, 2, 3]),
            T.CreatableReplicaAssignment(partition_index=1, broker_ids=[2])]),
    ], timeout_ms=30000, validate_only=True)
    ref.with_header(correlation_id=11, client_id="kafkawire")
    mine = kw.request_header(kw.CREATE_TOPICS, version, 11) + kw.create_topics_request(
        version, [kw.NewTopic("rf3", 3, 3, configs={"retention.ms": "1000", "cleanup.policy": None}),
                  kw.NewTopic("placed", assignments={0: [1, 2, 3], 1: [2]})],
        timeout_ms=30000, validate_only=True)
    assert mine == ref.encode(version=version, header=True)


@pytest.mark.parametrize("version", range(2, 8))
def test_create_topics_response_parses_kafka_python_encoding(version):
    from kafka.protocol.admin import CreateTopicsResponse as Resp
    T = Resp.CreatableTopicResult
    resp = Resp(throttle_time_ms=4, topics=[
        T(name="ok", topic_id=uuid.UUID(int=7), error_code=0, error_message=None,
          num_partitions=3, replication_factor=3, configs=[
              T.CreatableTopicConfigs(name="retention.ms", value="1000", read_only=False,
                                      config_source=5, is_sensitive=False)]),
        T(name="dup", topic_id=uuid.UUID(int=0), error_code=kw.TOPIC_ALREADY_EXISTS,
          error_message="exists", num_partitions=-1, replication_factor=-1, configs=None),
    ])
    c = kw.parse_create_topics_response(resp.encode(version=version), version)
    assert c.throttle_time_ms == 4
    ok, dup = c.topic("ok"), c.topic("dup")
    assert (ok.error_code, ok.error_message) == (0, None)
    assert (dup.error_code, dup.error_message) == (kw.TOPIC_ALREADY_EXISTS, "exists")
    assert (ok.num_partitions, ok.replication_factor) == ((3, 3) if version >= 5 else (-1, -1))
    assert ok.topic_id == (uuid.UUID(int=7) if version >= 7 else None)
