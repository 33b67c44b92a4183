//! A classic consumer-group member: JoinGroup (with the KIP-394 MEMBER_ID_REQUIRED retry),
//! SyncGroup where the leader assigns with the range assignor, Heartbeat, OffsetCommit of the
//! member's generation, and LeaveGroup.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_protocol::kafka_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::GroupId;
use sluice_protocol::kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use sluice_protocol::kafka_protocol::messages::join_group_request::{
    JoinGroupRequest, JoinGroupRequestProtocol,
};
use sluice_protocol::kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use sluice_protocol::kafka_protocol::messages::leave_group_request::{
    LeaveGroupRequest, MemberIdentity,
};
use sluice_protocol::kafka_protocol::messages::sync_group_request::{
    SyncGroupRequest, SyncGroupRequestAssignment,
};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use crate::client::{Client, is_coordinator_moving};
use crate::error::{ClientError, Result};
use crate::group_protocol::{
    Assignment, CONSUMER, CommitError, Committer, RANGE, TopicPartition, commit_offsets,
    decode_assignment, decode_subscription, encode_assignment, encode_subscription, range_assign,
};

/// Session timeout asked for: short, so a killed sluicectl frees its partitions soon, and above
/// Kafka's default `group.min.session.timeout.ms` (6 s).
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat cadence: a third of the session, as Kafka's consumer does.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// Join/sync rounds before giving up on a group that keeps rebalancing.
const JOIN_ATTEMPTS: usize = 20;

fn code(e: ResponseError) -> i16 {
    e.code()
}

/// One membership of one group.
pub(crate) struct GroupMember {
    group: String,
    topics: Vec<String>,
    /// The coordinator's broker id.
    pub(crate) coordinator: i32,
    /// Our member id ("" until the coordinator gives one).
    pub(crate) member_id: String,
    /// The generation of the current assignment.
    pub(crate) generation: i32,
    rebalance_timeout: Duration,
    last_heartbeat: Instant,
}

impl GroupMember {
    /// Finds the coordinator of `group`; call [`GroupMember::join`] next.
    pub(crate) fn new(
        client: &mut Client,
        group: &str,
        topics: Vec<String>,
    ) -> Result<GroupMember> {
        Ok(GroupMember {
            group: group.to_string(),
            topics,
            coordinator: client.coordinator(group)?,
            member_id: String::new(),
            generation: -1,
            // The broker holds JoinGroup until every member rejoined, at most this long; it is
            // --timeout so every wait stays bounded by it.
            rebalance_timeout: client.timeout(),
            last_heartbeat: Instant::now(),
        })
    }

    /// The group's id.
    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    fn group_id(&self) -> GroupId {
        GroupId(StrBytes::from_string(self.group.clone()))
    }

    fn rediscover(&mut self, client: &mut Client) -> Result<()> {
        client.drop_connection(self.coordinator);
        self.coordinator = client.coordinator(&self.group)?;
        Ok(())
    }

    /// Joins (or rejoins) the group and returns this member's assignment.
    pub(crate) fn join(&mut self, client: &mut Client) -> Result<Assignment> {
        let subscription = encode_subscription(&self.topics)?;
        let mut last = 0;
        for _ in 0..JOIN_ATTEMPTS {
            let session_ms = i32::try_from(SESSION_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
            let rebalance_ms =
                i32::try_from(self.rebalance_timeout.as_millis()).unwrap_or(i32::MAX);
            let (r, _) = client.broker(self.coordinator)?.call(
                |_| {
                    let mut p = JoinGroupRequestProtocol::default();
                    p.name = StrBytes::from_static_str(RANGE);
                    p.metadata = subscription.clone();
                    let mut req = JoinGroupRequest::default();
                    req.group_id = self.group_id();
                    req.session_timeout_ms = session_ms;
                    req.rebalance_timeout_ms = rebalance_ms;
                    req.member_id = StrBytes::from_string(self.member_id.clone());
                    req.protocol_type = StrBytes::from_static_str(CONSUMER);
                    req.protocols = vec![p];
                    req
                },
                self.rebalance_timeout,
            )?;
            last = r.error_code;
            match r.error_code {
                0 => {}
                // KIP-394: the first join only earns a member id; join again with it.
                c if c == code(ResponseError::MemberIdRequired) => {
                    self.member_id = r.member_id.to_string();
                    continue;
                }
                c if c == code(ResponseError::UnknownMemberId) => {
                    self.member_id.clear();
                    continue;
                }
                c if c == code(ResponseError::RebalanceInProgress) => continue,
                c if is_coordinator_moving(c) => {
                    self.rediscover(client)?;
                    continue;
                }
                c => {
                    return Err(ClientError::kafka(c, None, || {
                        format!("cannot join group {}", self.group)
                    }));
                }
            }
            self.member_id = r.member_id.to_string();
            self.generation = r.generation_id;
            let protocol = r
                .protocol_name
                .as_ref()
                .map_or(RANGE.to_string(), |p| p.to_string());
            let assignments = if r.leader == r.member_id {
                self.assign(client, &r.members)?
            } else {
                BTreeMap::new()
            };
            let (s, _) = client.broker(self.coordinator)?.call(
                |v| {
                    let mut req = SyncGroupRequest::default();
                    req.group_id = self.group_id();
                    req.generation_id = self.generation;
                    req.member_id = StrBytes::from_string(self.member_id.clone());
                    if v >= 5 {
                        req.protocol_type = Some(StrBytes::from_static_str(CONSUMER));
                        req.protocol_name = Some(StrBytes::from_string(protocol.clone()));
                    }
                    req.assignments = assignments
                        .iter()
                        .map(|(m, a)| {
                            let mut x = SyncGroupRequestAssignment::default();
                            x.member_id = StrBytes::from_string(m.clone());
                            x.assignment = a.clone();
                            x
                        })
                        .collect();
                    req
                },
                self.rebalance_timeout,
            )?;
            last = s.error_code;
            match s.error_code {
                0 => {
                    self.last_heartbeat = Instant::now();
                    let mut mine = decode_assignment(s.assignment)?;
                    mine.retain(|t, _| self.topics.contains(t));
                    return Ok(mine);
                }
                c if c == code(ResponseError::RebalanceInProgress)
                    || c == code(ResponseError::IllegalGeneration) => {}
                c if c == code(ResponseError::UnknownMemberId) => self.member_id.clear(),
                c if is_coordinator_moving(c) => self.rediscover(client)?,
                c => {
                    return Err(ClientError::kafka(c, None, || {
                        format!("cannot get an assignment in group {}", self.group)
                    }));
                }
            }
        }
        Err(ClientError::kafka(last, None, || {
            format!("group {} kept rebalancing; gave up joining", self.group)
        }))
    }

    /// The leader's job: decode every member's subscription and assign with the range assignor.
    fn assign(
        &self,
        client: &mut Client,
        members: &[JoinGroupResponseMember],
    ) -> Result<BTreeMap<String, bytes::Bytes>> {
        let mut subscriptions = BTreeMap::new();
        for m in members {
            subscriptions.insert(
                m.member_id.to_string(),
                decode_subscription(m.metadata.clone())?,
            );
        }
        let mut topics: Vec<&str> = subscriptions
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        topics.sort_unstable();
        topics.dedup();
        // Topics that do not exist get no partitions, as in Kafka's assignors.
        let meta = client.metadata(Some(&topics))?;
        let counts: BTreeMap<String, i32> = meta
            .topics
            .iter()
            .map(|t| (t.name.clone(), t.partitions.len() as i32))
            .collect();
        range_assign(&subscriptions, &counts)
            .into_iter()
            .map(|(m, a)| Ok((m, encode_assignment(&a)?)))
            .collect()
    }

    /// Heartbeats when one is due. `Ok(true)` means the group is rebalancing: rejoin.
    pub(crate) fn heartbeat_if_due(&mut self, client: &mut Client) -> Result<bool> {
        if self.last_heartbeat.elapsed() < HEARTBEAT_INTERVAL {
            return Ok(false);
        }
        let (r, _) = client.broker(self.coordinator)?.call(
            |_| {
                let mut req = HeartbeatRequest::default();
                req.group_id = self.group_id();
                req.generation_id = self.generation;
                req.member_id = StrBytes::from_string(self.member_id.clone());
                req
            },
            Duration::ZERO,
        )?;
        self.last_heartbeat = Instant::now();
        match r.error_code {
            0 => Ok(false),
            c if c == code(ResponseError::RebalanceInProgress)
                || c == code(ResponseError::IllegalGeneration) =>
            {
                Ok(true)
            }
            c if c == code(ResponseError::UnknownMemberId) => {
                self.member_id.clear();
                Ok(true)
            }
            c if is_coordinator_moving(c) => {
                self.rediscover(client)?;
                Ok(true)
            }
            c => Err(ClientError::kafka(c, None, || {
                format!("heartbeat in group {} failed", self.group)
            })),
        }
    }

    /// Commits `offsets` as this member of this generation.
    pub(crate) fn commit(
        &self,
        client: &mut Client,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<(), CommitError> {
        let who = Committer {
            generation: self.generation,
            member_id: &self.member_id,
        };
        commit_offsets(client, self.coordinator, &self.group, &who, offsets)
    }

    /// Leaves the group so its partitions move at once instead of after the session timeout.
    pub(crate) fn leave(&mut self, client: &mut Client) -> Result<()> {
        if self.member_id.is_empty() {
            return Ok(());
        }
        let (r, v) = client.broker(self.coordinator)?.call(
            |v| {
                let mut req = LeaveGroupRequest::default();
                req.group_id = self.group_id();
                if v >= 3 {
                    let mut m = MemberIdentity::default();
                    m.member_id = StrBytes::from_string(self.member_id.clone());
                    if v >= 5 {
                        m.reason = Some(StrBytes::from_static_str("sluicectl consume finished"));
                    }
                    req.members = vec![m];
                } else {
                    req.member_id = StrBytes::from_string(self.member_id.clone());
                }
                req
            },
            Duration::ZERO,
        )?;
        let member_code = if v >= 3 {
            r.members.first().map_or(0, |m| m.error_code)
        } else {
            0
        };
        self.member_id.clear();
        // Already gone (session expired, group deleted) is what leaving wants anyway.
        for c in [r.error_code, member_code] {
            if c != 0 && c != code(ResponseError::UnknownMemberId) {
                return Err(ClientError::kafka(c, None, || {
                    format!("cannot leave group {}", self.group)
                }));
            }
        }
        Ok(())
    }
}
