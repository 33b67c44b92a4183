"""pytest fixtures that run real `sluice` nodes for real Kafka clients.

Fixtures:
- `node_factory(overrides={...}, node_id=None, start=True)`: make nodes (each in a fresh data
  dir on a free 127.0.0.1 port); all are stopped at the end of the test.
- `node`: one fresh node per test. Broker config via `@pytest.mark.sluice_overrides({...})`.
- `shared_node`: one node per test module (faster; tests must not depend on a clean broker).
  Config via `pytestmark = pytest.mark.sluice_overrides({...})` in the module.
- `sluice_bin`: path of the broker binary (missing binary = test error, never a skip).
- `cluster`: three nodes on 127.0.0.1-3 forming one cluster (racks az-a, az-b, az-c), one per
  test module; config via the module's `sluice_overrides` marker. Before each test every node
  that is down (killed by an earlier test) is started again. See sluicecluster.py.

A node object has `.bootstrap` ("127.0.0.1:PORT"), `.data_dir`, `.overrides` (dict, used by the
next start), `.start()`, `.stop(clean=True)`, `.restart(clean=True)`, `.kill9()`, `.log()`,
`.alive`, `.pid`. See sluicenode.py. `wait_until(cond, timeout, what)` polls a condition.

On a failing test the log of every node it used (from the test's start) is attached to the
report. A node that exited during a test without the harness stopping it (a crash) fails the
test at teardown, and so does one that does not stop within its timeout after SIGTERM.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sluicecluster import SluiceCluster  # noqa: E402
from sluicenode import NodeError, SluiceNode, log_tail, sluice_binary, wait_until  # noqa: E402

__all__ = ["wait_until"]


def pytest_configure(config):
    # A SIGTERM (a CI time-out, say) becomes KeyboardInterrupt, so pytest still runs fixture
    # teardown and the nodes are stopped cleanly. (If pytest is SIGKILLed, the kernel kills
    # the nodes: see sluicenode.die_with_parent.)
    def on_sigterm(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


def _require_binary() -> Path:
    binary = sluice_binary()
    if not binary.is_file():
        pytest.fail(f"sluice binary not found at {binary}: build it (`cargo build -p "
                    "sluice-node`) or point SLUICE_BIN at it", pytrace=False)
    return binary


def _marker_overrides(node) -> dict:
    merged: dict = {}
    # iter_markers yields the closest first; apply the farthest first so closer ones win.
    for marker in reversed(list(node.iter_markers("sluice_overrides"))):
        if marker.args:
            merged.update(marker.args[0])
        merged.update(marker.kwargs)
    return merged


class NodeFactory:
    """Makes nodes in fresh data dirs and stops them all at teardown."""

    def __init__(self, tmp_factory: pytest.TempPathFactory, binary: Path, label: str) -> None:
        self._tmp = tmp_factory
        self._binary = binary
        self._label = re.sub(r"[^\w.-]+", "_", label)[:40]
        self.nodes: list[SluiceNode] = []

    def __call__(self, overrides: dict | None = None, *, start: bool = True,
                 **kwargs) -> SluiceNode:
        base = self._tmp.mktemp(f"{self._label}-node{len(self.nodes)}", numbered=True)
        node = SluiceNode(base / "data", binary=self._binary, overrides=overrides,
                          log_path=base / "sluice.log", **kwargs)
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def teardown(self) -> list[str]:
        """Stop every node; return the problems found (crashes, unclean stops)."""
        problems = []
        for node in self.nodes:
            if node.crashed:
                problems.append(f"sluice on {node.bootstrap} exited by itself with code "
                                f"{node.proc.returncode} (its log is in the report)")
            try:
                node.stop(clean=True)
            except NodeError as e:
                problems.append(f"{e} (its log is in the report)")
            finally:
                if node.alive:  # belt and braces: never leave a process behind
                    node.kill9()
        return problems


def _nodes_of(item) -> list[SluiceNode]:
    """The nodes a test uses, each once (`node` is also in `node_factory`'s list)."""
    found: dict[int, SluiceNode] = {}
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, SluiceNode):
            found[id(value)] = value
        elif isinstance(value, NodeFactory):
            found.update((id(n), n) for n in value.nodes)
        elif isinstance(value, SluiceCluster):
            found.update((id(n), n) for n in value.nodes)
    return list(found.values())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    nodes = _nodes_of(item)
    if rep.when == "setup":
        # Where each node's log stood when the test body began.
        item._sluice_log_offsets = {id(n): n.log_size() for n in nodes}
    elif rep.failed and nodes:
        offsets = getattr(item, "_sluice_log_offsets", {})
        for n in nodes:
            text = n.log_since(offsets.get(id(n), 0))
            rep.sections.append((f"sluice log {n.bootstrap} ({n.log_path})", log_tail(text)))
    return rep


@pytest.fixture(scope="session")
def sluice_bin() -> Path:
    return _require_binary()


@pytest.fixture
def node_factory(tmp_path_factory, request):
    factory = NodeFactory(tmp_path_factory, _require_binary(), request.node.name)
    yield factory
    problems = factory.teardown()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def node(node_factory, request) -> SluiceNode:
    return node_factory(_marker_overrides(request.node))


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory, request):
    factory = NodeFactory(tmp_path_factory, _require_binary(), Path(request.node.name).stem)
    node = factory(_marker_overrides(request.node))
    yield node
    problems = factory.teardown()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def _shared_node_guard(request):
    """For tests on `shared_node`: fail the test during which the node crashed, and start it
    again (same port and data) so the rest of the module still has a broker."""
    if "shared_node" not in request.fixturenames:
        yield
        return
    shared: SluiceNode = request.getfixturevalue("shared_node")
    if shared.crashed:
        shared.start()  # the test that saw the crash has already failed
    yield
    if shared.crashed:
        pytest.fail(f"shared sluice node on {shared.bootstrap} exited by itself with code "
                    f"{shared.proc.returncode} during this test", pytrace=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    label = re.sub(r"[^\w.-]+", "_", Path(request.node.name).stem)[:40]
    c = SluiceCluster(tmp_path_factory.mktemp(f"{label}-cluster", numbered=True),
                      binary=_require_binary(), overrides=_marker_overrides(request.node))
    try:
        c.start()
    except BaseException:
        c.kill_all()
        raise
    yield c
    problems = c.teardown()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def _cluster_guard(request):
    """For tests on `cluster`: start again every node an earlier test left down (killed, or
    crashed: that test has already failed) and wait until the cluster is ready; fail the test
    during which a node exited without the harness stopping it."""
    if "cluster" not in request.fixturenames:
        yield
        return
    c: SluiceCluster = request.getfixturevalue("cluster")
    down = [n.node_id for n in c.nodes if not n.alive]
    if down:
        c.start_nodes(down)
    yield
    crashed = [n for n in c.nodes if n.crashed]
    if crashed:
        pytest.fail("; ".join(f"cluster node {n.node_id} ({n.bootstrap}) exited by itself with "
                              f"code {n.proc.returncode} during this test" for n in crashed),
                    pytrace=False)
