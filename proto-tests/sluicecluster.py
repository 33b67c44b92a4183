"""Starts, stops, kills and restarts a three-node `sluice` cluster for tests and benchmarks.

Used by conftest.py (the `cluster` fixture) and by scripts/bench (the rf3-* scenarios).
Standard library only (with sluicenode.py and kafkawire.py next to it).

Node i (1-based) listens for Kafka clients and for Raft traffic on 127.0.0.i (all of 127/8 is
loopback on Linux), each on a free port, and is in rack az-a, az-b, az-c... Every node gets the
same full peer list, its own entry included:

    sluice --node-id I --listen 127.0.0.I:KPORT --data-dir DIR \\
           --peer 1=127.0.0.1:K1/127.0.0.1:R1/az-a --peer 2=... --peer 3=... [--override k=v]...

A node in cluster mode serves Kafka requests only once a quorum of the metadata group is up, so
the processes are started together and then waited for. A node is ready when it answers a
Metadata request listing every broker of the cluster with a known controller (controller_id
!= -1). Data and logs: `<base>/node<I>/data` and `<base>/node<I>.log` (every start of the node
appends to it), unless log_dir is given.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import kafkawire
from sluicenode import NodeError, SluiceNode, free_port, log_tail, wait_until

DEFAULT_RACKS = ("az-a", "az-b", "az-c", "az-d", "az-e")
METADATA_VERSION = 12  # brokers with racks, controller id, leader epochs, topic ids


class ClusterNode(SluiceNode):
    """One member of a SluiceCluster: a SluiceNode whose command line carries the cluster's
    peer list and whose readiness needs every peer listed and a controller."""

    def __init__(self, cluster: "SluiceCluster", node_id: int, data_dir: Path, *,
                 host: str, rack: str, **kwargs) -> None:
        super().__init__(data_dir, host=host, port=free_port(host), node_id=node_id, **kwargs)
        self.cluster = cluster
        self.rack = rack
        self.raft_port = self._other_free_port()

    def _other_free_port(self) -> int:
        for _ in range(20):
            port = free_port(self.host)
            if port != self.port:
                return port
        raise NodeError(f"no second free port on {self.host}")

    def pick_new_ports(self) -> None:
        self.port = free_port(self.host)
        self.raft_port = self._other_free_port()

    @property
    def raft_address(self) -> str:
        return f"{self.host}:{self.raft_port}"

    def peer_entry(self) -> str:
        """`ID=KAFKA_ADDR/RAFT_ADDR/RACK`, as given to every node with --peer."""
        return f"{self.node_id}={self.bootstrap}/{self.raft_address}/{self.rack}"

    def command(self) -> list[str]:
        return super().command() + self.cluster.peer_args()

    def _ready_once(self, timeout: float) -> bool:
        with kafkawire.Connection(self.host, self.port, timeout) as c:
            meta = c.metadata(METADATA_VERSION, topics=[], timeout=timeout)
            return len(meta.brokers) >= len(self.cluster.nodes) and meta.controller_id != -1

    def __repr__(self) -> str:
        state = "running" if self.alive else "stopped"
        return f"ClusterNode({self.node_id}, {self.bootstrap}, {state})"


class SluiceCluster:
    """`size` sluice processes forming one cluster. Nothing runs until start()."""

    def __init__(self, base_dir: Path | str, *, size: int = 3, binary: Path | str | None = None,
                 overrides: dict[str, object] | list[str] | None = None,
                 racks: tuple[str, ...] = DEFAULT_RACKS, ready_timeout: float = 60.0,
                 stop_timeout: float = 20.0, env: dict[str, str] | None = None,
                 log_dir: Path | str | None = None, log_prefix: str = "") -> None:
        if not 1 <= size <= len(racks):
            raise ValueError(f"cluster size {size}: between 1 and {len(racks)}")
        self.base_dir = Path(base_dir)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        if isinstance(overrides, list):  # ["key=value", ...] as scripts/bench has them
            overrides = dict(o.split("=", 1) for o in overrides)
        self.nodes: list[ClusterNode] = []
        for i in range(1, size + 1):
            node_dir = self.base_dir / f"node{i}"
            log_path = (Path(log_dir) / f"{log_prefix}node{i}.log" if log_dir
                        else self.base_dir / f"node{i}.log")
            self.nodes.append(ClusterNode(
                self, i, node_dir / "data", host=f"127.0.0.{i}", rack=racks[i - 1],
                binary=binary, overrides=dict(overrides or {}), log_path=log_path,
                ready_timeout=ready_timeout, stop_timeout=stop_timeout, env=env))

    # ------------------------------------------------------------------ addresses

    def peer_args(self) -> list[str]:
        args: list[str] = []
        for n in self.nodes:
            args += ["--peer", n.peer_entry()]
        return args

    @property
    def bootstrap(self) -> str:
        """Every node's Kafka address, comma-separated (a client's bootstrap.servers)."""
        return ",".join(n.bootstrap for n in self.nodes)

    def node(self, node_id: int) -> ClusterNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(f"no node {node_id} in this cluster")

    def alive_nodes(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive]

    def bootstrap_of(self, nodes) -> str:
        return ",".join(n.bootstrap for n in nodes)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "SluiceCluster":
        """Start every node at once and wait until each is ready. If a node could not bind
        (a port picked as free was taken meanwhile), start over on new ports with fresh data
        dirs, up to 3 times."""
        for n in self.nodes:
            if n.alive:
                raise NodeError(f"{n!r} is already running")
            if not n.binary.is_file():
                raise NodeError(f"sluice binary not found: {n.binary} (build it with "
                                "`cargo build`, or set SLUICE_BIN)")
        for attempt in range(3):
            for n in self.nodes:
                n.data_dir.mkdir(parents=True, exist_ok=True)
                n._spawn()
            try:
                self.wait_ready()
                return self
            except NodeError:
                port_taken = any(
                    not n.alive and "address already in use" in
                    n.log_since(n._log_offset_at_start).lower() for n in self.nodes)
                self.kill_all()
                if not port_taken or attempt == 2:
                    raise
                for n in self.nodes:
                    shutil.rmtree(n.data_dir, ignore_errors=True)
                    n.pick_new_ports()
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float | None = None, nodes=None) -> None:
        """Poll until every running node (or the given ones) answers Metadata listing every
        broker with a controller. NodeError (with the logs) if one exits or time runs out."""
        timeout = self.ready_timeout if timeout is None else timeout
        waiting = list(nodes if nodes is not None else self.alive_nodes())
        deadline = time.monotonic() + timeout
        last_err: dict[int, BaseException] = {}
        while waiting:
            for n in list(waiting):
                if not n.alive:
                    raise NodeError(f"node {n.node_id} exited with code {n.proc.returncode} "
                                    f"before the cluster was ready\n{self.logs_text()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    detail = "; ".join(f"node {k}: {e!r}" for k, e in last_err.items()
                                       if any(w.node_id == k for w in waiting))
                    raise NodeError(
                        f"nodes {[w.node_id for w in waiting]} not ready within {timeout:.0f} s "
                        f"(need Metadata with {len(self.nodes)} brokers and a controller; "
                        f"{detail or 'no error, just not there yet'})\n{self.logs_text()}")
                try:
                    if n._ready_once(min(2.0, max(left, 0.1))):
                        waiting.remove(n)
                except (OSError, kafkawire.WireError, TimeoutError) as e:
                    last_err[n.node_id] = e
            if waiting:
                time.sleep(0.05)

    def kill9(self, node_id: int) -> None:
        """SIGKILL one node (a crash, as far as its data is concerned) and reap it."""
        self.node(node_id).kill9()

    def restart(self, node_id: int, clean: bool = False) -> ClusterNode:
        """Start a node again with the same ports, peers, data dir and overrides (stopping it
        first if it runs: SIGKILL unless clean) and wait until it is ready."""
        n = self.node(node_id)
        if n.alive:
            n.stop(clean=clean)
        self.start_nodes([node_id])
        return n

    def start_nodes(self, node_ids) -> None:
        """Start the given stopped nodes together (same ports, peers and data dirs as before)
        and wait until each is ready; NodeError (after SIGKILLing them) if not in time."""
        nodes = [self.node(i) for i in node_ids]
        for n in nodes:
            if n.alive:
                raise NodeError(f"{n!r} is already running")
            n.data_dir.mkdir(parents=True, exist_ok=True)
            n._spawn()
        try:
            self.wait_ready(nodes=nodes)
        except NodeError:
            for n in nodes:
                n.kill9()
            raise

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM every node at once, then wait for each. NodeError if one needed SIGKILL."""
        for n in self.nodes:
            n.begin_stop()
        problems = []
        for n in self.nodes:
            try:
                n.finish_stop(timeout)
            except NodeError as e:
                problems.append(str(e))
        if problems:
            raise NodeError("\n".join(problems))

    def kill_all(self) -> None:
        for n in self.nodes:
            if n.alive:
                n.kill9()
            elif n.proc is not None:
                n._reap(None)

    def teardown(self) -> list[str]:
        """Stop everything; return the problems found (crashes, unclean stops)."""
        problems = [f"node {n.node_id} ({n.bootstrap}) exited by itself with code "
                    f"{n.proc.returncode} (its log is in the report)"
                    for n in self.nodes if n.crashed]
        try:
            self.stop()
        except NodeError as e:
            problems.append(f"{e} (logs are in the report)")
        finally:
            self.kill_all()  # belt and braces: never leave a process behind
        return problems

    def logs_text(self, max_chars: int = 8000) -> str:
        """The log of each node since its last start, tail-cut."""
        parts = []
        for n in self.nodes:
            text = n.log_since(getattr(n, "_log_offset_at_start", 0))
            parts.append(f"--- node {n.node_id} log ({n.log_path}) ---\n"
                         f"{log_tail(text, max_chars)}")
        return "\n".join(parts)

    def __enter__(self) -> "SluiceCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self.kill_all()

    # ------------------------------------------------------------------ metadata

    def metadata(self, topics: list[str] | None = None, via: int | None = None,
                 timeout: float = 5.0) -> kafkawire.MetadataResponse:
        """Metadata v12 from node `via`, else from the first running node that answers.
        topics=None asks for every topic."""
        candidates = [self.node(via)] if via is not None else self.alive_nodes()
        last: BaseException | None = None
        for n in candidates:
            try:
                with kafkawire.Connection(n.host, n.port, timeout) as c:
                    return c.metadata(METADATA_VERSION, topics=topics, timeout=timeout)
            except (OSError, kafkawire.WireError, TimeoutError) as e:
                last = e
        raise ConnectionError(f"no node answered Metadata (last error: {last!r})")

    def controller_id(self, via: int | None = None) -> int:
        return self.metadata([], via=via).controller_id

    def partition(self, topic: str, partition: int,
                  via: int | None = None) -> kafkawire.MetadataPartition:
        """One partition as node `via` (or any running node) reports it; AssertionError if the
        topic or partition is missing or the topic has an error."""
        meta = self.metadata([topic], via=via)
        t = meta.topic(topic)
        assert t is not None, f"topic {topic} not in Metadata"
        assert t.error_code == kafkawire.NONE, f"topic {topic}: error {t.error_code}"
        for p in t.partitions:
            if p.partition_index == partition:
                return p
        raise AssertionError(f"{topic}-{partition} not in Metadata")

    def check_settled(self, topic: str, partitions: int, replication_factor: int,
                      via=None) -> dict[int, kafkawire.MetadataPartition]:
        """Raise AssertionError (saying what is missing) unless every running node (or those
        in `via`) reports `topic` with `partitions` partitions, each with
        `replication_factor` distinct replicas, a leader among them, every replica in sync,
        and the same leader and epoch everywhere. Returns {partition: its Metadata} (as the
        last node asked reports it)."""
        nodes = [self.node(v) for v in via] if via is not None else self.alive_nodes()
        assert nodes, "no node is running"
        agreed: dict[int, tuple[int, int]] = {}
        out: dict[int, kafkawire.MetadataPartition] = {}
        for n in nodes:
            meta = self.metadata([topic], via=n.node_id)
            t = meta.topic(topic)
            assert t is not None and t.error_code == kafkawire.NONE, \
                f"node {n.node_id}: topic {topic} " + ("missing" if t is None else
                                                       f"error {t.error_code}")
            got = sorted(p.partition_index for p in t.partitions)
            assert got == list(range(partitions)), f"node {n.node_id}: partitions {got}"
            for p in t.partitions:
                where = f"node {n.node_id} says {topic}-{p.partition_index}"
                assert p.error_code == kafkawire.NONE, f"{where}: error {p.error_code}"
                assert len(set(p.replica_nodes)) == len(p.replica_nodes) == replication_factor, \
                    f"{where}: replicas {p.replica_nodes}"
                assert p.leader_id in p.replica_nodes, \
                    f"{where}: leader {p.leader_id}, replicas {p.replica_nodes}"
                assert sorted(p.isr_nodes) == sorted(p.replica_nodes), \
                    f"{where}: isr {p.isr_nodes}, replicas {p.replica_nodes}"
                seen = agreed.setdefault(p.partition_index, (p.leader_id, p.leader_epoch))
                assert seen == (p.leader_id, p.leader_epoch), \
                    f"{where}: leader/epoch {(p.leader_id, p.leader_epoch)}, another node {seen}"
                out[p.partition_index] = p
        return out

    def wait_settled(self, topic: str, partitions: int, replication_factor: int,
                     timeout: float = 60.0, via=None) -> dict[int, kafkawire.MetadataPartition]:
        """Poll check_settled until it holds; TimeoutError with the last thing missing."""
        return wait_until(lambda: self.check_settled(topic, partitions, replication_factor, via),
                          timeout, f"{topic}: {partitions} partitions, each with "
                          f"{replication_factor} replicas all in sync and an agreed leader",
                          interval=0.2)

    def create_topic(self, topic: str, partitions: int, replication_factor: int,
                     configs: dict[str, str] | None = None, timeout: float = 30.0,
                     exist_ok: bool = False) -> None:
        """CreateTopics v5 on the controller (found from Metadata; retried while there is
        none or it moves, up to `timeout`). Another error, or TOPIC_ALREADY_EXISTS unless
        exist_ok, raises NodeError."""
        deadline = time.monotonic() + timeout
        last: object = None
        sent = retried = False  # after a request went out, a retry may find its topic
        while time.monotonic() < deadline:
            try:
                meta = self.metadata([])
                ctrl = next((b for b in meta.brokers if b.node_id == meta.controller_id), None)
                if ctrl is None:
                    last = f"no controller in Metadata (controller_id {meta.controller_id})"
                else:
                    with kafkawire.Connection(ctrl.host, ctrl.port, 10) as c:
                        sent = True
                        r = c.create_topics(
                            5, [kafkawire.NewTopic(topic, partitions, replication_factor,
                                                   configs=dict(configs or {}))],
                            timeout_ms=int(max(1.0, deadline - time.monotonic()) * 1000),
                            timeout=max(1.0, deadline - time.monotonic()) + 5)
                    t = r.topic(topic)
                    if t is None:
                        raise NodeError(f"CreateTopics answer without {topic}: {r}")
                    if t.error_code == kafkawire.NONE or (
                            (exist_ok or retried) and
                            t.error_code == kafkawire.TOPIC_ALREADY_EXISTS):
                        return
                    last = (f"CreateTopics {topic} on node {ctrl.node_id}: error "
                            f"{t.error_code} {t.error_message!r}")
                    if t.error_code not in RETRIABLE_CREATE_ERRORS:
                        raise NodeError(last)
            except (OSError, kafkawire.WireError, TimeoutError) as e:
                last = e
            retried = sent
            time.sleep(0.2)
        raise TimeoutError(f"could not create {topic} within {timeout:.0f} s: {last}")

    def __repr__(self) -> str:
        return f"SluiceCluster({', '.join(repr(n) for n in self.nodes)})"


# NOT_CONTROLLER (41), REQUEST_TIMED_OUT (7), NOT_LEADER_OR_FOLLOWER (6): the controller moved
# or has not finished electing; try again.
RETRIABLE_CREATE_ERRORS = {41, 7, 6}

__all__ = ["ClusterNode", "SluiceCluster", "NodeError", "wait_until"]
