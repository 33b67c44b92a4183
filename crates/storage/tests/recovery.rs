//! Opening a log after a clean close, after a crash, and after damage to its files.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use common::{all_batches, batch_of, files, small_config};
use sluice_storage::{LogConfig, PartitionLog};

fn open(dir: &Path, config: LogConfig) -> PartitionLog {
    PartitionLog::open(dir, "t", 0, config).expect("open")
}

fn fill(log: &PartitionLog, n: u64) {
    for i in 0..n {
        log.append(batch_of(1 + (i % 3) as usize, 60, i, 1000 + i as i64), 0, 0)
            .expect("append");
    }
}

fn check_values(log: &PartitionLog, n: usize) {
    let batches = all_batches(log, 0);
    assert_eq!(batches.len(), n);
    let mut next = 0;
    for (i, (base, last, value)) in batches.iter().enumerate() {
        assert_eq!(*base, next, "contiguous offsets");
        next = last + 1;
        assert!(
            value.starts_with(format!("{i}:0:").as_bytes()),
            "batch {i} intact"
        );
    }
}

#[test]
fn reopen_after_clean_close_scans_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), small_config());
    fill(&log, 200);
    let end = log.log_end_offset();
    log.close().expect("close");
    assert!(
        log.append(batch_of(1, 1, 0, 0), 0, 0).is_err(),
        "closed log refuses appends"
    );
    drop(log);
    let log = open(dir.path(), small_config());
    let stats = log.recovery_stats().clone();
    assert!(stats.clean_shutdown && stats.checkpoint_used, "{stats:?}");
    assert_eq!((stats.batches_scanned, stats.bytes_truncated), (0, 0));
    assert_eq!(log.log_end_offset(), end);
    check_values(&log, 200);
    // Appends continue where they stopped.
    assert_eq!(
        log.append(batch_of(1, 1, 0, 0), 0, 0)
            .expect("append")
            .base_offset,
        end
    );
}

#[test]
fn unclean_reopen_scans_only_after_the_recovery_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 1 << 20,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config.clone());
    fill(&log, 50);
    assert!(log.checkpoint_if_changed().expect("checkpoint"));
    assert!(
        !log.checkpoint_if_changed().expect("unchanged"),
        "nothing new to checkpoint"
    );
    fill(&log, 7);
    drop(log); // no close: like a crash
    let log = open(dir.path(), config);
    let stats = log.recovery_stats();
    assert!(!stats.clean_shutdown);
    assert_eq!(stats.batches_scanned, 7);
    assert_eq!(all_batches(&log, 0).len(), 57);
}

#[test]
fn corrupt_tail_is_truncated_and_earlier_batches_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One segment: a roll during the last fill would let the flusher's roll checkpoint cover
    // the batch damaged below (a race seen under fsync load), and the damage would go unscanned.
    let config = LogConfig {
        segment_bytes: 1 << 20,
        ..small_config()
    };
    let log = open(dir.path(), config.clone());
    fill(&log, 40);
    log.checkpoint_if_changed().expect("checkpoint");
    fill(&log, 5);
    let end_before = log.log_end_offset();
    drop(log);
    // Flip a byte in the body of the last batch of the active segment.
    let last = files(dir.path(), "log").pop().expect("a segment");
    let mut data = fs::read(&last).expect("read");
    let n = data.len();
    data[n - 3] ^= 0xff;
    fs::write(&last, &data).expect("write");
    let log = open(dir.path(), config);
    let stats = log.recovery_stats().clone();
    assert!(stats.bytes_truncated > 0, "{stats:?}");
    let batches = all_batches(&log, 0);
    assert_eq!(batches.len(), 44, "only the damaged batch is cut");
    assert!(log.log_end_offset() < end_before);
    assert_eq!(
        log.log_end_offset(),
        batches.last().map(|b| b.1 + 1).unwrap_or(0)
    );
    // The log accepts appends right after the cut.
    assert_eq!(
        log.append(batch_of(1, 1, 0, 0), 0, 0)
            .expect("append")
            .base_offset,
        log.log_end_offset() - 1
    );
}

#[test]
fn random_garbage_tail_is_truncated_and_all_batches_survive() {
    for seed in 1..=5u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), small_config());
        fill(&log, 60);
        let end = log.log_end_offset();
        drop(log);
        let last = files(dir.path(), "log").pop().expect("a segment");
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let len = 1 + (seed * 97 % 500) as usize;
        let garbage: Vec<u8> = (0..len)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect();
        OpenOptions::new()
            .append(true)
            .open(&last)
            .expect("open")
            .write_all(&garbage)
            .expect("garbage");
        let log = open(dir.path(), small_config());
        assert_eq!(
            log.recovery_stats().bytes_truncated,
            len as u64,
            "seed {seed}"
        );
        assert_eq!(log.log_end_offset(), end);
        check_values(&log, 60);
        drop(log);
        // The repair is durable: a second open finds nothing to cut.
        let log = open(dir.path(), small_config());
        assert_eq!(log.recovery_stats().bytes_truncated, 0);
    }
}

#[test]
fn corruption_in_an_unverified_sealed_segment_drops_later_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), small_config());
    // Make the checkpoint's recovery point stay at 0: write, then damage before any checkpoint
    // could cover it by deleting the checkpoint file.
    fill(&log, 80);
    drop(log);
    fs::remove_file(dir.path().join("partition.checkpoint")).expect("rm checkpoint");
    let segs = files(dir.path(), "log");
    assert!(segs.len() >= 3);
    let mut data = fs::read(&segs[1]).expect("read");
    data[100] ^= 0x01;
    fs::write(&segs[1], &data).expect("write");
    let log = open(dir.path(), small_config());
    let stats = log.recovery_stats().clone();
    assert!(!stats.checkpoint_used);
    assert!(stats.segments_removed >= 1, "{stats:?}");
    assert_eq!(log.segment_count(), 2);
    let batches = all_batches(&log, 0);
    assert!(!batches.is_empty() && batches.len() < 80);
    assert_eq!(
        log.log_end_offset(),
        batches.last().map(|b| b.1 + 1).unwrap_or(0)
    );
}

#[test]
fn missing_and_damaged_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), small_config());
    fill(&log, 100);
    log.close().expect("close");
    drop(log);
    let indexes = files(dir.path(), "index");
    let times = files(dir.path(), "timeindex");
    assert!(indexes.len() >= 3);
    fs::remove_file(&indexes[0]).expect("rm index");
    fs::remove_file(&times[0]).expect("rm timeindex");
    fs::write(&indexes[1], b"garbage").expect("damage index");
    let log = open(dir.path(), small_config());
    assert!(indexes[0].exists(), "missing index rebuilt at open");
    check_values(&log, 100);
    assert_eq!(
        fs::metadata(&indexes[1]).expect("stat").len() % 8,
        0,
        "damaged index rebuilt on use"
    );
    assert_eq!(
        log.offset_for_timestamp(1000).expect("lookup"),
        Some((0, 1000))
    );
    assert!(log.max_timestamp().is_some_and(|(ts, _)| ts == 1099));
}

#[test]
fn stray_files_are_removed_and_a_bad_checkpoint_means_a_full_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), small_config());
    fill(&log, 30);
    log.close().expect("close");
    drop(log);
    fs::write(dir.path().join("partition.checkpoint.tmp"), b"half").expect("tmp");
    fs::write(dir.path().join("00000000000000000000.log.deleted"), b"old").expect("deleted");
    fs::write(dir.path().join("00000000000000099999.index"), b"").expect("orphan");
    fs::write(
        dir.path().join("partition.checkpoint"),
        b"SLCPgarbage-garbage",
    )
    .expect("bad checkpoint");
    let log = open(dir.path(), small_config());
    assert!(!dir.path().join("partition.checkpoint.tmp").exists());
    assert!(!dir.path().join("00000000000000000000.log.deleted").exists());
    assert!(!dir.path().join("00000000000000099999.index").exists());
    let stats = log.recovery_stats();
    assert!(!stats.checkpoint_used);
    assert_eq!(stats.batches_scanned, 30);
    check_values(&log, 30);
}

#[test]
fn truncate_to_cuts_at_batch_boundaries_and_persists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), small_config());
    for i in 0..60u64 {
        log.append(batch_of(2, 60, i, 0), 0, 0).expect("append");
    }
    log.set_high_watermark(120);
    let segments = log.segment_count();
    log.truncate_to(31).expect("truncate mid-batch");
    assert_eq!(log.log_end_offset(), 30, "the batch holding 31 goes whole");
    assert_eq!(
        log.high_watermark(),
        30,
        "high watermark follows the truncation"
    );
    assert!(log.durable_offset() <= 30);
    assert!(log.segment_count() < segments);
    assert_eq!(all_batches(&log, 0).len(), 15);
    assert_eq!(
        log.append(batch_of(1, 10, 99, 0), 0, 0)
            .expect("append")
            .base_offset,
        30
    );
    drop(log);
    let log = open(dir.path(), small_config());
    assert_eq!(log.log_end_offset(), 31);
    let batches = all_batches(&log, 0);
    assert_eq!(batches.len(), 16);
    assert!(batches[15].2.starts_with(b"99:0:"));
    log.truncate_to(0).expect("truncate everything");
    assert_eq!(log.log_end_offset(), 0);
    assert!(all_batches(&log, 0).is_empty());
}
