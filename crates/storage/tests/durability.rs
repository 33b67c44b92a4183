//! Flush policy: group-committed fsync before `wait_durable` with `flush.messages=1`, and
//! policy-driven (or requested) flushes otherwise.

mod common;

use std::sync::Arc;

use common::{all_batches, batch_of};
use sluice_storage::{LogConfig, PartitionLog, StorageError};

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
    let log = PartitionLog::open(
        dir.path(),
        "t",
        0,
        LogConfig {
            flush_messages: 1000,
            ..LogConfig::default()
        },
    )
    .expect("open");
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

#[test]
fn a_log_that_does_not_keep_its_pages_gives_back_all_but_its_newest_once_durable() {
    // Must match DROP_BEHIND in segment.rs: the newest durable bytes a follower keeps cached.
    const KEPT: u64 = 32 << 20;
    for keep in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = PartitionLog::open(dir.path(), "t", 0, LogConfig::default()).expect("open");
        log.set_keep_cached(keep);
        let mut end = 0;
        for i in 0..200 {
            end = log
                .append(batch_of(16, 16_000, i, 0), 0, 0)
                .expect("append")
                .last_offset
                + 1;
        }
        log.wait_durable_blocking(end).expect("durable");
        let segments = common::files(dir.path(), "log");
        assert_eq!(segments.len(), 1, "{segments:?}");
        let size = std::fs::metadata(&segments[0]).expect("segment").len();
        assert!(size > KEPT + (16 << 20), "wrote {size} bytes");
        let cached = cached_bytes(&segments[0]);
        if keep {
            // Nothing asked the kernel to drop them and memory is not short.
            assert!(cached > size / 2, "{cached} of {size} bytes cached");
        } else {
            // The newest KEPT bytes stay (the tail a follower that becomes leader serves); of
            // the older ones at most a few pages the kernel could not drop at that moment.
            assert!(
                (KEPT..=KEPT + (1 << 20)).contains(&cached),
                "{cached} of {size} bytes cached"
            );
        }
        // Still readable, from disk where dropped.
        assert_eq!(all_batches(&log, 0).len(), 200);
    }
}
