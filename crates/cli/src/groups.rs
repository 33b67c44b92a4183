//! `group list|describe|delete|reset-offsets`: consumer groups seen from outside, through their
//! coordinator.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sluice_protocol::kafka_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::GroupId;
use sluice_protocol::kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use sluice_protocol::kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use sluice_protocol::kafka_protocol::messages::describe_groups_response::DescribedGroup;
use sluice_protocol::kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use crate::args::{ResetArgs, ResetTarget};
use crate::client::{Client, EARLIEST, LATEST};
use crate::error::{ClientError, Result};
use crate::group_protocol::{
    Assignment, CONSUMER, CommitError, Committer, TopicPartition, commit_offsets,
    decode_assignment, fetch_offsets,
};
use crate::output::{Json, Out, Table, cell};
use crate::topics::last_of;
use crate::wire::check;

fn group_id(g: &str) -> GroupId {
    GroupId(StrBytes::from_string(g.to_string()))
}

fn group_error(code: i16, message: Option<&StrBytes>, group: &str) -> ClientError {
    ClientError::kafka(code, message.map(|m| m.as_str()), || {
        if code == ResponseError::GroupIdNotFound.code() {
            format!("group {group} does not exist")
        } else if code == ResponseError::NonEmptyGroup.code() {
            format!("group {group} still has members")
        } else {
            format!("the coordinator of group {group} refused the request")
        }
    })
}

/// `group list`: every broker's groups, merged.
pub(crate) fn list(client: &mut Client, out: &mut Out) -> Result<()> {
    let mut groups: BTreeMap<String, String> = BTreeMap::new();
    for id in client.broker_ids()? {
        let (r, v) = client
            .broker(id)?
            .call(|_| ListGroupsRequest::default(), Duration::ZERO)?;
        check(r.error_code, None, || {
            format!("broker {id} cannot list its groups")
        })?;
        let mut stateless = Vec::new();
        for g in r.groups {
            let name = g.group_id.0.to_string();
            if v >= 4 {
                groups.insert(name, g.group_state.to_string());
            } else {
                stateless.push(name);
            }
        }
        // ListGroups before v4 has no state; the broker that listed a group coordinates it.
        if !stateless.is_empty() {
            let (d, _) = client.broker(id)?.call(
                |_| {
                    let mut req = DescribeGroupsRequest::default();
                    req.groups = stateless.iter().map(|g| group_id(g)).collect();
                    req
                },
                Duration::ZERO,
            )?;
            for g in d.groups {
                groups.insert(g.group_id.0.to_string(), g.group_state.to_string());
            }
        }
    }
    if out.json {
        return out.json(&Json::Arr(
            groups
                .iter()
                .map(|(g, s)| Json::obj([("group", Json::from(g)), ("state", Json::from(s))]))
                .collect(),
        ));
    }
    let mut table = Table::new(&["GROUP", "STATE"]);
    for (g, s) in groups {
        table.row(vec![g, s]);
    }
    out.text(&table.render())
}

/// DescribeGroups of one group at its coordinator; a Dead group is "does not exist".
fn describe_one(client: &mut Client, coordinator: i32, group: &str) -> Result<DescribedGroup> {
    let (r, _) = client.broker(coordinator)?.call(
        |_| {
            let mut req = DescribeGroupsRequest::default();
            req.groups = vec![group_id(group)];
            req
        },
        Duration::ZERO,
    )?;
    let g = r.groups.into_iter().next().ok_or_else(|| {
        ClientError::Protocol(format!("DescribeGroups did not answer for group {group}"))
    })?;
    if g.error_code != 0 {
        return Err(group_error(g.error_code, g.error_message.as_ref(), group));
    }
    if g.group_state.as_str() == "Dead" {
        return Err(group_error(
            ResponseError::GroupIdNotFound.code(),
            None,
            group,
        ));
    }
    Ok(g)
}

fn partitions_text(a: &Assignment) -> String {
    if a.is_empty() {
        return "-".into();
    }
    a.iter()
        .map(|(t, ps)| {
            format!(
                "{t}:{}",
                ps.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One partition line of `group describe`.
struct OffsetRow {
    topic: String,
    partition: i32,
    /// None when the group has no committed offset for the partition.
    committed: Option<i64>,
    /// None when the topic or partition is gone.
    end: Option<i64>,
    lag: Option<i64>,
    member: Option<String>,
}

/// `group describe`.
pub(crate) fn describe(client: &mut Client, out: &mut Out, group: &str) -> Result<()> {
    let coordinator = client.coordinator(group)?;
    let g = describe_one(client, coordinator, group)?;
    let is_consumer = g.protocol_type.as_str() == CONSUMER;
    let mut members = Vec::new();
    for m in &g.members {
        let assignment = if is_consumer {
            decode_assignment(m.member_assignment.clone())?
        } else {
            Assignment::new()
        };
        members.push((m, assignment));
    }
    let committed = fetch_offsets(client, coordinator, group, None)?;
    let mut owner: BTreeMap<TopicPartition, String> = BTreeMap::new();
    for (m, a) in &members {
        for (t, ps) in a {
            for p in ps {
                owner.insert((t.clone(), *p), m.member_id.to_string());
            }
        }
    }
    let keys: BTreeSet<TopicPartition> = committed.keys().chain(owner.keys()).cloned().collect();
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in &keys {
        by_topic.entry(t).or_default().push(*p);
    }
    let mut ends: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    for (t, ps) in by_topic {
        // A topic deleted since its offsets were committed has no end: show it as unknown.
        let Ok(info) = client.topic(t) else { continue };
        let known: Vec<i32> = ps
            .into_iter()
            .filter(|p| info.partition(*p).is_some_and(|x| x.leader >= 0))
            .collect();
        for (p, o) in client.list_offsets(&info, &known, LATEST)? {
            ends.insert((t.to_string(), p), o);
        }
    }
    let rows: Vec<OffsetRow> = keys
        .iter()
        .map(|tp| {
            let committed = committed.get(tp).copied().filter(|o| *o >= 0);
            let end = ends.get(tp).copied();
            OffsetRow {
                topic: tp.0.clone(),
                partition: tp.1,
                committed,
                end,
                lag: committed.zip(end).map(|(c, e)| e - c),
                member: owner.get(tp).cloned(),
            }
        })
        .collect();
    if out.json {
        let members_json = members
            .iter()
            .map(|(m, a)| {
                Json::obj([
                    ("member_id", Json::from(m.member_id.as_str())),
                    ("client_id", Json::from(m.client_id.as_str())),
                    ("host", Json::from(m.client_host.as_str())),
                    (
                        "assignment",
                        Json::Arr(
                            a.iter()
                                .map(|(t, ps)| {
                                    Json::obj([
                                        ("topic", Json::from(t)),
                                        ("partitions", Json::arr(ps.iter().copied())),
                                    ])
                                })
                                .collect(),
                        ),
                    ),
                ])
            })
            .collect();
        let offsets = rows
            .iter()
            .map(|r| {
                Json::obj([
                    ("topic", Json::from(&r.topic)),
                    ("partition", Json::from(r.partition)),
                    ("committed", Json::from(r.committed)),
                    ("end", Json::from(r.end)),
                    ("lag", Json::from(r.lag)),
                    ("member_id", Json::from(r.member.clone())),
                ])
            })
            .collect();
        return out.json(&Json::obj([
            ("group", Json::from(group)),
            ("state", Json::from(g.group_state.as_str())),
            ("protocol_type", Json::from(g.protocol_type.as_str())),
            ("protocol", Json::from(g.protocol_data.as_str())),
            ("members", Json::Arr(members_json)),
            ("offsets", Json::Arr(offsets)),
        ]));
    }
    let mut head = Table::new(&["GROUP", "STATE", "PROTOCOL", "MEMBERS"]);
    head.row(vec![
        group.to_string(),
        g.group_state.to_string(),
        if g.protocol_data.is_empty() {
            "-".into()
        } else {
            g.protocol_data.to_string()
        },
        members.len().to_string(),
    ]);
    let mut text = head.render();
    text.push('\n');
    if members.is_empty() {
        text.push_str("no active members\n");
    } else {
        let mut t = Table::new(&["MEMBER", "CLIENT-ID", "HOST", "PARTITIONS"]);
        for (m, a) in &members {
            t.row(vec![
                m.member_id.to_string(),
                m.client_id.to_string(),
                m.client_host.to_string(),
                partitions_text(a),
            ]);
        }
        text.push_str(&t.render());
    }
    text.push('\n');
    if rows.is_empty() {
        text.push_str("no committed offsets\n");
    } else {
        let mut t = Table::new(&["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "MEMBER"]);
        for r in &rows {
            t.row(vec![
                r.topic.clone(),
                r.partition.to_string(),
                cell(r.committed),
                cell(r.end),
                cell(r.lag),
                cell(r.member.clone()),
            ]);
        }
        text.push_str(&t.render());
    }
    out.text(&text)
}

/// `group delete`: deletes what it can, then reports every failure.
pub(crate) fn delete(client: &mut Client, out: &mut Out, groups: &[String]) -> Result<()> {
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for group in groups {
        let outcome = (|| -> Result<()> {
            let coordinator = client.coordinator(group)?;
            let (r, _) = client.broker(coordinator)?.call(
                |_| {
                    let mut req = DeleteGroupsRequest::default();
                    req.groups_names = vec![group_id(group)];
                    req
                },
                Duration::ZERO,
            )?;
            let result = r
                .results
                .into_iter()
                .find(|x| x.group_id.0.as_str() == group.as_str())
                .ok_or_else(|| {
                    ClientError::Protocol(format!("DeleteGroups did not answer for group {group}"))
                })?;
            if result.error_code != 0 {
                return Err(group_error(result.error_code, None, group));
            }
            Ok(())
        })();
        match outcome {
            Ok(()) => deleted.push(group.clone()),
            Err(e) => errors.push(e),
        }
    }
    if out.json {
        out.json(&Json::obj([("deleted", Json::arr(deleted.iter()))]))?;
    } else {
        for g in &deleted {
            out.text(&format!("deleted group {g}\n"))?;
        }
    }
    last_of(errors)
}

/// `group reset-offsets`: targets from ListOffsets, clamped to [earliest, latest]; committed
/// as an admin (generation -1, no member id), which the coordinator accepts only for a group
/// without members.
pub(crate) fn reset_offsets(client: &mut Client, out: &mut Out, args: &ResetArgs) -> Result<()> {
    let group = args.name.as_str();
    let topic = client.topic(&args.topic)?;
    let partitions: Vec<i32> = topic.partitions.iter().map(|p| p.index).collect();
    let earliest = client.list_offsets(&topic, &partitions, EARLIEST)?;
    let latest = client.list_offsets(&topic, &partitions, LATEST)?;
    let coordinator = client.coordinator(group)?;
    let wanted: Assignment = [(topic.name.clone(), partitions.clone())]
        .into_iter()
        .collect();
    let committed = fetch_offsets(client, coordinator, group, Some(&wanted))?;
    let current = |p: i32| {
        committed
            .get(&(topic.name.clone(), p))
            .copied()
            .filter(|o| *o >= 0)
    };
    let by_time = match args.target.to_datetime {
        Some(ts) => Some(client.list_offsets(&topic, &partitions, ts)?),
        None => None,
    };
    let mut plan = Vec::new();
    for &p in &partitions {
        let (Some(&lo), Some(&hi)) = (earliest.get(&p), latest.get(&p)) else {
            return Err(ClientError::Protocol(format!(
                "the leader of partition {p} of topic {} did not list its offsets",
                topic.name
            )));
        };
        let target = match &args.target {
            ResetTarget {
                to_earliest: true, ..
            } => lo,
            ResetTarget {
                to_latest: true, ..
            } => hi,
            ResetTarget {
                to_offset: Some(n), ..
            } => *n,
            ResetTarget {
                shift_by: Some(n), ..
            } => match current(p) {
                Some(c) => c.saturating_add(*n),
                None => {
                    return Err(ClientError::Invalid(format!(
                        "group {group} has no committed offset for partition {p} of topic {} to shift from",
                        topic.name
                    )));
                }
            },
            // No record at or after the time: everything is older, so skip it all.
            _ => by_time
                .as_ref()
                .and_then(|m| m.get(&p).copied())
                .filter(|o| *o >= 0)
                .unwrap_or(hi),
        };
        plan.push((p, current(p), target.clamp(lo, hi.max(lo))));
    }
    if !args.dry_run {
        let offsets: BTreeMap<TopicPartition, i64> = plan
            .iter()
            .map(|(p, _, n)| ((topic.name.clone(), *p), *n))
            .collect();
        let admin = Committer {
            generation: -1,
            member_id: "",
        };
        commit_offsets(client, coordinator, group, &admin, &offsets).map_err(|e| match e {
            CommitError::Refused { code, .. }
                if [
                    ResponseError::UnknownMemberId,
                    ResponseError::IllegalGeneration,
                    ResponseError::RebalanceInProgress,
                ]
                .iter()
                .any(|x| x.code() == code) =>
            {
                ClientError::kafka(code, None, || {
                    format!("group {group} has active members; stop its consumers before resetting its offsets")
                })
            }
            other => other.into(),
        })?;
    }
    if out.json {
        let offsets = plan
            .iter()
            .map(|(p, c, n)| {
                Json::obj([
                    ("partition", Json::from(*p)),
                    ("current", Json::from(*c)),
                    ("new", Json::from(*n)),
                ])
            })
            .collect();
        return out.json(&Json::obj([
            ("group", Json::from(group)),
            ("topic", Json::from(&topic.name)),
            ("dry_run", Json::from(args.dry_run)),
            ("offsets", Json::Arr(offsets)),
        ]));
    }
    let mut t = Table::new(&["TOPIC", "PARTITION", "CURRENT", "NEW"]);
    for (p, c, n) in &plan {
        t.row(vec![
            topic.name.clone(),
            p.to_string(),
            cell(*c),
            n.to_string(),
        ]);
    }
    let note = if args.dry_run {
        "dry run: nothing committed\n".to_string()
    } else {
        format!("committed the new offsets of group {group}\n")
    };
    out.text(&format!("{}{note}", t.render()))
}
