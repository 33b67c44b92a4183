//! Three replicas of one partition, each an openraft group member over its own segment log,
//! wired by an in-memory network that can cut nodes off: committed batches land at the same
//! offsets with the same bytes everywhere, a new leader's batches carry its term as their
//! epoch, a restarted replica catches up, and a deposed leader's uncommitted batches are cut.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{EmptyNode, Raft, RaftNetwork, RaftNetworkFactory, ServerState};
use sluice_replication::raft::{PartitionRaft, RecordBatch};
use sluice_storage::PartitionLog;

mod common;
use common::{WAIT, batch, last_index, log_errors, open_member, stored, wait_applied, write};

/// Who can reach whom: a node in `isolated` neither sends nor receives.
#[derive(Default)]
struct Router {
    nodes: Mutex<BTreeMap<u64, Raft<PartitionRaft>>>,
    isolated: Mutex<BTreeSet<u64>>,
}

impl Router {
    fn target(&self, from: u64, to: u64) -> Result<Raft<PartitionRaft>, NetworkError> {
        let isolated = self.isolated.lock().expect("lock");
        if isolated.contains(&from) || isolated.contains(&to) {
            return Err(NetworkError::new(&io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("{from} -> {to} is cut"),
            )));
        }
        self.nodes
            .lock()
            .expect("lock")
            .get(&to)
            .cloned()
            .ok_or_else(|| {
                NetworkError::new(&io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("node {to} is down"),
                ))
            })
    }
}

struct Factory {
    router: Arc<Router>,
    from: u64,
}

struct Conn {
    router: Arc<Router>,
    from: u64,
    to: u64,
}

impl RaftNetworkFactory<PartitionRaft> for Factory {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, _node: &EmptyNode) -> Conn {
        Conn {
            router: Arc::clone(&self.router),
            from: self.from,
            to: target,
        }
    }
}

impl RaftNetwork<PartitionRaft> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<PartitionRaft>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, EmptyNode, RaftError<u64>>> {
        let target = self.router.target(self.from, self.to)?;
        target
            .append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<PartitionRaft>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, EmptyNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let target = self.router.target(self.from, self.to)?;
        target
            .install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, EmptyNode, RaftError<u64>>> {
        let target = self.router.target(self.from, self.to)?;
        target
            .vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }
}

/// One replica: its partition log and its Raft member.
struct Replica {
    log: Arc<PartitionLog>,
    raft: Raft<PartitionRaft>,
}

fn replica_dir(root: &Path, id: u64) -> PathBuf {
    root.join(format!("node-{id}")).join("orders-0")
}

async fn start(router: &Arc<Router>, root: &Path, id: u64) -> Replica {
    let network = Factory {
        router: Arc::clone(router),
        from: id,
    };
    let (log, raft) = open_member(&replica_dir(root, id), "orders-0", id, network).await;
    router.nodes.lock().expect("lock").insert(id, raft.clone());
    Replica { log, raft }
}

async fn stop(router: &Router, replica: Replica) {
    router
        .nodes
        .lock()
        .expect("lock")
        .remove(&replica.raft.metrics().borrow().id);
    replica.raft.shutdown().await.expect("shutdown");
    replica.log.close().expect("close");
}

/// Replicas 1-3 of one group, initialized.
async fn three_replicas(router: &Arc<Router>, root: &Path) -> BTreeMap<u64, Replica> {
    let mut replicas = BTreeMap::new();
    for id in 1..=3 {
        replicas.insert(id, start(router, root, id).await);
    }
    replicas[&1]
        .raft
        .initialize(BTreeSet::from([1, 2, 3]))
        .await
        .expect("initialize");
    replicas
}

async fn wait_leader(replicas: &BTreeMap<u64, Replica>, not: Option<u64>) -> (u64, u64) {
    let any = replicas.values().next().expect("a replica");
    let m = any
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.current_leader.is_some() && m.current_leader != not,
            "a leader is elected",
        )
        .await
        .expect("leader");
    let leader = m.current_leader.expect("leader");
    let term = replicas[&leader]
        .raft
        .wait(Some(WAIT))
        .state(ServerState::Leader, "leader state")
        .await
        .expect("leader state")
        .current_term;
    (leader, term)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_batches_are_identical_on_every_replica_across_leader_changes() {
    log_errors();
    let root = tempfile::tempdir().expect("tempdir");
    let router = Arc::new(Router::default());
    let mut replicas = three_replicas(&router, root.path()).await;
    let (leader, term) = wait_leader(&replicas, None).await;

    // Offsets follow each other batch after batch, whatever the batch sizes.
    let mut next = 0;
    for tag in 0..40u64 {
        let records = 1 + (tag as usize * 7) % 13;
        let a = write(&replicas[&leader].raft, tag, records).await;
        assert_eq!(
            (a.base_offset, a.last_offset),
            (next, next + records as i64 - 1)
        );
        next += records as i64;
    }
    let index = last_index(&replicas[&leader].raft);
    for r in replicas.values() {
        wait_applied(&r.raft, index).await;
        assert_eq!(r.log.log_end_offset(), next);
        assert_eq!(r.log.high_watermark(), next, "high watermark is the commit");
    }
    let first = stored(&replicas[&leader].log);
    assert_eq!(first.len(), 40);
    assert!(first.iter().all(|(_, epoch, _)| *epoch as u64 == term));
    for r in replicas.values() {
        assert_eq!(stored(&r.log), first, "replicas hold the same bytes");
    }

    // The leader goes away; the other two elect a new one, whose batches carry its term.
    let old = replicas.remove(&leader).expect("leader replica");
    stop(&router, old).await;
    let (leader2, term2) = wait_leader(&replicas, Some(leader)).await;
    assert!(term2 > term, "a new leader has a higher term");
    for tag in 40..60u64 {
        let a = write(&replicas[&leader2].raft, tag, 3).await;
        assert_eq!(a.base_offset, next);
        next += 3;
    }

    // The old leader comes back from its files and catches up to the same bytes.
    replicas.insert(leader, start(&router, root.path(), leader).await);
    let index = last_index(&replicas[&leader2].raft);
    for r in replicas.values() {
        wait_applied(&r.raft, index).await;
    }
    let all = stored(&replicas[&leader2].log);
    assert_eq!(all.len(), 60);
    assert_eq!(&all[..40], &first[..]);
    assert!(all[40..].iter().all(|(_, epoch, _)| *epoch as u64 == term2));
    for r in replicas.values() {
        assert_eq!(stored(&r.log), all, "replicas hold the same bytes");
        assert_eq!(r.log.high_watermark(), next);
    }
    for (_, r) in replicas {
        stop(&router, r).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_uncommitted_batches_are_cut_and_replaced() {
    log_errors();
    let root = tempfile::tempdir().expect("tempdir");
    let router = Arc::new(Router::default());
    let replicas = three_replicas(&router, root.path()).await;
    let (leader, _) = wait_leader(&replicas, None).await;
    for tag in 0..5u64 {
        write(&replicas[&leader].raft, tag, 2).await;
    }
    let committed_end = 10;
    let index = last_index(&replicas[&leader].raft);
    for r in replicas.values() {
        wait_applied(&r.raft, index).await;
    }

    // Cut the leader off, then hand it writes it can append but never commit.
    router.isolated.lock().expect("lock").insert(leader);
    let cut_off = replicas[&leader].raft.clone();
    let mut pending = Vec::new();
    for tag in 100..103u64 {
        let raft = cut_off.clone();
        pending.push(tokio::spawn(async move {
            raft.client_write(RecordBatch(batch(tag, 4))).await
        }));
    }
    replicas[&leader]
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.last_log_index.is_some_and(|i| i >= index + 3),
            "the cut-off leader appended",
        )
        .await
        .expect("appended");
    assert_eq!(replicas[&leader].log.log_end_offset(), committed_end + 12);
    assert_eq!(
        replicas[&leader].log.high_watermark(),
        committed_end,
        "uncommitted batches stay above the high watermark"
    );

    // The other two elect a leader and commit different batches at those offsets.
    let others: BTreeMap<u64, &Replica> = replicas
        .iter()
        .filter(|(id, _)| **id != leader)
        .map(|(id, r)| (*id, r))
        .collect();
    let any = others.values().next().expect("other");
    let m = any
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != leader),
            "a new leader among the others",
        )
        .await
        .expect("new leader");
    let leader2 = m.current_leader.expect("leader");
    others[&leader2]
        .raft
        .wait(Some(WAIT))
        .state(ServerState::Leader, "leader state")
        .await
        .expect("leader");
    for tag in 200..204u64 {
        let a = write(&others[&leader2].raft, tag, 1).await;
        assert!(a.base_offset >= committed_end);
    }

    // Heal: the deposed leader's three batches are cut and the new ones copied in their place.
    router.isolated.lock().expect("lock").clear();
    let index = last_index(&others[&leader2].raft);
    for r in replicas.values() {
        wait_applied(&r.raft, index).await;
    }
    let want = stored(&others[&leader2].log);
    for r in replicas.values() {
        assert_eq!(
            stored(&r.log),
            want,
            "replicas converge on the committed log"
        );
    }
    assert_eq!(want.len(), 9);
    assert!(
        want.iter()
            .all(|(_, _, b)| !String::from_utf8_lossy(b).contains("batch-10")),
        "no uncommitted batch of the deposed leader survives"
    );
    for p in pending {
        let result = p.await.expect("join");
        assert!(
            result.is_err(),
            "an uncommitted write is never acknowledged"
        );
    }
    for (_, r) in replicas {
        stop(&router, r).await;
    }
}
