//! [`RaftReplica`]: one node's replica of a partition in its Raft group, with the calls the
//! broker's produce and metadata paths need, in Kafka's terms: who leads, at what leader epoch,
//! which replicas are in sync, and an append that answers with Kafka's errors.
//!
//! In-sync follows Kafka's rule (`replica.lag.time.max.ms`): a follower is in sync while it has
//! replicated at least what the leader had that long ago and has answered within that time. The
//! leader samples its own log end as its metrics change and compares each follower's matched
//! index with the sample from one lag window back; the transport records each follower's last
//! answer (heartbeats included).

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::metrics::RaftServerMetrics;
use openraft::{EmptyNode, Raft, ServerState};
use sluice_protocol::batch::set_log_append_time;
use sluice_storage::config::TimestampType;
use sluice_storage::{AppendError, PartitionLog};
use std::future::Future;
use std::pin::Pin;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::sequencer::{Sequencer, Verdict};
use super::transport::{AckTimes, GroupNetwork};
use super::{Appended, CommitMachine, PartitionRaft, RecordBatch, SegmentRaftLog};
use crate::partition::Acks;

/// Why a replicated append failed, with its Kafka error code.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// This replica does not lead; `leader` is who does, if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader's node id, if known.
        leader: Option<u64>,
    },
    /// acks=all with fewer in-sync replicas than `min.insync.replicas`.
    #[error("{isr} in-sync replicas, min.insync.replicas is {min_isr}")]
    NotEnoughReplicas {
        /// In-sync replicas now.
        isr: usize,
        /// The topic's `min.insync.replicas`.
        min_isr: i32,
    },
    /// The batch was refused before it was proposed (size, CRC, format, keys).
    #[error(transparent)]
    Invalid(#[from] AppendError),
    /// The same idempotent batch is still being replicated; the producer should retry.
    #[error("the same batch is in flight; retry")]
    InFlight,
    /// Raft or the log failed.
    #[error("replication failed: {0}")]
    Failed(String),
}

impl ReplicaError {
    /// The Kafka error code for a produce response.
    pub fn error_code(&self) -> i16 {
        match self {
            ReplicaError::NotLeader { .. } => ResponseError::NotLeaderOrFollower.code(),
            ReplicaError::NotEnoughReplicas { .. } => ResponseError::NotEnoughReplicas.code(),
            ReplicaError::Invalid(e) => e.error_code(),
            // Retriable, and for an idempotent producer "maybe written": it retries the same
            // sequence and then finds the original in the log.
            ReplicaError::InFlight => ResponseError::RequestTimedOut.code(),
            ReplicaError::Failed(_) => ResponseError::KafkaStorageError.code(),
        }
    }
}

/// (when, leader's last log index then), oldest first.
type Samples = VecDeque<(Instant, u64)>;

/// This node's replica of one partition.
pub struct RaftReplica {
    node_id: u64,
    replicas: Vec<u64>,
    log: Arc<PartitionLog>,
    raft: Raft<PartitionRaft>,
    min_insync_replicas: AtomicI32,
    lag_max: Duration,
    samples: Arc<Mutex<Samples>>,
    sampler: JoinHandle<()>,
    acks: Arc<AckTimes>,
    sequencer: Arc<Mutex<Sequencer>>,
}

fn lock(m: &Mutex<Samples>) -> MutexGuard<'_, Samples> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RaftReplica {
    /// Starts this node's member over `log` (an open partition log), initializing a fresh
    /// group with `replicas` as voters (every replica may do so; it is idempotent).
    /// `heartbeat` is the leader's heartbeat interval; `lag_max` is `replica.lag.time.max.ms`.
    pub async fn start(
        node_id: u64,
        replicas: &[u64],
        log: Arc<PartitionLog>,
        network: GroupNetwork,
        heartbeat: Duration,
        lag_max: Duration,
    ) -> Result<Self, ReplicaError> {
        let failed = |e: &dyn std::fmt::Display| ReplicaError::Failed(e.to_string());
        let fresh = log.log_end_offset() == 0;
        let store = SegmentRaftLog::open(Arc::clone(&log)).map_err(|e| failed(&e))?;
        // A replica that falls behind the leader's purged entries copies what the snapshot
        // names over the same peer connections.
        let sm = CommitMachine::open(&store).with_catch_up(Arc::new(network.clone()));
        let acks = network.ack_times();
        let config = super::partition_config(log.name(), heartbeat).map_err(|e| failed(&e))?;
        let raft = Raft::new(
            node_id,
            Arc::new(config),
            network,
            store.for_raft_core(),
            sm,
        )
        .await
        .map_err(|e| failed(&e))?;
        if fresh {
            let voters: BTreeSet<u64> = replicas.iter().copied().collect();
            match raft.initialize(voters).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(failed(&e)),
            }
        }
        let samples: Arc<Mutex<Samples>> = Arc::default();
        log.set_leading(false);
        let sampler = tokio::spawn(follow_role(
            raft.clone(),
            Arc::clone(&log),
            Arc::clone(&samples),
            lag_max,
        ));
        Ok(RaftReplica {
            node_id,
            replicas: replicas.to_vec(),
            log,
            raft,
            min_insync_replicas: AtomicI32::new(1),
            lag_max,
            samples,
            sampler,
            acks,
            sequencer: Arc::default(),
        })
    }

    /// The Raft member (to register with the transport's server).
    pub fn raft(&self) -> &Raft<PartitionRaft> {
        &self.raft
    }

    /// The partition log.
    pub fn log(&self) -> &Arc<PartitionLog> {
        &self.log
    }

    /// Replica node ids, as assigned.
    pub fn replicas(&self) -> &[u64] {
        &self.replicas
    }

    /// Sets `min.insync.replicas` (from the topic's configs).
    pub fn set_min_insync_replicas(&self, n: i32) {
        self.min_insync_replicas.store(n, Ordering::Release);
    }

    /// The leader as this replica knows it.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// This member's role as it changes (state, leader, term, membership), and nothing else.
    /// `Raft::metrics` is sent at every turn of the Raft core (every heartbeat), so a task
    /// that only follows leadership would wake hundreds of times a second across a node's
    /// partitions; see [`leads`].
    pub fn roles(&self) -> watch::Receiver<RaftServerMetrics<u64, EmptyNode>> {
        self.raft.server_metrics()
    }

    /// True while this replica leads.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id)
    }

    /// The leader epoch: the Raft term.
    pub fn leader_epoch(&self) -> i32 {
        i32::try_from(self.raft.metrics().borrow().current_term).unwrap_or(i32::MAX)
    }

    /// The in-sync replicas (the leader and every follower within `replica.lag.time.max.ms`);
    /// only the leader knows, others answer with the leader alone if known.
    pub fn in_sync_replicas(&self) -> Vec<u64> {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return m.current_leader.into_iter().collect();
        }
        let threshold = {
            let samples = lock(&self.samples);
            let cutoff = Instant::now().checked_sub(self.lag_max);
            // What the leader had one lag window ago. A leader younger than that has no such
            // sample: like Kafka after a leader change, it counts every replica in sync until
            // one has lagged for a whole window.
            samples
                .iter()
                .rev()
                .find(|(t, _)| cutoff.is_none_or(|c| *t <= c))
                .map(|(_, i)| *i)
        };
        let Some(threshold) = threshold else {
            return self.replicas.clone();
        };
        let matched = m.replication.unwrap_or_default();
        // Caught up to what the leader had a lag window ago, and heard from within that window
        // (heartbeats count), so a dead follower drops out even when nobody writes.
        self.replicas
            .iter()
            .copied()
            .filter(|id| {
                *id == self.node_id
                    || (matched
                        .get(id)
                        .copied()
                        .flatten()
                        .is_some_and(|l| l.index >= threshold)
                        && self.acks.answered_within(*id, self.lag_max))
            })
            .collect()
    }

    /// Validates `batch` and proposes it; answers once it is committed (for every `acks`:
    /// a Raft entry is acknowledged at commit) with where its records landed.
    pub async fn append(&self, batch: Bytes, acks: Acks) -> Result<Appended, ReplicaError> {
        self.submit(batch, acks, 0)?.0.await
    }

    /// Validates `batch` and hands it to Raft now, without waiting: batches submitted one
    /// after another are proposed in that order (one connection's produce requests keep
    /// theirs). The returned future answers once the batch is committed; with it comes the
    /// LogAppendTime stamped into the batch (`now_ms`) on a topic that asks for it, else -1.
    pub fn submit(
        &self,
        batch: Bytes,
        acks: Acks,
        now_ms: i64,
    ) -> Result<(Committing, i64), ReplicaError> {
        if !self.is_leader() {
            return Err(ReplicaError::NotLeader {
                leader: self.leader(),
            });
        }
        if acks == Acks::All {
            let isr = self.in_sync_replicas().len();
            let min_isr = self.min_insync_replicas.load(Ordering::Acquire);
            if (isr as i64) < i64::from(min_isr) {
                return Err(ReplicaError::NotEnoughReplicas { isr, min_isr });
            }
        }
        let header = self.log.validate(&batch)?;
        let append_time = self.log.config().message_timestamp_type == TimestampType::LogAppendTime;
        // Checking sequences and handing the batch to Raft happen under one lock, so what the
        // sequencer records as in flight is proposed in the same order.
        let mut sequencer = lock_sequencer(&self.sequencer);
        let term = self.raft.metrics().borrow().current_term;
        match sequencer.check(term, &self.log, &header, now_ms)? {
            Verdict::Propose => {}
            Verdict::InFlight => return Err(ReplicaError::InFlight),
            Verdict::Duplicate {
                base_offset,
                last_offset,
                timestamp,
            } => {
                let wait = committed_at(self.raft.clone(), Arc::clone(&self.log), last_offset + 1);
                return Ok((
                    Box::pin(async move {
                        wait.await?;
                        Ok(Appended {
                            base_offset,
                            last_offset,
                        })
                    }),
                    if append_time { timestamp } else { -1 },
                ));
            }
        }
        // The leader stamps LogAppendTime once; every replica stores the stamped bytes.
        let (batch, log_append_time) = if append_time {
            let mut stamped = batch.to_vec();
            set_log_append_time(&mut stamped, now_ms);
            (Bytes::from(stamped), now_ms)
        } else {
            (batch, -1)
        };
        // Submitting only queues the entry for the Raft core (an unbounded channel send), so
        // the future is ready at its first poll unless the core has stopped.
        let mut submit = std::pin::pin!(self.raft.client_write_ff(RecordBatch(batch)));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let producer_id = header.has_producer_id().then_some(header.producer_id);
        let rx = match submit.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Ok(rx)) => rx,
            other => {
                if let Some(pid) = producer_id {
                    sequencer.forget(pid);
                }
                return Err(ReplicaError::Failed(match other {
                    std::task::Poll::Ready(Err(e)) => e.to_string(),
                    _ => "the partition's Raft member is stopping".into(),
                }));
            }
        };
        drop(sequencer);
        let sequencer = Arc::clone(&self.sequencer);
        Ok((
            Box::pin(async move {
                let result = match rx.await {
                    Ok(Ok(r)) => r.data.ok_or_else(|| {
                        ReplicaError::Failed("a batch committed without offsets".into())
                    }),
                    Ok(Err(ClientWriteError::ForwardToLeader(f))) => Err(ReplicaError::NotLeader {
                        leader: f.leader_id,
                    }),
                    Ok(Err(e)) => Err(ReplicaError::Failed(e.to_string())),
                    // The member stopped (or lost leadership and dropped the entry) before
                    // committing it: the producer retries against the leader it finds.
                    Err(_) => Err(ReplicaError::NotLeader { leader: None }),
                };
                if let (Err(_), Some(pid)) = (&result, producer_id) {
                    lock_sequencer(&sequencer).forget(pid);
                }
                result
            }),
            log_append_time,
        ))
    }

    /// Stops the member (the log stays open; its owner closes it).
    pub async fn shutdown(&self) -> Result<(), ReplicaError> {
        self.sampler.abort();
        self.raft
            .shutdown()
            .await
            .map_err(|e| ReplicaError::Failed(e.to_string()))
    }
}

/// A batch on its way to commit (see [`RaftReplica::submit`]).
pub type Committing = Pin<Box<dyn Future<Output = Result<Appended, ReplicaError>> + Send>>;

/// Whether the member whose role `m` is leads its group.
pub fn leads(m: &RaftServerMetrics<u64, EmptyNode>) -> bool {
    m.state == ServerState::Leader && m.current_leader == Some(m.id)
}

fn lock_sequencer(m: &Mutex<Sequencer>) -> MutexGuard<'_, Sequencer> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Completes once the high watermark passes `end` (a duplicate's original is committed), or
/// fails with NOT_LEADER_OR_FOLLOWER if this member stops leading first.
async fn committed_at(
    raft: Raft<PartitionRaft>,
    log: Arc<PartitionLog>,
    end: i64,
) -> Result<(), ReplicaError> {
    let mut hw = log.subscribe();
    let mut metrics = raft.metrics();
    loop {
        if *hw.borrow_and_update() >= end {
            return Ok(());
        }
        let leader = {
            let m = metrics.borrow_and_update();
            (m.state == ServerState::Leader)
                .then_some(())
                .ok_or(m.current_leader)
        };
        if let Err(leader) = leader {
            return Err(ReplicaError::NotLeader { leader });
        }
        tokio::select! {
            changed = hw.changed() => if changed.is_err() { return Err(ReplicaError::NotLeader { leader: None }) },
            changed = metrics.changed() => if changed.is_err() { return Err(ReplicaError::NotLeader { leader: None }) },
        }
    }
}

/// Follows this member's role: as leader, records the log end as it moves, keeping one lag
/// window of samples (at most one per 100 ms, so the queue stays small), and keeps the log's
/// pages cached for consumers; as follower, lets them go once durable (nobody reads them).
async fn follow_role(
    raft: Raft<PartitionRaft>,
    log: Arc<PartitionLog>,
    samples: Arc<Mutex<Samples>>,
    lag: Duration,
) {
    // Role changes wake this task; the log end is watched only while leading (a follower's
    // task then sleeps through its appends and the leader's heartbeats).
    let mut roles = raft.server_metrics();
    let mut data = raft.data_metrics();
    loop {
        let leader = roles.borrow_and_update().state == ServerState::Leader;
        let index = data.borrow_and_update().last_log.map(|l| l.index);
        log.set_leading(leader);
        {
            let mut s = lock(&samples);
            if !leader {
                s.clear();
            } else if let Some(i) = index {
                let now = Instant::now();
                if s.back()
                    .is_none_or(|(t, _)| now.duration_since(*t) >= Duration::from_millis(100))
                {
                    s.push_back((now, i));
                }
                // Keep one sample at or before the window's start (the oldest is kept from
                // the start of the leadership, which tells a young leader from an older one).
                while s.len() > 1 && s.get(1).is_some_and(|(t, _)| now.duration_since(*t) >= lag) {
                    s.pop_front();
                }
            }
        }
        let changed = tokio::select! {
            changed = roles.changed() => changed,
            changed = data.changed(), if leader => changed,
        };
        if changed.is_err() {
            return;
        }
    }
}
