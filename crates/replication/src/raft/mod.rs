//! Raft per partition (openraft), whose log is the partition's segment log.
//!
//! - [`SegmentRaftLog`]: openraft's log storage: data entries are record batches written once
//!   into the segment log; blank and membership entries, the vote and the purge point live in
//!   the partition's small `raft-state` file.
//! - [`CommitMachine`]: applying a committed entry moves the high watermark; a snapshot is a
//!   position in the log, not a copy of it.
//! - [`transport`] and [`wire`]: one TCP connection per peer shared by every group.
//! - [`replica`]: a partition replica in Kafka's terms (leader, epoch, in-sync replicas, an
//!   append answering with Kafka's errors), for the broker's produce and metadata paths.
//!
//! One leader per term (openraft's `single-term-leader`), so a Raft term is the Kafka leader
//! epoch stamped into each batch's `partitionLeaderEpoch`.

// openraft's traits dictate its error types, which are large; boxing them here would only
// unbox them again at every trait boundary.
#![allow(clippy::result_large_err)]

pub(crate) mod codec;
mod log_store;
pub mod replica;
mod sequencer;
mod state_file;
mod state_machine;
pub mod transport;
pub mod wire;

use std::io::Cursor;
use std::time::Duration;

use bytes::Bytes;

pub use log_store::SegmentRaftLog;
pub use state_machine::{CommitMachine, CommitSnapshotBuilder};

/// A record batch carried by a Raft entry: the producer's bytes as proposed, or the stored
/// bytes when read back from the segment log. Either way every replica stamps offsets and epoch
/// itself when it appends (the CRC does not cover them), so neither is trusted from the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordBatch(pub Bytes);

/// Where a committed batch's records landed: what a producer is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the batch's first record.
    pub base_offset: i64,
    /// Offset of the batch's last record.
    pub last_offset: i64,
}

openraft::declare_raft_types!(
    /// The types of a partition's Raft group. Nodes are broker ids; addresses come from the
    /// cluster image, so membership carries none.
    pub PartitionRaft:
        D = RecordBatch,
        R = Option<Appended>,
        NodeId = u64,
        Node = openraft::EmptyNode,
        Entry = openraft::Entry<PartitionRaft>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Where a replica that fell behind the leader's purged entries copies the committed batches a
/// snapshot names (the transport's [`transport::GroupNetwork`] asks the leader).
pub trait CatchUpSource: Send + Sync + 'static {
    /// Whole committed batches from offset `from` of `leader`'s log, at most `max_bytes`
    /// (at least one batch); empty at its high watermark.
    fn read(
        &self,
        leader: u64,
        from: i64,
        max_bytes: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, String>> + Send + '_>>;
}

/// Entries kept after a snapshot before they are purged from the index table, so a follower
/// that is a little behind catches up from the log rather than by a snapshot.
pub const LOG_ENTRIES_KEPT: u64 = 100_000;
/// A snapshot (a position) is taken every this many applied entries, which lets the index
/// table be purged: its memory is bounded by this plus [`LOG_ENTRIES_KEPT`].
pub const SNAPSHOT_EVERY: u64 = 10_000;

/// openraft settings for a partition group. `heartbeat` is the leader's heartbeat interval;
/// elections start after 3-6 heartbeats are missed.
pub fn partition_config(
    cluster_name: &str,
    heartbeat: Duration,
) -> Result<openraft::Config, openraft::ConfigError> {
    partition_config_with(cluster_name, heartbeat, SNAPSHOT_EVERY, LOG_ENTRIES_KEPT)
}

/// [`partition_config`] with the snapshot interval and the entries kept after a snapshot
/// given (tests use small ones to make a replica fall behind the purged entries).
pub fn partition_config_with(
    cluster_name: &str,
    heartbeat: Duration,
    snapshot_every: u64,
    entries_kept: u64,
) -> Result<openraft::Config, openraft::ConfigError> {
    let hb = u64::try_from(heartbeat.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: hb,
        election_timeout_min: hb * 3,
        election_timeout_max: hb * 6,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: entries_kept,
        ..openraft::Config::default()
    }
    .validate()
}
