//! Log compaction (`cleanup.policy=compact`): what the cleaner keeps, what it drops, and that a
//! crash at any step of its swap loses nothing and duplicates nothing.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use bytes::Bytes;
use common::{BatchFields, frame_batch, push_varint};
use sluice_protocol::batch::iter_batches;
use sluice_protocol::records::read_records;
use sluice_storage::{CleanOptions, CleanupPolicy, LogConfig, PartitionLog};

/// A record to append: key, value (None = tombstone).
type Rec = (Vec<u8>, Option<Vec<u8>>);

/// An uncompressed batch of keyed records, all at timestamp `ts`.
fn keyed(records: &[Rec], ts: i64, producer: Option<(i64, i32)>) -> Bytes {
    let mut body = Vec::new();
    for (i, (k, v)) in records.iter().enumerate() {
        let mut rec = vec![0u8];
        push_varint(&mut rec, 0);
        push_varint(&mut rec, i as i64);
        push_varint(&mut rec, k.len() as i64);
        rec.extend_from_slice(k);
        match v {
            Some(v) => {
                push_varint(&mut rec, v.len() as i64);
                rec.extend_from_slice(v);
            }
            None => push_varint(&mut rec, -1),
        }
        push_varint(&mut rec, 0);
        push_varint(&mut body, rec.len() as i64);
        body.extend_from_slice(&rec);
    }
    let (pid, seq) = producer.unwrap_or((-1, -1));
    Bytes::from(frame_batch(
        &body,
        records.len() as i32,
        BatchFields {
            compression: 0,
            base_ts: ts,
            max_ts: ts,
            producer_id: pid,
            producer_epoch: if pid >= 0 { 0 } else { -1 },
            base_sequence: seq,
        },
    ))
}

fn compact_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 128,
        cleanup_policy: CleanupPolicy::Compact,
        min_cleanable_dirty_ratio: 0.0,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, config: LogConfig) -> PartitionLog {
    PartitionLog::open(dir, "t", 0, config).expect("open")
}

/// One record read back: (offset, key, value).
type Seen = (i64, Vec<u8>, Option<Vec<u8>>);

/// Every record from the log start, reading batch by batch.
fn all_records(log: &PartitionLog) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    for _ in 0..100_000 {
        let r = log.read(offset, 1 << 20, i64::MAX, true).expect("read");
        if r.records.is_empty() {
            return out;
        }
        for item in iter_batches(&r.records) {
            let (_, bytes) = item.expect("whole batch");
            let (_, recs) = read_records(bytes).expect("records");
            for rec in recs {
                out.push((
                    rec.offset,
                    rec.key.unwrap_or_default().to_vec(),
                    rec.value.map(<[u8]>::to_vec),
                ));
            }
        }
        offset = r.next_offset;
    }
    panic!("read did not reach the end of the log");
}

/// Appends one single-record batch per (key, value) at `ts`; the value names its offset.
fn append_values(log: &PartitionLog, keys: &[&str], rounds: usize, ts: i64) -> Vec<Seen> {
    let mut written = Vec::new();
    for round in 0..rounds {
        for k in keys {
            let offset = log.log_end_offset();
            let value = format!("{k}={round}@{offset}").into_bytes();
            let out = log
                .append(
                    keyed(&[(k.as_bytes().to_vec(), Some(value.clone()))], ts, None),
                    0,
                    ts,
                )
                .expect("append");
            assert_eq!(out.base_offset, offset);
            written.push((offset, k.as_bytes().to_vec(), Some(value)));
        }
    }
    written
}

/// What compaction up to `end` must leave: below `end` the latest record per key (among those
/// below `end`), everything at or above `end` as written.
fn model(written: &[Seen], end: i64) -> Vec<Seen> {
    let mut latest: BTreeMap<&[u8], i64> = BTreeMap::new();
    for (o, k, _) in written.iter().filter(|w| w.0 < end) {
        latest.insert(k, *o);
    }
    written
        .iter()
        .filter(|(o, k, _)| *o >= end || latest.get(k.as_slice()) == Some(o))
        .cloned()
        .collect()
}

fn publish_all(log: &PartitionLog) {
    log.set_high_watermark(log.log_end_offset());
}

#[test]
fn latest_value_per_key_is_kept_at_its_original_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), compact_config(1024));
    let written = append_values(&log, &["a", "b", "c", "d", "e"], 40, 1_000);
    publish_all(&log);
    let (start, end) = (log.log_start_offset(), log.log_end_offset());
    let segments = log.segment_count();
    assert!(
        segments > 5,
        "the test needs several segments, has {segments}"
    );
    let out = log
        .clean(2_000, CleanOptions::default())
        .expect("clean")
        .expect("a clean was due");
    assert!(out.records_removed > 0);
    assert!(out.bytes_after < out.bytes_before);
    assert_eq!(log.cleaned_to(), out.cleaned_to);
    assert_eq!(
        all_records(&log),
        model(&written, out.cleaned_to),
        "latest per key below the cleaned offset, everything above it"
    );
    assert_eq!(log.log_start_offset(), start, "log start stays");
    assert_eq!(log.log_end_offset(), end, "log end stays");
    assert_eq!(log.offset_for_timestamp(0).expect("lookup").map(|x| x.0), {
        Some(all_records(&log)[0].0)
    });
    // Nothing new is dirty: no clean is due.
    assert_eq!(
        log.clean(2_000, CleanOptions::default()).expect("clean"),
        None
    );
}

#[test]
fn a_fetch_at_a_removed_offset_gets_the_next_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), compact_config(1024));
    append_values(&log, &["a", "b", "c"], 30, 1_000);
    publish_all(&log);
    log.clean(2_000, CleanOptions::default())
        .expect("clean")
        .expect("due");
    let present: Vec<i64> = all_records(&log).iter().map(|r| r.0).collect();
    assert!(present.len() < 90, "something was removed");
    for offset in log.log_start_offset()..log.log_end_offset() {
        let r = log.read(offset, 1 << 20, i64::MAX, true).expect("read");
        let (_, bytes) = iter_batches(&r.records)
            .next()
            .expect("a batch after every offset below the end")
            .expect("whole batch");
        let (_, recs) = read_records(bytes).expect("records");
        let want = present.iter().find(|&&o| o >= offset).copied();
        assert_eq!(recs.first().map(|r| r.offset), want, "fetch at {offset}");
    }
}

#[test]
fn tombstones_stay_until_delete_retention_ms_then_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        delete_retention_ms: 10_000,
        ..compact_config(512)
    };
    let log = open(dir.path(), config);
    let mut written = append_values(&log, &["a", "b"], 10, 1_000);
    let t = log.log_end_offset();
    log.append(keyed(&[(b"a".to_vec(), None)], 1_000, None), 0, 1_000)
        .expect("tombstone");
    written.push((t, b"a".to_vec(), None));
    // Filler so the tombstone's segment is sealed and cleanable.
    written.extend(append_values(&log, &["c"], 20, 1_000));
    publish_all(&log);

    let out = log
        .clean(5_000, CleanOptions::default())
        .expect("clean")
        .expect("due");
    assert!(out.cleaned_to > t, "the tombstone lies in the cleaned part");
    let seen = all_records(&log);
    assert_eq!(seen, model(&written, out.cleaned_to));
    assert!(seen.contains(&(t, b"a".to_vec(), None)), "tombstone kept");
    assert!(
        !seen.iter().any(|r| r.1 == b"a" && r.0 != t),
        "a's values gone"
    );

    // Not due by ratio (nothing new), but forced after delete.retention.ms.
    assert_eq!(
        log.clean(20_000, CleanOptions::default()).expect("clean"),
        None
    );
    let forced = CleanOptions {
        force: true,
        ..CleanOptions::default()
    };
    log.clean(10_999, forced).expect("clean").expect("forced");
    assert!(
        all_records(&log).iter().any(|r| r.0 == t),
        "10 s not yet passed"
    );
    log.clean(11_001, forced).expect("clean").expect("forced");
    let seen = all_records(&log);
    assert!(
        !seen.iter().any(|r| r.1 == b"a"),
        "tombstone removed: {seen:?}"
    );
    assert!(seen.iter().any(|r| r.1 == b"b"));
}

#[test]
fn the_active_segment_and_data_above_the_high_watermark_are_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), compact_config(1024));
    let written = append_values(&log, &["a", "b"], 60, 1_000);
    assert_eq!(
        log.clean(2_000, CleanOptions::default()).expect("clean"),
        None,
        "high watermark 0: nothing is cleanable"
    );
    let hw = log.log_end_offset() / 2;
    log.set_high_watermark(hw);
    let out = log
        .clean(2_000, CleanOptions::default())
        .expect("clean")
        .expect("due");
    assert!(out.cleaned_to <= hw && out.cleaned_to > 0);
    let seen = all_records(&log);
    assert_eq!(seen, model(&written, out.cleaned_to));
    assert_eq!(
        seen.iter().filter(|r| r.0 >= hw).count(),
        written.iter().filter(|r| r.0 >= hw).count()
    );

    // Everything published: the active segment still keeps its duplicates.
    publish_all(&log);
    let out = log
        .clean(2_000, CleanOptions::default())
        .expect("clean")
        .expect("due");
    assert!(
        out.cleaned_to < log.log_end_offset(),
        "active segment not cleaned"
    );
    let seen = all_records(&log);
    assert_eq!(seen, model(&written, out.cleaned_to));
    assert!(
        seen.iter().filter(|r| r.1 == b"a").count() > 1,
        "duplicates remain in the active segment"
    );
}

#[test]
fn min_compaction_lag_keeps_young_segments_dirty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        min_compaction_lag_ms: 1_000,
        ..compact_config(1024)
    };
    let log = open(dir.path(), config);
    let mut written = append_values(&log, &["a", "b"], 30, 1_000);
    let young = log.log_end_offset();
    written.extend(append_values(&log, &["a", "b"], 30, 9_000));
    publish_all(&log);
    let out = log
        .clean(9_500, CleanOptions::default())
        .expect("clean")
        .expect("due");
    assert!(out.cleaned_to <= young, "{} > {young}", out.cleaned_to);
    let seen = all_records(&log);
    assert_eq!(seen, model(&written, out.cleaned_to));
    assert_eq!(
        seen.iter().filter(|r| r.0 >= young).count(),
        60,
        "young records untouched"
    );
    // Once they are old enough they are cleaned too.
    let out = log
        .clean(10_001, CleanOptions::default())
        .expect("clean")
        .expect("due");
    assert!(out.cleaned_to > young);
}

#[test]
fn dirty_ratio_decides_when_a_clean_is_due() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        min_cleanable_dirty_ratio: 0.5,
        ..compact_config(1024)
    };
    let log = open(dir.path(), config.clone());
    let keys: Vec<String> = (0..100).map(|i| format!("key{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    append_values(&log, &refs, 2, 1_000);
    publish_all(&log);
    log.clean(2_000, CleanOptions::default())
        .expect("clean")
        .expect("all dirty");
    // A little new data: far below half of the cleanable bytes.
    append_values(&log, &["a"], 12, 1_000);
    publish_all(&log);
    assert_eq!(
        log.clean(2_000, CleanOptions::default()).expect("clean"),
        None
    );
    // max.compaction.lag.ms overrides the ratio once dirty data is old enough.
    log.set_config(LogConfig {
        max_compaction_lag_ms: 5_000,
        ..config
    });
    assert_eq!(
        log.clean(5_999, CleanOptions::default()).expect("clean"),
        None
    );
    assert!(
        log.clean(6_001, CleanOptions::default())
            .expect("clean")
            .is_some()
    );
}

#[test]
fn idempotent_producer_state_is_right_after_clean_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid = 7;
    {
        let log = open(dir.path(), compact_config(512));
        for seq in 0..20 {
            log.append(
                keyed(
                    &[(b"k".to_vec(), Some(format!("p{seq}").into_bytes()))],
                    1_000,
                    Some((pid, seq)),
                ),
                0,
                1_000,
            )
            .expect("append");
        }
        // A non-idempotent write supersedes the producer's last record.
        append_values(&log, &["k"], 1, 1_000);
        append_values(&log, &["z"], 20, 1_000);
        publish_all(&log);
        log.clean(2_000, CleanOptions::default())
            .expect("clean")
            .expect("due");
        assert!(
            !all_records(&log)
                .iter()
                .any(|r| r.2.as_deref() == Some(b"p19"))
        );
        // Crash, and make the checkpoint useless so producer state is rebuilt from the log.
        drop(log);
        fs::write(dir.path().join("partition.checkpoint"), b"SLCPgarbage").expect("checkpoint");
    }
    let log = open(dir.path(), compact_config(512));
    assert!(!log.recovery_stats().checkpoint_used);
    let retry = log
        .append(
            keyed(
                &[(b"k".to_vec(), Some(b"p19".to_vec()))],
                1_000,
                Some((pid, 19)),
            ),
            0,
            1_000,
        )
        .expect("retry");
    assert!(
        retry.duplicate,
        "the producer's last batch survived as an empty batch"
    );
    assert_eq!(retry.base_offset, 19);
    let next = log
        .append(
            keyed(
                &[(b"k".to_vec(), Some(b"p20".to_vec()))],
                1_000,
                Some((pid, 20)),
            ),
            0,
            1_000,
        )
        .expect("next in sequence");
    assert!(!next.duplicate);
    let gap = log.append(
        keyed(
            &[(b"k".to_vec(), Some(b"p22".to_vec()))],
            1_000,
            Some((pid, 22)),
        ),
        0,
        1_000,
    );
    assert!(gap.is_err(), "a sequence gap is still refused");
}

fn log_files(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().expect("meta").len(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn cleaned_segments_are_merged_up_to_segment_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), compact_config(1024));
    let written = append_values(&log, &["a", "b", "c", "d"], 100, 1_000);
    publish_all(&log);
    let before = log.segment_count();
    let out = log
        .clean(2_000, CleanOptions::default())
        .expect("clean")
        .expect("due");
    // A second pass merges what the first one shrank.
    let forced = CleanOptions {
        force: true,
        ..CleanOptions::default()
    };
    log.clean(2_000, forced).expect("clean").expect("forced");
    let after = log.segment_count();
    assert!(after * 4 < before, "{before} segments became {after}");
    for (name, len) in log_files(dir.path()) {
        assert!(len <= 1024, "{name} is {len} bytes");
    }
    assert_eq!(all_records(&log), model(&written, out.cleaned_to));
    drop(log);
    let log = open(dir.path(), compact_config(1024));
    assert_eq!(
        all_records(&log),
        model(&written, out.cleaned_to),
        "after reopen"
    );
}

/// What every clean must leave, whatever its map held: only written records at their offsets,
/// in order; the latest record of every key; everything from `cleaned_to` on; below it at most
/// one record per key.
fn check_invariants(seen: &[Seen], written: &[Seen], cleaned_to: i64) {
    let mut w = written.iter();
    for r in seen {
        assert!(
            w.any(|x| x == r),
            "{r:?} was never written there (or is out of order)"
        );
    }
    let mut latest: BTreeMap<&[u8], &Seen> = BTreeMap::new();
    for r in written {
        latest.insert(&r.1, r);
    }
    for r in latest.values() {
        assert!(seen.contains(r), "latest record {r:?} is gone");
    }
    for r in written.iter().filter(|r| r.0 >= cleaned_to) {
        assert!(
            seen.contains(r),
            "{r:?} at or above cleaned_to {cleaned_to} is gone"
        );
    }
    let mut below: BTreeMap<&[u8], usize> = BTreeMap::new();
    for r in seen.iter().filter(|r| r.0 < cleaned_to) {
        *below.entry(&r.1).or_default() += 1;
    }
    assert!(
        below.values().all(|&n| n == 1),
        "a key appears twice below {cleaned_to}"
    );
}

#[test]
fn a_small_offset_map_cleans_in_several_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), compact_config(1024));
    // Each key twice in a row, so a segment the map fills up in can hold both halves of a pair.
    let keys: Vec<String> = (0..100).map(|i| format!("key{}", i / 2)).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let written = append_values(&log, &refs, 2, 1_000);
    publish_all(&log);
    let opts = CleanOptions {
        force: false,
        max_keys: 10,
    };
    let first = log.clean(2_000, opts).expect("clean").expect("due");
    assert!(first.cleaned_to < 50, "the map bounded the first pass");
    check_invariants(&all_records(&log), &written, first.cleaned_to);
    let mut cleaned_to = first.cleaned_to;
    let mut passes = 1;
    for _ in 0..100 {
        match log.clean(2_000, opts).expect("clean") {
            Some(o) => {
                assert!(o.cleaned_to > cleaned_to, "every pass makes progress");
                cleaned_to = o.cleaned_to;
                passes += 1;
                check_invariants(&all_records(&log), &written, cleaned_to);
            }
            None => break,
        }
    }
    assert!(passes > 3, "{passes} passes");
    assert_eq!(all_records(&log), model(&written, cleaned_to));
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("list") {
        let e = e.expect("entry");
        fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

fn seg_name(base: i64, ext: &str) -> String {
    format!("{base:020}.{ext}")
}

/// Builds a log whose cleanable part (all segments but the active one) becomes one cleaned
/// segment at base 0, closes it, and returns (records before, records after a clean, the
/// bases of the cleaned group, the cleaned files: log, index, timeindex).
fn crash_fixture(
    original: &Path,
    cleaned: &Path,
) -> (Vec<Seen>, Vec<Seen>, Vec<i64>, [Vec<u8>; 3]) {
    let log = open(original, compact_config(512));
    append_values(&log, &["a", "b", "c"], 30, 1_000);
    publish_all(&log);
    let before = all_records(&log);
    log.close().expect("close");
    drop(log);
    let bases: Vec<i64> = log_files(original)
        .iter()
        .map(|(n, _)| n[..20].parse().expect("base"))
        .collect();
    copy_dir(original, cleaned);
    let log = open(cleaned, compact_config(1 << 20));
    publish_all(&log);
    let out = log
        .clean(2_000, CleanOptions::default())
        .expect("clean")
        .expect("due");
    assert_eq!(out.segments_after, 1, "one output segment");
    let after = all_records(&log);
    assert_ne!(before, after);
    log.close().expect("close");
    drop(log);
    let group: Vec<i64> = bases
        .iter()
        .copied()
        .filter(|&b| b < out.cleaned_to)
        .collect();
    let files = ["log", "index", "timeindex"]
        .map(|ext| fs::read(cleaned.join(seg_name(0, ext))).expect("cleaned file"));
    (before, after, group, files)
}

fn no_temp_files(dir: &Path) {
    for e in fs::read_dir(dir).expect("list") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".cleaned") && !name.ends_with(".swap") && !name.ends_with(".deleted"),
            "{name} left behind"
        );
    }
}

#[test]
fn a_crash_at_each_step_of_the_swap_loses_and_duplicates_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    // (step, what the crash left, whether the clean's result must show)
    type Step = fn(&Path, &[i64], &[Vec<u8>; 3]);
    let steps: [(&str, Step, bool); 6] = [
        (
            "cleaned files written, not renamed",
            |d, _, f| {
                for (ext, data) in ["log", "index", "timeindex"].iter().zip(f) {
                    fs::write(d.join(format!("{}.cleaned", seg_name(0, ext))), data).expect("w");
                }
            },
            false,
        ),
        (
            "index swaps published, log still .cleaned",
            |d, _, f| {
                fs::write(d.join(format!("{}.cleaned", seg_name(0, "log"))), &f[0]).expect("w");
                fs::write(d.join(format!("{}.swap", seg_name(0, "index"))), &f[1]).expect("w");
                fs::write(d.join(format!("{}.swap", seg_name(0, "timeindex"))), &f[2]).expect("w");
            },
            false,
        ),
        (
            "swap published, nothing installed",
            |d, _, f| {
                for (ext, data) in ["log", "index", "timeindex"].iter().zip(f) {
                    fs::write(d.join(format!("{}.swap", seg_name(0, ext))), data).expect("w");
                }
            },
            true,
        ),
        (
            "later segments of the group deleted, swap not renamed",
            |d, g, f| {
                fs::write(d.join(format!("{}.swap", seg_name(0, "log"))), &f[0]).expect("w");
                for &b in &g[1..] {
                    for ext in ["log", "index", "timeindex"] {
                        let _ = fs::remove_file(d.join(seg_name(b, ext)));
                    }
                }
            },
            true,
        ),
        (
            "indexes renamed into place, log swap not",
            |d, _, f| {
                fs::write(d.join(format!("{}.swap", seg_name(0, "log"))), &f[0]).expect("w");
                fs::write(d.join(seg_name(0, "index")), &f[1]).expect("w");
                fs::write(d.join(seg_name(0, "timeindex")), &f[2]).expect("w");
            },
            true,
        ),
        (
            "torn swap (never happens after fsync, but must not be trusted)",
            |d, _, f| {
                let torn = &f[0][..f[0].len() - 7];
                fs::write(d.join(format!("{}.swap", seg_name(0, "log"))), torn).expect("w");
                fs::write(d.join(seg_name(0, "index")), &f[1]).expect("w");
            },
            false,
        ),
    ];
    for (i, (what, crash, shows_clean)) in steps.iter().enumerate() {
        let original = root.path().join(format!("o{i}"));
        let cleaned = root.path().join(format!("c{i}"));
        let (before, after, group, files) = crash_fixture(&original, &cleaned);
        assert!(group.len() > 1, "the fixture merges several segments");
        crash(&original, &group, &files);
        let log = open(&original, compact_config(512));
        let seen = all_records(&log);
        let want = if *shows_clean { &after } else { &before };
        assert_eq!(&seen, want, "after a crash with {what}");
        no_temp_files(&original);
        // The indexes work: every offset is found through them.
        for (o, _, _) in &seen {
            let r = log.read(*o, 1, i64::MAX, true).expect("read");
            assert!(!r.records.is_empty(), "{what}: offset {o} readable");
        }
    }
}

#[test]
fn segments_left_with_nothing_are_removed_except_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), compact_config(512));
    let written = append_values(&log, &["only"], 60, 1_000);
    publish_all(&log);
    let before = log.segment_count();
    let out = log
        .clean(2_000, CleanOptions::default())
        .expect("clean")
        .expect("due");
    assert_eq!(
        out.segments_after, 2,
        "the emptied first one and the latest record's"
    );
    assert_eq!(log.segment_count(), 3, "those two and the active segment");
    assert!(before > 4);
    let want = model(&written, out.cleaned_to);
    assert_eq!(all_records(&log), want);
    let files = log_files(dir.path());
    assert_eq!(
        files[0],
        (seg_name(0, "log"), 0),
        "the first segment stays, empty"
    );
    assert!(files[1..].iter().all(|(_, len)| *len > 0));
    assert_eq!(
        log.log_start_offset(),
        0,
        "compaction never moves the log start"
    );
    let r = log
        .read(0, 1 << 20, i64::MAX, true)
        .expect("read at the log start");
    assert_eq!(
        r.next_offset,
        want[0].0 + 1,
        "a fetch at 0 gets the first remaining batch"
    );
    log.close().expect("close");
    drop(log);
    let log = open(dir.path(), compact_config(512));
    assert_eq!(all_records(&log), want, "after reopen");
    assert_eq!(log.log_start_offset(), 0, "and after a reopen");
    assert_eq!(log.log_end_offset(), 60);
}

#[test]
fn appends_and_reads_go_on_while_the_cleaner_runs() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(open(dir.path(), compact_config(1024)));
    let mut written = append_values(&log, &["a", "b", "c"], 30, 1_000);
    publish_all(&log);
    let done = Arc::new(AtomicBool::new(false));
    let appender = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            let w = append_values(&log, &["a", "b", "c", "d"], 100, 1_000);
            publish_all(&log);
            w
        })
    };
    let reader = {
        let (log, done) = (Arc::clone(&log), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut passes = 0;
            while !done.load(Ordering::Acquire) || passes == 0 {
                // Every read is whole, CRC-checked batches with offsets strictly increasing.
                let seen = all_records(&log);
                assert!(
                    seen.windows(2).all(|w| w[0].0 < w[1].0),
                    "offsets out of order"
                );
                passes += 1;
            }
            passes
        })
    };
    let mut cleans = 0;
    for _ in 0..200 {
        if log
            .clean(2_000, CleanOptions::default())
            .expect("clean")
            .is_some()
        {
            cleans += 1;
        }
        if appender.is_finished() {
            break;
        }
    }
    written.extend(appender.join().expect("appender"));
    done.store(true, Ordering::Release);
    assert!(reader.join().expect("reader") > 0);
    assert!(cleans > 0);
    publish_all(&log);
    log.clean(2_000, CleanOptions::default())
        .expect("final clean");
    check_invariants(&all_records(&log), &written, log.cleaned_to());
}

#[test]
fn the_log_managers_cleaner_thread_compacts_due_logs_only() {
    use sluice_storage::{BrokerLogConfig, LogManager};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = BrokerLogConfig::default();
    broker.set("log.cleaner.backoff.ms", "10").expect("valid");
    let mgr = LogManager::open(dir.path(), broker).expect("open");
    let compacted = mgr.create("c", 0, compact_config(1024)).expect("create");
    let plain = mgr
        .create(
            "d",
            0,
            LogConfig {
                cleanup_policy: CleanupPolicy::Delete,
                retention_ms: -1,
                ..compact_config(1024)
            },
        )
        .expect("create");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let written = append_values(&compacted, &["a", "b"], 40, now);
    let plain_written = append_values(&plain, &["a", "b"], 40, now);
    publish_all(&compacted);
    publish_all(&plain);
    mgr.start_background();
    // Awaits the cleaner (bounded): it runs every 10 ms once started.
    let mut waited = 0;
    while compacted.cleaned_to() == 0 && waited < 1_000 {
        std::thread::sleep(std::time::Duration::from_millis(10));
        waited += 1;
    }
    assert!(
        compacted.cleaned_to() > 0,
        "the cleaner thread cleaned the log"
    );
    assert_eq!(
        all_records(&compacted),
        model(&written, compacted.cleaned_to())
    );
    assert_eq!(
        all_records(&plain),
        plain_written,
        "delete policy: untouched"
    );
    mgr.shutdown().expect("shutdown");
}

#[test]
fn records_appended_after_a_truncation_below_the_cleaned_offset_are_dirty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), compact_config(1024));
    let mut written = append_values(&log, &["a", "b"], 40, 1_000);
    publish_all(&log);
    let first = log
        .clean(2_000, CleanOptions::default())
        .expect("clean")
        .expect("due");
    let cut = first.cleaned_to / 2;
    log.truncate_to(cut).expect("truncate");

    let end = log.log_end_offset();
    assert!(end <= cut);
    assert!(log.cleaned_to() <= end, "cleaned_to follows the truncation");
    written.retain(|w| w.0 < end);
    written.extend(append_values(&log, &["a", "b"], 40, 1_000));
    publish_all(&log);
    let out = log
        .clean(2_000, CleanOptions::default())
        .expect("clean")
        .expect("due");
    assert_eq!(all_records(&log), model(&written, out.cleaned_to));
}

#[test]
fn retention_on_compact_delete_topics_is_not_stalled_by_an_emptied_first_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        cleanup_policy: CleanupPolicy::CompactDelete,
        retention_ms: 10_000,
        ..compact_config(512)
    };
    let log = open(dir.path(), config);
    append_values(&log, &["only"], 30, 1_000);
    append_values(&log, &["other"], 30, 50_000);
    publish_all(&log);
    log.clean(50_000, CleanOptions::default())
        .expect("clean")
        .expect("due");
    assert_eq!(log_files(dir.path())[0].1, 0, "an emptied first segment");
    // The old records (ts 1000) are past retention.ms at 20 000; the emptied segment must not
    // stop retention from reaching the segment behind it.
    let out = log.apply_retention(20_000).expect("retention");
    assert!(out.segments_deleted >= 2, "{out:?}");
    assert!(
        all_records(&log).iter().all(|r| r.1 == b"other"),
        "only the young records remain"
    );
}

mod model_test {
    //! Property test: random keyed appends (tiny segments, so rolls are frequent), cleans with a
    //! roomy or a tiny offset map, and clean or crash reopens agree with the model: the latest
    //! record per key below "cleaned up to", everything above it as written.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// `publish`: move the high watermark to the log end afterwards.
        Append {
            keys: Vec<(u8, bool)>,
            publish: bool,
        },
        Clean {
            force: bool,
            tiny_map: bool,
        },
        Reopen {
            clean: bool,
        },
        Truncate {
            at: u16,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (prop::collection::vec((0u8..6, prop::bool::weighted(0.15)), 1..4), prop::bool::weighted(0.7))
                .prop_map(|(keys, publish)| Op::Append { keys, publish }),
            3 => (any::<bool>(), prop::bool::weighted(0.3))
                .prop_map(|(force, tiny_map)| Op::Clean { force, tiny_map }),
            1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
            1 => any::<u16>().prop_map(|at| Op::Truncate { at }),
        ]
    }

    fn run(ops: Vec<Op>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = compact_config(400);
        let mut log = open(dir.path(), config.clone());
        let mut written: Vec<Seen> = Vec::new();
        let mut end = 0i64;
        for op in ops {
            match op {
                Op::Append { keys, publish } => {
                    let base = log.log_end_offset();
                    let recs: Vec<Rec> = keys
                        .iter()
                        .enumerate()
                        .map(|(i, (k, tombstone))| {
                            let key = format!("k{k}").into_bytes();
                            let value = (!tombstone)
                                .then(|| format!("k{k}@{}", base + i as i64).into_bytes());
                            (key, value)
                        })
                        .collect();
                    log.append(keyed(&recs, 1_000, None), 0, 1_000)
                        .expect("append");
                    for (i, (k, v)) in recs.into_iter().enumerate() {
                        written.push((base + i as i64, k, v));
                    }
                    end = base + keys.len() as i64;
                    if publish {
                        publish_all(&log);
                    }
                }
                Op::Clean { force, tiny_map } => {
                    let opts = CleanOptions {
                        force,
                        max_keys: if tiny_map { 2 } else { 1 << 16 },
                    };
                    let out = log.clean(2_000, opts).expect("clean");
                    let seen = all_records(&log);
                    check_invariants(&seen, &written, log.cleaned_to());
                    if out.is_some() && !tiny_map {
                        assert_eq!(seen, model(&written, log.cleaned_to()));
                    }
                }
                Op::Reopen { clean } => {
                    if clean {
                        log.close().expect("close");
                    }
                    let before = log.cleaned_to();
                    drop(log);
                    log = open(dir.path(), config.clone());
                    publish_all(&log);
                    assert_eq!(log.cleaned_to(), before, "cleaned-up-to survives a reopen");
                }
                Op::Truncate { at } => {
                    // As replication does: only what is above the high watermark (and so was
                    // never cleaned, nor superseded anything cleaned).
                    let hw = log.high_watermark();
                    let at = hw + at as i64 % (end - hw + 1);
                    log.truncate_to(at).expect("truncate");
                    let new_end = log.log_end_offset();
                    assert!(
                        new_end <= at.max(log.log_start_offset()),
                        "{new_end} > {at}"
                    );
                    assert!(log.cleaned_to() <= new_end.max(log.log_start_offset()));
                    if new_end < end {
                        end = new_end;
                    }
                    written.retain(|w| w.0 < end);
                }
            }
            check_invariants(&all_records(&log), &written, log.cleaned_to());
            assert_eq!(log.log_end_offset(), end, "log end");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn cleaning_agrees_with_the_model(ops in prop::collection::vec(op(), 1..120)) {
            run(ops);
        }
    }
}
