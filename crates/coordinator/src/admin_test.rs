//! ListGroups, DescribeGroups and DeleteGroups.

use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, ListGroupsRequest, ListGroupsResponse,
};

use crate::api::{Request, Response};
use crate::error::codes::*;
use crate::group::GroupState;
use crate::harness::*;
use crate::records::RecordKey;

fn list(h: &mut Harness, version: i16, states: &[&str], types: &[&str]) -> ListGroupsResponse {
    let mut req = ListGroupsRequest::default();
    req.states_filter = states.iter().map(|x| s(x)).collect();
    req.types_filter = types.iter().map(|x| s(x)).collect();
    let t = h.send(version, Request::ListGroups(req));
    match h.response(t) {
        Response::ListGroups(r) => r.clone(),
        other => panic!("{other:?}"),
    }
}

fn listed(r: &ListGroupsResponse) -> Vec<(String, String, String)> {
    r.groups
        .iter()
        .map(|g| {
            (
                g.group_id.0.to_string(),
                g.protocol_type.to_string(),
                g.group_state.to_string(),
            )
        })
        .collect()
}

fn describe(h: &mut Harness, version: i16, groups: &[&str]) -> DescribeGroupsResponse {
    let mut req = DescribeGroupsRequest::default();
    req.groups = groups.iter().map(|g| GroupId(s(g))).collect();
    req.include_authorized_operations = version >= 3;
    let t = h.send(version, Request::DescribeGroups(req));
    match h.response(t) {
        Response::DescribeGroups(r) => r.clone(),
        other => panic!("{other:?}"),
    }
}

fn delete(h: &mut Harness, groups: &[&str]) -> (u64, Option<DeleteGroupsResponse>) {
    let mut req = DeleteGroupsRequest::default();
    req.groups_names = groups.iter().map(|g| GroupId(s(g))).collect();
    let t = h.send(2, Request::DeleteGroups(req));
    let r = match h.replies.get(&t) {
        Some(Response::DeleteGroups(r)) => Some(r.clone()),
        _ => None,
    };
    (t, r)
}

/// "stable" (one member), "simple" (offsets only), "joining" (PreparingRebalance).
fn three_groups(h: &mut Harness) -> String {
    let (member, _) = h.solo_member("stable", &["t"]);
    h.commit("simple", "", -1, &[("t", 0, 1, None)]);
    h.join(3, "joining", "", None, &[("range", subscription(&["t"]))]);
    member
}

#[test]
fn list_groups_with_filters() {
    let mut h = Harness::quick();
    three_groups(&mut h);
    let all = list(&mut h, 0, &[], &[]);
    assert_eq!(all.error_code, NONE);
    assert_eq!(
        listed(&all),
        vec![
            ("joining".into(), "consumer".into(), String::new()),
            ("simple".into(), String::new(), String::new()),
            ("stable".into(), "consumer".into(), String::new()),
        ]
    );
    let r = list(&mut h, 4, &["stable", "Empty"], &[]);
    assert_eq!(
        listed(&r),
        vec![
            ("simple".into(), String::new(), "Empty".into()),
            ("stable".into(), "consumer".into(), "Stable".into()),
        ]
    );
    let r = list(&mut h, 5, &[], &["consumer"]);
    assert!(
        r.groups.is_empty(),
        "classic groups only match the classic type"
    );
    let r = list(&mut h, 5, &["PreparingRebalance"], &["Classic"]);
    assert_eq!(
        listed(&r),
        vec![(
            "joining".into(),
            "consumer".into(),
            "PreparingRebalance".into()
        )]
    );
    assert_eq!(r.groups[0].group_type.as_str(), "classic");

    // While a partition loads, the listing is incomplete and says so.
    let _ = h.c.begin_load(h.c.partition_for("stable"));
    let r = list(&mut h, 4, &[], &[]);
    assert_eq!(r.error_code, COORDINATOR_LOAD_IN_PROGRESS);
    assert_eq!(r.groups.len(), 2);
}

#[test]
fn describe_groups() {
    let mut h = Harness::quick();
    let member = three_groups(&mut h);
    let r = describe(&mut h, 5, &["stable", "joining", "simple", "missing"]);
    let stable = &r.groups[0];
    assert_eq!(stable.error_code, NONE);
    assert_eq!(stable.group_state.as_str(), "Stable");
    assert_eq!(stable.protocol_type.as_str(), "consumer");
    assert_eq!(stable.protocol_data.as_str(), "range");
    assert_eq!(stable.authorized_operations, (1 << 3) | (1 << 6) | (1 << 8));
    let m = &stable.members[0];
    assert_eq!(m.member_id.as_str(), member);
    assert_eq!(m.client_id.as_str(), "client");
    assert_eq!(m.client_host.as_str(), "/127.0.0.1");
    assert_eq!(m.member_metadata, subscription(&["t"]));
    assert_eq!(m.member_assignment.as_ref(), b"assigned");
    assert_eq!(m.group_instance_id, None);

    let joining = &r.groups[1];
    assert_eq!(joining.group_state.as_str(), "PreparingRebalance");
    assert_eq!(
        joining.protocol_data.as_str(),
        "",
        "no protocol before the group is Stable"
    );
    assert_eq!(joining.members.len(), 1);
    assert!(joining.members[0].member_metadata.is_empty());

    assert_eq!(r.groups[2].group_state.as_str(), "Empty");
    assert!(r.groups[2].members.is_empty());
    assert_eq!(r.groups[3].group_state.as_str(), "Dead");
    assert_eq!(r.groups[3].error_code, NONE);

    // v6 reports a missing group as an error.
    let r = describe(&mut h, 6, &["missing"]);
    assert_eq!(r.groups[0].error_code, GROUP_ID_NOT_FOUND);
    assert_eq!(
        r.groups[0].error_message.as_ref().map(|m| m.as_str()),
        Some("Group missing not found.")
    );
    // Without include_authorized_operations the field is Integer.MIN_VALUE.
    let r = describe(&mut h, 2, &["stable"]);
    assert_eq!(r.groups[0].authorized_operations, i32::MIN);
}

#[test]
fn delete_groups() {
    let mut h = Harness::quick();
    let member = three_groups(&mut h);
    h.leave_v3("stable", &[(&member, None)]);
    h.commit("stable", "", -1, &[("t", 3, 33, None)]);
    assert_eq!(h.c.group_state("stable"), Some(GroupState::Empty));

    h.auto_ack = false;
    let (t, r) = delete(
        &mut h,
        &["joining", "missing", "stable", "simple", "stable"],
    );
    assert!(r.is_none(), "the answer waits for the tombstones");
    assert_eq!(h.c.group_state("stable"), None);
    // One append per partition involved, each holding that partition's tombstones.
    let mut tombstoned: Vec<RecordKey> = h
        .unacked
        .iter()
        .flat_map(|(_, _, records)| records.iter())
        .map(|(k, v)| {
            assert!(v.is_none());
            RecordKey::decode(k).unwrap()
        })
        .collect();
    tombstoned.sort_by_key(|k| format!("{k:?}"));
    assert_eq!(
        tombstoned,
        vec![
            RecordKey::GroupMetadata {
                group: "stable".into()
            },
            RecordKey::OffsetCommit {
                group: "simple".into(),
                topic: "t".into(),
                partition: 0
            },
            RecordKey::OffsetCommit {
                group: "stable".into(),
                topic: "t".into(),
                partition: 3
            },
        ]
    );
    h.ack_all();
    let r = match h.response(t) {
        Response::DeleteGroups(r) => r.clone(),
        other => panic!("{other:?}"),
    };
    let results: Vec<(String, i16)> = r
        .results
        .iter()
        .map(|x| (x.group_id.0.to_string(), x.error_code))
        .collect();
    assert_eq!(
        results,
        vec![
            ("joining".into(), NON_EMPTY_GROUP),
            ("missing".into(), GROUP_ID_NOT_FOUND),
            ("stable".into(), NONE),
            ("simple".into(), NONE),
        ]
    );
    h.auto_ack = true;
    assert_eq!(h.fetch("stable", Some(&[("t", &[3])]))[0].2, -1);
    assert_eq!(
        describe(&mut h, 5, &["stable"]).groups[0]
            .group_state
            .as_str(),
        "Dead"
    );
}
