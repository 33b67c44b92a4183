"""A tiny raw-socket Kafka protocol helper, written from the Kafka protocol spec.

It exists for two jobs: the harness's readiness check (does the node answer ApiVersions?) and
bad-input tests that need to send what no well-behaved client sends (unknown versions, truncated
frames, garbage). It builds request headers v0/v1/v2, ApiVersions (any version, including ones
the broker does not know), Metadata v0-v13 and CreateTopics v2-v7 by hand, and parses their
responses. (CreateTopics is here so that scripts outside the venv, scripts/bench, can create a
topic with a replication factor.)

Standard library only, so scripts outside the venv (librdkafka/run-suite) can use it too.

Layout of a frame: int32 size, then the request header, then the body. Request header v0 is
(api_key i16, api_version i16, correlation_id i32); v1 adds client_id (nullable i16 string);
v2 adds tagged fields. Response header v0 is (correlation_id i32); v1 adds tagged fields. The
ApiVersions response header is always v0 (KIP-511).
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from dataclasses import dataclass, field

# API keys used here by name; any other key can be passed as an int.
PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
API_VERSIONS = 18
CREATE_TOPICS = 19

# Error codes the helpers check for.
NONE = 0
CORRUPT_MESSAGE = 2
UNSUPPORTED_VERSION = 35
TOPIC_ALREADY_EXISTS = 36
INVALID_REQUEST = 42

# First flexible (KIP-482) version of each request, from Kafka 4.x's message definitions.
# None = never flexible. Decides the request header (v1 or v2) and response header (v0 or v1).
FIRST_FLEXIBLE_VERSION: dict[int, int | None] = {
    0: 9, 1: 12, 2: 6, 3: 9, 8: 8, 9: 6, 10: 3, 11: 6, 12: 4, 13: 4, 14: 4, 15: 5, 16: 3,
    17: None, 18: 3, 19: 5, 20: 4, 21: 2, 22: 2, 23: 4, 24: 3, 25: 3, 26: 3, 27: 1, 28: 3,
    29: 2, 30: 2, 31: 2, 32: 4, 33: 2, 34: 2, 35: 2, 36: 2, 37: 2, 42: 2, 43: 2, 44: 1,
    45: 0, 46: 0, 47: None, 48: 1, 49: 1, 50: 0, 51: 0, 55: 0, 57: 0, 60: 0, 61: 0, 65: 0,
    66: 0, 68: 0, 69: 0, 71: 0, 72: 0, 74: 0, 75: 0,
}


def is_flexible(api_key: int, api_version: int) -> bool:
    first = FIRST_FLEXIBLE_VERSION.get(api_key)
    return first is not None and api_version >= first


def request_header_version(api_key: int, api_version: int) -> int:
    return 2 if is_flexible(api_key, api_version) else 1


def response_header_version(api_key: int, api_version: int) -> int:
    if api_key == API_VERSIONS:
        return 0  # KIP-511: always v0, so a client can read it before knowing the versions
    return 1 if is_flexible(api_key, api_version) else 0


class WireError(Exception):
    """A response could not be read or parsed."""


# --------------------------------------------------------------------------- encoding


class Writer:
    """Appends Kafka primitive types to a byte buffer."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def bytes(self) -> bytes:
        return bytes(self.buf)

    def raw(self, b: bytes) -> "Writer":
        self.buf += b
        return self

    def int8(self, v: int) -> "Writer":
        self.buf += struct.pack(">b", v)
        return self

    def boolean(self, v: bool) -> "Writer":
        return self.int8(1 if v else 0)

    def int16(self, v: int) -> "Writer":
        self.buf += struct.pack(">h", v)
        return self

    def int32(self, v: int) -> "Writer":
        self.buf += struct.pack(">i", v)
        return self

    def int64(self, v: int) -> "Writer":
        self.buf += struct.pack(">q", v)
        return self

    def uvarint(self, v: int) -> "Writer":
        if v < 0:
            raise ValueError("uvarint must be >= 0")
        while True:
            b = v & 0x7F
            v >>= 7
            if v:
                self.buf.append(b | 0x80)
            else:
                self.buf.append(b)
                return self

    def varint(self, v: int) -> "Writer":
        return self.uvarint((v << 1) ^ (v >> 63))  # zigzag

    def uuid(self, v: uuid.UUID | None) -> "Writer":
        self.buf += (v or uuid.UUID(int=0)).bytes
        return self

    def string(self, s: str | None) -> "Writer":
        """int16-length string; None encodes as null (-1)."""
        if s is None:
            return self.int16(-1)
        b = s.encode()
        return self.int16(len(b)).raw(b)

    def compact_string(self, s: str | None) -> "Writer":
        """uvarint(length+1) string; None encodes as null (0)."""
        if s is None:
            return self.uvarint(0)
        b = s.encode()
        return self.uvarint(len(b) + 1).raw(b)

    def array_len(self, n: int | None) -> "Writer":
        return self.int32(-1 if n is None else n)

    def compact_array_len(self, n: int | None) -> "Writer":
        return self.uvarint(0 if n is None else n + 1)

    def empty_tagged_fields(self) -> "Writer":
        return self.uvarint(0)


def request_header(api_key: int, api_version: int, correlation_id: int,
                   client_id: str | None = "kafkawire", header_version: int | None = None) -> bytes:
    """Request header v0, v1 or v2 (default: the one the API and version call for)."""
    hv = request_header_version(api_key, api_version) if header_version is None else header_version
    w = Writer().int16(api_key).int16(api_version).int32(correlation_id)
    if hv >= 1:
        w.string(client_id)  # a plain (non-compact) string even in v2, for ApiVersions' sake
    if hv >= 2:
        w.empty_tagged_fields()
    return w.bytes()


def frame(payload: bytes) -> bytes:
    """Prefix a payload with its int32 length."""
    return struct.pack(">i", len(payload)) + payload


def api_versions_request(version: int, software_name: str = "kafkawire",
                         software_version: str = "0.1") -> bytes:
    """ApiVersions request body. v0-v2 have none; v3+ (and unknown newer ones) carry the
    client's software name and version (compact strings) and tagged fields."""
    if version < 3:
        return b""
    return (Writer().compact_string(software_name).compact_string(software_version)
            .empty_tagged_fields().bytes())


def metadata_request(version: int, topics: list[str] | None = None,
                     allow_auto_topic_creation: bool = False,
                     include_topic_authorized_operations: bool = False) -> bytes:
    """Metadata request body, v0-v13. topics=None asks for all topics (v0 has no null, so
    it sends an empty list, which meant "all" there)."""
    w = Writer()
    flexible = version >= 9
    if version == 0 and topics is None:
        topics = []
    if flexible:
        w.compact_array_len(None if topics is None else len(topics))
    else:
        w.array_len(None if topics is None else len(topics))
    for name in topics or []:
        if version >= 10:
            w.uuid(None)  # topic_id: zero = by name
        if flexible:
            w.compact_string(name).empty_tagged_fields()
        else:
            w.string(name)
    if version >= 4:
        w.boolean(allow_auto_topic_creation)
    if 8 <= version <= 10:
        w.boolean(False)  # include_cluster_authorized_operations
    if version >= 8:
        w.boolean(include_topic_authorized_operations)
    if flexible:
        w.empty_tagged_fields()
    return w.bytes()


def create_topics_request(version: int, topics: list["NewTopic"], timeout_ms: int = 60000,
                          validate_only: bool = False) -> bytes:
    """CreateTopics request body, v2-v7 (the versions Kafka 4.x keeps)."""
    if not 2 <= version <= 7:
        raise ValueError(f"CreateTopics v{version}: only v2-v7 are built here")
    w = Writer()
    flex = version >= 5
    string = w.compact_string if flex else w.string
    alen = w.compact_array_len if flex else w.array_len
    alen(len(topics))
    for t in topics:
        string(t.name)
        w.int32(t.num_partitions).int16(t.replication_factor)
        alen(len(t.assignments))
        for partition, brokers in sorted(t.assignments.items()):
            w.int32(partition)
            alen(len(brokers))
            for b in brokers:
                w.int32(b)
            if flex:
                w.empty_tagged_fields()
        alen(len(t.configs))
        for key, value in t.configs.items():
            string(key)
            string(value)
            if flex:
                w.empty_tagged_fields()
        if flex:
            w.empty_tagged_fields()
    w.int32(timeout_ms).boolean(validate_only)
    if flex:
        w.empty_tagged_fields()
    return w.bytes()


# --------------------------------------------------------------------------- decoding


class Reader:
    """Reads Kafka primitive types from a byte string; raises WireError on underflow."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = bytes(data)
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise WireError(f"read underflow: want {n} bytes at {self.pos}, have {self.remaining()}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def _unpack(self, fmt: str, n: int) -> int:
        return struct.unpack(fmt, self.take(n))[0]

    def int8(self) -> int:
        return self._unpack(">b", 1)

    def boolean(self) -> bool:
        return self.int8() != 0

    def int16(self) -> int:
        return self._unpack(">h", 2)

    def int32(self) -> int:
        return self._unpack(">i", 4)

    def int64(self) -> int:
        return self._unpack(">q", 8)

    def uvarint(self) -> int:
        v = shift = 0
        while True:
            b = self.take(1)[0]
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
            shift += 7
            if shift > 63:
                raise WireError("uvarint too long")

    def varint(self) -> int:
        u = self.uvarint()
        return (u >> 1) ^ -(u & 1)

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.take(16))

    def string(self) -> str | None:
        n = self.int16()
        return None if n == -1 else self.take(n).decode()

    def compact_string(self) -> str | None:
        n = self.uvarint()
        return None if n == 0 else self.take(n - 1).decode()

    def array_len(self) -> int | None:
        n = self.int32()
        return None if n == -1 else n

    def compact_array_len(self) -> int | None:
        n = self.uvarint()
        return None if n == 0 else n - 1

    def tagged_fields(self) -> dict[int, bytes]:
        out = {}
        for _ in range(self.uvarint()):
            tag = self.uvarint()
            out[tag] = self.take(self.uvarint())
        return out

    def str_(self, flexible: bool) -> str | None:
        return self.compact_string() if flexible else self.string()

    def len_(self, flexible: bool) -> int | None:
        return self.compact_array_len() if flexible else self.array_len()

    def int32_array(self, flexible: bool) -> list[int]:
        n = self.len_(flexible)
        return [self.int32() for _ in range(n or 0)]


@dataclass
class ApiVersionRange:
    api_key: int
    min_version: int
    max_version: int


@dataclass
class ApiVersionsResponse:
    error_code: int
    api_keys: dict[int, ApiVersionRange]
    throttle_time_ms: int = 0
    tagged_fields: dict[int, bytes] = field(default_factory=dict)
    parsed_as_version: int = 0

    def supports(self, api_key: int, version: int) -> bool:
        r = self.api_keys.get(api_key)
        return r is not None and r.min_version <= version <= r.max_version


def parse_api_versions_response(body: bytes, version: int) -> ApiVersionsResponse:
    """Parse an ApiVersions response body sent for a request of `version`. As KIP-511 says,
    an error answer (e.g. UNSUPPORTED_VERSION) is in v0 form whatever was asked."""
    r = Reader(body)
    error_code = r.int16()
    if error_code != NONE:
        version = 0
    flexible = version >= 3
    keys = {}
    for _ in range(r.len_(flexible) or 0):
        k, lo, hi = r.int16(), r.int16(), r.int16()
        if flexible:
            r.tagged_fields()
        keys[k] = ApiVersionRange(k, lo, hi)
    throttle = r.int32() if version >= 1 else 0
    tags = r.tagged_fields() if flexible else {}
    if r.remaining():
        raise WireError(f"{r.remaining()} trailing bytes after ApiVersions v{version} response")
    return ApiVersionsResponse(error_code, keys, throttle, tags, version)


@dataclass
class MetadataBroker:
    node_id: int
    host: str
    port: int
    rack: str | None = None


@dataclass
class MetadataPartition:
    error_code: int
    partition_index: int
    leader_id: int
    leader_epoch: int
    replica_nodes: list[int]
    isr_nodes: list[int]
    offline_replicas: list[int]


@dataclass
class MetadataTopic:
    error_code: int
    name: str | None
    topic_id: uuid.UUID | None
    is_internal: bool
    partitions: list[MetadataPartition]


@dataclass
class MetadataResponse:
    throttle_time_ms: int
    brokers: list[MetadataBroker]
    cluster_id: str | None
    controller_id: int
    topics: list[MetadataTopic]
    error_code: int = NONE

    def topic(self, name: str) -> MetadataTopic | None:
        return next((t for t in self.topics if t.name == name), None)


def parse_metadata_response(body: bytes, version: int) -> MetadataResponse:
    """Parse a Metadata response body, v0-v13."""
    r = Reader(body)
    flex = version >= 9
    throttle = r.int32() if version >= 3 else 0
    brokers = []
    for _ in range(r.len_(flex) or 0):
        b = MetadataBroker(r.int32(), r.str_(flex), r.int32())
        if version >= 1:
            b.rack = r.str_(flex)
        if flex:
            r.tagged_fields()
        brokers.append(b)
    cluster_id = r.str_(flex) if version >= 2 else None
    controller_id = r.int32() if version >= 1 else -1
    topics = []
    for _ in range(r.len_(flex) or 0):
        err = r.int16()
        name = r.str_(flex)
        topic_id = r.uuid() if version >= 10 else None
        internal = r.boolean() if version >= 1 else False
        parts = []
        for _ in range(r.len_(flex) or 0):
            p_err, idx, leader = r.int16(), r.int32(), r.int32()
            epoch = r.int32() if version >= 7 else -1
            replicas = r.int32_array(flex)
            isr = r.int32_array(flex)
            offline = r.int32_array(flex) if version >= 5 else []
            if flex:
                r.tagged_fields()
            parts.append(MetadataPartition(p_err, idx, leader, epoch, replicas, isr, offline))
        if version >= 8:
            r.int32()  # topic_authorized_operations
        if flex:
            r.tagged_fields()
        topics.append(MetadataTopic(err, name, topic_id, internal, parts))
    if 8 <= version <= 10:
        r.int32()  # cluster_authorized_operations
    error_code = r.int16() if version >= 13 else NONE
    if flex:
        r.tagged_fields()
    if r.remaining():
        raise WireError(f"{r.remaining()} trailing bytes after Metadata v{version} response")
    return MetadataResponse(throttle, brokers, cluster_id, controller_id, topics, error_code)


@dataclass
class NewTopic:
    """A topic to create: -1 partitions or replication factor = the broker's default;
    `assignments` maps a partition to its replicas (then both counts must be -1)."""
    name: str
    num_partitions: int = -1
    replication_factor: int = -1
    assignments: dict[int, list[int]] = field(default_factory=dict)
    configs: dict[str, str | None] = field(default_factory=dict)


@dataclass
class CreatedTopic:
    name: str
    error_code: int
    error_message: str | None
    topic_id: uuid.UUID | None = None
    num_partitions: int = -1       # v5+
    replication_factor: int = -1   # v5+


@dataclass
class CreateTopicsResponse:
    throttle_time_ms: int
    topics: list[CreatedTopic]

    def topic(self, name: str) -> CreatedTopic | None:
        return next((t for t in self.topics if t.name == name), None)


def parse_create_topics_response(body: bytes, version: int) -> CreateTopicsResponse:
    """Parse a CreateTopics response body, v2-v7 (per-topic configs are read and dropped)."""
    r = Reader(body)
    flex = version >= 5
    throttle = r.int32()
    topics = []
    for _ in range(r.len_(flex) or 0):
        name = r.str_(flex)
        topic_id = r.uuid() if version >= 7 else None
        t = CreatedTopic(name, r.int16(), r.str_(flex), topic_id)
        if version >= 5:
            t.num_partitions, t.replication_factor = r.int32(), r.int16()
            for _ in range(r.len_(flex) or 0):  # configs: name, value, read_only, source, sensitive
                r.str_(flex), r.str_(flex), r.boolean(), r.int8(), r.boolean()
                r.tagged_fields()
            r.tagged_fields()  # topic_config_error_code rides here (tag 0)
        topics.append(t)
    if flex:
        r.tagged_fields()
    if r.remaining():
        raise WireError(f"{r.remaining()} trailing bytes after CreateTopics v{version} response")
    return CreateTopicsResponse(throttle, topics)


# --------------------------------------------------------------------------- connection


class Connection:
    """One TCP connection to a broker, with blocking sends and deadline-bounded reads."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self._next_correlation_id = 1

    @classmethod
    def to(cls, bootstrap: str, timeout: float = 5.0) -> "Connection":
        host, _, port = bootstrap.rpartition(":")
        return cls(host, int(port), timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def next_correlation_id(self) -> int:
        cid = self._next_correlation_id
        self._next_correlation_id += 1
        return cid

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (no length prefix added)."""
        self.sock.sendall(data)

    def send_frame(self, payload: bytes) -> None:
        self.sock.sendall(frame(payload))

    def send_request(self, api_key: int, api_version: int, body: bytes,
                     correlation_id: int | None = None, client_id: str | None = "kafkawire",
                     header_version: int | None = None) -> int:
        """Frame and send one request; returns its correlation id."""
        cid = self.next_correlation_id() if correlation_id is None else correlation_id
        self.send_frame(request_header(api_key, api_version, cid, client_id, header_version) + body)
        return cid

    def _recv_exact(self, n: int, deadline: float) -> bytes:
        chunks, got = [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out reading {n} bytes (got {got})")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(min(n - got, 1 << 20))
            except socket.timeout as e:
                raise TimeoutError(f"timed out reading {n} bytes (got {got})") from e
            if not chunk:
                raise ConnectionError(f"connection closed by peer after {got} of {n} bytes")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def recv_frame(self, timeout: float | None = None, max_size: int = 100 << 20) -> bytes:
        """Read one length-prefixed frame; returns its payload (without the length)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        (size,) = struct.unpack(">i", self._recv_exact(4, deadline))
        if size < 0 or size > max_size:
            raise WireError(f"bad response frame size {size}")
        return self._recv_exact(size, deadline)

    def recv_response(self, api_key: int, api_version: int, correlation_id: int,
                      timeout: float | None = None) -> bytes:
        """Read one response frame, check its header, return the body."""
        r = Reader(self.recv_frame(timeout))
        cid = r.int32()
        if cid != correlation_id:
            raise WireError(f"correlation id {cid}, expected {correlation_id}")
        if response_header_version(api_key, api_version) >= 1:
            r.tagged_fields()
        return r.data[r.pos:]

    def request(self, api_key: int, api_version: int, body: bytes,
                timeout: float | None = None, **kw) -> bytes:
        cid = self.send_request(api_key, api_version, body, **kw)
        return self.recv_response(api_key, api_version, cid, timeout)

    def api_versions(self, version: int = 0, timeout: float | None = None) -> ApiVersionsResponse:
        body = self.request(API_VERSIONS, version, api_versions_request(version), timeout)
        return parse_api_versions_response(body, version)

    def metadata(self, version: int, topics: list[str] | None = None,
                 allow_auto_topic_creation: bool = False,
                 timeout: float | None = None) -> MetadataResponse:
        body = self.request(METADATA, version,
                            metadata_request(version, topics, allow_auto_topic_creation), timeout)
        return parse_metadata_response(body, version)

    def create_topics(self, version: int, topics: list[NewTopic], timeout_ms: int = 60000,
                      validate_only: bool = False,
                      timeout: float | None = None) -> CreateTopicsResponse:
        body = self.request(CREATE_TOPICS, version,
                            create_topics_request(version, topics, timeout_ms, validate_only),
                            timeout)
        return parse_create_topics_response(body, version)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True if the peer closes the connection (EOF or reset) within `timeout`, discarding
        anything it sends first; False if it is still open when the time is up."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(65536):
                    return True
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True


def probe(bootstrap: str, timeout: float = 2.0) -> ApiVersionsResponse:
    """One ApiVersions v0 round trip on a fresh connection (the readiness check)."""
    with Connection.to(bootstrap, timeout) as c:
        return c.api_versions(0, timeout)
