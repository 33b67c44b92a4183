//! The Raft log across crashes. This test binary re-runs itself as a child (switched by an
//! environment variable) that runs a one-member Raft group over a partition log and prints
//! each batch's offsets once Raft has committed it. The parent SIGKILLs the child at a random
//! point, round after round: each restart adds a new term's blank entry (kept in `raft-state`)
//! among the batches, which is what the table rebuild must order correctly. After every kill it
//! reopens the log and checks that every committed batch is there, in order, at the offsets it
//! was acknowledged with, and that the restarted member continues the same log.
//!
//! A second test cuts the segment log under a stopped member, as recovery does with a torn
//! tail, and checks that the rebuilt Raft log ends where the batches end.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use openraft::{Raft, ServerState};
use sluice_replication::raft::PartitionRaft;
use sluice_storage::PartitionLog;

mod common;
use common::{NoNetwork, WAIT, open_member, stored, write};

const CHILD_ENV: &str = "SLUICE_RAFT_CRASH_CHILD_DIR";
const ROUNDS: usize = 8;

async fn start(dir: &Path) -> (Arc<PartitionLog>, Raft<PartitionRaft>) {
    let (log, raft) = open_member(dir, "crash-0", 1, NoNetwork).await;
    // Every replica may initialize; a group that exists says NotAllowed, which is fine.
    let _ = raft.initialize(BTreeSet::from([1])).await;
    raft.wait(Some(WAIT))
        .state(ServerState::Leader, "a one-member group leads")
        .await
        .expect("leader");
    (log, raft)
}

/// The child: commits batches until killed. Does nothing in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (log, raft) = start(Path::new(&dir)).await;
    let first = stored(&log).len() as u64;
    let mut out = std::io::stdout().lock();
    for seq in first..first + 1_000_000 {
        let a = write(&raft, seq, 1 + (seq % 3) as usize).await;
        writeln!(out, "ACK {seq} {} {}", a.base_offset, a.last_offset).expect("stdout");
        out.flush().expect("stdout");
    }
}

#[test]
fn committed_batches_survive_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let seed: u64 = std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let mut rng = seed;
    println!("raft crash test seed {seed} (rerun with SLUICE_CRASH_SEED={seed})");
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut acked: Vec<(u64, i64, i64)> = Vec::new();
    for round in 0..ROUNDS {
        let kill_after = next() % 60;
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<(u64, i64, i64)>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let p: Vec<&str> = line.split_whitespace().collect();
                if p.len() == 4
                    && p[0] == "ACK"
                    && let (Ok(s), Ok(b), Ok(l)) = (p[1].parse(), p[2].parse(), p[3].parse())
                    && tx.send((s, b, l)).is_err()
                {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = 0;
        while got < kill_after {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(a) => {
                    acked.push(a);
                    got += 1;
                }
                Err(_) => break,
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        reader.join().expect("reader");
        let late: Vec<_> = rx.try_iter().collect();
        got += late.len() as u64;
        acked.extend(late);
        assert!(
            got >= kill_after,
            "seed {seed} round {round}: only {got} of {kill_after} commits in time"
        );

        println!(
            "round {round}: killed after {got} commits ({} in all)",
            acked.len()
        );
        // Every acknowledged batch is where it was acknowledged, in order, intact.
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let (log, raft) = start(dir.path()).await;
            let batches = stored(&log);
            let mut by_base = std::collections::BTreeMap::new();
            for (base, _, bytes) in &batches {
                by_base.insert(*base, bytes.clone());
            }
            for (seq, base, _) in &acked {
                let bytes = by_base.get(base).unwrap_or_else(|| {
                    panic!("seed {seed} round {round}: batch {seq} at {base} is gone")
                });
                let tag = format!("batch-{seq}-record-0");
                assert!(
                    String::from_utf8_lossy(bytes).contains(&tag),
                    "seed {seed} round {round}: offset {base} holds another batch than {seq}"
                );
            }
            // Offsets are contiguous and the member continues the log.
            let mut end = 0;
            for (base, _, bytes) in &batches {
                assert_eq!(*base, end, "seed {seed} round {round}: a gap at {end}");
                let h = sluice_protocol::batch::BatchHeader::parse(bytes).expect("header");
                end = h.last_offset() + 1;
            }
            let a = write(&raft, 1_000_000 + round as u64, 1).await;
            assert_eq!(a.base_offset, end, "seed {seed} round {round}");
            raft.shutdown().await.expect("shutdown");
            log.close().expect("close");
        });
    }
    assert!(
        !acked.is_empty(),
        "seed {seed}: no commit in {ROUNDS} rounds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_segment_log_ends_the_raft_log_where_the_batches_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, raft) = start(dir.path()).await;
    for tag in 0..10u64 {
        write(&raft, tag, 2).await;
    }
    raft.shutdown().await.expect("shutdown");
    log.close().expect("close");
    // Restart twice so blank entries of later terms follow the batches...
    for _ in 0..2 {
        let (log, raft) = start(dir.path()).await;
        raft.shutdown().await.expect("shutdown");
        log.close().expect("close");
    }
    // ...then cut the last three batches, as recovery does with a torn tail.
    {
        let log = PartitionLog::open(dir.path(), "crash", 0, sluice_storage::LogConfig::default())
            .expect("open");
        log.truncate_to(14).expect("cut");
        log.close().expect("close");
    }
    let (log, raft) = start(dir.path()).await;
    let batches = stored(&log);
    assert_eq!(batches.len(), 7, "the cut batches stay gone");
    // Index 0 is the membership, 1 the first blank, 2..=8 the 7 batches left. The blank
    // entries that followed the cut batches went with them: what follows index 8 now is at
    // most this restart's own blank entry.
    let before = raft.metrics().borrow().last_log_index.expect("an index");
    assert!((8..=9).contains(&before), "last index {before}");
    let a = write(&raft, 99, 1).await;
    assert_eq!(
        a.base_offset, 14,
        "the member appends right after the last batch left"
    );
    assert_eq!(raft.metrics().borrow().last_log_index, Some(before + 1));
    assert_eq!(stored(&log).len(), 8);
    raft.shutdown().await.expect("shutdown");
    log.close().expect("close");
}
