//! One classic group: its state machine state, members, and committed offsets. Pure data and
//! the bookkeeping Kafka's `GroupMetadata`/`MemberMetadata` do; decisions live in the handlers.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use indexmap::{IndexMap, IndexSet};

use crate::api::ReplyToken;
use crate::records::subscription_topics;

/// The protocol type of Kafka consumers, whose member metadata the coordinator can read.
pub(crate) const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// A classic group's state, as Kafka names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupState {
    /// No members; may still hold offsets.
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Waiting for the leader's assignment.
    CompletingRebalance,
    /// Members have their assignment.
    Stable,
    /// Removed (only ever reported, never held).
    Dead,
}

impl GroupState {
    /// Kafka's name for the state, as DescribeGroups and ListGroups report it.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }

    /// States a group may enter this state from (Kafka's `validPreviousStates`).
    fn valid_previous(self) -> &'static [GroupState] {
        use GroupState::*;
        match self {
            PreparingRebalance => &[Stable, CompletingRebalance, Empty],
            CompletingRebalance => &[PreparingRebalance],
            Stable => &[CompletingRebalance],
            Dead => &[Stable, PreparingRebalance, CompletingRebalance, Empty, Dead],
            Empty => &[PreparingRebalance],
        }
    }
}

/// A parked request: who to answer, and at which version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Waiter {
    pub(crate) token: ReplyToken,
    pub(crate) version: i16,
}

/// A (topic, partition) pair.
pub(crate) type TopicPartition = (String, i32);

/// A committed offset in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OffsetAndMetadata {
    pub(crate) offset: i64,
    /// -1 when none was given.
    pub(crate) leader_epoch: i32,
    pub(crate) metadata: String,
    pub(crate) commit_timestamp: i64,
    pub(crate) expire_timestamp: Option<i64>,
}

/// One member of a group (Kafka's `MemberMetadata`).
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) member_id: String,
    pub(crate) group_instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) session_timeout_ms: i32,
    pub(crate) protocol_type: String,
    /// Supported protocols, most preferred first, with the member's metadata for each.
    pub(crate) protocols: Vec<(String, Bytes)>,
    pub(crate) assignment: Bytes,
    pub(crate) awaiting_join: Option<Waiter>,
    pub(crate) awaiting_sync: Option<Waiter>,
    /// Joined but not yet through a rebalance: its timer is the new-member join timeout.
    pub(crate) is_new: bool,
}

impl Member {
    /// The member's metadata for `protocol` (empty if it does not support it, which the
    /// protocol checks on join rule out).
    pub(crate) fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    /// True when the member sent exactly these protocols, in this order, with these metadata.
    pub(crate) fn matches(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    /// The member's vote: its most preferred protocol among the candidates.
    fn vote<'a>(&'a self, candidates: &HashSet<&str>) -> Option<&'a str> {
        self.protocols
            .iter()
            .map(|(name, _)| name.as_str())
            .find(|name| candidates.contains(name))
    }
}

/// How the current join phase ends (Kafka's `InitialDelayedJoin` vs `DelayedJoin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinTimer {
    /// The first rebalance of an Empty group: wait `delay`, extend while new members arrive,
    /// but never past `remaining` more.
    Initial { delay: i64, remaining: i64 },
    /// Any other rebalance: completes as soon as every member has rejoined, or at the deadline.
    Normal,
}

/// One classic group (Kafka's `GroupMetadata`).
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) group_id: String,
    /// Distinguishes this group object from any earlier one with the same id (deleted and
    /// recreated, unloaded and reloaded), so a late append completion cannot touch the wrong one.
    pub(crate) incarnation: u64,
    pub(crate) state: GroupState,
    pub(crate) state_timestamp: Option<i64>,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) generation_id: i32,
    pub(crate) leader_id: Option<String>,
    pub(crate) members: IndexMap<String, Member>,
    /// group.instance.id -> member id.
    pub(crate) static_members: HashMap<String, String>,
    /// Members told MEMBER_ID_REQUIRED that have not rejoined yet.
    pub(crate) pending_members: IndexSet<String>,
    /// Members of the new generation that have not sent SyncGroup yet.
    pub(crate) pending_sync_members: HashSet<String>,
    pub(crate) new_member_added: bool,
    pub(crate) join_timer: Option<JoinTimer>,
    /// The generation a running sync deadline is for.
    pub(crate) sync_timer_generation: Option<i32>,
    /// Topics the members subscribe to (consumer protocol only; `None` when unknown).
    pub(crate) subscribed_topics: Option<BTreeSet<String>>,
    pub(crate) offsets: BTreeMap<TopicPartition, OffsetAndMetadata>,
    /// Commits appended but not yet acknowledged, by partition (count of writes in flight).
    pub(crate) pending_commits: HashMap<TopicPartition, u32>,
}

impl Group {
    pub(crate) fn new(group_id: String, now: i64, incarnation: u64) -> Self {
        Self {
            group_id,
            incarnation,
            state: GroupState::Empty,
            state_timestamp: Some(now),
            protocol_type: None,
            protocol_name: None,
            generation_id: 0,
            leader_id: None,
            members: IndexMap::new(),
            static_members: HashMap::new(),
            pending_members: IndexSet::new(),
            pending_sync_members: HashSet::new(),
            new_member_added: false,
            join_timer: None,
            sync_timer_generation: None,
            subscribed_topics: None,
            offsets: BTreeMap::new(),
            pending_commits: HashMap::new(),
        }
    }

    pub(crate) fn is(&self, state: GroupState) -> bool {
        self.state == state
    }

    pub(crate) fn transition_to(&mut self, state: GroupState, now: i64) {
        debug_assert!(
            state.valid_previous().contains(&self.state),
            "group {}: {:?} -> {:?}",
            self.group_id,
            self.state,
            state
        );
        self.state = state;
        self.state_timestamp = Some(now);
    }

    /// Kafka's `canRebalance`.
    pub(crate) fn can_rebalance(&self) -> bool {
        GroupState::PreparingRebalance
            .valid_previous()
            .contains(&self.state)
    }

    pub(crate) fn is_leader(&self, member_id: &str) -> bool {
        self.leader_id.as_deref() == Some(member_id)
    }

    pub(crate) fn num_awaiting_join(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.awaiting_join.is_some())
            .count()
    }

    pub(crate) fn has_all_members_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.awaiting_join.is_some())
    }

    /// The longest rebalance timeout among the members: how long a rebalance may wait.
    pub(crate) fn rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    pub(crate) fn current_static_member_id(&self, instance_id: &str) -> Option<&str> {
        self.static_members.get(instance_id).map(String::as_str)
    }

    /// How many members support each protocol (each member counted once per name).
    fn protocol_support(&self) -> HashMap<&str, usize> {
        let mut support: HashMap<&str, usize> = HashMap::new();
        for member in self.members.values() {
            let names: HashSet<&str> = member.protocols.iter().map(|(n, _)| n.as_str()).collect();
            for name in names {
                *support.entry(name).or_default() += 1;
            }
        }
        support
    }

    /// Kafka's `supportsProtocols`: a joining member must name a protocol type and protocols
    /// (Empty group), or share the group's type and one protocol every member supports.
    pub(crate) fn supports_protocols(
        &self,
        protocol_type: &str,
        protocols: &[(String, Bytes)],
    ) -> bool {
        if self.is(GroupState::Empty) {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        let support = self.protocol_support();
        let n = self.members.len();
        protocols
            .iter()
            .any(|(name, _)| support.get(name.as_str()).copied().unwrap_or(0) == n)
    }

    /// Kafka's `selectProtocol`: among the protocols all members support, each member votes
    /// for its most preferred; the most votes win (ties go to the protocol voted for first,
    /// in member order, so the choice is deterministic).
    pub(crate) fn select_protocol(&self) -> Option<String> {
        let support = self.protocol_support();
        let n = self.members.len();
        let candidates: HashSet<&str> = support
            .iter()
            .filter(|(_, count)| **count == n)
            .map(|(name, _)| *name)
            .collect();
        let mut votes: IndexMap<&str, usize> = IndexMap::new();
        for member in self.members.values() {
            if let Some(choice) = member.vote(&candidates) {
                *votes.entry(choice).or_default() += 1;
            }
        }
        let mut best: Option<(&str, usize)> = None;
        for (name, count) in votes {
            if best.is_none_or(|(_, c)| count > c) {
                best = Some((name, count));
            }
        }
        best.map(|(name, _)| name.to_owned())
    }

    /// Adds a member (Kafka's `GroupMetadata.add`).
    pub(crate) fn add_member(&mut self, member: Member) {
        if let Some(instance) = &member.group_instance_id {
            self.static_members
                .insert(instance.clone(), member.member_id.clone());
        }
        if self.members.is_empty() {
            self.protocol_type = Some(member.protocol_type.clone());
        }
        if self.leader_id.is_none() {
            self.leader_id = Some(member.member_id.clone());
        }
        self.pending_members.shift_remove(&member.member_id);
        self.members.insert(member.member_id.clone(), member);
    }

    /// Removes a member and hands it back; its parked requests are the caller's to answer.
    pub(crate) fn remove_member(&mut self, member_id: &str) -> Option<Member> {
        let removed = self.members.shift_remove(member_id);
        if let Some(member) = &removed
            && let Some(instance) = &member.group_instance_id
            && self.static_members.get(instance).map(String::as_str) == Some(member_id)
        {
            self.static_members.remove(instance);
        }
        if self.is_leader(member_id) {
            self.leader_id = self.members.keys().next().cloned();
        }
        self.pending_sync_members.remove(member_id);
        removed
    }

    /// Kafka's `maybeElectNewJoinedLeader`: keep the leader if it rejoined, else promote any
    /// member that did; false when no member rejoined (or there is no leader).
    pub(crate) fn maybe_elect_new_joined_leader(&mut self) -> bool {
        let Some(leader) = self.leader_id.clone() else {
            return false;
        };
        if self
            .members
            .get(&leader)
            .is_some_and(|m| m.awaiting_join.is_some())
        {
            return true;
        }
        match self
            .members
            .values()
            .find(|m| m.awaiting_join.is_some())
            .map(|m| m.member_id.clone())
        {
            Some(new_leader) => {
                self.leader_id = Some(new_leader);
                true
            }
            None => false,
        }
    }

    /// Kafka's `computeSubscribedTopics`: the union of the members' subscribed topics, when the
    /// group speaks the consumer protocol and every subscription parses; `None` otherwise.
    pub(crate) fn compute_subscribed_topics(&self) -> Option<BTreeSet<String>> {
        if self.protocol_type.as_deref() != Some(CONSUMER_PROTOCOL_TYPE) {
            return None;
        }
        if self.members.is_empty() {
            return Some(BTreeSet::new());
        }
        let protocol = self.protocol_name.as_deref()?;
        let mut topics = BTreeSet::new();
        for member in self.members.values() {
            let metadata = member.metadata(protocol);
            topics.extend(subscription_topics(&metadata).ok()?);
        }
        Some(topics)
    }

    /// True when the group may be consuming `topic` (unknown subscriptions count as yes).
    pub(crate) fn is_subscribed_to(&self, topic: &str) -> bool {
        match &self.subscribed_topics {
            Some(topics) => topics.contains(topic),
            None => true,
        }
    }

    pub(crate) fn has_offsets(&self) -> bool {
        !self.offsets.is_empty() || !self.pending_commits.is_empty()
    }
}
