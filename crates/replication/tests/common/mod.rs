//! Helpers the Raft replica tests share.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::{Raft, RaftNetworkFactory};
use sluice_protocol::batch::iter_batches;
use sluice_protocol::records::{NewRecord, ProducerInfo, build_batch};
use sluice_replication::raft::{
    Appended, CommitMachine, PartitionRaft, RecordBatch, SegmentRaftLog, partition_config,
};
use sluice_storage::{LogConfig, PartitionLog};

/// Binds one Raft port on each of 127.0.0.1..=n (ephemeral ports).
pub async fn bind_local(n: u8) -> (Vec<tokio::net::TcpListener>, Vec<std::net::SocketAddr>) {
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for i in 1..=n {
        let l = tokio::net::TcpListener::bind(format!("127.0.0.{i}:0"))
            .await
            .expect("bind");
        addrs.push(l.local_addr().expect("addr"));
        listeners.push(l);
    }
    (listeners, addrs)
}

/// Node i+1 at `addrs[i]`.
pub fn peers(addrs: &[std::net::SocketAddr]) -> Arc<sluice_replication::raft::transport::Peers> {
    let peers = Arc::new(sluice_replication::raft::transport::Peers::default());
    for (i, a) in addrs.iter().enumerate() {
        peers.set(i as u64 + 1, *a);
    }
    peers
}

/// How long a test waits for a condition (an election, replication) before it fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Opens the partition log in `dir` and starts a Raft member `id` of group `group` over it.
pub async fn open_member<N: RaftNetworkFactory<PartitionRaft>>(
    dir: &Path,
    group: &str,
    id: u64,
    network: N,
) -> (Arc<PartitionLog>, Raft<PartitionRaft>) {
    let (topic, partition) = group.rsplit_once('-').expect("<topic>-<partition>");
    let log = Arc::new(
        PartitionLog::open(
            dir,
            topic,
            partition.parse().expect("partition"),
            LogConfig::default(),
        )
        .expect("open partition log"),
    );
    let store = SegmentRaftLog::open(Arc::clone(&log)).expect("open raft log");
    let sm = CommitMachine::open(&store);
    let config = partition_config(group, Duration::from_millis(50)).expect("config");
    let raft = Raft::new(id, Arc::new(config), network, store.for_raft_core(), sm)
        .await
        .expect("raft");
    (log, raft)
}

/// openraft's errors, shown when a test fails (a storage error stops a Raft member).
pub fn log_errors() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "error".to_string()))
        .with_test_writer()
        .try_init();
}

pub fn batch(tag: u64, records: usize) -> Bytes {
    let values: Vec<Vec<u8>> = (0..records)
        .map(|i| format!("batch-{tag}-record-{i}").into_bytes())
        .collect();
    let recs: Vec<NewRecord<'_>> = values
        .iter()
        .map(|v| NewRecord {
            value: Some(v),
            timestamp: 1_700_000_000_000 + tag as i64,
            ..NewRecord::default()
        })
        .collect();
    Bytes::from(build_batch(&recs, ProducerInfo::NONE))
}

/// (base offset, epoch, bytes) of every stored batch.
pub fn stored(log: &PartitionLog) -> Vec<(i64, i32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        // One read returns batches of one segment at most.
        let r = log.read(offset, 1 << 20, i64::MAX, true).expect("read");
        if r.records.is_empty() {
            return out;
        }
        for b in iter_batches(&r.records) {
            let (h, bytes) = b.expect("batch");
            out.push((h.base_offset, h.partition_leader_epoch, bytes.to_vec()));
        }
        offset = r.next_offset;
    }
}

pub async fn write(raft: &Raft<PartitionRaft>, tag: u64, records: usize) -> Appended {
    raft.client_write(RecordBatch(batch(tag, records)))
        .await
        .expect("client_write")
        .data
        .expect("a data entry answers with offsets")
}

pub async fn wait_applied(raft: &Raft<PartitionRaft>, index: u64) {
    raft.wait(Some(WAIT))
        .metrics(
            |m| m.last_applied.is_some_and(|id| id.index >= index),
            format!("applied {index}"),
        )
        .await
        .expect("applied");
}

pub fn last_index(raft: &Raft<PartitionRaft>) -> u64 {
    raft.metrics()
        .borrow()
        .last_log_index
        .expect("a last log index")
}

/// A one-member group needs no network: openraft never calls it.
pub struct NoNetwork;

impl RaftNetworkFactory<PartitionRaft> for NoNetwork {
    type Network = Unreachable;

    async fn new_client(&mut self, _target: u64, _node: &openraft::EmptyNode) -> Self::Network {
        Unreachable
    }
}

/// A network that reaches nobody (one-member groups never use it).
pub struct Unreachable;

impl openraft::RaftNetwork<PartitionRaft> for Unreachable {
    async fn append_entries(
        &mut self,
        _rpc: openraft::raft::AppendEntriesRequest<PartitionRaft>,
        _option: openraft::network::RPCOption,
    ) -> Result<
        openraft::raft::AppendEntriesResponse<u64>,
        openraft::error::RPCError<u64, openraft::EmptyNode, openraft::error::RaftError<u64>>,
    > {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: openraft::raft::InstallSnapshotRequest<PartitionRaft>,
        _option: openraft::network::RPCOption,
    ) -> Result<
        openraft::raft::InstallSnapshotResponse<u64>,
        openraft::error::RPCError<
            u64,
            openraft::EmptyNode,
            openraft::error::RaftError<u64, openraft::error::InstallSnapshotError>,
        >,
    > {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: openraft::raft::VoteRequest<u64>,
        _option: openraft::network::RPCOption,
    ) -> Result<
        openraft::raft::VoteResponse<u64>,
        openraft::error::RPCError<u64, openraft::EmptyNode, openraft::error::RaftError<u64>>,
    > {
        Err(unreachable())
    }
}

fn unreachable<E: std::error::Error>() -> openraft::error::RPCError<u64, openraft::EmptyNode, E> {
    openraft::error::RPCError::Unreachable(openraft::error::Unreachable::new(
        &std::io::Error::other("no network"),
    ))
}
