//! A partition replica hosted on this node, and the leader's write path.
//!
//! The produce path goes through [`Partition::append`] and waits on
//! [`PendingAppend::acknowledged`]. A partition is either this node's only replica (the
//! single-node product: a write is acknowledged once durable per the topic's flush policy, and
//! the high watermark then covers it) or this node's member of the partition's Raft group
//! ([`Partition::replicated`]: append proposes the batch, acknowledged means committed, and the
//! high watermark is the commit index). Callers do not tell the two apart, except to ask who
//! leads.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use sluice_storage::{AppendError, AppendOutcome, PartitionLog, ReadError, StorageError};
use tokio::sync::watch;

use crate::raft::replica::{Committing, RaftReplica, ReplicaError};

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
    /// The replicated write path refused or failed it (not the leader, Raft stopped).
    #[error(transparent)]
    Replica(ReplicaError),
}

impl From<ReplicaError> for ProduceError {
    fn from(e: ReplicaError) -> Self {
        match e {
            ReplicaError::Invalid(a) => ProduceError::Append(a),
            ReplicaError::NotEnoughReplicas { isr, min_isr } => ProduceError::NotEnoughReplicas {
                isr: i32::try_from(isr).unwrap_or(i32::MAX),
                min_isr,
            },
            other => ProduceError::Replica(other),
        }
    }
}

impl ProduceError {
    /// The Kafka error code for the partition's produce response.
    pub fn error_code(&self) -> i16 {
        match self {
            ProduceError::Append(e) => e.error_code(),
            ProduceError::NotEnoughReplicas { .. } => ResponseError::NotEnoughReplicas.code(),
            ProduceError::Replica(e) => e.error_code(),
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
    /// This node's member of the partition's Raft group, when the partition is replicated.
    replica: Option<Arc<RaftReplica>>,
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
            replica: None,
        }
    }

    /// Wraps this node's member of the partition's Raft group (its log is the replica's).
    pub fn replicated(topic: &str, index: i32, replica: Arc<RaftReplica>) -> Self {
        Partition {
            topic: topic.to_string(),
            index,
            log: Arc::clone(replica.log()),
            leader_epoch: AtomicI32::new(0),
            min_insync_replicas: AtomicI32::new(1),
            isr_size: AtomicI32::new(1),
            replica: Some(replica),
        }
    }

    /// This node's Raft member, when the partition is replicated.
    pub fn replica(&self) -> Option<&Arc<RaftReplica>> {
        self.replica.as_ref()
    }

    /// True when this node leads the partition (always, for an unreplicated one).
    pub fn is_leader(&self) -> bool {
        self.replica.as_ref().is_none_or(|r| r.is_leader())
    }

    /// The leader's node id as this replica knows it; `own_id` for an unreplicated partition.
    pub fn leader(&self, own_id: i32) -> Option<i32> {
        match &self.replica {
            None => Some(own_id),
            Some(r) => r.leader().and_then(|l| i32::try_from(l).ok()),
        }
    }

    /// The in-sync replicas (as the leader sees them; a follower reports every replica).
    pub fn in_sync_replicas(&self, own_id: i32) -> Vec<i32> {
        match &self.replica {
            None => vec![own_id],
            Some(r) => {
                let ids = if r.is_leader() {
                    r.in_sync_replicas()
                } else {
                    r.replicas().to_vec()
                };
                ids.into_iter()
                    .filter_map(|id| i32::try_from(id).ok())
                    .collect()
            }
        }
    }

    /// NOT_LEADER_OR_FOLLOWER unless this node leads: what Fetch and ListOffsets answer on a
    /// follower.
    pub fn check_leader(&self) -> Result<(), i16> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(ResponseError::NotLeaderOrFollower.code())
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
        match &self.replica {
            Some(r) => r.leader_epoch(),
            None => self.leader_epoch.load(Ordering::Acquire),
        }
    }

    /// Sets min.insync.replicas (from the topic's configs).
    pub fn set_min_insync_replicas(&self, n: i32) {
        self.min_insync_replicas.store(n, Ordering::Release);
        if let Some(r) = &self.replica {
            r.set_min_insync_replicas(n);
        }
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
        if let Some(replica) = &self.replica {
            let (committed, log_append_time) = replica.submit(batch, acks, now_ms)?;
            return Ok(PendingAppend {
                partition: self.clone(),
                wait: Wait::Committed(committed, log_append_time),
            });
        }
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
            wait: Wait::Durable { outcome, sync },
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
    wait: Wait,
}

enum Wait {
    /// Written here; acknowledged once durable (if the flush policy asks).
    Durable { outcome: AppendOutcome, sync: bool },
    /// Proposed; acknowledged once the Raft group commits it (with its LogAppendTime or -1).
    Committed(Committing, i64),
}

impl PendingAppend {
    /// Completes when the append is acknowledged per the topic's durability policy (a
    /// replicated partition: once committed).
    pub async fn acknowledged(self) -> Result<AppendOutcome, ProduceError> {
        match self.wait {
            Wait::Durable { outcome, sync } => {
                if sync {
                    self.partition
                        .commit(outcome.last_offset + 1)
                        .await
                        .map_err(|e| ProduceError::Append(AppendError::Storage(e)))?;
                }
                Ok(outcome)
            }
            Wait::Committed(committed, log_append_time) => {
                let appended = committed.await?;
                Ok(AppendOutcome {
                    base_offset: appended.base_offset,
                    last_offset: appended.last_offset,
                    log_append_time,
                    log_start_offset: self.partition.log_start_offset(),
                    duplicate: false,
                })
            }
        }
    }
}
