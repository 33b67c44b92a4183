"""Sarama, a Go client with its own protocol code (Debian's golang-github-shopify-sarama-dev
1.22, configured for its newest protocol, Kafka 2.1), through a real node: produce with every
codec, fetch, an idempotent producer, and a consumer group that resumes from its commits.

proto-tests/sarama/main.go is built once per session with Debian's Go in GOPATH mode (no
network); scripts/setup-proto-tests installs both."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from segments import CODEC_IDS, stored_batches

HERE = Path(__file__).resolve().parent
GOPATH = "/usr/share/gocode"  # where Debian's golang-*-dev packages put their sources


@pytest.fixture(scope="module")
def sarama(tmp_path_factory) -> Path:
    go = shutil.which("go")
    if go is None or not (Path(GOPATH) / "src/github.com/Shopify/sarama").is_dir():
        pytest.fail("Go or Sarama is not installed: run scripts/setup-proto-tests", pytrace=False)
    out = tmp_path_factory.mktemp("sarama") / "sarama-client"
    env = dict(os.environ, GOPATH=GOPATH, GO111MODULE="off", GOFLAGS="",
               GOCACHE=str(tmp_path_factory.getbasetemp() / "go-cache"))
    proc = subprocess.run([go, "build", "-o", str(out), "main.go"], cwd=HERE / "sarama", env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"go build failed:\n{proc.stderr}"
    return out


def run(binary: Path, node, mode: str, *args: str) -> list[tuple[int, str]]:
    """Runs the client; returns its (offset, value) lines."""
    proc = subprocess.run([str(binary), mode, "-b", node.bootstrap, "-timeout", "90s", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"sarama-client {mode} {' '.join(args)} failed: {proc.stderr}"
    lines = [line.split("\t", 1) for line in proc.stdout.splitlines() if line]
    return [(int(offset), value) for offset, value in lines]


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_round_trip_with_each_codec(sarama, shared_node, codec):
    topic, n = f"sarama-{codec}", 20_000
    produced = run(sarama, shared_node, "produce", "-topic", topic, "-n", str(n),
                   "-codec", codec)
    assert produced == [(i, f"sarama-{i}") for i in range(n)], "acknowledged offsets in order"
    # Sarama compresses every batch it is told to, however small.
    assert {c for c, _ in stored_batches(shared_node, topic)} == {CODEC_IDS[codec]}
    assert run(sarama, shared_node, "consume", "-topic", topic, "-n", str(n)) == produced


def test_idempotent_producer(sarama, shared_node):
    topic, n = "sarama-idempotent", 5_000
    produced = run(sarama, shared_node, "produce", "-topic", topic, "-n", str(n), "-idempotent")
    assert produced == [(i, f"sarama-{i}") for i in range(n)]
    assert run(sarama, shared_node, "consume", "-topic", topic, "-n", str(n)) == produced


def test_group_member_resumes_from_the_last_commit(sarama, node):
    topic, group = "sarama-group", "sarama-g"
    run(sarama, node, "produce", "-topic", topic, "-n", "1000")
    first = run(sarama, node, "group", "-topic", topic, "-group", group, "-n", "600")
    assert first == [(i, f"sarama-{i}") for i in range(600)]
    # A new process, a new member: it starts where the first one committed.
    second = run(sarama, node, "group", "-topic", topic, "-group", group, "-n", "400")
    assert second == [(i, f"sarama-{i}") for i in range(600, 1000)]
