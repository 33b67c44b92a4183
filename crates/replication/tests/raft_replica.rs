//! A partition's replicas in Kafka's terms, three nodes on 127.0.0.1-3 over TCP: the leader
//! appends and answers with offsets, a follower answers NOT_LEADER_OR_FOLLOWER naming the
//! leader, a bad batch is refused before it is proposed, and a follower that stops (on an idle
//! partition) leaves the ISR after `replica.lag.time.max.ms`, after which acks=all below
//! `min.insync.replicas` gets NOT_ENOUGH_REPLICAS while acks=1 still commits on the majority.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use sluice_replication::partition::Acks;
use sluice_replication::raft::replica::{RaftReplica, ReplicaError};
use sluice_replication::raft::transport::{GroupNetwork, RaftServer};
use sluice_storage::{LogConfig, PartitionLog};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

mod common;
use common::{WAIT, batch, bind_local, log_errors, peers};

const LAG_MAX: Duration = Duration::from_millis(500);

struct Node {
    replica: RaftReplica,
    server: JoinHandle<()>,
}

async fn start(root: &Path, id: u64, listener: TcpListener, addrs: &[SocketAddr]) -> Node {
    let peers = peers(addrs);
    let log = Arc::new(
        PartitionLog::open(
            &root.join(format!("node-{id}/orders-0")),
            "orders",
            0,
            LogConfig::default(),
        )
        .expect("open log"),
    );
    let replica = RaftReplica::start(
        id,
        &[1, 2, 3],
        log,
        GroupNetwork::new(peers, "orders-0"),
        Duration::from_millis(50),
        LAG_MAX,
    )
    .await
    .expect("start replica");
    let server = RaftServer::default();
    server.register("orders-0", replica.raft().clone());
    Node {
        replica,
        server: tokio::spawn(server.serve(listener)),
    }
}

async fn stop(node: Node) {
    node.server.abort();
    let _ = node.server.await;
    node.replica.shutdown().await.expect("shutdown");
    node.replica.log().close().expect("close");
}

/// The leader once it has committed in its term, and every node agrees on it.
async fn leader(nodes: &[Option<Node>]) -> usize {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no agreed leader");
        let live: Vec<&Node> = nodes.iter().flatten().collect();
        let leaders: Vec<Option<u64>> = live.iter().map(|n| n.replica.leader()).collect();
        if let Some(Some(l)) = leaders.first()
            && leaders.iter().all(|x| *x == Some(*l))
            && nodes[*l as usize - 1]
                .as_ref()
                .is_some_and(|n| n.replica.is_leader())
        {
            return *l as usize - 1;
        }
        let _ = live[0]
            .replica
            .raft()
            .wait(Some(Duration::from_millis(200)))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await;
    }
}

async fn isr_becomes(node: &Node, want: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut metrics = node.replica.raft().metrics();
    while node.replica.in_sync_replicas().len() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ISR stayed {:?}",
            node.replica.in_sync_replicas()
        );
        // The ISR is recomputed from metrics, which change with every heartbeat.
        let _ = tokio::time::timeout(Duration::from_millis(100), metrics.changed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_answer_in_kafkas_terms() {
    log_errors();
    let root = tempfile::tempdir().expect("tempdir");
    let (listeners, addrs) = bind_local(3).await;
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        nodes.push(Some(start(root.path(), i as u64 + 1, l, &addrs).await));
    }
    let l = leader(&nodes).await;
    let lead = &nodes[l].as_ref().expect("leader").replica;
    lead.set_min_insync_replicas(3);

    let a = lead.append(batch(1, 4), Acks::All).await.expect("append");
    assert_eq!((a.base_offset, a.last_offset), (0, 3));
    let term = lead.raft().metrics().borrow().current_term;
    assert_eq!(
        lead.leader_epoch() as u64,
        term,
        "the leader epoch is the term"
    );

    // A follower refuses, naming the leader.
    let f = (0..3).find(|i| *i != l).expect("a follower");
    let err = nodes[f]
        .as_ref()
        .expect("follower")
        .replica
        .append(batch(2, 1), Acks::All)
        .await
        .expect_err("a follower does not append");
    assert!(matches!(err, ReplicaError::NotLeader { leader: Some(x) } if x == l as u64 + 1));
    assert_eq!(err.error_code(), ResponseError::NotLeaderOrFollower.code());

    // A damaged batch never reaches the log.
    let mut bad = batch(3, 2).to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let err = lead
        .append(bad.into(), Acks::All)
        .await
        .expect_err("bad CRC refused");
    assert_eq!(err.error_code(), ResponseError::CorruptMessage.code());
    assert_eq!(lead.log().log_end_offset(), 4);

    // Everyone in sync; then a follower stops and, with nothing written meanwhile, drops out
    // after the lag bound because it stopped answering heartbeats.
    isr_becomes(nodes[l].as_ref().expect("leader"), 3).await;
    stop(nodes[f].take().expect("follower")).await;
    let lead_node = nodes[l].as_ref().expect("leader");
    isr_becomes(lead_node, 2).await;
    lead_node
        .replica
        .append(batch(4, 1), Acks::Leader)
        .await
        .expect("a majority still commits");
    let err = lead_node
        .replica
        .append(batch(5, 1), Acks::All)
        .await
        .expect_err("fewer in sync than min.insync.replicas");
    assert_eq!(err.error_code(), ResponseError::NotEnoughReplicas.code());
    let a = lead_node
        .replica
        .append(batch(6, 2), Acks::Leader)
        .await
        .expect("acks=1 commits on the majority");
    assert_eq!(a.base_offset, 5);
    lead_node.replica.set_min_insync_replicas(2);
    lead_node
        .replica
        .append(batch(7, 1), Acks::All)
        .await
        .expect("acks=all with min.insync.replicas=2");
    for n in nodes.into_iter().flatten() {
        stop(n).await;
    }
}
