//! Replaying `__consumer_offsets`: a new coordinator rebuilds the same groups and offsets.

use bytes::Bytes;
use kafka_protocol::messages::{DescribeGroupsRequest, GroupId, ListGroupsRequest};

use crate::api::{Request, Response};
use crate::config::GroupConfig;
use crate::error::CoordinatorError;
use crate::error::codes::*;
use crate::group::GroupState;
use crate::harness::*;
use crate::records::{GroupMetadataValue, MemberMetadataValue, OffsetCommitValue, RecordKey};

fn quick_config() -> GroupConfig {
    GroupConfig {
        group_initial_rebalance_delay_ms: 0,
        ..GroupConfig::default()
    }
}

fn describe_all(h: &mut Harness, groups: &[&str]) -> Response {
    let mut req = DescribeGroupsRequest::default();
    req.groups = groups.iter().map(|g| GroupId(s(g))).collect();
    let t = h.send(5, Request::DescribeGroups(req));
    h.response(t).clone()
}

fn list_all(h: &mut Harness) -> Response {
    let t = h.send(4, Request::ListGroups(ListGroupsRequest::default()));
    h.response(t).clone()
}

/// Builds groups in several shapes on `h`; returns (static member id, dynamic member id).
fn build_history(h: &mut Harness) -> (String, String) {
    let protocols = [("range", subscription(&["t"]))];
    let a = h.join(5, "g", "", Some("a"), &protocols);
    let b = h.join(5, "g", "", None, &protocols);
    let b_id = h.join_resp(b).member_id.to_string();
    let b = h.join(5, "g", &b_id, None, &protocols);
    while !h.answered(a) {
        h.advance(1);
    }
    let a_id = h.join_resp(a).member_id.to_string();
    assert_eq!(h.join_resp(b).generation_id, 1);
    h.sync(3, "g", &b_id, 1, &[]);
    h.sync(3, "g", &a_id, 1, &[(&a_id, b"A"), (&b_id, b"B")]);
    h.commit(
        "g",
        &b_id,
        1,
        &[("t", 0, 10, Some("m")), ("t", 1, 11, None)],
    );

    h.commit("simple", "", -1, &[("u", 0, 5, None)]);
    h.commit("simple", "", -1, &[("u", 0, 6, Some("later"))]);

    let (gone, generation) = h.solo_member("gone", &["t"]);
    h.commit("gone", &gone, generation, &[("t", 0, 1, None)]);
    h.leave_v3("gone", &[(&gone, None)]);
    let mut req = kafka_protocol::messages::DeleteGroupsRequest::default();
    req.groups_names = vec![GroupId(s("gone"))];
    h.send(2, Request::DeleteGroups(req));
    assert_eq!(h.c.group_state("gone"), None);

    h.commit("partial", "", -1, &[("x", 0, 1, None), ("x", 1, 2, None)]);
    let mut req = kafka_protocol::messages::OffsetDeleteRequest::default();
    req.group_id = GroupId(s("partial"));
    let mut topic =
        kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestTopic::default();
    topic.name = kafka_protocol::messages::TopicName(s("x"));
    let mut p =
        kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestPartition::default();
    p.partition_index = 0;
    topic.partitions.push(p);
    req.topics.push(topic);
    h.send(0, Request::OffsetDelete(req));

    let (m, generation) = h.solo_member("emptied", &["t"]);
    h.commit("emptied", &m, generation, &[("t", 4, 44, None)]);
    h.leave_v3("emptied", &[(&m, None)]);
    (a_id, b_id)
}

#[test]
fn replay_reproduces_groups_and_offsets() {
    let mut before = Harness::quick();
    let (a_id, b_id) = build_history(&mut before);
    assert!(before.outstanding.is_empty());

    let mut after = Harness::unloaded(quick_config());
    after.now = before.now;
    assert_eq!(after.load_log(&before.log), 0);

    for g in ["g", "simple", "partial", "emptied", "gone"] {
        assert_eq!(
            before.fetch(g, None),
            after.fetch(g, None),
            "offsets of {g}"
        );
    }
    assert_eq!(
        after.fetch("simple", None),
        vec![("u".into(), 0, 6, "later".into(), NONE)]
    );
    assert_eq!(after.fetch("partial", None).len(), 1);
    let groups = ["g", "simple", "partial", "emptied", "gone"];
    assert_eq!(
        describe_all(&mut before, &groups),
        describe_all(&mut after, &groups)
    );
    assert_eq!(list_all(&mut before), list_all(&mut after));
    assert_eq!(after.c.group_state("g"), Some(GroupState::Stable));
    assert_eq!(after.c.group_state("emptied"), Some(GroupState::Empty));
    assert_eq!(after.c.group_state("gone"), None);

    // The Stable group carries on under the new coordinator without a rebalance...
    assert_eq!(after.heartbeat("g", &b_id, 1, None), NONE);
    let t = after.sync(3, "g", &b_id, 1, &[]);
    assert_eq!(after.sync_resp(t).assignment.as_ref(), b"B");
    // ...its static member can restart and keep its assignment...
    let t = after.join(5, "g", "", Some("a"), &[("range", subscription(&["t"]))]);
    let r = after.join_resp(t).clone();
    assert_eq!((r.error_code, r.generation_id), (NONE, 1));
    assert_eq!(r.leader.as_str(), a_id);
    assert_eq!(
        after.heartbeat("g", &a_id, 1, Some("a")),
        FENCED_INSTANCE_ID
    );
    // ...and members that stop heartbeating expire with their session.
    after.advance(5_000);
    assert_eq!(after.heartbeat("g", &b_id, 1, None), NONE);
    after.advance(5_000);
    assert_eq!(
        after.c.group_state("g"),
        Some(GroupState::PreparingRebalance)
    );
    assert_eq!(after.heartbeat("g", &b_id, 1, None), REBALANCE_IN_PROGRESS);
    // A group emptied before the failover keeps its generation.
    let t = after.join(5, "emptied", "", None, &[("range", subscription(&["t"]))]);
    let id = after.join_resp(t).member_id.to_string();
    let t = after.join(5, "emptied", &id, None, &[("range", subscription(&["t"]))]);
    after.advance(1);
    assert_eq!(after.join_resp(t).generation_id, 3);
    assert!(after.outstanding.is_empty());
}

#[test]
fn requests_during_load() {
    let mut h = Harness::quick();
    let (member, generation) = h.solo_member("g", &["t"]);
    let p = h.c.partition_for("g");
    let effects = h.c.begin_load(p);
    h.process(effects);
    assert!(h.c.is_loading(p) && !h.c.owns(p));
    let t = h.join(5, "g", "", None, &[("range", subscription(&["t"]))]);
    assert_eq!(h.join_resp(t).error_code, COORDINATOR_LOAD_IN_PROGRESS);
    // Heartbeats are answered blindly so sessions survive the load.
    assert_eq!(h.heartbeat("g", &member, generation, None), NONE);
    let t = h.sync(3, "g", &member, generation, &[]);
    assert_eq!(h.sync_resp(t).error_code, REBALANCE_IN_PROGRESS);
    let t = h.commit("g", &member, generation, &[("t", 0, 1, None)]);
    assert_eq!(
        commit_errors(h.commit_resp(t)),
        vec![COORDINATOR_LOAD_IN_PROGRESS]
    );
    // Replay what was written, then serve again.
    let log = h.log.get(&p).cloned().unwrap_or_default();
    for (k, v) in &log {
        h.c.load_record(p, k, v.as_deref()).unwrap();
    }
    let effects = h.c.finish_load(p, h.now);
    h.process(effects);
    assert!(h.c.owns(p));
    assert_eq!(h.heartbeat("g", &member, generation, None), NONE);
}

#[test]
fn corrupt_or_misplaced_records_are_skipped() {
    let mut h = Harness::unloaded(quick_config());
    let p = h.c.partition_for("grp");
    let good_key = RecordKey::OffsetCommit {
        group: "grp".into(),
        topic: "t".into(),
        partition: 0,
    }
    .encode();
    let good_value = OffsetCommitValue {
        offset: 9,
        leader_epoch: -1,
        metadata: String::new(),
        commit_timestamp: h.now,
        expire_timestamp: None,
    }
    .encode();
    let other_group = (0..100)
        .map(|i| format!("other-{i}"))
        .find(|g| h.c.partition_for(g) != p)
        .unwrap();
    let misplaced = RecordKey::GroupMetadata { group: other_group }.encode();
    let records: Vec<(Bytes, Option<Bytes>)> = vec![
        (Bytes::from_static(&[0, 1, 0]), None),    // truncated key
        (Bytes::from_static(&[0, 9, 0, 0]), None), // unknown key version
        (good_key.clone(), Some(Bytes::from_static(&[0, 3, 1]))), // truncated value
        (misplaced, Some(Bytes::from_static(&[0, 3]))), // wrong partition
        (good_key.clone(), Some(good_value)),
        (
            RecordKey::GroupMetadata {
                group: "grp".into(),
            }
            .encode(),
            Some(Bytes::from_static(&[0, 9])),
        ),
    ];
    let iter = records.iter().map(|(k, v)| (k.as_ref(), v.as_deref()));
    let (_, skipped) = h.c.load_partition(p, iter, h.now);
    let indexes: Vec<usize> = skipped.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, vec![0, 1, 2, 3, 5]);
    assert!(matches!(
        skipped[1].1,
        CoordinatorError::UnknownKeyVersion(9)
    ));
    assert!(matches!(
        skipped[3].1,
        CoordinatorError::WrongPartition { .. }
    ));
    assert_eq!(
        h.fetch("grp", None),
        vec![("t".into(), 0, 9, String::new(), NONE)]
    );
    assert_eq!(
        h.c.load_record(p, &good_key, None),
        Err(CoordinatorError::PartitionNotLoading(p))
    );
}

#[test]
fn loads_kafka_flexible_records() {
    // A group and offset written by a Kafka 3.x/4.x broker in the flexible v4 value format.
    let mut h = Harness::unloaded(quick_config());
    let p = h.c.partition_for("grp");
    let group = GroupMetadataValue {
        protocol_type: "consumer".into(),
        generation: 4,
        protocol: Some("range".into()),
        leader: Some("m1".into()),
        current_state_timestamp: h.now,
        members: vec![MemberMetadataValue {
            member_id: "m1".into(),
            group_instance_id: Some("i1".into()),
            client_id: "c".into(),
            client_host: "/h".into(),
            rebalance_timeout: 30_000,
            session_timeout: 10_000,
            subscription: subscription(&["t"]),
            assignment: Bytes::from_static(b"asg"),
        }],
    };
    // Re-encode the v3 bytes as v4 by hand: compact strings/bytes/array and tagged fields.
    fn compact(out: &mut Vec<u8>, b: &[u8]) {
        out.push(b.len() as u8 + 1);
        out.extend_from_slice(b);
    }
    let mut v4 = vec![0, 4];
    compact(&mut v4, b"consumer");
    v4.extend_from_slice(&4i32.to_be_bytes());
    compact(&mut v4, b"range");
    compact(&mut v4, b"m1");
    v4.extend_from_slice(&h.now.to_be_bytes());
    v4.push(2);
    let m = &group.members[0];
    compact(&mut v4, b"m1");
    compact(&mut v4, b"i1");
    compact(&mut v4, b"c");
    compact(&mut v4, b"/h");
    v4.extend_from_slice(&30_000i32.to_be_bytes());
    v4.extend_from_slice(&10_000i32.to_be_bytes());
    compact(&mut v4, &m.subscription);
    compact(&mut v4, &m.assignment);
    v4.push(0);
    v4.push(0);
    assert_eq!(GroupMetadataValue::decode(&v4).unwrap(), group);

    let key = RecordKey::GroupMetadata {
        group: "grp".into(),
    }
    .encode();
    h.c.begin_load(p);
    h.c.load_record(p, &key, Some(&v4)).unwrap();
    let effects = h.c.finish_load(p, h.now);
    h.process(effects);
    assert_eq!(h.c.group_state("grp"), Some(GroupState::Stable));
    assert_eq!(h.heartbeat("grp", "m1", 4, Some("i1")), NONE);
    let t = h.sync(3, "grp", "m1", 4, &[]);
    assert_eq!(h.sync_resp(t).assignment.as_ref(), b"asg");
}
