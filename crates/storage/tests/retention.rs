//! Retention by time and size (with an injected clock), time-based rolls, and DeleteRecords.

mod common;

use common::{all_batches, batch_of};
use sluice_storage::{CleanupPolicy, LogConfig, PartitionLog, StorageError};

const HOUR: i64 = 3_600_000;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 128,
        retention_ms: HOUR,
        ..LogConfig::default()
    }
}

#[test]
fn time_retention_deletes_old_segments_and_rolls_an_expired_active_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = PartitionLog::open(dir.path(), "t", 0, config()).expect("open");
    // Old data (timestamp 0) then new data (timestamp 10 h).
    for i in 0..30u64 {
        log.append(batch_of(1, 100, i, 0), 0, 0).expect("append");
    }
    let old_end = log.log_end_offset();
    for i in 0..30u64 {
        log.append(batch_of(1, 100, 100 + i, 10 * HOUR), 0, 10 * HOUR)
            .expect("append");
    }
    log.set_high_watermark(log.log_end_offset());
    let segments_before = log.segment_count();
    let out = log.apply_retention(10 * HOUR + 1).expect("retention");
    assert!(out.segments_deleted > 0);
    assert!(log.segment_count() < segments_before);
    // Everything old is gone except what shares a segment with new data.
    let start = log.log_start_offset();
    assert_eq!(out.log_start_offset, start);
    assert!(
        start > 0 && start <= old_end,
        "start {start}, old end {old_end}"
    );
    assert!(matches!(
        log.read(0, 100, i64::MAX, true),
        Err(sluice_storage::ReadError::OffsetOutOfRange { .. })
    ));
    let left = all_batches(&log, start);
    assert_eq!(left.last().map(|b| b.1), Some(log.log_end_offset() - 1));
    // Nothing more expires at the same time.
    assert_eq!(
        log.apply_retention(10 * HOUR + 1)
            .expect("retention")
            .segments_deleted,
        0
    );

    // Much later, even the active segment has expired: it is rolled and everything deleted.
    let end = log.log_end_offset();
    let out = log.apply_retention(20 * HOUR).expect("retention");
    assert!(out.segments_deleted > 0);
    assert_eq!(log.log_start_offset(), end);
    assert_eq!(log.log_end_offset(), end);
    assert!(
        log.read(end, 100, i64::MAX, true)
            .expect("read")
            .records
            .is_empty()
    );
    // And the log keeps working after it, with the new start persisted.
    log.append(batch_of(1, 10, 999, 20 * HOUR), 0, 20 * HOUR)
        .expect("append");
    log.close().expect("close");
    drop(log);
    let log = PartitionLog::open(dir.path(), "t", 0, config()).expect("reopen");
    assert_eq!(log.log_start_offset(), end);
    assert_eq!(all_batches(&log, end).len(), 1);
}

#[test]
fn retention_never_passes_the_high_watermark_and_respects_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = PartitionLog::open(dir.path(), "t", 0, config()).expect("open");
    for i in 0..60u64 {
        log.append(batch_of(1, 100, i, 0), 0, 0).expect("append");
    }
    // High watermark still 0: nothing may go.
    assert_eq!(
        log.apply_retention(100 * HOUR)
            .expect("retention")
            .segments_deleted,
        0
    );
    log.set_config(LogConfig {
        cleanup_policy: CleanupPolicy::Compact,
        ..config()
    });
    log.set_high_watermark(60);
    assert_eq!(
        log.apply_retention(100 * HOUR)
            .expect("retention")
            .segments_deleted,
        0,
        "compact-only keeps segments"
    );
    log.set_config(LogConfig {
        retention_ms: -1,
        ..config()
    });
    assert_eq!(
        log.apply_retention(100 * HOUR)
            .expect("retention")
            .segments_deleted,
        0,
        "-1 keeps forever"
    );
}

#[test]
fn size_retention_deletes_oldest_segments_while_a_whole_one_is_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = PartitionLog::open(
        dir.path(),
        "t",
        0,
        LogConfig {
            retention_ms: -1,
            retention_bytes: 5000,
            ..config()
        },
    )
    .expect("open");
    for i in 0..100u64 {
        log.append(batch_of(1, 100, i, 0), 0, 0).expect("append");
    }
    log.set_high_watermark(100);
    let before = log.size_bytes();
    let out = log.apply_retention(0).expect("retention");
    assert!(out.segments_deleted > 0);
    assert_eq!(before - out.bytes_deleted, log.size_bytes());
    // Over the limit by less than a segment now.
    assert!(
        log.size_bytes() >= 5000 && log.size_bytes() < 5000 + 2048,
        "size {}",
        log.size_bytes()
    );
    assert_eq!(
        all_batches(&log, log.log_start_offset())
            .last()
            .map(|b| b.1),
        Some(99)
    );
}

#[test]
fn segment_ms_rolls_by_append_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = PartitionLog::open(
        dir.path(),
        "t",
        0,
        LogConfig {
            segment_ms: 1000,
            ..LogConfig::default()
        },
    )
    .expect("open");
    log.append(batch_of(1, 10, 0, 0), 0, 10_000)
        .expect("append");
    log.append(batch_of(1, 10, 1, 0), 0, 10_999)
        .expect("append");
    assert_eq!(log.segment_count(), 1);
    log.append(batch_of(1, 10, 2, 0), 0, 11_000)
        .expect("append");
    assert_eq!(log.segment_count(), 2);
    assert_eq!(all_batches(&log, 0).len(), 3);
}

#[test]
fn delete_records_moves_the_start_and_deletes_whole_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = PartitionLog::open(dir.path(), "t", 0, config()).expect("open");
    for i in 0..60u64 {
        log.append(batch_of(2, 100, i, 0), 0, 0).expect("append");
    }
    log.set_high_watermark(100);
    // Beyond the high watermark: OFFSET_OUT_OF_RANGE.
    let err = log.delete_records_before(101).expect_err("past hw");
    assert!(matches!(err, StorageError::OffsetOutOfRange { .. }));
    assert_eq!(err.error_code(), 1);
    let segments = log.segment_count();
    assert_eq!(log.delete_records_before(51).expect("delete"), 51);
    assert_eq!(log.log_start_offset(), 51);
    assert!(log.segment_count() < segments);
    // Reads below the start fail; at the start they return the batch holding it.
    assert!(log.read(49, 100, i64::MAX, true).is_err());
    let first = all_batches(&log, 51);
    assert_eq!(first[0].0, 50, "the batch holding offset 51 starts at 50");
    // Moving backwards is a no-op; -1 means the high watermark.
    assert_eq!(log.delete_records_before(10).expect("noop"), 51);
    assert_eq!(log.delete_records_before(-1).expect("to hw"), 100);
    drop(log);
    // Persisted without a clean close.
    let log = PartitionLog::open(dir.path(), "t", 0, config()).expect("reopen");
    assert_eq!(log.log_start_offset(), 100);
    assert_eq!(all_batches(&log, 100).len(), 10);
}

#[test]
fn retention_keeps_segments_reaching_the_retention_floor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = PartitionLog::open(dir.path(), "t", 0, config()).expect("open");
    for i in 0..60u64 {
        log.append(batch_of(1, 100, i, 0), 0, 0).expect("append");
    }
    log.set_high_watermark(log.log_end_offset());
    assert!(log.segment_count() > 2, "the test needs several segments");
    // A Raft log still needs entries from offset 10 on: nothing reaching it may go.
    log.set_retention_floor(10);
    log.apply_retention(10 * HOUR).expect("retention");
    assert!(
        log.log_start_offset() <= 10,
        "start {}",
        log.log_start_offset()
    );
    assert!(!all_batches(&log, log.log_start_offset()).is_empty());
    assert_eq!(all_batches(&log, 10).first().map(|b| b.0), Some(10));
    // Once it lets go, expired segments go as usual.
    log.set_retention_floor(i64::MAX);
    let out = log.apply_retention(10 * HOUR).expect("retention");
    assert!(out.segments_deleted > 0);
    assert!(log.log_start_offset() > 10);
}
