//! Property test: random interleavings of joins, syncs, heartbeats, leaves, commits, admin
//! requests, timer ticks, append completions (in any order, failing or not) and partition
//! unload/reload never panic, never leave the bookkeeping inconsistent, never answer a token
//! twice, and in the end answer every token exactly once.

use std::collections::HashMap;

use bytes::Bytes;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DescribeGroupsRequest, GroupId, ListGroupsRequest,
};
use proptest::prelude::*;

use crate::api::{Request, Response};
use crate::config::GroupConfig;
use crate::error::codes::*;
use crate::harness::*;

const CLIENTS: usize = 5;

#[derive(Debug, Clone)]
enum Op {
    Join {
        client: usize,
        version: i16,
        fresh: bool,
        alt_protocol: bool,
    },
    Sync {
        client: usize,
        stale: bool,
    },
    Heartbeat {
        client: usize,
    },
    Leave {
        client: usize,
        by_instance: bool,
    },
    Commit {
        client: usize,
        offset: i64,
    },
    Fetch {
        client: usize,
    },
    Admin {
        client: usize,
        kind: u8,
    },
    Tick {
        ms: i64,
    },
    Ack {
        which: usize,
        error: Option<i16>,
    },
    Reload {
        client: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let client = 0..CLIENTS;
    prop_oneof![
        4 => (client.clone(), prop::sample::select(vec![0i16, 3, 4, 5, 7, 9]), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(client, version, fresh, alt_protocol)| Op::Join { client, version, fresh, alt_protocol }),
        3 => (client.clone(), prop::bool::weighted(0.1)).prop_map(|(client, stale)| Op::Sync { client, stale }),
        3 => client.clone().prop_map(|client| Op::Heartbeat { client }),
        1 => (client.clone(), any::<bool>()).prop_map(|(client, by_instance)| Op::Leave { client, by_instance }),
        2 => (client.clone(), 0..1000i64).prop_map(|(client, offset)| Op::Commit { client, offset }),
        1 => client.clone().prop_map(|client| Op::Fetch { client }),
        1 => (client.clone(), 0..4u8).prop_map(|(client, kind)| Op::Admin { client, kind }),
        4 => prop::sample::select(vec![1i64, 100, 2_000, 3_000, 6_000, 11_000, 31_000, 300_001, 600_000])
            .prop_map(|ms| Op::Tick { ms }),
        4 => (any::<usize>(), prop::option::weighted(0.2, prop::sample::select(vec![6i16, 7, 19, 56, 10])))
            .prop_map(|(which, error)| Op::Ack { which, error }),
        1 => client.prop_map(|client| Op::Reload { client }),
    ]
}

/// What a simulated consumer knows.
#[derive(Debug, Default, Clone)]
struct Client {
    member_id: String,
    generation: i32,
    /// Member ids the leader learned from its JoinGroup answer.
    members: Vec<String>,
}

fn group_of(client: usize) -> String {
    format!("g{}", client % 2)
}

/// Clients 0 and 1 are static members.
fn instance_of(client: usize) -> Option<String> {
    (client < 2).then(|| format!("i{client}"))
}

struct Sim {
    h: Harness,
    clients: Vec<Client>,
    /// Tokens whose answers update a client.
    watch: HashMap<u64, usize>,
}

impl Sim {
    fn learn(&mut self) {
        let answered: Vec<u64> = self
            .watch
            .keys()
            .copied()
            .filter(|t| self.h.answered(*t))
            .collect();
        for t in answered {
            let client = self.watch.remove(&t).unwrap_or_default();
            let c = &mut self.clients[client];
            match self.h.response(t) {
                Response::JoinGroup(r) => match r.error_code {
                    NONE => {
                        c.member_id = r.member_id.to_string();
                        c.generation = r.generation_id;
                        c.members = r.members.iter().map(|m| m.member_id.to_string()).collect();
                    }
                    MEMBER_ID_REQUIRED => c.member_id = r.member_id.to_string(),
                    UNKNOWN_MEMBER_ID | FENCED_INSTANCE_ID => *c = Client::default(),
                    _ => {}
                },
                Response::Heartbeat(r) if r.error_code == UNKNOWN_MEMBER_ID => {
                    *c = Client::default()
                }
                _ => {}
            }
        }
    }

    fn apply(&mut self, op: Op) {
        // A consumer without a member id joins rather than heartbeats or syncs.
        let op = match op {
            Op::Sync { client, .. } | Op::Heartbeat { client }
                if self.clients[client].member_id.is_empty() =>
            {
                Op::Join {
                    client,
                    version: 5,
                    fresh: true,
                    alt_protocol: false,
                }
            }
            other => other,
        };
        match op {
            Op::Join {
                client,
                version,
                fresh,
                alt_protocol,
            } => {
                let instance = if version >= 5 {
                    instance_of(client)
                } else {
                    None
                };
                let member = if fresh {
                    String::new()
                } else {
                    self.clients[client].member_id.clone()
                };
                let mut protocols = vec![("range", subscription(&["t", "u"]))];
                if alt_protocol {
                    protocols.insert(0, ("roundrobin", Bytes::from_static(b"garbage metadata")));
                }
                let t = self.h.join(
                    version,
                    &group_of(client),
                    &member,
                    instance.as_deref(),
                    &protocols,
                );
                self.watch.insert(t, client);
            }
            Op::Sync { client, stale } => {
                let c = self.clients[client].clone();
                let generation = if stale {
                    c.generation - 1
                } else {
                    c.generation
                };
                let assignments: Vec<(&str, &[u8])> = c
                    .members
                    .iter()
                    .map(|m| (m.as_str(), b"x" as &[u8]))
                    .collect();
                self.h
                    .sync(3, &group_of(client), &c.member_id, generation, &assignments);
            }
            Op::Heartbeat { client } => {
                let c = self.clients[client].clone();
                let code = self.h.heartbeat(
                    &group_of(client),
                    &c.member_id,
                    c.generation,
                    instance_of(client).as_deref(),
                );
                if code == UNKNOWN_MEMBER_ID {
                    self.clients[client] = Client::default();
                }
            }
            Op::Leave {
                client,
                by_instance,
            } => {
                let c = self.clients[client].clone();
                let instance = instance_of(client);
                let member = if by_instance && instance.is_some() {
                    ""
                } else {
                    c.member_id.as_str()
                };
                self.h
                    .leave_v3(&group_of(client), &[(member, instance.as_deref())]);
            }
            Op::Commit { client, offset } => {
                let c = self.clients[client].clone();
                let (member, generation) = if offset % 5 == 0 {
                    ("", -1)
                } else {
                    (c.member_id.as_str(), c.generation)
                };
                self.h.commit(
                    &group_of(client),
                    member,
                    generation,
                    &[("t", (offset % 3) as i32, offset, None)],
                );
            }
            Op::Fetch { client } => {
                self.h
                    .fetch_groups(&[(&group_of(client), None), ("g9", None)]);
            }
            Op::Admin { client, kind } => {
                let group = GroupId(s(&group_of(client)));
                let request = match kind {
                    0 => Request::ListGroups(ListGroupsRequest::default()),
                    1 => {
                        let mut r = DescribeGroupsRequest::default();
                        r.groups = vec![group];
                        Request::DescribeGroups(r)
                    }
                    2 => {
                        let mut r = DeleteGroupsRequest::default();
                        r.groups_names = vec![group, GroupId(s("g1"))];
                        Request::DeleteGroups(r)
                    }
                    _ => {
                        let mut r = kafka_protocol::messages::OffsetDeleteRequest::default();
                        r.group_id = group;
                        let mut t = kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestTopic::default();
                        t.name = kafka_protocol::messages::TopicName(s("t"));
                        t.partitions.push(Default::default());
                        r.topics.push(t);
                        Request::OffsetDelete(r)
                    }
                };
                let version = match kind {
                    0 => 5,
                    1 => 6,
                    2 => 2,
                    _ => 0,
                };
                self.h.send(version, request);
            }
            Op::Tick { ms } => self.h.advance(ms),
            Op::Ack { which, error } => {
                if !self.h.unacked.is_empty() {
                    // Any order: appends to different partitions complete independently.
                    let i = which % self.h.unacked.len();
                    let item = self.h.unacked.remove(i);
                    self.h.unacked.insert(0, item);
                    self.h.ack_next(error.map_or(Ok(()), Err));
                }
            }
            Op::Reload { client } => {
                let p = self.h.c.partition_for(&group_of(client));
                let effects = self.h.c.unload_partition(p);
                self.h.process(effects);
                let records = self.h.log.get(&p).cloned().unwrap_or_default();
                let iter = records.iter().map(|(k, v)| (k.as_ref(), v.as_deref()));
                let (effects, skipped) = self.h.c.load_partition(p, iter, self.h.now);
                assert!(
                    skipped.is_empty(),
                    "our own records always load: {skipped:?}"
                );
                self.h.process(effects);
            }
        }
        self.learn();
        self.h.c.check_invariants();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_token_gets_exactly_one_reply(ops in prop::collection::vec(op(), 1..200), delay in prop::sample::select(vec![0, 3_000])) {
        let mut h = Harness::new(GroupConfig {
            group_initial_rebalance_delay_ms: delay,
            group_max_size: 4,
            ..GroupConfig::default()
        });
        h.auto_ack = false;
        let mut sim = Sim { h, clients: vec![Client::default(); CLIENTS], watch: HashMap::new() };
        for op in ops {
            sim.apply(op);
        }
        // Drain: complete every write and let every deadline pass.
        for _ in 0..4 {
            sim.h.ack_all();
            let until = sim.h.now + 3_600_000;
            sim.h.run_until(until);
            sim.h.c.check_invariants();
        }
        sim.h.ack_all();
        if std::env::var("PROP_STATS").is_ok() {
            let mut stats: std::collections::BTreeMap<String, usize> = Default::default();
            for r in sim.h.replies.values() {
                let k = match r {
                    Response::JoinGroup(r) => format!("join {}", r.error_code),
                    Response::SyncGroup(r) => format!("sync {}", r.error_code),
                    Response::Heartbeat(r) => format!("hb {}", r.error_code),
                    Response::OffsetCommit(r) => format!("commit {:?}", r.topics.first().map(|t| t.partitions[0].error_code)),
                    other => format!("{:?}", std::mem::discriminant(other)),
                };
                *stats.entry(k).or_default() += 1;
            }
            eprintln!("{stats:?}");
        }
        prop_assert!(sim.h.outstanding.is_empty(), "unanswered tokens: {:?}", sim.h.outstanding);
        prop_assert!(sim.h.c.appends.is_empty());
        prop_assert!(sim.h.c.delete_batches.is_empty());
    }
}
