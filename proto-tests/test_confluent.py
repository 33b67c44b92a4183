"""confluent-kafka (librdkafka 2.x) against a real node: produce/consume round trips in every
codec, idempotent producers, offsets by time, DeleteRecords, and the admin API."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, OFFSET_BEGINNING, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
)

from segments import assert_stored_by_librdkafka
from sluicenode import wait_until


def producer(node, **conf) -> Producer:
    base = {"bootstrap.servers": node.bootstrap, "linger.ms": 5}
    base.update(conf)
    return Producer(base)


def admin(node) -> AdminClient:
    return AdminClient({"bootstrap.servers": node.bootstrap})


def produce_all(p: Producer, topic: str, values, partition: int | None = None, keys=None):
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)

    for i, v in enumerate(values):
        kwargs = {"value": v, "on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        if keys is not None:
            kwargs["key"] = keys[i]
        while True:
            try:
                p.produce(topic, **kwargs)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(60) == 0, "messages still queued after 60 s"
    assert not errors, f"delivery errors: {errors[:3]}"


def consume_exactly(node, topic: str, partitions: int, n: int, timeout: float = 60.0):
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": "unused-assign-only",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        got, eof = [], set()
        deadline = time.monotonic() + timeout
        while len(eof) < partitions or len(got) < n:
            assert time.monotonic() < deadline, f"consumed {len(got)} of {n} in {timeout} s"
            msg = c.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(msg.partition())
                    continue
                raise KafkaException(msg.error())
            eof.discard(msg.partition())
            got.append(msg)
        return got
    finally:
        c.close()


@pytest.mark.parametrize("codec,n", [("none", 100_000), ("gzip", 100_000), ("snappy", 100_000),
                                     ("lz4", 100_000), ("zstd", 100_000)])
def test_round_trip_in_order(shared_node, codec, n):
    topic = f"ck-{codec}"
    values = [f"{codec}:{i}".encode() for i in range(n)]
    produce_all(producer(shared_node, **{"compression.type": codec, "acks": "all"}), topic,
                values, partition=0)
    assert_stored_by_librdkafka(shared_node, topic, codec)
    got = consume_exactly(shared_node, topic, 1, n)
    assert [m.value() for m in got] == values
    assert [m.offset() for m in got] == list(range(n))


def test_keys_headers_and_timestamps_survive(shared_node):
    topic = "ck-headers"
    p = producer(shared_node)
    p.produce(topic, key=b"k", value=b"v", headers=[("h1", b"x"), ("h1", b"y"), ("h2", None)],
              timestamp=1_700_000_000_123, partition=0)
    assert p.flush(30) == 0
    [m] = consume_exactly(shared_node, topic, 1, 1)
    assert (m.key(), m.value()) == (b"k", b"v")
    assert m.headers() == [("h1", b"x"), ("h1", b"y"), ("h2", None)]
    assert m.timestamp()[1] == 1_700_000_000_123


def test_many_partitions_keep_per_partition_order(shared_node):
    topic = "ck-multi"
    a = admin(shared_node)
    a.create_topics([NewTopic(topic, num_partitions=8, replication_factor=1)])[topic].result(30)
    keys = [f"key-{i % 97}".encode() for i in range(20_000)]
    values = [f"{i}".encode() for i in range(20_000)]
    produce_all(producer(shared_node, **{"compression.type": "lz4"}), topic, values, keys=keys)
    got = consume_exactly(shared_node, topic, 8, 20_000)
    by_key: dict[bytes, list[int]] = {}
    partition_of: dict[bytes, int] = {}
    for m in got:
        by_key.setdefault(m.key(), []).append(int(m.value()))
        assert partition_of.setdefault(m.key(), m.partition()) == m.partition()
    for key, seen in by_key.items():
        assert seen == sorted(seen), f"records of {key!r} out of order"
    assert sum(len(v) for v in by_key.values()) == 20_000
    assert len({m.partition() for m in got}) == 8


def test_idempotent_producer(shared_node):
    topic = "ck-idempotent"
    p = producer(shared_node, **{"enable.idempotence": True, "max.in.flight.requests.per.connection": 5,
                                 "linger.ms": 1, "batch.num.messages": 100})
    values = [f"i{i}".encode() for i in range(10_000)]
    produce_all(p, topic, values, partition=0)
    got = consume_exactly(shared_node, topic, 1, 10_000)
    assert [m.value() for m in got] == values


def test_transactions_are_refused_clearly(shared_node):
    p = producer(shared_node, **{"transactional.id": "tx-1"})
    with pytest.raises(KafkaException) as err:
        p.init_transactions(10)
    assert err.value.args[0].code() in (KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                                        KafkaError._TIMED_OUT)


def test_offsets_for_times_and_list_offsets(shared_node):
    topic = "ck-times"
    p = producer(shared_node)
    for i in range(10):
        p.produce(topic, value=f"t{i}".encode(), timestamp=1_000_000 + i * 1000, partition=0)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": shared_node.bootstrap, "group.id": "times"})
    try:
        [tp] = c.offsets_for_times([TopicPartition(topic, 0, 1_004_500)], timeout=10)
        assert tp.offset == 5
        [tp] = c.offsets_for_times([TopicPartition(topic, 0, 9_999_999)], timeout=10)
        assert tp.offset in (-1, 10)  # no such record: Kafka reports -1, librdkafka maps to end
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        assert (low, high) == (0, 10)
    finally:
        c.close()
    a = admin(shared_node)
    res = a.list_offsets({TopicPartition(topic, 0): OffsetSpec.max_timestamp()})
    info = res[TopicPartition(topic, 0)].result(10)
    assert (info.offset, info.timestamp) == (9, 1_009_000)
    res = a.list_offsets({TopicPartition(topic, 0): OffsetSpec.earliest()})
    assert res[TopicPartition(topic, 0)].result(10).offset == 0


def test_delete_records_moves_the_log_start(shared_node):
    topic = "ck-delete-records"
    produce_all(producer(shared_node), topic, [f"d{i}".encode() for i in range(30)], partition=0)
    a = admin(shared_node)
    res = a.delete_records([TopicPartition(topic, 0, 12)])
    assert res[TopicPartition(topic, 0, 12)].result(10).low_watermark == 12
    got = consume_exactly(shared_node, topic, 1, 18)
    assert [m.offset() for m in got] == list(range(12, 30))
    too_far = a.delete_records([TopicPartition(topic, 0, 1000)])
    with pytest.raises(KafkaException) as err:
        too_far[TopicPartition(topic, 0, 1000)].result(10)
    assert err.value.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE


def test_admin_create_describe_alter_delete(shared_node):
    a = admin(shared_node)
    topic = "ck-admin"
    a.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1,
                              config={"retention.ms": "3600000", "cleanup.policy": "delete"})])[topic].result(30)
    md = a.list_topics(timeout=10)
    assert len(md.topics[topic].partitions) == 3

    # Existing topic, bad config, bad partition count, bad name: each its own Kafka error.
    cases = {
        topic: (NewTopic(topic, 1, 1), KafkaError.TOPIC_ALREADY_EXISTS),
        "ck-bad-config": (NewTopic("ck-bad-config", 1, 1, config={"retention.ms": "soon"}),
                          KafkaError.INVALID_CONFIG),
        "ck-bad-unknown-config": (NewTopic("ck-bad-unknown-config", 1, 1, config={"no.such": "1"}),
                                  KafkaError.INVALID_CONFIG),
        "ck-bad-partitions": (NewTopic("ck-bad-partitions", num_partitions=0, replication_factor=1),
                              KafkaError.INVALID_PARTITIONS),
        "ck-bad-rf": (NewTopic("ck-bad-rf", 1, 3), KafkaError.INVALID_REPLICATION_FACTOR),
        "bad/name": (NewTopic("bad/name", 1, 1), KafkaError.TOPIC_EXCEPTION),
    }
    for name, (spec, code) in cases.items():
        with pytest.raises(KafkaException) as err:
            a.create_topics([spec])[name].result(30)
        assert err.value.args[0].code() == code, f"{name}: {err.value}"

    # validate_only creates nothing.
    a.create_topics([NewTopic("ck-validate-only", 2, 1)], validate_only=True)["ck-validate-only"].result(30)
    assert "ck-validate-only" not in a.list_topics(timeout=10).topics

    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = a.describe_configs([res])[res].result(30)
    assert configs["retention.ms"].value == "3600000"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    assert configs["segment.bytes"].value == "1073741824"

    alter = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND),
    ])
    a.incremental_alter_configs([alter])[alter].result(30)
    configs = a.describe_configs([res])[res].result(30)
    assert configs["retention.ms"].value == "7200000"
    assert set(configs["cleanup.policy"].value.split(",")) == {"delete", "compact"}

    bad = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("segment.bytes", "1", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as err:
        a.incremental_alter_configs([bad])[bad].result(30)
    assert err.value.args[0].code() == KafkaError.INVALID_CONFIG

    a.create_partitions([NewPartitions(topic, 5)])[topic].result(30)
    wait_until(lambda: len(a.list_topics(timeout=10).topics[topic].partitions) == 5, 10,
               "5 partitions in metadata")
    with pytest.raises(KafkaException) as err:
        a.create_partitions([NewPartitions(topic, 2)])[topic].result(30)
    assert err.value.args[0].code() == KafkaError.INVALID_PARTITIONS

    broker = ConfigResource(ConfigResource.Type.BROKER, "1")
    bconf = a.describe_configs([broker])[broker].result(30)
    assert bconf["num.partitions"].value == "1"
    assert bconf["log.retention.ms"].value == "604800000"
    # The storage layer's own broker keys are listed too, read-only: it reads them at start-up,
    # so changing one at runtime is refused rather than accepted and ignored.
    for key, value in {"log.cleaner.enable": "true", "log.retention.check.interval.ms": "300000",
                       "sluice.log.cache.tail.bytes": "1073741824"}.items():
        entry = bconf[key]
        assert (entry.value, entry.is_read_only, entry.source) == \
            (value, True, ConfigSource.DEFAULT_CONFIG.value), f"{key}: {entry}"
    startup_only = ConfigResource(ConfigResource.Type.BROKER, "1", incremental_configs=[
        ConfigEntry("log.cleaner.backoff.ms", "100", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as err:
        a.incremental_alter_configs([startup_only])[startup_only].result(30)
    assert err.value.args[0].code() == KafkaError.INVALID_REQUEST, err.value

    a.delete_topics([topic])[topic].result(30)
    wait_until(lambda: topic not in a.list_topics(timeout=10).topics, 10, "topic gone")
    with pytest.raises(KafkaException) as err:
        a.delete_topics(["ck-never-existed"])["ck-never-existed"].result(30)
    assert err.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_describe_cluster(shared_node):
    a = admin(shared_node)
    desc = a.describe_cluster().result(10)
    assert [n.id for n in desc.nodes] == [1]
    assert desc.controller.id == 1
    assert len(desc.cluster_id) == 22


def test_produce_to_a_missing_partition_is_refused(shared_node):
    topic = "ck-missing-partition"
    a = admin(shared_node)
    a.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    errors = []
    p = producer(shared_node, **{"message.timeout.ms": 3000})
    p.produce(topic, value=b"x", partition=7, on_delivery=lambda err, msg: errors.append(err))
    p.flush(10)
    assert errors and errors[0].code() == KafkaError._UNKNOWN_PARTITION
