//! FindCoordinator: a group's coordinator is the leader of its `__consumer_offsets` partition
//! (on a single node, this node for every group). Transactions are not implemented: their
//! coordinator is refused.
//! OffsetCommit: partitions that do not exist are answered here, the rest go to the coordinator.

use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequest;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{BrokerId, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;

use kafka_protocol::ResponseError;

use crate::broker::{Broker, Completion, RequestContext};
use crate::cluster::OFFSETS_TOPIC;

fn key_str(key: &StrBytes) -> &str {
    key.as_str()
}

/// FindCoordinator key types.
const GROUP: i8 = 0;

pub(crate) async fn find_coordinator(
    broker: &Broker,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let config = broker.config();
    let mut response = FindCoordinatorResponse::default();
    let keys: Vec<StrBytes> = if version >= 4 {
        req.coordinator_keys
    } else {
        vec![req.key.clone()]
    };
    for key in keys {
        let mut c = Coordinator::default();
        c.key = key;
        if req.key_type == GROUP && broker.cluster.is_clustered() {
            let partition = sluice_coordinator::placement::partition_for(
                key_str(&c.key),
                broker.groups.offsets_partitions(),
            );
            match broker.cluster.partition_leader(OFFSETS_TOPIC, partition) {
                Some(leader) => {
                    c.node_id = BrokerId(leader.node_id);
                    c.host = StrBytes::from_string(leader.host);
                    c.port = i32::from(leader.port);
                }
                None => {
                    c.node_id = BrokerId(-1);
                    c.port = -1;
                    c.error_code = ResponseError::CoordinatorNotAvailable.code();
                    c.error_message = Some(StrBytes::from_static_str(
                        "the group's __consumer_offsets partition is electing a leader",
                    ));
                }
            }
        } else if req.key_type == GROUP {
            c.node_id = BrokerId(config.node_id);
            c.host = StrBytes::from_string(config.advertise_host.clone());
            c.port = config.advertise_port as i32;
        } else {
            c.node_id = BrokerId(-1);
            c.port = -1;
            c.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
            c.error_message = Some(StrBytes::from_static_str(
                "transactions are not supported by this broker",
            ));
        }
        response.coordinators.push(c);
    }
    if version < 4 {
        if let Some(c) = response.coordinators.pop() {
            response.node_id = c.node_id;
            response.host = c.host;
            response.port = c.port;
            response.error_code = c.error_code;
            if version >= 1 {
                response.error_message = c.error_message;
            }
        }
        response.coordinators.clear();
    }
    response
}

/// OffsetCommit, as Kafka's request handler does it before the group coordinator sees the
/// request: a partition that does not exist gets UNKNOWN_TOPIC_OR_PARTITION (and no committed
/// offset), the others are committed as usual; when none exists the group is not consulted.
pub(crate) fn offset_commit(
    broker: &Broker,
    mut req: OffsetCommitRequest,
    version: i16,
    ctx: &RequestContext,
) -> Completion {
    let mut unknown = Vec::new();
    for topic in &mut req.topics {
        let name = topic.name.0.as_str();
        let (known, missing): (Vec<_>, Vec<_>) = topic
            .partitions
            .drain(..)
            .partition(|p| broker.cluster.partition(name, p.partition_index).is_some());
        topic.partitions = known;
        if !missing.is_empty() {
            let mut t = OffsetCommitResponseTopic::default();
            t.name = topic.name.clone();
            t.partitions = missing
                .iter()
                .map(|p| {
                    let mut r = OffsetCommitResponsePartition::default();
                    r.partition_index = p.partition_index;
                    r.error_code = ResponseError::UnknownTopicOrPartition.code();
                    r
                })
                .collect();
            unknown.push(t);
        }
    }
    if unknown.is_empty() {
        return broker
            .groups
            .start_request(RequestKind::OffsetCommit(req), version, ctx);
    }
    req.topics.retain(|t| !t.partitions.is_empty());
    if req.topics.is_empty() {
        let mut response = OffsetCommitResponse::default();
        response.topics = unknown;
        return Completion::now(ResponseKind::OffsetCommit(response));
    }
    let committed = broker
        .groups
        .start_request(RequestKind::OffsetCommit(req), version, ctx);
    Completion::Later(Box::pin(async move {
        let mut response = committed.finish().await?;
        if let ResponseKind::OffsetCommit(r) = response.as_mut() {
            unknown.append(&mut r.topics);
            r.topics = unknown;
        }
        Some(response)
    }))
}
