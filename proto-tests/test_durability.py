"""Nothing acknowledged is lost: kill -9 of the node while a real client produces, a torn or
garbage tail on a segment, restarts; and retention drops old segments while the log start moves."""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, OFFSET_BEGINNING, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from sluicenode import wait_until


def read_all(node, topic: str, partition: int = 0, timeout: float = 60) -> list[tuple[int, bytes]]:
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": "durability-reader",
                  "enable.partition.eof": True, "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    return out
                raise AssertionError(m.error())
            out.append((m.offset(), m.value()))
        raise AssertionError(f"no end of partition within {timeout} s ({len(out)} read)")
    finally:
        c.close()


def make_topic(node, name: str, partitions: int = 1, config: dict | None = None) -> None:
    a = AdminClient({"bootstrap.servers": node.bootstrap})
    a.create_topics([NewTopic(name, partitions, 1, config=config or {})])[name].result(30)


def segments(node, topic: str, partition: int = 0) -> list[Path]:
    return sorted((node.data_dir / f"{topic}-{partition}").glob("*.log"))


def test_acknowledged_writes_survive_kill9_during_production(node):
    topic = "dur-kill9"
    make_topic(node, topic)
    acked: dict[int, bytes] = {}
    lock = threading.Lock()

    def on_delivery(err, msg):
        if err is None:
            with lock:
                acked[msg.offset()] = msg.value()

    p = Producer({"bootstrap.servers": node.bootstrap, "acks": "all", "linger.ms": 2,
                  "message.timeout.ms": 5000, "retries": 0})
    killed = False
    for i in range(200_000):
        try:
            p.produce(topic, value=f"m{i:07d}".encode(), partition=0, on_delivery=on_delivery)
        except BufferError:
            p.poll(0.05)
        if i % 1000 == 0:
            p.poll(0)
        with lock:
            n = len(acked)
        if not killed and n >= 20_000:
            node.kill9()  # mid-stream: requests are in flight and batches half written
            killed = True
            break
    assert killed, "the producer never got 20,000 acknowledgements"
    p.flush(10)  # whatever was in flight now fails (broker gone) or was acknowledged before
    node.start()
    stored = dict(read_all(node, topic))
    missing = [o for o in acked if o not in stored]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. offset {missing[0]}"
    for offset, value in acked.items():
        assert stored[offset] == value, f"record at {offset} changed"
    offsets = sorted(stored)
    assert offsets == list(range(len(offsets))), "offsets are not contiguous after recovery"
    # The log keeps going where it stopped.
    p2 = Producer({"bootstrap.servers": node.bootstrap, "acks": "all"})
    p2.produce(topic, value=b"after", partition=0)
    assert p2.flush(30) == 0
    assert read_all(node, topic)[-1] == (len(offsets), b"after")


def test_garbage_tail_is_truncated_and_acknowledged_data_served(node):
    topic = "dur-garbage"
    make_topic(node, topic)
    p = Producer({"bootstrap.servers": node.bootstrap, "acks": "all", "linger.ms": 1})
    for i in range(1000):
        p.produce(topic, value=f"g{i}".encode(), partition=0)
    assert p.flush(30) == 0
    node.kill9()
    [active] = segments(node, topic)[-1:]
    size = active.stat().st_size
    rng = random.Random(7)
    with open(active, "ab") as f:
        f.write(bytes(rng.getrandbits(8) for _ in range(4096)))
    node.start()
    assert active.stat().st_size == size, "the garbage tail was not cut off"
    assert "opened logs after an unclean shutdown" in node.log()
    stored = read_all(node, topic)
    assert stored == [(i, f"g{i}".encode()) for i in range(1000)]
    assert "trunc" in node.log().lower(), "recovery did not say what it cut"


def test_torn_last_batch_is_cut_and_earlier_batches_kept(node):
    topic = "dur-torn"
    make_topic(node, topic)
    p = Producer({"bootstrap.servers": node.bootstrap, "acks": "all", "linger.ms": 0,
                  "batch.num.messages": 1})
    for i in range(50):
        p.produce(topic, value=f"t{i}".encode() * 20, partition=0)
        p.flush(10)
    node.kill9()
    [active] = segments(node, topic)[-1:]
    size = active.stat().st_size
    with open(active, "r+b") as f:
        f.truncate(size - 17)  # the last batch loses its end, as a crash mid-write would leave it
    node.start()
    stored = read_all(node, topic)
    assert stored == [(i, f"t{i}".encode() * 20) for i in range(49)]
    p.produce(topic, value=b"next", partition=0)
    assert p.flush(30) == 0
    assert read_all(node, topic)[-1] == (49, b"next")


def test_clean_restart_keeps_everything_and_recovers_nothing(node):
    topic = "dur-clean"
    make_topic(node, topic, partitions=3)
    p = Producer({"bootstrap.servers": node.bootstrap, "acks": "all"})
    for i in range(3000):
        p.produce(topic, value=f"c{i}".encode(), partition=i % 3)
    assert p.flush(30) == 0
    node.restart(clean=True)
    for part in range(3):
        assert [v for _, v in read_all(node, topic, part)] == \
            [f"c{i}".encode() for i in range(part, 3000, 3)]


def test_retention_drops_old_segments_and_moves_the_log_start(node_factory):
    node = node_factory({"log.retention.check.interval.ms": "200"})
    topic = "dur-retention"
    make_topic(node, topic, config={"retention.ms": "1000", "segment.bytes": "4096"})
    p = Producer({"bootstrap.servers": node.bootstrap, "acks": "all", "linger.ms": 0,
                  "batch.num.messages": 10})
    old_ts = int(time.time() * 1000) - 60_000  # a minute old: already past retention.ms
    for i in range(400):
        p.produce(topic, value=os.urandom(100), partition=0, timestamp=old_ts)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": "ret"})
    try:
        def log_start() -> int:
            low, _high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
            return low
        wait_until(lambda: log_start() == 400, 30, "retention to move the log start past every record")
        # The segment files go right after the log start moves.
        wait_until(lambda: len(segments(node, topic)) == 1, 30, "expired segment files to be removed")
    finally:
        c.close()
    # The partition still takes writes at the next offset.
    p.produce(topic, value=b"fresh", partition=0)
    assert p.flush(30) == 0
    assert read_all(node, topic) == [(400, b"fresh")]


def test_size_retention_keeps_the_newest_data(node_factory):
    node = node_factory({"log.retention.check.interval.ms": "200"})
    topic = "dur-size-retention"
    make_topic(node, topic, config={"retention.bytes": "20000", "segment.bytes": "5000"})
    p = Producer({"bootstrap.servers": node.bootstrap, "acks": "all", "linger.ms": 0,
                  "batch.num.messages": 5})
    for i in range(2000):
        p.produce(topic, value=f"{i:05d}".encode() * 10, partition=0)
    assert p.flush(30) == 0
    total = lambda: sum(s.stat().st_size for s in segments(node, topic))  # noqa: E731
    wait_until(lambda: total() <= 20000 + 5000, 30, "size retention to trim the log")
    stored = read_all(node, topic)
    assert stored[-1] == (1999, b"01999" * 10)
    first = stored[0][0]
    assert first > 0 and [o for o, _ in stored] == list(range(first, 2000))


def cached_bytes(path: Path) -> int:
    """Bytes of `path` in the page cache, as util-linux's fincore counts them."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


def test_a_leader_keeps_its_newest_bytes_cached_and_serves_older_ones_from_disk(node_factory):
    """sluice.log.cache.tail.bytes with a real producer and consumer."""
    tail = 8 << 20
    node = node_factory({"sluice.log.cache.tail.bytes": str(tail)})
    topic = "dur-cache-tail"
    make_topic(node, topic, config={"segment.bytes": str(16 << 20)})
    p = Producer({"bootstrap.servers": node.bootstrap, "acks": "all", "linger.ms": 5})
    values = [os.urandom(1000) for _ in range(40_000)]
    for v in values:
        while True:
            try:
                p.produce(topic, value=v, partition=0)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(60) == 0
    files = segments(node, topic)
    assert len(files) >= 3, files
    # The newest 8 MiB stay (give or take a page per segment the kernel was busy with);
    # everything older left the page cache after the fsync that made it durable.
    cached = lambda: sum(cached_bytes(f) for f in segments(node, topic))  # noqa: E731
    wait_until(lambda: tail - (1 << 20) <= cached() <= tail + (1 << 20), 30,
               "the page cache to hold only the log's newest 8 MiB")
    # A consumer from the start reads the dropped part back from disk, every byte of it, and
    # what it read behind the tail leaves the page cache again (the tail's 8 MiB stay, plus
    # at most the fetch that straddled the tail's start).
    stored = read_all(node, topic)
    assert [o for o, _ in stored] == list(range(len(values)))
    assert [v for _, v in stored] == values
    assert tail - (1 << 20) <= cached() <= tail + (3 << 20)


def test_a_damaged_metadata_store_costs_no_partition_data(node):
    topic = "dur-meta"
    make_topic(node, topic, partitions=2)
    p = Producer({"bootstrap.servers": node.bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(200):
        p.produce(topic, value=f"m{i}".encode(), partition=i % 2)
    assert p.flush(30) == 0
    node.kill9()
    # sled refuses to open a store whose config file is garbage.
    conf = node.data_dir / "meta" / "sled" / "conf"
    assert conf.is_file()
    conf.write_bytes(b"not a sled config")
    node.start()
    assert "moved aside" in node.log()
    assert [v for _, v in read_all(node, topic, 0)] == [f"m{i}".encode() for i in range(0, 200, 2)]
    assert [v for _, v in read_all(node, topic, 1)] == [f"m{i}".encode() for i in range(1, 200, 2)]
    # A new idempotent producer gets an id no partition has seen, so its sequence 0 is fine.
    p2 = Producer({"bootstrap.servers": node.bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(10):
        p2.produce(topic, value=b"after", partition=0)
    assert p2.flush(30) == 0
    assert [v for _, v in read_all(node, topic, 0)][-10:] == [b"after"] * 10
