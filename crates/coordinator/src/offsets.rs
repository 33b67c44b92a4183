//! Committed offsets: OffsetCommit, OffsetFetch, OffsetDelete and retention, following Kafka's
//! classic `GroupCoordinator` and `GroupMetadataManager`.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::api::{OffsetsRecord, Response};
use crate::coordinator::{GroupCoordinator, PendingAppend};
use crate::error::append_error_to_client;
use crate::error::codes::*;
use crate::group::{
    CONSUMER_PROTOCOL_TYPE, Group, GroupState, OffsetAndMetadata, TopicPartition, Waiter,
};
use crate::membership::validate_current_member;
use crate::records::{MAX_STRING_BYTES, OffsetCommitValue, RecordKey};

/// The outcome of one partition of an OffsetCommit.
#[derive(Debug)]
enum CommitOutcome {
    /// Appended; `NONE` once the append succeeds.
    Written(OffsetAndMetadata),
    /// Refused before any write.
    Failed(i16),
}

/// An OffsetCommit waiting for its append.
#[derive(Debug)]
pub(crate) struct PendingCommit {
    waiter: Waiter,
    group_id: String,
    incarnation: u64,
    /// Request order: topic, then (partition, outcome).
    topics: Vec<(String, Vec<(i32, CommitOutcome)>)>,
}

/// An OffsetDelete waiting for its tombstones.
#[derive(Debug)]
pub(crate) struct PendingOffsetDelete {
    waiter: Waiter,
    response: OffsetDeleteResponse,
}

/// One partition of an OffsetFetch answer.
struct FetchedOffset {
    partition: i32,
    offset: i64,
    leader_epoch: i32,
    metadata: String,
    error: i16,
}

impl FetchedOffset {
    fn unknown(partition: i32, error: i16) -> Self {
        Self {
            partition,
            offset: -1,
            leader_epoch: -1,
            metadata: String::new(),
            error,
        }
    }
}

type FetchedTopics = Vec<(String, Vec<FetchedOffset>)>;

/// Java's `String.length()`, which is what `offset.metadata.max.bytes` is compared with.
fn java_length(s: &str) -> usize {
    s.encode_utf16().count()
}

impl GroupCoordinator {
    pub(crate) fn handle_offset_commit(&mut self, w: Waiter, req: OffsetCommitRequest) {
        let version = w.version;
        let group_id = req.group_id.0.to_string();
        let requested: Vec<(String, Vec<i32>)> = req
            .topics
            .iter()
            .map(|t| {
                (
                    t.name.0.to_string(),
                    t.partitions.iter().map(|p| p.partition_index).collect(),
                )
            })
            .collect();
        let fail_all = |this: &mut Self, code: i16| {
            let topics = requested
                .iter()
                .map(|(t, ps)| {
                    (
                        t.clone(),
                        ps.iter()
                            .map(|p| (*p, CommitOutcome::Failed(code)))
                            .collect(),
                    )
                })
                .collect();
            this.reply_commit(w, topics, None);
        };
        if Self::invalid_group_id(&group_id, true) {
            return fail_all(self, INVALID_GROUP_ID);
        }
        if let Some(code) = self.group_status(&group_id) {
            return fail_all(self, code);
        }
        let generation = req.generation_id_or_member_epoch;
        let member_id = req.member_id.to_string();
        let instance_id = if version >= 7 {
            req.group_instance_id.as_ref().map(|s| s.to_string())
        } else {
            None
        };
        let mut group = match self.groups.remove(&group_id) {
            Some(group) => group,
            // A commit outside group management (generation -1) creates a "simple" group.
            None if generation < 0 => self.new_group(group_id.clone()),
            // Otherwise it comes from a generation that no longer exists.
            None => return fail_all(self, ILLEGAL_GENERATION),
        };
        let error = validate_offset_commit(&group, generation, &member_id, instance_id.as_deref());
        let error = error.or(match group.state {
            GroupState::Empty | GroupState::Stable | GroupState::PreparingRebalance => None,
            // The member has the new generation but not yet its assignment.
            GroupState::CompletingRebalance => Some(REBALANCE_IN_PROGRESS),
            GroupState::Dead => Some(COORDINATOR_NOT_AVAILABLE),
        });
        if let Some(code) = error {
            fail_all(self, code);
            return self.put_group(group);
        }
        if !group.is(GroupState::Empty) {
            // A commit from a member is as good as a heartbeat. During PreparingRebalance commits
            // are still allowed: the heartbeat response tells the member to rejoin.
            self.schedule_session(&group, &member_id);
        }

        // Old versions could ask for their own retention; Kafka keeps it as an expire timestamp.
        let expire_timestamp = (version <= 4 && req.retention_time_ms != -1)
            .then(|| self.now.saturating_add(req.retention_time_ms));
        let max_metadata = self.config.offset_metadata_max_bytes;
        let mut records: Vec<OffsetsRecord> = Vec::new();
        let mut topics = Vec::new();
        for topic in &req.topics {
            let name = topic.name.0.to_string();
            let mut partitions = Vec::new();
            for p in &topic.partitions {
                let metadata = p
                    .committed_metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                let outcome = if java_length(&metadata) > max_metadata {
                    CommitOutcome::Failed(OFFSET_METADATA_TOO_LARGE)
                } else if name.len() > MAX_STRING_BYTES {
                    // No such topic can exist, and the name would not fit the record key.
                    CommitOutcome::Failed(UNKNOWN_TOPIC_OR_PARTITION)
                } else {
                    let oam = OffsetAndMetadata {
                        offset: p.committed_offset,
                        leader_epoch: if version >= 6 {
                            p.committed_leader_epoch
                        } else {
                            -1
                        },
                        metadata,
                        commit_timestamp: self.now,
                        expire_timestamp,
                    };
                    let key = RecordKey::OffsetCommit {
                        group: group_id.clone(),
                        topic: name.clone(),
                        partition: p.partition_index,
                    };
                    records.push((key.encode(), Some(offset_value(&oam).encode())));
                    *group
                        .pending_commits
                        .entry((name.clone(), p.partition_index))
                        .or_default() += 1;
                    CommitOutcome::Written(oam)
                };
                partitions.push((p.partition_index, outcome));
            }
            topics.push((name, partitions));
        }
        if records.is_empty() {
            self.reply_commit(w, topics, None);
        } else {
            let partition = self.partition_for(&group_id);
            let pending = PendingCommit {
                waiter: w,
                group_id,
                incarnation: group.incarnation,
                topics,
            };
            self.append(partition, records, PendingAppend::OffsetCommit(pending));
        }
        self.put_group(group);
    }

    pub(crate) fn commit_append_done(&mut self, p: PendingCommit, result: Result<(), i16>) {
        if let Some(group) = self.groups.get_mut(&p.group_id)
            && group.incarnation == p.incarnation
        {
            for (topic, partitions) in &p.topics {
                for (partition, outcome) in partitions {
                    let CommitOutcome::Written(oam) = outcome else {
                        continue;
                    };
                    let tp = (topic.clone(), *partition);
                    // A commit whose partition was deleted meanwhile (OffsetDelete) has no
                    // pending entry any more and must not come back.
                    let was_pending = match group.pending_commits.get_mut(&tp) {
                        Some(n) if *n > 1 => {
                            *n -= 1;
                            true
                        }
                        Some(_) => {
                            group.pending_commits.remove(&tp);
                            true
                        }
                        None => false,
                    };
                    if was_pending && result.is_ok() {
                        group.offsets.insert(tp, oam.clone());
                    }
                }
            }
        }
        self.reply_commit(p.waiter, p.topics, result.err().map(append_error_to_client));
    }

    fn reply_commit(
        &mut self,
        w: Waiter,
        topics: Vec<(String, Vec<(i32, CommitOutcome)>)>,
        append_error: Option<i16>,
    ) {
        let mut r = OffsetCommitResponse::default();
        r.topics = topics
            .into_iter()
            .map(|(name, partitions)| {
                let mut t = OffsetCommitResponseTopic::default();
                t.name = TopicName(StrBytes::from_string(name));
                t.partitions = partitions
                    .into_iter()
                    .map(|(partition, outcome)| {
                        let mut p = OffsetCommitResponsePartition::default();
                        p.partition_index = partition;
                        p.error_code = match outcome {
                            CommitOutcome::Written(_) => append_error.unwrap_or(NONE),
                            CommitOutcome::Failed(code) => code,
                        };
                        p
                    })
                    .collect();
                t
            })
            .collect();
        self.reply(w, Response::OffsetCommit(r));
    }

    pub(crate) fn handle_offset_fetch(&mut self, w: Waiter, req: OffsetFetchRequest) {
        let version = w.version;
        let require_stable = version >= 7 && req.require_stable;
        let mut r = OffsetFetchResponse::default();
        if version < 8 {
            let requested = req.topics.as_ref().map(|topics| {
                topics
                    .iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                    .collect::<Vec<_>>()
            });
            let fetched = self.fetch_offsets(&req.group_id.0, requested.clone(), require_stable);
            let topics = match fetched {
                Ok(topics) => topics,
                Err(code) if version >= 2 => {
                    r.error_code = code;
                    Vec::new()
                }
                // v1 has no top-level error: Kafka puts it on every requested partition.
                Err(code) => requested
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(t, ps)| {
                        (
                            t,
                            ps.into_iter()
                                .map(|p| FetchedOffset::unknown(p, code))
                                .collect(),
                        )
                    })
                    .collect(),
            };
            r.topics = topics
                .into_iter()
                .map(|(name, partitions)| {
                    let mut t = OffsetFetchResponseTopic::default();
                    t.name = TopicName(StrBytes::from_string(name));
                    t.partitions = partitions
                        .into_iter()
                        .map(|f| {
                            let mut p = OffsetFetchResponsePartition::default();
                            p.partition_index = f.partition;
                            p.committed_offset = f.offset;
                            if version >= 5 {
                                p.committed_leader_epoch = f.leader_epoch;
                            }
                            p.metadata = Some(StrBytes::from_string(f.metadata));
                            p.error_code = f.error;
                            p
                        })
                        .collect();
                    t
                })
                .collect();
        } else {
            for g in &req.groups {
                let requested = g.topics.as_ref().map(|topics| {
                    topics
                        .iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                        .collect::<Vec<_>>()
                });
                let mut out = OffsetFetchResponseGroup::default();
                out.group_id = g.group_id.clone();
                match self.fetch_offsets(&g.group_id.0, requested, require_stable) {
                    Err(code) => out.error_code = code,
                    Ok(topics) => {
                        out.topics = topics
                            .into_iter()
                            .map(|(name, partitions)| {
                                let mut t = OffsetFetchResponseTopics::default();
                                t.name = TopicName(StrBytes::from_string(name));
                                t.partitions = partitions
                                    .into_iter()
                                    .map(|f| {
                                        let mut p = OffsetFetchResponsePartitions::default();
                                        p.partition_index = f.partition;
                                        p.committed_offset = f.offset;
                                        p.committed_leader_epoch = f.leader_epoch;
                                        p.metadata = Some(StrBytes::from_string(f.metadata));
                                        p.error_code = f.error;
                                        p
                                    })
                                    .collect();
                                t
                            })
                            .collect();
                    }
                }
                r.groups.push(out);
            }
        }
        self.reply(w, Response::OffsetFetch(r));
    }

    /// Kafka's `getOffsets`: committed offsets of the requested partitions (-1 where none), or
    /// of every partition the group has when `requested` is `None`.
    fn fetch_offsets(
        &self,
        group_id: &str,
        requested: Option<Vec<(String, Vec<i32>)>>,
        require_stable: bool,
    ) -> Result<FetchedTopics, i16> {
        if Self::invalid_group_id(group_id, true) {
            return Err(INVALID_GROUP_ID);
        }
        if let Some(code) = self.group_status(group_id) {
            return Err(code);
        }
        let group = self.groups.get(group_id);
        let lookup = |tp: &TopicPartition| -> FetchedOffset {
            let Some(group) = group else {
                return FetchedOffset::unknown(tp.1, NONE);
            };
            if require_stable && group.pending_commits.contains_key(tp) {
                return FetchedOffset::unknown(tp.1, UNSTABLE_OFFSET_COMMIT);
            }
            match group.offsets.get(tp) {
                Some(o) => FetchedOffset {
                    partition: tp.1,
                    offset: o.offset,
                    leader_epoch: o.leader_epoch,
                    metadata: o.metadata.clone(),
                    error: NONE,
                },
                None => FetchedOffset::unknown(tp.1, NONE),
            }
        };
        Ok(match requested {
            Some(topics) => topics
                .into_iter()
                .map(|(topic, partitions)| {
                    let fetched = partitions
                        .into_iter()
                        .map(|p| lookup(&(topic.clone(), p)))
                        .collect();
                    (topic, fetched)
                })
                .collect(),
            None => {
                let mut by_topic: BTreeMap<&str, Vec<FetchedOffset>> = BTreeMap::new();
                if let Some(group) = group {
                    for tp in group.offsets.keys() {
                        by_topic.entry(tp.0.as_str()).or_default().push(lookup(tp));
                    }
                }
                by_topic
                    .into_iter()
                    .map(|(t, ps)| (t.to_owned(), ps))
                    .collect()
            }
        })
    }

    pub(crate) fn handle_offset_delete(&mut self, w: Waiter, req: OffsetDeleteRequest) {
        let group_id = req.group_id.0.to_string();
        let mut r = OffsetDeleteResponse::default();
        let top = if Self::invalid_group_id(&group_id, false) {
            Some(INVALID_GROUP_ID)
        } else {
            self.group_status(&group_id)
        };
        if let Some(code) = top {
            r.error_code = code;
            return self.reply(w, Response::OffsetDelete(r));
        }
        let Some(mut group) = self.groups.remove(&group_id) else {
            r.error_code = GROUP_ID_NOT_FOUND;
            return self.reply(w, Response::OffsetDelete(r));
        };
        let consumer = group.protocol_type.as_deref() == Some(CONSUMER_PROTOCOL_TYPE);
        let deletable = |topic: &str| -> Result<(), i16> {
            match group.state {
                GroupState::Empty => Ok(()),
                GroupState::PreparingRebalance
                | GroupState::CompletingRebalance
                | GroupState::Stable
                    if consumer =>
                {
                    if group.is_subscribed_to(topic) {
                        Err(GROUP_SUBSCRIBED_TO_TOPIC)
                    } else {
                        Ok(())
                    }
                }
                _ => Err(NON_EMPTY_GROUP),
            }
        };
        // A non-consumer group with members refuses the whole request.
        if !group.is(GroupState::Empty) && !consumer {
            r.error_code = NON_EMPTY_GROUP;
            self.put_group(group);
            return self.reply(w, Response::OffsetDelete(r));
        }
        let mut eligible = Vec::new();
        for topic in &req.topics {
            let name = topic.name.0.to_string();
            let verdict = deletable(&name);
            let mut t = OffsetDeleteResponseTopic::default();
            t.name = topic.name.clone();
            for p in &topic.partitions {
                let mut out = OffsetDeleteResponsePartition::default();
                out.partition_index = p.partition_index;
                match verdict {
                    Ok(()) => eligible.push((name.clone(), p.partition_index)),
                    Err(code) => out.error_code = code,
                }
                t.partitions.push(out);
            }
            r.topics.push(t);
        }
        let records = self.remove_offsets(&mut group, &eligible);
        let partition = self.partition_for(&group_id);
        self.put_group(group);
        if records.is_empty() {
            self.reply(w, Response::OffsetDelete(r));
        } else {
            let pending = PendingOffsetDelete {
                waiter: w,
                response: r,
            };
            self.append(partition, records, PendingAppend::OffsetDelete(pending));
        }
    }

    pub(crate) fn offset_delete_append_done(
        &mut self,
        p: PendingOffsetDelete,
        result: Result<(), i16>,
    ) {
        let mut response = p.response;
        if let Err(code) = result {
            response = OffsetDeleteResponse::default();
            response.error_code = append_error_to_client(code);
        }
        self.reply(p.waiter, Response::OffsetDelete(response));
    }

    /// Removes offsets (committed or in flight) and returns their tombstones, plus the group's
    /// own tombstone if that left an Empty group with nothing (Kafka's `cleanupGroupMetadata`).
    /// A group left Dead is dropped by `put_group`.
    pub(crate) fn remove_offsets(
        &mut self,
        group: &mut Group,
        partitions: &[TopicPartition],
    ) -> Vec<OffsetsRecord> {
        let mut records = Vec::new();
        for tp in partitions {
            let had_offset = group.offsets.remove(tp).is_some();
            // An in-flight commit gets a tombstone too: its record may land before this one.
            let had_pending = group.pending_commits.remove(tp).is_some();
            if had_offset || had_pending {
                records.push(Self::offset_tombstone(&group.group_id, tp));
            }
        }
        records.extend(self.maybe_mark_dead(group));
        records
    }

    /// An Empty group without offsets is gone; its metadata record is tombstoned unless it
    /// never had one (generation 0: a group that only committed offsets).
    pub(crate) fn maybe_mark_dead(&mut self, group: &mut Group) -> Option<OffsetsRecord> {
        if group.is(GroupState::Empty) && !group.has_offsets() {
            group.transition_to(GroupState::Dead, self.now);
            if group.generation_id > 0 {
                return Some(Self::group_tombstone(&group.group_id));
            }
        }
        None
    }

    /// The periodic retention sweep: expired offsets are removed and tombstoned; groups left
    /// Empty with nothing are deleted.
    pub(crate) fn expire_offsets(&mut self) {
        let retention = self.config.offsets_retention_ms();
        let now = self.now;
        self.remove_offsets_where("expiring offsets", |group| {
            expired_offsets(group, now, retention)
        });
    }

    /// Offsets of deleted topics go, as Kafka's coordinator drops the offsets of deleted
    /// partitions; groups left Empty with nothing are deleted.
    pub(crate) fn remove_topics(&mut self, topics: &[String]) {
        self.remove_offsets_where("dropping offsets of deleted topics", |group| {
            group
                .offsets
                .keys()
                .chain(group.pending_commits.keys())
                .filter(|(topic, _)| topics.contains(topic))
                .cloned()
                .collect()
        });
    }

    /// Removes, in every group, the offsets `select` picks, and appends their tombstones.
    fn remove_offsets_where(&mut self, what: &str, select: impl Fn(&Group) -> Vec<TopicPartition>) {
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        let mut by_partition: BTreeMap<i32, Vec<OffsetsRecord>> = BTreeMap::new();
        for id in ids {
            let Some(mut group) = self.groups.remove(&id) else {
                continue;
            };
            let selected = select(&group);
            let records = self.remove_offsets(&mut group, &selected);
            if !records.is_empty() {
                tracing::debug!(group = %id, partitions = selected.len(), "{what}");
                by_partition
                    .entry(self.partition_for(&id))
                    .or_default()
                    .extend(records);
            }
            self.put_group(group);
        }
        for (partition, records) in by_partition {
            self.append(partition, records, PendingAppend::Untracked);
        }
    }
}

/// Kafka's `validateOffsetCommit`.
fn validate_offset_commit(
    group: &Group,
    generation: i32,
    member_id: &str,
    instance_id: Option<&str>,
) -> Option<i16> {
    if group.is(GroupState::Dead) {
        Some(COORDINATOR_NOT_AVAILABLE)
    } else if generation < 0 && group.is(GroupState::Empty) {
        // The admin client, or a consumer that manages its own partitions.
        None
    } else if generation >= 0 || !member_id.is_empty() || instance_id.is_some() {
        validate_current_member(group, member_id, instance_id).or(
            if generation != group.generation_id {
                Some(ILLEGAL_GENERATION)
            } else {
                None
            },
        )
    } else {
        // A group with members accepts commits from members only.
        Some(UNKNOWN_MEMBER_ID)
    }
}

/// Kafka's `removeExpiredOffsets` (without removing): which offsets have outlived retention.
fn expired_offsets(group: &Group, now: i64, retention_ms: i64) -> Vec<TopicPartition> {
    let empty = BTreeSet::new();
    let (base_on_state, excluded): (bool, &BTreeSet<String>) =
        match (group.protocol_type.as_deref(), group.state) {
            // No member left: retention counts from when the group became Empty.
            (Some(_), GroupState::Empty) => (true, &empty),
            // A Stable consumer group: offsets of topics nobody subscribes to any more expire
            // from their commit.
            (Some(CONSUMER_PROTOCOL_TYPE), GroupState::Stable) => match &group.subscribed_topics {
                Some(topics) => (false, topics),
                None => return Vec::new(),
            },
            // A group that only commits: from each commit.
            (None, _) => (false, &empty),
            _ => return Vec::new(),
        };
    group
        .offsets
        .iter()
        .filter(|(tp, oam)| {
            if excluded.contains(&tp.0) || group.pending_commits.contains_key(*tp) {
                return false;
            }
            match oam.expire_timestamp {
                Some(expire) => now >= expire,
                None => {
                    let base = if base_on_state {
                        group.state_timestamp.unwrap_or(oam.commit_timestamp)
                    } else {
                        oam.commit_timestamp
                    };
                    now.saturating_sub(base) >= retention_ms
                }
            }
        })
        .map(|(tp, _)| tp.clone())
        .collect()
}

/// The stored form of an in-memory offset.
pub(crate) fn offset_value(oam: &OffsetAndMetadata) -> OffsetCommitValue {
    OffsetCommitValue {
        offset: oam.offset,
        leader_epoch: oam.leader_epoch,
        metadata: oam.metadata.clone(),
        commit_timestamp: oam.commit_timestamp,
        expire_timestamp: oam.expire_timestamp,
    }
}

/// The in-memory form of a stored offset.
pub(crate) fn offset_from_value(v: OffsetCommitValue) -> OffsetAndMetadata {
    OffsetAndMetadata {
        offset: v.offset,
        leader_epoch: v.leader_epoch,
        metadata: v.metadata,
        commit_timestamp: v.commit_timestamp,
        expire_timestamp: v.expire_timestamp,
    }
}
