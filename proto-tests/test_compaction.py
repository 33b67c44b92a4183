"""Log compaction with real clients: a `cleanup.policy=compact` topic keeps the latest value per
key at its original offset (confluent-kafka and kafka-python read the same), expired tombstones
go, and `__consumer_offsets` shrinks while every committed offset survives a restart."""

from __future__ import annotations

import re
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer
from kafka import TopicPartition as KTopicPartition

from segments import stored_batches
from sluicenode import wait_until

pytestmark = pytest.mark.sluice_overrides({
    "log.cleaner.backoff.ms": "100",
    "offsets.topic.num.partitions": "1",
    "offsets.topic.segment.bytes": "4096",
    "group.initial.rebalance.delay.ms": "0",
})

KEYS = [f"k{i}" for i in range(20)]
# Tombstones stamped an hour ago are past delete.retention.ms (60 s) when the cleaner sees them;
# tombstones stamped now are not, so they must still be there.
DELETE_RETENTION_MS = 60_000


def stored_records(node, topic: str) -> int:
    return sum(n for _, n in stored_batches(node, topic))


def produce_history(node, topic: str) -> tuple[list, int]:
    """Several values per key, some old and some fresh tombstones, then filler with unique keys
    so the history lies in sealed segments. Returns ((offset, key, value) in offset order,
    filler count)."""
    # Small batches, so segments roll (a segment never splits a batch).
    p = Producer({"bootstrap.servers": node.bootstrap, "linger.ms": 0, "acks": "all",
                  "enable.idempotence": True, "batch.num.messages": 4})
    written: list = []

    def delivered(err, msg):
        assert err is None, err
        written.append((msg.offset(), msg.key().decode(), msg.value()))

    now = int(time.time() * 1000)
    for rnd in range(5):
        for k in KEYS:
            p.produce(topic, key=k, value=f"{k}-v{rnd}".encode(), on_delivery=delivered)
    for k in KEYS[:4]:  # old tombstones: removed by the first clean that sees them
        p.produce(topic, key=k, value=None, timestamp=now - 3_600_000, on_delivery=delivered)
    for k in KEYS[4:6]:  # fresh tombstones: kept
        p.produce(topic, key=k, value=None, on_delivery=delivered)
    for k in KEYS[6:10]:  # one more value for some keys
        p.produce(topic, key=k, value=f"{k}-last".encode(), on_delivery=delivered)
    filler = 150
    for i in range(filler):
        p.produce(topic, key=f"filler-{i}", value=b"x" * 40, on_delivery=delivered)
    assert p.flush(60) == 0
    written.sort()
    return written, filler


def expected_after_clean(written: list) -> list:
    """Latest record per key; old tombstones gone entirely."""
    latest = {}
    for offset, key, value in written:
        latest[key] = (offset, key, value)
    old_tombstones = set(KEYS[:4])
    return sorted(r for k, r in latest.items() if k not in old_tombstones)


def read_confluent(node, topic: str, end: int) -> list:
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": f"read-{time.time()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    out = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                if out and out[-1][0] >= end - 1:
                    break
                continue
            assert m.error() is None, m.error()
            out.append((m.offset(), m.key().decode(), m.value()))
            if m.offset() >= end - 1:
                break
    finally:
        c.close()
    return out


def read_kafka_python(node, topic: str, end: int) -> list:
    c = KafkaConsumer(bootstrap_servers=node.bootstrap, enable_auto_commit=False,
                      consumer_timeout_ms=3000)
    tp = KTopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    out = []
    try:
        for m in c:
            out.append((m.offset, m.key.decode(), m.value))
            if m.offset >= end - 1:
                break
    finally:
        c.close()
    return out


def test_compacted_topic_keeps_the_latest_value_per_key(node):
    topic = "compacted"
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={
        "cleanup.policy": "compact",
        "segment.bytes": "2048",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": str(DELETE_RETENTION_MS),
    })])[topic].result(30)
    written, filler = produce_history(node, topic)
    end = written[-1][0] + 1
    want = expected_after_clean(written)
    history = [r for r in want if not r[1].startswith("filler-")]
    assert len(history) == len(KEYS) - 4

    # The filler's newest segment is the active one and is never cleaned; all of the history
    # and most of the filler is. Await the history part being compacted on disk.
    wait_until(lambda: stored_records(node, topic) <= len(history) + filler + 10
               and "cleaned log" in node.log(), 60, "the cleaner to compact the topic")

    seen = read_confluent(node, topic, end)
    assert [r for r in seen if not r[1].startswith("filler-")] == history
    assert [r for r in seen if r[1].startswith("filler-")] == \
        [r for r in written if r[1].startswith("filler-")], "unique keys all kept"
    assert read_kafka_python(node, topic, end) == seen


def committed(node, group: str, topic: str, parts: int) -> list[int]:
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": group})
    try:
        return [tp.offset for tp in
                c.committed([TopicPartition(topic, p) for p in range(parts)], timeout=10)]
    finally:
        c.close()


def test_consumer_offsets_is_compacted_and_commits_survive_a_restart(node):
    topic, parts, commits = "offsets-source", 3, 300
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    admin.create_topics([NewTopic(topic, parts, 1)])[topic].result(30)
    groups = {"g-a": 0, "g-b": 1000}
    for group, base in groups.items():
        c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": group,
                      "enable.auto.commit": False})
        try:
            for i in range(commits):
                c.commit(offsets=[TopicPartition(topic, p, base + i * 10 + p)
                                  for p in range(parts)], asynchronous=False)
        finally:
            c.close()
    last = {g: [base + (commits - 1) * 10 + p for p in range(parts)] for g, base in groups.items()}
    for g, offsets in last.items():
        assert committed(node, g, topic, parts) == offsets

    written = 2 * commits * parts
    # Far fewer: what remains is the active segment plus one record per (group, partition).
    wait_until(lambda: stored_records(node, "__consumer_offsets") < written // 4, 60,
               "the cleaner to compact __consumer_offsets")
    node.restart(clean=True)
    for g, offsets in last.items():
        assert committed(node, g, topic, parts) == offsets
    loaded = re.findall(r"consumer groups loaded from __consumer_offsets.*?records=(\d+)", node.log())
    assert loaded, "the node logs how many records it replayed"
    assert int(loaded[-1]) < written // 4, f"replayed {loaded[-1]} records"
