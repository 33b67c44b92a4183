//! A fake runtime for tests: feeds the coordinator requests and a fake clock, keeps a fake
//! `__consumer_offsets` log, and checks that every token is answered exactly once and that
//! every answer encodes at its version.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_subscription::ConsumerProtocolSubscription;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, ResponseKind, SyncGroupRequest, SyncGroupResponse,
    TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};

use crate::api::{AppendId, Effect, OffsetsRecord, ReplyToken, Request, Response};
use crate::config::GroupConfig;
use crate::coordinator::GroupCoordinator;

pub(crate) const PARTITIONS: i32 = 10;

/// (topic, partitions) of an OffsetFetch.
pub(crate) type FetchTopics<'a> = &'a [(&'a str, &'a [i32])];

pub(crate) fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

/// Consumer-protocol member metadata subscribing to `topics`.
pub(crate) fn subscription(topics: &[&str]) -> Bytes {
    let mut sub = ConsumerProtocolSubscription::default();
    sub.topics = topics.iter().map(|t| s(t)).collect();
    let mut buf = BytesMut::new();
    buf.put_i16(1);
    sub.encode(&mut buf, 1).expect("encodes");
    buf.freeze()
}

pub(crate) struct Harness {
    pub(crate) c: GroupCoordinator,
    pub(crate) now: i64,
    next_token: u64,
    pub(crate) outstanding: BTreeSet<u64>,
    pub(crate) replies: BTreeMap<u64, Response>,
    /// Appends emitted but not yet acknowledged (when `auto_ack` is off).
    pub(crate) unacked: Vec<(AppendId, i32, Vec<OffsetsRecord>)>,
    /// Acknowledged records, per partition, in order.
    pub(crate) log: BTreeMap<i32, Vec<OffsetsRecord>>,
    pub(crate) auto_ack: bool,
}

impl Harness {
    /// A coordinator owning every partition, with a 0 ms initial rebalance delay unless the
    /// config says otherwise.
    pub(crate) fn new(config: GroupConfig) -> Self {
        let mut h = Self {
            c: GroupCoordinator::new(config, PARTITIONS, 42),
            now: 1_000_000,
            next_token: 0,
            outstanding: BTreeSet::new(),
            replies: BTreeMap::new(),
            unacked: Vec::new(),
            log: BTreeMap::new(),
            auto_ack: true,
        };
        for p in 0..PARTITIONS {
            let (effects, skipped) = h.c.load_partition(p, std::iter::empty(), h.now);
            assert!(skipped.is_empty());
            h.process(effects);
        }
        h
    }

    /// A coordinator that owns no partition yet.
    pub(crate) fn unloaded(config: GroupConfig) -> Self {
        Self {
            c: GroupCoordinator::new(config, PARTITIONS, 7),
            now: 1_000_000,
            next_token: 0,
            outstanding: BTreeSet::new(),
            replies: BTreeMap::new(),
            unacked: Vec::new(),
            log: BTreeMap::new(),
            auto_ack: true,
        }
    }

    /// Loads every partition from `log` (as a new coordinator leader would); returns the
    /// records that were skipped.
    pub(crate) fn load_log(&mut self, log: &BTreeMap<i32, Vec<OffsetsRecord>>) -> usize {
        let mut skipped = 0;
        for p in 0..PARTITIONS {
            let records = log.get(&p).cloned().unwrap_or_default();
            let iter = records.iter().map(|(k, v)| (k.as_ref(), v.as_deref()));
            let (effects, bad) = self.c.load_partition(p, iter, self.now);
            skipped += bad.len();
            self.log.insert(p, records.clone());
            self.process(effects);
        }
        skipped
    }

    pub(crate) fn quick() -> Self {
        Self::new(GroupConfig {
            group_initial_rebalance_delay_ms: 0,
            ..GroupConfig::default()
        })
    }

    pub(crate) fn send(&mut self, version: i16, request: Request) -> u64 {
        self.next_token += 1;
        let token = self.next_token;
        self.outstanding.insert(token);
        let effects = self.c.handle(
            ReplyToken(token),
            version,
            request,
            "client",
            "/127.0.0.1",
            self.now,
        );
        self.process(effects);
        token
    }

    pub(crate) fn process(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Reply {
                    token,
                    api_version,
                    response,
                } => {
                    assert!(
                        self.outstanding.remove(&token.0),
                        "token {} answered twice or never issued",
                        token.0
                    );
                    let mut buf = BytesMut::new();
                    ResponseKind::from(response.clone())
                        .encode(&mut buf, api_version)
                        .unwrap_or_else(|e| {
                            panic!("response does not encode at v{api_version}: {e} {response:?}")
                        });
                    self.replies.insert(token.0, response);
                }
                Effect::Append {
                    id,
                    partition,
                    records,
                } => {
                    assert_eq!(
                        partition,
                        self.partition_of(&records),
                        "records of one group go to its partition"
                    );
                    if self.auto_ack {
                        self.log.entry(partition).or_default().extend(records);
                        let effects = self.c.append_done(id, Ok(()), self.now);
                        self.process(effects);
                    } else {
                        self.unacked.push((id, partition, records));
                    }
                }
            }
        }
    }

    fn partition_of(&self, records: &[OffsetsRecord]) -> i32 {
        let key = crate::records::RecordKey::decode(&records[0].0).expect("key decodes");
        self.c.partition_for(key.group())
    }

    /// Completes the oldest unacknowledged append.
    pub(crate) fn ack_next(&mut self, result: Result<(), i16>) {
        let (id, partition, records) = self.unacked.remove(0);
        if result.is_ok() {
            self.log.entry(partition).or_default().extend(records);
        }
        let effects = self.c.append_done(id, result, self.now);
        self.process(effects);
    }

    pub(crate) fn ack_all(&mut self) {
        while !self.unacked.is_empty() {
            self.ack_next(Ok(()));
        }
    }

    pub(crate) fn advance(&mut self, ms: i64) {
        self.now += ms;
        let effects = self.c.tick(self.now);
        self.process(effects);
    }

    /// Runs the clock to `deadline`, ticking at each armed deadline on the way.
    pub(crate) fn run_until(&mut self, until: i64) {
        while let Some(d) = self.c.next_deadline() {
            if d > until {
                break;
            }
            self.now = self.now.max(d);
            let effects = self.c.tick(self.now);
            self.process(effects);
        }
        self.now = self.now.max(until);
        let effects = self.c.tick(self.now);
        self.process(effects);
    }

    pub(crate) fn answered(&self, token: u64) -> bool {
        self.replies.contains_key(&token)
    }

    pub(crate) fn join_resp(&self, token: u64) -> &JoinGroupResponse {
        match self.replies.get(&token) {
            Some(Response::JoinGroup(r)) => r,
            other => panic!("no JoinGroup answer for {token}: {other:?}"),
        }
    }

    pub(crate) fn sync_resp(&self, token: u64) -> &SyncGroupResponse {
        match self.replies.get(&token) {
            Some(Response::SyncGroup(r)) => r,
            other => panic!("no SyncGroup answer for {token}: {other:?}"),
        }
    }

    pub(crate) fn hb_resp(&self, token: u64) -> &HeartbeatResponse {
        match self.replies.get(&token) {
            Some(Response::Heartbeat(r)) => r,
            other => panic!("no Heartbeat answer for {token}: {other:?}"),
        }
    }

    pub(crate) fn leave_resp(&self, token: u64) -> &LeaveGroupResponse {
        match self.replies.get(&token) {
            Some(Response::LeaveGroup(r)) => r,
            other => panic!("no LeaveGroup answer for {token}: {other:?}"),
        }
    }

    pub(crate) fn commit_resp(&self, token: u64) -> &OffsetCommitResponse {
        match self.replies.get(&token) {
            Some(Response::OffsetCommit(r)) => r,
            other => panic!("no OffsetCommit answer for {token}: {other:?}"),
        }
    }

    pub(crate) fn fetch_resp(&self, token: u64) -> &OffsetFetchResponse {
        match self.replies.get(&token) {
            Some(Response::OffsetFetch(r)) => r,
            other => panic!("no OffsetFetch answer for {token}: {other:?}"),
        }
    }

    pub(crate) fn response(&self, token: u64) -> &Response {
        self.replies
            .get(&token)
            .unwrap_or_else(|| panic!("no answer for {token}"))
    }

    // ---- request shorthands ----

    /// A consumer JoinGroup (session 10 s, rebalance 30 s) with the given protocols.
    pub(crate) fn join(
        &mut self,
        version: i16,
        group: &str,
        member: &str,
        instance: Option<&str>,
        protocols: &[(&str, Bytes)],
    ) -> u64 {
        let req = join_request(group, member, instance, protocols);
        self.send(version, Request::JoinGroup(req))
    }

    pub(crate) fn sync(
        &mut self,
        version: i16,
        group: &str,
        member: &str,
        generation: i32,
        assignments: &[(&str, &[u8])],
    ) -> u64 {
        let mut req = SyncGroupRequest::default();
        req.group_id = GroupId(s(group));
        req.member_id = s(member);
        req.generation_id = generation;
        if version >= 5 {
            req.protocol_type = Some(s("consumer"));
            req.protocol_name = Some(s("range"));
        }
        req.assignments = assignments
            .iter()
            .map(|(m, a)| {
                let mut x = SyncGroupRequestAssignment::default();
                x.member_id = s(m);
                x.assignment = Bytes::copy_from_slice(a);
                x
            })
            .collect();
        self.send(version, Request::SyncGroup(req))
    }

    pub(crate) fn heartbeat(
        &mut self,
        group: &str,
        member: &str,
        generation: i32,
        instance: Option<&str>,
    ) -> i16 {
        let mut req = HeartbeatRequest::default();
        req.group_id = GroupId(s(group));
        req.member_id = s(member);
        req.generation_id = generation;
        req.group_instance_id = instance.map(s);
        let t = self.send(4, Request::Heartbeat(req));
        self.hb_resp(t).error_code
    }

    pub(crate) fn leave_v3(&mut self, group: &str, members: &[(&str, Option<&str>)]) -> u64 {
        let mut req = LeaveGroupRequest::default();
        req.group_id = GroupId(s(group));
        req.members = members
            .iter()
            .map(|(m, i)| {
                let mut id = MemberIdentity::default();
                id.member_id = s(m);
                id.group_instance_id = i.map(s);
                id
            })
            .collect();
        self.send(5, Request::LeaveGroup(req))
    }

    /// OffsetCommit v8 of (topic, partition, offset, metadata).
    pub(crate) fn commit(
        &mut self,
        group: &str,
        member: &str,
        generation: i32,
        offsets: &[(&str, i32, i64, Option<&str>)],
    ) -> u64 {
        self.send(
            8,
            Request::OffsetCommit(commit_request(group, member, generation, offsets)),
        )
    }

    /// OffsetFetch v7 for one group (`None` = all topics); returns (topic, partition, offset,
    /// metadata, error) rows.
    pub(crate) fn fetch(
        &mut self,
        group: &str,
        topics: Option<&[(&str, &[i32])]>,
    ) -> Vec<(String, i32, i64, String, i16)> {
        let mut req = OffsetFetchRequest::default();
        req.group_id = GroupId(s(group));
        req.topics = topics.map(|ts| {
            ts.iter()
                .map(|(t, ps)| {
                    let mut x = OffsetFetchRequestTopic::default();
                    x.name = TopicName(s(t));
                    x.partition_indexes = ps.to_vec();
                    x
                })
                .collect()
        });
        let t = self.send(7, Request::OffsetFetch(req));
        let r = self.fetch_resp(t);
        assert_eq!(r.error_code, 0, "fetch failed: {r:?}");
        r.topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(move |p| {
                    (
                        t.name.0.to_string(),
                        p.partition_index,
                        p.committed_offset,
                        p.metadata
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                        p.error_code,
                    )
                })
            })
            .collect()
    }

    /// OffsetFetch v8 (batched).
    pub(crate) fn fetch_groups(
        &mut self,
        groups: &[(&str, Option<FetchTopics<'_>>)],
    ) -> OffsetFetchResponse {
        let mut req = OffsetFetchRequest::default();
        req.groups = groups
            .iter()
            .map(|(g, topics)| {
                let mut x = OffsetFetchRequestGroup::default();
                x.group_id = GroupId(s(g));
                x.topics = topics.map(|ts| {
                    ts.iter()
                        .map(|(t, ps)| {
                            let mut y = OffsetFetchRequestTopics::default();
                            y.name = TopicName(s(t));
                            y.partition_indexes = ps.to_vec();
                            y
                        })
                        .collect()
                });
                x
            })
            .collect();
        let t = self.send(8, Request::OffsetFetch(req));
        self.fetch_resp(t).clone()
    }

    /// Runs a full join/sync for a fresh dynamic member (v5 join, v3 sync) of a group that
    /// has no other member; returns (member id, generation).
    pub(crate) fn solo_member(&mut self, group: &str, topics: &[&str]) -> (String, i32) {
        let protocols = [("range", subscription(topics))];
        let t = self.join(5, group, "", None, &protocols);
        let member = self.join_resp(t).member_id.to_string();
        let t = self.join(5, group, &member, None, &protocols);
        if !self.answered(t) {
            let d = self.c.next_deadline().expect("join deadline");
            self.run_until(d);
        }
        let r = self.join_resp(t);
        assert_eq!(r.error_code, 0);
        let generation = r.generation_id;
        let t = self.sync(3, group, &member, generation, &[(&member, b"assigned")]);
        assert_eq!(self.sync_resp(t).error_code, 0);
        (member, generation)
    }
}

pub(crate) fn join_request(
    group: &str,
    member: &str,
    instance: Option<&str>,
    protocols: &[(&str, Bytes)],
) -> JoinGroupRequest {
    let mut req = JoinGroupRequest::default();
    req.group_id = GroupId(s(group));
    req.session_timeout_ms = 10_000;
    req.rebalance_timeout_ms = 30_000;
    req.member_id = s(member);
    req.group_instance_id = instance.map(s);
    req.protocol_type = s("consumer");
    req.protocols = protocols
        .iter()
        .map(|(name, metadata)| {
            let mut p = JoinGroupRequestProtocol::default();
            p.name = s(name);
            p.metadata = metadata.clone();
            p
        })
        .collect();
    req
}

pub(crate) fn commit_request(
    group: &str,
    member: &str,
    generation: i32,
    offsets: &[(&str, i32, i64, Option<&str>)],
) -> OffsetCommitRequest {
    let mut req = OffsetCommitRequest::default();
    req.group_id = GroupId(s(group));
    req.member_id = s(member);
    req.generation_id_or_member_epoch = generation;
    let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
    for (topic, partition, offset, metadata) in offsets {
        let mut p = OffsetCommitRequestPartition::default();
        p.partition_index = *partition;
        p.committed_offset = *offset;
        p.committed_leader_epoch = 7;
        p.committed_metadata = metadata.map(s);
        match topics.iter_mut().find(|t| t.name.0.as_str() == *topic) {
            Some(t) => t.partitions.push(p),
            None => {
                let mut t = OffsetCommitRequestTopic::default();
                t.name = TopicName(s(topic));
                t.partitions.push(p);
                topics.push(t);
            }
        }
    }
    req.topics = topics;
    req
}

/// Every partition error of a commit response, flattened.
pub(crate) fn commit_errors(r: &OffsetCommitResponse) -> Vec<i16> {
    r.topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect()
}
