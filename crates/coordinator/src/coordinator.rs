//! The `GroupCoordinator` state machine: its state, the entry points the runtime calls, timers,
//! append completions, and the helpers every handler shares.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupResponse, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;

use crate::api::{AppendId, Effect, OffsetsRecord, ReplyToken, Request, Response};
use crate::config::GroupConfig;
use crate::error::codes::*;
use crate::group::{Group, GroupState, Member, TopicPartition, Waiter};
use crate::load::LoadBuffer;
use crate::placement::partition_for;
use crate::records::{GroupMetadataValue, MAX_STRING_BYTES, MemberMetadataValue, RecordKey};
use crate::timers::{TimerKey, Timers};

/// An append the coordinator is waiting on, and what to do when it completes.
#[derive(Debug)]
pub(crate) enum PendingAppend {
    /// Offsets of an OffsetCommit: materialise them and answer.
    OffsetCommit(crate::offsets::PendingCommit),
    /// The group's assignment after the leader's SyncGroup.
    SyncStore {
        group_id: String,
        incarnation: u64,
        generation: i32,
        assignment: HashMap<String, Bytes>,
    },
    /// A static member that rejoined a Stable group under a new member id.
    StaticStore(crate::membership::PendingStaticJoin),
    /// Tombstones of a DeleteGroups request, one append per partition.
    DeleteGroups { batch: u64, groups: Vec<String> },
    /// Tombstones of an OffsetDelete request.
    OffsetDelete(crate::offsets::PendingOffsetDelete),
    /// Writes nobody waits for (empty-group metadata, expired-offset tombstones).
    Untracked,
}

/// The classic group coordinator for the `__consumer_offsets` partitions this node leads.
///
/// It does no I/O and reads no clock: the runtime feeds it requests, append completions and the
/// time, and performs the [`Effect`]s it returns, in order.
///
/// Driving it:
/// - on leading a `__consumer_offsets` partition: `load_partition` (or `begin_load`,
///   `load_record`..., `finish_load`) with the partition's records in offset order; on losing
///   it: `unload_partition`;
/// - each group request: `handle`; each `Effect::Append`: append the records to that partition
///   (same-partition appends in emission order), then `append_done(id, ..)`, exactly once per
///   append, including appends nobody waits for;
/// - each `Effect::Reply`: encode the response at `api_version` and send it for `token`;
/// - timers: call `tick(now)` once `now >= next_deadline()`; re-read `next_deadline` after
///   every call, since any call may move it.
#[derive(Debug)]
pub struct GroupCoordinator {
    pub(crate) config: GroupConfig,
    pub(crate) num_partitions: i32,
    pub(crate) groups: BTreeMap<String, Group>,
    pub(crate) owned: BTreeSet<i32>,
    pub(crate) loading: BTreeMap<i32, LoadBuffer>,
    pub(crate) timers: Timers,
    pub(crate) appends: HashMap<AppendId, PendingAppend>,
    next_append_id: u64,
    pub(crate) delete_batches: HashMap<u64, crate::admin::DeleteBatch>,
    next_batch_id: u64,
    next_incarnation: u64,
    rng: u64,
    pub(crate) now: i64,
    out: Vec<Effect>,
}

impl GroupCoordinator {
    /// A coordinator owning no partition yet (see [`Self::begin_load`]).
    ///
    /// `offsets_partitions` is `offsets.topic.num.partitions` (fixed for the cluster's life).
    /// `id_seed` seeds the generator of member ids; pass fresh entropy on every start, or a
    /// restarted node could hand out member ids it handed out before.
    pub fn new(config: GroupConfig, offsets_partitions: i32, id_seed: u64) -> Self {
        Self {
            config,
            num_partitions: offsets_partitions.max(1),
            groups: BTreeMap::new(),
            owned: BTreeSet::new(),
            loading: BTreeMap::new(),
            timers: Timers::default(),
            appends: HashMap::new(),
            next_append_id: 0,
            delete_batches: HashMap::new(),
            next_batch_id: 0,
            next_incarnation: 0,
            rng: id_seed,
            now: 0,
            out: Vec::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// The `__consumer_offsets` partition of `group_id` (what FindCoordinator must use).
    pub fn partition_for(&self, group_id: &str) -> i32 {
        partition_for(group_id, self.num_partitions)
    }

    /// True when this coordinator has loaded `partition` and serves its groups.
    pub fn owns(&self, partition: i32) -> bool {
        self.owned.contains(&partition)
    }

    /// True between `begin_load(partition)` and `finish_load(partition)`.
    pub fn is_loading(&self, partition: i32) -> bool {
        self.loading.contains_key(&partition)
    }

    /// The state of a group, if this coordinator holds it.
    pub fn group_state(&self, group_id: &str) -> Option<GroupState> {
        self.groups.get(group_id).map(|g| g.state)
    }

    /// Handles one request at `api_version` from `client_id`@`client_host`.
    ///
    /// Answers come back as `Effect::Reply` carrying `token`, now or from a later call: a
    /// JoinGroup or SyncGroup may wait for other members, and writes wait for `append_done`.
    /// Every token gets exactly one reply.
    pub fn handle(
        &mut self,
        token: ReplyToken,
        api_version: i16,
        request: Request,
        client_id: &str,
        client_host: &str,
        now_ms: i64,
    ) -> Vec<Effect> {
        self.now = now_ms;
        let w = Waiter {
            token,
            version: api_version,
        };
        match request {
            Request::JoinGroup(r) => self.handle_join_group(w, r, client_id, client_host),
            Request::SyncGroup(r) => self.handle_sync_group(w, r),
            Request::Heartbeat(r) => self.handle_heartbeat(w, r),
            Request::LeaveGroup(r) => self.handle_leave_group(w, r),
            Request::OffsetCommit(r) => self.handle_offset_commit(w, r),
            Request::OffsetFetch(r) => self.handle_offset_fetch(w, r),
            Request::OffsetDelete(r) => self.handle_offset_delete(w, r),
            Request::ListGroups(r) => self.handle_list_groups(w, r),
            Request::DescribeGroups(r) => self.handle_describe_groups(w, r),
            Request::DeleteGroups(r) => self.handle_delete_groups(w, r),
        }
        self.take_effects()
    }

    /// Reports the outcome of an `Effect::Append`: `Ok` once the records are durable in the
    /// partition, or `Err(kafka_error_code)` (e.g. NOT_LEADER_OR_FOLLOWER) if the append failed.
    pub fn append_done(
        &mut self,
        id: AppendId,
        result: Result<(), i16>,
        now_ms: i64,
    ) -> Vec<Effect> {
        self.now = now_ms;
        if let Some(pending) = self.appends.remove(&id) {
            match pending {
                PendingAppend::OffsetCommit(p) => self.commit_append_done(p, result),
                PendingAppend::SyncStore {
                    group_id,
                    incarnation,
                    generation,
                    assignment,
                } => self.sync_store_done(&group_id, incarnation, generation, assignment, result),
                PendingAppend::StaticStore(p) => self.static_store_done(p, result),
                PendingAppend::DeleteGroups { batch, groups } => {
                    self.delete_groups_append_done(batch, groups, result)
                }
                PendingAppend::OffsetDelete(p) => self.offset_delete_append_done(p, result),
                PendingAppend::Untracked => {
                    if let Err(code) = result {
                        tracing::warn!(code, "untracked __consumer_offsets append failed");
                    }
                }
            }
        }
        self.take_effects()
    }

    /// Fires every timer due at `now_ms`: session and pending-member expiry, join and sync
    /// deadlines of rebalances, the delayed initial rebalance, and the offset-expiry sweep.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Effect> {
        self.now = now_ms;
        // Every timer is armed at least 1 ms ahead, so this loop ends.
        while let Some(key) = self.timers.pop_due(now_ms) {
            self.on_timer(key);
        }
        self.take_effects()
    }

    /// Topics were deleted: their committed offsets are removed and tombstoned in every group
    /// (groups left Empty with nothing are deleted), as Kafka does.
    pub fn topics_deleted(&mut self, topics: &[String], now_ms: i64) -> Vec<Effect> {
        self.now = now_ms;
        self.remove_topics(topics);
        self.take_effects()
    }

    /// When `tick` must next be called (absolute ms), if any timer is armed.
    pub fn next_deadline(&self) -> Option<i64> {
        self.timers.next()
    }

    fn on_timer(&mut self, key: TimerKey) {
        match key {
            TimerKey::Session { group, member } => self.on_session_expired(&group, &member),
            TimerKey::Pending { group, member } => self.on_pending_expired(&group, &member),
            TimerKey::Join { group } => self.on_join_deadline(&group),
            TimerKey::Sync { group } => self.on_sync_deadline(&group),
            TimerKey::OffsetsExpiry => {
                self.expire_offsets();
                self.arm(
                    TimerKey::OffsetsExpiry,
                    self.config.offsets_retention_check_interval_ms,
                );
            }
        }
    }

    pub(crate) fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.out)
    }

    /// Arms `key` to fire `delay_ms` from now (at least 1 ms, so a zero or negative timeout a
    /// client sent cannot make `tick` spin).
    pub(crate) fn arm(&mut self, key: TimerKey, delay_ms: i64) {
        self.timers
            .set(key, self.now.saturating_add(delay_ms.max(1)));
    }

    pub(crate) fn reply(&mut self, w: Waiter, response: Response) {
        self.out.push(Effect::Reply {
            token: w.token,
            api_version: w.version,
            response,
        });
    }

    /// Emits an append and remembers what to do when it completes.
    pub(crate) fn append(
        &mut self,
        partition: i32,
        records: Vec<OffsetsRecord>,
        pending: PendingAppend,
    ) {
        let id = AppendId(self.next_append_id);
        self.next_append_id += 1;
        self.appends.insert(id, pending);
        self.out.push(Effect::Append {
            id,
            partition,
            records,
        });
    }

    /// A new, empty group object.
    pub(crate) fn new_group(&mut self, group_id: String) -> Group {
        self.next_incarnation += 1;
        Group::new(group_id, self.now, self.next_incarnation)
    }

    pub(crate) fn new_batch_id(&mut self) -> u64 {
        self.next_batch_id += 1;
        self.next_batch_id
    }

    /// `<prefix>-<uuid v4>`, as Kafka builds member ids.
    pub(crate) fn generate_member_id(&mut self, prefix: &str) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_random().to_be_bytes());
        bytes[8..].copy_from_slice(&self.next_random().to_be_bytes());
        let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
        format!("{prefix}-{}", uuid.hyphenated())
    }

    /// splitmix64, stirred with the clock so equal seeds diverge over time.
    fn next_random(&mut self) -> u64 {
        self.rng = self
            .rng
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(self.now as u64);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Kafka's `validateGroupStatus` minus the group-id check: the error to answer with when
    /// this node cannot serve `group_id` right now.
    pub(crate) fn group_status(&self, group_id: &str) -> Option<i16> {
        let partition = self.partition_for(group_id);
        if self.loading.contains_key(&partition) {
            Some(COORDINATOR_LOAD_IN_PROGRESS)
        } else if !self.owned.contains(&partition) {
            Some(NOT_COORDINATOR)
        } else {
            None
        }
    }

    /// Kafka's `isValidGroupId` (membership APIs need a non-empty id; offset and admin APIs
    /// accept ""), plus a length bound so the id always fits a record key.
    pub(crate) fn invalid_group_id(group_id: &str, allow_empty: bool) -> bool {
        (group_id.is_empty() && !allow_empty) || group_id.len() > MAX_STRING_BYTES
    }

    /// Puts a group back after a handler worked on it; a Dead group is dropped instead.
    pub(crate) fn put_group(&mut self, group: Group) {
        if group.is(GroupState::Dead) {
            self.cancel_group_timers(&group);
        } else {
            self.groups.insert(group.group_id.clone(), group);
        }
    }

    pub(crate) fn cancel_group_timers(&mut self, group: &Group) {
        let g = &group.group_id;
        for member in group.members.keys() {
            self.timers.cancel(&TimerKey::Session {
                group: g.clone(),
                member: member.clone(),
            });
        }
        for member in &group.pending_members {
            self.timers.cancel(&TimerKey::Pending {
                group: g.clone(),
                member: member.clone(),
            });
        }
        self.timers.cancel(&TimerKey::Join { group: g.clone() });
        self.timers.cancel(&TimerKey::Sync { group: g.clone() });
    }

    /// Restarts a member's session timer (Kafka's `completeAndScheduleNextHeartbeatExpiration`).
    pub(crate) fn schedule_session(&mut self, group: &Group, member_id: &str) {
        if let Some(m) = group.members.get(member_id) {
            let timeout = i64::from(m.session_timeout_ms);
            self.arm(
                TimerKey::Session {
                    group: group.group_id.clone(),
                    member: member_id.to_owned(),
                },
                timeout,
            );
        }
    }

    /// The group metadata record of `group` with the given assignment.
    pub(crate) fn group_metadata_record(
        &self,
        group: &Group,
        assignment: &HashMap<String, Bytes>,
    ) -> (i32, OffsetsRecord) {
        let protocol = group.protocol_name.clone();
        let members = group
            .members
            .values()
            .map(|m| MemberMetadataValue {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                rebalance_timeout: m.rebalance_timeout_ms,
                session_timeout: m.session_timeout_ms,
                subscription: protocol
                    .as_deref()
                    .map(|p| m.metadata(p))
                    .unwrap_or_default(),
                assignment: assignment.get(&m.member_id).cloned().unwrap_or_default(),
            })
            .collect();
        let value = GroupMetadataValue {
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            generation: group.generation_id,
            protocol,
            leader: group.leader_id.clone(),
            current_state_timestamp: group.state_timestamp.unwrap_or(-1),
            members,
        };
        let key = RecordKey::GroupMetadata {
            group: group.group_id.clone(),
        };
        (
            self.partition_for(&group.group_id),
            (key.encode(), Some(value.encode())),
        )
    }

    /// The tombstone of a group's metadata record.
    pub(crate) fn group_tombstone(group_id: &str) -> OffsetsRecord {
        let key = RecordKey::GroupMetadata {
            group: group_id.to_owned(),
        };
        (key.encode(), None)
    }

    /// The tombstone of one committed offset.
    pub(crate) fn offset_tombstone(group_id: &str, tp: &TopicPartition) -> OffsetsRecord {
        let key = RecordKey::OffsetCommit {
            group: group_id.to_owned(),
            topic: tp.0.clone(),
            partition: tp.1,
        };
        (key.encode(), None)
    }

    /// Answers a JoinGroup.
    pub(crate) fn reply_join(&mut self, w: Waiter, result: JoinResult) {
        let v = w.version;
        let mut r = JoinGroupResponse::default();
        r.error_code = result.error;
        r.generation_id = result.generation_id;
        if v >= 7 {
            r.protocol_type = result.protocol_type.map(StrBytes::from_string);
            r.protocol_name = result.protocol_name.map(StrBytes::from_string);
        } else {
            // Before v7 the protocol name is not nullable: Kafka sends "" when there is none.
            r.protocol_name = Some(StrBytes::from_string(
                result.protocol_name.unwrap_or_default(),
            ));
        }
        r.leader = StrBytes::from_string(result.leader);
        r.skip_assignment = v >= 9 && result.skip_assignment;
        r.member_id = StrBytes::from_string(result.member_id);
        r.members = result
            .members
            .into_iter()
            .map(|(member_id, instance, metadata)| {
                let mut m = JoinGroupResponseMember::default();
                m.member_id = StrBytes::from_string(member_id);
                if v >= 5 {
                    m.group_instance_id = instance.map(StrBytes::from_string);
                }
                m.metadata = metadata;
                m
            })
            .collect();
        self.reply(w, Response::JoinGroup(r));
    }

    /// Answers a SyncGroup.
    pub(crate) fn reply_sync(
        &mut self,
        w: Waiter,
        error: i16,
        protocol: Option<(Option<String>, Option<String>)>,
        assignment: Bytes,
    ) {
        let mut r = SyncGroupResponse::default();
        r.error_code = error;
        if w.version >= 5
            && let Some((protocol_type, protocol_name)) = protocol
        {
            r.protocol_type = protocol_type.map(StrBytes::from_string);
            r.protocol_name = protocol_name.map(StrBytes::from_string);
        }
        r.assignment = assignment;
        self.reply(w, Response::SyncGroup(r));
    }

    /// Removes a member, answering whatever it had parked (Kafka leaves a removed member's
    /// SyncGroup unanswered; here every parked request gets exactly one answer).
    pub(crate) fn remove_member_and_reply(&mut self, group: &mut Group, member_id: &str) {
        if let Some(member) = group.remove_member(member_id) {
            self.answer_removed_member(&group.group_id, member, UNKNOWN_MEMBER_ID);
        }
    }

    pub(crate) fn answer_removed_member(&mut self, group_id: &str, member: Member, error: i16) {
        if let Some(w) = member.awaiting_join {
            self.reply_join(w, JoinResult::error(String::new(), error));
        }
        if let Some(w) = member.awaiting_sync {
            self.reply_sync(w, error, None, Bytes::new());
        }
        self.timers.cancel(&TimerKey::Session {
            group: group_id.to_owned(),
            member: member.member_id,
        });
    }
}

/// What a JoinGroup is answered with (Kafka's `JoinGroupResult`).
#[derive(Debug, Clone, Default)]
pub(crate) struct JoinResult {
    /// (member id, group instance id, metadata): the leader's view of the group.
    pub(crate) members: Vec<(String, Option<String>, Bytes)>,
    pub(crate) member_id: String,
    pub(crate) generation_id: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) leader: String,
    pub(crate) skip_assignment: bool,
    pub(crate) error: i16,
}

impl JoinResult {
    pub(crate) fn error(member_id: String, error: i16) -> Self {
        Self {
            member_id,
            generation_id: -1,
            error,
            ..Self::default()
        }
    }
}

#[cfg(test)]
impl GroupCoordinator {
    /// Panics if the bookkeeping is inconsistent; called by the property test after every step.
    pub(crate) fn check_invariants(&self) {
        use crate::group::JoinTimer;
        for (id, g) in &self.groups {
            assert_eq!(id, &g.group_id);
            assert!(
                self.owned.contains(&self.partition_for(id)),
                "{id}: group of an unowned partition"
            );
            assert_ne!(g.state, GroupState::Dead, "{id}: Dead groups are dropped");
            let preparing = g.is(GroupState::PreparingRebalance);
            assert_eq!(
                preparing,
                g.join_timer.is_some(),
                "{id}: join timer iff PreparingRebalance"
            );
            assert_eq!(
                g.join_timer.is_some(),
                self.timers.contains(&TimerKey::Join { group: id.clone() }),
                "{id}: join timer armed"
            );
            if let Some(JoinTimer::Initial { remaining, .. }) = g.join_timer {
                assert!(remaining >= 0);
            }
            assert_eq!(
                g.sync_timer_generation.is_some(),
                self.timers.contains(&TimerKey::Sync { group: id.clone() }),
                "{id}: sync timer armed"
            );
            if g.sync_timer_generation.is_some() {
                assert!(g.is(GroupState::CompletingRebalance) || g.is(GroupState::Stable));
            }
            assert_eq!(
                g.members.is_empty(),
                g.leader_id.is_none(),
                "{id}: a leader iff members"
            );
            if let Some(leader) = &g.leader_id {
                assert!(
                    g.members.contains_key(leader),
                    "{id}: leader {leader} is a member"
                );
            }
            if g.is(GroupState::Empty) {
                assert!(g.members.is_empty(), "{id}: Empty group with members");
            }
            for (instance, member) in &g.static_members {
                let m = g
                    .members
                    .get(member)
                    .unwrap_or_else(|| panic!("{id}: static {instance} -> missing {member}"));
                assert_eq!(m.group_instance_id.as_deref(), Some(instance.as_str()));
            }
            for s in &g.pending_sync_members {
                assert!(
                    g.members.contains_key(s),
                    "{id}: pending sync {s} is a member"
                );
            }
            for (mid, m) in &g.members {
                assert_eq!(mid, &m.member_id);
                if let Some(instance) = &m.group_instance_id {
                    assert_eq!(
                        g.static_members.get(instance),
                        Some(mid),
                        "{id}: static map of {mid}"
                    );
                }
                if m.awaiting_sync.is_some() {
                    assert!(
                        g.is(GroupState::CompletingRebalance),
                        "{id}: {mid} awaits sync in {:?}",
                        g.state
                    );
                }
                if m.awaiting_join.is_some() {
                    assert!(
                        g.is(GroupState::PreparingRebalance) || g.is(GroupState::Stable),
                        "{id}: {mid} awaits join in {:?}",
                        g.state
                    );
                }
                let timer = self.timers.contains(&TimerKey::Session {
                    group: id.clone(),
                    member: mid.clone(),
                });
                assert!(
                    timer || m.awaiting_join.is_some() || m.awaiting_sync.is_some(),
                    "{id}: member {mid} can never expire"
                );
                assert!(
                    !g.pending_members.contains(mid),
                    "{id}: {mid} both pending and member"
                );
            }
            for p in &g.pending_members {
                assert!(
                    self.timers.contains(&TimerKey::Pending {
                        group: id.clone(),
                        member: p.clone()
                    }),
                    "{id}: pending member {p} can never expire"
                );
            }
        }
    }
}
