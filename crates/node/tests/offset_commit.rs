//! OffsetCommit for partitions that do not exist: as in Kafka, each gets
//! UNKNOWN_TOPIC_OR_PARTITION and nothing is stored for it, while the partitions that exist in
//! the same request are committed.

mod common;

use common::{Conn, TestNode};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequest, OffsetFetchRequestTopic};
use kafka_protocol::messages::{ApiKey, GroupId, RequestKind, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// Commits `offset` for each (topic, partition) outside group management (generation -1);
/// returns each partition's error code, in the response's order.
async fn commit(
    conn: &mut Conn,
    group: &str,
    parts: &[(&str, i32)],
    offset: i64,
) -> Vec<(String, i32, i16)> {
    let mut req = OffsetCommitRequest::default();
    req.group_id = GroupId(StrBytes::from_string(group.to_string()));
    req.generation_id_or_member_epoch = -1;
    for (topic, partition) in parts {
        let mut p = OffsetCommitRequestPartition::default();
        p.partition_index = *partition;
        p.committed_offset = offset;
        match req.topics.iter_mut().find(|t| t.name.0.as_str() == *topic) {
            Some(t) => t.partitions.push(p),
            None => {
                let mut t = OffsetCommitRequestTopic::default();
                t.name = name(topic);
                t.partitions.push(p);
                req.topics.push(t);
            }
        }
    }
    let ResponseKind::OffsetCommit(r) = conn
        .call(ApiKey::OffsetCommit, 8, RequestKind::OffsetCommit(req))
        .await
    else {
        panic!("wrong kind")
    };
    let mut out: Vec<(String, i32, i16)> = r
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.to_string(), p.partition_index, p.error_code))
        })
        .collect();
    out.sort();
    out
}

async fn create_topic_by_metadata(conn: &mut Conn, topic: &str) {
    let mut t = MetadataRequestTopic::default();
    t.name = Some(name(topic));
    let mut req = MetadataRequest::default();
    req.topics = Some(vec![t]);
    req.allow_auto_topic_creation = true;
    let ResponseKind::Metadata(r) = conn
        .call(ApiKey::Metadata, 12, RequestKind::Metadata(req))
        .await
    else {
        panic!("wrong kind")
    };
    assert_eq!(r.topics[0].partitions.len(), 2, "{topic} auto-created");
}

async fn committed(conn: &mut Conn, group: &str, topic: &str, partition: i32) -> i64 {
    let mut t = OffsetFetchRequestTopic::default();
    t.name = name(topic);
    t.partition_indexes = vec![partition];
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(StrBytes::from_string(group.to_string()));
    req.topics = Some(vec![t]);
    let ResponseKind::OffsetFetch(r) = conn
        .call(ApiKey::OffsetFetch, 7, RequestKind::OffsetFetch(req))
        .await
    else {
        panic!("wrong kind")
    };
    assert_eq!(r.error_code, 0);
    r.topics[0].partitions[0].committed_offset
}

#[tokio::test]
async fn commits_to_missing_partitions_fail_and_the_rest_are_stored() {
    // Auto-creation must not make the missing topic appear either.
    let node = TestNode::start(&[("num.partitions", "2")]).await;
    let mut conn = node.connect().await;

    let only_missing = commit(&mut conn, "g1", &[("nosuch", 0), ("nosuch", 1)], 123).await;
    assert_eq!(
        only_missing,
        vec![
            ("nosuch".into(), 0, UNKNOWN_TOPIC_OR_PARTITION),
            ("nosuch".into(), 1, UNKNOWN_TOPIC_OR_PARTITION),
        ]
    );
    assert_eq!(committed(&mut conn, "g1", "nosuch", 0).await, -1);

    // A topic that exists (created by a Metadata request with auto-creation), with one of its
    // partitions and one past its end, next to a missing topic.
    create_topic_by_metadata(&mut conn, "present").await;
    let mixed = commit(
        &mut conn,
        "g2",
        &[("present", 1), ("present", 7), ("nosuch", 0)],
        42,
    )
    .await;
    assert_eq!(
        mixed,
        vec![
            ("nosuch".into(), 0, UNKNOWN_TOPIC_OR_PARTITION),
            ("present".into(), 1, 0),
            ("present".into(), 7, UNKNOWN_TOPIC_OR_PARTITION),
        ]
    );
    assert_eq!(committed(&mut conn, "g2", "present", 1).await, 42);
    assert_eq!(committed(&mut conn, "g2", "present", 7).await, -1);
    node.stop().await;
}
