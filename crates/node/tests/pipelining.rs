//! Requests pipelined on one connection: answered in request order, appended in request order,
//! and a slow request (a long-poll fetch) delays only the answers behind it, not the work.

mod common;

use std::time::{Duration, Instant};

use common::{TestNode, batch};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, BrokerId, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;

fn produce(topic: &str, value: &[u8]) -> RequestKind {
    let mut req = ProduceRequest::default();
    req.acks = -1;
    req.timeout_ms = 5000;
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    let mut p = PartitionProduceData::default();
    p.index = 0;
    p.records = Some(batch(&[value], -1, -1));
    t.partition_data = vec![p];
    req.topic_data = vec![t];
    RequestKind::Produce(req)
}

fn fetch(topic: &str, offset: i64, max_wait_ms: i32) -> RequestKind {
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_wait_ms = max_wait_ms;
    req.min_bytes = 1;
    req.max_bytes = 1 << 20;
    let mut t = FetchTopic::default();
    t.topic = TopicName(StrBytes::from_string(topic.to_string()));
    let mut p = FetchPartition::default();
    p.partition = 0;
    p.fetch_offset = offset;
    p.partition_max_bytes = 1 << 20;
    t.partitions = vec![p];
    req.topics = vec![t];
    RequestKind::Fetch(req)
}

async fn create(node: &TestNode, topic: &str) {
    // Metadata auto-creates the topic.
    let mut conn = node.connect().await;
    let mut req = kafka_protocol::messages::MetadataRequest::default();
    let mut t = kafka_protocol::messages::metadata_request::MetadataRequestTopic::default();
    t.name = Some(TopicName(StrBytes::from_string(topic.to_string())));
    req.topics = Some(vec![t]);
    conn.call(ApiKey::Metadata, 12, RequestKind::Metadata(req))
        .await;
}

#[tokio::test]
async fn pipelined_produces_are_appended_and_answered_in_order() {
    let node = TestNode::start(&[]).await;
    create(&node, "pipe").await;
    let mut conn = node.connect().await;
    let mut sent = Vec::new();
    for i in 0..50u32 {
        sent.push(
            conn.send(ApiKey::Produce, 9, &produce("pipe", &i.to_be_bytes()))
                .await,
        );
    }
    for (i, correlation) in sent.into_iter().enumerate() {
        let (got, response) = conn.receive(ApiKey::Produce, 9).await;
        assert_eq!(got, correlation, "responses come back in request order");
        let ResponseKind::Produce(r) = response else {
            panic!("wrong kind")
        };
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(
            (p.error_code, p.base_offset),
            (0, i as i64),
            "request {i} appended in order"
        );
    }
    node.stop().await;
}

#[tokio::test]
async fn a_long_poll_is_woken_by_a_produce_on_another_connection() {
    let node = TestNode::start(&[]).await;
    create(&node, "wake").await;
    let mut consumer = node.connect().await;
    let started = Instant::now();
    let correlation = consumer
        .send(ApiKey::Fetch, 12, &fetch("wake", 0, 10_000))
        .await;
    let mut producer = node.connect().await;
    producer
        .call(ApiKey::Produce, 9, produce("wake", b"hello"))
        .await;
    let (got, response) = consumer.receive(ApiKey::Fetch, 12).await;
    assert_eq!(got, correlation);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the fetch waited for its timeout instead of the data"
    );
    let ResponseKind::Fetch(r) = response else {
        panic!("wrong kind")
    };
    let records = r.responses[0].partitions[0]
        .records
        .clone()
        .unwrap_or_default();
    assert!(records.windows(5).any(|w| w == b"hello"));
    node.stop().await;
}

#[tokio::test]
async fn work_behind_a_long_poll_is_done_at_once_and_answered_in_order() {
    let node = TestNode::start(&[]).await;
    create(&node, "behind").await;
    let mut conn = node.connect().await;
    let started = Instant::now();
    // A fetch that waits (nothing to read), then a produce on the same connection.
    let fetch_corr = conn
        .send(ApiKey::Fetch, 12, &fetch("behind", 0, 1_500))
        .await;
    let produce_corr = conn
        .send(ApiKey::Produce, 9, &produce("behind", b"later"))
        .await;
    let version_corr = conn
        .send(
            ApiKey::ApiVersions,
            3,
            &RequestKind::ApiVersions(ApiVersionsRequest::default()),
        )
        .await;
    // The produce behind the fetch is appended right away: it wakes the fetch, which answers
    // well before its 1.5 s timeout, with the produced record.
    let (got, response) = conn.receive(ApiKey::Fetch, 12).await;
    assert_eq!(got, fetch_corr);
    let ResponseKind::Fetch(r) = response else {
        panic!("wrong kind")
    };
    let records = r.responses[0].partitions[0]
        .records
        .clone()
        .unwrap_or_default();
    assert!(
        records.windows(5).any(|w| w == b"later"),
        "the produce behind the fetch was not applied"
    );
    assert!(started.elapsed() < Duration::from_millis(1_400));
    assert_eq!(conn.receive(ApiKey::Produce, 9).await.0, produce_corr);
    assert_eq!(conn.receive(ApiKey::ApiVersions, 3).await.0, version_corr);
    node.stop().await;
}

#[tokio::test]
async fn big_requests_beyond_the_memory_budget_wait_their_turn() {
    // Room for two 900 KB requests at a time; six connections send one each at once.
    let node = TestNode::start(&[
        ("queued.max.request.bytes", "2097152"),
        ("socket.request.max.bytes", "1048576"),
        ("message.max.bytes", "1000000"),
    ])
    .await;
    create(&node, "budget").await;
    let value = vec![7u8; 900_000];
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut conn = node.connect().await;
        let request = produce("budget", &value);
        tasks.push(tokio::spawn(async move {
            conn.call(ApiKey::Produce, 9, request).await
        }));
    }
    let mut offsets = Vec::new();
    for t in tasks {
        let ResponseKind::Produce(r) = t.await.expect("task") else {
            panic!("wrong kind")
        };
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0);
        offsets.push(p.base_offset);
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (0..6).collect::<Vec<i64>>());
    node.stop().await;
}
