//! Produce: the hot path. Each partition's batch is appended verbatim as the request is started
//! (so one connection's batches land in the order sent); the response waits only for what acks
//! demands.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_replication::partition::{Acks, PendingAppend, ProduceError};
use sluice_storage::AppendError;
use tracing::debug;

use crate::broker::{Broker, Completion};
use crate::handlers::now_ms;

/// One partition's result: known now, or once the append is acknowledged.
enum PartitionResult {
    Done(PartitionProduceResponse),
    Pending(i32, PendingAppend),
}

pub(crate) fn start(broker: &Arc<Broker>, req: ProduceRequest, version: i16) -> Completion {
    let acks = match req.acks {
        0 => Some(Acks::None),
        1 => Some(Acks::Leader),
        -1 => Some(Acks::All),
        _ => None,
    };
    let now = now_ms();
    // Kafka answers an acks=all produce that is not acknowledged within the request's
    // `timeout_ms` with REQUEST_TIMED_OUT (the records may still commit later: the client's
    // retry, deduplicated for an idempotent producer, settles it). So a partition that lost
    // its quorum cannot hold a request, or a shutting-down broker, forever. A timeout of 0 or
    // less waits without bound: Kafka would time it out at once, which no client asks for.
    let deadline = (acks == Some(Acks::All) && req.timeout_ms > 0).then(|| {
        tokio::time::Instant::now() + Duration::from_millis(req.timeout_ms.unsigned_abs().into())
    });
    let timeout_ms = req.timeout_ms;
    let image = broker.cluster.image();
    let mut topics: Vec<(TopicName, uuid::Uuid, Vec<PartitionResult>)> = Vec::new();
    for topic in req.topic_data {
        let info = if version >= 13 {
            image.topic_by_id(topic.topic_id).cloned()
        } else {
            image.topics.get(topic.name.0.as_str()).cloned()
        };
        let mut results = Vec::with_capacity(topic.partition_data.len());
        for p in topic.partition_data {
            let error = |e: ResponseError, msg: Option<String>| {
                PartitionResult::Done(error_response(p.index, e.code(), msg, version))
            };
            let result = match (&info, acks) {
                (_, None) => error(ResponseError::InvalidRequiredAcks, None),
                (None, _) if version >= 13 => error(ResponseError::UnknownTopicId, None),
                (None, _) => error(ResponseError::UnknownTopicOrPartition, None),
                (Some(info), Some(acks)) => {
                    match broker.cluster.leader_partition(&info.name, p.index) {
                        Err(code) => {
                            PartitionResult::Done(error_response(p.index, code, None, version))
                        }
                        Ok(partition) => match p.records {
                            None => error(
                                ResponseError::InvalidRecord,
                                Some("produce request without records".into()),
                            ),
                            Some(_) if req.transactional_id.is_some() => error(
                                ResponseError::TransactionalIdAuthorizationFailed,
                                Some("transactions are not supported by this broker".into()),
                            ),
                            Some(batch) => match partition.append(batch, acks, now) {
                                Ok(pending) => PartitionResult::Pending(p.index, pending),
                                Err(e) => {
                                    debug!(topic = %info.name, partition = p.index, "append refused: {e}");
                                    let mut r = error_response(
                                        p.index,
                                        e.error_code(),
                                        Some(e.to_string()),
                                        version,
                                    );
                                    if let (ProduceError::Append(a), 8..) = (&e, version) {
                                        r.record_errors = record_errors(a);
                                    }
                                    PartitionResult::Done(r)
                                }
                            },
                        },
                    }
                }
            };
            results.push(result);
        }
        topics.push((topic.name, topic.topic_id, results));
    }
    if acks == Some(Acks::None) {
        // acks=0: the client reads no response at all.
        return Completion::Ready(None);
    }
    Completion::later(async move {
        let mut response = ProduceResponse::default();
        for (name, topic_id, results) in topics {
            let mut t = TopicProduceResponse::default();
            t.name = name;
            t.topic_id = topic_id;
            for r in results {
                t.partition_responses.push(match r {
                    PartitionResult::Done(p) => p,
                    PartitionResult::Pending(index, pending) => {
                        let acknowledged = match deadline {
                            Some(at) => tokio::time::timeout_at(at, pending.acknowledged()).await,
                            None => Ok(pending.acknowledged().await),
                        };
                        match acknowledged {
                            Err(_) => error_response(
                                index,
                                ResponseError::RequestTimedOut.code(),
                                Some(format!(
                                    "not acknowledged by the in-sync replicas within timeout_ms ({timeout_ms})"
                                )),
                                version,
                            ),
                            Ok(Ok(outcome)) => {
                                let mut p = PartitionProduceResponse::default();
                                p.index = index;
                                p.base_offset = outcome.base_offset;
                                p.log_append_time_ms = outcome.log_append_time;
                                if version >= 5 {
                                    p.log_start_offset = outcome.log_start_offset;
                                }
                                p
                            }
                            Ok(Err(e)) => {
                                error_response(index, e.error_code(), Some(e.to_string()), version)
                            }
                        }
                    }
                });
            }
            response.responses.push(t);
        }
        ResponseKind::Produce(response)
    })
}

/// KIP-467: the records that made the batch fail, so the client fails only those with the
/// broker's error and the rest of the batch as collateral.
fn record_errors(e: &AppendError) -> Vec<BatchIndexAndErrorMessage> {
    e.record_errors()
        .into_iter()
        .map(|(index, message)| {
            let mut r = BatchIndexAndErrorMessage::default();
            r.batch_index = index;
            r.batch_index_error_message = Some(StrBytes::from_string(message));
            r
        })
        .collect()
}

fn error_response(
    index: i32,
    code: i16,
    message: Option<String>,
    version: i16,
) -> PartitionProduceResponse {
    let mut p = PartitionProduceResponse::default();
    p.index = index;
    p.error_code = code;
    p.base_offset = -1;
    p.log_append_time_ms = -1;
    p.log_start_offset = -1;
    if version >= 8 {
        p.error_message = message.map(StrBytes::from_string);
    }
    p
}
