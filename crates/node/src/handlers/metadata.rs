//! Metadata and DescribeCluster: the cluster image as clients see it, with topic auto-creation.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::describe_cluster_response::{
    DescribeClusterBroker, DescribeClusterResponse,
};
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_replication::image::TopicInfo;

use crate::broker::Broker;

/// Kafka's "authorized operations not requested" marker.
const OPS_NOT_REQUESTED: i32 = i32::MIN;

/// Bits of Kafka's AclOperation codes.
const READ: i32 = 1 << 3;
const WRITE: i32 = 1 << 4;
const CREATE: i32 = 1 << 5;
const DELETE: i32 = 1 << 6;
const ALTER: i32 = 1 << 7;
const DESCRIBE: i32 = 1 << 8;
const CLUSTER_ACTION: i32 = 1 << 9;
const DESCRIBE_CONFIGS: i32 = 1 << 10;
const ALTER_CONFIGS: i32 = 1 << 11;
const IDEMPOTENT_WRITE: i32 = 1 << 12;

/// Without an authorizer (this broker has none) Kafka grants every operation a resource type
/// supports, and reports exactly those when a client asks for its authorized operations.
const TOPIC_OPERATIONS: i32 =
    READ | WRITE | CREATE | DELETE | ALTER | DESCRIBE | DESCRIBE_CONFIGS | ALTER_CONFIGS;
const CLUSTER_OPERATIONS: i32 = CREATE
    | CLUSTER_ACTION
    | DESCRIBE_CONFIGS
    | ALTER_CONFIGS
    | IDEMPOTENT_WRITE
    | ALTER
    | DESCRIBE;

pub(crate) async fn metadata(
    broker: &Broker,
    req: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    // v0: an empty list means all topics; v1+: null means all, empty means none.
    let requested: Option<Vec<(Option<String>, uuid::Uuid)>> = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(
            t.into_iter()
                .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
                .collect(),
        ),
    };
    let allow_auto_create = version < 4 || req.allow_auto_topic_creation;
    let mut image = broker.cluster.image();
    let mut topics = Vec::new();
    match requested {
        None => {
            for topic in image.topics.values() {
                topics.push(topic_response(broker, topic, version));
            }
        }
        Some(wanted) => {
            if allow_auto_create && broker.config().auto_create_topics {
                let missing: Vec<String> = wanted
                    .iter()
                    .filter_map(|(name, _)| name.clone())
                    .filter(|n| !image.topics.contains_key(n))
                    .collect();
                if !missing.is_empty() {
                    broker.cluster.auto_create_topics(&missing).await;
                    image = broker.cluster.image();
                }
            }
            for (name, id) in wanted {
                topics.push(match name {
                    Some(name) => match image.topics.get(&name) {
                        Some(topic) => topic_response(broker, topic, version),
                        None => missing_topic(Some(name), id, version, broker),
                    },
                    None => match image.topic_by_id(id) {
                        Some(topic) => topic_response(broker, topic, version),
                        None => missing_topic(None, id, version, broker),
                    },
                });
            }
        }
    }
    let mut response = MetadataResponse::default();
    response.brokers = image
        .brokers
        .values()
        .map(|b| {
            let mut mb = MetadataResponseBroker::default();
            mb.node_id = BrokerId(b.node_id);
            mb.host = StrBytes::from_string(b.host.clone());
            mb.port = b.port as i32;
            if version >= 1 {
                mb.rack = b.rack.clone().map(StrBytes::from_string);
            }
            mb
        })
        .collect();
    if version >= 2 {
        response.cluster_id = Some(StrBytes::from_string(image.cluster_id.clone()));
    }
    if version >= 1 {
        response.controller_id = BrokerId(broker.cluster.controller_id());
    }
    if version >= 8 && req.include_topic_authorized_operations {
        for t in &mut topics {
            t.topic_authorized_operations = TOPIC_OPERATIONS;
        }
    }
    response.topics = topics;
    // Metadata carries the cluster's operations in v8-v10 only (DescribeCluster since).
    response.cluster_authorized_operations =
        if (8..=10).contains(&version) && req.include_cluster_authorized_operations {
            CLUSTER_OPERATIONS
        } else {
            OPS_NOT_REQUESTED
        };
    response
}

fn missing_topic(
    name: Option<String>,
    id: uuid::Uuid,
    version: i16,
    broker: &Broker,
) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.error_code = match &name {
        Some(n) if broker.cluster.validate_topic_name(n).is_err() => {
            ResponseError::InvalidTopicException.code()
        }
        Some(_) => ResponseError::UnknownTopicOrPartition.code(),
        None => ResponseError::UnknownTopicId.code(),
    };
    t.name = name.map(|n| TopicName(StrBytes::from_string(n)));
    if version >= 10 {
        t.topic_id = id;
    }
    t.topic_authorized_operations = OPS_NOT_REQUESTED;
    t
}

fn topic_response(broker: &Broker, topic: &TopicInfo, version: i16) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.name = Some(TopicName(StrBytes::from_string(topic.name.clone())));
    if version >= 10 {
        t.topic_id = topic.id;
    }
    if version >= 1 {
        t.is_internal = topic.internal;
    }
    t.topic_authorized_operations = OPS_NOT_REQUESTED;
    t.partitions = topic
        .partitions
        .iter()
        .map(|p| {
            // Leader, epoch and ISR live from the replica hosted here.
            let p = broker.cluster.partition_view(&topic.name, p);
            let mut mp = MetadataResponsePartition::default();
            if p.leader < 0 {
                mp.error_code = ResponseError::LeaderNotAvailable.code();
            }
            mp.partition_index = p.index;
            mp.leader_id = BrokerId(p.leader);
            if version >= 7 {
                mp.leader_epoch = p.leader_epoch;
            }
            mp.replica_nodes = p.replicas.iter().copied().map(BrokerId).collect();
            mp.isr_nodes = p.isr.iter().copied().map(BrokerId).collect();
            mp
        })
        .collect();
    t
}

pub(crate) fn describe_cluster(
    broker: &Broker,
    req: DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    let image = broker.cluster.image();
    let mut response = DescribeClusterResponse::default();
    response.cluster_id = StrBytes::from_string(image.cluster_id.clone());
    response.controller_id = BrokerId(broker.cluster.controller_id());
    if version >= 1 {
        response.endpoint_type = 1;
    }
    response.cluster_authorized_operations = if req.include_cluster_authorized_operations {
        CLUSTER_OPERATIONS
    } else {
        OPS_NOT_REQUESTED
    };
    response.brokers = image
        .brokers
        .values()
        .map(|b| {
            let mut db = DescribeClusterBroker::default();
            db.broker_id = BrokerId(b.node_id);
            db.host = StrBytes::from_string(b.host.clone());
            db.port = b.port as i32;
            db.rack = b.rack.clone().map(StrBytes::from_string);
            db
        })
        .collect();
    response
}
