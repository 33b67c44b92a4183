//! A partition replica hosted on this node, and the leader's write path.
//!
//! The produce path goes through [`Partition::append`] and waits on
//! [`PendingAppend::acknowledged`]: today, with one replica, a write is acknowledged once it is
//! durable per the topic's flush policy and the high watermark then covers it. With Raft, the same
//! two calls become "append to the leader's log" and "wait for the commit index", and the high
//! watermark becomes the commit index; callers do not change.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use sluice_storage::{AppendError, AppendOutcome, PartitionLog, ReadError, StorageError};
use tokio::sync::watch;

/// Why a produce to this partition failed.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The log refused or failed the append.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// acks=all with fewer in-sync replicas than min.insync.replicas.
    #[error("{isr} in-sync replicas, min.insync.replicas is {min_isr}")]
    NotEnoughReplicas {
        /// In-sync replicas now.
        isr: i32,
        /// The topic's min.insync.replicas.
        min_isr: i32,
    },
}

impl ProduceError {
    /// The Kafka error code for the partition's produce response.
    pub fn error_code(&self) -> i16 {
        match self {
            ProduceError::Append(e) => e.error_code(),
            ProduceError::NotEnoughReplicas { .. } => ResponseError::NotEnoughReplicas.code(),
        }
    }
}

/// What the producer asked to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// acks=0: nobody waits.
    None,
    /// acks=1: the leader has it.
    Leader,
    /// acks=all: every in-sync replica has it.
    All,
}

/// One partition replica.
pub struct Partition {
    topic: String,
    index: i32,
    log: Arc<PartitionLog>,
    leader_epoch: AtomicI32,
    /// min.insync.replicas of the topic, refreshed on config changes.
    min_insync_replicas: AtomicI32,
    /// Replicas currently in sync (1 while this node is the only replica).
    isr_size: AtomicI32,
}

impl Partition {
    /// Wraps an open log as the leader replica at `leader_epoch`.
    pub fn new(topic: &str, index: i32, log: Arc<PartitionLog>, leader_epoch: i32) -> Self {
        // With a single replica a write is committed once durable: the log moves the high
        // watermark itself after each fsync (and now, up to what survived recovery).
        log.set_high_watermark_follows_durable(true);
        Partition {
            topic: topic.to_string(),
            index,
            log,
            leader_epoch: AtomicI32::new(leader_epoch),
            min_insync_replicas: AtomicI32::new(1),
            isr_size: AtomicI32::new(1),
        }
    }

    /// Topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Partition index.
    pub fn index(&self) -> i32 {
        self.index
    }

    /// The underlying log.
    pub fn log(&self) -> &Arc<PartitionLog> {
        &self.log
    }

    /// The current leader epoch.
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.load(Ordering::Acquire)
    }

    /// Sets min.insync.replicas (from the topic's configs).
    pub fn set_min_insync_replicas(&self, n: i32) {
        self.min_insync_replicas.store(n, Ordering::Release);
    }

    /// Kafka's leader-epoch fencing for a client's `current_leader_epoch` (-1: not checked).
    pub fn check_leader_epoch(&self, client_epoch: i32) -> Result<(), i16> {
        let ours = self.leader_epoch();
        if client_epoch < 0 || client_epoch == ours {
            Ok(())
        } else if client_epoch < ours {
            Err(ResponseError::FencedLeaderEpoch.code())
        } else {
            Err(ResponseError::UnknownLeaderEpoch.code())
        }
    }

    /// Appends a producer's batch as leader. The batch is on the log (and visible to followers,
    /// later) when this returns; the returned handle tells when it is acknowledged.
    pub fn append(
        self: &Arc<Self>,
        batch: Bytes,
        acks: Acks,
        now_ms: i64,
    ) -> Result<PendingAppend, ProduceError> {
        if acks == Acks::All
            && self.isr_size.load(Ordering::Acquire)
                < self.min_insync_replicas.load(Ordering::Acquire)
        {
            return Err(ProduceError::NotEnoughReplicas {
                isr: self.isr_size.load(Ordering::Acquire),
                min_isr: self.min_insync_replicas.load(Ordering::Acquire),
            });
        }
        let outcome = self.log.append(batch, self.leader_epoch(), now_ms)?;
        let sync = self.log.config().sync_before_ack();
        if !sync {
            // Durability is the page cache's: committed as soon as it is written.
            self.log.set_high_watermark(outcome.last_offset + 1);
        }
        Ok(PendingAppend {
            partition: self.clone(),
            outcome,
            sync,
        })
    }

    /// Waits until everything below `end` is durable; the log has moved the high watermark
    /// past it by then.
    async fn commit(&self, end: i64) -> Result<(), StorageError> {
        self.log.wait_durable(end).await
    }

    /// Reads whole batches from `offset`, below the high watermark.
    pub fn read(&self, offset: i64, max_bytes: usize, min_one: bool) -> Result<Bytes, ReadError> {
        let hw = self.log.high_watermark();
        self.log
            .read(offset, max_bytes, hw, min_one)
            .map(|r| r.records)
    }

    /// The high watermark: the end of what is committed and visible to consumers.
    pub fn high_watermark(&self) -> i64 {
        self.log.high_watermark()
    }

    /// The log start offset.
    pub fn log_start_offset(&self) -> i64 {
        self.log.log_start_offset()
    }

    /// Watches the high watermark (for long-poll fetches).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.log.subscribe()
    }

    /// ListOffsets MAX_TIMESTAMP: (timestamp, offset).
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        self.log.max_timestamp()
    }

    /// ListOffsets by timestamp: (offset, timestamp) of the first record at or after `ts`.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, i16> {
        let hw = self.high_watermark();
        match self.log.offset_for_timestamp(ts) {
            Ok(Some((offset, found_ts))) if offset < hw => Ok(Some((offset, found_ts))),
            Ok(_) => Ok(None),
            Err(e) => Err(e.error_code()),
        }
    }

    /// OffsetForLeaderEpoch: (epoch, end offset).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        self.log.end_offset_for_epoch(epoch)
    }

    /// DeleteRecords: `offset` -1 means the high watermark. Returns the new low watermark.
    pub async fn delete_records_before(self: &Arc<Self>, offset: i64) -> Result<i64, i16> {
        let target = if offset == -1 {
            self.high_watermark()
        } else {
            offset
        };
        let log = self.log.clone();
        // Deleting segments and writing the checkpoint are blocking file operations.
        match tokio::task::spawn_blocking(move || log.delete_records_before(target)).await {
            Ok(Ok(low)) => Ok(low),
            Ok(Err(e)) => Err(e.error_code()),
            Err(_) => Err(ResponseError::UnknownServerError.code()),
        }
    }
}

/// An append on the log, not yet acknowledged.
pub struct PendingAppend {
    partition: Arc<Partition>,
    outcome: AppendOutcome,
    sync: bool,
}

impl PendingAppend {
    /// Where the batch landed (before it is acknowledged).
    pub fn outcome(&self) -> &AppendOutcome {
        &self.outcome
    }

    /// Completes when the append is acknowledged per the topic's durability policy.
    pub async fn acknowledged(self) -> Result<AppendOutcome, ProduceError> {
        if self.sync {
            self.partition
                .commit(self.outcome.last_offset + 1)
                .await
                .map_err(|e| ProduceError::Append(AppendError::Storage(e)))?;
        }
        Ok(self.outcome)
    }
}
