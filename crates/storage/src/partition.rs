//! [`PartitionLog`]: the append-only log of one partition, made of segments.
//!
//! Appends are serialized by one mutex (the append state: producer state, leader epochs, the
//! next offset, the active segment). Reads take no lock beyond a brief look at the segment
//! list and run concurrently with appends. fsyncs happen on the flusher pool; the log end,
//! durable offset and high watermark are published through atomics and watch channels.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use sluice_protocol::batch::{
    BatchError, BatchHeader, HEADER_LEN, iter_batches, patch_offset_and_epoch, read_varint,
    read_varlong, set_log_append_time, validate_producer_batch, verify_stored_batch,
};
use sluice_protocol::records::read_records;
use tokio::sync::watch;

use crate::checkpoint::{Checkpoint, EpochCache};
use crate::cleaner::{self, CleanOptions, CleanOutcome};
use crate::config::{LogConfig, TimestampType};
use crate::error::{AppendError, ReadError, StorageError};
use crate::flush::{FlushPool, block_on};
use crate::producer_state::{Check, ProducerState};
use crate::segment::{self, ActiveIndex, Segment};

/// Offset index entries an active segment may hold before it rolls (10 MiB / 8 B).
const MAX_INDEX_ENTRIES: usize = 10 * 1024 * 1024 / 8;

/// The newest bytes of its log a Raft follower keeps in the page cache: the tail it serves its
/// consumers from if it becomes leader (see [`PartitionLog::set_leading`]).
pub const FOLLOWER_CACHE_TAIL: u64 = 32 << 20;

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Offset of the batch's first record.
    pub base_offset: i64,
    /// Offset of the batch's last record.
    pub last_offset: i64,
    /// The broker time stamped into the batch, or -1 for CreateTime topics.
    pub log_append_time: i64,
    /// The log start offset after the append.
    pub log_start_offset: i64,
    /// True if this was a retry of a batch already written (nothing was written again).
    pub duplicate: bool,
}

/// Whole stored batches returned by [`PartitionLog::read`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadResult {
    /// Concatenated whole batches, CRC-checked; empty at the end of the log.
    pub records: Bytes,
    /// Offset after the last returned batch (the next offset to fetch), or the requested
    /// offset when nothing was returned.
    pub next_offset: i64,
    /// Log start offset when the read happened.
    pub log_start_offset: i64,
    /// Log end offset when the read happened.
    pub log_end_offset: i64,
    /// High watermark when the read happened.
    pub high_watermark: i64,
}

/// What retention removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes those segments held.
    pub bytes_deleted: u64,
    /// Log start offset afterwards.
    pub log_start_offset: i64,
    /// Idle producer ids forgotten.
    pub producers_expired: usize,
}

/// What opening the log found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// The checkpoint said the log was closed cleanly.
    pub clean_shutdown: bool,
    /// A usable checkpoint was found.
    pub checkpoint_used: bool,
    /// Batches CRC-checked because they lay after the recovery point.
    pub batches_scanned: u64,
    /// Bytes of those batches.
    pub bytes_scanned: u64,
    /// Bytes cut from a torn or corrupt tail (including whole later segments).
    pub bytes_truncated: u64,
    /// Segments removed (below the log start, or after a corrupt tail).
    pub segments_removed: usize,
}

/// A batch another replica stored (or a Raft entry): CRC-checked, with sane counts.
fn verify_replicated(batch: &[u8]) -> Result<BatchHeader, AppendError> {
    let header = verify_stored_batch(batch)?;
    if header.last_offset_delta < 0 || header.record_count < 0 {
        return Err(BatchError::Invalid(format!(
            "lastOffsetDelta {} is negative",
            header.last_offset_delta
        ))
        .into());
    }
    Ok(header)
}

/// What [`PartitionLog::check_producer`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerCheck {
    /// New and in sequence (or not idempotent): append it.
    Append,
    /// Already in the log at these offsets (the max timestamp as stored).
    Duplicate {
        /// First offset of the original.
        base_offset: i64,
        /// Last offset of the original.
        last_offset: i64,
        /// Its stored max timestamp.
        timestamp: i64,
    },
}

/// How an append treats the batch it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A producer's batch: idempotence checks, offsets assigned, LogAppendTime stamped.
    Leader,
    /// A leader's stored batch copied as it is: it must continue the log exactly; producer
    /// state is recorded, not checked.
    Replica,
    /// A Raft entry: offsets assigned and the term stamped as the epoch, nothing else changed.
    Entry,
}

/// State only appends (and truncation, roll, retention) touch; one mutex serializes them.
pub(crate) struct AppendState {
    pub(crate) producers: ProducerState,
    pub(crate) epochs: EpochCache,
    next_offset: i64,
    active: Arc<Segment>,
}

/// See [`PartitionLog::when_durable`].
type DurableCallback = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) name: String,
    pub(crate) config: RwLock<LogConfig>,
    pub(crate) segments: RwLock<Vec<Arc<Segment>>>,
    pub(crate) state: Mutex<AppendState>,
    pub(crate) log_start: AtomicI64,
    log_end: AtomicI64,
    durable: AtomicI64,
    durable_tx: watch::Sender<i64>,
    /// Callbacks waiting for an offset to become durable, in registration order (see
    /// [`PartitionLog::when_durable`]).
    durable_callbacks: Mutex<VecDeque<(i64, DurableCallback)>>,
    pub(crate) hw_tx: watch::Sender<i64>,
    /// Single-replica mode: every fsync pass moves the high watermark to what it made durable.
    hw_follows_durable: AtomicBool,
    /// Newest written bytes kept in the page cache while leading (`u64::MAX`: all), and
    /// whether this replica leads; see `set_page_cache_tail`.
    cache_tail: AtomicU64,
    leading: AtomicBool,
    closed: AtomicBool,
    failure: Mutex<Option<String>>,
    pub(crate) flush_queued: AtomicBool,
    pub(crate) checkpoint_wanted: AtomicBool,
    /// Serializes fsync passes (and truncation, which must not race one).
    flush_lock: Mutex<()>,
    /// Serializes checkpoint writers, so an older snapshot never overwrites a newer one.
    pub(crate) checkpoint_lock: Mutex<()>,
    /// Wall time of the oldest append not yet fsynced (i64::MAX when none), for `flush.ms`.
    oldest_unflushed_ms: AtomicI64,
    /// Log end offset the last checkpoint recorded.
    checkpointed_end: AtomicI64,
    recovery: RecoveryStats,
    appended_bytes: AtomicU64,
    /// The cleaner's "cleaned up to" offset (persisted in the checkpoint).
    pub(crate) cleaned_to: AtomicI64,
    /// Retention and the cleaner leave alone every segment reaching this offset (Raft entries
    /// a lagging follower may still need); `i64::MAX` when nobody holds the log.
    retention_floor: AtomicI64,
}

/// The log of one partition. `Send + Sync`; share it as `Arc<PartitionLog>`.
pub struct PartitionLog {
    inner: Arc<Inner>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn io_err(context: String) -> impl FnOnce(io::Error) -> StorageError {
    move |e| StorageError::io(context, e)
}

impl PartitionLog {
    /// Opens (recovering if needed) or creates the log in `dir` (= `<data-dir>/<topic>-<partition>`).
    ///
    /// Only the part after the checkpoint's recovery point is CRC-scanned, so start-up time does
    /// not grow with the size of the log. A torn or corrupt tail is cut off (logged at WARN).
    pub fn open(
        dir: &Path,
        topic: &str,
        partition: i32,
        config: LogConfig,
    ) -> Result<Self, StorageError> {
        let name = format!("{topic}-{partition}");
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let recovered = recover(dir, &name, &config)?;
        let leo = recovered.next_offset;
        let (durable_tx, _) = watch::channel(leo);
        let (hw_tx, _) = watch::channel(recovered.log_start.max(0).min(leo));
        let inner = Inner {
            dir: dir.to_path_buf(),
            name,
            config: RwLock::new(config),
            segments: RwLock::new(recovered.segments),
            log_start: AtomicI64::new(recovered.log_start),
            log_end: AtomicI64::new(leo),
            durable: AtomicI64::new(leo),
            durable_tx,
            durable_callbacks: Mutex::new(VecDeque::new()),
            hw_follows_durable: AtomicBool::new(false),
            cache_tail: AtomicU64::new(u64::MAX),
            leading: AtomicBool::new(true),
            hw_tx,
            state: Mutex::new(AppendState {
                producers: recovered.producers,
                epochs: recovered.epochs,
                next_offset: leo,
                active: recovered.active,
            }),
            closed: AtomicBool::new(false),
            failure: Mutex::new(None),
            flush_queued: AtomicBool::new(false),
            checkpoint_wanted: AtomicBool::new(false),
            flush_lock: Mutex::new(()),
            checkpoint_lock: Mutex::new(()),
            oldest_unflushed_ms: AtomicI64::new(i64::MAX),
            checkpointed_end: AtomicI64::new(if recovered.needs_checkpoint { -1 } else { leo }),
            recovery: recovered.stats,
            appended_bytes: AtomicU64::new(0),
            cleaned_to: AtomicI64::new(recovered.cleaned_to),
            retention_floor: AtomicI64::new(i64::MAX),
        };
        let log = PartitionLog {
            inner: Arc::new(inner),
        };
        if recovered.needs_checkpoint {
            log.inner.write_checkpoint(false)?;
        }
        Ok(log)
    }

    /// `<topic>-<partition>`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// What opening the log found and repaired.
    pub fn recovery_stats(&self) -> &RecoveryStats {
        &self.inner.recovery
    }

    /// The current config.
    pub fn config(&self) -> LogConfig {
        read(&self.inner.config).clone()
    }

    /// Validates one producer batch (exactly as the client sent it), runs the idempotence
    /// checks, assigns offsets by patching `baseOffset` and `partitionLeaderEpoch`, and writes
    /// it with one vectored write (the patched 16-byte prefix, then the client's bytes).
    /// LogAppendTime topics are the one case that copies the batch (timestamp + CRC rewrite).
    /// Appends to one partition are serialized. Durability: see [`PartitionLog::wait_durable`].
    pub fn append(
        &self,
        batch: Bytes,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendOutcome, AppendError> {
        let header = self.validate(&batch)?;
        self.inner
            .append_validated(batch, header, leader_epoch, now_ms)
    }

    /// The checks [`PartitionLog::append`] makes before writing (size against
    /// `max.message.bytes`, a well-formed producer batch with a valid CRC, keys on a compacted
    /// log), for a leader that proposes the batch to its replicas instead of appending it.
    pub fn validate(&self, batch: &[u8]) -> Result<BatchHeader, AppendError> {
        let (max, compacted) = {
            let config = read(&self.inner.config);
            (config.max_message_bytes, config.cleanup_policy.compacts())
        };
        if batch.len() > max {
            return Err(AppendError::MessageTooLarge {
                size: batch.len(),
                max,
            });
        }
        let header = validate_producer_batch(batch)?;
        if compacted {
            self.check_keys(batch, &header)?;
        }
        Ok(header)
    }

    /// Checks an idempotent batch against the producer state of what this log holds, without
    /// writing: what a Raft leader asks before proposing (followers record producer state but
    /// never check it, as their clocks may disagree about expiry).
    pub fn check_producer(
        &self,
        header: &BatchHeader,
        now_ms: i64,
    ) -> Result<ProducerCheck, AppendError> {
        let expiration = read(&self.inner.config).producer_id_expiration_ms;
        let st = lock(&self.inner.state);
        Ok(match st.producers.check(header, now_ms, expiration)? {
            Check::Append => ProducerCheck::Append,
            Check::Duplicate(meta) => ProducerCheck::Duplicate {
                base_offset: meta.first_offset,
                last_offset: meta.last_offset,
                timestamp: meta.timestamp,
            },
        })
    }

    /// A compacted log keeps the latest record per key, so Kafka refuses the whole batch when
    /// any record has no key. Only uncompressed batches are walked: the broker never
    /// decompresses, so a compressed batch's keys go unchecked.
    fn check_keys(&self, batch: &[u8], header: &BatchHeader) -> Result<(), AppendError> {
        if header.compression() != 0 {
            return Ok(());
        }
        let (_, records) = read_records(batch)?;
        let indexes: Vec<i32> = (0..)
            .zip(&records)
            .filter(|(_, r)| r.key.is_none())
            .map(|(i, _)| i)
            .collect();
        if indexes.is_empty() {
            return Ok(());
        }
        Err(AppendError::KeylessRecords {
            log: self.inner.name.clone(),
            indexes,
        })
    }

    /// For batches the broker itself built (e.g. consumer offsets) and, later, replication.
    /// Same validation and the same offset assignment as [`PartitionLog::append`], but
    /// control batches (transaction markers) are allowed.
    pub fn append_internal(
        &self,
        batch: Bytes,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendOutcome, AppendError> {
        let max = read(&self.inner.config).max_message_bytes;
        if batch.len() > max {
            return Err(AppendError::MessageTooLarge {
                size: batch.len(),
                max,
            });
        }
        let header = match validate_producer_batch(&batch) {
            Ok(h) => h,
            Err(e) => {
                let h = verify_stored_batch(&batch)?;
                if !h.is_control()
                    || h.record_count < 1
                    || h.last_offset_delta != h.record_count - 1
                {
                    return Err(e.into());
                }
                h
            }
        };
        self.inner
            .append_validated(batch, header, leader_epoch, now_ms)
    }

    /// Replication: appends a batch exactly as the leader stored it. Its `baseOffset` must be
    /// this log's end offset (else [`StorageError::OffsetOutOfRange`]); bytes, leader epoch
    /// and timestamps are kept, the CRC is checked, producer state is recorded (the leader
    /// already checked it).
    pub fn append_replica(&self, batch: Bytes, now_ms: i64) -> Result<AppendOutcome, AppendError> {
        let header = verify_replicated(&batch)?;
        self.inner.append_inner(
            batch,
            header,
            header.partition_leader_epoch,
            now_ms,
            Mode::Replica,
        )
    }

    /// Raft replication: appends a batch as the next entry of a replicated log, on the leader
    /// and on every follower alike. Offsets continue the log end and `partitionLeaderEpoch` is
    /// the entry's term, so every replica stores the same bytes at the same offsets whatever
    /// `baseOffset` the batch arrived with. The CRC is checked; producer state is recorded,
    /// not checked (the leader checks before it proposes); timestamps are kept.
    pub fn append_entry(
        &self,
        batch: Bytes,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendOutcome, AppendError> {
        let header = verify_replicated(&batch)?;
        self.inner
            .append_inner(batch, header, leader_epoch, now_ms, Mode::Entry)
    }

    /// Reads whole stored batches starting with the one containing `offset`: at most
    /// `max_bytes`, but at least the first batch when `min_one` and it is bigger; never a batch
    /// whose last offset is at or past `max_offset` (callers pass the high watermark). Every
    /// returned batch is CRC-checked. Empty at the end of the log (or at `max_offset`).
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        max_offset: i64,
        min_one: bool,
    ) -> Result<ReadResult, ReadError> {
        match self.inner.read(offset, max_bytes, max_offset, min_one) {
            // A truncation can cut a segment under a reader (short read, or bytes rewritten
            // since): one retry sees the new state. Errors that persist are real.
            Err(ReadError::Storage(_) | ReadError::Corrupt(_)) => {
                self.inner.read(offset, max_bytes, max_offset, min_one)
            }
            other => other,
        }
    }

    /// First offset still in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.inner.log_start.load(Ordering::Acquire)
    }

    /// Offset the next append will get.
    pub fn log_end_offset(&self) -> i64 {
        self.inner.log_end.load(Ordering::Acquire)
    }

    /// The high watermark the caller last set (clamped to the log end).
    pub fn high_watermark(&self) -> i64 {
        *self.inner.hw_tx.borrow()
    }

    /// Moves the high watermark forward (never back), clamped to the log end; wakes
    /// [`PartitionLog::subscribe`] watchers.
    pub fn set_high_watermark(&self, hw: i64) {
        self.inner.advance_high_watermark(hw);
    }

    /// For a partition with a single replica: from now on every fsync moves the high watermark
    /// to the offset it made durable, before waking `wait_durable`, so an acknowledged write is
    /// always visible and the watermark never depends on anyone awaiting an acknowledgement.
    pub fn set_high_watermark_follows_durable(&self, follow: bool) {
        self.inner
            .hw_follows_durable
            .store(follow, Ordering::Release);
        if follow {
            self.inner.advance_high_watermark(self.durable_offset());
        }
    }

    /// How much of what this log writes stays in the page cache once it is durable while this
    /// replica leads: the newest `tail` bytes, older pages are dropped as the log grows
    /// (`posix_fadvise(DONTNEED)` after each fsync pass); `None` (the default) leaves every
    /// page to the kernel.
    ///
    /// Consumers at or near the end read the tail from memory; those further behind read from
    /// disk, and the pages they read leave the cache after the read (see
    /// `drop_read_behind_tail`), so a replay does not evict the tails. Appends then reuse
    /// memory just freed instead of first-touching new pages: on a VM whose host reclaims
    /// free memory, that first touch is most of a write's cost (docs/benchmarks.md, "Page
    /// cache"). Takes effect from the next fsync pass.
    pub fn set_page_cache_tail(&self, tail: Option<u64>) {
        self.inner
            .cache_tail
            .store(tail.unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Whether this replica leads the partition (the default). A Raft follower's log is read
    /// only if it becomes leader, so it keeps at most [`FOLLOWER_CACHE_TAIL`] of its newest
    /// bytes cached (what it serves its consumers from if it becomes leader), whatever
    /// [`PartitionLog::set_page_cache_tail`] says.
    ///
    /// A follower also writes its large appends with direct I/O (see `segment`'s module
    /// comment), so those never enter the page cache at all.
    pub fn set_leading(&self, leading: bool) {
        // Called on every role check: only a change is worth the append lock.
        if self.inner.leading.load(Ordering::Acquire) == leading {
            return;
        }
        let st = lock(&self.inner.state);
        self.inner.leading.store(leading, Ordering::Release);
        st.active.set_direct(!leading);
    }

    /// High watermark changes (for long-polling fetches).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.inner.hw_tx.subscribe()
    }

    /// Offset below which everything is fsynced.
    pub fn durable_offset(&self) -> i64 {
        self.inner.durable.load(Ordering::Acquire)
    }

    /// Completes when `durable_offset() >= offset` (pass `last_offset + 1` of an append).
    ///
    /// With `flush.messages=1` the flusher pool fsyncs right away (group commit). With larger
    /// `flush.messages` / `flush.ms` it waits for whichever flush the policy runs next; call
    /// [`PartitionLog::request_flush`] to force one. Fails if the log fails or is closed first.
    pub async fn wait_durable(&self, offset: i64) -> Result<(), StorageError> {
        let mut rx = self.inner.durable_tx.subscribe();
        loop {
            if *rx.borrow_and_update() >= offset {
                return Ok(());
            }
            if let Some(reason) = lock(&self.inner.failure).clone() {
                return Err(StorageError::Offline {
                    log: self.inner.name.clone(),
                    reason,
                });
            }
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(StorageError::Closed(self.inner.name.clone()));
            }
            if rx.changed().await.is_err() {
                return Err(StorageError::Closed(self.inner.name.clone()));
            }
        }
    }

    /// Calls `callback` once `durable_offset() >= offset`, with the error instead if the log
    /// fails or closes first: on the flusher thread that made it durable, or right here if it
    /// already is. Callbacks run in the order they were registered, whatever their offsets (a
    /// later one waits for an earlier one), so Raft learns of its appends in append order.
    ///
    /// The callback runs under a lock of this log and must only hand the outcome on (say,
    /// send it to a channel), never call back into this log. Where [`PartitionLog::wait_durable`]
    /// needs a task to wake and await for each append, this costs the flusher one call: the
    /// Raft log store acknowledges its appends this way.
    pub fn when_durable(
        &self,
        offset: i64,
        callback: impl FnOnce(Result<(), StorageError>) + Send + 'static,
    ) {
        lock(&self.inner.durable_callbacks).push_back((offset, Box::new(callback)));
        self.inner.run_durable_callbacks();
    }

    /// Callbacks registered with [`PartitionLog::when_durable`] that have not run yet.
    pub fn durable_callbacks_pending(&self) -> usize {
        lock(&self.inner.durable_callbacks).len()
    }

    /// [`PartitionLog::wait_durable`] for callers without an async runtime.
    pub fn wait_durable_blocking(&self, offset: i64) -> Result<(), StorageError> {
        block_on(self.wait_durable(offset))
    }

    /// Asks the flusher pool to fsync now, whatever the flush policy says.
    pub fn request_flush(&self) {
        FlushPool::global().submit(&self.inner);
    }

    /// Flushes if `flush.ms` has passed since the oldest unflushed append (driven by the
    /// [`crate::LogManager`] background thread). Returns true if a flush was queued.
    pub fn flush_if_due(&self, now_ms: i64) -> bool {
        let flush_ms = read(&self.inner.config).flush_ms;
        let oldest = self.inner.oldest_unflushed_ms.load(Ordering::Acquire);
        if oldest != i64::MAX && now_ms.saturating_sub(oldest) >= flush_ms {
            self.request_flush();
            return true;
        }
        false
    }

    /// ListOffsets by timestamp: the first offset whose timestamp is >= `ts`, with that
    /// timestamp. Exact for uncompressed CreateTime batches (record timestamp deltas are
    /// walked); for compressed or LogAppendTime batches it is the first batch whose max
    /// timestamp is >= `ts`, answered as (its base offset, its max timestamp). `None` if no
    /// such record.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, StorageError> {
        self.inner.offset_for_timestamp(ts)
    }

    /// ListOffsets MAX_TIMESTAMP: `(timestamp, offset)` of the record with the largest
    /// timestamp (the first such record of an uncompressed batch; a compressed batch's last
    /// offset; a LogAppendTime batch's base offset). `None` for an empty log.
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        match self.inner.max_timestamp() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(log = %self.inner.name, error = %e, "max timestamp lookup failed");
                None
            }
        }
    }

    /// OffsetForLeaderEpoch: `(epoch, end offset)` as Kafka's leader epoch cache answers it.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        let st = lock(&self.inner.state);
        st.epochs.end_offset_for(epoch, st.next_offset)
    }

    /// The latest leader epoch written to this log, if any.
    pub fn latest_epoch(&self) -> Option<i32> {
        lock(&self.inner.state).epochs.latest()
    }

    /// DeleteRecords: moves the log start offset to `offset` (-1 means the high watermark),
    /// which must be <= the high watermark (else [`StorageError::OffsetOutOfRange`]), deletes
    /// segments wholly below it and persists the new start. Returns the new log start offset.
    pub fn delete_records_before(&self, offset: i64) -> Result<i64, StorageError> {
        self.inner.delete_records_before(offset)
    }

    /// Deletes whole segments past `retention.ms` / `retention.bytes` (and forgets idle
    /// producer ids). An expired active segment is rolled first, as Kafka does; segments
    /// above the high watermark are never deleted.
    pub fn apply_retention(&self, now_ms: i64) -> Result<RetentionOutcome, StorageError> {
        self.inner.apply_retention(now_ms)
    }

    /// Log compaction (`cleanup.policy=compact`): one pass of the log cleaner if it is due
    /// (or `opts.force`), see [`crate::cleaner`]. `Ok(None)` when nothing was cleaned.
    /// Appends proceed meanwhile; only the final swap takes the checkpoint lock.
    pub fn clean(
        &self,
        now_ms: i64,
        opts: CleanOptions,
    ) -> Result<Option<CleanOutcome>, StorageError> {
        self.inner.clean(now_ms, opts)
    }

    /// Keeps retention and the cleaner from touching segments that reach `offset` or beyond
    /// (replication: batches of Raft entries not yet purged). Not persisted: the holder sets it
    /// again when it opens the log.
    pub fn set_retention_floor(&self, offset: i64) {
        self.inner.retention_floor.store(offset, Ordering::Release);
    }

    /// The cleaner's "cleaned up to" offset: below it the log was compacted at least once.
    pub fn cleaned_to(&self) -> i64 {
        self.inner.cleaned_to.load(Ordering::Acquire)
    }

    /// Removes every batch at and after `offset`. Truncation works on batch boundaries: a batch
    /// that contains `offset` is removed whole, so the new log end may be below `offset`
    /// (replication only truncates at batch boundaries). Producer state and leader epochs are
    /// rebuilt to match; the result is fsynced and checkpointed before this returns.
    pub fn truncate_to(&self, offset: i64) -> Result<(), StorageError> {
        self.inner.truncate_to(offset)
    }

    /// Replaces the config (takes effect from the next append / retention pass).
    pub fn set_config(&self, config: LogConfig) {
        *write(&self.inner.config) = config;
    }

    /// Bytes in all segments.
    pub fn size_bytes(&self) -> u64 {
        read(&self.inner.segments).iter().map(|s| s.size()).sum()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        read(&self.inner.segments).len()
    }

    /// Writes a checkpoint now if the log changed since the last one (fsyncing first).
    pub fn checkpoint_if_changed(&self) -> Result<bool, StorageError> {
        if self.inner.checkpointed_end.load(Ordering::Acquire) == self.log_end_offset() {
            return Ok(false);
        }
        self.inner.write_checkpoint(false)?;
        Ok(true)
    }

    /// Flushes everything and writes the checkpoint (marked clean) so the next open needs no
    /// scan. Further appends fail with [`StorageError::Closed`].
    pub fn close(&self) -> Result<(), StorageError> {
        let trimmed = {
            let st = lock(&self.inner.state);
            self.inner.closed.store(true, Ordering::Release);
            st.active.trim().map_err(io_err(format!(
                "trimming {}",
                st.active.path("log").display()
            )))
        };
        let result = trimmed.and_then(|()| self.inner.write_checkpoint(true));
        // Wake waiters so those past the end learn the log is closed.
        self.inner.wake_durable_waiters();
        result
    }

    /// True once [`PartitionLog::close`] ran.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    pub(crate) fn mark_closed_for_delete(&self) {
        // Under the checkpoint lock, which a clean holds from its last checks through its swap:
        // a clean either finishes before the directory is renamed away, or sees the log closed
        // and publishes nothing.
        let _c = lock(&self.inner.checkpoint_lock);
        self.inner.closed.store(true, Ordering::Release);
        self.inner.wake_durable_waiters();
    }
}

impl Drop for PartitionLog {
    /// Dropping without [`PartitionLog::close`] is like a crash for this log: no further
    /// checkpoint is written (so a reopen in the same process never races a stale one).
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Release);
        let _c = lock(&self.inner.checkpoint_lock);
        let _f = lock(&self.inner.flush_lock);
        self.inner.wake_durable_waiters();
    }
}

impl Inner {
    pub(crate) fn check_usable(&self) -> Result<(), StorageError> {
        if let Some(reason) = lock(&self.failure).clone() {
            return Err(StorageError::Offline {
                log: self.name.clone(),
                reason,
            });
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed(self.name.clone()));
        }
        Ok(())
    }

    /// Takes the log offline after an I/O failure whose effect on disk is unknown.
    pub(crate) fn fail(&self, what: &str, e: &io::Error) {
        let mut f = lock(&self.failure);
        if f.is_none() {
            tracing::error!(log = %self.name, error = %e, "{what} failed; the log is offline until reopened");
            *f = Some(format!("{what}: {e}"));
        }
        drop(f);
        self.wake_durable_waiters();
    }

    /// Wakes [`PartitionLog::wait_durable`] callers and runs the due
    /// [`PartitionLog::when_durable`] callbacks, after the durable offset moved or the log
    /// failed or closed.
    fn wake_durable_waiters(&self) {
        self.durable_tx.send_modify(|_| {});
        self.run_durable_callbacks();
    }

    /// Runs, in registration order, the callbacks whose offset is durable; once the log has
    /// failed or closed, all of them, with that error. Each runs under the queue's lock, so
    /// a registration racing this cannot overtake an older callback.
    fn run_durable_callbacks(&self) {
        let mut queue = lock(&self.durable_callbacks);
        while let Some(&(offset, _)) = queue.front() {
            let outcome = if self.durable.load(Ordering::Acquire) >= offset {
                Ok(())
            } else if let Err(e) = self.check_usable() {
                Err(e)
            } else {
                break;
            };
            if let Some((_, callback)) = queue.pop_front() {
                callback(outcome);
            }
        }
    }

    fn append_validated(
        self: &Arc<Self>,
        batch: Bytes,
        header: BatchHeader,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendOutcome, AppendError> {
        self.append_inner(batch, header, leader_epoch, now_ms, Mode::Leader)
    }

    fn append_inner(
        self: &Arc<Self>,
        batch: Bytes,
        header: BatchHeader,
        leader_epoch: i32,
        now_ms: i64,
        mode: Mode,
    ) -> Result<AppendOutcome, AppendError> {
        let verbatim = mode != Mode::Leader;
        let config = read(&self.config).clone();
        let mut st = lock(&self.state);
        self.check_usable()?;
        if mode == Mode::Replica && header.base_offset != st.next_offset {
            return Err(AppendError::Storage(StorageError::OffsetOutOfRange {
                offset: header.base_offset,
                log_start: self.log_start.load(Ordering::Acquire),
                limit: st.next_offset,
            }));
        }
        let check = if verbatim {
            Check::Append
        } else {
            st.producers
                .check(&header, now_ms, config.producer_id_expiration_ms)?
        };
        match check {
            Check::Duplicate(meta) => {
                return Ok(AppendOutcome {
                    base_offset: meta.first_offset,
                    last_offset: meta.last_offset,
                    log_append_time: if config.message_timestamp_type
                        == TimestampType::LogAppendTime
                    {
                        meta.timestamp
                    } else {
                        -1
                    },
                    log_start_offset: self.log_start.load(Ordering::Acquire),
                    duplicate: true,
                });
            }
            Check::Append => {}
        }
        let base = st.next_offset;
        let last = base + header.last_offset_delta as i64;
        self.maybe_roll(&mut st, &config, batch.len(), last, now_ms)?;

        let mut prefix = [0u8; 16];
        prefix.copy_from_slice(&batch[..16]);
        patch_offset_and_epoch(&mut prefix, base, leader_epoch);
        let (stored, log_append_time) = if verbatim {
            (None, -1)
        } else if config.message_timestamp_type == TimestampType::LogAppendTime {
            let mut copy = batch.to_vec();
            set_log_append_time(&mut copy, now_ms);
            patch_offset_and_epoch(&mut copy, base, leader_epoch);
            (Some(copy), now_ms)
        } else {
            (None, -1)
        };
        let active = Arc::clone(&st.active);
        let written = match &stored {
            Some(copy) => active.append(&[IoSlice::new(copy)]),
            None => active.append(&[IoSlice::new(&prefix), IoSlice::new(&batch[16..])]),
        };
        let pos = match written {
            Ok(pos) => pos,
            Err(e) => {
                // The segment cut itself back; if that also failed the tail is unknown.
                if active.size() != active.file_len().unwrap_or(u64::MAX) {
                    self.fail("segment write", &e);
                }
                return Err(StorageError::io(
                    format!("appending to {}", active.path("log").display()),
                    e,
                )
                .into());
            }
        };
        let mut stored_header = header;
        stored_header.base_offset = base;
        stored_header.partition_leader_epoch = leader_epoch;
        if log_append_time >= 0 {
            stored_header.max_timestamp = log_append_time;
            stored_header.attributes |= 0x08;
        }
        active.index_batch(&stored_header, pos, config.index_interval_bytes, now_ms);
        st.producers.record(&stored_header, now_ms);
        st.epochs.assign(leader_epoch, base);
        st.next_offset = last + 1;
        self.log_end.store(last + 1, Ordering::Release);
        self.appended_bytes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let log_start = self.log_start.load(Ordering::Acquire);
        drop(st);

        self.oldest_unflushed_ms.fetch_min(now_ms, Ordering::AcqRel);
        let unflushed = (last + 1 - self.durable.load(Ordering::Acquire)).max(0) as u64;
        if unflushed >= config.flush_messages {
            FlushPool::global().submit(self);
        }
        Ok(AppendOutcome {
            base_offset: base,
            last_offset: last,
            log_append_time,
            log_start_offset: log_start,
            duplicate: false,
        })
    }

    /// Rolls when the batch would not fit, the segment is older than `segment.ms`, relative
    /// offsets would overflow u32, or the offset index is full.
    fn maybe_roll(
        self: &Arc<Self>,
        st: &mut AppendState,
        config: &LogConfig,
        size: usize,
        last: i64,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        let active = &st.active;
        let current = active.size();
        if current == 0 {
            return Ok(());
        }
        let full = current + size as u64 > config.segment_bytes;
        let old = active
            .first_batch_ms()
            .is_some_and(|t| now_ms.saturating_sub(t) >= config.segment_ms);
        let overflow = last - active.base > u32::MAX as i64;
        // Kafka's segment.index.bytes default (10 MiB of 8-byte entries) bounds the memory an
        // active index can take when index.interval.bytes is tiny.
        let index_full = active
            .with_active(|ix| ix.offsets.len() >= MAX_INDEX_ENTRIES)
            .unwrap_or(false);
        if full || old || overflow || index_full {
            self.roll(st)?;
        }
        Ok(())
    }

    /// Seals the active segment and starts a new one at the next offset. The old segment's
    /// fsync and the checkpoint happen on the flusher pool.
    fn roll(self: &Arc<Self>, st: &mut AppendState) -> Result<(), StorageError> {
        let old = Arc::clone(&st.active);
        old.seal()
            .map_err(io_err(format!("sealing {}", old.path("log").display())))?;
        let reserve = read(&self.config).segment_reserve();
        let seg = Segment::create(&self.dir, st.next_offset, reserve).map_err(io_err(format!(
            "creating segment {} in {}",
            st.next_offset,
            self.dir.display()
        )))?;
        seg.set_direct(!self.leading.load(Ordering::Acquire));
        let seg = Arc::new(seg);
        write(&self.segments).push(Arc::clone(&seg));
        st.active = seg;
        tracing::debug!(log = %self.name, base = st.next_offset, "rolled segment");
        self.checkpoint_wanted.store(true, Ordering::Release);
        FlushPool::global().submit(self);
        Ok(())
    }

    /// One fsync pass (run on the flusher pool): syncs every segment with unsynced bytes and
    /// publishes the new durable offset.
    pub(crate) fn flush_now(&self) {
        let _g = lock(&self.flush_lock);
        if let Err(e) = self.sync_unsynced() {
            self.fail("fsync", &e);
        }
    }

    /// Monotonic, clamped to the log end; wakes `subscribe()` watchers.
    fn advance_high_watermark(&self, hw: i64) {
        let hw = hw.min(self.log_end.load(Ordering::Acquire));
        self.hw_tx.send_if_modified(|cur| {
            if hw > *cur {
                *cur = hw;
                true
            } else {
                false
            }
        });
    }

    /// Caller holds `flush_lock`.
    fn sync_unsynced(&self) -> io::Result<()> {
        if lock(&self.failure).is_some() {
            return Ok(());
        }
        let target = self.log_end.load(Ordering::Acquire);
        let dirty: Vec<Arc<Segment>> = {
            let segs = read(&self.segments);
            // Usually only the active segment (and one just sealed) is dirty; checking them all
            // is a few atomic loads per segment and never misses one.
            segs.iter().filter(|s| !s.is_synced()).cloned().collect()
        };
        for s in &dirty {
            s.sync()?;
        }
        if self.hw_follows_durable.load(Ordering::Acquire) {
            self.advance_high_watermark(target);
        }
        if self.durable.fetch_max(target, Ordering::AcqRel) < target {
            self.durable_tx.send_if_modified(|d| {
                if target > *d {
                    *d = target;
                    true
                } else {
                    false
                }
            });
            self.run_durable_callbacks();
        }
        if self.log_end.load(Ordering::Acquire) == target {
            self.oldest_unflushed_ms.store(i64::MAX, Ordering::Release);
        }
        // After the waiters are woken: dropping pages is no reason to delay an acknowledgement.
        if !dirty.is_empty() {
            self.drop_cached_behind();
        }
        Ok(())
    }

    /// The newest bytes this log keeps in the page cache (`u64::MAX`: all of them).
    fn cache_keep(&self) -> u64 {
        let keep = self.cache_tail.load(Ordering::Acquire);
        if self.leading.load(Ordering::Acquire) {
            keep
        } else {
            keep.min(FOLLOWER_CACHE_TAIL)
        }
    }

    /// After a read of `[pos, end)` in `s`: when at least the cached tail's worth of newer
    /// bytes follows it, the read was behind the tail and its pages leave the page cache again,
    /// so a replay neither grows the cache nor evicts the tails. Counts newer segments from
    /// the newest back, stopping once the tail is covered (one or two with default sizes).
    fn drop_read_behind_tail(&self, s: &Segment, pos: u64, end: u64) {
        let keep = self.cache_keep();
        if keep == u64::MAX || end <= pos {
            return;
        }
        let mut newer = s.size().saturating_sub(end);
        if newer < keep {
            for n in read(&self.segments).iter().rev() {
                if n.base <= s.base {
                    break;
                }
                newer = newer.saturating_add(n.size());
                if newer >= keep {
                    break;
                }
            }
        }
        if newer >= keep {
            s.drop_read(pos, end);
        }
    }

    /// Drops durable pages older than the newest `cache_tail` bytes of the log (see
    /// `set_page_cache_tail`), newest segment first, stopping at the first segment that lies
    /// wholly behind the tail and was dropped already (every older one was, before it).
    fn drop_cached_behind(&self) {
        let mut keep = self.cache_keep();
        if keep == u64::MAX {
            return;
        }
        let segs = read(&self.segments);
        for s in segs.iter().rev() {
            if keep == 0 && s.all_dropped() {
                break;
            }
            s.drop_cached(keep);
            keep = keep.saturating_sub(s.size());
        }
    }

    /// Background checkpoint (after a roll). Skipped once the log is closed or dropped, checked
    /// under the checkpoint lock so it can never land after `Drop` returned.
    pub(crate) fn checkpoint_or_fail(&self, clean: bool) {
        let _c = lock(&self.checkpoint_lock);
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.write_checkpoint_locked(clean) {
            tracing::error!(log = %self.name, error = %e, "checkpoint failed");
        }
    }

    /// Snapshots the state, fsyncs everything up to it, then replaces the checkpoint.
    fn write_checkpoint(&self, clean: bool) -> Result<(), StorageError> {
        let _c = lock(&self.checkpoint_lock);
        self.write_checkpoint_locked(clean)
    }

    pub(crate) fn write_checkpoint_locked(&self, clean: bool) -> Result<(), StorageError> {
        if lock(&self.failure).is_some() {
            return Err(StorageError::Offline {
                log: self.name.clone(),
                reason: "checkpoint skipped".into(),
            });
        }
        let cp = {
            let st = lock(&self.state);
            st.active.persist_index().map_err(io_err(format!(
                "writing index of {}",
                st.active.path("log").display()
            )))?;
            Checkpoint {
                clean_shutdown: clean,
                log_start: self.log_start.load(Ordering::Acquire),
                recovery_point: st.next_offset,
                rp_segment: st.active.base,
                rp_position: st.active.size(),
                rp_segment_max_ts: st.active.active_max_ts(),
                rp_segment_first_ms: st.active.first_batch_ms(),
                epochs: st.epochs.clone(),
                producers: st.producers.clone(),
                cleaned_to: self.cleaned_to.load(Ordering::Acquire),
            }
        };
        {
            let _f = lock(&self.flush_lock);
            if let Err(e) = self.sync_unsynced() {
                self.fail("fsync", &e);
                return Err(StorageError::io(format!("fsync of {}", self.name), e));
            }
        }
        cp.write(&self.dir).map_err(io_err(format!(
            "writing checkpoint in {}",
            self.dir.display()
        )))?;
        self.checkpointed_end
            .store(cp.recovery_point, Ordering::Release);
        Ok(())
    }

    /// The segment holding `offset` (greatest base <= offset), or the first one.
    fn segment_for(&self, offset: i64) -> Option<Arc<Segment>> {
        let segs = read(&self.segments);
        let i = segs.partition_point(|s| s.base <= offset);
        segs.get(i.saturating_sub(1)).cloned()
    }

    fn segment_after(&self, base: i64) -> Option<Arc<Segment>> {
        let segs = read(&self.segments);
        let i = segs.partition_point(|s| s.base <= base);
        segs.get(i).cloned()
    }

    fn interval(&self) -> usize {
        read(&self.config).index_interval_bytes
    }

    fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        max_offset: i64,
        min_one: bool,
    ) -> Result<ReadResult, ReadError> {
        let log_start = self.log_start.load(Ordering::Acquire);
        let log_end = self.log_end.load(Ordering::Acquire);
        let hw = *self.hw_tx.borrow();
        if offset < log_start || offset > log_end {
            return Err(ReadError::OffsetOutOfRange { log_start, log_end });
        }
        let mut result = ReadResult {
            records: Bytes::new(),
            next_offset: offset,
            log_start_offset: log_start,
            log_end_offset: log_end,
            high_watermark: hw,
        };
        let max_offset = max_offset.min(log_end);
        if offset >= max_offset {
            return Ok(result);
        }
        let interval = self.interval();
        let storage = |e: io::Error| {
            ReadError::Storage(StorageError::io(format!("reading {}", self.name), e))
        };
        let mut seg = self.segment_for(offset);
        while let Some(s) = seg {
            let Some((pos, first)) = s.find_batch(offset, interval).map_err(storage)? else {
                seg = self.segment_after(s.base);
                continue;
            };
            if first.last_offset() >= max_offset {
                return Ok(result);
            }
            let limit = if first.size() > max_bytes {
                if !min_one {
                    return Ok(result);
                }
                first.size()
            } else {
                max_bytes
            };
            let buf = s.read(pos, limit).map_err(storage)?;
            self.drop_read_behind_tail(&s, pos, pos + buf.len() as u64);
            let mut kept = 0usize;
            let mut next = offset;
            for item in iter_batches(&buf) {
                let (h, bytes) = item.map_err(|e| {
                    ReadError::Corrupt(format!(
                        "{} at position {}: {e}",
                        s.path("log").display(),
                        pos + kept as u64
                    ))
                })?;
                if h.last_offset() >= max_offset {
                    break;
                }
                verify_stored_batch(bytes).map_err(|e| {
                    tracing::error!(log = %self.name, segment = %s.path("log").display(), position = pos + kept as u64, error = %e, "stored batch fails its check");
                    ReadError::Corrupt(e.to_string())
                })?;
                kept += bytes.len();
                next = h.last_offset() + 1;
            }
            let mut buf = buf;
            buf.truncate(kept);
            result.records = Bytes::from(buf);
            result.next_offset = next;
            return Ok(result);
        }
        Ok(result)
    }

    fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, StorageError> {
        let interval = self.interval();
        let log_start = self.log_start.load(Ordering::Acquire);
        let segs: Vec<Arc<Segment>> = read(&self.segments).clone();
        let ctx = |e: io::Error| StorageError::io(format!("timestamp lookup in {}", self.name), e);
        for s in segs {
            let Some((max_ts, _)) = s.max_timestamp(interval).map_err(ctx)? else {
                continue;
            };
            if max_ts < ts {
                continue;
            }
            let pos = s.time_position_floor(ts, interval).map_err(ctx)?;
            let mut found = None;
            s.scan(pos, s.size(), i64::MIN, false, |_, h, bytes| {
                if h.max_timestamp < ts || h.last_offset() < log_start {
                    return true;
                }
                found = first_record_at_or_after(h, bytes, ts, log_start);
                found.is_none()
            })
            .map_err(ctx)?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    fn max_timestamp(&self) -> io::Result<Option<(i64, i64)>> {
        let interval = self.interval();
        let segs: Vec<Arc<Segment>> = read(&self.segments).clone();
        let mut best: Option<(i64, i64, Arc<Segment>)> = None;
        for s in segs {
            if let Some((ts, off)) = s.max_timestamp(interval)?
                && best.as_ref().is_none_or(|b| ts > b.0)
            {
                best = Some((ts, off, s));
            }
        }
        let Some((ts, off, seg)) = best else {
            return Ok(None);
        };
        let Some((pos, h)) = seg.find_batch(off, interval)? else {
            return Ok(Some((ts, off)));
        };
        let bytes = seg.read(pos, h.size())?;
        if h.compression() != 0 {
            return Ok(Some((ts, h.last_offset())));
        }
        Ok(Some(
            first_record_at_or_after(&h, &bytes, ts, i64::MIN).map_or((ts, off), |(o, t)| (t, o)),
        ))
    }

    fn delete_records_before(self: &Arc<Self>, offset: i64) -> Result<i64, StorageError> {
        self.check_usable()?;
        let _c = lock(&self.checkpoint_lock);
        let hw = *self.hw_tx.borrow();
        let offset = if offset == -1 { hw } else { offset };
        let start = self.log_start.load(Ordering::Acquire);
        if offset < 0 || offset > hw {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start: start,
                limit: hw,
            });
        }
        if offset <= start {
            return Ok(start);
        }
        self.move_log_start(offset)?;
        Ok(offset)
    }

    /// Persists a new log start (caller holds `checkpoint_lock`), then deletes whole segments
    /// below it. A crash in between is fine: open() deletes segments below the start.
    fn move_log_start(&self, new_start: i64) -> Result<(), StorageError> {
        {
            let mut st = lock(&self.state);
            self.log_start.fetch_max(new_start, Ordering::AcqRel);
            st.epochs.truncate_from_start(new_start);
        }
        self.write_checkpoint_locked(false)?;
        let doomed: Vec<Arc<Segment>> = {
            let mut segs = write(&self.segments);
            let mut n = 0;
            while n + 1 < segs.len() && segs[n + 1].base <= new_start {
                n += 1;
            }
            segs.drain(..n).collect()
        };
        for s in doomed {
            s.delete_files()
                .map_err(io_err(format!("deleting {}", s.path("log").display())))?;
        }
        Ok(())
    }

    /// Segments ending above this are kept by retention and the cleaner: the high watermark,
    /// or the retention floor when that is lower.
    pub(crate) fn retention_limit(&self) -> i64 {
        (*self.hw_tx.borrow()).min(self.retention_floor.load(Ordering::Acquire))
    }

    fn apply_retention(self: &Arc<Self>, now_ms: i64) -> Result<RetentionOutcome, StorageError> {
        self.check_usable()?;
        let config = read(&self.config).clone();
        let interval = config.index_interval_bytes;
        let producers_expired = lock(&self.state)
            .producers
            .expire(now_ms, config.producer_id_expiration_ms);
        let mut out = RetentionOutcome {
            log_start_offset: self.log_start.load(Ordering::Acquire),
            producers_expired,
            ..Default::default()
        };
        if !config.cleanup_policy.deletes() {
            return Ok(out);
        }
        let _c = lock(&self.checkpoint_lock);
        let hw = self.retention_limit();
        let segs: Vec<Arc<Segment>> = read(&self.segments).clone();
        let log_end = self.log_end.load(Ordering::Acquire);
        let ctx = |e: io::Error| StorageError::io(format!("retention of {}", self.name), e);
        // Segments [0, n) go; each must end at or below the high watermark.
        let mut n = 0usize;
        let mut total: u64 = segs.iter().map(|s| s.size()).sum();
        let mut roll_active = false;
        for (i, s) in segs.iter().enumerate() {
            let is_last = i + 1 == segs.len();
            let end = if is_last { log_end } else { segs[i + 1].base };
            if end > hw || (s.size() == 0 && is_last) {
                break;
            }
            // A sealed segment with nothing in it (the cleaner keeps the first one of a
            // compacted log even when it emptied it) has nothing to retain.
            let by_time = config.retention_ms >= 0
                && (s.size() == 0 || {
                    let newest = s
                        .max_timestamp(interval)
                        .map_err(ctx)?
                        .map_or_else(|| s.modified_ms(), |(ts, _)| ts);
                    now_ms.saturating_sub(newest) > config.retention_ms
                });
            let by_size = !is_last
                && config.retention_bytes >= 0
                && total.saturating_sub(s.size()) >= config.retention_bytes as u64;
            if !(by_time || by_size) {
                break;
            }
            if is_last {
                roll_active = true;
            }
            total -= s.size();
            out.bytes_deleted += s.size();
            n = i + 1;
        }
        if n == 0 {
            return Ok(out);
        }
        let new_start = if roll_active {
            let mut st = lock(&self.state);
            if st.active.size() > 0 {
                self.roll(&mut st)?;
            }
            st.next_offset
        } else {
            segs[n].base
        };
        out.segments_deleted = n;
        tracing::info!(log = %self.name, segments = n, bytes = out.bytes_deleted, new_log_start = new_start, "retention deleted segments");
        self.move_log_start(new_start)?;
        out.log_start_offset = self.log_start.load(Ordering::Acquire);
        Ok(out)
    }

    fn truncate_to(self: &Arc<Self>, offset: i64) -> Result<(), StorageError> {
        self.check_usable()?;
        let _c = lock(&self.checkpoint_lock);
        let interval = self.interval();
        {
            let _f = lock(&self.flush_lock);
            let mut st = lock(&self.state);
            if offset >= st.next_offset {
                return Ok(());
            }
            let ctx =
                |e: io::Error| StorageError::io(format!("truncating {} to {offset}", self.name), e);
            let log_start = self.log_start.load(Ordering::Acquire);
            // Below the start (Kafka's truncateFullyAndStartAt) everything goes and the log
            // restarts at `offset`; when the batch holding `offset` also holds the log start,
            // everything goes too and the log restarts at its start.
            let restart_at = if offset <= log_start {
                Some(offset.max(0))
            } else {
                let seg = self.segment_for(offset).ok_or_else(|| {
                    StorageError::Corrupt(format!("{} has no segments", self.name))
                })?;
                match seg.find_batch(offset, interval).map_err(ctx)? {
                    Some((_, h)) if h.base_offset <= log_start => Some(log_start),
                    _ => None,
                }
            };
            let (keep, new_end) = if let Some(restart) = restart_at {
                let all: Vec<Arc<Segment>> = std::mem::take(&mut *write(&self.segments));
                for s in all.iter().rev() {
                    s.delete_files().map_err(ctx)?;
                }
                tracing::warn!(log = %self.name, offset, restart, "truncating the whole log");
                let reserve = read(&self.config).segment_reserve();
                let seg = Arc::new(Segment::create(&self.dir, restart, reserve).map_err(ctx)?);
                write(&self.segments).push(Arc::clone(&seg));
                (seg, restart)
            } else {
                let seg = self.segment_for(offset).ok_or_else(|| {
                    StorageError::Corrupt(format!("{} has no segments", self.name))
                })?;
                let (pos, end) = match seg.find_batch(offset, interval).map_err(ctx)? {
                    // `offset` in a gap left by compaction: the log ends at `offset` itself
                    // (never below the segment's base).
                    Some((pos, h)) => (pos, h.base_offset.min(offset).max(seg.base)),
                    None => (seg.size(), offset.max(seg.base)),
                };
                // Later segments go first, newest first, so a crash part-way never leaves data
                // after the cut that a recovery scan would accept.
                let later: Vec<Arc<Segment>> = {
                    let mut segs = write(&self.segments);
                    let i = segs
                        .iter()
                        .position(|s| Arc::ptr_eq(s, &seg))
                        .map_or(segs.len(), |i| i + 1);
                    segs.drain(i..).collect()
                };
                for s in later.iter().rev() {
                    s.delete_files().map_err(ctx)?;
                }
                if pos < seg.size() || !seg.is_active() {
                    let later_bytes: u64 = later.iter().map(|s| s.size()).sum();
                    tracing::warn!(log = %self.name, offset, new_log_end = end, bytes = seg.size() - pos + later_bytes, "truncating log");
                    seg.truncate(pos, interval).map_err(ctx)?;
                }
                (seg, end)
            };
            keep.set_direct(!self.leading.load(Ordering::Acquire));
            st.active = Arc::clone(&keep);
            st.next_offset = new_end;
            self.log_end.store(new_end, Ordering::Release);
            if restart_at.is_some() {
                self.log_start.store(new_end, Ordering::Release);
            }
            st.epochs.truncate_from_end(new_end);
            // What gets appended after the cut is dirty, whatever was cleaned before.
            self.cleaned_to.fetch_min(new_end, Ordering::AcqRel);
            st.producers = self.rebuild_producers(new_end).map_err(ctx)?;
            self.sync_unsynced().map_err(ctx)?;
            self.durable.store(new_end, Ordering::Release);
            self.durable_tx.send_replace(new_end);
            self.run_durable_callbacks();
            self.hw_tx.send_if_modified(|hw| {
                if *hw > new_end {
                    *hw = new_end;
                    true
                } else {
                    false
                }
            });
        }
        self.write_checkpoint_locked(false)
    }

    /// Producer state as of `end`: the checkpoint's snapshot if it is not past `end`, else
    /// from nothing, plus a replay of batch headers up to `end`.
    fn rebuild_producers(&self, end: i64) -> io::Result<ProducerState> {
        let (mut state, from) = match Checkpoint::read(&self.dir)? {
            Some(Ok(cp)) if cp.recovery_point <= end => (cp.producers, cp.recovery_point),
            _ => (ProducerState::default(), i64::MIN),
        };
        let interval = self.interval();
        let segs: Vec<Arc<Segment>> = read(&self.segments).clone();
        for s in segs {
            let pos = if from > s.base {
                match s.find_batch(from, interval)? {
                    Some((pos, _)) => pos,
                    None => continue,
                }
            } else {
                0
            };
            s.scan(pos, s.size(), i64::MIN, false, |_, h, _| {
                if h.base_offset >= from && h.last_offset() < end {
                    state.record(h, h.max_timestamp);
                }
                true
            })?;
        }
        Ok(state)
    }
}

impl Segment {
    fn first_batch_ms(&self) -> Option<i64> {
        self.with_active(|ix| ix.first_batch_ms).flatten()
    }
    fn active_max_ts(&self) -> Option<(i64, i64)> {
        self.with_active(|ix| ix.max_ts).flatten()
    }
    fn file_len(&self) -> io::Result<u64> {
        fs::metadata(self.path("log")).map(|m| m.len())
    }
}

/// The first record of `batch` with timestamp >= `ts` and offset >= `min_offset`, as
/// `(offset, timestamp)`. Walks record headers of uncompressed CreateTime batches; otherwise
/// answers with the batch's base offset (or `min_offset`) and max timestamp.
fn first_record_at_or_after(
    h: &BatchHeader,
    batch: &[u8],
    ts: i64,
    min_offset: i64,
) -> Option<(i64, i64)> {
    if h.max_timestamp < ts {
        return None;
    }
    if h.compression() != 0 || h.is_log_append_time() || batch.len() < HEADER_LEN {
        return Some((h.base_offset.max(min_offset), h.max_timestamp));
    }
    let mut rest = &batch[HEADER_LEN..];
    while !rest.is_empty() {
        let (len, used) = read_varint(rest)?;
        let len = usize::try_from(len).ok()?;
        let rec = rest.get(used..used + len)?;
        // attributes (1 byte), timestampDelta (varlong), offsetDelta (varint)
        let (ts_delta, n1) = read_varlong(rec.get(1..)?)?;
        let (off_delta, _) = read_varint(rec.get(1 + n1..)?)?;
        let offset = h.base_offset + off_delta as i64;
        let rts = h.base_timestamp.saturating_add(ts_delta);
        if rts >= ts && offset >= min_offset {
            return Some((offset, rts));
        }
        rest = &rest[used + len..];
    }
    // Inconsistent max timestamp: fall back to the batch level.
    Some((h.base_offset.max(min_offset), h.max_timestamp))
}

struct Recovered {
    segments: Vec<Arc<Segment>>,
    active: Arc<Segment>,
    next_offset: i64,
    log_start: i64,
    producers: ProducerState,
    epochs: EpochCache,
    stats: RecoveryStats,
    needs_checkpoint: bool,
    cleaned_to: i64,
}

/// Opens the segments of `dir`, trusting everything below the checkpoint's recovery point and
/// CRC-checking everything after it; cuts a torn or corrupt tail.
fn recover(dir: &Path, name: &str, config: &LogConfig) -> Result<Recovered, StorageError> {
    let ctx = |what: &str| io_err(format!("{what} in {}", dir.display()));
    // A crash during a clean's swap: finish it (or discard it) before anything is listed.
    cleaner::complete_swaps(dir, name).map_err(ctx("finishing a cleaner swap"))?;
    let mut bases = Vec::new();
    let mut stray = Vec::new();
    for entry in fs::read_dir(dir).map_err(ctx("listing"))? {
        let entry = entry.map_err(ctx("listing"))?;
        let fname = entry.file_name().to_string_lossy().into_owned();
        if fname.ends_with(".tmp")
            || fname.ends_with(".deleted")
            || fname.ends_with(".swap")
            || fname.ends_with(".cleaned")
        {
            stray.push(entry.path());
        } else if let Some(base) = segment::parse_file_name(&fname, "log") {
            bases.push(base);
        }
    }
    for p in stray {
        tracing::info!(path = %p.display(), "removing stray file");
        fs::remove_file(&p).map_err(io_err(format!("removing {}", p.display())))?;
    }
    bases.sort_unstable();
    // Index files whose segment is gone.
    for entry in fs::read_dir(dir).map_err(ctx("listing"))? {
        let entry = entry.map_err(ctx("listing"))?;
        let fname = entry.file_name().to_string_lossy().into_owned();
        let orphan = ["index", "timeindex"].iter().any(|ext| {
            segment::parse_file_name(&fname, ext).is_some_and(|b| bases.binary_search(&b).is_err())
        });
        if orphan {
            fs::remove_file(entry.path()).map_err(ctx("removing orphan index"))?;
        }
    }

    let mut stats = RecoveryStats::default();
    let cp = match Checkpoint::read(dir).map_err(ctx("reading checkpoint"))? {
        Some(Ok(cp)) => Some(cp),
        Some(Err(why)) => {
            tracing::warn!(log = name, reason = %why, "checkpoint unusable, scanning the whole log");
            None
        }
        None => None,
    };
    let mut log_start = cp.as_ref().map_or(0, |c| c.log_start);
    if let Some(&first) = bases.first() {
        log_start = log_start.max(first);
    }
    let mut segments: Vec<Arc<Segment>> = Vec::new();
    for (i, &base) in bases.iter().enumerate() {
        let below_start = bases.get(i + 1).is_some_and(|&next| next <= log_start);
        let seg = Segment::open(dir, base).map_err(ctx("opening segment"))?;
        if below_start {
            seg.delete_files()
                .map_err(ctx("deleting segment below the log start"))?;
            stats.segments_removed += 1;
        } else {
            segments.push(Arc::new(seg));
        }
    }

    // Where to start verifying: the checkpoint's position if it matches the files.
    let start = cp.as_ref().and_then(|c| {
        let i = segments.iter().position(|s| s.base == c.rp_segment)?;
        (c.rp_position <= segments[i].size()).then_some((i, c.rp_position))
    });
    let (cp, start_idx, start_pos) = match (cp, start) {
        (Some(cp), Some((i, pos))) => (Some(cp), i, pos),
        (Some(_), None) if !segments.is_empty() => {
            tracing::warn!(
                log = name,
                "checkpoint does not match the segment files, scanning the whole log"
            );
            (None, 0, 0)
        }
        (cp, _) => (cp.filter(|_| segments.is_empty()), 0, 0),
    };
    stats.checkpoint_used = cp.is_some();
    stats.clean_shutdown = cp.as_ref().is_some_and(|c| c.clean_shutdown);
    let mut producers = cp.as_ref().map(|c| c.producers.clone()).unwrap_or_default();
    let mut epochs = cp.as_ref().map(|c| c.epochs.clone()).unwrap_or_default();
    let cleaned_to = cp.as_ref().map_or(0, |c| c.cleaned_to);
    let mut next_offset = cp
        .as_ref()
        .map_or(log_start, |c| c.recovery_point.max(log_start));
    let mut scanned_any = false;
    let interval = config.index_interval_bytes;

    let mut i = start_idx;
    while i < segments.len() {
        let seg = Arc::clone(&segments[i]);
        let from = if i == start_idx { start_pos } else { 0 };
        let mut ix = if i == start_idx && from > 0 {
            let (max_ts, first_ms) = cp.as_ref().map_or((None, None), |c| {
                (c.rp_segment_max_ts, c.rp_segment_first_ms)
            });
            match seg
                .load_index_prefix(from, max_ts, first_ms)
                .map_err(ctx("loading index"))?
            {
                Some(ix) if max_ts.is_some() || cp.is_none() => ix,
                _ => seg
                    .rebuild_active(from, interval)
                    .map_err(ctx("rebuilding index"))?,
            }
        } else {
            ActiveIndex::default()
        };
        let prev_last = if i == start_idx && cp.is_some() {
            next_offset - 1
        } else {
            i64::MIN
        };
        let mut last_seen = None;
        let end = seg.size();
        let stop = seg
            .scan(from, end, prev_last, true, |pos, h, _| {
                if ix.first_batch_ms.is_none() {
                    ix.first_batch_ms = Some(h.max_timestamp);
                }
                Segment::index_into(&mut ix, seg.base, h, pos, interval);
                producers.record(h, h.max_timestamp);
                epochs.assign(h.partition_leader_epoch, h.base_offset);
                stats.batches_scanned += 1;
                stats.bytes_scanned += h.size() as u64;
                last_seen = Some(h.last_offset());
                true
            })
            .map_err(ctx("scanning segment"))?;
        if from < end {
            scanned_any = true;
        }
        if let Some(l) = last_seen {
            next_offset = next_offset.max(l + 1);
        }
        next_offset = next_offset.max(seg.base);
        let padding = stop.problem.is_some()
            && seg
                .is_padding(stop.pos, end)
                .map_err(ctx("reading segment"))?;
        if padding {
            // A follower's last direct write, not a torn batch: nothing after it is suspect.
            tracing::debug!(log = name, segment = %seg.path("log").display(), position = stop.pos, bytes = end - stop.pos, "cutting direct-I/O padding");
            seg.truncate_file(stop.pos)
                .map_err(ctx("truncating segment"))?;
            scanned_any = true;
        } else if let Some(problem) = stop.problem {
            let cut = end - stop.pos;
            let later: Vec<Arc<Segment>> = segments.drain(i + 1..).collect();
            let later_bytes: u64 = later.iter().map(|s| s.size()).sum();
            tracing::warn!(
                log = name,
                segment = %seg.path("log").display(),
                position = stop.pos,
                next_offset,
                bytes_cut = cut,
                later_segments_removed = later.len(),
                later_bytes_removed = later_bytes,
                reason = %problem,
                "truncating a torn or corrupt log tail"
            );
            seg.truncate_file(stop.pos)
                .map_err(ctx("truncating segment"))?;
            for s in &later {
                s.delete_files()
                    .map_err(ctx("deleting segment after a corrupt tail"))?;
            }
            stats.bytes_truncated += cut + later_bytes;
            stats.segments_removed += later.len();
            scanned_any = true;
        }
        let is_last = i + 1 == segments.len();
        seg.set_active(ix).map_err(ctx("writing index"))?;
        if !is_last {
            seg.seal().map_err(ctx("sealing segment"))?;
        }
        i += 1;
    }

    // Sealed segments below the recovery point whose index files are missing: rebuild now.
    for s in segments.iter().take(start_idx) {
        if !s.path("index").exists() || !s.path("timeindex").exists() {
            s.max_timestamp(interval).map_err(ctx("rebuilding index"))?;
        }
    }

    if segments.is_empty() {
        let seg = Segment::create(dir, next_offset, config.segment_reserve())
            .map_err(ctx("creating segment"))?;
        segments.push(Arc::new(seg));
        scanned_any = true;
    }
    let active = Arc::clone(
        segments
            .last()
            .ok_or_else(|| StorageError::Corrupt(format!("{name}: no segment")))?,
    );
    if !active.is_active() {
        // The checkpoint's segment is the last one but was opened sealed: make it writable.
        let ix = active
            .rebuild_active(active.size(), interval)
            .map_err(ctx("rebuilding index"))?;
        active.set_active(ix).map_err(ctx("writing index"))?;
    }
    epochs.truncate_from_end(next_offset);
    log_start = log_start.min(next_offset);
    if scanned_any {
        for s in &segments {
            s.sync().map_err(ctx("fsync after recovery"))?;
        }
    }
    Ok(Recovered {
        segments,
        active,
        next_offset,
        log_start,
        producers,
        epochs,
        stats,
        needs_checkpoint: scanned_any || cp.is_none(),
        cleaned_to,
    })
}
