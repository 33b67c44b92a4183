//! One segment: a `.log` file of whole batches starting at `base` plus its two sparse indexes.
//!
//! Writers (serialized by the partition) append with one vectored write and then publish the new
//! committed size; readers use positional reads bounded by that size, so they never see a
//! half-written batch. The `File` lives as long as any `Arc<Segment>`, so deleting a segment
//! while a reader holds it is safe.
//!
//! The segment being written keeps disk blocks reserved ahead of its end (`fallocate` with
//! `FALLOC_FL_KEEP_SIZE`, so the file's length is still exactly its batches). Without that, ext4
//! allocates blocks for each write when the fsync writes it back (delayed allocation), and an
//! append racing that fsync can wait for the inode's allocation lock (seen in `sched_switch`
//! stacks of multi-millisecond appends under load; docs/benchmarks.md has the figures). Sealing
//! gives the unused reservation back, as does any truncation.
//!
//! A follower's segment (`set_direct`) writes its large appends with direct I/O (`O_DIRECT`)
//! through a second descriptor: a follower's bytes are read back only if it becomes leader, and
//! copying them into page-cache pages it drops again right after the fsync was most of a
//! follower's CPU on a VM whose host reclaims free memory (docs/benchmarks.md, "Direct I/O").
//! Direct writes must cover whole blocks, so each starts at the block holding the log's end
//! (its bytes kept from the last write, or read back) and the last block is padded with zeros:
//! the file may be up to a block longer than its batches until the segment is sealed, trimmed
//! or recovered (recovery cuts such padding quietly; it is not a torn batch). Every write is
//! positional, so buffered and direct appends mix freely; the kernel keeps the two coherent.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use sluice_protocol::batch::{BatchHeader, HEADER_LEN, verify_stored_batch};

use crate::index::{self, OFFSET_ENTRY, OffsetEntry, TIME_ENTRY, TimeEntry};

/// Name of a segment file: the base offset in 20 digits, as Kafka.
pub(crate) fn file_name(base: i64, ext: &str) -> String {
    format!("{base:020}.{ext}")
}

/// Parses `00000000000000000042.log` into 42.
pub(crate) fn parse_file_name(name: &str, ext: &str) -> Option<i64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The least and the most the active segment keeps reserved beyond its end: as much as it already
/// holds, within these bounds, so a partition that sees little traffic reserves little.
const RESERVE_MIN: u64 = 256 << 10;
const RESERVE_MAX: u64 = 16 << 20;
/// `reserved` once the file system has refused `fallocate`: no further attempts.
const RESERVE_UNSUPPORTED: u64 = u64::MAX;
/// The largest folio the page cache uses for a file (a PMD: 2 MiB on x86-64 and 4 KiB-page
/// arm64), which `drop_cached` allows for.
const LARGE_FOLIO: u64 = 2 << 20;
/// The page size `drop_cached` rounds to (4 KiB where Sluice runs; with larger pages the
/// kernel keeps the page that straddles each call's start).
const DROP_PAGE: u64 = 4096;
/// Direct I/O alignment of file offsets, lengths and memory: the logical block size of every
/// disk Sluice meets (512 B or 4 KiB) divides it.
const BLOCK: u64 = 4096;
/// A follower's append at least this large goes to disk directly; smaller ones are copied into
/// the page cache as before, so a trickle of small batches never waits for the disk once per
/// batch (the fsync writes them all at once).
const DIRECT_MIN: usize = 64 << 10;
/// Bytes one direct write takes from its staging buffer.
const STAGING: usize = 1 << 20;
/// Staging buffers kept for reuse across appends (memory reused instead of first-touched).
const STAGING_POOL: usize = 4;

/// Index state of the segment being written: entries in memory, flushed to disk in bulk.
#[derive(Debug, Default)]
pub(crate) struct ActiveIndex {
    pub(crate) offsets: Vec<OffsetEntry>,
    pub(crate) times: Vec<TimeEntry>,
    persisted_offsets: usize,
    persisted_times: usize,
    pub(crate) bytes_since_entry: usize,
    /// Largest timestamp in the segment and the last offset of the batch carrying it.
    pub(crate) max_ts: Option<(i64, i64)>,
    /// When the first batch arrived (drives `segment.ms`).
    pub(crate) first_batch_ms: Option<i64>,
}

/// Index state of a sealed segment: files searched with positional reads, opened on first use.
#[derive(Debug)]
pub(crate) struct SealedIndex {
    offsets: File,
    offsets_count: usize,
    times: File,
    times_count: usize,
    max_ts: Option<(i64, i64)>,
}

#[derive(Debug)]
pub(crate) enum IndexState {
    Active(ActiveIndex),
    /// `None` until first used (then validated, rebuilt if damaged).
    Sealed(Option<SealedIndex>),
}

/// A segment of the partition log.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base: i64,
    dir: PathBuf,
    file: File,
    committed: AtomicU64,
    synced: AtomicU64,
    /// Bytes before this were dropped from the page cache (`drop_cached`).
    uncached: AtomicU64,
    /// End of the blocks reserved for this file (may be past its length); written by appends.
    reserved: AtomicU64,
    index_unsynced: AtomicBool,
    index: RwLock<IndexState>,
    /// Direct-I/O writer while this is a follower's active segment (`set_direct`).
    direct: Mutex<Option<Direct>>,
    /// Whether `direct` holds a writer, so a leader's large appends skip its lock.
    direct_on: AtomicBool,
    /// True once `set_direct` failed to open the file for direct I/O: not tried again.
    direct_unsupported: AtomicBool,
    /// The file may hold zero padding past `committed` (a direct write's last block).
    padded: AtomicBool,
    /// Bumped by every cut, so a direct writer's copy of the last block is known stale.
    cuts: AtomicU64,
}

/// The direct-I/O side of a segment being written.
#[derive(Debug)]
struct Direct {
    /// The segment's file opened with `O_DIRECT` (positional writes only).
    file: File,
    /// The bytes of the block holding the committed end, from `tail_at` to that end.
    tail: Vec<u8>,
    tail_at: u64,
    /// `Segment::cuts` when `tail` was taken: any cut since makes it stale.
    tail_cuts: u64,
}

/// Block-aligned staging memory for direct writes, pooled so appends reuse warm pages.
struct Staging(Vec<u8>);

static STAGING_FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

impl Staging {
    fn take() -> Staging {
        let pooled = lock(&STAGING_FREE).pop();
        Staging(pooled.unwrap_or_else(|| vec![0u8; STAGING + BLOCK as usize]))
    }

    /// `STAGING` bytes starting at a block boundary, or `None` if the allocator's pointer
    /// cannot be aligned (never seen; the caller then writes through the page cache).
    fn aligned(&mut self) -> Option<&mut [u8]> {
        let off = self.0.as_ptr().align_offset(BLOCK as usize);
        self.0.get_mut(off..off.checked_add(STAGING)?)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let mut free = lock(&STAGING_FREE);
        if free.len() < STAGING_POOL {
            free.push(std::mem::take(&mut self.0));
        }
    }
}

/// How a scan of a segment ended.
#[derive(Debug)]
pub(crate) struct ScanStop {
    /// Position after the last good batch.
    pub(crate) pos: u64,
    /// Why the scan stopped before the end, if it did.
    pub(crate) problem: Option<String>,
}

fn read_lock<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
fn write_lock<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes all of `buf` at `at` through a direct-I/O descriptor.
fn write_all_direct(file: &File, buf: &[u8], mut at: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.write_at(&buf[done..], at)?;
        // A short direct write (a full disk) leaves an unaligned rest the next call would be
        // refused for: report it as the failure it is.
        if n == 0 || !(n as u64).is_multiple_of(BLOCK) {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "direct write stopped after {} of {} bytes",
                    done + n,
                    buf.len()
                ),
            ));
        }
        done += n;
        at += n as u64;
    }
    Ok(())
}

impl Segment {
    /// Creates an empty segment (replacing any stale file of the same name); `reserve` bytes of
    /// disk are reserved for it up front (`preallocate`), 0 for the default reserve-ahead.
    pub(crate) fn create(dir: &Path, base: i64, reserve: u64) -> io::Result<Segment> {
        for ext in ["index", "timeindex"] {
            match fs::remove_file(dir.join(file_name(base, ext))) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(file_name(base, "log")))?;
        file.set_len(0)?;
        let seg = Self::with_file(
            dir,
            base,
            file,
            0,
            IndexState::Active(ActiveIndex::default()),
        );
        if reserve > 0 {
            seg.reserve_to(reserve);
        }
        Ok(seg)
    }

    /// Opens an existing segment file as sealed (indexes opened lazily).
    pub(crate) fn open(dir: &Path, base: i64) -> io::Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(file_name(base, "log")))?;
        let size = file.metadata()?.len();
        Ok(Self::with_file(
            dir,
            base,
            file,
            size,
            IndexState::Sealed(None),
        ))
    }

    /// Opens the file at `path` (a cleaner's `.swap`) read-only as a sealed segment at `base`,
    /// only to scan it.
    pub(crate) fn open_at(dir: &Path, base: i64, path: &Path) -> io::Result<Segment> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        Ok(Self::with_file(
            dir,
            base,
            file,
            size,
            IndexState::Sealed(None),
        ))
    }

    fn with_file(dir: &Path, base: i64, file: File, size: u64, index: IndexState) -> Segment {
        Segment {
            base,
            dir: dir.to_path_buf(),
            file,
            committed: AtomicU64::new(size),
            synced: AtomicU64::new(size),
            // What an existing file holds was not written by this process: pages of it are
            // cached only if read, and those are the kernel's to keep or evict.
            uncached: AtomicU64::new(size & !(DROP_PAGE - 1)),
            reserved: AtomicU64::new(size),
            index_unsynced: AtomicBool::new(false),
            index: RwLock::new(index),
            direct: Mutex::new(None),
            direct_on: AtomicBool::new(false),
            direct_unsupported: AtomicBool::new(false),
            padded: AtomicBool::new(false),
            cuts: AtomicU64::new(0),
        }
    }

    /// Makes large appends bypass the page cache (a follower's active segment) or not. A file
    /// system that refuses `O_DIRECT` (tmpfs on older kernels) keeps every write buffered.
    pub(crate) fn set_direct(&self, on: bool) {
        let mut direct = lock(&self.direct);
        if !on {
            *direct = None;
            self.direct_on.store(false, Ordering::Release);
            return;
        }
        if direct.is_some() || self.direct_unsupported.load(Ordering::Relaxed) {
            return;
        }
        let flags = rustix::fs::OFlags::DIRECT.bits() as i32;
        match OpenOptions::new()
            .write(true)
            .custom_flags(flags)
            .open(self.path("log"))
        {
            Ok(file) => {
                *direct = Some(Direct {
                    file,
                    tail: Vec::with_capacity(BLOCK as usize),
                    tail_at: u64::MAX,
                    tail_cuts: 0,
                });
                self.direct_on.store(true, Ordering::Release);
            }
            Err(e) => {
                tracing::debug!(segment = %self.path("log").display(), error = %e, "no direct I/O on this file system: follower appends go through the page cache");
                self.direct_unsupported.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Cuts any zero padding a direct write left past the committed end (before the segment
    /// is sealed or the log closed, so the file is exactly its batches again).
    pub(crate) fn trim(&self) -> io::Result<()> {
        if self.padded.load(Ordering::Acquire) {
            self.cut(self.size())?;
        }
        Ok(())
    }

    /// True when `[from, end)` is what a direct write pads its last block with: fewer than a
    /// block of zeros ending at a block boundary. Recovery cuts it without calling it a torn
    /// tail.
    pub(crate) fn is_padding(&self, from: u64, end: u64) -> io::Result<bool> {
        if !end.is_multiple_of(BLOCK) || end <= from || end - from >= BLOCK {
            return Ok(false);
        }
        let mut buf = vec![0u8; (end - from) as usize];
        self.file.read_exact_at(&mut buf, from)?;
        Ok(buf.iter().all(|&b| b == 0))
    }

    pub(crate) fn path(&self, ext: &str) -> PathBuf {
        self.dir.join(file_name(self.base, ext))
    }

    /// Runs `f` on the in-memory index if this is the active segment.
    pub(crate) fn with_active<R>(&self, f: impl FnOnce(&ActiveIndex) -> R) -> Option<R> {
        match &*read_lock(&self.index) {
            IndexState::Active(ix) => Some(f(ix)),
            IndexState::Sealed(_) => None,
        }
    }

    /// True while the segment keeps its index in memory (it is, or is about to be, written).
    pub(crate) fn is_active(&self) -> bool {
        matches!(&*read_lock(&self.index), IndexState::Active(_))
    }

    /// Cuts the file at `pos` during recovery (the index is rebuilt by the caller).
    pub(crate) fn truncate_file(&self, pos: u64) -> io::Result<()> {
        self.cut(pos)?;
        self.committed.store(pos, Ordering::Release);
        self.synced.store(0, Ordering::Release);
        Ok(())
    }

    /// Bytes readers may see.
    pub(crate) fn size(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// True when everything committed has been fsynced.
    pub(crate) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire) >= self.size()
            && !self.index_unsynced.load(Ordering::Acquire)
    }

    /// Appends `bufs` (one batch) at the end; the caller serializes appends.
    ///
    /// On failure the file is cut back to its committed size so no partial batch remains.
    pub(crate) fn append(&self, bufs: &[IoSlice<'_>]) -> io::Result<u64> {
        let pos = self.size();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let end = pos + total as u64;
        if end > self.reserved.load(Ordering::Relaxed) {
            self.reserve_to(end + pos.clamp(RESERVE_MIN, RESERVE_MAX));
        }
        let mut written = None;
        if total >= DIRECT_MIN && self.direct_on.load(Ordering::Acquire) {
            let mut direct = lock(&self.direct);
            if let Some(d) = direct.as_mut() {
                match self.append_direct(d, bufs, pos) {
                    Err(e)
                        if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
                            || e.kind() == io::ErrorKind::Unsupported =>
                    {
                        // EINVAL: the device wants a larger alignment than BLOCK. Nothing was
                        // written; this segment's appends are buffered from now on.
                        tracing::info!(segment = %self.path("log").display(), error = %e, "direct write not possible: this segment's follower appends go through the page cache");
                        *direct = None;
                        self.direct_on.store(false, Ordering::Release);
                        self.direct_unsupported.store(true, Ordering::Relaxed);
                    }
                    result => written = Some(result),
                }
            }
        }
        let result = match written {
            Some(result) => result,
            None => self.append_buffered(bufs, pos, total),
        };
        if let Err(e) = result {
            // Leave no torn batch behind for readers or recovery.
            let _ = self.cut(pos);
            return Err(e);
        }
        self.committed.store(end, Ordering::Release);
        Ok(pos)
    }

    /// One positional vectored write (repeated while short) through the page cache.
    fn append_buffered(&self, bufs: &[IoSlice<'_>], pos: u64, total: usize) -> io::Result<()> {
        let mut storage: Vec<IoSlice<'_>> = bufs.to_vec();
        let mut slices: &mut [IoSlice<'_>] = &mut storage;
        let mut written = 0usize;
        while written < total {
            let n = rustix::io::pwritev(&self.file, slices, pos + written as u64)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "segment write returned 0",
                ));
            }
            written += n;
            IoSlice::advance_slices(&mut slices, n);
        }
        Ok(())
    }

    /// Writes `bufs` at `pos` with direct I/O: from the start of the block holding `pos`,
    /// through a pooled staging buffer, `STAGING` bytes per write, the last block zero-padded.
    /// Keeps the bytes of the new last block for the next append.
    fn append_direct(&self, d: &mut Direct, bufs: &[IoSlice<'_>], pos: u64) -> io::Result<()> {
        let mut at = pos & !(BLOCK - 1);
        let head = (pos - at) as usize;
        let cuts = self.cuts.load(Ordering::Acquire);
        if d.tail_at != at || d.tail.len() != head || d.tail_cuts != cuts {
            // Written through the page cache, by an earlier leader, or cut since: read it back.
            d.tail.resize(head, 0);
            self.file.read_exact_at(&mut d.tail, at)?;
            d.tail_at = at;
            d.tail_cuts = cuts;
        }
        let mut staging = Staging::take();
        let Some(buf) = staging.aligned() else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the staging buffer cannot be aligned to a block",
            ));
        };
        buf[..head].copy_from_slice(&d.tail);
        let mut fill = head;
        for b in bufs {
            let mut rest: &[u8] = b;
            while !rest.is_empty() {
                let n = rest.len().min(STAGING - fill);
                buf[fill..fill + n].copy_from_slice(&rest[..n]);
                fill += n;
                rest = &rest[n..];
                if fill == STAGING {
                    write_all_direct(&d.file, buf, at)?;
                    at += STAGING as u64;
                    fill = 0;
                }
            }
        }
        let whole = fill & !(BLOCK as usize - 1);
        if fill > 0 {
            let padded = (fill + BLOCK as usize - 1) & !(BLOCK as usize - 1);
            buf[fill..padded].fill(0);
            if padded > fill {
                self.padded.store(true, Ordering::Release);
            }
            write_all_direct(&d.file, &buf[..padded], at)?;
        }
        d.tail.clear();
        d.tail.extend_from_slice(&buf[whole..fill]);
        d.tail_at = at + whole as u64;
        Ok(())
    }

    /// Reserves disk blocks up to `target` without changing the file's length. Best effort: a
    /// file system without `fallocate` turns it off for this segment, and any other failure
    /// (a full disk) is left for the write itself to report.
    fn reserve_to(&self, target: u64) {
        let from = self.reserved.load(Ordering::Relaxed);
        if from >= target {
            return;
        }
        let flags = rustix::fs::FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, flags, from, target - from) {
            Ok(()) => self.reserved.store(target, Ordering::Relaxed),
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
                tracing::debug!(segment = %self.path("log").display(), "file system cannot reserve blocks (fallocate): appends allocate as they go");
                self.reserved.store(RESERVE_UNSUPPORTED, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(segment = %self.path("log").display(), error = %e, "could not reserve blocks ahead of the segment's end");
            }
        }
    }

    /// Sets the file's length to `pos`, which also frees any reservation past it.
    fn cut(&self, pos: u64) -> io::Result<()> {
        self.cuts.fetch_add(1, Ordering::AcqRel);
        self.file.set_len(pos)?;
        self.padded.store(false, Ordering::Release);
        // What is appended again from here is cached until dropped anew.
        self.uncached
            .fetch_min(pos & !(DROP_PAGE - 1), Ordering::AcqRel);
        if self.reserved.load(Ordering::Relaxed) != RESERVE_UNSUPPORTED {
            self.reserved.store(pos, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Gives back blocks reserved past the file's end (a sealed segment grows no more), and
    /// cuts a direct write's padding.
    fn release_reserve(&self) -> io::Result<()> {
        let reserved = self.reserved.load(Ordering::Relaxed);
        let reserving = reserved != RESERVE_UNSUPPORTED && reserved > self.size();
        if reserving || self.padded.load(Ordering::Acquire) {
            // Truncating to the current length frees the blocks (and zeros) past it.
            self.cut(self.size())?;
        }
        Ok(())
    }

    /// Records a just-appended batch in the active index, Kafka's way: an offset entry when more
    /// than `interval` bytes were written since the last one, a time entry when the largest
    /// timestamp grew.
    pub(crate) fn index_batch(&self, h: &BatchHeader, pos: u64, interval: usize, now_ms: i64) {
        let mut guard = write_lock(&self.index);
        let IndexState::Active(ix) = &mut *guard else {
            return;
        };
        Self::index_into(ix, self.base, h, pos, interval);
        ix.first_batch_ms.get_or_insert(now_ms);
    }

    pub(crate) fn index_into(
        ix: &mut ActiveIndex,
        base: i64,
        h: &BatchHeader,
        pos: u64,
        interval: usize,
    ) {
        let last = h.last_offset();
        if ix.max_ts.is_none_or(|(ts, _)| h.max_timestamp > ts) {
            ix.max_ts = Some((h.max_timestamp, last));
        }
        if ix.bytes_since_entry > interval {
            ix.offsets.push(OffsetEntry {
                rel: (h.base_offset - base) as u32,
                pos: pos as u32,
            });
            if let Some((ts, off)) = ix.max_ts
                && ix.times.last().is_none_or(|t| ts > t.ts)
            {
                ix.times.push(TimeEntry {
                    ts,
                    rel: (off - base) as u32,
                });
            }
            ix.bytes_since_entry = 0;
        }
        ix.bytes_since_entry += h.size();
    }

    /// Replaces the active index with one rebuilt by scanning `[0, end)` (used after truncation
    /// and for damaged indexes). Does not check CRCs: the data below the recovery point was.
    pub(crate) fn rebuild_active(&self, end: u64, interval: usize) -> io::Result<ActiveIndex> {
        let mut ix = ActiveIndex::default();
        let stop = self.scan(0, end, i64::MIN, false, |pos, h, _| {
            if ix.first_batch_ms.is_none() {
                ix.first_batch_ms = Some(h.max_timestamp);
            }
            Self::index_into(&mut ix, self.base, h, pos, interval);
            true
        })?;
        if let Some(problem) = stop.problem {
            return Err(io::Error::new(io::ErrorKind::InvalidData, problem));
        }
        Ok(ix)
    }

    /// Installs an active index (after recovery or truncation) and rewrites the index files.
    pub(crate) fn set_active(&self, ix: ActiveIndex) -> io::Result<()> {
        let mut ix = ix;
        ix.persisted_offsets = 0;
        ix.persisted_times = 0;
        for ext in ["index", "timeindex"] {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.path(ext))?;
            f.set_len(0)?;
        }
        *write_lock(&self.index) = IndexState::Active(ix);
        self.persist_index()
    }

    /// Index entries loaded from disk for the part of this segment below `end`, if sane.
    pub(crate) fn load_index_prefix(
        &self,
        end: u64,
        max_ts: Option<(i64, i64)>,
        first_ms: Option<i64>,
    ) -> io::Result<Option<ActiveIndex>> {
        let (Ok(of), Ok(tf)) = (
            File::open(self.path("index")),
            File::open(self.path("timeindex")),
        ) else {
            return Ok(None);
        };
        let Some(mut offsets) = index::load_offset_index(&of, self.size().max(1))? else {
            return Ok(None);
        };
        let Some(mut times) = index::load_time_index(&tf, u32::MAX as u64)? else {
            return Ok(None);
        };
        offsets.retain(|e| (e.pos as u64) < end);
        let limit_rel = offsets.last().map(|e| e.rel).unwrap_or(0);
        times.retain(|t| t.rel <= limit_rel);
        let bytes_since_entry = (end - offsets.last().map(|e| e.pos as u64).unwrap_or(0)) as usize;
        Ok(Some(ActiveIndex {
            offsets,
            times,
            persisted_offsets: 0,
            persisted_times: 0,
            bytes_since_entry,
            max_ts,
            first_batch_ms: first_ms,
        }))
    }

    /// Writes index entries not yet on disk (one write per file). Called at checkpoint and roll.
    pub(crate) fn persist_index(&self) -> io::Result<()> {
        let mut guard = write_lock(&self.index);
        let IndexState::Active(ix) = &mut *guard else {
            return Ok(());
        };
        let mut buf = Vec::new();
        ix.offsets[ix.persisted_offsets..]
            .iter()
            .for_each(|e| e.encode(&mut buf));
        if !buf.is_empty() {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.path("index"))?;
            f.write_all_at(&buf, (ix.persisted_offsets * OFFSET_ENTRY) as u64)?;
            ix.persisted_offsets = ix.offsets.len();
            self.index_unsynced.store(true, Ordering::Release);
        }
        buf.clear();
        ix.times[ix.persisted_times..]
            .iter()
            .for_each(|e| e.encode(&mut buf));
        if !buf.is_empty() {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.path("timeindex"))?;
            f.write_all_at(&buf, (ix.persisted_times * TIME_ENTRY) as u64)?;
            ix.persisted_times = ix.times.len();
            self.index_unsynced.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Turns the active segment into a sealed one: the last time entry records the segment's
    /// largest timestamp (so retention can find it from the file), and entries go to disk.
    pub(crate) fn seal(&self) -> io::Result<()> {
        {
            let mut guard = write_lock(&self.index);
            if let IndexState::Active(ix) = &mut *guard
                && let Some((ts, off)) = ix.max_ts
                && ix.times.last().is_none_or(|t| ts > t.ts)
            {
                ix.times.push(TimeEntry {
                    ts,
                    rel: (off - self.base) as u32,
                });
            }
        }
        self.persist_index()?;
        self.set_direct(false);
        self.release_reserve()?;
        // Make sure both files exist even for an empty segment, so recovery sees no "missing".
        for ext in ["index", "timeindex"] {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.path(ext))?;
        }
        *write_lock(&self.index) = IndexState::Sealed(None);
        self.index_unsynced.store(true, Ordering::Release);
        Ok(())
    }

    /// fsyncs the data (and index files, if written since the last sync).
    pub(crate) fn sync(&self) -> io::Result<()> {
        let committed = self.size();
        if self.synced.load(Ordering::Acquire) < committed {
            self.file.sync_data()?;
            self.synced.fetch_max(committed, Ordering::AcqRel);
        }
        if self.index_unsynced.swap(false, Ordering::AcqRel) {
            for ext in ["index", "timeindex"] {
                match File::open(self.path(ext)) {
                    Ok(f) => f.sync_all()?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        self.index_unsynced.store(true, Ordering::Release);
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Asks the kernel to drop the clean cached pages of this segment's durable bytes from where
    /// the last call stopped to `keep` bytes before its durable end, whole pages only; with
    /// `keep` 0 a sealed segment goes whole. The partly written last page of the active
    /// segment always stays: the next append into it would first read it back from disk.
    /// Pages read back later are not this call's to drop (the partition drops what a reader
    /// behind the tail read, `drop_read`).
    pub(crate) fn drop_cached(&self, keep: u64) {
        let durable = self.synced.load(Ordering::Acquire).min(self.size());
        let uncached = self.uncached.load(Ordering::Acquire);
        let whole = keep == 0 && durable == self.size() && !self.is_active();
        let end = if whole {
            durable
        } else {
            durable.saturating_sub(keep) & !(DROP_PAGE - 1)
        };
        if end <= uncached {
            return;
        }
        // The kernel drops only folios wholly inside the range, and the page cache holds large
        // folios (up to LARGE_FOLIO, aligned to their size): one straddling where the last call
        // stopped was skipped then, so this call starts at the boundary below and covers it.
        let start = uncached & !(LARGE_FOLIO - 1);
        let len = if whole {
            None // to the end of the file, its last partial page and folio included
        } else {
            std::num::NonZeroU64::new(end - start)
        };
        if self.dont_need(start, len) {
            self.uncached.store(end, Ordering::Release);
        }
    }

    /// `posix_fadvise(DONTNEED)` on `[start, start + len)` (`None`: to the end of the file).
    /// Advice only: a failure costs memory, not data, so it is logged and reported as false.
    fn dont_need(&self, start: u64, len: Option<std::num::NonZeroU64>) -> bool {
        match rustix::fs::fadvise(&self.file, start, len, rustix::fs::Advice::DontNeed) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(segment = %self.path("log").display(), error = %e, "could not drop pages from the page cache");
                false
            }
        }
    }

    /// True when `drop_cached` has dropped every whole page of this segment (sealed segments
    /// behind it were dropped before it).
    pub(crate) fn all_dropped(&self) -> bool {
        self.uncached.load(Ordering::Acquire) >= self.size() & !(DROP_PAGE - 1)
    }

    /// Cuts the file at `pos` (a batch boundary) and rebuilds the active index for what is left.
    pub(crate) fn truncate(&self, pos: u64, interval: usize) -> io::Result<()> {
        self.cut(pos)?;
        self.committed.store(pos, Ordering::Release);
        self.synced.store(0, Ordering::Release);
        let ix = self.rebuild_active(pos, interval)?;
        self.set_active(ix)?;
        self.file.sync_all()?;
        self.synced.store(pos, Ordering::Release);
        Ok(())
    }

    /// Largest timestamp in the segment and the last offset of its batch.
    pub(crate) fn max_timestamp(&self, interval: usize) -> io::Result<Option<(i64, i64)>> {
        {
            let guard = read_lock(&self.index);
            match &*guard {
                IndexState::Active(ix) => return Ok(ix.max_ts),
                IndexState::Sealed(Some(s)) => return Ok(s.max_ts),
                IndexState::Sealed(None) => {}
            }
        }
        self.open_sealed(interval)?;
        let guard = read_lock(&self.index);
        match &*guard {
            IndexState::Active(ix) => Ok(ix.max_ts),
            IndexState::Sealed(s) => Ok(s.as_ref().and_then(|s| s.max_ts)),
        }
    }

    /// Seconds-precision fallback for retention when a segment holds no timestamps.
    pub(crate) fn modified_ms(&self) -> i64 {
        self.file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    /// Opens (validating, or rebuilding if missing or damaged) a sealed segment's index files.
    fn open_sealed(&self, interval: usize) -> io::Result<()> {
        let mut guard = write_lock(&self.index);
        if !matches!(&*guard, IndexState::Sealed(None)) {
            return Ok(());
        }
        let size = self.size();
        let max_rel = u32::MAX as u64;
        let load = || -> io::Result<Option<(File, usize, File, usize)>> {
            let (Ok(of), Ok(tf)) = (
                File::open(self.path("index")),
                File::open(self.path("timeindex")),
            ) else {
                return Ok(None);
            };
            let offsets = index::load_offset_index(&of, size.max(1))?;
            let times = index::load_time_index(&tf, max_rel)?;
            Ok(match (offsets, times) {
                (Some(o), Some(t)) => Some((of, o.len(), tf, t.len())),
                _ => None,
            })
        };
        let (of, oc, tf, tc) = match load()? {
            Some(x) => x,
            None => {
                tracing::warn!(segment = %self.path("log").display(), "index missing or damaged, rebuilding it from the segment");
                drop(guard);
                let mut ix = self.rebuild_active(size, interval)?;
                if let Some((ts, off)) = ix.max_ts
                    && ix.times.last().is_none_or(|t| ts > t.ts)
                {
                    ix.times.push(TimeEntry {
                        ts,
                        rel: (off - self.base) as u32,
                    });
                }
                self.set_active(ix)?;
                self.sync()?;
                guard = write_lock(&self.index);
                *guard = IndexState::Sealed(None);
                match load()? {
                    Some(x) => x,
                    None => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "rebuilt index is not sane",
                        ));
                    }
                }
            }
        };
        let max_ts = index::last_time_in_file(&tf, tc)?.map(|t| (t.ts, self.base + t.rel as i64));
        *guard = IndexState::Sealed(Some(SealedIndex {
            offsets: of,
            offsets_count: oc,
            times: tf,
            times_count: tc,
            max_ts,
        }));
        Ok(())
    }

    /// A file position at or before the batch holding `offset`.
    pub(crate) fn position_floor(&self, offset: i64, interval: usize) -> io::Result<u64> {
        let rel = (offset - self.base).clamp(0, u32::MAX as i64) as u32;
        {
            let guard = read_lock(&self.index);
            match &*guard {
                IndexState::Active(ix) => {
                    return Ok(index::floor_offset(&ix.offsets, rel).map_or(0, |e| e.pos as u64));
                }
                IndexState::Sealed(Some(s)) => {
                    return Ok(
                        index::floor_offset_in_file(&s.offsets, s.offsets_count, rel)?
                            .map_or(0, |e| e.pos as u64),
                    );
                }
                IndexState::Sealed(None) => {}
            }
        }
        self.open_sealed(interval)?;
        self.position_floor(offset, interval)
    }

    /// A file position at or before the first batch that may hold a timestamp >= `ts`.
    pub(crate) fn time_position_floor(&self, ts: i64, interval: usize) -> io::Result<u64> {
        let entry = {
            let guard = read_lock(&self.index);
            match &*guard {
                IndexState::Active(ix) => index::floor_time(&ix.times, ts),
                IndexState::Sealed(Some(s)) => {
                    index::floor_time_in_file(&s.times, s.times_count, ts)?
                }
                IndexState::Sealed(None) => {
                    drop(guard);
                    self.open_sealed(interval)?;
                    return self.time_position_floor(ts, interval);
                }
            }
        };
        match entry {
            Some(e) => self.position_floor(self.base + e.rel as i64, interval),
            None => Ok(0),
        }
    }

    /// Finds the position of the first batch whose last offset is >= `offset`, scanning headers
    /// forward from the index's floor. Returns `None` if the segment has no such batch.
    pub(crate) fn find_batch(
        &self,
        offset: i64,
        interval: usize,
    ) -> io::Result<Option<(u64, BatchHeader)>> {
        let mut pos = self.position_floor(offset, interval)?;
        let end = self.size();
        let mut buf = [0u8; HEADER_LEN];
        while pos + HEADER_LEN as u64 <= end {
            self.file.read_exact_at(&mut buf, pos)?;
            let h = BatchHeader::parse(&buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            if h.last_offset() >= offset {
                return Ok(Some((pos, h)));
            }
            pos += h.size() as u64;
        }
        Ok(None)
    }

    /// Reads `len` bytes at `pos`, never past the committed size.
    pub(crate) fn read(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let end = self.size();
        let len = len.min(end.saturating_sub(pos) as usize);
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, pos)?;
        Ok(buf)
    }

    /// Drops the whole pages of `[pos, end)`, just read behind the log's cached tail (a
    /// consumer catching up), and any large folio before them, from the page cache: the reader
    /// has them, and the kernel's read-ahead for its next fetch then reuses the memory instead
    /// of first-touching new pages.
    pub(crate) fn drop_read(&self, pos: u64, end: u64) {
        let start = pos & !(LARGE_FOLIO - 1);
        let end = end & !(DROP_PAGE - 1);
        if let Some(len) = end.checked_sub(start).and_then(std::num::NonZeroU64::new) {
            self.dont_need(start, Some(len));
        }
    }

    /// Walks whole batches in `[from, end)`, reading in large chunks. Stops at the first batch
    /// that is torn, not strictly after `prev_last`, outside this segment's offset range, or
    /// (with `verify_crc`) fails its CRC; `ScanStop::problem` says which.
    pub(crate) fn scan(
        &self,
        from: u64,
        end: u64,
        mut prev_last: i64,
        verify_crc: bool,
        mut f: impl FnMut(u64, &BatchHeader, &[u8]) -> bool,
    ) -> io::Result<ScanStop> {
        const CHUNK: usize = 1 << 20;
        let mut pos = from;
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_start = from;
        loop {
            if pos >= end {
                return Ok(ScanStop { pos, problem: None });
            }
            let off = (pos - buf_start) as usize;
            let avail = buf.len().saturating_sub(off);
            if avail < HEADER_LEN {
                if end - pos < HEADER_LEN as u64 {
                    return Ok(ScanStop {
                        pos,
                        problem: Some(format!(
                            "{} trailing bytes are not a whole batch header",
                            end - pos
                        )),
                    });
                }
                buf = vec![0u8; CHUNK.min((end - pos) as usize)];
                self.file.read_exact_at(&mut buf, pos)?;
                buf_start = pos;
                continue;
            }
            let h = match BatchHeader::parse(&buf[off..]) {
                Ok(h) => h,
                Err(e) => {
                    return Ok(ScanStop {
                        pos,
                        problem: Some(e.to_string()),
                    });
                }
            };
            let size = h.size();
            if (size as u64) > end - pos {
                return Ok(ScanStop {
                    pos,
                    problem: Some(format!("batch claims {size} bytes, {} remain", end - pos)),
                });
            }
            if h.last_offset_delta < 0
                || h.base_offset <= prev_last
                || h.base_offset < self.base
                || h.last_offset() - self.base > u32::MAX as i64
            {
                return Ok(ScanStop {
                    pos,
                    problem: Some(format!(
                        "batch offsets {}..={} do not follow {} in a segment based at {}",
                        h.base_offset,
                        h.last_offset(),
                        prev_last,
                        self.base
                    )),
                });
            }
            if avail < size {
                buf = vec![0u8; CHUNK.max(size).min((end - pos) as usize)];
                self.file.read_exact_at(&mut buf, pos)?;
                buf_start = pos;
                continue;
            }
            let bytes = &buf[off..off + size];
            if verify_crc && let Err(e) = verify_stored_batch(bytes) {
                return Ok(ScanStop {
                    pos,
                    problem: Some(e.to_string()),
                });
            }
            let more = f(pos, &h, bytes);
            prev_last = h.last_offset();
            pos += size as u64;
            if !more {
                return Ok(ScanStop { pos, problem: None });
            }
        }
    }

    /// Removes the segment's files (the open `File` stays readable for current readers).
    /// Renames first so a crash mid-way leaves only `.deleted` files, which open() removes.
    pub(crate) fn delete_files(&self) -> io::Result<()> {
        for ext in ["log", "index", "timeindex"] {
            let from = self.path(ext);
            let to = self
                .dir
                .join(format!("{}.deleted", file_name(self.base, ext)));
            match fs::rename(&from, &to) {
                Ok(()) => fs::remove_file(&to)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
