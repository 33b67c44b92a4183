//! Three nodes on 127.0.0.1-3, each serving two partition groups over one TCP connection per
//! peer: writes commit on every replica of both groups, a node killed mid-stream (its server,
//! connections and Raft members gone) comes back from its files and catches up, and garbage or
//! an oversized frame on the Raft port closes only that connection.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Raft, ServerState};
use sluice_replication::raft::transport::{GroupNetwork, RaftServer};
use sluice_replication::raft::{
    CommitMachine, PartitionRaft, SegmentRaftLog, partition_config_with,
};
use sluice_storage::{LogConfig, PartitionLog};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

mod common;
use common::{
    WAIT, bind_local, last_index, log_errors, open_member, peers, stored, wait_applied, write,
};

const GROUPS: [&str; 2] = ["orders-0", "orders-1"];

/// One node: a Raft port and a member of every group.
struct Node {
    server: JoinHandle<()>,
    members: Vec<(Arc<PartitionLog>, Raft<PartitionRaft>)>,
}

async fn start(root: &Path, id: u64, listener: TcpListener, addrs: &[SocketAddr]) -> Node {
    start_with(root, id, listener, addrs, &GROUPS, None).await
}

/// A node serving `groups`; with `snapshots` = (every, kept), members snapshot and purge that
/// often and copy what a snapshot names from the leader when they fell behind.
async fn start_with(
    root: &Path,
    id: u64,
    listener: TcpListener,
    addrs: &[SocketAddr],
    groups: &[&str],
    snapshots: Option<(u64, u64)>,
) -> Node {
    let peers = peers(addrs);
    let server = RaftServer::default();
    let mut members = Vec::new();
    for group in groups {
        let dir = root.join(format!("node-{id}")).join(group);
        let network = GroupNetwork::new(Arc::clone(&peers), group);
        let (log, raft) = match snapshots {
            None => open_member(&dir, group, id, network).await,
            Some((every, kept)) => {
                let log = Arc::new(
                    PartitionLog::open(&dir, "orders", 0, LogConfig::default()).expect("open log"),
                );
                let store = SegmentRaftLog::open(Arc::clone(&log)).expect("raft log");
                let sm = CommitMachine::open(&store).with_catch_up(Arc::new(network.clone()));
                let config = partition_config_with(group, Duration::from_millis(50), every, kept)
                    .expect("config");
                let raft = Raft::new(id, Arc::new(config), network, store.for_raft_core(), sm)
                    .await
                    .expect("raft");
                (log, raft)
            }
        };
        server.register(group, raft.clone());
        server.register_log(group, Arc::clone(&log));
        members.push((log, raft));
    }
    Node {
        server: tokio::spawn(server.serve(listener)),
        members,
    }
}

/// Everything of the node stops: its port, its connections, its Raft members.
async fn kill(node: Node) {
    node.server.abort();
    let _ = node.server.await;
    for (log, raft) in node.members {
        raft.shutdown().await.expect("shutdown");
        log.close().expect("close");
    }
}

/// The leader of `group` once every live node follows it in the same term. A restarted node
/// may briefly claim the leadership its persisted vote gave it; that claim is not accepted.
async fn leader_of(nodes: &[Option<Node>], group: usize) -> Raft<PartitionRaft> {
    let live: Vec<Raft<PartitionRaft>> = nodes
        .iter()
        .flatten()
        .map(|n| n.members[group].1.clone())
        .collect();
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "no stable leader of {}",
            GROUPS[group]
        );
        let mut claims = Vec::new();
        for raft in &live {
            let m = raft.metrics().borrow().clone();
            if m.state == ServerState::Leader {
                claims.push((m.current_term, m.id, raft.clone()));
            }
        }
        claims.sort_by_key(|(term, id, _)| (*term, *id));
        if let Some((term, id, leader)) = claims.pop() {
            let mut agreed = true;
            for raft in &live {
                let ok = raft
                    .wait(Some(Duration::from_secs(2)))
                    .metrics(
                        |m| m.current_leader == Some(id) && m.current_term == term,
                        "following the leader",
                    )
                    .await;
                agreed &= ok.is_ok();
            }
            if agreed && leader.metrics().borrow().state == ServerState::Leader {
                return leader;
            }
        } else {
            // Nobody leads yet: wait for the first node's metrics to change.
            let _ = live[0]
                .wait(Some(Duration::from_secs(2)))
                .metrics(|m| m.current_leader.is_some(), "an election")
                .await;
        }
    }
}

async fn converged(nodes: &[Option<Node>], group: usize, leader: &Raft<PartitionRaft>) {
    let index = last_index(leader);
    let mut want = None;
    for n in nodes.iter().flatten() {
        let (log, raft) = &n.members[group];
        wait_applied(raft, index).await;
        let have = stored(log);
        match &want {
            None => want = Some(have),
            Some(w) => {
                let brief = |v: &Vec<(i64, i32, Vec<u8>)>| {
                    v.iter()
                        .map(|(o, e, b)| (*o, *e, b.len()))
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    brief(&have),
                    brief(w),
                    "replicas of {} differ",
                    GROUPS[group]
                );
                assert_eq!(&have, w, "replicas of {} differ", GROUPS[group]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_share_peer_connections_and_survive_a_node_restart() {
    log_errors();
    let root = tempfile::tempdir().expect("tempdir");
    let (listeners, addrs) = bind_local(3).await;
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        nodes.push(Some(start(root.path(), i as u64 + 1, l, &addrs).await));
    }
    // Each group is started from a different node.
    for (g, node) in nodes.iter().enumerate().take(GROUPS.len()) {
        node.as_ref().expect("node").members[g]
            .1
            .initialize(BTreeSet::from([1, 2, 3]))
            .await
            .expect("initialize");
    }

    let mut ends = [0i64; 2];
    for (g, end) in ends.iter_mut().enumerate() {
        let leader = leader_of(&nodes, g).await;
        for tag in 0..30u64 {
            let a = write(&leader, tag, 5).await;
            assert_eq!(a.base_offset, *end);
            *end += 5;
        }
        converged(&nodes, g, &leader).await;
    }

    // Garbage, then a length prefix past the limit: each closes its own connection only.
    for junk in [&b"\x00\x00\x00\x05hello"[..], &b"\xff\xff\xff\xff"[..]] {
        let mut s = TcpStream::connect(addrs[0]).await.expect("connect");
        s.write_all(junk).await.expect("write");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("the node closes the connection")
            .unwrap_or(0);
        assert_eq!(n, 0, "no answer to garbage, just a close");
    }

    // Kill the leader of group 0 and keep writing to both groups.
    let leader0 = leader_of(&nodes, 0).await;
    let victim = leader0.metrics().borrow().id as usize;
    kill(nodes[victim - 1].take().expect("victim")).await;
    for (g, end) in ends.iter_mut().enumerate() {
        let leader = leader_of(&nodes, g).await;
        for tag in 100..120u64 {
            let a = write(&leader, tag, 2).await;
            assert_eq!(a.base_offset, *end);
            *end += 2;
        }
    }

    // It comes back on the same address, from its files, and catches up on both groups.
    let listener = TcpListener::bind(addrs[victim - 1]).await.expect("rebind");
    nodes[victim - 1] = Some(start(root.path(), victim as u64, listener, &addrs).await);
    for (g, end) in ends.iter().enumerate() {
        let leader = leader_of(&nodes, g).await;
        converged(&nodes, g, &leader).await;
        for n in nodes.iter().flatten() {
            assert_eq!(n.members[g].0.high_watermark(), *end);
        }
    }
    for n in nodes.into_iter().flatten() {
        kill(n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_the_purged_entries_copies_them_from_the_leader() {
    log_errors();
    let root = tempfile::tempdir().expect("tempdir");
    let groups = ["orders-0"];
    let snapshots = Some((10, 5));
    let (listeners, addrs) = bind_local(3).await;
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        nodes.push(Some(
            start_with(root.path(), i as u64 + 1, l, &addrs, &groups, snapshots).await,
        ));
    }
    nodes[0].as_ref().expect("node").members[0]
        .1
        .initialize(BTreeSet::from([1, 2, 3]))
        .await
        .expect("initialize");
    let leader = leader_of(&nodes, 0).await;
    let mut end = 0;
    for tag in 0..10u64 {
        end = write(&leader, tag, 3).await.last_offset + 1;
    }
    converged(&nodes, 0, &leader).await;

    // A follower goes away while the leader snapshots and purges far past it.
    let leader_id = leader.metrics().borrow().id as usize;
    let follower = (1..=3).find(|i| *i != leader_id).expect("a follower");
    kill(nodes[follower - 1].take().expect("follower")).await;
    for tag in 10..70u64 {
        end = write(&leader, tag, 3).await.last_offset + 1;
    }
    let purged = leader
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index > 15),
            "the leader purged",
        )
        .await
        .expect("purged")
        .purged;

    // Back from its files, it is sent a snapshot, copies the records it names, and follows on;
    // after another restart it rebuilds the same log from what it copied.
    for (round, tags) in [70..75u64, 75..80].into_iter().enumerate() {
        if round > 0 {
            kill(nodes[follower - 1].take().expect("follower")).await;
        }
        let listener = TcpListener::bind(addrs[follower - 1])
            .await
            .expect("rebind");
        let node = start_with(
            root.path(),
            follower as u64,
            listener,
            &addrs,
            &groups,
            snapshots,
        );
        nodes[follower - 1] = Some(node.await);
        let leader = leader_of(&nodes, 0).await;
        for tag in tags {
            end = write(&leader, tag, 3).await.last_offset + 1;
        }
        converged(&nodes, 0, &leader).await;
        let back = nodes[follower - 1].as_ref().expect("follower");
        assert_eq!(back.members[0].0.high_watermark(), end);
        assert!(
            back.members[0].1.metrics().borrow().snapshot.is_some(),
            "the follower took a snapshot (the leader had purged up to {purged:?})"
        );
    }
    for n in nodes.into_iter().flatten() {
        kill(n).await;
    }
}
