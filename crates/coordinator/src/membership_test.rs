//! Membership tests: joins, syncs, heartbeats, leaves and rebalances, driven with a fake clock.

use bytes::Bytes;
use kafka_protocol::messages::JoinGroupRequest;

use crate::api::Request;
use crate::config::GroupConfig;
use crate::error::codes::*;
use crate::group::GroupState;
use crate::harness::*;
use crate::records::{GroupMetadataValue, RecordKey};

fn range(topics: &[&str]) -> [(&'static str, Bytes); 1] {
    [("range", subscription(topics))]
}

/// Joins a dynamic member through the MEMBER_ID_REQUIRED round trip; returns its id and the
/// token of the parked second JoinGroup.
fn join_dynamic(h: &mut Harness, group: &str) -> (String, u64) {
    let t = h.join(5, group, "", None, &range(&["t"]));
    let r = h.join_resp(t);
    assert_eq!(r.error_code, MEMBER_ID_REQUIRED);
    let id = r.member_id.to_string();
    let t = h.join(5, group, &id, None, &range(&["t"]));
    (id, t)
}

/// Brings up a Stable group of `n` dynamic members; returns their ids (leader first) and the
/// generation.
fn stable_group(h: &mut Harness, group: &str, n: usize) -> (Vec<String>, i32) {
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..n {
        let (id, t) = join_dynamic(h, group);
        ids.push(id);
        tokens.push(t);
    }
    // Each arrival during the (0 ms) initial delay extends it once more.
    while !h.answered(tokens[0]) {
        h.advance(1);
    }
    let generation = h.join_resp(tokens[0]).generation_id;
    let leader = h.join_resp(tokens[0]).leader.to_string();
    let pos = ids
        .iter()
        .position(|i| *i == leader)
        .expect("leader is a member");
    ids.swap(0, pos);
    let assignments: Vec<(String, Vec<u8>)> = ids
        .iter()
        .map(|i| (i.clone(), format!("a-{i}").into_bytes()))
        .collect();
    let refs: Vec<(&str, &[u8])> = assignments
        .iter()
        .map(|(m, a)| (m.as_str(), a.as_slice()))
        .collect();
    let mut sync_tokens = Vec::new();
    for id in ids.iter().skip(1) {
        sync_tokens.push(h.sync(3, group, id, generation, &[]));
    }
    sync_tokens.push(h.sync(3, group, &ids[0], generation, &refs));
    for t in sync_tokens {
        assert_eq!(h.sync_resp(t).error_code, NONE);
    }
    assert_eq!(h.c.group_state(group), Some(GroupState::Stable));
    (ids, generation)
}

#[test]
fn join_sync_heartbeat_leave() {
    let mut h = Harness::quick();
    let (id, t) = join_dynamic(&mut h, "g");
    assert!(
        id.starts_with("client-"),
        "member id {id} is <client_id>-<uuid>"
    );
    assert_eq!(id.len(), "client-".len() + 36);
    assert!(!h.answered(t), "the join waits for the initial delay");
    h.advance(1);
    let r = h.join_resp(t).clone();
    assert_eq!(r.error_code, NONE);
    assert_eq!(r.generation_id, 1);
    assert_eq!(r.leader.as_str(), id);
    assert_eq!(r.protocol_name.as_ref().map(|p| p.as_str()), Some("range"));
    assert_eq!(
        r.members.len(),
        1,
        "the leader gets every member's metadata"
    );
    assert_eq!(r.members[0].metadata, subscription(&["t"]));
    assert!(!r.skip_assignment);
    assert_eq!(h.c.group_state("g"), Some(GroupState::CompletingRebalance));

    h.auto_ack = false;
    let s = h.sync(3, "g", &id, 1, &[(&id, b"mine")]);
    assert!(
        !h.answered(s),
        "the leader's SyncGroup waits for the group record"
    );
    assert_eq!(h.unacked.len(), 1);
    let record = &h.unacked[0].2[0];
    assert_eq!(
        RecordKey::decode(&record.0).unwrap(),
        RecordKey::GroupMetadata { group: "g".into() }
    );
    let value = GroupMetadataValue::decode(record.1.as_ref().unwrap()).unwrap();
    assert_eq!(value.generation, 1);
    assert_eq!(value.members[0].assignment.as_ref(), b"mine");
    h.ack_next(Ok(()));
    assert_eq!(h.sync_resp(s).error_code, NONE);
    assert_eq!(h.sync_resp(s).assignment.as_ref(), b"mine");
    assert_eq!(h.c.group_state("g"), Some(GroupState::Stable));

    assert_eq!(h.heartbeat("g", &id, 1, None), NONE);

    let l = h.leave_v3("g", &[(&id, None)]);
    assert_eq!(h.leave_resp(l).members[0].error_code, NONE);
    assert_eq!(h.c.group_state("g"), Some(GroupState::Empty));
    // The now-empty generation 2 is written too.
    h.ack_all();
    let last = h.log[&h.c.partition_for("g")].last().unwrap();
    let value = GroupMetadataValue::decode(last.1.as_ref().unwrap()).unwrap();
    assert_eq!(
        (
            value.generation,
            value.members.len(),
            value.protocol.clone()
        ),
        (2, 0, None)
    );
    assert!(h.outstanding.is_empty());
}

#[test]
fn member_id_required_only_from_v4_and_pending_members_count() {
    let mut h = Harness::quick();
    // v3: a dynamic member is admitted straight away.
    let t = h.join(3, "old", "", None, &range(&["t"]));
    h.advance(1);
    assert_eq!(h.join_resp(t).error_code, NONE);

    // A Stable group, then a newcomer gets its id but does not rejoin yet.
    let (ids, generation) = stable_group(&mut h, "g", 1);
    let t = h.join(5, "g", "", None, &range(&["t"]));
    assert_eq!(h.join_resp(t).error_code, MEMBER_ID_REQUIRED);
    let pending = h.join_resp(t).member_id.to_string();
    // The leader rejoins: the rebalance must wait for the pending member too.
    let lt = h.join(5, "g", &ids[0], None, &range(&["t"]));
    assert!(!h.answered(lt), "a pending member holds the rebalance open");
    // The pending member's session (10 s) runs out before the rebalance timeout (30 s).
    h.advance(10_000);
    assert_eq!(h.join_resp(lt).error_code, NONE);
    assert_eq!(h.join_resp(lt).generation_id, generation + 1);
    assert_eq!(h.join_resp(lt).members.len(), 1);
    // The expired pending id is unknown now.
    let t = h.join(5, "g", &pending, None, &range(&["t"]));
    assert_eq!(h.join_resp(t).error_code, UNKNOWN_MEMBER_ID);
}

#[test]
fn pending_member_rejoin_completes_the_rebalance() {
    let mut h = Harness::quick();
    let (ids, generation) = stable_group(&mut h, "g", 1);
    let t = h.join(5, "g", "", None, &range(&["t"]));
    let pending = h.join_resp(t).member_id.to_string();
    let lt = h.join(5, "g", &ids[0], None, &range(&["t"]));
    let nt = h.join(5, "g", &pending, None, &range(&["t"]));
    assert!(
        h.answered(lt) && h.answered(nt),
        "all members joined: no waiting for the timeout"
    );
    assert_eq!(h.join_resp(nt).generation_id, generation + 1);
    assert_eq!(h.join_resp(lt).members.len(), 2);
    assert!(
        h.join_resp(nt).members.is_empty(),
        "followers get no member list"
    );
}

#[test]
fn delayed_initial_rebalance_extends_for_new_members() {
    let mut h = Harness::new(GroupConfig::default()); // 3000 ms delay
    let start = h.now;
    let (_, a) = join_dynamic(&mut h, "g");
    h.advance(2_000);
    let (_, b) = join_dynamic(&mut h, "g");
    h.advance(1_000); // t = 3000: a member arrived during the delay, so wait another 3000
    assert!(!h.answered(a) && !h.answered(b));
    h.advance(2_999);
    assert!(!h.answered(a));
    h.advance(1); // t = 6000
    assert!(h.answered(a) && h.answered(b));
    assert_eq!(h.now - start, 6_000);
    assert_eq!(h.join_resp(a).generation_id, 1);
    assert_eq!(h.join_resp(b).generation_id, 1);
}

#[test]
fn initial_delay_never_outlasts_the_rebalance_timeout() {
    let mut h = Harness::new(GroupConfig::default());
    let start = h.now;
    let mut req = join_request("g", "", None, &range(&["t"]));
    req.rebalance_timeout_ms = 10_000;
    let t = h.send(3, Request::JoinGroup(req.clone()));
    // A new member every second keeps extending the delay...
    for _ in 0..20 {
        h.advance(1_000);
        if h.answered(t) {
            break;
        }
        h.send(3, Request::JoinGroup(req.clone()));
    }
    // ...but only up to the rebalance timeout.
    assert!(h.answered(t));
    assert_eq!(h.now - start, 10_000);
}

#[test]
fn member_that_does_not_rejoin_is_removed_at_the_rebalance_timeout() {
    let mut h = Harness::quick();
    let (ids, generation) = stable_group(&mut h, "g", 3);
    let start = h.now;
    let a = h.join(5, "g", &ids[0], None, &range(&["t"]));
    assert_eq!(h.c.group_state("g"), Some(GroupState::PreparingRebalance));
    assert_eq!(
        h.heartbeat("g", &ids[1], generation, None),
        REBALANCE_IN_PROGRESS
    );
    let b = h.join(5, "g", &ids[1], None, &range(&["t"]));
    // Member 2 keeps heartbeating but never rejoins.
    for _ in 0..5 {
        h.advance(5_000);
        assert_eq!(
            h.heartbeat("g", &ids[2], generation, None),
            REBALANCE_IN_PROGRESS
        );
    }
    assert!(!h.answered(a));
    h.run_until(start + 30_000);
    let ra = h.join_resp(a).clone();
    assert_eq!(ra.generation_id, generation + 1);
    let mut members: Vec<String> = ra.members.iter().map(|m| m.member_id.to_string()).collect();
    members.sort();
    let mut expected = vec![ids[0].clone(), ids[1].clone()];
    expected.sort();
    assert_eq!(members, expected, "the member that did not rejoin is gone");
    assert_eq!(h.join_resp(b).generation_id, generation + 1);
    assert_eq!(
        h.heartbeat("g", &ids[2], generation + 1, None),
        UNKNOWN_MEMBER_ID
    );
}

#[test]
fn session_expiry_removes_the_member_and_rebalances() {
    let mut h = Harness::quick();
    let (ids, generation) = stable_group(&mut h, "g", 2);
    // Member 0 heartbeats every 5 s, member 1 goes silent.
    h.advance(5_000);
    assert_eq!(h.heartbeat("g", &ids[0], generation, None), NONE);
    h.advance(4_999);
    assert_eq!(h.heartbeat("g", &ids[0], generation, None), NONE);
    assert_eq!(h.c.group_state("g"), Some(GroupState::Stable));
    h.advance(1);
    // Member 1's 10 s session ran out: rebalance; member 0 is told to rejoin.
    assert_eq!(h.c.group_state("g"), Some(GroupState::PreparingRebalance));
    assert_eq!(
        h.heartbeat("g", &ids[0], generation, None),
        REBALANCE_IN_PROGRESS
    );
    let t = h.join(5, "g", &ids[0], None, &range(&["t"]));
    let r = h.join_resp(t);
    assert_eq!(r.generation_id, generation + 1);
    assert_eq!(r.members.len(), 1);
    assert_eq!(
        h.heartbeat("g", &ids[1], generation + 1, None),
        UNKNOWN_MEMBER_ID
    );

    // Alone, member 0 lets its session lapse: the group empties.
    let t = h.sync(3, "g", &ids[0], generation + 1, &[]);
    assert_eq!(h.sync_resp(t).error_code, NONE);
    h.advance(10_000);
    assert_eq!(h.c.group_state("g"), Some(GroupState::Empty));
}

#[test]
fn error_cases() {
    let mut h = Harness::quick();
    // Joining with a member id a group never handed out.
    let t = h.join(5, "nope", "ghost", None, &range(&["t"]));
    assert_eq!(h.join_resp(t).error_code, UNKNOWN_MEMBER_ID);
    let t = h.join(5, "", "", None, &range(&["t"]));
    assert_eq!(h.join_resp(t).error_code, INVALID_GROUP_ID);
    let mut req = join_request("g", "", None, &range(&["t"]));
    req.session_timeout_ms = 5_999;
    let t = h.send(5, Request::JoinGroup(req.clone()));
    assert_eq!(h.join_resp(t).error_code, INVALID_SESSION_TIMEOUT);
    req.session_timeout_ms = 1_800_001;
    let t = h.send(5, Request::JoinGroup(req));
    assert_eq!(h.join_resp(t).error_code, INVALID_SESSION_TIMEOUT);

    let (ids, generation) = stable_group(&mut h, "g", 2);
    assert_eq!(
        h.heartbeat("g", &ids[0], generation + 1, None),
        ILLEGAL_GENERATION
    );
    assert_eq!(
        h.heartbeat("g", "ghost", generation, None),
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        h.heartbeat("other", &ids[0], generation, None),
        UNKNOWN_MEMBER_ID
    );
    let t = h.sync(3, "g", &ids[0], generation - 1, &[]);
    assert_eq!(h.sync_resp(t).error_code, ILLEGAL_GENERATION);
    let t = h.sync(3, "g", "ghost", generation, &[]);
    assert_eq!(h.sync_resp(t).error_code, UNKNOWN_MEMBER_ID);
    // A Stable group answers a follower's SyncGroup with its current assignment.
    let t = h.sync(3, "g", &ids[1], generation, &[]);
    assert_eq!(
        h.sync_resp(t).assignment.as_ref(),
        format!("a-{}", ids[1]).as_bytes()
    );

    // The leader rejoins: a rebalance starts and SyncGroup of the old generation is refused.
    let lt = h.join(5, "g", &ids[0], None, &range(&["t"]));
    let t = h.sync(3, "g", &ids[1], generation, &[]);
    assert_eq!(h.sync_resp(t).error_code, REBALANCE_IN_PROGRESS);
    let ft = h.join(5, "g", &ids[1], None, &range(&["t"]));
    assert!(h.answered(lt) && h.answered(ft));
    // v5 SyncGroup must name the protocol the group uses.
    let mut req = kafka_protocol::messages::SyncGroupRequest::default();
    req.group_id = kafka_protocol::messages::GroupId(s("g"));
    req.member_id = s(&ids[1]);
    req.generation_id = generation + 1;
    req.protocol_type = Some(s("consumer"));
    req.protocol_name = Some(s("roundrobin"));
    let t = h.send(5, Request::SyncGroup(req.clone()));
    assert_eq!(h.sync_resp(t).error_code, INCONSISTENT_GROUP_PROTOCOL);
    req.protocol_name = None;
    let t = h.send(5, Request::SyncGroup(req));
    assert_eq!(h.sync_resp(t).error_code, INCONSISTENT_GROUP_PROTOCOL);
    // While the group awaits the leader's assignment, commits are refused with REBALANCE_IN_PROGRESS.
    let t = h.commit("g", &ids[1], generation + 1, &[("t", 0, 1, None)]);
    assert_eq!(commit_errors(h.commit_resp(t)), vec![REBALANCE_IN_PROGRESS]);
}

#[test]
fn protocol_selection_by_vote() {
    let mut h = Harness::quick();
    let m = Bytes::from_static(b"m");
    let prefs: [&[&str]; 3] = [
        &["roundrobin", "range"],
        &["range", "roundrobin"],
        &["range", "roundrobin", "sticky"],
    ];
    let mut tokens = Vec::new();
    for p in prefs {
        let protocols: Vec<(&str, Bytes)> = p.iter().map(|n| (*n, m.clone())).collect();
        tokens.push(h.join(3, "g", "", None, &protocols));
    }
    h.advance(1);
    h.advance(1);
    for t in &tokens {
        assert_eq!(
            h.join_resp(*t).protocol_name.as_ref().unwrap().as_str(),
            "range"
        );
    }

    // Only protocols every member supports are candidates, however popular another is.
    let mut h = Harness::quick();
    let prefs: [&[&str]; 3] = [&["sticky", "x"], &["sticky", "x"], &["x"]];
    let mut tokens = Vec::new();
    for p in prefs {
        let protocols: Vec<(&str, Bytes)> = p.iter().map(|n| (*n, m.clone())).collect();
        tokens.push(h.join(3, "g", "", None, &protocols));
    }
    h.advance(1);
    h.advance(1);
    assert_eq!(
        h.join_resp(tokens[0])
            .protocol_name
            .as_ref()
            .unwrap()
            .as_str(),
        "x"
    );
}

#[test]
fn inconsistent_group_protocol() {
    let mut h = Harness::quick();
    let (ids, _) = stable_group(&mut h, "g", 1);
    // No protocol in common with the group.
    let t = h.join(3, "g", "", None, &[("roundrobin", Bytes::new())]);
    assert_eq!(h.join_resp(t).error_code, INCONSISTENT_GROUP_PROTOCOL);
    // Another protocol type.
    let mut req = join_request("g", "", None, &range(&["t"]));
    req.protocol_type = s("connect");
    let t = h.send(3, Request::JoinGroup(req));
    assert_eq!(h.join_resp(t).error_code, INCONSISTENT_GROUP_PROTOCOL);
    // An existing member switching to an unsupported protocol.
    let t = h.join(5, "g", &ids[0], None, &[("sticky", Bytes::new())]);
    // (alone, it is the only supporter of its old protocol list, so "sticky" is not shared)
    assert_eq!(h.join_resp(t).error_code, INCONSISTENT_GROUP_PROTOCOL);
    // An Empty group needs a protocol type and at least one protocol.
    let mut req = join_request("h", "", None, &[]);
    let t = h.send(3, Request::JoinGroup(req.clone()));
    assert_eq!(h.join_resp(t).error_code, INCONSISTENT_GROUP_PROTOCOL);
    req = join_request("h", "", None, &range(&["t"]));
    req.protocol_type = s("");
    let t = h.send(3, Request::JoinGroup(req));
    assert_eq!(h.join_resp(t).error_code, INCONSISTENT_GROUP_PROTOCOL);
}

/// A Stable group with static member "a" (the leader) and dynamic member "b".
fn static_group(h: &mut Harness) -> (String, String, i32) {
    let a = h.join(5, "g", "", Some("a"), &range(&["t"]));
    assert!(!h.answered(a), "a static member gets no MEMBER_ID_REQUIRED");
    let (b_id, b) = join_dynamic(h, "g");
    h.advance(1);
    h.advance(1);
    let ra = h.join_resp(a).clone();
    let a_id = ra.member_id.to_string();
    assert!(
        a_id.starts_with("a-"),
        "a static member id is <instance id>-<uuid>"
    );
    assert_eq!(ra.leader.as_str(), a_id);
    let generation = ra.generation_id;
    assert_eq!(h.join_resp(b).generation_id, generation);
    let sb = h.sync(3, "g", &b_id, generation, &[]);
    let sa = h.sync(3, "g", &a_id, generation, &[(&a_id, b"A"), (&b_id, b"B")]);
    assert_eq!(h.sync_resp(sa).error_code, NONE);
    assert_eq!(h.sync_resp(sb).assignment.as_ref(), b"B");
    (a_id, b_id, generation)
}

#[test]
fn static_member_restart_keeps_assignment_without_rebalance() {
    let mut h = Harness::quick();
    let (old_a, b_id, generation) = static_group(&mut h);
    // "a" restarts: it knows its instance id but not its member id.
    h.auto_ack = false;
    let t = h.join(5, "g", "", Some("a"), &range(&["t"]));
    assert!(!h.answered(t), "the new member id is persisted first");
    h.ack_next(Ok(()));
    let r = h.join_resp(t).clone();
    assert_eq!(r.error_code, NONE);
    let new_a = r.member_id.to_string();
    assert_ne!(new_a, old_a);
    assert_eq!(r.generation_id, generation, "no new generation");
    // Before v9 the old leader id comes back so the member does not run an assignment.
    assert_eq!(r.leader.as_str(), old_a);
    assert!(r.members.is_empty());
    assert_eq!(h.c.group_state("g"), Some(GroupState::Stable));
    h.auto_ack = true;
    let t = h.sync(3, "g", &new_a, generation, &[]);
    assert_eq!(
        h.sync_resp(t).assignment.as_ref(),
        b"A",
        "the old assignment carries over"
    );
    // The old member id of the instance is fenced.
    assert_eq!(
        h.heartbeat("g", &old_a, generation, Some("a")),
        FENCED_INSTANCE_ID
    );
    assert_eq!(h.heartbeat("g", &new_a, generation, Some("a")), NONE);
    assert_eq!(h.heartbeat("g", &b_id, generation, None), NONE);
    let t = h.join(5, "g", &old_a, Some("a"), &range(&["t"]));
    assert_eq!(h.join_resp(t).error_code, FENCED_INSTANCE_ID);

    // JoinGroup v9: the static leader is told it leads, and to skip the assignment.
    let t = h.join(9, "g", "", Some("a"), &range(&["t"]));
    let r = h.join_resp(t).clone();
    assert_eq!(r.generation_id, generation);
    assert_eq!(r.leader, r.member_id);
    assert!(r.skip_assignment);
    assert_eq!(r.members.len(), 2);
    assert_eq!(h.c.group_state("g"), Some(GroupState::Stable));
}

#[test]
fn static_member_restart_with_new_protocols_rebalances() {
    let mut h = Harness::quick();
    let a = h.join(5, "g", "", Some("a"), &range(&["t"]));
    h.advance(1);
    let a_id = h.join_resp(a).member_id.to_string();
    let t = h.sync(3, "g", &a_id, 1, &[(&a_id, b"A")]);
    assert_eq!(h.sync_resp(t).error_code, NONE);
    // "a" restarts preferring roundrobin: the vote changes, so the group must rebalance, and
    // since "a" is its only member the rebalance completes at once.
    let protocols = [
        ("roundrobin", subscription(&["t"])),
        ("range", subscription(&["t"])),
    ];
    let t = h.join(5, "g", "", Some("a"), &protocols);
    let r = h.join_resp(t).clone();
    assert_eq!(r.generation_id, 2);
    assert_eq!(r.protocol_name.as_ref().unwrap().as_str(), "roundrobin");
    assert_eq!(r.leader, r.member_id);
    assert_eq!(h.c.group_state("g"), Some(GroupState::CompletingRebalance));
    assert_eq!(h.heartbeat("g", &a_id, 2, Some("a")), FENCED_INSTANCE_ID);
}

#[test]
fn failed_static_member_write_gives_the_instance_back() {
    let mut h = Harness::quick();
    let (old_a, _, generation) = static_group(&mut h);
    h.auto_ack = false;
    let t = h.join(5, "g", "", Some("a"), &range(&["t"]));
    h.ack_next(Err(NOT_LEADER_OR_FOLLOWER));
    assert_eq!(h.join_resp(t).error_code, NOT_COORDINATOR);
    h.auto_ack = true;
    assert_eq!(h.heartbeat("g", &old_a, generation, Some("a")), NONE);
}

#[test]
fn leave_group_batch() {
    let mut h = Harness::quick();
    let (a_id, b_id, generation) = static_group(&mut h);
    let t = h.leave_v3("g", &[("", Some("a")), ("ghost", None), (&b_id, Some("b"))]);
    let r = h.leave_resp(t).clone();
    assert_eq!(r.error_code, NONE);
    let errors: Vec<i16> = r.members.iter().map(|m| m.error_code).collect();
    // "a" leaves by instance id alone; "ghost" is unknown; "b" names an instance it is not.
    assert_eq!(errors, vec![NONE, UNKNOWN_MEMBER_ID, UNKNOWN_MEMBER_ID]);
    assert_eq!(
        r.members[0].group_instance_id.as_ref().map(|s| s.as_str()),
        Some("a")
    );
    assert_eq!(h.heartbeat("g", &a_id, generation, None), UNKNOWN_MEMBER_ID);
    // b is still there, and told to rejoin.
    assert_eq!(
        h.heartbeat("g", &b_id, generation, None),
        REBALANCE_IN_PROGRESS
    );

    // Fencing: a static member id that no longer owns its instance.
    let mut h = Harness::quick();
    let (old_a, _, _) = static_group(&mut h);
    h.join(5, "g", "", Some("a"), &range(&["t"]));
    let t = h.leave_v3("g", &[(&old_a, Some("a"))]);
    assert_eq!(h.leave_resp(t).members[0].error_code, FENCED_INSTANCE_ID);

    // v0-v2: one member, its error at the top level.
    let mut req = kafka_protocol::messages::LeaveGroupRequest::default();
    req.group_id = kafka_protocol::messages::GroupId(s("g"));
    req.member_id = s("ghost");
    let t = h.send(1, Request::LeaveGroup(req));
    assert_eq!(h.leave_resp(t).error_code, UNKNOWN_MEMBER_ID);
    assert!(h.leave_resp(t).members.is_empty());
}

#[test]
fn sync_store_failure_is_reported_and_rebalances() {
    let mut h = Harness::quick();
    let (id, t) = join_dynamic(&mut h, "g");
    h.advance(1);
    assert_eq!(h.join_resp(t).error_code, NONE);
    h.auto_ack = false;
    let s = h.sync(3, "g", &id, 1, &[(&id, b"x")]);
    h.ack_next(Err(NOT_ENOUGH_REPLICAS));
    assert_eq!(h.sync_resp(s).error_code, COORDINATOR_NOT_AVAILABLE);
    assert!(h.sync_resp(s).assignment.is_empty());
    assert_eq!(h.c.group_state("g"), Some(GroupState::PreparingRebalance));
}

#[test]
fn lost_join_response_is_answered_again_in_completing_rebalance() {
    let mut h = Harness::quick();
    let (id, t) = join_dynamic(&mut h, "g");
    h.advance(1);
    let first = h.join_resp(t).clone();
    let again = h.join(5, "g", &id, None, &range(&["t"]));
    assert_eq!(h.join_resp(again), &first);
    assert_eq!(h.c.group_state("g"), Some(GroupState::CompletingRebalance));
}

#[test]
fn successive_generations_for_cooperative_rebalancing() {
    let mut h = Harness::quick();
    let (ids, generation) = stable_group(&mut h, "g", 2);
    let coop = |topics: &[&str]| {
        [
            ("cooperative-sticky", subscription(topics)),
            ("range", subscription(topics)),
        ]
    };
    // Round 1: both rejoin with new metadata (owned partitions), as cooperative-sticky does.
    let mut gen_now = generation;
    for round in 0..3 {
        let t0 = h.join(7, "g", &ids[0], None, &coop(&["t", &format!("r{round}")]));
        let t1 = h.join(7, "g", &ids[1], None, &coop(&["t", &format!("r{round}")]));
        let r0 = h.join_resp(t0).clone();
        assert_eq!(r0.generation_id, gen_now + 1);
        assert_eq!(
            r0.protocol_name.as_ref().unwrap().as_str(),
            "cooperative-sticky"
        );
        gen_now = r0.generation_id;
        let s1 = h.sync(3, "g", &ids[1], gen_now, &[]);
        let s0 = h.sync(3, "g", &ids[0], gen_now, &[]);
        assert_eq!(h.sync_resp(s0).error_code, NONE);
        assert_eq!(h.sync_resp(s1).error_code, NONE);
        assert_eq!(h.join_resp(t1).generation_id, gen_now);
        // Members commit in every generation.
        let c = h.commit("g", &ids[1], gen_now, &[("t", 0, round, None)]);
        assert_eq!(commit_errors(h.commit_resp(c)), vec![NONE]);
    }
    assert_eq!(gen_now, generation + 3);
}

#[test]
fn group_max_size() {
    let mut h = Harness::new(GroupConfig {
        group_initial_rebalance_delay_ms: 0,
        group_max_size: 2,
        ..GroupConfig::default()
    });
    stable_group(&mut h, "g", 2);
    let t = h.join(3, "g", "", None, &range(&["t"]));
    assert_eq!(h.join_resp(t).error_code, GROUP_MAX_SIZE_REACHED);
    assert_eq!(h.join_resp(t).member_id.as_str(), "");
}

#[test]
fn join_v0_uses_the_session_timeout_for_rebalances() {
    let mut h = Harness::quick();
    let mut req: JoinGroupRequest = join_request("g", "", None, &range(&["t"]));
    req.rebalance_timeout_ms = -1; // not on the wire in v0
    let t = h.send(0, Request::JoinGroup(req));
    h.advance(1);
    let r = h.join_resp(t).clone();
    assert_eq!(r.error_code, NONE);
    let id = r.member_id.to_string();
    let s = h.sync(0, "g", &id, 1, &[(&id, b"x")]);
    assert_eq!(h.sync_resp(s).error_code, NONE);
    // A second member joins; the old one never rejoins: it is dropped after its 10 s session
    // timeout, which doubles as its rebalance timeout.
    let t2 = h.join(0, "g", "", None, &range(&["t"]));
    h.advance(9_999);
    assert!(!h.answered(t2));
    h.advance(1);
    assert_eq!(h.join_resp(t2).members.len(), 1);
}

#[test]
fn unloading_answers_parked_requests_not_coordinator() {
    let mut h = Harness::quick();
    let (_, t) = join_dynamic(&mut h, "g");
    assert!(!h.answered(t));
    let effects = h.c.unload_partition(h.c.partition_for("g"));
    h.process(effects);
    assert_eq!(h.join_resp(t).error_code, NOT_COORDINATOR);
    assert!(h.outstanding.is_empty());
    let t = h.join(5, "g", "", None, &range(&["t"]));
    assert_eq!(h.join_resp(t).error_code, NOT_COORDINATOR);
    assert_eq!(h.heartbeat("g", "x", 1, None), NOT_COORDINATOR);
}

#[test]
fn second_join_from_same_member_supersedes_the_first() {
    let mut h = Harness::quick();
    let (ids, _) = stable_group(&mut h, "g", 2);
    let first = h.join(5, "g", &ids[0], None, &range(&["t"]));
    let second = h.join(5, "g", &ids[0], None, &range(&["t"]));
    assert_eq!(h.join_resp(first).error_code, REBALANCE_IN_PROGRESS);
    assert!(!h.answered(second));
    let other = h.join(5, "g", &ids[1], None, &range(&["t"]));
    assert_eq!(h.join_resp(second).error_code, NONE);
    assert_eq!(h.join_resp(other).error_code, NONE);
    assert!(h.outstanding.is_empty());
}
