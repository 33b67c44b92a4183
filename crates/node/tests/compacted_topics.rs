//! A compacted topic keeps the latest record per key, so, as in Kafka, a batch holding a record
//! without a key is refused whole with INVALID_RECORD, and (Produce v8+, KIP-467) the response
//! names each keyless record so the client fails exactly those and retries nothing.

mod common;

use bytes::Bytes;
use common::TestNode;
use kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::records::{NewRecord, ProducerInfo, build_batch};

const INVALID_RECORD: i16 = 87;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// A batch whose records have the given keys (`None`: no key).
fn keyed_batch(keys: &[Option<&[u8]>]) -> Bytes {
    let records: Vec<NewRecord<'_>> = keys
        .iter()
        .map(|k| NewRecord {
            key: *k,
            value: Some(b"value"),
            headers: &[],
            timestamp: 1_700_000_000_000,
        })
        .collect();
    Bytes::from(build_batch(&records, ProducerInfo::NONE))
}

async fn create_topic(conn: &mut common::Conn, topic: &str, policy: &str) {
    let mut t = CreatableTopic::default();
    t.name = name(topic);
    t.num_partitions = 1;
    t.replication_factor = 1;
    let mut c = CreatableTopicConfig::default();
    c.name = StrBytes::from_static_str("cleanup.policy");
    c.value = Some(StrBytes::from_string(policy.to_string()));
    t.configs = vec![c];
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 5000;
    let ResponseKind::CreateTopics(r) = conn
        .call(ApiKey::CreateTopics, 7, RequestKind::CreateTopics(req))
        .await
    else {
        panic!("wrong kind")
    };
    assert_eq!(r.topics[0].error_code, 0, "{:?}", r.topics[0].error_message);
}

async fn produce(
    conn: &mut common::Conn,
    version: i16,
    topic: &str,
    batch: Bytes,
) -> PartitionProduceResponse {
    common::produce_one(conn, version, topic, batch).await
}

async fn log_end(conn: &mut common::Conn, topic: &str) -> i64 {
    let mut p = ListOffsetsPartition::default();
    p.partition_index = 0;
    p.timestamp = -1;
    let mut t = ListOffsetsTopic::default();
    t.name = name(topic);
    t.partitions = vec![p];
    let mut req = ListOffsetsRequest::default();
    req.replica_id = (-1).into();
    req.topics = vec![t];
    let ResponseKind::ListOffsets(r) = conn
        .call(ApiKey::ListOffsets, 7, RequestKind::ListOffsets(req))
        .await
    else {
        panic!("wrong kind")
    };
    r.topics[0].partitions[0].offset
}

#[tokio::test]
async fn keyless_records_fail_the_batch_and_are_named() {
    let node = TestNode::start(&[]).await;
    let mut conn = node.connect().await;
    create_topic(&mut conn, "compacted", "compact,delete").await;

    let r = produce(
        &mut conn,
        9,
        "compacted",
        keyed_batch(&[Some(b"k0"), None, Some(b"k2"), None]),
    )
    .await;
    assert_eq!(r.error_code, INVALID_RECORD);
    let indexes: Vec<i32> = r.record_errors.iter().map(|e| e.batch_index).collect();
    assert_eq!(indexes, vec![1, 3], "exactly the keyless records are named");
    assert!(
        r.record_errors[0]
            .batch_index_error_message
            .as_ref()
            .is_some_and(|m| m.contains("without key")),
        "{:?}",
        r.record_errors[0].batch_index_error_message
    );
    assert_eq!(log_end(&mut conn, "compacted").await, 0, "nothing appended");

    // Produce v7 has no record_errors field: the batch still fails as a whole.
    let r = produce(&mut conn, 7, "compacted", keyed_batch(&[None])).await;
    assert_eq!(r.error_code, INVALID_RECORD);

    let r = produce(
        &mut conn,
        9,
        "compacted",
        keyed_batch(&[Some(b"a"), Some(b"b")]),
    )
    .await;
    assert_eq!((r.error_code, r.base_offset), (0, 0));
    assert_eq!(log_end(&mut conn, "compacted").await, 2);
    node.stop().await;
}

#[tokio::test]
async fn keyless_records_are_fine_on_a_delete_topic() {
    let node = TestNode::start(&[]).await;
    let mut conn = node.connect().await;
    create_topic(&mut conn, "plain", "delete").await;
    let r = produce(&mut conn, 9, "plain", keyed_batch(&[None, Some(b"k")])).await;
    assert_eq!((r.error_code, r.base_offset), (0, 0));
    assert!(r.record_errors.is_empty());
    node.stop().await;
}
