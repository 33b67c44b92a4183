"""Bad input over a raw socket: every case gets the proper Kafka error, or (when nothing can be
answered) a clean close of that one connection, while the node keeps serving everyone else and
nothing stored is damaged."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest
from confluent_kafka import Consumer, OFFSET_BEGINNING, Producer, TopicPartition
from kafka.record.default_records import DefaultRecordBatchBuilder

import kafkawire as kw

MAX_FRAME = 1 << 20
pytestmark = pytest.mark.sluice_overrides({"socket.request.max.bytes": str(MAX_FRAME),
                                           "message.max.bytes": "200000"})


def conn(node, timeout: float = 5.0) -> kw.Connection:
    return kw.Connection.to(node.bootstrap, timeout)


def still_serving(node) -> None:
    """A fresh connection gets a correct ApiVersions answer."""
    with conn(node) as c:
        assert c.api_versions(3).error_code == kw.NONE


def closed(c: kw.Connection, timeout: float = 5.0) -> bool:
    """True when the peer closes the connection (EOF or reset) within `timeout`."""
    c.sock.settimeout(timeout)
    try:
        while True:
            data = c.sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def batch(values: list[bytes], compression: int = 0) -> bytes:
    b = DefaultRecordBatchBuilder(magic=2, compression_type=compression, is_transactional=False,
                                  producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                  batch_size=1 << 22)
    for i, v in enumerate(values):
        b.append(i, timestamp=1_700_000_000_000 + i, key=None, value=v, headers=[])
    return bytes(b.build())


def produce_v3(partitions: dict[tuple[str, int], bytes | None], acks: int = -1) -> bytes:
    by_topic: dict[str, list[tuple[int, bytes | None]]] = {}
    for (topic, p), records in partitions.items():
        by_topic.setdefault(topic, []).append((p, records))
    w = kw.Writer().string(None).int16(acks).int32(10_000).array_len(len(by_topic))
    for topic, parts in by_topic.items():
        w.string(topic).array_len(len(parts))
        for p, records in parts:
            w.int32(p)
            if records is None:
                w.int32(-1)
            else:
                w.int32(len(records)).raw(records)
    return w.bytes()


def parse_produce_v3(body: bytes) -> dict[tuple[str, int], tuple[int, int]]:
    r = kw.Reader(body)
    out = {}
    for _ in range(r.array_len()):
        topic = r.string()
        for _ in range(r.array_len()):
            p, err, base, _append_time = r.int32(), r.int16(), r.int64(), r.int64()
            out[(topic, p)] = (err, base)
    return out


def create_topic(node, name: str, partitions: int = 1) -> None:
    # Metadata with auto-creation on makes the topic; wait until every partition has a leader.
    with conn(node) as c:
        md = c.metadata(4, [name], allow_auto_topic_creation=True)
        assert md.topic(name).error_code == kw.NONE
    if partitions > 1:
        from confluent_kafka.admin import AdminClient, NewPartitions
        a = AdminClient({"bootstrap.servers": node.bootstrap})
        a.create_partitions([NewPartitions(name, partitions)])[name].result(10)


def read_values(node, topic: str, partition: int) -> list[bytes]:
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": "bad-input-reader",
                  "enable.partition.eof": True, "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        values = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191:  # _PARTITION_EOF
                    return values
                raise AssertionError(m.error())
            values.append(m.value())
        raise AssertionError(f"no end of partition in 60 s ({len(values)} records read)")
    finally:
        c.close()


def test_oversized_frame_is_refused_without_reading_it(shared_node):
    with conn(shared_node) as c:
        c.send_raw(struct.pack(">i", MAX_FRAME + 1))
        assert closed(c), "connection stays open after an oversized length prefix"
    still_serving(shared_node)


@pytest.mark.parametrize("length", [-1, 0, 3])
def test_nonsense_lengths_close_the_connection(shared_node, length):
    with conn(shared_node) as c:
        c.send_raw(struct.pack(">i", length) + b"\0" * 16)
        assert closed(c)
    still_serving(shared_node)


def test_random_garbage_closes_only_that_connection(shared_node):
    with conn(shared_node) as good:
        for seed in range(20):
            with conn(shared_node) as bad:
                payload = os.urandom(64 + seed)
                bad.send_frame(struct.pack(">h", 900 + seed) + payload)
                assert closed(bad)
        # The connection opened before the garbage is still answered.
        assert good.api_versions(0).error_code == kw.NONE


def test_unknown_api_key_closes_the_connection(shared_node):
    with conn(shared_node) as c:
        c.send_request(9999, 0, b"")
        assert closed(c)
    still_serving(shared_node)


def test_newer_api_versions_gets_the_kip511_answer(shared_node):
    with conn(shared_node) as c:
        cid = c.send_request(kw.API_VERSIONS, 99, kw.api_versions_request(99))
        # The answer is ApiVersions v0: error, then (key, min, max) entries.
        body = c.recv_response(kw.API_VERSIONS, 0, cid)
        resp = kw.parse_api_versions_response(body, 0)
        assert resp.error_code == kw.UNSUPPORTED_VERSION
        assert resp.supports(kw.API_VERSIONS, 3)
        assert resp.supports(kw.PRODUCE, 9)
        # The client can carry on at a version from the list.
        assert c.api_versions(3).error_code == kw.NONE


def test_unsupported_version_of_another_api_closes_the_connection(shared_node):
    with conn(shared_node) as c:
        c.send_request(kw.METADATA, 99, b"\0\0\0\0")
        assert closed(c)
    still_serving(shared_node)


def test_truncated_request_body_closes_the_connection(shared_node):
    with conn(shared_node) as c:
        # Metadata v1 announcing 1000 topics and sending none.
        c.send_request(kw.METADATA, 1, struct.pack(">i", 1000))
        assert closed(c)
    still_serving(shared_node)


@pytest.mark.parametrize("count", [0x7FFFFFFF, 0x10000000])
def test_absurd_array_length_does_not_take_the_node_down(shared_node, count):
    # Without a guard, the decoder would size a Vec from this count and abort the process.
    with conn(shared_node) as c:
        c.send_request(kw.METADATA, 1, struct.pack(">i", count))
        assert closed(c)
    with conn(shared_node) as c:
        c.send_request(kw.PRODUCE, 3, kw.Writer().string(None).int16(1).int32(1000)
                       .int32(count).bytes())
        assert closed(c)
    still_serving(shared_node)


def test_corrupt_batch_fails_only_its_partition(shared_node):
    topic = "bad-crc"
    create_topic(shared_node, topic, partitions=2)
    good = batch([b"good-1", b"good-2"])
    corrupt = bytearray(batch([b"evil-1"]))
    corrupt[-3] ^= 0xFF  # inside the CRC'd range
    with conn(shared_node) as c:
        body = c.request(kw.PRODUCE, 3, produce_v3({(topic, 0): bytes(corrupt), (topic, 1): good}))
    result = parse_produce_v3(body)
    assert result[(topic, 0)][0] == kw.CORRUPT_MESSAGE
    assert result[(topic, 1)] == (kw.NONE, 0)
    assert read_values(shared_node, topic, 0) == []
    assert read_values(shared_node, topic, 1) == [b"good-1", b"good-2"]


@pytest.mark.parametrize("mangle,code", [
    ("count", 87),        # INVALID_RECORD: header record count disagrees with the records
    ("magic", 87),        # INVALID_RECORD: magic 1 in a v3+ produce
    ("truncated", 2),     # CORRUPT_MESSAGE: batch shorter than its length field
    ("null", 87),         # INVALID_RECORD: no records at all
])
def test_malformed_batches_get_their_error(shared_node, mangle, code):
    topic = f"bad-batch-{mangle}"
    create_topic(shared_node, topic)
    b = bytearray(batch([b"a", b"b"]))
    if mangle == "count":
        b[57:61] = struct.pack(">i", 3)
        b[23:27] = struct.pack(">i", 2)
        from kafka.record.util import calc_crc32c
        b[17:21] = struct.pack(">I", calc_crc32c(bytes(b[21:])))
    elif mangle == "magic":
        b[16] = 1
    elif mangle == "truncated":
        b = b[:-5]
    records = None if mangle == "null" else bytes(b)
    with conn(shared_node) as c:
        body = c.request(kw.PRODUCE, 3, produce_v3({(topic, 0): records}))
    assert parse_produce_v3(body)[(topic, 0)][0] == code
    assert read_values(shared_node, topic, 0) == []
    still_serving(shared_node)


def test_oversized_batch_is_message_too_large(shared_node):
    topic = "bad-too-large"
    create_topic(shared_node, topic)
    big = batch([os.urandom(100_000), os.urandom(150_000)])
    with conn(shared_node) as c:
        body = c.request(kw.PRODUCE, 3, produce_v3({(topic, 0): big}))
    assert parse_produce_v3(body)[(topic, 0)][0] == 10  # MESSAGE_TOO_LARGE


def test_invalid_acks_and_unknown_topic(shared_node):
    create_topic(shared_node, "bad-acks")
    with conn(shared_node) as c:
        body = c.request(kw.PRODUCE, 3, produce_v3({("bad-acks", 0): batch([b"x"])}, acks=5))
        assert parse_produce_v3(body)[("bad-acks", 0)][0] == 21  # INVALID_REQUIRED_ACKS
        body = c.request(kw.PRODUCE, 3, produce_v3({("no-such-topic", 0): batch([b"x"])}))
        assert parse_produce_v3(body)[("no-such-topic", 0)][0] == 3  # UNKNOWN_TOPIC_OR_PARTITION


@pytest.mark.parametrize("name", ["bad/slash", "x" * 250, "..", "spaces are bad"])
def test_invalid_topic_names_in_metadata(shared_node, name):
    with conn(shared_node) as c:
        md = c.metadata(4, [name], allow_auto_topic_creation=True)
    assert md.topic(name).error_code == 17  # INVALID_TOPIC_EXCEPTION


def test_garbage_storm_leaves_a_producer_untouched(shared_node):
    topic = "bad-storm"
    stop = threading.Event()

    def storm():
        i = 0
        while not stop.is_set() and i < 300:
            i += 1
            try:
                with conn(shared_node, timeout=2) as c:
                    c.send_raw(os.urandom(200))
                    closed(c, timeout=2)
            except OSError:
                pass

    threads = [threading.Thread(target=storm) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        p = Producer({"bootstrap.servers": shared_node.bootstrap, "linger.ms": 5, "acks": "all"})
        errors = []
        for i in range(5000):
            p.produce(topic, value=f"v{i}".encode(), partition=0,
                      on_delivery=lambda err, msg: err and errors.append(err))
            if i % 500 == 0:
                p.poll(0)
        assert p.flush(60) == 0
        assert not errors
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    values = read_values(shared_node, topic, 0)
    assert values == [f"v{i}".encode() for i in range(5000)]
