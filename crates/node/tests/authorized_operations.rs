//! A client that asks for its authorized operations (Metadata v8+, DescribeCluster) gets what
//! Kafka answers without an authorizer: every operation the resource type supports. Not asking
//! keeps Kafka's "not requested" marker, Integer.MIN_VALUE.

mod common;

use common::TestNode;
use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::metadata_response::MetadataResponse;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;

const NOT_REQUESTED: i32 = i32::MIN;

/// AclOperation codes as a client reads them from the bit field.
fn operations(bits: i32) -> Vec<i32> {
    (0..32).filter(|b| bits & (1 << b) != 0).collect()
}

// READ 3, WRITE 4, CREATE 5, DELETE 6, ALTER 7, DESCRIBE 8, DESCRIBE_CONFIGS 10,
// ALTER_CONFIGS 11.
const TOPIC_OPS: &[i32] = &[3, 4, 5, 6, 7, 8, 10, 11];
// CREATE 5, ALTER 7, DESCRIBE 8, CLUSTER_ACTION 9, DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11,
// IDEMPOTENT_WRITE 12.
const CLUSTER_OPS: &[i32] = &[5, 7, 8, 9, 10, 11, 12];

async fn metadata(conn: &mut common::Conn, version: i16, include: bool) -> MetadataResponse {
    let mut t = MetadataRequestTopic::default();
    t.name = Some(TopicName(StrBytes::from_static_str("ops")));
    let mut req = MetadataRequest::default();
    req.topics = Some(vec![t]);
    req.allow_auto_topic_creation = true;
    req.include_topic_authorized_operations = include;
    req.include_cluster_authorized_operations = include && version <= 10;
    let ResponseKind::Metadata(r) = conn
        .call(ApiKey::Metadata, version, RequestKind::Metadata(req))
        .await
    else {
        panic!("wrong kind")
    };
    r
}

#[tokio::test]
async fn metadata_reports_every_topic_and_cluster_operation_when_asked() {
    let node = TestNode::start(&[]).await;
    let mut conn = node.connect().await;

    let r = metadata(&mut conn, 10, true).await;
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(
        operations(r.topics[0].topic_authorized_operations),
        TOPIC_OPS
    );
    assert_eq!(operations(r.cluster_authorized_operations), CLUSTER_OPS);

    // v11+ has no cluster field: only the topic's operations.
    let r = metadata(&mut conn, 12, true).await;
    assert_eq!(
        operations(r.topics[0].topic_authorized_operations),
        TOPIC_OPS
    );

    let r = metadata(&mut conn, 12, false).await;
    assert_eq!(r.topics[0].topic_authorized_operations, NOT_REQUESTED);
    let r = metadata(&mut conn, 9, false).await;
    assert_eq!(r.cluster_authorized_operations, NOT_REQUESTED);
    node.stop().await;
}

#[tokio::test]
async fn describe_cluster_reports_every_cluster_operation_when_asked() {
    let node = TestNode::start(&[]).await;
    let mut conn = node.connect().await;
    for (include, expected) in [(true, Some(CLUSTER_OPS)), (false, None)] {
        let mut req = DescribeClusterRequest::default();
        req.include_cluster_authorized_operations = include;
        let ResponseKind::DescribeCluster(r) = conn
            .call(
                ApiKey::DescribeCluster,
                1,
                RequestKind::DescribeCluster(req),
            )
            .await
        else {
            panic!("wrong kind")
        };
        assert_eq!(r.error_code, 0);
        match expected {
            Some(ops) => assert_eq!(operations(r.cluster_authorized_operations), ops),
            None => assert_eq!(r.cluster_authorized_operations, NOT_REQUESTED),
        }
    }
    node.stop().await;
}
