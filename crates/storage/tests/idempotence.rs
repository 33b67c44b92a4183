//! Idempotent producers: duplicates, gaps, fencing, and state that survives reopen and
//! truncation.

mod common;

use common::{Spec, all_batches, small_config};
use sluice_storage::{AppendError, LogConfig, PartitionLog};

fn batch(pid: i64, epoch: i16, seq: i32, n: usize) -> bytes::Bytes {
    let values: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("p{pid}e{epoch}s{}", seq + i as i32).into_bytes())
        .collect();
    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
    Spec::values(&refs, 0).idempotent(pid, epoch, seq).build()
}

#[test]
fn duplicate_returns_the_original_offsets_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = PartitionLog::open(dir.path(), "t", 0, LogConfig::default()).expect("open");
    let first = log.append(batch(7, 0, 0, 3), 0, 0).expect("append");
    log.append(batch(8, 0, 0, 1), 0, 0).expect("other producer");
    let retry = log
        .append(batch(7, 0, 0, 3), 0, 0)
        .expect("duplicate is not an error");
    assert!(retry.duplicate);
    assert_eq!(
        (retry.base_offset, retry.last_offset),
        (first.base_offset, first.last_offset)
    );
    assert_eq!(log.log_end_offset(), 4, "nothing written for the duplicate");
    assert_eq!(all_batches(&log, 0).len(), 2);
}

#[test]
fn gaps_and_stale_epochs_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = PartitionLog::open(dir.path(), "t", 0, LogConfig::default()).expect("open");
    log.append(batch(7, 1, 0, 2), 0, 0).expect("append");
    let gap = log.append(batch(7, 1, 3, 1), 0, 0).expect_err("gap");
    assert!(
        matches!(
            gap,
            AppendError::OutOfOrderSequence {
                expected: 2,
                first_seq: 3,
                ..
            }
        ),
        "{gap:?}"
    );
    assert_eq!(gap.error_code(), 45);
    let fenced = log.append(batch(7, 0, 2, 1), 0, 0).expect_err("fenced");
    assert!(matches!(
        fenced,
        AppendError::InvalidProducerEpoch {
            current: 1,
            epoch: 0,
            ..
        }
    ));
    assert_eq!(fenced.error_code(), 47);
    let bad_new_epoch = log
        .append(batch(7, 2, 5, 1), 0, 0)
        .expect_err("new epoch must start at 0");
    assert_eq!(bad_new_epoch.error_code(), 45);
    log.append(batch(7, 2, 0, 1), 0, 0)
        .expect("new epoch from 0");
    // An unknown producer may start anywhere.
    log.append(batch(9, 0, 1234, 1), 0, 0)
        .expect("unknown producer");
    assert_eq!(log.log_end_offset(), 4);
}

#[test]
fn producer_ids_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = PartitionLog::open(
        dir.path(),
        "t",
        0,
        LogConfig {
            producer_id_expiration_ms: 1000,
            ..LogConfig::default()
        },
    )
    .expect("open");
    log.append(batch(7, 0, 0, 1), 0, 0).expect("append");
    assert!(
        log.append(batch(7, 0, 5, 1), 0, 999).is_err(),
        "still known"
    );
    assert_eq!(
        log.apply_retention(1000)
            .expect("retention")
            .producers_expired,
        1
    );
    log.append(batch(7, 0, 5, 1), 0, 1000)
        .expect("expired: unknown again");
}

#[test]
fn state_survives_clean_and_unclean_reopen() {
    for clean in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = PartitionLog::open(dir.path(), "t", 0, small_config()).expect("open");
            for i in 0..20 {
                log.append(batch(7, 0, i * 2, 2), 0, 0).expect("append");
            }
            if clean {
                log.close().expect("close");
            }
        }
        let log = PartitionLog::open(dir.path(), "t", 0, small_config()).expect("reopen");
        assert_eq!(log.recovery_stats().clean_shutdown, clean);
        let dup = log
            .append(batch(7, 0, 38, 2), 0, 0)
            .expect("duplicate after reopen");
        assert!(dup.duplicate);
        assert_eq!(dup.base_offset, 38);
        assert_eq!(
            log.append(batch(7, 0, 41, 1), 0, 0)
                .map_err(|e| e.error_code())
                .err(),
            Some(45),
            "gap after reopen"
        );
        assert_eq!(
            log.append(batch(7, 0, 40, 1), 0, 0)
                .map(|o| o.base_offset)
                .ok(),
            Some(40)
        );
    }
}

#[test]
fn state_is_rebuilt_after_truncation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = PartitionLog::open(dir.path(), "t", 0, small_config()).expect("open");
    for i in 0..30 {
        log.append(batch(7, 0, i, 1), 0, 0).expect("append");
    }
    log.close().expect("close (checkpoint at 30)");
    drop(log);
    let log = PartitionLog::open(dir.path(), "t", 0, small_config()).expect("reopen");
    // Truncate below the checkpoint's recovery point: the state comes from a replay.
    log.truncate_to(20).expect("truncate");
    assert_eq!(log.log_end_offset(), 20);
    // Sequence 20 was cut, so it is no duplicate now; 19 is, 21 is a gap.
    assert!(log.append(batch(7, 0, 19, 1), 0, 0).expect("dup").duplicate);
    assert_eq!(
        log.append(batch(7, 0, 21, 1), 0, 0)
            .map_err(|e| e.error_code())
            .err(),
        Some(45)
    );
    let again = log.append(batch(7, 0, 20, 1), 0, 0).expect("re-append");
    assert!(!again.duplicate);
    assert_eq!(again.base_offset, 20);
}
