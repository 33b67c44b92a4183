"""The node's memory once a load has gone: the heap that frames and batches of a burst took is
handed back to the kernel, so an idle node's resident set returns near where it started.

glibc's malloc is tuned to keep freed memory for reuse while a load runs (alloc_guard.rs);
without the node's trimmer that peak stayed resident (178 MB after 1000 connections,
docs/benchmarks.md; 117 MB after this burst). glibc returns a heap's free top by itself only
once more than 64 MiB of it is free in one piece, which a burst sometimes leaves, so without
the trimmer this test fails most times, not every time. Real clients make the burst: several
confluent-kafka producers at once, each with its own connections, sending half-megabyte
messages.
"""

from __future__ import annotations

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from sluicenode import wait_until

PRODUCERS = 8
PARTITIONS = 8
VALUE = b"m" * (512 * 1024)
MESSAGES_PER_PRODUCER = 96  # 48 MiB each, 384 MiB in all
# What a burst must add to the resident set for this test to mean anything.
MIN_PEAK_GROWTH_KB = 48 * 1024
# How far above its pre-load resident set an idle node may stay: what the load legitimately
# leaves behind (segment and index state, allocator bookkeeping), far below the burst's peak.
IDLE_MARGIN_KB = 24 * 1024


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} missing from /proc/{pid}/status")


def test_idle_node_returns_the_memory_a_burst_took(node):
    pid = node.pid
    assert pid is not None
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    admin.create_topics([NewTopic("burst", PARTITIONS, 1)])["burst"].result(30)
    before_kb = status_kb(pid, "VmRSS")

    burst(node.bootstrap)  # its producers, and so their connections, are gone when it returns

    peak_kb = status_kb(pid, "VmHWM")
    assert peak_kb - before_kb >= MIN_PEAK_GROWTH_KB, (
        f"the burst took the node from {before_kb} kB only to {peak_kb} kB: too small a load "
        "to show whether memory is returned")

    bound_kb = before_kb + IDLE_MARGIN_KB
    seen = []

    def rss_within_bound() -> bool:
        seen.append(status_kb(pid, "VmRSS"))
        return seen[-1] <= bound_kb

    try:
        wait_until(rss_within_bound, timeout=60,
                   what=f"the idle node's RSS to fall to {bound_kb} kB (it was {before_kb} kB "
                        f"before the burst and peaked at {peak_kb} kB)")
    except TimeoutError as e:
        raise AssertionError(f"{e}; last RSS samples (kB): {seen[-3:]}") from e
    assert node.alive


def burst(bootstrap: str) -> None:
    """Several producers at once, each on its own connections, every message acknowledged."""
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)

    producers = [Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                           "message.max.bytes": 2 * 1024 * 1024})
                 for _ in range(PRODUCERS)]
    for i in range(MESSAGES_PER_PRODUCER):
        for n, p in enumerate(producers):
            while True:
                try:
                    p.produce("burst", VALUE, partition=(i + n) % PARTITIONS,
                              on_delivery=on_delivery)
                    break
                except BufferError:
                    p.poll(0.05)
            p.poll(0)
    for p in producers:
        assert p.flush(120) == 0, "messages still queued after 120 s"
    assert not errors, f"delivery errors: {errors[:3]}"
