"""Starts, stops and restarts one `sluice` broker process for tests, and waits for conditions.

Used by conftest.py (the pytest fixtures) and by librdkafka/run-suite. Standard library only.

A node listens on 127.0.0.1 on a free port, keeps its data in a directory it is given, logs
(stdout and stderr) to `<data_dir>/../<name>.log`, and is ready once it answers a Kafka
ApiVersions request on a raw socket (and, when it advertises Metadata, lists a broker).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

import kafkawire

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BINARY = REPO_ROOT / "target" / "debug" / "sluice"

T = TypeVar("T")


def die_with_parent() -> None:
    """In the child before exec: have the kernel SIGKILL the node if the harness process dies
    (even by SIGKILL), so no broker outlives the test run that started it. The kernel ties
    this to the starting *thread*: start nodes from the main thread, or a node dies when the
    thread that started it ends."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # noqa: BLE001 - not Linux: fall back to the harness's own teardown
        pass


class NodeError(Exception):
    """The node could not be started, did not become ready, or did not stop cleanly."""


def sluice_binary() -> Path:
    """The broker binary: $SLUICE_BIN, else target/debug/sluice under the repo root."""
    env = os.environ.get("SLUICE_BIN")
    return Path(env).resolve() if env else DEFAULT_BINARY


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it; a race is possible, start()
    retries with another port when the node cannot bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], T], timeout: float, what: str,
               interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy, and return that; raise
    TimeoutError naming `what` (and the last exception the condition raised) at the deadline.
    Use this instead of a sleep wherever a test waits for something to happen."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - the condition may fail until it holds
            last_exc = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}{detail}")
        time.sleep(interval)


def log_tail(text: str, max_chars: int = 20000) -> str:
    if len(text) <= max_chars:
        return text
    return f"[... {len(text) - max_chars} earlier characters cut ...]\n" + text[-max_chars:]


class SluiceNode:
    """One broker process. Not started until start() is called."""

    def __init__(self, data_dir: Path | str, *, binary: Path | str | None = None,
                 host: str = "127.0.0.1", port: int | None = None, node_id: int | None = None,
                 advertise: str | None = None, overrides: dict[str, object] | None = None,
                 extra_args: list[str] | None = None, log_path: Path | str | None = None,
                 ready_timeout: float = 20.0, stop_timeout: float = 15.0,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.binary = Path(binary) if binary else sluice_binary()
        self.host = host
        self._port_fixed = port is not None
        self.port = port if port is not None else free_port(host)
        self.node_id = node_id
        self.advertise = advertise
        self.overrides: dict[str, object] = dict(overrides or {})
        self.extra_args = list(extra_args or [])
        self.log_path = Path(log_path) if log_path else \
            self.data_dir.parent / f"{self.data_dir.name}.log"
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        # Set when the harness itself ended the process (stop/kill9), so an exit we did not
        # cause can be told apart: that is a crash.
        self._ended_by_harness = True
        self.last_returncode: int | None = None

    # ------------------------------------------------------------------ properties

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def crashed(self) -> bool:
        """True if the process exited without the harness stopping or killing it."""
        return self.proc is not None and self.proc.poll() is not None and not self._ended_by_harness

    def command(self) -> list[str]:
        cmd = [str(self.binary), "--data-dir", str(self.data_dir),
               "--listen", f"{self.host}:{self.port}"]
        if self.advertise:
            cmd += ["--advertise", self.advertise]
        if self.node_id is not None:
            cmd += ["--node-id", str(self.node_id)]
        for key, value in self.overrides.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            cmd += ["--override", f"{key}={value}"]
        return cmd + self.extra_args

    def log(self) -> str:
        """Everything the node (all its runs) wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "SluiceNode":
        """Start the process and wait until it is ready. A free port picked by the harness is
        replaced (up to 3 times) if the node exits because something else took it."""
        if self.alive:
            raise NodeError(f"node on {self.bootstrap} is already running (pid {self.pid})")
        if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
            raise NodeError(f"sluice binary not found or not executable: {self.binary} "
                            "(build it with `cargo build`, or set SLUICE_BIN)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if (self._port_fixed or self.starts > 0) else 3
        for attempt in range(attempts):
            self._spawn()
            try:
                self.wait_ready()
                return self
            except NodeError:
                port_taken = not self.alive and "address already in use" in \
                    self.log_since(self._log_offset_at_start).lower()
                if port_taken and attempt + 1 < attempts:
                    self.port = free_port(self.host)
                    continue
                self._reap(signal.SIGKILL)
                raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset_at_start = self.log_size()
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        if self.env:
            env.update(self.env)
        with open(self.log_path, "ab") as logf:
            logf.write(f"===== harness: start #{self.starts}: {' '.join(self.command())}\n"
                       .encode())
            logf.flush()
            # Own session: the whole process group can be killed, and a Ctrl-C at the
            # terminal reaches the harness (which stops the node) rather than the node.
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True,
                                         preexec_fn=die_with_parent)
        self._ended_by_harness = False

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll until the node answers ApiVersions (and lists a broker in Metadata, when it
        advertises Metadata). Raise NodeError with the node's log if it exits or the deadline
        passes."""
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last_err: BaseException | None = None
        while True:
            if not self.alive:
                raise NodeError(
                    f"sluice exited with code {self.proc.returncode if self.proc else None} "
                    f"before it was ready on {self.bootstrap}\n--- node log ---\n"
                    f"{log_tail(self.log_since(self._log_offset_at_start))}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise NodeError(
                    f"sluice did not answer ApiVersions on {self.bootstrap} within "
                    f"{timeout:.0f} s (last error: {last_err!r})\n--- node log ---\n"
                    f"{log_tail(self.log_since(self._log_offset_at_start))}")
            try:
                if self._ready_once(min(2.0, max(left, 0.1))):
                    return
            except (OSError, kafkawire.WireError, TimeoutError) as e:
                last_err = e
            time.sleep(0.05)

    def _ready_once(self, timeout: float) -> bool:
        with kafkawire.Connection(self.host, self.port, timeout) as c:
            av = c.api_versions(0, timeout)
            if av.error_code not in (kafkawire.NONE, kafkawire.UNSUPPORTED_VERSION):
                raise kafkawire.WireError(f"ApiVersions error {av.error_code}")
            md = av.api_keys.get(kafkawire.METADATA)
            if md is None:
                return True  # an early broker without Metadata: answering is all we can ask
            version = min(md.max_version, 13)
            if version < md.min_version:
                return True
            meta = c.metadata(version, topics=[], timeout=timeout)
            return len(meta.brokers) > 0

    def stop(self, clean: bool = True, timeout: float | None = None) -> int | None:
        """SIGTERM and wait (clean=True), or SIGKILL (clean=False). Returns the exit code.
        Raises NodeError if a clean stop needed SIGKILL after the timeout."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self._reap(None)
        self._ended_by_harness = True
        if not clean:
            return self._reap(signal.SIGKILL)
        self.begin_stop()
        return self.finish_stop(timeout)

    def begin_stop(self) -> None:
        """The first half of stop(clean=True): send SIGTERM and return at once, so several
        nodes (a cluster) can shut down together. finish_stop() waits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._ended_by_harness = True
        self.proc.send_signal(signal.SIGTERM)

    def finish_stop(self, timeout: float | None = None) -> int | None:
        """The second half of stop(clean=True): wait for the exit after begin_stop(); SIGKILL
        and raise NodeError if it takes longer than `timeout`. Returns the exit code."""
        if self.proc is None:
            return None
        timeout = self.stop_timeout if timeout is None else timeout
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._reap(signal.SIGKILL)
            raise NodeError(f"sluice on {self.bootstrap} did not exit within {timeout:.0f} s "
                            "of SIGTERM; killed it with SIGKILL")
        return self._reap(None)

    def kill9(self) -> int | None:
        """SIGKILL the node (a crash, as far as its data is concerned) and reap it."""
        return self.stop(clean=False)

    def restart(self, clean: bool = True) -> "SluiceNode":
        """Stop (SIGTERM, or SIGKILL for clean=False) and start again on the same port and data
        dir, with the current overrides; returns once ready."""
        self.stop(clean=clean)
        return self.start()

    def _reap(self, sig: signal.Signals | None) -> int | None:
        """Send `sig` to the node's process group (if given), wait for the node, and make sure
        nothing of its group is left behind."""
        if self.proc is None:
            return None
        if sig is not None:
            self._ended_by_harness = True
            self._signal_group(sig)
        try:
            rc = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            rc = self.proc.wait(10)
        # Children the node may have started share its process group.
        self._signal_group(signal.SIGKILL)
        self.last_returncode = rc
        return rc

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> "SluiceNode":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.alive else "stopped"
        return f"SluiceNode({self.bootstrap}, {state}, data_dir={self.data_dir})"
