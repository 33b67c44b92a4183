//! Append and read: offsets, segment rolls, indexes, read limits, timestamps, epochs.

mod common;

use common::{Spec, all_batches, batch_of, small_config};
use sluice_protocol::batch::{BatchHeader, iter_batches};
use sluice_storage::{AppendError, LogConfig, PartitionLog, ReadError, TimestampType};

fn open(dir: &std::path::Path, config: LogConfig) -> PartitionLog {
    PartitionLog::open(dir, "t", 0, config).expect("open")
}

#[test]
fn offsets_are_assigned_and_batches_read_back_verbatim() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), LogConfig::default());
    let b1 = batch_of(3, 10, 1, 1000);
    let b2 = batch_of(1, 10, 2, 1001);
    let o1 = log.append(b1.clone(), 7, 5000).expect("append");
    let o2 = log.append(b2.clone(), 7, 5000).expect("append");
    assert_eq!(
        (
            o1.base_offset,
            o1.last_offset,
            o1.log_append_time,
            o1.duplicate
        ),
        (0, 2, -1, false)
    );
    assert_eq!((o2.base_offset, o2.last_offset), (3, 3));
    assert_eq!(log.log_end_offset(), 4);

    let r = log.read(0, 1 << 20, i64::MAX, false).expect("read");
    assert_eq!(r.next_offset, 4);
    let batches: Vec<_> = iter_batches(&r.records)
        .map(|b| b.expect("whole"))
        .collect();
    assert_eq!(batches.len(), 2);
    // Only baseOffset and partitionLeaderEpoch differ from what the client sent.
    assert_eq!(&batches[0].1[16..], &b1[16..]);
    assert_eq!(batches[0].0.base_offset, 0);
    assert_eq!(batches[0].0.partition_leader_epoch, 7);
    assert_eq!(batches[1].0.base_offset, 3);
    assert_eq!(&batches[1].1[16..], &b2[16..]);
    // Reading from an offset inside the first batch returns that whole batch.
    let r = log.read(1, 1 << 20, i64::MAX, false).expect("read");
    assert_eq!(
        BatchHeader::parse(&r.records).expect("header").base_offset,
        0
    );
    // End of log: empty, not an error; past the end: out of range.
    assert!(
        log.read(4, 100, i64::MAX, true)
            .expect("read")
            .records
            .is_empty()
    );
    assert!(matches!(
        log.read(5, 100, i64::MAX, true),
        Err(ReadError::OffsetOutOfRange {
            log_start: 0,
            log_end: 4
        })
    ));
    assert_eq!(
        log.read(5, 100, i64::MAX, true)
            .map_err(|e| e.error_code())
            .err(),
        Some(1)
    );
}

#[test]
fn bad_batches_are_refused_with_kafka_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(
        dir.path(),
        LogConfig {
            max_message_bytes: 200,
            ..LogConfig::default()
        },
    );
    let mut corrupt = batch_of(1, 10, 1, 0).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    let err = log.append(corrupt.into(), 0, 0).expect_err("crc");
    assert_eq!(err.error_code(), 2);
    let err = log
        .append(batch_of(1, 300, 1, 0), 0, 0)
        .expect_err("too large");
    assert!(matches!(err, AppendError::MessageTooLarge { max: 200, .. }));
    assert_eq!(err.error_code(), 10);
    assert_eq!(log.log_end_offset(), 0, "nothing written");
}

#[test]
fn segments_roll_at_size_and_reads_cross_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), small_config());
    for i in 0..100u64 {
        log.append(batch_of(2, 50, i, 1000 + i as i64), 0, 0)
            .expect("append");
    }
    assert!(log.segment_count() >= 4, "rolled: {}", log.segment_count());
    let logs: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    assert!(logs.iter().any(|n| n == "00000000000000000000.log"));
    assert!(logs.iter().all(|n| n.len() == 24), "{logs:?}");
    let batches = all_batches(&log, 0);
    assert_eq!(batches.len(), 100);
    for (i, (base, last, value)) in batches.iter().enumerate() {
        assert_eq!((*base, *last), (2 * i as i64, 2 * i as i64 + 1));
        assert!(value.starts_with(format!("{i}:0:").as_bytes()));
    }
    // Random offsets land on the batch containing them, through sealed and active indexes.
    for offset in [0, 1, 37, 64, 101, 150, 199] {
        let r = log.read(offset, 1, i64::MAX, true).expect("read");
        let h = BatchHeader::parse(&r.records).expect("header");
        assert_eq!(h.base_offset, offset - offset % 2, "offset {offset}");
        assert_eq!(r.records.len(), h.size(), "min_one gives exactly one batch");
    }
}

#[test]
fn read_limits_max_bytes_min_one_and_max_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), LogConfig::default());
    let size = batch_of(1, 100, 0, 0).len();
    for i in 0..10 {
        log.append(batch_of(1, 100, i, 0), 0, 0).expect("append");
    }
    let count = |r: &sluice_storage::ReadResult| iter_batches(&r.records).count();
    // max_bytes cuts at whole batches.
    let r = log.read(0, size * 3 + 10, i64::MAX, false).expect("read");
    assert_eq!((count(&r), r.next_offset), (3, 3));
    // A first batch larger than max_bytes: nothing without min_one, one batch with it.
    assert!(
        log.read(0, 10, i64::MAX, false)
            .expect("read")
            .records
            .is_empty()
    );
    assert_eq!(count(&log.read(0, 10, i64::MAX, true).expect("read")), 1);
    // Never a batch at or past max_offset (the high watermark).
    let r = log.read(2, 1 << 20, 5, true).expect("read");
    assert_eq!((count(&r), r.next_offset), (3, 5));
    assert!(
        log.read(5, 1 << 20, 5, true)
            .expect("read")
            .records
            .is_empty()
    );
    // High watermark: clamped to the log end, monotonic, wakes subscribers.
    let mut rx = log.subscribe();
    log.set_high_watermark(4);
    assert_eq!(log.high_watermark(), 4);
    assert!(rx.has_changed().expect("open"));
    assert_eq!(*rx.borrow_and_update(), 4);
    log.set_high_watermark(2);
    assert_eq!(log.high_watermark(), 4, "never moves back");
    assert!(!rx.has_changed().expect("open"));
    log.set_high_watermark(1000);
    assert_eq!(log.high_watermark(), 10, "clamped to the log end");
}

#[test]
fn log_append_time_rewrites_timestamp_and_crc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(
        dir.path(),
        LogConfig {
            message_timestamp_type: TimestampType::LogAppendTime,
            ..LogConfig::default()
        },
    );
    let out = log
        .append(batch_of(2, 10, 0, 1000), 0, 777_000)
        .expect("append");
    assert_eq!(out.log_append_time, 777_000);
    let r = log
        .read(0, 1 << 20, i64::MAX, true)
        .expect("read (CRC-checked)");
    let h = BatchHeader::parse(&r.records).expect("header");
    assert!(h.is_log_append_time());
    assert_eq!(h.max_timestamp, 777_000);
    assert_eq!(log.max_timestamp(), Some((777_000, 0)));
    assert_eq!(
        log.offset_for_timestamp(5000).expect("lookup"),
        Some((0, 777_000))
    );
}

#[test]
fn offset_for_timestamp_walks_records_and_uses_batches_for_compressed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), small_config());
    // 40 batches of 3 records; batch i has record timestamps 1000+10i + {0, 3, 6}.
    for i in 0..40i64 {
        let spec = Spec {
            base_ts: 1000 + 10 * i,
            records: vec![(0, vec![1; 60]), (3, vec![2; 60]), (6, vec![3; 60])],
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            compression: 0,
        };
        log.append(spec.build(), 0, 0).expect("append");
    }
    assert!(log.segment_count() > 2);
    assert_eq!(
        log.offset_for_timestamp(0).expect("lookup"),
        Some((0, 1000))
    );
    assert_eq!(
        log.offset_for_timestamp(1000).expect("lookup"),
        Some((0, 1000))
    );
    assert_eq!(
        log.offset_for_timestamp(1001).expect("lookup"),
        Some((1, 1003))
    );
    assert_eq!(
        log.offset_for_timestamp(1004).expect("lookup"),
        Some((2, 1006))
    );
    assert_eq!(
        log.offset_for_timestamp(1007).expect("lookup"),
        Some((3, 1010))
    );
    assert_eq!(
        log.offset_for_timestamp(1255).expect("lookup"),
        Some((77, 1256))
    );
    assert_eq!(
        log.offset_for_timestamp(1396).expect("lookup"),
        Some((119, 1396))
    );
    assert_eq!(log.offset_for_timestamp(1397).expect("lookup"), None);
    assert_eq!(log.max_timestamp(), Some((1396, 119)));
    // A compressed batch is answered at batch level: its base offset and max timestamp.
    let compressed = Spec {
        base_ts: 5000,
        records: vec![(0, vec![0; 5]), (9, vec![0; 5])],
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        compression: 0,
    };
    let mut raw = compressed.build_vec();
    raw[22] |= 1; // gzip bit; body stays opaque to the broker
    let crc = sluice_protocol::batch::compute_crc(&raw);
    raw[17..21].copy_from_slice(&crc.to_be_bytes());
    log.append(raw.into(), 0, 0).expect("append compressed");
    assert_eq!(
        log.offset_for_timestamp(5001).expect("lookup"),
        Some((120, 5009))
    );
    assert_eq!(log.max_timestamp(), Some((5009, 121)));
}

#[test]
fn leader_epochs_answer_offset_for_leader_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), small_config());
    for (epoch, n) in [(1, 3), (3, 2), (4, 1)] {
        for _ in 0..n {
            log.append(batch_of(2, 10, 0, 0), epoch, 0).expect("append");
        }
    }
    assert_eq!(log.log_end_offset(), 12);
    assert_eq!(log.latest_epoch(), Some(4));
    assert_eq!(log.end_offset_for_epoch(4), Some((4, 12)));
    assert_eq!(log.end_offset_for_epoch(3), Some((3, 10)));
    assert_eq!(log.end_offset_for_epoch(2), Some((1, 6)));
    assert_eq!(log.end_offset_for_epoch(0), Some((0, 0)));
    assert_eq!(log.end_offset_for_epoch(9), None);
    let r = log.read(6, 1, i64::MAX, true).expect("read");
    assert_eq!(
        BatchHeader::parse(&r.records)
            .expect("header")
            .partition_leader_epoch,
        3
    );
    // Survives reopen and follows truncation.
    log.close().expect("close");
    drop(log);
    let log = open(dir.path(), small_config());
    assert_eq!(log.end_offset_for_epoch(3), Some((3, 10)));
    log.truncate_to(8).expect("truncate");
    assert_eq!(log.end_offset_for_epoch(3), Some((3, 8)));
    log.truncate_to(6).expect("truncate");
    assert_eq!(log.latest_epoch(), Some(1));
    assert_eq!(log.end_offset_for_epoch(1), Some((1, 6)));
}

#[test]
fn concurrent_readers_never_see_partial_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = std::sync::Arc::new(open(
        dir.path(),
        LogConfig {
            segment_bytes: 64 * 1024,
            flush_messages: u64::MAX,
            ..LogConfig::default()
        },
    ));
    let writer = {
        let log = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for i in 0..2000u64 {
                log.append(batch_of(1 + (i % 5) as usize, 40, i, 0), 0, 0)
                    .expect("append");
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() || reads == 0 {
        let end = log.log_end_offset();
        let r = log
            .read(0.max(end - 50).min(end), 4096, i64::MAX, true)
            .expect("read never fails");
        for b in iter_batches(&r.records) {
            let (h, bytes) = b.expect("whole batch");
            assert_eq!(bytes.len(), h.size());
            assert!(h.last_offset() < log.log_end_offset());
        }
        reads += 1;
    }
    writer.join().expect("writer");
    assert_eq!(all_batches(&log, 0).len(), 2000);
}

#[test]
fn replicas_copy_leader_batches_verbatim() {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let follower_dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        message_timestamp_type: TimestampType::LogAppendTime,
        ..small_config()
    };
    let leader = open(leader_dir.path(), config.clone());
    let follower = open(follower_dir.path(), config);
    for i in 0..30u64 {
        leader
            .append(
                batch_of(1 + (i % 3) as usize, 40, i, 0),
                2 + (i / 10) as i32,
                1000 + i as i64,
            )
            .expect("append");
    }
    let mut offset = 0;
    while offset < leader.log_end_offset() {
        let r = leader.read(offset, 1000, i64::MAX, true).expect("read");
        for item in iter_batches(&r.records) {
            let (_, bytes) = item.expect("whole");
            follower
                .append_replica(bytes::Bytes::copy_from_slice(bytes), 99_999)
                .expect("replica append");
        }
        offset = r.next_offset;
    }
    let all = |log: &PartitionLog| log.read(0, 1 << 20, i64::MAX, true).expect("read").records;
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    assert_eq!(
        all(&follower),
        all(&leader),
        "byte-identical, append times not restamped"
    );
    assert_eq!(
        follower.end_offset_for_epoch(3),
        leader.end_offset_for_epoch(3)
    );
    // A batch that does not continue the log is refused.
    let first = leader.read(0, 1, i64::MAX, true).expect("read").records;
    let err = follower.append_replica(first, 0).expect_err("gap");
    assert!(matches!(
        err,
        AppendError::Storage(sluice_storage::StorageError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn shared_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<PartitionLog>();
    check::<sluice_storage::LogManager>();
    check::<sluice_storage::MetadataStore>();
}

/// Disk space a file really holds (its allocated blocks), as opposed to its length.
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").blocks() * 512
}

#[test]
fn active_segment_reserves_disk_ahead_and_sealing_gives_it_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 64 << 10,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config);
    log.append(batch_of(4, 200, 1, 1000), 0, 5000)
        .expect("append");
    let active = &common::files(dir.path(), "log")[0];
    let len = std::fs::metadata(active).expect("stat").len();
    assert!(len < 4096, "the file's length is its one batch: {len}");
    // Reserved past the end (256 KiB at least) without changing the length readers use.
    assert!(
        allocated(active) >= 256 << 10,
        "only {} bytes allocated",
        allocated(active)
    );
    let mut n = 1;
    while common::files(dir.path(), "log").len() < 2 {
        n += 1;
        log.append(batch_of(4, 1000, n, 1000), 0, 5000)
            .expect("append");
    }
    let sealed = &common::files(dir.path(), "log")[0];
    let len = std::fs::metadata(sealed).expect("stat").len();
    assert!(
        allocated(sealed) <= len.next_multiple_of(4096) + 4096,
        "sealed segment of {len} bytes still holds {}",
        allocated(sealed)
    );
    // Everything written is still there, in order.
    assert_eq!(all_batches(&log, 0).len() as u64, n);
}

#[test]
fn preallocate_reserves_the_whole_segment_when_it_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 8 << 20,
        preallocate: true,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config);
    let first = &common::files(dir.path(), "log")[0];
    assert_eq!(std::fs::metadata(first).expect("stat").len(), 0);
    assert!(allocated(first) >= 8 << 20, "{}", allocated(first));
    log.append(batch_of(1, 10, 1, 1000), 0, 5000)
        .expect("append");
    assert_eq!(all_batches(&log, 0).len(), 1);
}
