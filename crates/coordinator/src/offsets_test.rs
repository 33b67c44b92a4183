//! Offset tests: commit (append, then reply), validation, fetch, delete and retention.

use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::{
    GroupId, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest, TopicName,
};

use crate::api::{Request, Response};
use crate::config::GroupConfig;
use crate::error::codes::*;
use crate::group::GroupState;
use crate::harness::*;
use crate::records::{OffsetCommitValue, RecordKey};

fn offset_delete(
    h: &mut Harness,
    group: &str,
    topics: &[(&str, &[i32])],
) -> (u64, Option<OffsetDeleteResponse>) {
    let mut req = OffsetDeleteRequest::default();
    req.group_id = GroupId(s(group));
    req.topics = topics
        .iter()
        .map(|(t, ps)| {
            let mut x = OffsetDeleteRequestTopic::default();
            x.name = TopicName(s(t));
            x.partitions = ps
                .iter()
                .map(|p| {
                    let mut y = OffsetDeleteRequestPartition::default();
                    y.partition_index = *p;
                    y
                })
                .collect();
            x
        })
        .collect();
    let t = h.send(0, Request::OffsetDelete(req));
    let r = match h.replies.get(&t) {
        Some(Response::OffsetDelete(r)) => Some(r.clone()),
        _ => None,
    };
    (t, r)
}

#[test]
fn commit_appends_then_replies() {
    let mut h = Harness::quick();
    let (member, generation) = h.solo_member("g", &["t"]);
    h.auto_ack = false;
    let t = h.commit(
        "g",
        &member,
        generation,
        &[("t", 0, 42, Some("meta")), ("t", 1, 7, None)],
    );
    assert!(!h.answered(t), "no reply before the offsets are durable");
    let (_, partition, records) = h.unacked[0].clone();
    assert_eq!(partition, h.c.partition_for("g"));
    assert_eq!(records.len(), 2);
    assert_eq!(
        RecordKey::decode(&records[0].0).unwrap(),
        RecordKey::OffsetCommit {
            group: "g".into(),
            topic: "t".into(),
            partition: 0
        }
    );
    let value = OffsetCommitValue::decode(records[0].1.as_ref().unwrap()).unwrap();
    assert_eq!(value.offset, 42);
    assert_eq!(value.leader_epoch, 7);
    assert_eq!(value.metadata, "meta");
    assert_eq!(value.commit_timestamp, h.now);
    assert_eq!(value.expire_timestamp, None);
    assert_eq!(
        records[0].1.as_ref().unwrap()[..2],
        [0, 3],
        "value version 3"
    );

    // Not visible yet; a require_stable fetch is told to retry.
    assert_eq!(
        h.fetch("g", Some(&[("t", &[0])])),
        vec![("t".into(), 0, -1, String::new(), NONE)]
    );
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(s("g"));
    req.require_stable = true;
    req.topics = Some(vec![{
        let mut x =
            kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic::default();
        x.name = TopicName(s("t"));
        x.partition_indexes = vec![0, 5];
        x
    }]);
    let ft = h.send(7, Request::OffsetFetch(req));
    let errors: Vec<i16> = h.fetch_resp(ft).topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(errors, vec![UNSTABLE_OFFSET_COMMIT, NONE]);

    h.ack_next(Ok(()));
    assert_eq!(commit_errors(h.commit_resp(t)), vec![NONE, NONE]);
    assert_eq!(
        h.fetch("g", None),
        vec![
            ("t".into(), 0, 42, "meta".into(), NONE),
            ("t".into(), 1, 7, String::new(), NONE)
        ]
    );
}

#[test]
fn failed_commit_append_is_reported_and_not_applied() {
    let mut h = Harness::quick();
    h.auto_ack = false;
    let t = h.commit("simple", "", -1, &[("t", 0, 5, None)]);
    h.ack_next(Err(NOT_LEADER_OR_FOLLOWER));
    assert_eq!(commit_errors(h.commit_resp(t)), vec![NOT_COORDINATOR]);
    assert_eq!(h.fetch("simple", Some(&[("t", &[0])]))[0].2, -1);
    let t = h.commit("simple", "", -1, &[("t", 0, 5, None)]);
    h.ack_next(Err(REQUEST_TIMED_OUT));
    assert_eq!(
        commit_errors(h.commit_resp(t)),
        vec![COORDINATOR_NOT_AVAILABLE]
    );
}

#[test]
fn commit_validation() {
    let mut h = Harness::quick();
    // Admin commits (generation -1, no member) create a group that only holds offsets.
    let t = h.commit("simple", "", -1, &[("t", 0, 1, None)]);
    assert_eq!(commit_errors(h.commit_resp(t)), vec![NONE]);
    assert_eq!(h.c.group_state("simple"), Some(GroupState::Empty));
    // A real generation for a group that does not exist.
    let t = h.commit("nogroup", "m", 3, &[("t", 0, 1, None)]);
    assert_eq!(commit_errors(h.commit_resp(t)), vec![ILLEGAL_GENERATION]);

    let (member, generation) = h.solo_member("g", &["t"]);
    // An admin commit while the group has members.
    let t = h.commit("g", "", -1, &[("t", 0, 1, None)]);
    assert_eq!(commit_errors(h.commit_resp(t)), vec![UNKNOWN_MEMBER_ID]);
    let t = h.commit("g", "ghost", generation, &[("t", 0, 1, None)]);
    assert_eq!(commit_errors(h.commit_resp(t)), vec![UNKNOWN_MEMBER_ID]);
    let t = h.commit("g", &member, generation + 1, &[("t", 0, 1, None)]);
    assert_eq!(commit_errors(h.commit_resp(t)), vec![ILLEGAL_GENERATION]);
    // Metadata over offset.metadata.max.bytes fails that partition only.
    let big = "x".repeat(4097);
    let t = h.commit(
        "g",
        &member,
        generation,
        &[("t", 0, 1, Some(&big)), ("t", 1, 2, Some(&big[..4096]))],
    );
    assert_eq!(
        commit_errors(h.commit_resp(t)),
        vec![OFFSET_METADATA_TOO_LARGE, NONE]
    );

    // During PreparingRebalance the old generation may still commit.
    let t = h.join(5, "g", "", None, &[("range", subscription(&["t"]))]);
    let newcomer = h.join_resp(t).member_id.to_string();
    h.join(5, "g", &newcomer, None, &[("range", subscription(&["t"]))]);
    assert_eq!(h.c.group_state("g"), Some(GroupState::PreparingRebalance));
    let t = h.commit("g", &member, generation, &[("t", 0, 9, None)]);
    assert_eq!(commit_errors(h.commit_resp(t)), vec![NONE]);
    assert_eq!(h.fetch("g", Some(&[("t", &[0])]))[0].2, 9);

    // Static members must own their instance id (OffsetCommit v7+).
    let mut h = Harness::quick();
    let a = h.join(5, "s", "", Some("inst"), &[("range", subscription(&["t"]))]);
    h.advance(1);
    let a_id = h.join_resp(a).member_id.to_string();
    let mut req = commit_request("s", "someone-else", 1, &[("t", 0, 1, None)]);
    req.group_instance_id = Some(s("inst"));
    let t = h.send(7, Request::OffsetCommit(req));
    assert_eq!(commit_errors(h.commit_resp(t)), vec![FENCED_INSTANCE_ID]);
    let mut req = commit_request("s", &a_id, 1, &[("t", 0, 1, None)]);
    req.group_instance_id = Some(s("inst"));
    let t = h.send(7, Request::OffsetCommit(req));
    // Valid member and generation, but the group still awaits its assignment.
    assert_eq!(commit_errors(h.commit_resp(t)), vec![REBALANCE_IN_PROGRESS]);
}

#[test]
fn legacy_retention_time_is_kept_as_an_expire_timestamp() {
    let mut h = Harness::quick();
    let mut req = commit_request("simple", "", -1, &[("t", 0, 1, None)]);
    req.retention_time_ms = 60_000;
    h.auto_ack = false;
    let t = h.send(2, Request::OffsetCommit(req));
    let value = OffsetCommitValue::decode(h.unacked[0].2[0].1.as_ref().unwrap()).unwrap();
    assert_eq!(value.expire_timestamp, Some(h.now + 60_000));
    assert_eq!(
        h.unacked[0].2[0].1.as_ref().unwrap()[..2],
        [0, 1],
        "written as value v1"
    );
    h.ack_all();
    assert_eq!(commit_errors(h.commit_resp(t)), vec![NONE]);
    h.auto_ack = true;
    // The next retention sweep (every 10 minutes) drops it.
    h.advance(600_000);
    assert_eq!(h.fetch("simple", Some(&[("t", &[0])]))[0].2, -1);
}

#[test]
fn fetch_single_and_batched() {
    let mut h = Harness::quick();
    h.commit("a", "", -1, &[("t", 0, 10, Some("m0")), ("u", 3, 30, None)]);
    h.commit("b", "", -1, &[("t", 0, 20, None)]);
    // Requested partitions, with -1 for unknown ones and unknown groups.
    assert_eq!(
        h.fetch("a", Some(&[("t", &[0, 1]), ("zz", &[0])])),
        vec![
            ("t".into(), 0, 10, "m0".into(), NONE),
            ("t".into(), 1, -1, String::new(), NONE),
            ("zz".into(), 0, -1, String::new(), NONE)
        ]
    );
    assert_eq!(h.fetch("nobody", Some(&[("t", &[0])]))[0].2, -1);
    assert!(h.fetch("nobody", None).is_empty());
    // All partitions.
    assert_eq!(h.fetch("a", None).len(), 2);

    // v8: several groups in one request.
    let r = h.fetch_groups(&[
        ("a", None),
        ("b", Some(&[("t", &[0])])),
        ("nobody", Some(&[("t", &[0])])),
    ]);
    assert_eq!(r.groups.len(), 3);
    assert_eq!(
        r.groups[0]
            .topics
            .iter()
            .map(|t| t.partitions.len())
            .sum::<usize>(),
        2
    );
    assert_eq!(r.groups[1].topics[0].partitions[0].committed_offset, 20);
    assert_eq!(
        r.groups[1].topics[0].partitions[0].committed_leader_epoch,
        7
    );
    assert_eq!(r.groups[2].topics[0].partitions[0].committed_offset, -1);
    assert!(r.groups.iter().all(|g| g.error_code == NONE));

    // A group of a partition this node does not lead.
    let effects = h.c.unload_partition(h.c.partition_for("b"));
    h.process(effects);
    let r = h.fetch_groups(&[("a", None), ("b", None)]);
    assert_eq!(r.groups[1].error_code, NOT_COORDINATOR);
    assert!(r.groups[1].topics.is_empty());
    // v1 has no top-level error: it goes on each partition.
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(s("b"));
    req.topics = Some(vec![{
        let mut x =
            kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic::default();
        x.name = TopicName(s("t"));
        x.partition_indexes = vec![0, 1];
        x
    }]);
    let t = h.send(1, Request::OffsetFetch(req.clone()));
    let r = h.fetch_resp(t);
    assert!(
        r.topics[0]
            .partitions
            .iter()
            .all(|p| p.error_code == NOT_COORDINATOR)
    );
    let t = h.send(3, Request::OffsetFetch(req));
    assert_eq!(h.fetch_resp(t).error_code, NOT_COORDINATOR);
}

#[test]
fn offset_delete_respects_subscriptions() {
    let mut h = Harness::quick();
    let (member, generation) = h.solo_member("g", &["t"]);
    h.commit(
        "g",
        &member,
        generation,
        &[("t", 0, 1, None), ("old", 0, 2, None)],
    );
    let (_, r) = offset_delete(&mut h, "g", &[("t", &[0]), ("old", &[0])]);
    let r = r.expect("answered");
    assert_eq!(r.error_code, NONE);
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        GROUP_SUBSCRIBED_TO_TOPIC
    );
    assert_eq!(r.topics[1].partitions[0].error_code, NONE);
    assert_eq!(
        h.fetch("g", None),
        vec![("t".into(), 0, 1, String::new(), NONE)]
    );
    let tombstone = h.log[&h.c.partition_for("g")].last().unwrap();
    assert_eq!(tombstone.1, None);
    assert_eq!(
        RecordKey::decode(&tombstone.0).unwrap(),
        RecordKey::OffsetCommit {
            group: "g".into(),
            topic: "old".into(),
            partition: 0
        }
    );

    let (_, r) = offset_delete(&mut h, "missing", &[("t", &[0])]);
    assert_eq!(r.unwrap().error_code, GROUP_ID_NOT_FOUND);
    let (_, r) = offset_delete(&mut h, "", &[("t", &[0])]);
    assert_eq!(r.unwrap().error_code, INVALID_GROUP_ID);

    // Once the group is Empty, everything may go, and with the last offset the group goes too.
    h.leave_v3("g", &[(&member, None)]);
    assert_eq!(h.c.group_state("g"), Some(GroupState::Empty));
    let (_, r) = offset_delete(&mut h, "g", &[("t", &[0])]);
    assert_eq!(r.unwrap().topics[0].partitions[0].error_code, NONE);
    assert_eq!(h.c.group_state("g"), None);
    let last = h.log[&h.c.partition_for("g")].last().unwrap();
    assert_eq!(
        RecordKey::decode(&last.0).unwrap(),
        RecordKey::GroupMetadata { group: "g".into() }
    );
    assert_eq!(last.1, None, "the group's metadata is tombstoned");
}

#[test]
fn offset_delete_waits_for_its_tombstones() {
    let mut h = Harness::quick();
    h.commit("simple", "", -1, &[("t", 0, 1, None)]);
    h.auto_ack = false;
    let (t, r) = offset_delete(&mut h, "simple", &[("t", &[0])]);
    assert!(r.is_none());
    h.ack_next(Err(KAFKA_STORAGE_ERROR));
    match h.response(t) {
        Response::OffsetDelete(r) => assert_eq!(r.error_code, NOT_COORDINATOR),
        other => panic!("{other:?}"),
    }
}

#[test]
fn offsets_expire_after_retention() {
    let retention_ms = 10_080 * 60_000;
    let mut h = Harness::quick();
    // A group that only commits: retention runs from each commit.
    h.commit("simple", "", -1, &[("t", 0, 1, None)]);
    h.advance(retention_ms / 2);
    h.commit("simple", "", -1, &[("t", 1, 1, None)]);
    // A consumer group that empties: retention runs from when it became Empty.
    let (member, generation) = h.solo_member("g", &["t"]);
    h.commit("g", &member, generation, &[("t", 0, 5, None)]);
    h.advance(retention_ms / 4);
    h.leave_v3("g", &[(&member, None)]);
    let emptied = h.now;

    h.run_until(emptied + retention_ms / 4 + 600_000);
    // The first simple commit is past retention, the second is not.
    assert_eq!(
        h.fetch("simple", None),
        vec![("t".into(), 1, 1, String::new(), NONE)]
    );
    assert_eq!(
        h.fetch("g", None).len(),
        1,
        "the Empty group's retention started when it emptied"
    );

    h.run_until(emptied + retention_ms + 600_000);
    assert!(h.fetch("g", None).is_empty());
    assert!(h.fetch("simple", None).is_empty());
    assert_eq!(
        h.c.group_state("g"),
        None,
        "an Empty group without offsets is deleted"
    );
    assert_eq!(h.c.group_state("simple"), None);
    let log = &h.log[&h.c.partition_for("g")];
    assert!(log.iter().any(|(k, v)| v.is_none()
        && RecordKey::decode(k).unwrap() == RecordKey::GroupMetadata { group: "g".into() }));
}

#[test]
fn stable_consumer_group_expires_only_unsubscribed_topics() {
    let mut h = Harness::new(GroupConfig {
        group_initial_rebalance_delay_ms: 0,
        offsets_retention_minutes: 1,
        offsets_retention_check_interval_ms: 30_000,
        ..GroupConfig::default()
    });
    let (member, generation) = h.solo_member("g", &["t"]);
    h.commit(
        "g",
        &member,
        generation,
        &[("t", 0, 1, None), ("gone", 0, 2, None)],
    );
    for _ in 0..20 {
        h.advance(5_000);
        assert_eq!(h.heartbeat("g", &member, generation, None), NONE);
    }
    assert_eq!(
        h.fetch("g", None),
        vec![("t".into(), 0, 1, String::new(), NONE)]
    );
}

#[test]
fn deleting_a_topic_drops_its_offsets_in_every_group() {
    let mut h = Harness::quick();
    // An admin-style commit (generation -1, no member) for two groups and two topics.
    for g in ["g1", "g2"] {
        let t = h.commit(
            g,
            "",
            -1,
            &[
                ("gone", 0, 5, None),
                ("gone", 1, 6, None),
                ("kept", 0, 9, None),
            ],
        );
        assert_eq!(commit_errors(h.commit_resp(t)), vec![NONE, NONE, NONE]);
    }
    let log_before: usize = h.log.values().map(Vec::len).sum();
    let effects = h.c.topics_deleted(&["gone".to_string()], h.now);
    h.process(effects);
    for g in ["g1", "g2"] {
        let rows = h.fetch(g, None);
        let topics: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(
            topics,
            vec!["kept"],
            "{g} still has offsets of the deleted topic"
        );
    }
    // Two tombstones per group were written, so a reload agrees.
    let tombstones: Vec<_> = h
        .log
        .values()
        .flatten()
        .filter(|(_, v)| v.is_none())
        .collect();
    assert_eq!(tombstones.len(), 4);
    assert_eq!(h.log.values().map(Vec::len).sum::<usize>(), log_before + 4);
}
