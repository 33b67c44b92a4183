//! One blocking connection to one broker: ApiVersions on connect, then request/response calls,
//! every wait bounded by `--timeout`.
//!
//! The version of each request is the highest one that the broker advertised, the
//! kafka-protocol crate can encode, and this CLI builds requests for ([`CLIENT_VERSIONS`]);
//! a version the broker did not advertise is never sent.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_protocol::client::{decode_response, encode_request};
use sluice_protocol::kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use sluice_protocol::kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use sluice_protocol::kafka_protocol::messages::*;
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use crate::error::{ClientError, Result, seconds};

/// Client id sent in every request header.
const CLIENT_ID: &str = "sluicectl";

/// Largest response frame accepted; anything larger means the stream lost its framing.
const MAX_RESPONSE: usize = 256 << 20;

/// Kafka's UNSUPPORTED_VERSION, the KIP-511 answer to a too-new ApiVersions request.
const UNSUPPORTED_VERSION: i16 = 35;

/// The versions this CLI builds requests for, per API (each builder sets exactly the fields of
/// the version it is given). Floors are where a needed field appeared: Metadata v4 can ask the
/// broker not to auto-create a topic, JoinGroup v1 carries a rebalance timeout, OffsetFetch v2
/// takes "every committed offset".
pub(crate) const CLIENT_VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::Metadata, 4, 13),
    (ApiKey::Produce, 3, 13),
    (ApiKey::Fetch, 4, 17),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 1, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 2, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::DeleteGroups, 0, 2),
];

/// A request body type, tied to its API key and response type.
pub(crate) trait Api: Sized {
    /// The API key.
    const KEY: ApiKey;
    /// The matching response body.
    type Response;
    /// Wraps the body for encoding.
    fn into_kind(self) -> RequestKind;
    /// Unwraps the decoded response, `None` if it is for another API.
    fn response(kind: ResponseKind) -> Option<Self::Response>;
}

macro_rules! apis {
    ($($name:ident: $req:ty => $resp:ty),* $(,)?) => {$(
        impl Api for $req {
            const KEY: ApiKey = ApiKey::$name;
            type Response = $resp;
            fn into_kind(self) -> RequestKind {
                RequestKind::$name(self)
            }
            fn response(kind: ResponseKind) -> Option<$resp> {
                match kind {
                    ResponseKind::$name(r) => Some(r),
                    _ => None,
                }
            }
        }
    )*};
}

apis! {
    Metadata: MetadataRequest => MetadataResponse,
    Produce: ProduceRequest => ProduceResponse,
    Fetch: FetchRequest => FetchResponse,
    ListOffsets: ListOffsetsRequest => ListOffsetsResponse,
    CreateTopics: CreateTopicsRequest => CreateTopicsResponse,
    DeleteTopics: DeleteTopicsRequest => DeleteTopicsResponse,
    CreatePartitions: CreatePartitionsRequest => CreatePartitionsResponse,
    DescribeConfigs: DescribeConfigsRequest => DescribeConfigsResponse,
    IncrementalAlterConfigs: IncrementalAlterConfigsRequest => IncrementalAlterConfigsResponse,
    DescribeCluster: DescribeClusterRequest => DescribeClusterResponse,
    FindCoordinator: FindCoordinatorRequest => FindCoordinatorResponse,
    JoinGroup: JoinGroupRequest => JoinGroupResponse,
    SyncGroup: SyncGroupRequest => SyncGroupResponse,
    Heartbeat: HeartbeatRequest => HeartbeatResponse,
    LeaveGroup: LeaveGroupRequest => LeaveGroupResponse,
    OffsetCommit: OffsetCommitRequest => OffsetCommitResponse,
    OffsetFetch: OffsetFetchRequest => OffsetFetchResponse,
    ListGroups: ListGroupsRequest => ListGroupsResponse,
    DescribeGroups: DescribeGroupsRequest => DescribeGroupsResponse,
    DeleteGroups: DeleteGroupsRequest => DeleteGroupsResponse,
}

/// A connection to one broker, with the API versions it advertised.
pub(crate) struct Connection {
    stream: TcpStream,
    addr: String,
    timeout: Duration,
    versions: BTreeMap<i16, (i16, i16)>,
    next_correlation: i32,
}

impl Connection {
    /// Connects to `addr` (`host:port`) and asks for its API versions, all within `deadline`.
    pub(crate) fn open(addr: &str, timeout: Duration, deadline: Instant) -> Result<Connection> {
        let targets: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| {
                ClientError::Connection(format!("cannot resolve broker address {addr}: {e}"))
            })?
            .collect();
        let mut last =
            ClientError::Connection(format!("broker address {addr} resolves to nothing"));
        for target in targets {
            let Some(left) = remaining(deadline) else {
                return Err(ClientError::timeout(
                    format!("cannot connect to {addr}"),
                    timeout,
                ));
            };
            match TcpStream::connect_timeout(&target, left) {
                Ok(stream) => {
                    // Requests are small and each waits for its answer: do not let Nagle hold them.
                    let _ = stream.set_nodelay(true);
                    let mut conn = Connection {
                        stream,
                        addr: addr.to_string(),
                        timeout,
                        versions: BTreeMap::new(),
                        next_correlation: 1,
                    };
                    conn.negotiate(deadline)?;
                    return Ok(conn);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                    ) =>
                {
                    last = ClientError::timeout(format!("cannot connect to {addr}"), timeout);
                }
                Err(e) => {
                    last = ClientError::Connection(format!(
                        "cannot connect to {addr}: {}",
                        plain_io(&e)
                    ));
                }
            }
        }
        Err(last)
    }

    /// KIP-511: ask at our highest ApiVersions version; a broker that does not know it answers
    /// in v0 form with UNSUPPORTED_VERSION and its own range, and we ask again within it.
    fn negotiate(&mut self, deadline: Instant) -> Result<()> {
        let ours = client_range(ApiKey::ApiVersions).map_or(0, |(_, max)| max);
        let mut version = ours.min(ApiKey::ApiVersions.valid_versions().max);
        for _ in 0..2 {
            let mut req = ApiVersionsRequest::default();
            if version >= 3 {
                req.client_software_name = StrBytes::from_static_str(CLIENT_ID);
                req.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
            }
            let correlation = self.send(
                ApiKey::ApiVersions,
                version,
                RequestKind::ApiVersions(req),
                deadline,
            )?;
            let frame = self.read_frame(ApiKey::ApiVersions, deadline)?;
            let response = decode_api_versions(frame, version, correlation)?;
            if response.error_code == UNSUPPORTED_VERSION {
                let theirs = response
                    .api_keys
                    .iter()
                    .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                    .map_or(0, |k| k.max_version);
                version = theirs.min(version - 1).max(0);
                continue;
            }
            if response.error_code != 0 {
                return Err(ClientError::kafka(response.error_code, None, || {
                    format!("broker at {} refused ApiVersions", self.addr)
                }));
            }
            self.versions = response
                .api_keys
                .iter()
                .map(|k| (k.api_key, (k.min_version, k.max_version)))
                .collect();
            return Ok(());
        }
        Err(ClientError::Protocol(format!(
            "broker at {} and sluicectl share no ApiVersions version",
            self.addr
        )))
    }

    /// The version to send `key` at: the highest both sides support.
    pub(crate) fn version(&self, key: ApiKey) -> Result<i16> {
        let Some(&(bmin, bmax)) = self.versions.get(&(key as i16)) else {
            return Err(ClientError::Protocol(format!(
                "broker at {} does not support the {key:?} API",
                self.addr
            )));
        };
        let (cmin, cmax) = client_range(key).unwrap_or((0, -1));
        let codec = key.valid_versions();
        let lo = bmin.max(cmin).max(codec.min);
        let hi = bmax.min(cmax).min(codec.max);
        if lo > hi {
            return Err(ClientError::Protocol(format!(
                "broker at {} supports {key:?} v{bmin}-{bmax}, sluicectl speaks v{cmin}-{cmax}",
                self.addr
            )));
        }
        Ok(hi)
    }

    /// True when the broker advertises `key` at a version this CLI speaks.
    pub(crate) fn supports(&self, key: ApiKey) -> bool {
        self.version(key).is_ok()
    }

    /// Sends a request built for the negotiated version and waits up to `--timeout` (plus
    /// `broker_wait`, time the broker may hold the request on purpose) for its response.
    pub(crate) fn call<R: Api>(
        &mut self,
        build: impl FnOnce(i16) -> R,
        broker_wait: Duration,
    ) -> Result<(R::Response, i16)> {
        let version = self.version(R::KEY)?;
        let deadline = Instant::now() + self.timeout + broker_wait;
        let correlation = self.send(R::KEY, version, build(version).into_kind(), deadline)?;
        let frame = self.read_frame(R::KEY, deadline)?;
        let (got, body) = decode_response(frame, R::KEY, version).map_err(|e| {
            ClientError::Protocol(format!(
                "cannot decode the answer of broker at {}: {e}",
                self.addr
            ))
        })?;
        if got != correlation {
            return Err(ClientError::Protocol(format!(
                "broker at {} answered request {correlation} with correlation id {got}",
                self.addr
            )));
        }
        let body = R::response(body).ok_or_else(|| {
            ClientError::Protocol(format!(
                "broker at {} answered {:?} with another API",
                self.addr,
                R::KEY
            ))
        })?;
        Ok((body, version))
    }

    fn send(
        &mut self,
        key: ApiKey,
        version: i16,
        body: RequestKind,
        deadline: Instant,
    ) -> Result<i32> {
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let mut out = BytesMut::new();
        encode_request(&mut out, key, version, correlation, CLIENT_ID, &body)
            .map_err(|e| ClientError::Protocol(format!("cannot encode a request: {e}")))?;
        let left = remaining(deadline).ok_or_else(|| {
            ClientError::timeout(
                format!("broker at {} did not take {key:?}", self.addr),
                self.timeout,
            )
        })?;
        let _ = self.stream.set_write_timeout(Some(left));
        self.stream
            .write_all(&out)
            .map_err(|e| self.io_error(key, e))?;
        Ok(correlation)
    }

    fn read_frame(&mut self, key: ApiKey, deadline: Instant) -> Result<Bytes> {
        let mut len = [0u8; 4];
        self.read_exact_by(&mut len, key, deadline)?;
        let len = i32::from_be_bytes(len);
        let len = usize::try_from(len)
            .ok()
            .filter(|l| (4..=MAX_RESPONSE).contains(l))
            .ok_or_else(|| {
                ClientError::Protocol(format!(
                    "{} sent a response frame of {len} bytes; is it a Kafka listener?",
                    self.addr
                ))
            })?;
        let mut buf = vec![0u8; len];
        self.read_exact_by(&mut buf, key, deadline)?;
        Ok(Bytes::from(buf))
    }

    fn read_exact_by(&mut self, mut buf: &mut [u8], key: ApiKey, deadline: Instant) -> Result<()> {
        while !buf.is_empty() {
            let Some(left) = remaining(deadline) else {
                return Err(self.no_answer(key));
            };
            let _ = self.stream.set_read_timeout(Some(left));
            match self.stream.read(buf) {
                Ok(0) => {
                    return Err(ClientError::Connection(format!(
                        "broker at {} closed the connection instead of answering {key:?}",
                        self.addr
                    )));
                }
                Ok(n) => buf = &mut buf[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(key, e)),
            }
        }
        Ok(())
    }

    fn no_answer(&self, key: ApiKey) -> ClientError {
        ClientError::Timeout(format!(
            "broker at {} did not answer {key:?} within {}",
            self.addr,
            seconds(self.timeout)
        ))
    }

    fn io_error(&self, key: ApiKey, e: std::io::Error) -> ClientError {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => self.no_answer(key),
            _ => ClientError::Connection(format!(
                "connection to broker at {} failed: {}",
                self.addr,
                plain_io(&e)
            )),
        }
    }
}

fn decode_api_versions(
    frame: Bytes,
    version: i16,
    correlation: i32,
) -> Result<ApiVersionsResponse> {
    // A broker that does not know our version answers in v0 form (KIP-511); try that too.
    let decoded = decode_response(frame.clone(), ApiKey::ApiVersions, version)
        .or_else(|e| decode_response(frame, ApiKey::ApiVersions, 0).map_err(|_| e));
    match decoded {
        Ok((got, ResponseKind::ApiVersions(r))) if got == correlation => Ok(r),
        Ok(_) => Err(ClientError::Protocol(
            "the broker answered ApiVersions out of turn".into(),
        )),
        Err(e) => Err(ClientError::Protocol(format!(
            "cannot decode the ApiVersions answer: {e}"
        ))),
    }
}

fn client_range(key: ApiKey) -> Option<(i16, i16)> {
    CLIENT_VERSIONS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, lo, hi)| (lo, hi))
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// An I/O error as a lowercase phrase, without Rust's "(os error 111)" suffix.
fn plain_io(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = s.split(" (os error").next().unwrap_or(&s).to_string();
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_lowercase().chain(c).collect(),
        None => s,
    }
}

/// Checks a Kafka error code; `what` says what failed, for when the broker gave no message.
pub(crate) fn check(
    code: i16,
    message: Option<&StrBytes>,
    what: impl FnOnce() -> String,
) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(ClientError::kafka(code, message.map(|m| m.as_str()), what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_range_is_within_what_the_codec_speaks() {
        for &(key, lo, hi) in CLIENT_VERSIONS {
            let codec = key.valid_versions();
            assert!(lo <= hi, "{key:?}");
            assert!(
                codec.min <= lo && hi <= codec.max,
                "{key:?} v{lo}-{hi} vs codec {codec:?}"
            );
        }
    }

    #[test]
    fn io_errors_read_as_plain_phrases() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(plain_io(&e), "connection refused");
    }
}
