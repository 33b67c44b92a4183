//! Throughput of the replication layer alone: one partition's Raft group with N members on
//! 127.0.0.1..N in this process, over the real TCP transport and segment logs on disk, written
//! by W concurrent writers (each waits for its batch to commit before the next). No Kafka
//! protocol, no broker: what replication costs before the broker adds its own.
//!
//! `raft_probe [members] [records-per-batch] [writers] [batches] [record-bytes] [dir] [flush]`
//! (defaults 3 1000 32 8000 100, a temporary directory under `.`, and `fsync`; `lazy` sets
//! `flush.messages` so high that appends count as durable once written, Kafka's default trade).
//! Prints msgs/s, MB/s, commit latency percentiles and the process's CPU time.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::{Raft, ServerState};
use sluice_protocol::records::{NewRecord, ProducerInfo, build_batch};
use sluice_replication::raft::transport::{GroupNetwork, Peers, RaftServer};
use sluice_replication::raft::{
    CommitMachine, PartitionRaft, RecordBatch, SegmentRaftLog, partition_config,
};
use sluice_storage::{LogConfig, PartitionLog};
use tokio::net::TcpListener;

fn arg<T: std::str::FromStr>(n: usize, default: T) -> T {
    std::env::args()
        .nth(n)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; after the ")" they are the 12th and 13th.
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let members: u64 = arg(1, 3);
    let per_batch: usize = arg(2, 1000);
    let writers: usize = arg(3, 32).max(1);
    let batches: usize = arg(4, 8000);
    let record_bytes: usize = arg(5, 100);
    let tmp = tempfile::tempdir_in(std::env::args().nth(6).unwrap_or_else(|| ".".into()))
        .expect("temporary directory");
    let lazy = std::env::args().nth(7).is_some_and(|a| a == "lazy");
    let log_config = LogConfig {
        flush_messages: if lazy { u64::MAX } else { 1 },
        ..LogConfig::default()
    };

    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for i in 1..=members {
        let l = TcpListener::bind(format!("127.0.0.{i}:0"))
            .await
            .expect("bind");
        addrs.push(l.local_addr().expect("addr"));
        listeners.push(l);
    }
    let voters: BTreeSet<u64> = (1..=members).collect();
    let mut rafts: Vec<Raft<PartitionRaft>> = Vec::new();
    let mut logs = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let peers = Arc::new(Peers::default());
        for (j, a) in addrs.iter().enumerate() {
            peers.set(j as u64 + 1, *a);
        }
        let log = Arc::new(
            PartitionLog::open(
                &tmp.path().join(format!("node-{id}/bench-0")),
                "bench",
                0,
                log_config.clone(),
            )
            .expect("open log"),
        );
        let store = SegmentRaftLog::open(Arc::clone(&log)).expect("raft log");
        let sm = CommitMachine::open(&store);
        let config = partition_config("bench-0", Duration::from_millis(100)).expect("config");
        let network = GroupNetwork::new(peers, "bench-0");
        let raft = Raft::new(id, Arc::new(config), network, store.for_raft_core(), sm)
            .await
            .expect("raft");
        let server = RaftServer::default();
        server.register("bench-0", raft.clone());
        tokio::spawn(server.serve(listener));
        raft.initialize(voters.clone()).await.ok();
        rafts.push(raft);
        logs.push(log);
    }
    let m = rafts[0]
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.current_leader.is_some(), "leader")
        .await
        .expect("a leader");
    let leader = rafts[m.current_leader.expect("leader") as usize - 1].clone();
    leader
        .wait(Some(Duration::from_secs(30)))
        .state(ServerState::Leader, "leader")
        .await
        .expect("leader state");

    let value = vec![b'x'; record_bytes];
    let records: Vec<NewRecord<'_>> = (0..per_batch)
        .map(|_| NewRecord {
            value: Some(&value),
            timestamp: 1_700_000_000_000,
            ..NewRecord::default()
        })
        .collect();
    let batch = Bytes::from(build_batch(&records, ProducerInfo::NONE));
    let per_writer = batches.div_ceil(writers);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let raft = leader.clone();
        let b = batch.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_writer);
            for _ in 0..per_writer {
                let t = Instant::now();
                raft.client_write(RecordBatch(b.clone()))
                    .await
                    .expect("write");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("writer"));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    lat.sort();
    let pct = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)].as_secs_f64() * 1e3;
    let msgs = (lat.len() * per_batch) as f64;
    println!(
        "members {members}, {per_batch} x {record_bytes} B per batch, {writers} writers, {} batches{}: \
         {:.0} msgs/s, {:.1} MB/s, commit p50 {:.2} ms p99 {:.2} ms, CPU {:.2} s ({:.3} us/msg)",
        lat.len(),
        if lazy { ", lazy flush" } else { "" },
        msgs / elapsed,
        msgs * record_bytes as f64 / elapsed / 1e6,
        pct(50),
        pct(99),
        cpu,
        cpu / msgs * 1e6
    );
    for r in rafts {
        r.shutdown().await.ok();
    }
    for l in logs {
        l.close().ok();
    }
}
