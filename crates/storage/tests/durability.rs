//! Flush policy: group-committed fsync before `wait_durable` with `flush.messages=1`, and
//! policy-driven (or requested) flushes otherwise.

mod common;

use std::sync::Arc;

use common::{all_batches, batch_of};
use sluice_storage::{LogConfig, PartitionLog, StorageError};

/// A log that flushes only on request (or after 1000 messages), so a test decides when.
fn open_without_flush_per_append(dir: &std::path::Path) -> PartitionLog {
    let config = LogConfig {
        flush_messages: 1000,
        ..LogConfig::default()
    };
    PartitionLog::open(dir, "t", 0, config).expect("open")
}

#[test]
fn flush_messages_one_makes_every_append_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(PartitionLog::open(dir.path(), "t", 0, LogConfig::default()).expect("open"));
    assert!(log.config().sync_before_ack());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let out = log
                        .append(batch_of(2, 30, t * 1000 + i, 0), 0, 0)
                        .expect("append");
                    log.wait_durable_blocking(out.last_offset + 1)
                        .expect("durable");
                    assert!(log.durable_offset() > out.last_offset);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(log.durable_offset(), 400);
    assert_eq!(all_batches(&log, 0).len(), 200);
}

#[test]
fn larger_flush_messages_waits_for_the_policy_or_a_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        flush_messages: 10,
        flush_ms: 100,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(dir.path(), "t", 0, config).expect("open");
    assert!(!log.config().sync_before_ack());
    // Four messages: below flush.messages, so no flush was queued.
    log.append(batch_of(4, 10, 0, 0), 0, 1_000).expect("append");
    assert_eq!(log.durable_offset(), 0);
    // flush.ms has not passed yet...
    assert!(!log.flush_if_due(1_050));
    assert_eq!(log.durable_offset(), 0);
    // ...now it has.
    assert!(log.flush_if_due(1_100));
    log.wait_durable_blocking(4)
        .expect("durable after flush.ms");
    // Reaching flush.messages queues a flush by itself.
    log.append(batch_of(10, 10, 1, 0), 0, 2_000)
        .expect("append");
    log.wait_durable_blocking(14)
        .expect("durable after flush.messages");
    // An explicit request covers whatever is pending.
    log.append(batch_of(1, 10, 2, 0), 0, 3_000).expect("append");
    log.request_flush();
    log.wait_durable_blocking(15)
        .expect("durable after request");
}

#[test]
fn waiting_past_the_end_of_a_closed_log_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open_without_flush_per_append(dir.path());
    log.append(batch_of(1, 10, 0, 0), 0, 0).expect("append");
    log.close().expect("close");
    log.wait_durable_blocking(1)
        .expect("close flushed everything");
    assert!(matches!(
        log.wait_durable_blocking(2),
        Err(StorageError::Closed(_))
    ));
    assert_eq!(
        log.append(batch_of(1, 10, 0, 0), 0, 0)
            .map_err(|e| e.error_code())
            .err(),
        Some(56)
    );
}

#[test]
fn durable_callbacks_run_in_registration_order_and_fail_on_close() {
    use std::sync::mpsc;
    use std::time::Duration;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open_without_flush_per_append(dir.path());
    let (tx, rx) = mpsc::channel();
    let register = |offset: i64, name: &'static str| {
        let tx = tx.clone();
        log.when_durable(offset, move |r| {
            tx.send((name, r.map_err(|e| e.error_code())))
                .expect("send");
        });
    };
    log.append(batch_of(3, 10, 0, 0), 0, 0).expect("append");
    register(3, "end");
    // Lower offsets registered later (0 is durable already) still wait their turn.
    register(1, "middle");
    register(0, "start");
    assert_eq!(log.durable_callbacks_pending(), 3);
    assert!(rx.try_recv().is_err(), "nothing is durable yet");
    log.request_flush();
    let got: Vec<_> = (0..3)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("callback"))
        .collect();
    assert_eq!(
        got,
        [("end", Ok(())), ("middle", Ok(())), ("start", Ok(()))]
    );
    // Already durable with nothing queued: runs before `when_durable` returns.
    register(3, "now");
    assert_eq!(rx.try_recv().expect("ran at once"), ("now", Ok(())));
    register(4, "past the end");
    assert_eq!(log.durable_callbacks_pending(), 1);
    log.close().expect("close");
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).expect("callback"),
        ("past the end", Err(56)),
        "a closed log fails what it can no longer make durable"
    );
    assert_eq!(log.durable_callbacks_pending(), 0);
}

#[test]
fn high_watermark_follows_durability_only_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = PartitionLog::open(dir.path(), "t", 0, LogConfig::default()).expect("open");
    let out = log.append(batch_of(3, 10, 0, 0), 0, 0).expect("append");
    log.wait_durable_blocking(out.last_offset + 1)
        .expect("durable");
    // The caller owns the high watermark by default (Raft will set it to the commit index).
    assert_eq!(log.high_watermark(), 0);
    log.set_high_watermark_follows_durable(true);
    assert_eq!(
        log.high_watermark(),
        3,
        "catches up with what is already durable"
    );
    let out = log.append(batch_of(2, 10, 1, 0), 0, 0).expect("append");
    log.wait_durable_blocking(out.last_offset + 1)
        .expect("durable");
    // Set before durability is announced: an acknowledged write is already visible.
    assert_eq!(log.high_watermark(), 5);
}

/// Bytes of `path` in the page cache, as util-linux's `fincore` counts them.
fn cached_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("run fincore (util-linux)");
    assert!(out.status.success(), "fincore: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("fincore prints a byte count")
}

/// Bytes of the log's segments in `dir` in the page cache.
fn cached_in(dir: &std::path::Path) -> u64 {
    common::files(dir, "log")
        .iter()
        .map(|s| cached_bytes(s))
        .sum()
}

/// Writes 51.2 MB in batches of `records` 16 KB records (16: 200 batches of 256 KB), waits
/// until the fsync pass that made them durable has also dropped pages (it holds the flush
/// lock, which a checkpoint takes), and returns the log, the bytes written and the bytes of its
/// segments in the page cache.
fn write_and_measure(
    dir: &std::path::Path,
    config: LogConfig,
    records: usize,
    set: impl FnOnce(&PartitionLog),
) -> (PartitionLog, u64, u64) {
    let log = PartitionLog::open(dir, "t", 0, config).expect("open");
    set(&log);
    let mut end = 0;
    for i in 0..3200 / records {
        end = log
            .append(batch_of(records, 16_000, i as u64, 0), 0, 0)
            .expect("append")
            .last_offset
            + 1;
    }
    log.wait_durable_blocking(end).expect("durable");
    log.checkpoint_if_changed().expect("checkpoint");
    let segments = common::files(dir, "log");
    let size = segments
        .iter()
        .map(|s| std::fs::metadata(s).expect("segment").len())
        .sum();
    let cached = cached_in(dir);
    (log, size, cached)
}

/// One case of the page-cache test below.
struct CacheCase {
    what: &'static str,
    config: LogConfig,
    /// The leader's tail (`set_page_cache_tail`) and whether the log leads.
    tail: Option<u64>,
    leading: bool,
    /// Records of 16 KB per batch.
    records: usize,
    /// Bytes expected cached once durable: `None` for "most of them".
    kept: Option<u64>,
    /// Bytes at most cached after reading the log from the start (`None`: not checked).
    after_read: Option<u64>,
}

#[test]
fn a_log_keeps_its_newest_bytes_cached_and_gives_back_the_rest_once_durable() {
    const MIB: u64 = 1 << 20;
    // The kernel may fail to drop a page that is busy at that moment; a few per segment.
    const SLACK: u64 = MIB;
    // What a reader behind the tail read leaves the page cache again, give or take the 1 MiB
    // read that straddles the tail's start.
    const READ_SLACK: u64 = 2 * MIB;
    let follower_tail = sluice_storage::FOLLOWER_CACHE_TAIL;
    let one_segment = LogConfig::default();
    let segments_of_8_mib = LogConfig {
        segment_bytes: 8 * MIB,
        ..LogConfig::default()
    };
    let cases = [
        // Nothing asks the kernel to drop pages, and memory is not short.
        CacheCase {
            what: "leader, no tail",
            config: one_segment.clone(),
            tail: None,
            leading: true,
            records: 16,
            kept: None,
            after_read: None,
        },
        CacheCase {
            what: "leader, 12 MiB tail",
            config: one_segment.clone(),
            tail: Some(12 * MIB),
            leading: true,
            records: 16,
            kept: Some(12 * MIB),
            after_read: Some(12 * MIB + READ_SLACK),
        },
        // A follower's batches under 64 KiB go through the page cache; it keeps the tail it
        // would serve from as a new leader, tail or not.
        CacheCase {
            what: "follower, 48 KB batches",
            config: one_segment.clone(),
            tail: None,
            leading: false,
            records: 3,
            kept: Some(follower_tail),
            after_read: Some(follower_tail + READ_SLACK),
        },
        // Larger ones are written with direct I/O and never cached; reading them back caches
        // the follower's tail as above.
        CacheCase {
            what: "follower, 256 KB batches",
            config: one_segment,
            tail: None,
            leading: false,
            records: 16,
            kept: Some(0),
            after_read: Some(follower_tail + READ_SLACK),
        },
        // The tail spans segments; sealed segments behind it are dropped whole.
        CacheCase {
            what: "leader, 12 MiB tail over 8 MiB segments",
            config: segments_of_8_mib,
            tail: Some(12 * MIB),
            leading: true,
            records: 16,
            kept: Some(12 * MIB),
            after_read: Some(12 * MIB + READ_SLACK),
        },
    ];
    for c in cases {
        let what = c.what;
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, size, cached) = write_and_measure(dir.path(), c.config, c.records, |log| {
            log.set_page_cache_tail(c.tail);
            log.set_leading(c.leading);
        });
        assert!(size > 48 * MIB, "{what}: wrote {size} bytes");
        match c.kept {
            None => assert!(cached > size / 2, "{what}: {cached} of {size} bytes cached"),
            Some(kept) => assert!(
                (kept.saturating_sub(SLACK)..=kept + SLACK).contains(&cached),
                "{what}: {cached} of {size} bytes cached, {kept} expected"
            ),
        }
        // Still readable, from disk where dropped.
        assert_eq!(all_batches(&log, 0).len(), 3200 / c.records, "{what}");
        if let Some(most) = c.after_read {
            let after = cached_in(dir.path());
            assert!(
                after <= most,
                "{what}: {after} bytes cached after reading from the start, at most {most} expected"
            );
        }
    }
}

#[test]
fn a_leader_that_becomes_follower_gives_back_its_tail_beyond_the_followers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _, cached) = write_and_measure(dir.path(), LogConfig::default(), 16, |log| {
        log.set_page_cache_tail(None);
    });
    assert!(cached > 48 << 20, "{cached} bytes cached while leading");
    log.set_leading(false);
    let out = log.append(batch_of(1, 100, 200, 0), 0, 0).expect("append");
    log.wait_durable_blocking(out.last_offset + 1)
        .expect("durable");
    log.checkpoint_if_changed().expect("checkpoint");
    let segment = &common::files(dir.path(), "log")[0];
    let cached = cached_bytes(segment);
    let kept = sluice_storage::FOLLOWER_CACHE_TAIL;
    assert!(
        (kept - (1 << 20)..=kept + (1 << 20)).contains(&cached),
        "{cached} bytes cached as a follower"
    );
}

#[test]
fn after_a_restart_reads_keep_the_tail_cached_and_with_no_tail_every_page() {
    const MIB: u64 = 1 << 20;
    let config = LogConfig {
        segment_bytes: 8 * MIB,
        ..LogConfig::default()
    };
    for tail in [Some(12 * MIB), None] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, size, _) = write_and_measure(dir.path(), config.clone(), 16, |log| {
            log.set_page_cache_tail(tail);
        });
        log.close().expect("close");
        drop(log);
        let log = PartitionLog::open(dir.path(), "t", 0, config.clone()).expect("reopen");
        log.set_page_cache_tail(tail);
        assert_eq!(all_batches(&log, 0).len(), 200, "{tail:?}");
        let cached = cached_in(dir.path());
        match tail {
            // What was written before the restart is still the log's newest: reading it keeps
            // it; what lies behind it leaves the cache after being read.
            Some(kept) => assert!(
                (kept - MIB..=kept + 2 * MIB).contains(&cached),
                "{cached} of {size} bytes cached after a restart and a read, {kept} kept"
            ),
            // No tail: the kernel keeps what was read.
            None => assert!(cached > size / 2, "{cached} of {size} bytes cached"),
        }
    }
}
