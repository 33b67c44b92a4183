//! What group commands and the group consumer share: the consumer protocol's subscription and
//! assignment bytes, the range assignor, and OffsetFetch/OffsetCommit at the coordinator.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_protocol::kafka_protocol::messages::consumer_protocol_assignment::{
    ConsumerProtocolAssignment, TopicPartition as AssignedPartitions,
};
use sluice_protocol::kafka_protocol::messages::consumer_protocol_subscription::ConsumerProtocolSubscription;
use sluice_protocol::kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use sluice_protocol::kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequest, OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use sluice_protocol::kafka_protocol::messages::{GroupId, TopicName};
use sluice_protocol::kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::wire::check;

/// The protocol type of consumer groups.
pub(crate) const CONSUMER: &str = "consumer";
/// The one assignor this CLI offers (Kafka's `RangeAssignor`).
pub(crate) const RANGE: &str = "range";
/// Highest consumer-protocol version the kafka-protocol crate decodes; later versions only add
/// trailing fields, so reading a newer one at this version is safe (Kafka's own rule).
const MAX_CONSUMER_PROTOCOL: i16 = 3;

/// Topic -> partitions, sorted.
pub(crate) type Assignment = BTreeMap<String, Vec<i32>>;

/// A (topic, partition) pair.
pub(crate) type TopicPartition = (String, i32);

fn group_id(g: &str) -> GroupId {
    GroupId(StrBytes::from_string(g.to_string()))
}

fn topic_name(t: &str) -> TopicName {
    TopicName(StrBytes::from_string(t.to_string()))
}

/// The JoinGroup metadata of a consumer subscribed to `topics` (consumer protocol v0).
pub(crate) fn encode_subscription(topics: &[String]) -> Result<Bytes> {
    let mut s = ConsumerProtocolSubscription::default();
    s.topics = topics
        .iter()
        .map(|t| StrBytes::from_string(t.clone()))
        .collect();
    s.user_data = None;
    let mut out = BytesMut::new();
    out.put_i16(0);
    s.encode(&mut out, 0)
        .map_err(|e| ClientError::Protocol(format!("cannot encode a subscription: {e}")))?;
    Ok(out.freeze())
}

/// The topics a member's JoinGroup metadata subscribes to.
pub(crate) fn decode_subscription(mut data: Bytes) -> Result<Vec<String>> {
    if data.remaining() < 2 {
        return Err(ClientError::Protocol(
            "a member's subscription is shorter than its version".into(),
        ));
    }
    let version = data.get_i16().clamp(0, MAX_CONSUMER_PROTOCOL);
    let s = ConsumerProtocolSubscription::decode(&mut data, version).map_err(|e| {
        ClientError::Protocol(format!("cannot decode a member's subscription: {e}"))
    })?;
    Ok(s.topics.iter().map(|t| t.to_string()).collect())
}

/// SyncGroup assignment bytes (consumer protocol v0).
pub(crate) fn encode_assignment(a: &Assignment) -> Result<Bytes> {
    let mut c = ConsumerProtocolAssignment::default();
    c.assigned_partitions = a
        .iter()
        .map(|(t, ps)| {
            let mut tp = AssignedPartitions::default();
            tp.topic = topic_name(t);
            tp.partitions = ps.clone();
            tp
        })
        .collect();
    c.user_data = None;
    let mut out = BytesMut::new();
    out.put_i16(0);
    c.encode(&mut out, 0)
        .map_err(|e| ClientError::Protocol(format!("cannot encode an assignment: {e}")))?;
    Ok(out.freeze())
}

/// A member's assignment; empty bytes (no assignment yet) is an empty assignment.
pub(crate) fn decode_assignment(mut data: Bytes) -> Result<Assignment> {
    if data.is_empty() {
        return Ok(Assignment::new());
    }
    if data.remaining() < 2 {
        return Err(ClientError::Protocol(
            "a member's assignment is shorter than its version".into(),
        ));
    }
    let version = data.get_i16().clamp(0, MAX_CONSUMER_PROTOCOL);
    let c = ConsumerProtocolAssignment::decode(&mut data, version)
        .map_err(|e| ClientError::Protocol(format!("cannot decode a member's assignment: {e}")))?;
    let mut out = Assignment::new();
    for tp in c.assigned_partitions {
        let ps = out.entry(tp.topic.0.to_string()).or_default();
        ps.extend(tp.partitions);
        ps.sort_unstable();
        ps.dedup();
    }
    Ok(out)
}

/// Kafka's `RangeAssignor`: per topic, the subscribed members in member-id order each take a
/// contiguous range of partitions, the first `partitions % members` one extra. Every member gets
/// an entry, possibly empty.
pub(crate) fn range_assign(
    subscriptions: &BTreeMap<String, Vec<String>>,
    partition_counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = subscriptions
        .keys()
        .map(|m| (m.clone(), Assignment::new()))
        .collect();
    for (topic, &count) in partition_counts {
        // BTreeMap iteration is already member-id order.
        let members: Vec<&String> = subscriptions
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if members.is_empty() || count <= 0 {
            continue;
        }
        let n = members.len() as i32;
        let (per, extra) = (count / n, count % n);
        for (i, m) in members.into_iter().enumerate() {
            let i = i as i32;
            let start = per * i + i.min(extra);
            let len = per + i32::from(i < extra);
            if len > 0
                && let Some(a) = out.get_mut(m)
            {
                a.insert(topic.clone(), (start..start + len).collect());
            }
        }
    }
    out
}

/// Committed offsets of `group` (all of them with `partitions: None`); -1 means none.
pub(crate) fn fetch_offsets(
    client: &mut Client,
    coordinator: i32,
    group: &str,
    partitions: Option<&Assignment>,
) -> Result<BTreeMap<TopicPartition, i64>> {
    let (r, v) = client.broker(coordinator)?.call(
        |v| {
            let mut req = OffsetFetchRequest::default();
            if v >= 8 {
                let mut g = OffsetFetchRequestGroup::default();
                g.group_id = group_id(group);
                g.topics = partitions.map(|a| {
                    a.iter()
                        .map(|(t, ps)| {
                            let mut x = OffsetFetchRequestTopics::default();
                            x.name = topic_name(t);
                            x.partition_indexes = ps.clone();
                            x
                        })
                        .collect()
                });
                req.groups = vec![g];
            } else {
                req.group_id = group_id(group);
                req.topics = partitions.map(|a| {
                    a.iter()
                        .map(|(t, ps)| {
                            let mut x = OffsetFetchRequestTopic::default();
                            x.name = topic_name(t);
                            x.partition_indexes = ps.clone();
                            x
                        })
                        .collect()
                });
            }
            req
        },
        Duration::ZERO,
    )?;
    let what = || format!("cannot fetch the committed offsets of group {group}");
    let mut out = BTreeMap::new();
    if v >= 8 {
        let g = r
            .groups
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("OffsetFetch answered for no group".into()))?;
        check(g.error_code, None, what)?;
        for t in g.topics {
            for p in t.partitions {
                check(p.error_code, None, what)?;
                out.insert(
                    (t.name.0.to_string(), p.partition_index),
                    p.committed_offset,
                );
            }
        }
    } else {
        check(r.error_code, None, what)?;
        for t in r.topics {
            for p in t.partitions {
                check(p.error_code, None, what)?;
                out.insert(
                    (t.name.0.to_string(), p.partition_index),
                    p.committed_offset,
                );
            }
        }
    }
    Ok(out)
}

/// Who commits: a member of the current generation, or an admin (-1, "") for an empty group.
pub(crate) struct Committer<'a> {
    pub(crate) generation: i32,
    pub(crate) member_id: &'a str,
}

/// Commits `offsets` for `group`; the first failing partition's error code is returned as the
/// error (callers word it for their situation).
pub(crate) fn commit_offsets(
    client: &mut Client,
    coordinator: i32,
    group: &str,
    who: &Committer<'_>,
    offsets: &BTreeMap<TopicPartition, i64>,
) -> Result<(), CommitError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut by_topic: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
    for ((t, p), o) in offsets {
        by_topic.entry(t).or_default().push((*p, *o));
    }
    let (r, _) = client
        .broker(coordinator)
        .map_err(CommitError::Client)?
        .call(
            |_| {
                let mut req = OffsetCommitRequest::default();
                req.group_id = group_id(group);
                req.generation_id_or_member_epoch = who.generation;
                req.member_id = StrBytes::from_string(who.member_id.to_string());
                req.topics = by_topic
                    .iter()
                    .map(|(t, ps)| {
                        let mut x = OffsetCommitRequestTopic::default();
                        x.name = topic_name(t);
                        x.partitions = ps
                            .iter()
                            .map(|&(p, o)| {
                                let mut c = OffsetCommitRequestPartition::default();
                                c.partition_index = p;
                                c.committed_offset = o;
                                c
                            })
                            .collect();
                        x
                    })
                    .collect();
                req
            },
            Duration::ZERO,
        )
        .map_err(CommitError::Client)?;
    for t in r.topics {
        for p in t.partitions {
            if p.error_code != 0 {
                return Err(CommitError::Refused {
                    code: p.error_code,
                    topic: t.name.0.to_string(),
                    partition: p.partition_index,
                });
            }
        }
    }
    Ok(())
}

/// Why a commit failed.
#[derive(Debug)]
pub(crate) enum CommitError {
    /// The request did not get through.
    Client(ClientError),
    /// The coordinator refused a partition's offset.
    Refused {
        code: i16,
        topic: String,
        partition: i32,
    },
}

impl From<CommitError> for ClientError {
    fn from(e: CommitError) -> ClientError {
        match e {
            CommitError::Client(e) => e,
            CommitError::Refused {
                code,
                topic,
                partition,
            } => ClientError::kafka(code, None, || {
                format!(
                    "the coordinator refused the offset of partition {partition} of topic {topic}"
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_and_assignments_round_trip() {
        let sub = encode_subscription(&["orders".into(), "audit".into()]).expect("encodes");
        assert_eq!(&sub[..2], &[0, 0], "version prefix");
        assert_eq!(
            decode_subscription(sub).expect("decodes"),
            vec!["orders".to_string(), "audit".to_string()]
        );
        let a: Assignment = [("orders".to_string(), vec![0, 2])].into_iter().collect();
        assert_eq!(
            decode_assignment(encode_assignment(&a).expect("encodes")).expect("decodes"),
            a
        );
        assert!(decode_assignment(Bytes::new()).expect("empty").is_empty());
        assert!(decode_assignment(Bytes::from_static(&[0])).is_err());
    }

    #[test]
    fn range_gives_the_first_members_the_extra_partitions() {
        let subs: BTreeMap<String, Vec<String>> = [
            ("m-b".to_string(), vec!["t".to_string()]),
            ("m-a".to_string(), vec!["t".to_string(), "u".to_string()]),
            ("m-c".to_string(), vec!["t".to_string()]),
        ]
        .into_iter()
        .collect();
        let counts: BTreeMap<String, i32> = [("t".to_string(), 7), ("u".to_string(), 2)]
            .into_iter()
            .collect();
        let a = range_assign(&subs, &counts);
        assert_eq!(a["m-a"]["t"], vec![0, 1, 2]);
        assert_eq!(a["m-b"]["t"], vec![3, 4]);
        assert_eq!(a["m-c"]["t"], vec![5, 6]);
        assert_eq!(a["m-a"]["u"], vec![0, 1]);
        assert!(!a["m-b"].contains_key("u"));
    }

    #[test]
    fn more_members_than_partitions_leaves_some_empty() {
        let subs: BTreeMap<String, Vec<String>> = ["a", "b", "c"]
            .iter()
            .map(|m| (m.to_string(), vec!["t".to_string()]))
            .collect();
        let counts: BTreeMap<String, i32> = [("t".to_string(), 2)].into_iter().collect();
        let a = range_assign(&subs, &counts);
        assert_eq!(a["a"]["t"], vec![0]);
        assert_eq!(a["b"]["t"], vec![1]);
        assert!(a["c"].is_empty());
    }
}
