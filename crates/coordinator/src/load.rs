//! Ownership of `__consumer_offsets` partitions: replaying one into groups and offsets when this
//! node becomes its coordinator, and dropping them when it stops being one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use indexmap::IndexMap;

use crate::api::Effect;
use crate::coordinator::{GroupCoordinator, JoinResult};
use crate::error::CoordinatorError;
use crate::error::codes::NOT_COORDINATOR;
use crate::group::{GroupState, Member, TopicPartition};
use crate::offsets::offset_from_value;
use crate::records::{GroupMetadataValue, OffsetCommitValue, RecordKey};
use crate::timers::TimerKey;

/// What a partition's records amount to so far; later records override earlier ones, as
/// compaction would.
#[derive(Debug, Default)]
pub(crate) struct LoadBuffer {
    offsets: BTreeMap<String, BTreeMap<TopicPartition, OffsetCommitValue>>,
    groups: BTreeMap<String, GroupMetadataValue>,
}

impl GroupCoordinator {
    /// Starts loading `partition`: its groups answer COORDINATOR_LOAD_IN_PROGRESS until
    /// `finish_load`. If the partition was already owned it is unloaded first (the returned
    /// effects answer its parked requests with NOT_COORDINATOR).
    pub fn begin_load(&mut self, partition: i32) -> Vec<Effect> {
        if self.owned.contains(&partition) {
            self.unload(partition);
        }
        self.loading.insert(partition, LoadBuffer::default());
        self.take_effects()
    }

    /// Replays one record of `partition`, in offset order (`value` `None` = tombstone).
    ///
    /// An error means the record was skipped (corrupt, of an unknown kind, or misplaced); the
    /// load goes on with the next one.
    pub fn load_record(
        &mut self,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), CoordinatorError> {
        let num_partitions = self.num_partitions;
        let Some(buffer) = self.loading.get_mut(&partition) else {
            return Err(CoordinatorError::PartitionNotLoading(partition));
        };
        let key = RecordKey::decode(key)?;
        let expected = crate::placement::partition_for(key.group(), num_partitions);
        if expected != partition {
            return Err(CoordinatorError::WrongPartition {
                group: key.group().to_owned(),
                expected,
                found: partition,
            });
        }
        match key {
            RecordKey::OffsetCommit {
                group,
                topic,
                partition,
            } => match value {
                Some(bytes) => {
                    let value = OffsetCommitValue::decode(bytes)?;
                    buffer
                        .offsets
                        .entry(group)
                        .or_default()
                        .insert((topic, partition), value);
                }
                None => {
                    if let Some(offsets) = buffer.offsets.get_mut(&group) {
                        offsets.remove(&(topic, partition));
                        if offsets.is_empty() {
                            // Nothing left: do not bring back an offsets-only group.
                            buffer.offsets.remove(&group);
                        }
                    }
                }
            },
            RecordKey::GroupMetadata { group } => match value {
                Some(bytes) => {
                    let value = GroupMetadataValue::decode(bytes)?;
                    buffer.groups.insert(group, value);
                }
                None => {
                    buffer.groups.remove(&group);
                }
            },
        }
        Ok(())
    }

    /// Finishes loading `partition`: its groups and offsets go live and this node serves them.
    ///
    /// As in Kafka, a group whose last record lists members comes back Stable with those
    /// members, its generation, protocol, leader and assignments, and each member gets a fresh
    /// session timeout: live consumers carry on without a rebalance, dead ones expire. A group
    /// with no members comes back Empty; offsets without group metadata form Empty groups.
    pub fn finish_load(&mut self, partition: i32, now_ms: i64) -> Vec<Effect> {
        self.now = now_ms;
        let buffer = self.loading.remove(&partition).unwrap_or_default();
        self.owned.insert(partition);
        let LoadBuffer {
            mut offsets,
            groups,
        } = buffer;
        let mut ids: BTreeSet<String> = groups.keys().cloned().collect();
        ids.extend(offsets.keys().cloned());
        let mut groups = groups;
        for id in ids {
            let mut group = self.new_group(id.clone());
            if let Some(value) = groups.remove(&id) {
                self.restore_group(&mut group, value);
            }
            group.offsets = offsets
                .remove(&id)
                .unwrap_or_default()
                .into_iter()
                .map(|(tp, v)| (tp, offset_from_value(v)))
                .collect();
            let member_ids: Vec<String> = group.members.keys().cloned().collect();
            for member_id in &member_ids {
                self.schedule_session(&group, member_id);
            }
            if group.members.len() > self.config.group_max_size {
                // Give the consumers a chance to commit before the excess is shed.
                self.prepare_rebalance(&mut group);
            }
            self.put_group(group);
        }
        if !self.timers.contains(&TimerKey::OffsetsExpiry) {
            self.arm(
                TimerKey::OffsetsExpiry,
                self.config.offsets_retention_check_interval_ms,
            );
        }
        self.take_effects()
    }

    /// Loads a whole partition at once: `begin_load`, every record, `finish_load`. Returns the
    /// effects and the records that were skipped (with their index).
    pub fn load_partition<'a>(
        &mut self,
        partition: i32,
        records: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
        now_ms: i64,
    ) -> (Vec<Effect>, Vec<(usize, CoordinatorError)>) {
        let mut effects = self.begin_load(partition);
        let mut skipped = Vec::new();
        for (i, (key, value)) in records.into_iter().enumerate() {
            if let Err(e) = self.load_record(partition, key, value) {
                tracing::warn!(partition, record = i, error = %e, "skipping __consumer_offsets record");
                skipped.push((i, e));
            }
        }
        effects.extend(self.finish_load(partition, now_ms));
        (effects, skipped)
    }

    /// Stops serving `partition` (leadership lost): its groups are dropped and their parked
    /// JoinGroup/SyncGroup requests answered NOT_COORDINATOR, so clients look for the new
    /// coordinator. Appends already emitted still complete through `append_done`.
    pub fn unload_partition(&mut self, partition: i32) -> Vec<Effect> {
        self.unload(partition);
        self.take_effects()
    }

    fn unload(&mut self, partition: i32) {
        self.loading.remove(&partition);
        self.owned.remove(&partition);
        let ids: Vec<String> = self
            .groups
            .keys()
            .filter(|id| self.partition_for(id) == partition)
            .cloned()
            .collect();
        for id in ids {
            let Some(mut group) = self.groups.remove(&id) else {
                continue;
            };
            self.cancel_group_timers(&group);
            for member in group.members.values_mut() {
                if let Some(w) = member.awaiting_join.take() {
                    self.reply_join(
                        w,
                        JoinResult::error(member.member_id.clone(), NOT_COORDINATOR),
                    );
                }
                if let Some(w) = member.awaiting_sync.take() {
                    self.reply_sync(w, NOT_COORDINATOR, None, Bytes::new());
                }
            }
        }
        if self.owned.is_empty() && self.loading.is_empty() {
            self.timers.cancel(&TimerKey::OffsetsExpiry);
        }
    }

    /// Rebuilds a group from its metadata record (Kafka's `GroupMetadata.loadGroup`).
    fn restore_group(&mut self, group: &mut crate::group::Group, value: GroupMetadataValue) {
        group.generation_id = value.generation;
        group.protocol_type =
            (!value.protocol_type.is_empty()).then(|| value.protocol_type.clone());
        group.protocol_name = value.protocol.clone();
        group.leader_id = value.leader.clone();
        group.state_timestamp =
            (value.current_state_timestamp != -1).then_some(value.current_state_timestamp);
        let protocol = value.protocol.clone().unwrap_or_default();
        let mut members = IndexMap::new();
        let mut static_members = HashMap::new();
        for m in value.members {
            if let Some(instance) = &m.group_instance_id {
                static_members.insert(instance.clone(), m.member_id.clone());
            }
            members.insert(
                m.member_id.clone(),
                Member {
                    member_id: m.member_id,
                    group_instance_id: m.group_instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    rebalance_timeout_ms: m.rebalance_timeout,
                    session_timeout_ms: m.session_timeout,
                    protocol_type: value.protocol_type.clone(),
                    protocols: vec![(protocol.clone(), m.subscription)],
                    assignment: m.assignment,
                    awaiting_join: None,
                    awaiting_sync: None,
                    is_new: false,
                },
            );
        }
        group.state = if members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        // A leader missing from the members would break leader election later.
        if group
            .leader_id
            .as_ref()
            .is_some_and(|l| !members.contains_key(l))
        {
            group.leader_id = members.keys().next().cloned();
        }
        group.members = members;
        group.static_members = static_members;
        group.subscribed_topics = group.compute_subscribed_topics();
    }
}
