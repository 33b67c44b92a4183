//! A node started in-process on an ephemeral port, and a bare Kafka connection to talk to it.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use sluice_node::Node;
use sluice_node::config::BrokerConfig;
use sluice_protocol::client::{decode_response, encode_request};
use sluice_protocol::records::{NewRecord, ProducerInfo, build_batch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct TestNode {
    pub node: Option<Node>,
    pub dir: tempfile::TempDir,
    pub addr: std::net::SocketAddr,
}

impl TestNode {
    pub async fn start(overrides: &[(&str, &str)]) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let (node, addr) = start_in(dir.path(), overrides, None).await;
        TestNode {
            node: Some(node),
            dir,
            addr,
        }
    }

    /// Stops cleanly and starts again on the same port and data dir.
    pub async fn restart(&mut self, overrides: &[(&str, &str)]) {
        if let Some(node) = self.node.take() {
            node.stop().await.expect("clean stop");
        }
        let (node, addr) = start_in(self.dir.path(), overrides, Some(self.addr)).await;
        self.node = Some(node);
        self.addr = addr;
    }

    pub async fn connect(&self) -> Conn {
        Conn::connect(self.addr).await
    }

    pub async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.stop().await.expect("clean stop");
        }
    }
}

async fn start_in(
    dir: &std::path::Path,
    overrides: &[(&str, &str)],
    addr: Option<std::net::SocketAddr>,
) -> (Node, std::net::SocketAddr) {
    let map: BTreeMap<String, String> = overrides
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let listener = TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().expect("addr")))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let config = BrokerConfig::new(1, &addr.to_string(), None, None, dir.to_path_buf(), map)
        .expect("config");
    let node = Node::start_with_listener(config, listener)
        .await
        .expect("node starts");
    (node, addr)
}

/// One client connection speaking whole frames.
pub struct Conn {
    stream: TcpStream,
    next_correlation: i32,
}

impl Conn {
    pub async fn connect(addr: std::net::SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Conn {
            stream,
            next_correlation: 1,
        }
    }

    /// Sends a request and reads its response.
    pub async fn call(&mut self, api_key: ApiKey, version: i16, body: RequestKind) -> ResponseKind {
        let correlation = self.send(api_key, version, &body).await;
        let (got, response) = self.receive(api_key, version).await;
        assert_eq!(got, correlation, "correlation id of {api_key:?} v{version}");
        response
    }

    pub async fn send(&mut self, api_key: ApiKey, version: i16, body: &RequestKind) -> i32 {
        let correlation = self.next_correlation;
        self.next_correlation += 1;
        let mut out = BytesMut::new();
        encode_request(&mut out, api_key, version, correlation, "sluice-test", body)
            .expect("request encodes");
        self.stream.write_all(&out).await.expect("write");
        correlation
    }

    pub async fn receive(&mut self, api_key: ApiKey, version: i16) -> (i32, ResponseKind) {
        let frame = self.read_frame().await.unwrap_or_else(|| {
            panic!("connection closed instead of answering {api_key:?} v{version}")
        });
        decode_response(frame, api_key, version).expect("response decodes")
    }

    /// Reads one frame; None if the peer closed the connection.
    pub async fn read_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        if self.stream.read_exact(&mut len).await.is_err() {
            return None;
        }
        let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut buf).await.ok()?;
        Some(Bytes::from(buf))
    }

    pub async fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }
}

/// An uncompressed batch of `values`, as a producer would build it.
pub fn batch(values: &[&[u8]], producer_id: i64, base_sequence: i32) -> Bytes {
    let records: Vec<NewRecord<'_>> = values
        .iter()
        .enumerate()
        .map(|(i, v)| NewRecord {
            key: None,
            value: Some(v),
            headers: &[],
            timestamp: 1_700_000_000_000 + i as i64,
        })
        .collect();
    let producer = if producer_id >= 0 {
        ProducerInfo {
            producer_id,
            producer_epoch: 0,
            base_sequence,
        }
    } else {
        ProducerInfo::NONE
    };
    Bytes::from(build_batch(&records, producer))
}

/// Produces `batch` to partition 0 of `topic` with acks=all and returns that partition's answer.
pub async fn produce_one(
    conn: &mut Conn,
    version: i16,
    topic: &str,
    batch: Bytes,
) -> kafka_protocol::messages::produce_response::PartitionProduceResponse {
    let ResponseKind::Produce(mut r) = conn
        .call(
            ApiKey::Produce,
            version,
            produce_request(topic, batch, 10_000),
        )
        .await
    else {
        panic!("wrong kind")
    };
    r.responses.remove(0).partition_responses.remove(0)
}

/// An acks=all produce of `batch` to partition 0 of `topic`.
pub fn produce_request(topic: &str, batch: Bytes, timeout_ms: i32) -> RequestKind {
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::messages::produce_request::{
        PartitionProduceData, ProduceRequest, TopicProduceData,
    };
    let mut p = PartitionProduceData::default();
    p.index = 0;
    p.records = Some(batch);
    let mut t = TopicProduceData::default();
    t.name = TopicName(kafka_protocol::protocol::StrBytes::from_string(
        topic.to_string(),
    ));
    t.partition_data = vec![p];
    let mut req = ProduceRequest::default();
    req.acks = -1;
    req.timeout_ms = timeout_ms;
    req.topic_data = vec![t];
    RequestKind::Produce(req)
}
