//! One request at a time over a TCP connection: ApiVersions negotiation, topic creation and the
//! metadata wait. The load loops in [`crate::produce`] and [`crate::fetch`] pipeline on their own
//! connections and only borrow the frame helpers here.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_protocol::client::{decode_response, encode_request};
use sluice_protocol::kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreateTopicsRequest,
};
use sluice_protocol::kafka_protocol::messages::metadata_request::{
    MetadataRequest, MetadataRequestTopic,
};
use sluice_protocol::kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, RequestKind, ResponseKind, TopicName,
};
use sluice_protocol::kafka_protocol::protocol::StrBytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Client id sent in every request header.
pub const CLIENT_ID: &str = "sluice-loadgen";
/// Largest response frame accepted (a Fetch answer is bounded by its max_bytes).
pub const MAX_RESPONSE: usize = 256 << 20;

/// An error with a message for the operator; the load generator stops on any.
pub type Error = String;

/// Reads one length-prefixed frame into `buf` (replacing its contents) and returns it.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> Result<Bytes, Error> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let len = i32::from_be_bytes(len);
    if len < 4 || len as usize > MAX_RESPONSE {
        return Err(format!("bad response frame length {len}"));
    }
    buf.clear();
    buf.resize(len as usize, 0);
    r.read_exact(&mut buf[..])
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(buf.split().freeze())
}

/// The versions this load generator uses, picked from what the broker advertises.
#[derive(Debug, Clone, Copy)]
pub struct Versions {
    /// Produce (names, not topic ids: at most v12).
    pub produce: i16,
    /// Fetch (names, not topic ids: at most v12).
    pub fetch: i16,
    /// Metadata.
    pub metadata: i16,
    /// CreateTopics.
    pub create_topics: i16,
}

/// A connection used one request at a time.
pub struct Conn {
    stream: TcpStream,
    correlation: i32,
    buf: BytesMut,
}

impl Conn {
    /// Connects (loopback only; the harness never points it elsewhere).
    pub async fn connect(addr: &str) -> Result<Self, Error> {
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect to {addr}: timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Self {
            stream,
            correlation: 0,
            buf: BytesMut::new(),
        })
    }

    /// Gives up the socket for a pipelined load loop.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Sends one request and waits (at most 30 s) for its response.
    pub async fn call(
        &mut self,
        api_key: ApiKey,
        version: i16,
        body: RequestKind,
    ) -> Result<ResponseKind, Error> {
        self.correlation += 1;
        let mut out = BytesMut::new();
        encode_request(
            &mut out,
            api_key,
            version,
            self.correlation,
            CLIENT_ID,
            &body,
        )
        .map_err(|e| e.to_string())?;
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let frame = tokio::time::timeout(
            Duration::from_secs(30),
            read_frame(&mut self.stream, &mut self.buf),
        )
        .await
        .map_err(|_| format!("{api_key:?}: no response in 30 s"))??;
        let (corr, body) = decode_response(frame, api_key, version).map_err(|e| e.to_string())?;
        if corr != self.correlation {
            return Err(format!(
                "{api_key:?}: correlation id {corr}, expected {}",
                self.correlation
            ));
        }
        Ok(body)
    }

    /// Asks ApiVersions (v0, which every broker answers) and picks our versions.
    pub async fn negotiate(&mut self) -> Result<Versions, Error> {
        let ResponseKind::ApiVersions(r) = self
            .call(
                ApiKey::ApiVersions,
                0,
                RequestKind::ApiVersions(ApiVersionsRequest::default()),
            )
            .await?
        else {
            return Err("ApiVersions: unexpected response kind".into());
        };
        if r.error_code != 0 {
            return Err(format!("ApiVersions error {}", r.error_code));
        }
        let pick = |key: ApiKey, ours: i16| -> Result<i16, Error> {
            let theirs = r
                .api_keys
                .iter()
                .find(|k| k.api_key == key as i16)
                .ok_or_else(|| format!("broker does not offer {key:?}"))?;
            let v = ours.min(theirs.max_version).min(key.valid_versions().max);
            if v < theirs.min_version || v < key.valid_versions().min {
                return Err(format!(
                    "no common {key:?} version (broker {}..{})",
                    theirs.min_version, theirs.max_version
                ));
            }
            Ok(v)
        };
        Ok(Versions {
            produce: pick(ApiKey::Produce, 12)?,
            fetch: pick(ApiKey::Fetch, 12)?,
            metadata: pick(ApiKey::Metadata, 12)?,
            create_topics: pick(ApiKey::CreateTopics, 7)?,
        })
    }

    /// Creates `topic` with `partitions` partitions (replication factor 1); an existing topic is
    /// fine. Then waits (at most 10 s) until Metadata shows every partition with a leader.
    pub async fn create_topic(
        &mut self,
        v: &Versions,
        topic: &str,
        partitions: i32,
    ) -> Result<(), Error> {
        let mut t = CreatableTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.to_string()));
        t.num_partitions = partitions;
        t.replication_factor = 1;
        let mut req = CreateTopicsRequest::default();
        req.topics.push(t);
        req.timeout_ms = 10_000;
        let ResponseKind::CreateTopics(r) = self
            .call(
                ApiKey::CreateTopics,
                v.create_topics,
                RequestKind::CreateTopics(req),
            )
            .await?
        else {
            return Err("CreateTopics: unexpected response kind".into());
        };
        for t in &r.topics {
            // 36 TOPIC_ALREADY_EXISTS
            if t.error_code != 0 && t.error_code != 36 {
                return Err(format!(
                    "CreateTopics {topic}: error {} {}",
                    t.error_code,
                    t.error_message.as_deref().unwrap_or("")
                ));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let have = self.partitions_with_leader(v, topic).await?;
            if have >= partitions {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "topic {topic}: {have} of {partitions} partitions have a leader after 10 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many partitions of `topic` Metadata shows with a leader.
    pub async fn partitions_with_leader(
        &mut self,
        v: &Versions,
        topic: &str,
    ) -> Result<i32, Error> {
        let mut t = MetadataRequestTopic::default();
        t.name = Some(TopicName(StrBytes::from_string(topic.to_string())));
        let mut req = MetadataRequest::default();
        req.topics = Some(vec![t]);
        req.allow_auto_topic_creation = false;
        let ResponseKind::Metadata(r) = self
            .call(ApiKey::Metadata, v.metadata, RequestKind::Metadata(req))
            .await?
        else {
            return Err("Metadata: unexpected response kind".into());
        };
        Ok(r.topics
            .iter()
            .filter(|t| t.error_code == 0)
            .flat_map(|t| t.partitions.iter())
            .filter(|p| p.error_code == 0 && p.leader_id.0 >= 0)
            .count() as i32)
    }
}
