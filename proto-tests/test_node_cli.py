"""The `sluice` binary as an operator starts it: flags and their SLUICE_* environment variables,
refused configuration, rack and advertised address in Metadata, clean shutdown on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from confluent_kafka.admin import AdminClient

import kafkawire as kw
from sluicenode import free_port, sluice_binary, wait_until


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.Popen([str(sluice_binary()), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=full_env)


def answers(port: int) -> bool:
    try:
        with kw.Connection("127.0.0.1", port, timeout=1) as c:
            return c.api_versions(3).error_code == kw.NONE
    except OSError:
        return False


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


def test_environment_variables_configure_the_node(tmp_path):
    port = free_port()
    proc = start([], env={
        "SLUICE_DATA_DIR": str(tmp_path / "data"),
        "SLUICE_LISTEN": f"127.0.0.1:{port}",
        "SLUICE_NODE_ID": "7",
        "SLUICE_RACK": "az-b",
        "SLUICE_OVERRIDE": "num.partitions=3;auto.create.topics.enable=true",
    })
    try:
        wait_until(lambda: answers(port), 30, "the node to answer")
        with kw.Connection("127.0.0.1", port) as c:
            md = c.metadata(12, ["env-topic"], allow_auto_topic_creation=True)
        assert [b.node_id for b in md.brokers] == [7]
        assert md.brokers[0].rack == "az-b"
        assert len(md.topic("env-topic").partitions) == 3
        assert (tmp_path / "data" / "env-topic-0").is_dir()
    finally:
        code, out = stop(proc)
    assert code == 0, out
    assert "shut down cleanly" in out


def test_advertised_address_is_what_metadata_returns(tmp_path):
    port = free_port()
    proc = start(["--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}",
                  "--advertise", f"localhost:{port}"])
    try:
        wait_until(lambda: answers(port), 30, "the node to answer")
        with kw.Connection("127.0.0.1", port) as c:
            md = c.metadata(1, None)
        assert [(b.host, b.port) for b in md.brokers] == [("localhost", port)]
        # A real client follows the advertised address.
        a = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
        assert 1 in a.list_topics(timeout=10).brokers
    finally:
        stop(proc)


@pytest.mark.parametrize("args,complaint", [
    (["--override", "num.partition=4"], "num.partition"),
    (["--override", "num.partitions=many"], "num.partitions"),
    (["--override", "log.retention.ms=-7"], "log.retention.ms"),
    (["--override", "sluice.log.cache.tail.bytes=-2"], "sluice.log.cache.tail.bytes"),
    (["--override", "socket.request.max.bytes"], "KEY=VALUE"),
    (["--listen", "nonsense"], "listen"),
])
def test_bad_configuration_stops_start_up_with_a_reason(tmp_path, args, complaint):
    proc = start(["--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{free_port()}", *args])
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert complaint in out, out


def test_sigterm_finishes_cleanly_and_the_next_start_needs_no_recovery(tmp_path):
    port = free_port()
    args = ["--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}"]
    proc = start(args)
    wait_until(lambda: answers(port), 30, "the node to answer")
    with kw.Connection("127.0.0.1", port) as c:
        c.metadata(4, ["clean-topic"], allow_auto_topic_creation=True)
    code, _ = stop(proc)
    assert code == 0
    checkpoint = tmp_path / "d" / "clean-topic-0" / "partition.checkpoint"
    assert checkpoint.is_file(), "a clean shutdown writes the checkpoint"
    proc = start(args)
    try:
        wait_until(lambda: answers(port), 30, "the node to answer again")
    finally:
        code, out = stop(proc)
    assert code == 0
    assert "opened logs after a clean shutdown" in out, out
    assert "unclean" not in out, out
