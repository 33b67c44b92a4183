//! Group membership: JoinGroup, SyncGroup, Heartbeat and LeaveGroup, and the rebalance machinery
//! behind them (join and sync deadlines, session expiry, static membership), following Kafka's
//! classic `GroupCoordinator`.

use std::collections::HashMap;

use bytes::Bytes;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, LeaveGroupRequest, LeaveGroupResponse,
    SyncGroupRequest,
};
use kafka_protocol::protocol::StrBytes;

use crate::api::Response;
use crate::config::NEW_MEMBER_JOIN_TIMEOUT_MS;
use crate::coordinator::{GroupCoordinator, JoinResult, PendingAppend};
use crate::error::append_error_to_client;
use crate::error::codes::*;
use crate::group::{Group, GroupState, JoinTimer, Member, Waiter};
use crate::records::MAX_STRING_BYTES;
use crate::timers::TimerKey;

/// A JoinGroup as the handlers see it.
struct JoinParams {
    waiter: Waiter,
    member_id: String,
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    rebalance_timeout_ms: i32,
    session_timeout_ms: i32,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    require_known_member_id: bool,
    supports_skip_assignment: bool,
}

/// A static member's replacement waiting for its group record to be written.
#[derive(Debug)]
pub(crate) struct PendingStaticJoin {
    waiter: Waiter,
    group_id: String,
    incarnation: u64,
    generation: i32,
    instance_id: String,
    old_member_id: String,
    new_member_id: String,
    old_protocols: Vec<(String, Bytes)>,
    old_rebalance_timeout_ms: i32,
    old_session_timeout_ms: i32,
    leader_before: Option<String>,
    supports_skip_assignment: bool,
}

/// Longest member-supplied string kept in group records; leaves room for the generated suffix
/// of member ids inside the schema's i16-length strings.
const MAX_MEMBER_FIELD_BYTES: usize = MAX_STRING_BYTES - 64;

impl GroupCoordinator {
    pub(crate) fn handle_join_group(
        &mut self,
        w: Waiter,
        req: JoinGroupRequest,
        client_id: &str,
        client_host: &str,
    ) {
        let version = w.version;
        let group_id = req.group_id.0.to_string();
        let member_id = req.member_id.to_string();
        if Self::invalid_group_id(&group_id, false) {
            return self.reply_join(w, JoinResult::error(member_id, INVALID_GROUP_ID));
        }
        if let Some(code) = self.group_status(&group_id) {
            return self.reply_join(w, JoinResult::error(member_id, code));
        }
        let group_instance_id = if version >= 5 {
            req.group_instance_id.map(|s| s.to_string())
        } else {
            None
        };
        let session_timeout_ms = req.session_timeout_ms;
        let params = JoinParams {
            waiter: w,
            member_id,
            require_known_member_id: version >= 4 && group_instance_id.is_none(),
            supports_skip_assignment: version >= 9,
            group_instance_id,
            client_id: client_id.to_owned(),
            client_host: client_host.to_owned(),
            // JoinGroup v0 has no rebalance timeout: the session timeout serves as both.
            rebalance_timeout_ms: if version == 0 {
                session_timeout_ms
            } else {
                req.rebalance_timeout_ms
            },
            session_timeout_ms,
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
        };
        let too_long = |s: &str| s.len() > MAX_MEMBER_FIELD_BYTES;
        if too_long(&params.member_id)
            || too_long(&params.client_id)
            || too_long(&params.client_host)
            || too_long(&params.protocol_type)
            || params.group_instance_id.as_deref().is_some_and(too_long)
            || params.protocols.iter().any(|(name, _)| too_long(name))
        {
            return self.reply_join(w, JoinResult::error(params.member_id, INVALID_REQUEST));
        }
        if session_timeout_ms < self.config.group_min_session_timeout_ms
            || session_timeout_ms > self.config.group_max_session_timeout_ms
        {
            return self.reply_join(
                w,
                JoinResult::error(params.member_id, INVALID_SESSION_TIMEOUT),
            );
        }

        let is_unknown_member = params.member_id.is_empty();
        let mut group = match self.groups.remove(&group_id) {
            Some(group) => group,
            // Only a join without a member id may create the group.
            None if is_unknown_member => self.new_group(group_id),
            None => {
                return self.reply_join(w, JoinResult::error(params.member_id, UNKNOWN_MEMBER_ID));
            }
        };

        if !self.accept_joining_member(&group, &params.member_id) {
            let member_id = params.member_id.clone();
            self.remove_member_and_reply(&mut group, &member_id);
            self.reply_join(w, JoinResult::error(String::new(), GROUP_MAX_SIZE_REACHED));
        } else if is_unknown_member {
            self.join_new_member(&mut group, params);
        } else {
            self.join_current_member(&mut group, params);
        }

        if group.is(GroupState::PreparingRebalance) {
            self.try_complete_join(&mut group);
        }
        self.put_group(group);
    }

    /// Kafka's `acceptJoiningMember`: room for the member under `group.max.size`?
    fn accept_joining_member(&self, group: &Group, member_id: &str) -> bool {
        let max = self.config.group_max_size;
        match group.state {
            GroupState::Empty | GroupState::Dead => true,
            // Awaiting members are counted, not members: the group may already be over a
            // lowered limit, and this way the last members to rejoin are the ones turned away.
            GroupState::PreparingRebalance => {
                group
                    .members
                    .get(member_id)
                    .is_some_and(|m| m.awaiting_join.is_some())
                    || group.num_awaiting_join() < max
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                group.members.contains_key(member_id) || group.members.len() < max
            }
        }
    }

    fn join_new_member(&mut self, group: &mut Group, p: JoinParams) {
        if !group.supports_protocols(&p.protocol_type, &p.protocols) {
            return self.reply_join(
                p.waiter,
                JoinResult::error(String::new(), INCONSISTENT_GROUP_PROTOCOL),
            );
        }
        let prefix = p
            .group_instance_id
            .clone()
            .unwrap_or_else(|| p.client_id.clone());
        let new_member_id = self.generate_member_id(&prefix);
        match p.group_instance_id.clone() {
            Some(instance_id) => match group.current_static_member_id(&instance_id) {
                Some(old) => {
                    let old = old.to_owned();
                    self.update_static_member_and_rebalance(
                        group,
                        old,
                        new_member_id,
                        instance_id,
                        p,
                    );
                }
                None => self.add_member_and_rebalance(group, new_member_id, p),
            },
            None if p.require_known_member_id => {
                // KIP-394: hand out the id first so a client that times out and retries
                // rejoins as the same member instead of piling up ghosts in the rebalance.
                group.pending_members.insert(new_member_id.clone());
                self.arm(
                    TimerKey::Pending {
                        group: group.group_id.clone(),
                        member: new_member_id.clone(),
                    },
                    i64::from(p.session_timeout_ms),
                );
                self.reply_join(
                    p.waiter,
                    JoinResult::error(new_member_id, MEMBER_ID_REQUIRED),
                );
            }
            None => self.add_member_and_rebalance(group, new_member_id, p),
        }
    }

    fn join_current_member(&mut self, group: &mut Group, p: JoinParams) {
        let member_id = p.member_id.clone();
        if !group.supports_protocols(&p.protocol_type, &p.protocols) {
            return self.reply_join(
                p.waiter,
                JoinResult::error(member_id, INCONSISTENT_GROUP_PROTOCOL),
            );
        }
        if group.pending_members.contains(&member_id) {
            if p.group_instance_id.is_some() {
                // Pending ids are only ever handed to dynamic members; Kafka treats this as an
                // illegal state. Tell the client to start over.
                return self.reply_join(p.waiter, JoinResult::error(member_id, UNKNOWN_MEMBER_ID));
            }
            self.timers.cancel(&TimerKey::Pending {
                group: group.group_id.clone(),
                member: member_id.clone(),
            });
            return self.add_member_and_rebalance(group, member_id, p);
        }
        if let Some(code) =
            validate_current_member(group, &member_id, p.group_instance_id.as_deref())
        {
            return self.reply_join(p.waiter, JoinResult::error(member_id, code));
        }
        let matches = group
            .members
            .get(&member_id)
            .is_some_and(|m| m.matches(&p.protocols));
        match group.state {
            GroupState::PreparingRebalance => self.update_member_and_rebalance(group, p),
            GroupState::CompletingRebalance if matches => {
                // The member lost the JoinGroup response: answer with the current generation.
                let result =
                    self.current_join_result(group, &member_id, group.is_leader(&member_id));
                self.reply_join(p.waiter, result);
            }
            GroupState::CompletingRebalance => self.update_member_and_rebalance(group, p),
            GroupState::Stable if group.is_leader(&member_id) || !matches => {
                // A leader's JoinGroup forces a rebalance so it can react to changes that do not
                // show in member metadata (e.g. new partitions).
                self.update_member_and_rebalance(group, p);
            }
            GroupState::Stable => {
                let result = self.current_join_result(group, &member_id, false);
                self.reply_join(p.waiter, result);
            }
            GroupState::Empty | GroupState::Dead => {
                self.reply_join(p.waiter, JoinResult::error(member_id, UNKNOWN_MEMBER_ID));
            }
        }
    }

    /// The JoinGroup answer for the current generation; the leader's carries every member.
    fn current_join_result(
        &self,
        group: &Group,
        member_id: &str,
        with_members: bool,
    ) -> JoinResult {
        JoinResult {
            members: if with_members {
                current_member_metadata(group)
            } else {
                Vec::new()
            },
            member_id: member_id.to_owned(),
            generation_id: group.generation_id,
            protocol_type: group.protocol_type.clone(),
            protocol_name: group.protocol_name.clone(),
            leader: group.leader_id.clone().unwrap_or_default(),
            skip_assignment: false,
            error: NONE,
        }
    }

    fn add_member_and_rebalance(&mut self, group: &mut Group, member_id: String, p: JoinParams) {
        let member = Member {
            member_id: member_id.clone(),
            group_instance_id: p.group_instance_id,
            client_id: p.client_id,
            client_host: p.client_host,
            rebalance_timeout_ms: p.rebalance_timeout_ms,
            session_timeout_ms: p.session_timeout_ms,
            protocol_type: p.protocol_type,
            protocols: p.protocols,
            assignment: Bytes::new(),
            awaiting_join: Some(p.waiter),
            awaiting_sync: None,
            is_new: true,
        };
        // A new member during the first rebalance extends the initial delay.
        if group.is(GroupState::PreparingRebalance) && group.generation_id == 0 {
            group.new_member_added = true;
        }
        group.add_member(member);
        // A new member cannot heartbeat while its JoinGroup is parked, so it gets the new-member
        // join timeout instead of its session timeout.
        self.arm(
            TimerKey::Session {
                group: group.group_id.clone(),
                member: member_id,
            },
            NEW_MEMBER_JOIN_TIMEOUT_MS,
        );
        self.maybe_prepare_rebalance(group);
    }

    /// Replaces a member's protocols and timeouts and parks (or clears) its JoinGroup.
    fn update_member(
        &mut self,
        group: &mut Group,
        member_id: &str,
        protocols: Vec<(String, Bytes)>,
        rebalance_timeout_ms: i32,
        session_timeout_ms: i32,
        waiter: Option<Waiter>,
    ) {
        let Some(member) = group.members.get_mut(member_id) else {
            return;
        };
        member.protocols = protocols;
        member.rebalance_timeout_ms = rebalance_timeout_ms;
        member.session_timeout_ms = session_timeout_ms;
        let superseded = std::mem::replace(&mut member.awaiting_join, waiter);
        if let (Some(old), Some(_)) = (superseded, waiter) {
            // A second JoinGroup for the same member replaces the parked one, which still needs
            // its one answer; the client retries on REBALANCE_IN_PROGRESS.
            let result = JoinResult::error(member_id.to_owned(), REBALANCE_IN_PROGRESS);
            self.reply_join(old, result);
        }
    }

    fn update_member_and_rebalance(&mut self, group: &mut Group, p: JoinParams) {
        self.update_member(
            group,
            &p.member_id,
            p.protocols,
            p.rebalance_timeout_ms,
            p.session_timeout_ms,
            Some(p.waiter),
        );
        self.maybe_prepare_rebalance(group);
    }

    /// Kafka's `updateStaticMemberAndRebalance`: a known `group.instance.id` joined without a
    /// member id (a restarted static member). It takes over the old member's place; a Stable
    /// group whose protocol would not change keeps its assignment and does not rebalance.
    fn update_static_member_and_rebalance(
        &mut self,
        group: &mut Group,
        old_member_id: String,
        new_member_id: String,
        instance_id: String,
        p: JoinParams,
    ) {
        let leader_before = group.leader_id.clone();
        self.replace_static_member(group, &instance_id, &old_member_id, &new_member_id);
        let (old_protocols, old_rebalance, old_session) = match group.members.get(&new_member_id) {
            Some(m) => (
                m.protocols.clone(),
                m.rebalance_timeout_ms,
                m.session_timeout_ms,
            ),
            None => {
                return self.reply_join(
                    p.waiter,
                    JoinResult::error(String::new(), UNKNOWN_MEMBER_ID),
                );
            }
        };
        self.update_member(
            group,
            &new_member_id,
            p.protocols,
            p.rebalance_timeout_ms,
            p.session_timeout_ms,
            Some(p.waiter),
        );
        self.schedule_session(group, &new_member_id);
        match group.state {
            GroupState::Stable => {
                if group.protocol_name == group.select_protocol() {
                    // Persist the new member id first: after a failover the old id must not
                    // come back as the owner of the instance id.
                    let assignment: HashMap<String, Bytes> = group
                        .members
                        .values()
                        .map(|m| (m.member_id.clone(), m.assignment.clone()))
                        .collect();
                    let (partition, record) = self.group_metadata_record(group, &assignment);
                    let pending = PendingStaticJoin {
                        waiter: p.waiter,
                        group_id: group.group_id.clone(),
                        incarnation: group.incarnation,
                        generation: group.generation_id,
                        instance_id,
                        old_member_id,
                        new_member_id,
                        old_protocols,
                        old_rebalance_timeout_ms: old_rebalance,
                        old_session_timeout_ms: old_session,
                        leader_before,
                        supports_skip_assignment: p.supports_skip_assignment,
                    };
                    self.append(partition, vec![record], PendingAppend::StaticStore(pending));
                } else {
                    self.maybe_prepare_rebalance(group);
                }
            }
            // The leader may already hold the old member id in its assignment: rebalance so the
            // new id gets one.
            GroupState::CompletingRebalance => self.prepare_rebalance(group),
            GroupState::PreparingRebalance => {}
            GroupState::Empty | GroupState::Dead => {
                // A static member implies a member, so the group cannot be Empty; answer anyway.
                if let Some(m) = group.members.get_mut(&new_member_id)
                    && let Some(w) = m.awaiting_join.take()
                {
                    self.reply_join(w, JoinResult::error(new_member_id, UNKNOWN_MEMBER_ID));
                }
            }
        }
    }

    /// Re-keys a static member under a new member id, fencing whatever the old id had parked.
    fn replace_static_member(
        &mut self,
        group: &mut Group,
        instance_id: &str,
        old_id: &str,
        new_id: &str,
    ) {
        let Some(mut member) = group.members.shift_remove(old_id) else {
            return;
        };
        if let Some(w) = member.awaiting_join.take() {
            self.reply_join(w, JoinResult::error(old_id.to_owned(), FENCED_INSTANCE_ID));
        }
        if let Some(w) = member.awaiting_sync.take() {
            self.reply_sync(w, FENCED_INSTANCE_ID, None, Bytes::new());
        }
        self.timers.cancel(&TimerKey::Session {
            group: group.group_id.clone(),
            member: old_id.to_owned(),
        });
        member.member_id = new_id.to_owned();
        group.members.insert(new_id.to_owned(), member);
        if group.is_leader(old_id) {
            group.leader_id = Some(new_id.to_owned());
        }
        if group.pending_sync_members.remove(old_id) {
            group.pending_sync_members.insert(new_id.to_owned());
        }
        group
            .static_members
            .insert(instance_id.to_owned(), new_id.to_owned());
    }

    pub(crate) fn static_store_done(&mut self, p: PendingStaticJoin, result: Result<(), i16>) {
        let Some(mut group) = self.groups.remove(&p.group_id) else {
            return;
        };
        // Only act if nothing moved on meanwhile; otherwise the parked JoinGroup belongs to the
        // rebalance that started (or was already answered).
        let still_waiting = group.incarnation == p.incarnation
            && group.is(GroupState::Stable)
            && group.generation_id == p.generation
            && group
                .members
                .get(&p.new_member_id)
                .is_some_and(|m| m.awaiting_join == Some(p.waiter));
        if still_waiting {
            match result {
                Err(code) => {
                    // The new id is not durable: give the instance back to the old id.
                    self.update_member(
                        &mut group,
                        &p.new_member_id,
                        p.old_protocols,
                        p.old_rebalance_timeout_ms,
                        p.old_session_timeout_ms,
                        None,
                    );
                    self.replace_static_member(
                        &mut group,
                        &p.instance_id,
                        &p.new_member_id,
                        &p.old_member_id,
                    );
                    self.schedule_session(&group, &p.old_member_id);
                    let result = JoinResult {
                        generation_id: group.generation_id,
                        protocol_type: group.protocol_type.clone(),
                        protocol_name: group.protocol_name.clone(),
                        leader: p.leader_before.unwrap_or_default(),
                        error: append_error_to_client(code),
                        ..JoinResult::default()
                    };
                    self.reply_join(p.waiter, result);
                }
                Ok(()) => {
                    if let Some(m) = group.members.get_mut(&p.new_member_id) {
                        m.awaiting_join = None;
                    }
                    // Its session timer may have lapsed (ignored) while it waited.
                    self.schedule_session(&group, &p.new_member_id);
                    let result = if p.supports_skip_assignment {
                        // JoinGroup v9: a static leader learns it leads but skips assigning,
                        // since a Stable group would ignore its new assignment anyway.
                        let is_leader = group.is_leader(&p.new_member_id);
                        let mut r = self.current_join_result(&group, &p.new_member_id, is_leader);
                        r.skip_assignment = is_leader;
                        r
                    } else {
                        // Before v9: report the old leader id so the member does not take itself
                        // for the leader and run an assignment nobody would receive.
                        let mut r = self.current_join_result(&group, &p.new_member_id, false);
                        r.leader = p.leader_before.unwrap_or_default();
                        r
                    };
                    self.reply_join(p.waiter, result);
                }
            }
        }
        self.put_group(group);
    }

    pub(crate) fn maybe_prepare_rebalance(&mut self, group: &mut Group) {
        if group.can_rebalance() {
            self.prepare_rebalance(group);
        }
    }

    /// Starts a rebalance (Kafka's `prepareRebalance`).
    pub(crate) fn prepare_rebalance(&mut self, group: &mut Group) {
        if group.is(GroupState::CompletingRebalance) {
            self.reset_and_propagate_assignment_error(group, REBALANCE_IN_PROGRESS);
        }
        self.remove_sync_expiration(group);
        let join_key = TimerKey::Join {
            group: group.group_id.clone(),
        };
        if group.is(GroupState::Empty) {
            let delay = i64::from(self.config.group_initial_rebalance_delay_ms);
            let remaining = (group.rebalance_timeout_ms() - delay).max(0);
            group.join_timer = Some(JoinTimer::Initial { delay, remaining });
            self.arm(join_key, delay);
        } else {
            group.join_timer = Some(JoinTimer::Normal);
            self.arm(join_key, group.rebalance_timeout_ms());
        }
        group.transition_to(GroupState::PreparingRebalance, self.now);
        tracing::debug!(group = %group.group_id, generation = group.generation_id, "preparing rebalance");
        self.try_complete_join(group);
    }

    /// Completes the join phase early once every member has rejoined (never during the initial
    /// delay, which always waits).
    pub(crate) fn try_complete_join(&mut self, group: &mut Group) {
        if group.is(GroupState::PreparingRebalance)
            && group.join_timer == Some(JoinTimer::Normal)
            && group.has_all_members_joined()
        {
            self.complete_join(group);
        }
    }

    pub(crate) fn on_join_deadline(&mut self, group_id: &str) {
        let Some(mut group) = self.groups.remove(group_id) else {
            return;
        };
        if group.is(GroupState::PreparingRebalance) {
            match group.join_timer {
                Some(JoinTimer::Initial { delay, remaining })
                    if group.new_member_added && remaining != 0 =>
                {
                    // Members are still arriving: wait once more, within the rebalance timeout.
                    group.new_member_added = false;
                    let next_delay =
                        i64::from(self.config.group_initial_rebalance_delay_ms).min(remaining);
                    let next_remaining = (remaining - delay).max(0);
                    group.join_timer = Some(JoinTimer::Initial {
                        delay: next_delay,
                        remaining: next_remaining,
                    });
                    self.arm(
                        TimerKey::Join {
                            group: group.group_id.clone(),
                        },
                        next_delay,
                    );
                }
                Some(_) => self.complete_join(&mut group),
                None => {}
            }
        }
        self.put_group(group);
    }

    /// Ends the join phase (Kafka's `onCompleteJoin`): drops dynamic members that did not
    /// rejoin, starts the next generation and answers every parked JoinGroup.
    fn complete_join(&mut self, group: &mut Group) {
        self.timers.cancel(&TimerKey::Join {
            group: group.group_id.clone(),
        });
        group.join_timer = None;
        let not_rejoined: Vec<String> = group
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none() && m.group_instance_id.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for member_id in not_rejoined {
            tracing::info!(group = %group.group_id, member = %member_id, "removing member that did not rejoin");
            self.remove_member_and_reply(group, &member_id);
        }

        if !group.maybe_elect_new_joined_leader() && !group.members.is_empty() {
            // Only static members are left and none rejoined: wait another rebalance timeout,
            // until their sessions expire.
            group.join_timer = Some(JoinTimer::Normal);
            self.arm(
                TimerKey::Join {
                    group: group.group_id.clone(),
                },
                group.rebalance_timeout_ms(),
            );
            return;
        }

        self.init_next_generation(group);
        if group.is(GroupState::Empty) {
            // Nobody waits on this write: a lost record only brings back the previous generation,
            // which has no live members anyway.
            let (partition, record) = self.group_metadata_record(group, &HashMap::new());
            self.append(partition, vec![record], PendingAppend::Untracked);
            return;
        }
        let leader_members = current_member_metadata(group);
        let member_ids: Vec<String> = group.members.keys().cloned().collect();
        for member_id in member_ids {
            let is_leader = group.is_leader(&member_id);
            let mut result = self.current_join_result(group, &member_id, false);
            if is_leader {
                result.members = leader_members.clone();
            }
            if let Some(m) = group.members.get_mut(&member_id) {
                m.is_new = false;
                if let Some(w) = m.awaiting_join.take() {
                    self.reply_join(w, result);
                }
            }
            self.schedule_session(group, &member_id);
            group.pending_sync_members.insert(member_id);
        }
        group.sync_timer_generation = Some(group.generation_id);
        self.arm(
            TimerKey::Sync {
                group: group.group_id.clone(),
            },
            group.rebalance_timeout_ms(),
        );
    }

    fn init_next_generation(&mut self, group: &mut Group) {
        group.generation_id = group.generation_id.wrapping_add(1);
        if group.members.is_empty() {
            group.protocol_name = None;
            group.subscribed_topics = group.compute_subscribed_topics();
            group.transition_to(GroupState::Empty, self.now);
        } else {
            group.protocol_name = group.select_protocol().or_else(|| {
                // Unreachable while joins are checked against the group's protocols; pick the
                // leader's first choice rather than fail.
                group
                    .leader_id
                    .as_ref()
                    .and_then(|l| group.members.get(l))
                    .and_then(|m| m.protocols.first())
                    .map(|(n, _)| n.clone())
            });
            group.subscribed_topics = group.compute_subscribed_topics();
            group.transition_to(GroupState::CompletingRebalance, self.now);
        }
        group.pending_sync_members.clear();
    }

    fn remove_sync_expiration(&mut self, group: &mut Group) {
        group.pending_sync_members.clear();
        group.sync_timer_generation = None;
        self.timers.cancel(&TimerKey::Sync {
            group: group.group_id.clone(),
        });
    }

    fn remove_pending_sync_member(&mut self, group: &mut Group, member_id: &str) {
        group.pending_sync_members.remove(member_id);
        if group.pending_sync_members.is_empty() {
            self.remove_sync_expiration(group);
        }
    }

    pub(crate) fn on_sync_deadline(&mut self, group_id: &str) {
        let Some(mut group) = self.groups.remove(group_id) else {
            return;
        };
        let generation = group.sync_timer_generation.take();
        if generation == Some(group.generation_id)
            && (group.is(GroupState::CompletingRebalance) || group.is(GroupState::Stable))
            && !group.pending_sync_members.is_empty()
        {
            let missing: Vec<String> = group.pending_sync_members.iter().cloned().collect();
            tracing::info!(group = %group.group_id, ?missing, "removing members that did not sync");
            for member_id in missing {
                self.remove_member_and_reply(&mut group, &member_id);
            }
            self.prepare_rebalance(&mut group);
        }
        self.put_group(group);
    }

    fn reset_and_propagate_assignment_error(&mut self, group: &mut Group, error: i16) {
        for member in group.members.values_mut() {
            member.assignment = Bytes::new();
        }
        self.propagate_assignment(group, error);
    }

    /// Answers every parked SyncGroup with its assignment (or the error) and restarts their
    /// sessions: expirations ignored while they waited are not rescheduled otherwise.
    fn propagate_assignment(&mut self, group: &mut Group, error: i16) {
        let protocol =
            (error == NONE).then(|| (group.protocol_type.clone(), group.protocol_name.clone()));
        let answered: Vec<(Waiter, Bytes, String)> = group
            .members
            .values_mut()
            .filter_map(|m| {
                m.awaiting_sync
                    .take()
                    .map(|w| (w, m.assignment.clone(), m.member_id.clone()))
            })
            .collect();
        for (w, assignment, member_id) in answered {
            self.reply_sync(w, error, protocol.clone(), assignment);
            self.schedule_session(group, &member_id);
        }
    }

    pub(crate) fn handle_sync_group(&mut self, w: Waiter, req: SyncGroupRequest) {
        let group_id = req.group_id.0.to_string();
        let member_id = req.member_id.to_string();
        if Self::invalid_group_id(&group_id, false) {
            return self.reply_sync(w, INVALID_GROUP_ID, None, Bytes::new());
        }
        match self.group_status(&group_id) {
            // The rebalance in flight was lost with the old coordinator: send the member back to
            // JoinGroup (older clients do not expect COORDINATOR_LOAD_IN_PROGRESS here).
            Some(COORDINATOR_LOAD_IN_PROGRESS) => {
                return self.reply_sync(w, REBALANCE_IN_PROGRESS, None, Bytes::new());
            }
            Some(code) => return self.reply_sync(w, code, None, Bytes::new()),
            None => {}
        }
        // From v5 the protocol type and name are mandatory.
        if w.version >= 5 && (req.protocol_type.is_none() || req.protocol_name.is_none()) {
            return self.reply_sync(w, INCONSISTENT_GROUP_PROTOCOL, None, Bytes::new());
        }
        let Some(mut group) = self.groups.remove(&group_id) else {
            return self.reply_sync(w, UNKNOWN_MEMBER_ID, None, Bytes::new());
        };
        let instance_id = if w.version >= 3 {
            req.group_instance_id.as_ref().map(|s| s.to_string())
        } else {
            None
        };
        let error =
            validate_current_member(&group, &member_id, instance_id.as_deref()).or_else(|| {
                if req.generation_id != group.generation_id {
                    Some(ILLEGAL_GENERATION)
                } else if req
                    .protocol_type
                    .as_ref()
                    .is_some_and(|t| group.protocol_type.as_deref() != Some(t.as_str()))
                    || req
                        .protocol_name
                        .as_ref()
                        .is_some_and(|n| group.protocol_name.as_deref() != Some(n.as_str()))
                {
                    Some(INCONSISTENT_GROUP_PROTOCOL)
                } else {
                    None
                }
            });
        if let Some(code) = error {
            self.reply_sync(w, code, None, Bytes::new());
            return self.put_group(group);
        }
        match group.state {
            GroupState::Empty => self.reply_sync(w, UNKNOWN_MEMBER_ID, None, Bytes::new()),
            GroupState::PreparingRebalance => {
                self.reply_sync(w, REBALANCE_IN_PROGRESS, None, Bytes::new())
            }
            GroupState::CompletingRebalance => {
                if let Some(m) = group.members.get_mut(&member_id)
                    && let Some(old) = m.awaiting_sync.replace(w)
                {
                    self.reply_sync(old, REBALANCE_IN_PROGRESS, None, Bytes::new());
                }
                self.remove_pending_sync_member(&mut group, &member_id);
                if group.is_leader(&member_id) {
                    let mut assignment: HashMap<String, Bytes> = req
                        .assignments
                        .into_iter()
                        .map(|a| (a.member_id.to_string(), a.assignment))
                        .collect();
                    for id in group.members.keys() {
                        assignment.entry(id.clone()).or_default();
                    }
                    let (partition, record) = self.group_metadata_record(&group, &assignment);
                    self.append(
                        partition,
                        vec![record],
                        PendingAppend::SyncStore {
                            group_id: group.group_id.clone(),
                            incarnation: group.incarnation,
                            generation: group.generation_id,
                            assignment,
                        },
                    );
                }
            }
            GroupState::Stable => {
                self.remove_pending_sync_member(&mut group, &member_id);
                let assignment = group
                    .members
                    .get(&member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                let protocol = (group.protocol_type.clone(), group.protocol_name.clone());
                self.reply_sync(w, NONE, Some(protocol), assignment);
                self.schedule_session(&group, &member_id);
            }
            GroupState::Dead => self.reply_sync(w, COORDINATOR_NOT_AVAILABLE, None, Bytes::new()),
        }
        self.put_group(group);
    }

    pub(crate) fn sync_store_done(
        &mut self,
        group_id: &str,
        incarnation: u64,
        generation: i32,
        assignment: HashMap<String, Bytes>,
        result: Result<(), i16>,
    ) {
        let Some(mut group) = self.groups.remove(group_id) else {
            return;
        };
        // A member may have joined (or the group been reloaded) while the write was in flight.
        if group.incarnation == incarnation
            && group.is(GroupState::CompletingRebalance)
            && group.generation_id == generation
        {
            match result {
                Err(code) => {
                    self.reset_and_propagate_assignment_error(
                        &mut group,
                        append_error_to_client(code),
                    );
                    self.maybe_prepare_rebalance(&mut group);
                }
                Ok(()) => {
                    for member in group.members.values_mut() {
                        member.assignment = assignment
                            .get(&member.member_id)
                            .cloned()
                            .unwrap_or_default();
                    }
                    self.propagate_assignment(&mut group, NONE);
                    group.transition_to(GroupState::Stable, self.now);
                }
            }
        }
        self.put_group(group);
    }

    pub(crate) fn handle_heartbeat(&mut self, w: Waiter, req: HeartbeatRequest) {
        let group_id = req.group_id.0.to_string();
        let member_id = req.member_id.to_string();
        let instance_id = if w.version >= 3 {
            req.group_instance_id.as_ref().map(|s| s.to_string())
        } else {
            None
        };
        let error = if Self::invalid_group_id(&group_id, false) {
            INVALID_GROUP_ID
        } else {
            match self.group_status(&group_id) {
                // The group is still loading: answer blindly so the member keeps its session.
                Some(COORDINATOR_LOAD_IN_PROGRESS) => NONE,
                Some(code) => code,
                None => match self.groups.remove(&group_id) {
                    None => UNKNOWN_MEMBER_ID,
                    Some(group) => {
                        let code = self.heartbeat(
                            &group,
                            &member_id,
                            instance_id.as_deref(),
                            req.generation_id,
                        );
                        self.put_group(group);
                        code
                    }
                },
            }
        };
        let mut r = HeartbeatResponse::default();
        r.error_code = error;
        self.reply(w, Response::Heartbeat(r));
    }

    fn heartbeat(
        &mut self,
        group: &Group,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        if let Some(code) = validate_current_member(group, member_id, instance_id) {
            return code;
        }
        if generation != group.generation_id {
            return ILLEGAL_GENERATION;
        }
        match group.state {
            GroupState::Empty => UNKNOWN_MEMBER_ID,
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.schedule_session(group, member_id);
                NONE
            }
            GroupState::PreparingRebalance => {
                self.schedule_session(group, member_id);
                REBALANCE_IN_PROGRESS
            }
            GroupState::Dead => COORDINATOR_NOT_AVAILABLE,
        }
    }

    pub(crate) fn handle_leave_group(&mut self, w: Waiter, req: LeaveGroupRequest) {
        let group_id = req.group_id.0.to_string();
        // Before v3 a LeaveGroup names one member, by member id only.
        let leaving: Vec<(String, Option<String>)> = if w.version >= 3 {
            req.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        m.group_instance_id.as_ref().map(|s| s.to_string()),
                    )
                })
                .collect()
        } else {
            vec![(req.member_id.to_string(), None)]
        };
        let top_error = if Self::invalid_group_id(&group_id, false) {
            Some(INVALID_GROUP_ID)
        } else {
            self.group_status(&group_id)
        };
        let (top, results) = match top_error {
            Some(code) => (code, Vec::new()),
            None => match self.groups.remove(&group_id) {
                None => (
                    NONE,
                    leaving
                        .into_iter()
                        .map(|(m, i)| (m, i, UNKNOWN_MEMBER_ID))
                        .collect(),
                ),
                Some(mut group) => {
                    let mut results = Vec::new();
                    for (member_id, instance_id) in leaving {
                        let code = self.leave(&mut group, &member_id, instance_id.as_deref());
                        results.push((member_id, instance_id, code));
                    }
                    self.put_group(group);
                    (NONE, results)
                }
            },
        };
        let mut r = LeaveGroupResponse::default();
        if w.version >= 3 {
            r.error_code = top;
            r.members = results
                .into_iter()
                .map(|(member_id, instance_id, code)| {
                    let mut m = MemberResponse::default();
                    m.member_id = StrBytes::from_string(member_id);
                    m.group_instance_id = instance_id.map(StrBytes::from_string);
                    m.error_code = code;
                    m
                })
                .collect();
        } else {
            // Kafka folds the single member's error into the top-level one.
            r.error_code = if top != NONE {
                top
            } else {
                results
                    .iter()
                    .map(|r| r.2)
                    .find(|c| *c != NONE)
                    .unwrap_or(NONE)
            };
        }
        self.reply(w, Response::LeaveGroup(r));
    }

    fn leave(&mut self, group: &mut Group, member_id: &str, instance_id: Option<&str>) -> i16 {
        if member_id.is_empty() {
            // Administrative removal of a static member by its instance id alone.
            return match instance_id.and_then(|i| group.current_static_member_id(i)) {
                Some(current) => {
                    let current = current.to_owned();
                    self.remove_member_and_update_group(group, &current);
                    NONE
                }
                None => UNKNOWN_MEMBER_ID,
            };
        }
        if group.pending_members.contains(member_id) {
            self.remove_pending_member_and_update_group(group, member_id);
            return NONE;
        }
        match validate_current_member(group, member_id, instance_id) {
            Some(code) => code,
            None => {
                self.remove_member_and_update_group(group, member_id);
                NONE
            }
        }
    }

    /// Kafka's `removeMemberAndUpdateGroup`.
    pub(crate) fn remove_member_and_update_group(&mut self, group: &mut Group, member_id: &str) {
        self.remove_member_and_reply(group, member_id);
        match group.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.maybe_prepare_rebalance(group)
            }
            GroupState::PreparingRebalance => self.try_complete_join(group),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    fn remove_pending_member_and_update_group(&mut self, group: &mut Group, member_id: &str) {
        group.pending_members.shift_remove(member_id);
        self.timers.cancel(&TimerKey::Pending {
            group: group.group_id.clone(),
            member: member_id.to_owned(),
        });
        if group.is(GroupState::PreparingRebalance) {
            self.try_complete_join(group);
        }
    }

    pub(crate) fn on_session_expired(&mut self, group_id: &str, member_id: &str) {
        let Some(mut group) = self.groups.remove(group_id) else {
            return;
        };
        if let Some(member) = group.members.get(member_id) {
            // A member parked in JoinGroup/SyncGroup counts as alive (its next timer starts when
            // it is answered), unless it is new and its join timeout ran out.
            let alive = !member.is_new
                && (member.awaiting_join.is_some() || member.awaiting_sync.is_some());
            if !alive {
                tracing::info!(group = %group_id, member = %member_id, "member session expired");
                self.remove_member_and_update_group(&mut group, member_id);
            }
        }
        self.put_group(group);
    }

    pub(crate) fn on_pending_expired(&mut self, group_id: &str, member_id: &str) {
        let Some(mut group) = self.groups.remove(group_id) else {
            return;
        };
        if group.pending_members.contains(member_id) {
            self.remove_pending_member_and_update_group(&mut group, member_id);
        }
        self.put_group(group);
    }
}

/// Kafka's `validateCurrentMember`: a static member must be the current owner of its instance
/// id (else FENCED_INSTANCE_ID); any other must be a member.
pub(crate) fn validate_current_member(
    group: &Group,
    member_id: &str,
    instance_id: Option<&str>,
) -> Option<i16> {
    match instance_id {
        Some(instance) => match group.current_static_member_id(instance) {
            Some(current) if current != member_id => Some(FENCED_INSTANCE_ID),
            Some(_) => None,
            None => Some(UNKNOWN_MEMBER_ID),
        },
        None if !group.members.contains_key(member_id) => Some(UNKNOWN_MEMBER_ID),
        None => None,
    }
}

/// Every member's id, instance id and metadata for the group's protocol: what the leader needs
/// to assign.
pub(crate) fn current_member_metadata(group: &Group) -> Vec<(String, Option<String>, Bytes)> {
    let protocol = group.protocol_name.clone().unwrap_or_default();
    group
        .members
        .values()
        .map(|m| {
            (
                m.member_id.clone(),
                m.group_instance_id.clone(),
                m.metadata(&protocol),
            )
        })
        .collect()
}
