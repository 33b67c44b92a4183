//! The cluster as one client: a bootstrap connection, one connection per broker opened on
//! demand, Metadata (who leads what), ListOffsets at the leaders, and FindCoordinator.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_protocol::kafka_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use sluice_protocol::kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use sluice_protocol::kafka_protocol::messages::metadata_request::{
    MetadataRequest, MetadataRequestTopic,
};
use sluice_protocol::kafka_protocol::messages::{BrokerId, TopicName};
use sluice_protocol::kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::error::{ClientError, Result, seconds};
use crate::wire::{Connection, check};

/// ListOffsets: the offset after the last committed record (the high watermark).
pub(crate) const LATEST: i64 = -1;
/// ListOffsets: the log start offset.
pub(crate) const EARLIEST: i64 = -2;

/// How often a request answered "not the leader" or "coordinator loading" is retried.
const RETRIES: usize = 5;
/// Pause before such a retry: the cluster is moving, asking again at once would find it moving.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// A broker as Metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BrokerInfo {
    pub(crate) id: i32,
    pub(crate) host: String,
    pub(crate) port: i32,
    pub(crate) rack: Option<String>,
}

impl BrokerInfo {
    fn addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One partition as Metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionInfo {
    pub(crate) index: i32,
    /// -1 when the partition has no leader (offline).
    pub(crate) leader: i32,
    pub(crate) replicas: Vec<i32>,
    pub(crate) isr: Vec<i32>,
}

/// One topic as Metadata lists it, partitions in index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicInfo {
    pub(crate) name: String,
    pub(crate) id: Uuid,
    pub(crate) internal: bool,
    pub(crate) partitions: Vec<PartitionInfo>,
}

impl TopicInfo {
    /// The partition with this index.
    pub(crate) fn partition(&self, index: i32) -> Option<&PartitionInfo> {
        self.partitions.iter().find(|p| p.index == index)
    }

    /// Replicas per partition (the largest, should they differ).
    pub(crate) fn replication_factor(&self) -> usize {
        self.partitions
            .iter()
            .map(|p| p.replicas.len())
            .max()
            .unwrap_or(0)
    }

    /// The leader of `partition`, or an error saying the partition has none or does not exist.
    pub(crate) fn leader_of(&self, partition: i32) -> Result<i32> {
        match self.partition(partition) {
            None => Err(ClientError::kafka(
                ResponseError::UnknownTopicOrPartition.code(),
                None,
                || {
                    format!(
                        "partition {partition} of topic {} does not exist",
                        self.name
                    )
                },
            )),
            Some(p) if p.leader < 0 => Err(ClientError::kafka(
                ResponseError::LeaderNotAvailable.code(),
                None,
                || format!("partition {partition} of topic {} has no leader", self.name),
            )),
            Some(p) => Ok(p.leader),
        }
    }
}

/// A Metadata answer.
#[derive(Debug, Clone)]
pub(crate) struct ClusterMeta {
    pub(crate) cluster_id: Option<String>,
    pub(crate) controller: i32,
    pub(crate) brokers: Vec<BrokerInfo>,
    pub(crate) topics: Vec<TopicInfo>,
    /// Topics the broker answered with an error: (name, code).
    pub(crate) topic_errors: Vec<(String, i16)>,
}

/// Connections to a cluster.
pub(crate) struct Client {
    timeout: Duration,
    bootstrap: Connection,
    brokers: BTreeMap<i32, BrokerInfo>,
    conns: BTreeMap<i32, Connection>,
    controller: Option<i32>,
}

impl Client {
    /// Connects to the first bootstrap address that answers; all of them together get
    /// `timeout`, so an unreachable cluster fails within it.
    pub(crate) fn connect(bootstrap: &[String], timeout: Duration) -> Result<Client> {
        let deadline = Instant::now() + timeout;
        let mut failures = Vec::new();
        for addr in bootstrap.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
            match Connection::open(addr, timeout, deadline) {
                Ok(conn) => {
                    return Ok(Client {
                        timeout,
                        bootstrap: conn,
                        brokers: BTreeMap::new(),
                        conns: BTreeMap::new(),
                        controller: None,
                    });
                }
                Err(e) => failures.push(e),
            }
        }
        Err(match failures.len() {
            0 => ClientError::Connection("no bootstrap broker address given".into()),
            1 => failures.remove(0),
            _ => {
                let timed_out = failures
                    .iter()
                    .all(|e| matches!(e, ClientError::Timeout(_)));
                let why = failures
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                let sentence = format!(
                    "no bootstrap broker answered within {}: {why}",
                    seconds(timeout)
                );
                if timed_out {
                    ClientError::Timeout(sentence)
                } else {
                    ClientError::Connection(sentence)
                }
            }
        })
    }

    /// `--timeout`.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The bootstrap connection, for requests any broker answers.
    pub(crate) fn any(&mut self) -> &mut Connection {
        &mut self.bootstrap
    }

    /// The connection to broker `id`, opened on first use.
    pub(crate) fn broker(&mut self, id: i32) -> Result<&mut Connection> {
        if !self.conns.contains_key(&id) {
            if !self.brokers.contains_key(&id) {
                self.metadata(Some(&[]))?;
            }
            let info = self.brokers.get(&id).ok_or_else(|| {
                ClientError::Protocol(format!("broker {id} is not in the cluster's metadata"))
            })?;
            let conn = Connection::open(&info.addr(), self.timeout, Instant::now() + self.timeout)?;
            self.conns.insert(id, conn);
        }
        self.conns
            .get_mut(&id)
            .ok_or_else(|| ClientError::Protocol(format!("no connection to broker {id}")))
    }

    /// The controller's connection (where topic changes go), else the bootstrap one.
    pub(crate) fn controller(&mut self) -> Result<&mut Connection> {
        if self.controller.is_none() {
            self.metadata(Some(&[]))?;
        }
        match self.controller {
            Some(id) if id >= 0 => self.broker(id),
            _ => Ok(&mut self.bootstrap),
        }
    }

    /// Every broker id Metadata listed.
    pub(crate) fn broker_ids(&mut self) -> Result<Vec<i32>> {
        if self.brokers.is_empty() {
            self.metadata(Some(&[]))?;
        }
        Ok(self.brokers.keys().copied().collect())
    }

    /// Metadata for `topics` (`None`: every topic). Never creates a topic.
    pub(crate) fn metadata(&mut self, topics: Option<&[&str]>) -> Result<ClusterMeta> {
        let (r, _) = self.bootstrap.call(
            |_| {
                let mut req = MetadataRequest::default();
                req.topics = topics.map(|names| {
                    names
                        .iter()
                        .map(|n| {
                            let mut t = MetadataRequestTopic::default();
                            t.name = Some(TopicName(StrBytes::from_string(n.to_string())));
                            t
                        })
                        .collect()
                });
                // Metadata v4+ (our floor): a missing topic is reported, not created.
                req.allow_auto_topic_creation = false;
                req
            },
            Duration::ZERO,
        )?;
        check(r.error_code, None, || "the broker refused Metadata".into())?;
        let brokers: Vec<BrokerInfo> = r
            .brokers
            .iter()
            .map(|b| BrokerInfo {
                id: b.node_id.0,
                host: b.host.to_string(),
                port: b.port,
                rack: b.rack.as_ref().map(|r| r.to_string()),
            })
            .collect();
        self.brokers = brokers.iter().map(|b| (b.id, b.clone())).collect();
        self.controller = Some(r.controller_id.0);
        let mut topics = Vec::new();
        let mut topic_errors = Vec::new();
        for t in r.topics {
            let name = t.name.map(|n| n.0.to_string()).unwrap_or_default();
            if t.error_code != 0 {
                topic_errors.push((name, t.error_code));
                continue;
            }
            let mut partitions: Vec<PartitionInfo> = t
                .partitions
                .into_iter()
                .map(|p| PartitionInfo {
                    index: p.partition_index,
                    leader: p.leader_id.0,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                })
                .collect();
            partitions.sort_by_key(|p| p.index);
            topics.push(TopicInfo {
                name,
                id: t.topic_id,
                internal: t.is_internal,
                partitions,
            });
        }
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ClusterMeta {
            cluster_id: r.cluster_id.map(|c| c.to_string()),
            controller: r.controller_id.0,
            brokers,
            topics,
            topic_errors,
        })
    }

    /// Metadata of one topic; an error sentence if it does not exist.
    pub(crate) fn topic(&mut self, name: &str) -> Result<TopicInfo> {
        let mut meta = self.metadata(Some(&[name]))?;
        if let Some((_, code)) = meta.topic_errors.first() {
            return Err(topic_error(*code, name));
        }
        match meta.topics.iter().position(|t| t.name == name) {
            Some(i) => Ok(meta.topics.swap_remove(i)),
            None => Err(topic_error(
                ResponseError::UnknownTopicOrPartition.code(),
                name,
            )),
        }
    }

    /// ListOffsets for `partitions` of `topic` at their leaders: `timestamp` is [`LATEST`],
    /// [`EARLIEST`] or a time in ms (the first offset at or after it, -1 if none).
    pub(crate) fn list_offsets(
        &mut self,
        topic: &TopicInfo,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<BTreeMap<i32, i64>> {
        let mut found = BTreeMap::new();
        let mut topic = topic.clone();
        let mut todo: Vec<i32> = partitions.to_vec();
        for attempt in 0..=RETRIES {
            let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
            for &p in &todo {
                by_leader.entry(topic.leader_of(p)?).or_default().push(p);
            }
            let mut retry = Vec::new();
            let mut last_retriable = 0;
            for (leader, ps) in by_leader {
                let timeout_ms = self.timeout_ms();
                let (r, _) = self.broker(leader)?.call(
                    |v| {
                        let mut req = ListOffsetsRequest::default();
                        req.replica_id = BrokerId(-1);
                        if v >= 10 {
                            req.timeout_ms = timeout_ms;
                        }
                        let mut t = ListOffsetsTopic::default();
                        t.name = TopicName(StrBytes::from_string(topic.name.clone()));
                        t.partitions = ps
                            .iter()
                            .map(|&p| {
                                let mut lp = ListOffsetsPartition::default();
                                lp.partition_index = p;
                                lp.timestamp = timestamp;
                                lp
                            })
                            .collect();
                        req.topics = vec![t];
                        req
                    },
                    Duration::ZERO,
                )?;
                for t in r.topics {
                    for p in t.partitions {
                        if is_leader_change(p.error_code) && attempt < RETRIES {
                            retry.push(p.partition_index);
                            last_retriable = p.error_code;
                            continue;
                        }
                        check(p.error_code, None, || {
                            format!(
                                "cannot list offsets of partition {} of topic {}",
                                p.partition_index, topic.name
                            )
                        })?;
                        found.insert(p.partition_index, p.offset);
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            if attempt == RETRIES {
                return Err(ClientError::kafka(last_retriable, None, || {
                    format!(
                        "partitions of topic {} kept moving while listing offsets",
                        topic.name
                    )
                }));
            }
            std::thread::sleep(RETRY_BACKOFF);
            topic = self.topic(&topic.name)?;
            todo = retry;
        }
        for p in partitions {
            if !found.contains_key(p) {
                return Err(ClientError::Protocol(format!(
                    "the leader of partition {p} of topic {} did not list its offsets",
                    topic.name
                )));
            }
        }
        Ok(found)
    }

    /// The broker coordinating `group` (FindCoordinator, retried while it is loading).
    pub(crate) fn coordinator(&mut self, group: &str) -> Result<i32> {
        let mut last = 0;
        for attempt in 0..=RETRIES {
            let (r, v) = self.bootstrap.call(
                |v| {
                    let mut req = FindCoordinatorRequest::default();
                    if v >= 4 {
                        req.coordinator_keys = vec![StrBytes::from_string(group.to_string())];
                    } else {
                        req.key = StrBytes::from_string(group.to_string());
                    }
                    req
                },
                Duration::ZERO,
            )?;
            let (code, message, node, host, port) = if v >= 4 {
                let c = r.coordinators.into_iter().next().ok_or_else(|| {
                    ClientError::Protocol("FindCoordinator answered with no coordinator".into())
                })?;
                (c.error_code, c.error_message, c.node_id.0, c.host, c.port)
            } else {
                (r.error_code, r.error_message, r.node_id.0, r.host, r.port)
            };
            if is_coordinator_moving(code) && attempt < RETRIES {
                last = code;
                std::thread::sleep(RETRY_BACKOFF);
                continue;
            }
            check(code, message.as_ref(), || {
                format!("cannot find the coordinator of group {group}")
            })?;
            // The coordinator may be a broker this client has not seen in Metadata yet.
            self.brokers.entry(node).or_insert_with(|| BrokerInfo {
                id: node,
                host: host.to_string(),
                port,
                rack: None,
            });
            return Ok(node);
        }
        Err(ClientError::kafka(last, None, || {
            format!("the coordinator of group {group} is not available")
        }))
    }

    /// Forgets the connection to broker `id` (after it stopped coordinating or leading).
    pub(crate) fn drop_connection(&mut self, id: i32) {
        self.conns.remove(&id);
    }

    /// `--timeout` in ms, for the requests that carry a timeout of their own.
    pub(crate) fn timeout_ms(&self) -> i32 {
        i32::try_from(self.timeout.as_millis()).unwrap_or(i32::MAX)
    }
}

/// A topic-level error code as a sentence.
pub(crate) fn topic_error(code: i16, name: &str) -> ClientError {
    ClientError::kafka(code, None, || {
        if code == ResponseError::UnknownTopicOrPartition.code() {
            format!("topic {name} does not exist")
        } else if code == ResponseError::InvalidTopicException.code() {
            format!("'{name}' is not a valid topic name")
        } else {
            format!("cannot get metadata of topic {name}")
        }
    })
}

/// Codes that mean "ask the new leader": refresh metadata and retry.
pub(crate) fn is_leader_change(code: i16) -> bool {
    [
        ResponseError::NotLeaderOrFollower,
        ResponseError::LeaderNotAvailable,
        ResponseError::UnknownLeaderEpoch,
        ResponseError::FencedLeaderEpoch,
    ]
    .iter()
    .any(|e| e.code() == code)
}

/// Codes that mean "find the coordinator again, it moved or is loading".
pub(crate) fn is_coordinator_moving(code: i16) -> bool {
    [
        ResponseError::CoordinatorNotAvailable,
        ResponseError::CoordinatorLoadInProgress,
        ResponseError::NotCoordinator,
    ]
    .iter()
    .any(|e| e.code() == code)
}

/// Kafka's text form of a topic id: URL-safe base64 without padding (22 characters).
pub(crate) fn topic_id_string(id: &Uuid) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = id.as_bytes();
    let mut out = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_ids_print_as_kafka_prints_them() {
        // 0xfbfbfb splits into the 6-bit groups 62 63 47 59: "-_v7"; the last byte pads to "-w".
        assert_eq!(topic_id_string(&Uuid::nil()), "AAAAAAAAAAAAAAAAAAAAAA");
        let id = Uuid::from_bytes([0xfb; 16]);
        assert_eq!(topic_id_string(&id), "-_v7-_v7-_v7-_v7-_v7-w");
    }
}
