//! Crash test in the style of sled's `tests/test_crash_recovery.rs`: this test binary re-runs
//! itself as a child (switched by an environment variable) that appends numbered batches with
//! `flush.messages=1` and prints each offset once `wait_durable` says it is on disk. The parent
//! SIGKILLs the child at a random point, reopens the log and checks that every acknowledged
//! batch is there, intact and in order, that offsets are contiguous and that nothing
//! half-written is visible.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{all_batches, batch_of};
use sluice_storage::{LogConfig, PartitionLog};

const CHILD_ENV: &str = "SLUICE_STORAGE_CRASH_CHILD_DIR";
const ROUNDS: usize = 20;

fn config() -> LogConfig {
    // Small segments so kills also land around rolls and their checkpoints.
    LogConfig {
        segment_bytes: 32 * 1024,
        index_interval_bytes: 512,
        ..LogConfig::default()
    }
}

fn seq_of(value: &[u8]) -> u64 {
    let s = String::from_utf8_lossy(value);
    s.split(':')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

/// The child: appends until killed. Does nothing in a normal test run.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let log = PartitionLog::open(Path::new(&dir), "crash", 0, config()).expect("child open");
    let first = all_batches(&log, 0).len() as u64;
    let mut out = std::io::stdout().lock();
    for seq in first..first + 1_000_000 {
        let records = 1 + (seq % 4) as usize;
        let o = log
            .append(
                batch_of(records, 20 + (seq % 7) as usize * 30, seq, seq as i64),
                0,
                0,
            )
            .expect("child append");
        log.wait_durable_blocking(o.last_offset + 1)
            .expect("child durable");
        use std::io::Write;
        writeln!(out, "ACK {seq} {} {}", o.base_offset, o.last_offset).expect("stdout");
        out.flush().expect("stdout");
    }
}

#[test]
fn acknowledged_batches_survive_sigkill() {
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
    println!("crash test seed {seed} (rerun with SLUICE_CRASH_SEED={seed})");
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut acked_total = 0u64;
    for round in 0..ROUNDS {
        // Kill after a random number of acknowledgements (0 means right away).
        let kill_after = next() % 150;
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
                let parts: Vec<&str> = line.split_whitespace().collect();
                if parts.len() == 4 && parts[0] == "ACK" {
                    let parsed = (parts[1].parse(), parts[2].parse(), parts[3].parse());
                    if let (Ok(s), Ok(b), Ok(l)) = parsed
                        && tx.send((s, b, l)).is_err()
                    {
                        break;
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut acked = Vec::new();
        while (acked.len() as u64) < kill_after {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(a) => acked.push(a),
                Err(_) => break,
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "seed {seed} round {round}: child exited by itself ({status}) after {} acks",
                acked.len()
            );
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        // Acknowledgements already in the pipe when the child died count too.
        reader.join().expect("reader");
        acked.extend(rx.try_iter());
        assert!(
            acked.len() as u64 >= kill_after,
            "seed {seed} round {round}: only {} of {kill_after} acks within the deadline",
            acked.len()
        );

        let log = PartitionLog::open(dir.path(), "crash", 0, config()).expect("parent reopen");
        let batches = all_batches(&log, 0);
        let mut expected_offset = 0;
        for (i, (base, last, value)) in batches.iter().enumerate() {
            assert_eq!(
                *base, expected_offset,
                "seed {seed} round {round}: offsets contiguous"
            );
            assert_eq!(
                seq_of(value),
                i as u64,
                "seed {seed} round {round}: batch {i} in order and intact"
            );
            expected_offset = last + 1;
        }
        assert_eq!(
            log.log_end_offset(),
            expected_offset,
            "seed {seed} round {round}: nothing past the last whole batch"
        );
        for (seq, base, last) in &acked {
            let (b, l, v) = batches.get(*seq as usize).unwrap_or_else(|| {
                panic!("seed {seed} round {round}: acknowledged batch {seq} lost")
            });
            assert_eq!(
                (*b, *l, seq_of(v)),
                (*base, *last, *seq),
                "seed {seed} round {round}: acknowledged batch {seq} changed"
            );
        }
        acked_total += acked.len() as u64;
        drop(log);
    }
    assert!(acked_total > 0, "the children acknowledged something");
    println!("crash test: {ROUNDS} rounds, {acked_total} acknowledged batches checked");
}
