//! Fetch: whole stored batches up to the high watermark, with long polling.
//!
//! A fetch that finds fewer than `min_bytes` waits until one of its partitions' high watermark
//! moves or `max_wait_ms` passes; the deadline is fixed when the request is started, so waiting
//! behind an earlier request on the same connection does not stretch it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{BrokerId, ResponseKind, TopicName};
use sluice_replication::partition::Partition;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::broker::{Broker, Completion};

/// One requested partition, resolved.
struct Target {
    topic_index: usize,
    partition: i32,
    fetch_offset: i64,
    max_bytes: usize,
    current_leader_epoch: i32,
    resolved: Result<Arc<Partition>, i16>,
}

struct Plan {
    topics: Vec<(TopicName, uuid::Uuid)>,
    targets: Vec<Target>,
    max_bytes: usize,
    version: i16,
}

pub(crate) fn start(broker: &Arc<Broker>, req: FetchRequest, version: i16) -> Completion {
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let min_bytes = req.min_bytes.max(0) as usize;
    let max_bytes = if version >= 3 {
        (req.max_bytes.max(0) as usize).min(broker.config().fetch_max_bytes)
    } else {
        broker.config().fetch_max_bytes
    };
    let image = broker.cluster.image();
    let mut topics = Vec::with_capacity(req.topics.len());
    let mut targets = Vec::new();
    for (topic_index, topic) in req.topics.into_iter().enumerate() {
        let info = if version >= 13 {
            image.topic_by_id(topic.topic_id)
        } else {
            image.topics.get(topic.topic.0.as_str())
        };
        for p in topic.partitions {
            let resolved = match info {
                None if version >= 13 => Err(ResponseError::UnknownTopicId.code()),
                None => Err(ResponseError::UnknownTopicOrPartition.code()),
                Some(info) => broker.cluster.leader_partition(&info.name, p.partition),
            };
            targets.push(Target {
                topic_index,
                partition: p.partition,
                fetch_offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                current_leader_epoch: p.current_leader_epoch,
                resolved,
            });
        }
        topics.push((topic.topic, topic.topic_id));
    }
    let plan = Plan {
        topics,
        targets,
        max_bytes,
        version,
    };
    // Subscribe before the first read so an append between the read and the wait is not missed.
    let mut watches: Vec<watch::Receiver<i64>> = plan
        .targets
        .iter()
        .filter_map(|t| t.resolved.as_ref().ok().map(|p| p.subscribe()))
        .collect();
    let (response, bytes, errors) = read_all(&plan);
    if bytes >= min_bytes || errors || watches.is_empty() || Instant::now() >= deadline {
        return Completion::now(ResponseKind::Fetch(response));
    }
    Completion::later(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                alive = any_changed(&mut watches) => if !alive { break },
            }
            let (response, bytes, errors) = read_all(&plan);
            if bytes >= min_bytes || errors {
                return ResponseKind::Fetch(response);
            }
        }
        ResponseKind::Fetch(read_all(&plan).0)
    })
}

/// Reads every target once. Returns the response, the record bytes in it, and whether any
/// partition carries an error (which answers the fetch at once, as Kafka does).
fn read_all(plan: &Plan) -> (FetchResponse, usize, bool) {
    let version = plan.version;
    let mut response = FetchResponse::default();
    response.responses = plan
        .topics
        .iter()
        .map(|(name, id)| {
            let mut t = FetchableTopicResponse::default();
            t.topic = name.clone();
            t.topic_id = *id;
            t
        })
        .collect();
    let mut total = 0usize;
    let mut errors = false;
    for target in &plan.targets {
        let mut data = PartitionData::default();
        data.partition_index = target.partition;
        data.high_watermark = -1;
        data.last_stable_offset = -1;
        data.log_start_offset = -1;
        data.preferred_read_replica = BrokerId(-1);
        data.records = Some(Bytes::new());
        data.aborted_transactions = Some(Vec::new());
        match &target.resolved {
            Err(code) => {
                data.error_code = *code;
                errors = true;
            }
            Ok(partition) => {
                let hw = partition.high_watermark();
                data.high_watermark = hw;
                data.last_stable_offset = hw;
                if version >= 5 {
                    data.log_start_offset = partition.log_start_offset();
                }
                if let Err(code) = partition.check_leader_epoch(target.current_leader_epoch) {
                    data.error_code = code;
                    errors = true;
                } else {
                    let budget = target.max_bytes.min(plan.max_bytes.saturating_sub(total));
                    // KIP-74: the first batch of the response is returned even when it is
                    // larger than the limits, so a consumer can always make progress.
                    let min_one = total == 0;
                    if budget > 0 || min_one {
                        match partition.read(target.fetch_offset, budget, min_one) {
                            Ok(records) => {
                                total += records.len();
                                data.records = Some(records);
                            }
                            Err(e) => {
                                data.error_code = e.error_code();
                                errors = true;
                            }
                        }
                    }
                }
            }
        }
        response.responses[target.topic_index].partitions.push(data);
    }
    (response, total, errors)
}

/// Completes when any receiver sees a change. Returns false when every sender is gone.
async fn any_changed(watches: &mut [watch::Receiver<i64>]) -> bool {
    type Wait<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
    let mut waits: Vec<Option<Wait<'_>>> = watches
        .iter_mut()
        .map(|w| Some(Box::pin(async move { w.changed().await.is_ok() }) as Wait<'_>))
        .collect();
    std::future::poll_fn(|cx| {
        let mut open = false;
        for slot in waits.iter_mut() {
            let Some(wait) = slot else { continue };
            match wait.as_mut().poll(cx) {
                Poll::Ready(true) => return Poll::Ready(true),
                // A closed partition (deleted topic) never wakes us again.
                Poll::Ready(false) => *slot = None,
                Poll::Pending => open = true,
            }
        }
        if open {
            Poll::Pending
        } else {
            Poll::Ready(false)
        }
    })
    .await
}
