//! [`CommitMachine`]: the state machine of a partition's Raft group.
//!
//! The records are already in the segment log when an entry commits, so applying an entry only
//! moves the partition's high watermark to the end of its batch and answers the producer with
//! the batch's offsets. A snapshot is therefore just a position: the last applied log id, the
//! membership, and the offset after the last batch it covers (with that batch's term, so a
//! receiver can tell whether its own log holds the same records).

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EmptyNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};

use sluice_protocol::batch::iter_batches;

use super::CatchUpSource;
use super::log_store::{SegmentRaftLog, Shared, Slot};
use super::{Appended, PartitionRaft};

type RaftStorageError = StorageError<u64>;

fn sm_error(verb: ErrorVerb, e: impl ToString) -> RaftStorageError {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        AnyError::error(e.to_string()),
    )
    .into()
}

fn snapshot_error(verb: ErrorVerb, e: impl ToString) -> RaftStorageError {
    StorageIOError::new(
        ErrorSubject::Snapshot(None),
        verb,
        AnyError::error(e.to_string()),
    )
    .into()
}

/// The state machine of one partition's Raft group.
pub struct CommitMachine {
    shared: Arc<Shared>,
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, EmptyNode>,
    catch_up: Option<Arc<dyn CatchUpSource>>,
}

/// Bytes asked of the leader per read while catching up.
const CATCH_UP_READ: usize = 4 * 1024 * 1024;

/// Builds a snapshot from the applied state as it was when it was asked for.
pub struct CommitSnapshotBuilder {
    shared: Arc<Shared>,
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, EmptyNode>,
}

/// The snapshot body: the offset after the last covered batch, and that batch's term.
fn encode_position(end_offset: i64, term: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&end_offset.to_be_bytes());
    v.extend_from_slice(&term.to_be_bytes());
    v
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn decode_position(bytes: &[u8]) -> Option<(i64, u64)> {
    let end = i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let term = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
    (bytes.len() == 16).then_some((end, term))
}

impl CommitMachine {
    /// The state machine over `log`'s partition, resuming from its last snapshot.
    pub fn open(log: &SegmentRaftLog) -> Self {
        let shared = Arc::clone(&log.shared);
        let (applied, membership, end) = {
            let t = shared.table();
            match t.snapshot() {
                Some(m) => (m.last_log_id, m.last_membership, t.snapshot_end_offset()),
                None => (None, StoredMembership::default(), 0),
            }
        };
        shared.log.set_high_watermark(end);
        CommitMachine {
            shared,
            applied,
            membership,
            catch_up: None,
        }
    }

    /// Lets this replica take a snapshot whose records it lacks by copying them from the
    /// leader through `source`.
    pub fn with_catch_up(mut self, source: Arc<dyn CatchUpSource>) -> Self {
        self.catch_up = Some(source);
        self
    }

    /// Copies the committed batches up to `end` from the leader, after cutting what this
    /// replica holds beyond its own high watermark (never committed, or not by this leader).
    async fn copy_from_leader(&self, end: i64, snapshot_index: u64) -> Result<(), String> {
        let Some(source) = &self.catch_up else {
            return Err("catching up by segment copy is not configured here".into());
        };
        let (leader, has_more) = {
            let t = self.shared.table();
            (t.leader(), t.has_entries_after(snapshot_index))
        };
        let leader = leader.ok_or("no leader known to copy from")?;
        if has_more {
            return Err("entries after the snapshot are still in the log".into());
        }
        let log = &self.shared.log;
        let hw = log.high_watermark();
        if log.log_end_offset() > hw {
            log.truncate_to(hw).map_err(|e| e.to_string())?;
        }
        let mut from = log.log_end_offset();
        tracing::info!(log = %log.name(), from, end, leader, "copying records a snapshot names from the leader");
        while from < end {
            let batches = source.read(leader, from, CATCH_UP_READ).await?;
            if batches.is_empty() {
                return Err(format!("the leader has no records at offset {from}"));
            }
            for batch in iter_batches(&batches) {
                let (h, bytes) = batch.map_err(|e| e.to_string())?;
                if h.base_offset >= end {
                    break;
                }
                log.append_replica(batches.slice_ref(bytes), now_ms())
                    .map_err(|e| format!("copying the batch at {}: {e}", h.base_offset))?;
                from = h.last_offset() + 1;
            }
        }
        log.request_flush();
        log.wait_durable(end).await.map_err(|e| e.to_string())
    }
}

/// Offset after, and term of, the last batch at or before `index` (or where the Raft log's
/// data starts when none is left in the table).
fn position_at(shared: &Shared, index: Option<u64>) -> (i64, u64) {
    let t = shared.table();
    let Some(index) = index else {
        return (t.anchor_offset(), 0);
    };
    let mut i = index;
    loop {
        match t.get(i) {
            Some(Slot::Data { term, last, .. }) => return (last + 1, *term),
            Some(Slot::Meta { .. }) if i > 0 => i -= 1,
            _ => return (t.anchor_offset(), t.snapshot_term()),
        }
    }
}

impl RaftSnapshotBuilder<PartitionRaft> for CommitSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<PartitionRaft>, RaftStorageError> {
        let (end, term) = position_at(&self.shared, self.applied.map(|id| id.index));
        let snapshot_id = match self.applied {
            Some(id) => format!("{}-{}", id.leader_id.term, id.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let dir = self.shared.dir.clone();
        self.shared
            .table()
            .set_snapshot(&dir, meta.clone(), end, term)
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(encode_position(end, term))),
        })
    }
}

impl RaftStateMachine<PartitionRaft> for CommitMachine {
    type SnapshotBuilder = CommitSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, EmptyNode>), RaftStorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Option<Appended>>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry<PartitionRaft>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let mut high_watermark = None;
        for entry in entries {
            self.applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Normal(_) => {
                    // Offsets come from the index table: the entry's bytes may be the
                    // producer's, whose header carries no offsets yet.
                    let known = match self.shared.table().get(entry.log_id.index) {
                        Some(Slot::Data { base, last, .. }) => Some((*base, *last)),
                        _ => None,
                    };
                    let Some((base, last)) = known else {
                        return Err(sm_error(
                            ErrorVerb::Write,
                            format!("applying entry {}: not in the log", entry.log_id),
                        ));
                    };
                    high_watermark = Some(last + 1);
                    out.push(Some(Appended {
                        base_offset: base,
                        last_offset: last,
                    }));
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    out.push(None);
                }
                EntryPayload::Blank => out.push(None),
            }
        }
        if let Some(hw) = high_watermark {
            self.shared.log.set_high_watermark(hw);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        CommitSnapshotBuilder {
            shared: Arc::clone(&self.shared),
            applied: self.applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, EmptyNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let bytes = snapshot.into_inner();
        let (end, term) = decode_position(&bytes)
            .ok_or_else(|| snapshot_error(ErrorVerb::Read, "malformed partition snapshot"))?;
        // The snapshot names records; it does not carry them. A replica whose own log holds
        // them (from the same leader) takes it as it is; one that fell behind the leader's
        // purged entries copies them from the leader first (`with_catch_up`).
        let log = &self.shared.log;
        let holds = end == 0
            || (log.log_end_offset() >= end
                && log
                    .end_offset_for_epoch(i32::try_from(term).unwrap_or(i32::MAX))
                    .is_some_and(|(epoch, epoch_end)| {
                        i64::from(epoch) == term as i64 && epoch_end >= end
                    }));
        let dir = self.shared.dir.clone();
        if !holds {
            let snapshot_index = meta.last_log_id.map_or(0, |id| id.index);
            if let Err(why) = self.copy_from_leader(end, snapshot_index).await {
                return Err(snapshot_error(
                    ErrorVerb::Write,
                    format!(
                        "{}: snapshot {} needs records up to offset {end} (term {term}) that \
                         this replica lacks (log end {}): {why}",
                        log.name(),
                        meta.snapshot_id,
                        log.log_end_offset()
                    ),
                ));
            }
            self.shared
                .table()
                .reset_to_snapshot(&dir, meta.clone(), end, term)
                .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
            log.set_retention_floor(end);
            self.applied = meta.last_log_id;
            self.membership = meta.last_membership.clone();
            log.set_high_watermark(end);
            return Ok(());
        }
        self.shared
            .table()
            .set_snapshot(&dir, meta.clone(), end, term)
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        log.set_high_watermark(end);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<PartitionRaft>>, RaftStorageError> {
        let t = self.shared.table();
        Ok(t.snapshot().map(|meta| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(encode_position(
                t.snapshot_end_offset(),
                t.snapshot_term(),
            ))),
        }))
    }
}
