"""kafka-python (a pure-Python client with its own protocol code) against a real node:
round trips in every codec, idempotent production, and its admin client."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
from kafka.errors import (
    InvalidConfigurationError,
    InvalidPartitionsError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)

from segments import CODEC_IDS, stored_codecs

N = 20_000


def consume(node, topic: str, partitions: int, n: int) -> list:
    c = KafkaConsumer(bootstrap_servers=node.bootstrap, enable_auto_commit=False,
                      consumer_timeout_ms=10_000, group_id=None)
    try:
        c.assign([TopicPartition(topic, p) for p in range(partitions)])
        for p in range(partitions):
            c.seek_to_beginning(TopicPartition(topic, p))
        out = []
        for msg in c:
            out.append(msg)
            if len(out) >= n:
                break
        return out
    finally:
        c.close()


@pytest.mark.parametrize("codec", [None, "gzip", "snappy", "lz4", "zstd"])
def test_round_trip_in_order(shared_node, codec):
    topic = f"kp-{codec or 'none'}"
    p = KafkaProducer(bootstrap_servers=shared_node.bootstrap, compression_type=codec,
                      acks="all", linger_ms=5)
    futures = [p.send(topic, value=f"{codec}-{i}".encode(), partition=0) for i in range(N)]
    p.flush(60)
    offsets = [f.get(timeout=30).offset for f in futures]
    p.close()
    assert offsets == list(range(N))
    assert stored_codecs(shared_node, topic) == {CODEC_IDS[codec or "none"]}
    got = consume(shared_node, topic, 1, N)
    assert [m.value for m in got] == [f"{codec}-{i}".encode() for i in range(N)]
    assert [m.offset for m in got] == list(range(N))


def test_keys_headers_timestamps(shared_node):
    topic = "kp-headers"
    p = KafkaProducer(bootstrap_servers=shared_node.bootstrap, acks="all")
    p.send(topic, key=b"k", value=b"v", partition=0, timestamp_ms=1_700_000_000_321,
           headers=[("a", b"1"), ("b", b"")]).get(timeout=30)
    p.close()
    [m] = consume(shared_node, topic, 1, 1)
    assert (m.key, m.value, m.timestamp) == (b"k", b"v", 1_700_000_000_321)
    assert m.headers == [("a", b"1"), ("b", b"")]


def test_idempotent_producer(shared_node):
    topic = "kp-idempotent"
    p = KafkaProducer(bootstrap_servers=shared_node.bootstrap, enable_idempotence=True,
                      acks="all", linger_ms=2)
    futures = [p.send(topic, value=f"i{i}".encode(), partition=0) for i in range(5000)]
    p.flush(60)
    assert [f.get(timeout=30).offset for f in futures] == list(range(5000))
    p.close()


def test_admin_client(shared_node):
    a = KafkaAdminClient(bootstrap_servers=shared_node.bootstrap)
    try:
        a.create_topics([NewTopic("kp-admin", 2, 1, topic_configs={"retention.ms": "86400000"})])
        assert "kp-admin" in a.list_topics()
        with pytest.raises(TopicAlreadyExistsError):
            a.create_topics([NewTopic("kp-admin", 2, 1)])
        with pytest.raises(InvalidConfigurationError):
            a.create_topics([NewTopic("kp-bad", 1, 1, topic_configs={"cleanup.policy": "shred"})])

        res = ConfigResource(ConfigResourceType.TOPIC, "kp-admin")
        modified = a.describe_configs([res])["topic"]["kp-admin"]
        assert modified["retention.ms"]["value"] == "86400000"
        assert modified["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
        assert "cleanup.policy" not in modified, "a default reported as modified"
        everything = a.describe_configs([res], config_filter="all")["topic"]["kp-admin"]
        assert everything["cleanup.policy"]["value"] == "delete"
        assert everything["cleanup.policy"]["config_source"] == "DEFAULT_CONFIG"

        a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "kp-admin",
                                        configs={"retention.ms": "1000000"})])
        assert a.describe_configs([res])["topic"]["kp-admin"]["retention.ms"]["value"] == "1000000"

        a.create_partitions({"kp-admin": NewPartitions(total_count=4)})
        with pytest.raises(InvalidPartitionsError):
            a.create_partitions({"kp-admin": NewPartitions(total_count=3)})
        meta = a.describe_topics(["kp-admin"])
        assert len(meta[0]["partitions"]) == 4

        a.delete_topics(["kp-admin"])
        assert "kp-admin" not in a.list_topics()
        with pytest.raises(UnknownTopicOrPartitionError):
            a.delete_topics(["kp-admin"])
    finally:
        a.close()
