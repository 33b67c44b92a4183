"""sluicectl next to real clients: keyed records land where librdkafka's Kafka-compatible
partitioner puts them, and records another client compressed with every codec read back."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from sluicenode import REPO_ROOT

SLUICECTL = REPO_ROOT / "target" / "debug" / "sluicectl"


def ctl(node, *args: str, stdin: str | None = None) -> str:
    if not Path(SLUICECTL).is_file():
        pytest.fail(f"{SLUICECTL} is missing: cargo build --workspace --bins", pytrace=False)
    proc = subprocess.run([str(SLUICECTL), "--bootstrap", node.bootstrap, *args], input=stdin,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_keyed_records_land_where_librdkafka_puts_them(shared_node):
    a = AdminClient({"bootstrap.servers": shared_node.bootstrap})
    for t in ("ctl-ours", "ctl-theirs"):
        a.create_topics([NewTopic(t, 6, 1)])[t].result(30)
    keys = [f"customer-{i}" for i in range(60)]
    ctl(shared_node, "produce", "ctl-ours", "-k", ":", stdin="".join(f"{k}:v\n" for k in keys))
    # murmur2_random is librdkafka's name for the Java client's default partitioner.
    p = Producer({"bootstrap.servers": shared_node.bootstrap, "partitioner": "murmur2_random"})
    for k in keys:
        p.produce("ctl-theirs", key=k.encode(), value=b"v")
    assert p.flush(30) == 0

    def placement(topic: str) -> dict[str, int]:
        out = ctl(shared_node, "--json", "consume", topic, "--from-beginning")
        return {rec["key"]: rec["partition"] for rec in map(json.loads, out.splitlines())}

    ours, theirs = placement("ctl-ours"), placement("ctl-theirs")
    assert len(ours) == 60
    assert ours == theirs
    assert len(set(ours.values())) == 6


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_reads_what_librdkafka_compressed(shared_node, codec):
    topic = f"ctl-{codec}"
    p = Producer({"bootstrap.servers": shared_node.bootstrap, "compression.type": codec,
                  "linger.ms": 20})
    for i in range(2000):
        p.produce(topic, value=f"{codec}-{i}".encode(), key=f"k{i}".encode(), partition=0)
    assert p.flush(30) == 0
    out = ctl(shared_node, "consume", topic, "--from-beginning", "--format", "%o %k %v\\n")
    assert out.splitlines() == [f"{i} k{i} {codec}-{i}" for i in range(2000)]
