//! The log cleaner: for `cleanup.policy=compact` it keeps, per key, only the record with the
//! latest offset (Kafka's log compaction).
//!
//! **What is cleaned.** Whole sealed segments from the start of the log up to the first
//! *uncleanable* segment: the active one, one reaching past the high watermark, or one whose
//! newest record is younger than `min.compaction.lag.ms`. Everything below the checkpointed
//! "cleaned up to" offset is *clean*; the cleanable segments above it are *dirty*. A log is
//! cleaned when `dirty / (clean + dirty) >= min.cleanable.dirty.ratio`, or when its first dirty
//! batch is older than `max.compaction.lag.ms`.
//!
//! **How.** (1) Key -> latest offset over the dirty segments, keys reduced to a 16-byte digest
//! (SipHash with two random keys per clean, so a client cannot aim for collisions). The map
//! holds at most `log.cleaner.dedupe.buffer.size / 32` entries (a 16-byte digest, an 8-byte
//! offset and the hash table's overhead); when it is full, mapping stops at the end of the current segment and
//! this clean covers only the segments mapped (the rest stay dirty for the next one; the first
//! dirty segment is always mapped whole, so the bound can be exceeded by one segment's keys).
//!
//! (2) Every cleanable segment up to there is rewritten, grouped so that the sources of one
//! output segment total at most `segment.bytes`: a record is dropped when the map holds a later
//! offset for its key, or when it is a tombstone whose own timestamp is older than
//! `delete.retention.ms` (a simpler rule than Kafka's "since the segment was first cleaned";
//! tombstones are only removed by a clean, so one that expires after the last clean goes with
//! the next).
//! Offsets never change: see [`filter`]. A batch left empty is dropped, except the last batch of
//! an idempotent producer id, which stays as an empty batch so producer state rebuilt from the
//! log stays right. Control batches, compressed batches (the broker never decompresses: they are
//! *not* compacted, and their keys do not enter the map) and keyless records are kept. An output
//! segment left with no batches is deleted, except the log's first (kept empty, so the log
//! start offset never moves because of compaction).
//!
//! (3) The outputs are swapped in crash-safely ([`swap`]) under the checkpoint lock only; the
//! reading and writing happen without any lock that appends take.

mod filter;
mod swap;

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use sluice_protocol::batch::BatchHeader;

use crate::error::StorageError;
use crate::index::TimeEntry;
use crate::partition::{Inner, lock, read, write};
use crate::segment::{ActiveIndex, Segment};

pub(crate) use swap::complete_swaps;

/// Bytes one key takes in the offset map, for sizing it from a memory budget.
const MAP_ENTRY_BYTES: i64 = 32;

/// How one clean runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanOptions {
    /// Clean even if the dirty ratio and `max.compaction.lag.ms` do not ask for it (tombstones
    /// past `delete.retention.ms` are removed, small cleaned segments merged).
    pub force: bool,
    /// Most keys in the offset map (see the module docs for the bound).
    pub max_keys: usize,
}

impl Default for CleanOptions {
    fn default() -> Self {
        CleanOptions::with_buffer(128 << 20)
    }
}

impl CleanOptions {
    /// Options for a `log.cleaner.dedupe.buffer.size` of `bytes`.
    pub fn with_buffer(bytes: i64) -> Self {
        CleanOptions {
            force: false,
            max_keys: (bytes / MAP_ENTRY_BYTES).max(1) as usize,
        }
    }
}

/// What one clean did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanOutcome {
    /// Segments rewritten.
    pub segments_before: usize,
    /// Segments after merging.
    pub segments_after: usize,
    /// Bytes of the rewritten segments before and after.
    pub bytes_before: u64,
    /// Bytes after.
    pub bytes_after: u64,
    /// Records dropped (superseded values and expired tombstones).
    pub records_removed: u64,
    /// The new "cleaned up to" offset.
    pub cleaned_to: i64,
}

/// The cleanable part of a log as found at the start of a clean.
struct Plan {
    /// A snapshot of the segment list; `segs[..n]` are cleanable, `segs[n]` is not.
    segs: Vec<Arc<Segment>>,
    n: usize,
    /// First segment at or above the "cleaned up to" offset.
    first_dirty: usize,
}

/// Key digests -> latest offset, bounded.
struct OffsetMap {
    hash_a: RandomState,
    hash_b: RandomState,
    map: HashMap<u128, i64>,
    max_keys: usize,
}

impl OffsetMap {
    fn new(max_keys: usize) -> Self {
        OffsetMap {
            hash_a: RandomState::new(),
            hash_b: RandomState::new(),
            map: HashMap::new(),
            max_keys,
        }
    }
    fn digest(&self, key: &[u8]) -> u128 {
        ((self.hash_a.hash_one(key) as u128) << 64) | self.hash_b.hash_one(key) as u128
    }
    fn insert(&mut self, key: &[u8], offset: i64) {
        let d = self.digest(key);
        self.map.insert(d, offset);
    }
    fn latest(&self, key: &[u8]) -> Option<i64> {
        self.map.get(&self.digest(key)).copied()
    }
    fn full(&self) -> bool {
        self.map.len() >= self.max_keys
    }
}

fn corrupt(seg: &Segment, problem: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {problem}", seg.path("log").display()),
    )
}

/// How much of a segment made it into the offset map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapped {
    /// All of it, with room to spare.
    Whole,
    /// All of it, and the map is now full.
    WholeAndFull,
    /// The map filled up part-way.
    Partly,
}

/// Adds the keyed records of `seg` to the map, stopping when it is full unless `whole`.
fn map_segment(seg: &Segment, map: &mut OffsetMap, whole: bool) -> io::Result<Mapped> {
    let stop = seg.scan(0, seg.size(), i64::MIN, true, |_, h, bytes| {
        if h.is_control() || h.compression() != 0 {
            return true;
        }
        if let Some(records) = filter::split_records(h, bytes) {
            for r in records {
                if let Some(k) = r.key {
                    map.insert(k, r.offset);
                }
            }
        }
        whole || !map.full()
    })?;
    if let Some(problem) = stop.problem {
        return Err(corrupt(seg, problem));
    }
    Ok(if stop.pos < seg.size() {
        Mapped::Partly
    } else if map.full() {
        Mapped::WholeAndFull
    } else {
        Mapped::Whole
    })
}

/// One output segment being written as `<base>.log.cleaned`, indexed as it goes.
struct Output {
    base: i64,
    log: BufWriter<File>,
    pos: u64,
    ix: ActiveIndex,
    interval: usize,
}

impl Output {
    fn create(dir: &Path, base: i64, interval: usize) -> io::Result<Output> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(swap::temp_path(dir, base, "log", "cleaned"))?;
        Ok(Output {
            base,
            log: BufWriter::with_capacity(1 << 20, f),
            pos: 0,
            ix: ActiveIndex::default(),
            interval,
        })
    }

    fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        let h = BatchHeader::parse(bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        self.log.write_all(bytes)?;
        Segment::index_into(&mut self.ix, self.base, &h, self.pos, self.interval);
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Flushes and fsyncs the log and writes the two index files (`.cleaned`), fsynced.
    /// Returns the output's size.
    fn finish(self, dir: &Path) -> io::Result<u64> {
        let f = self.log.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        let mut ix = self.ix;
        // As `Segment::seal`: the last time entry carries the segment's largest timestamp.
        if let Some((ts, off)) = ix.max_ts
            && ix.times.last().is_none_or(|t| ts > t.ts)
        {
            ix.times.push(TimeEntry {
                ts,
                rel: (off - self.base) as u32,
            });
        }
        let mut buf = Vec::new();
        ix.offsets.iter().for_each(|e| e.encode(&mut buf));
        write_synced(&swap::temp_path(dir, self.base, "index", "cleaned"), &buf)?;
        buf.clear();
        ix.times.iter().for_each(|e| e.encode(&mut buf));
        write_synced(
            &swap::temp_path(dir, self.base, "timeindex", "cleaned"),
            &buf,
        )?;
        Ok(self.pos)
    }
}

fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Consecutive segments of `segs` whose sizes total at most `max_bytes` (at least one each),
/// and whose offsets stay within a u32 of the group's base; `end` is the offset after the last.
fn group_by_size(segs: &[Arc<Segment>], end: i64, max_bytes: u64) -> Vec<&[Arc<Segment>]> {
    let mut groups = Vec::new();
    let mut i = 0;
    while i < segs.len() {
        let base = segs[i].base;
        let mut total = segs[i].size();
        let mut j = i + 1;
        while j < segs.len() {
            let next_end = segs.get(j + 1).map_or(end, |s| s.base);
            if total + segs[j].size() > max_bytes || next_end - 1 - base > u32::MAX as i64 {
                break;
            }
            total += segs[j].size();
            j += 1;
        }
        groups.push(&segs[i..j]);
        i = j;
    }
    groups
}

impl Inner {
    /// Runs one clean if the log is compacted and (unless forced) due. `Ok(None)`: nothing done.
    pub(crate) fn clean(
        self: &Arc<Self>,
        now_ms: i64,
        opts: CleanOptions,
    ) -> Result<Option<CleanOutcome>, StorageError> {
        self.check_usable()?;
        let config = read(&self.config).clone();
        if !config.cleanup_policy.compacts() {
            return Ok(None);
        }
        let started = Instant::now();
        let ctx = |e: io::Error| StorageError::io(format!("cleaning {}", self.name), e);
        let Some(plan) = self.plan(now_ms, opts.force).map_err(ctx)? else {
            return Ok(None);
        };
        let mut map = OffsetMap::new(opts.max_keys);
        let mut m = plan.first_dirty;
        while m < plan.n {
            let whole = m == plan.first_dirty;
            let mapped = map_segment(&plan.segs[m], &mut map, whole).map_err(ctx)?;
            // A segment mapped only in part stays dirty: "cleaned up to" must mean that every
            // key below it was deduplicated. (Its keys in the map are still true later offsets.)
            if mapped != Mapped::Partly {
                m += 1;
            }
            if mapped != Mapped::Whole {
                break;
            }
        }
        // With nothing dirty (a forced clean) m == n: everything cleanable is rewritten.
        let sources = &plan.segs[..m];
        let end = plan.segs[m].base;
        let last_of_producer: HashMap<i64, i64> = lock(&self.state)
            .producers
            .producers
            .iter()
            .filter_map(|(pid, e)| e.batches.back().map(|b| (*pid, b.last_offset)))
            .collect();
        let groups = group_by_size(sources, end, config.segment_bytes);
        let mut out = CleanOutcome {
            segments_before: sources.len(),
            segments_after: groups.len(),
            cleaned_to: end,
            ..Default::default()
        };
        let bases: Vec<i64> = groups.iter().map(|g| g[0].base).collect();
        // Groups whose every record went are removed, not replaced by empty segments; except
        // the first, whose segment holds the log start: the log start offset never moves
        // because of compaction (a fetch there gets the next batch, as in Kafka), and truncation
        // and recovery rely on the first segment's base being at or below it.
        let mut emptied = vec![false; groups.len()];
        let written = (|| -> io::Result<()> {
            for (i, group) in groups.iter().enumerate() {
                let mut o = Output::create(&self.dir, group[0].base, config.index_interval_bytes)?;
                for seg in group.iter() {
                    out.bytes_before += seg.size();
                    out.records_removed +=
                        self.rewrite(seg, &mut o, &map, &last_of_producer, &config, now_ms)?;
                }
                let size = o.finish(&self.dir)?;
                out.bytes_after += size;
                if size == 0 && i > 0 {
                    emptied[i] = true;
                    swap::discard(&self.dir, group[0].base)?;
                }
            }
            Ok(())
        })();
        out.segments_after = emptied.iter().filter(|e| !**e).count();
        if let Err(e) = written {
            for &b in &bases {
                let _ = swap::discard(&self.dir, b);
            }
            return Err(ctx(e));
        }
        if !self.swap_in(&plan.segs, m, &groups, &emptied, end)? {
            return Ok(None);
        }
        tracing::info!(
            log = %self.name,
            segments_before = out.segments_before,
            segments_after = out.segments_after,
            bytes_before = out.bytes_before,
            bytes_after = out.bytes_after,
            records_removed = out.records_removed,
            cleaned_to = end,
            duration_ms = started.elapsed().as_millis() as u64,
            "cleaned log"
        );
        Ok(Some(out))
    }

    /// Finds the cleanable segments and decides whether a clean is due.
    fn plan(&self, now_ms: i64, force: bool) -> io::Result<Option<Plan>> {
        let config = read(&self.config).clone();
        let interval = config.index_interval_bytes;
        let segs: Vec<Arc<Segment>> = read(&self.segments).clone();
        let hw = self.retention_limit();
        let mut n = 0;
        while n + 1 < segs.len() {
            let s = &segs[n];
            if s.is_active() || segs[n + 1].base > hw {
                break;
            }
            // Opens the sealed index now, so this segment never reopens index files by name
            // once its name belongs to a cleaned segment.
            let newest = s.max_timestamp(interval)?.map_or(i64::MIN, |(ts, _)| ts);
            if now_ms.saturating_sub(newest) < config.min_compaction_lag_ms {
                break;
            }
            n += 1;
        }
        if n == 0 {
            return Ok(None);
        }
        let cleaned_to = self
            .cleaned_to
            .load(Ordering::Acquire)
            .max(self.log_start.load(Ordering::Acquire));
        let first_dirty = segs[..n]
            .iter()
            .position(|s| s.base >= cleaned_to)
            .unwrap_or(n);
        let clean: u64 = segs[..first_dirty].iter().map(|s| s.size()).sum();
        let dirty: u64 = segs[first_dirty..n].iter().map(|s| s.size()).sum();
        let due = if force {
            true
        } else if dirty == 0 {
            false
        } else if dirty as f64 / (clean + dirty) as f64 >= config.min_cleanable_dirty_ratio {
            true
        } else {
            let first = &segs[first_dirty];
            let oldest = first
                .find_batch(first.base, interval)?
                .map_or(i64::MAX, |(_, h)| h.max_timestamp);
            now_ms.saturating_sub(oldest) >= config.max_compaction_lag_ms
        };
        Ok(due.then_some(Plan {
            segs,
            n,
            first_dirty,
        }))
    }

    /// Copies the batches of `seg` to `o` without what compaction drops; returns the number
    /// of records dropped.
    fn rewrite(
        &self,
        seg: &Segment,
        o: &mut Output,
        map: &OffsetMap,
        last_of_producer: &HashMap<i64, i64>,
        config: &crate::config::LogConfig,
        now_ms: i64,
    ) -> io::Result<u64> {
        let mut removed = 0u64;
        let mut failed = None;
        let stop = seg.scan(0, seg.size(), i64::MIN, true, |_, h, bytes| {
            let result = (|| {
                if h.is_control() || h.compression() != 0 {
                    return o.push(bytes);
                }
                let Some(records) = filter::split_records(h, bytes) else {
                    tracing::warn!(log = %self.name, offset = h.base_offset, "batch records are malformed; kept as they are");
                    return o.push(bytes);
                };
                let kept: Vec<_> = records
                    .iter()
                    .filter(|r| match r.key {
                        None => true,
                        Some(k) => {
                            let superseded = map.latest(k).is_some_and(|latest| latest > r.offset);
                            let expired_tombstone = r.tombstone
                                && now_ms.saturating_sub(r.timestamp) > config.delete_retention_ms;
                            !(superseded || expired_tombstone)
                        }
                    })
                    .copied()
                    .collect();
                removed += (records.len() - kept.len()) as u64;
                if kept.len() == records.len() {
                    o.push(bytes)
                } else if !kept.is_empty()
                    || (h.has_producer_id()
                        && last_of_producer.get(&h.producer_id) == Some(&h.last_offset()))
                {
                    o.push(&filter::rebuild(bytes, &kept))
                } else {
                    Ok(())
                }
            })();
            match result {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(problem) = stop.problem {
            return Err(corrupt(seg, problem));
        }
        Ok(removed)
    }

    /// Swaps the published outputs in under the checkpoint lock. Returns false (and discards
    /// them) if the log changed under the clean (truncation, DeleteRecords, retention).
    fn swap_in(
        &self,
        snapshot: &[Arc<Segment>],
        m: usize,
        groups: &[&[Arc<Segment>]],
        emptied: &[bool],
        end: i64,
    ) -> Result<bool, StorageError> {
        let dir = &self.dir;
        let discard = |why: &str| {
            tracing::info!(log = %self.name, reason = why, "abandoning a clean");
            for g in groups {
                if let Err(e) = swap::discard(dir, g[0].base) {
                    tracing::warn!(log = %self.name, error = %e, "could not remove cleaned files");
                }
            }
        };
        let _c = lock(&self.checkpoint_lock);
        if let Err(e) = self.check_usable() {
            discard("the log is closed");
            return Err(e);
        }
        let unchanged = {
            let segs = read(&self.segments);
            segs.len() > m
                && segs[..m]
                    .iter()
                    .zip(&snapshot[..m])
                    .all(|(a, b)| Arc::ptr_eq(a, b) && a.size() == b.size())
        };
        if !unchanged {
            discard("the log changed during the clean");
            return Ok(false);
        }
        // The checkpoint must name the active segment, never one being replaced: recovery
        // trusts its byte position within that segment.
        if let Err(e) = self.write_checkpoint_locked(false) {
            // Published swaps left behind would be finished by the next open, even if the log
            // were truncated below them meanwhile.
            discard("the checkpoint before the swap failed");
            return Err(e);
        }
        // Published only now, under the checkpoint lock and after the checks above: a `.swap`
        // is finished by the next open, so it must never appear for a log that changed or was
        // deleted meanwhile (a topic re-created under the same name reuses the directory path).
        let published: Vec<i64> = groups
            .iter()
            .zip(emptied)
            .filter(|(_, e)| !**e)
            .map(|(g, _)| g[0].base)
            .collect();
        if let Err(e) = swap::publish(dir, &published) {
            discard("publishing the cleaned files failed");
            return Err(StorageError::io(format!("cleaning {}", self.name), e));
        }
        let installed = (|| -> io::Result<Vec<Arc<Segment>>> {
            let mut fresh = Vec::with_capacity(groups.len());
            for (g, &empty) in groups.iter().zip(emptied) {
                if empty {
                    // Nothing in these offsets is needed any more: deleting them in any order
                    // is crash-safe.
                    for s in g.iter() {
                        s.delete_files()?;
                    }
                } else {
                    swap::install(dir, g)?;
                }
            }
            swap::finish(dir)?;
            let interval = read(&self.config).index_interval_bytes;
            for (g, _) in groups.iter().zip(emptied).filter(|(_, e)| !**e) {
                let s = Arc::new(Segment::open(dir, g[0].base)?);
                s.max_timestamp(interval)?;
                fresh.push(s);
            }
            Ok(fresh)
        })();
        let fresh = match installed {
            Ok(f) => f,
            Err(e) => {
                // Some names may point at new files, the segment list at old ones: only a
                // reopen (which finishes the swap) makes them agree again.
                self.fail("swapping in cleaned segments", &e);
                return Err(StorageError::io(format!("cleaning {}", self.name), e));
            }
        };
        write(&self.segments).splice(..m, fresh);
        self.cleaned_to.fetch_max(end, Ordering::AcqRel);
        self.write_checkpoint_locked(false)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_map_digests_keys_and_knows_when_full() {
        let mut m = OffsetMap::new(2);
        m.insert(b"a", 1);
        m.insert(b"a", 5);
        assert!(!m.full());
        m.insert(b"b", 6);
        assert!(m.full());
        assert_eq!(m.latest(b"a"), Some(5));
        assert_eq!(m.latest(b"c"), None);
    }
}
