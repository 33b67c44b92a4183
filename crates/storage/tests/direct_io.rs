//! A follower's appends of 64 KiB and more go to disk with direct I/O (see the storage crate's
//! `segment` module): they must read back whole and CRC-clean through role changes, Raft
//! truncation, rolls, a crash and a clean restart, and every sealed or closed segment file must
//! be exactly its batches (the zero padding of a direct write's last block never stays).

mod common;

use bytes::Bytes;
use common::{Spec, all_batches, batch_of, files};
use sluice_protocol::batch::iter_batches;
use sluice_storage::{LogConfig, PartitionLog};

const MIB: u64 = 1 << 20;

/// Appends one batch per tag: every third one small (1 KB, through the page cache), the rest
/// about 100 KB and not a multiple of the 4 KiB block (direct on a follower).
fn append(log: &PartitionLog, tags: impl IntoIterator<Item = u64>) -> i64 {
    let mut end = 0;
    for tag in tags {
        let batch = if tag % 3 == 0 {
            batch_of(1, 1_000, tag, 0)
        } else {
            batch_of(5, 20_011, tag, 0)
        };
        end = log.append(batch, 0, 0).expect("append").last_offset + 1;
    }
    end
}

/// The tags of the log's batches in order (each read CRC-checked).
fn tags(log: &PartitionLog) -> Vec<u64> {
    all_batches(log, 0)
        .iter()
        .map(|(_, _, value)| {
            let text = String::from_utf8_lossy(value);
            let tag = text.split(':').next().unwrap_or_default();
            tag.parse().unwrap_or(u64::MAX)
        })
        .collect()
}

/// Checks each segment file holds exactly the batches whose base offset falls in it.
fn assert_files_are_their_batches(log: &PartitionLog, dir: &std::path::Path, when: &str) {
    let mut batches = Vec::new();
    let mut offset = 0;
    loop {
        let r = log
            .read(offset, MIB as usize, i64::MAX, true)
            .expect("read");
        if r.records.is_empty() {
            break;
        }
        for item in iter_batches(&r.records) {
            let (h, bytes) = item.expect("whole batch");
            batches.push((h.base_offset, bytes.len() as u64));
        }
        offset = r.next_offset;
    }
    let segments = files(dir, "log");
    assert!(segments.len() > 2, "{when}: {} segments", segments.len());
    let bases: Vec<i64> = segments
        .iter()
        .map(|p| {
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            stem.parse().expect("segment name")
        })
        .collect();
    for (i, path) in segments.iter().enumerate() {
        let next = bases.get(i + 1).copied().unwrap_or(i64::MAX);
        let expected: u64 = batches
            .iter()
            .filter(|(base, _)| (bases[i]..next).contains(base))
            .map(|(_, len)| len)
            .sum();
        let len = std::fs::metadata(path).expect("segment").len();
        assert_eq!(len, expected, "{when}: {}", path.display());
    }
}

/// Segments of 1 MiB: a roll every ten or so of `append`'s batches.
fn one_mib_segments() -> LogConfig {
    LogConfig {
        segment_bytes: MIB,
        ..LogConfig::default()
    }
}

#[test]
fn a_followers_direct_writes_read_back_through_role_changes_truncation_rolls_and_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = one_mib_segments();
    let log = PartitionLog::open(dir.path(), "t", 0, config.clone()).expect("open");
    log.set_leading(false);
    append(&log, 0..40);
    // Leading writes through the page cache from wherever the follower's last block ended.
    log.set_leading(true);
    append(&log, 40..45);
    log.set_leading(false);
    append(&log, 45..60);
    assert_eq!(tags(&log), (0..60).collect::<Vec<_>>());

    // Raft truncation mid-segment: the next direct write starts from the cut, not from the
    // block it held before.
    let cut = all_batches(&log, 0)[50].0;
    log.truncate_to(cut).expect("truncate");
    let end = append(&log, 1000..1030);
    let expected: Vec<u64> = (0..50).chain(1000..1030).collect();
    assert_eq!(tags(&log), expected);

    // A crash right after everything was durable: all of it is back, and the padding after
    // the last batch is cut quietly, not counted as a torn tail.
    log.wait_durable_blocking(end).expect("durable");
    drop(log);
    let log = PartitionLog::open(dir.path(), "t", 0, config.clone()).expect("reopen");
    let stats = log.recovery_stats();
    assert!(!stats.clean_shutdown);
    assert_eq!(stats.bytes_truncated, 0, "{stats:?}");
    assert_eq!(tags(&log), expected);
    assert_files_are_their_batches(&log, dir.path(), "after the crash");

    // A clean close leaves the active segment exact as well, and writes continue after it.
    log.set_leading(false);
    append(&log, 2000..2010);
    log.close().expect("close");
    assert_files_are_their_batches(&log, dir.path(), "once closed");
    drop(log);
    let log = PartitionLog::open(dir.path(), "t", 0, config).expect("reopen");
    assert!(log.recovery_stats().clean_shutdown);
    assert_eq!(log.recovery_stats().bytes_truncated, 0);
    let expected: Vec<u64> = expected.into_iter().chain(2000..2010).collect();
    assert_eq!(tags(&log), expected);
    assert_files_are_their_batches(&log, dir.path(), "after a clean close");
}

#[test]
fn recovery_cuts_padding_in_a_sealed_segment_without_dropping_the_later_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = one_mib_segments();
    let log = PartitionLog::open(dir.path(), "t", 0, config.clone()).expect("open");
    append(&log, 0..40);
    log.close().expect("close");
    drop(log);
    // What a crash between a direct write and the seal's cut would leave in the first
    // segment; without a checkpoint, recovery scans every segment.
    let first = &files(dir.path(), "log")[0];
    let len = std::fs::metadata(first).expect("segment").len();
    let padded = (len / 4096 + 1) * 4096;
    std::fs::OpenOptions::new()
        .write(true)
        .open(first)
        .and_then(|f| f.set_len(padded))
        .expect("pad");
    std::fs::remove_file(dir.path().join("partition.checkpoint")).expect("checkpoint");
    let log = PartitionLog::open(dir.path(), "t", 0, config).expect("reopen");
    assert!(!log.recovery_stats().checkpoint_used);
    assert_eq!(log.recovery_stats().bytes_truncated, 0);
    assert_eq!(log.recovery_stats().segments_removed, 0);
    assert_eq!(tags(&log), (0..40).collect::<Vec<_>>());
    assert_eq!(std::fs::metadata(first).expect("segment").len(), len);
}

/// A batch of one `size`-byte record tagged `tag` and filled with `fill` (`batch_of` fills
/// with `x`).
fn one_record(size: usize, tag: u64, fill: u8) -> Bytes {
    let mut value = format!("{tag}:0:").into_bytes();
    value.resize(size, fill);
    Spec {
        base_ts: 0,
        records: vec![(0, value)],
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        compression: 0,
    }
    .build()
}

#[test]
fn a_cut_then_small_appends_to_the_same_end_are_not_overwritten_by_the_old_last_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = PartitionLog::open(dir.path(), "t", 0, LogConfig::default()).expect("open");
    log.set_leading(false);
    append(&log, 1..3);
    // A direct write whose last block the follower keeps, then cut by a new leader...
    let big = batch_of(5, 20_011, 100, 0);
    let cut = log.append(big.clone(), 0, 0).expect("append").base_offset;
    log.truncate_to(cut).expect("truncate");
    // ...whose own entries, two batches under 64 KiB (through the page cache), end exactly
    // where the cut one did, with other bytes in that last block.
    let first = batch_of(1, 40_000, 200, 0);
    let second = (1_000..64_000)
        .map(|size| one_record(size, 201, b'y'))
        .find(|b| b.len() == big.len() - first.len())
        .expect("a batch of the size that makes up the difference");
    assert!(second.len() < 64 << 10, "{} bytes", second.len());
    for b in [first, second] {
        log.append(b, 0, 0).expect("append");
    }
    // The next direct write starts in that block: it must read the block back, not reuse
    // what it wrote there before the cut.
    append(&log, [4, 5]);
    assert_eq!(tags(&log), vec![1, 2, 200, 201, 4, 5]);
}
