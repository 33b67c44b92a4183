"""librdkafka's own integration suite against Sluice, through librdkafka/run-suite.

- test_runner_tells_pass_from_fail: the runner itself works (suite built, its own librdkafka
  loaded, results parsed): a local test must come out PASS and a broker test aimed at a port
  where nothing listens must come out FAIL. Needs no broker.
- test_allowlist_passes: every test in librdkafka/allowlist.txt passes against a fresh node
  that run-suite starts (num.partitions=4, auto.create.topics.enable=true). It exists only
  while the allowlist names a test: an empty list is not reported as a pass.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
RUN_SUITE = HERE / "librdkafka" / "run-suite"
ALLOWLIST = HERE / "librdkafka" / "allowlist.txt"
PER_TEST_TIMEOUT = 300  # run-suite's --timeout for each test-runner invocation


def allowlisted() -> list[str]:
    entries = []
    for line in ALLOWLIST.read_text().splitlines():
        entries.extend(line.split("#", 1)[0].split())
    return entries


def run_suite(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUN_SUITE), *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def report(proc: subprocess.CompletedProcess) -> str:
    return f"run-suite exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture
def dead_address():
    """A 127.0.0.1 port that is bound but not listening: connections are refused, and no
    other process can take the port while the test runs."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    yield f"127.0.0.1:{s.getsockname()[1]}"
    s.close()


def test_runner_tells_pass_from_fail(tmp_path, dead_address):
    ok = run_suite("--bootstrap", dead_address, "--log-dir", str(tmp_path / "pass"),
                   "0004_conf", timeout=120)
    assert ok.returncode == 0, report(ok)
    assert re.search(r"^PASS\s+0004_conf\s", ok.stdout, re.M), report(ok)
    assert "librdkafka suite: 1 passed, 0 failed" in ok.stdout, report(ok)

    bad = run_suite("--bootstrap", dead_address, "--log-dir", str(tmp_path / "fail"),
                    "--timeout", "60", "0063", timeout=120)
    assert bad.returncode == 1, report(bad)
    assert re.search(r"^FAIL\s+0063_clusterid\s", bad.stdout, re.M), report(bad)
    assert "librdkafka suite: 0 passed, 1 failed" in bad.stdout, report(bad)


if allowlisted():
    @pytest.mark.timeout(PER_TEST_TIMEOUT * len(allowlisted()) + 120)
    def test_allowlist_passes(tmp_path, sluice_bin):
        proc = run_suite("--allowlist", str(ALLOWLIST), "--log-dir", str(tmp_path),
                         "--timeout", str(PER_TEST_TIMEOUT), "--verbose",
                         timeout=PER_TEST_TIMEOUT * len(allowlisted()) + 60)
        broker_logs = "".join(
            f"\n--- {log} (last 8000 characters) ---\n{log.read_text(errors='replace')[-8000:]}"
            for log in sorted(tmp_path.glob("sluice-*/sluice.log")))
        assert proc.returncode == 0, report(proc) + broker_logs
        assert re.search(r"^librdkafka suite: [1-9]\d* passed, 0 failed$", proc.stdout, re.M), \
            report(proc)
