//! Sluice's storage engine: every partition is an append-only segment log on disk.
//!
//! - [`partition`]: [`PartitionLog`]: append, read, truncate, retention, recovery of one partition.
//! - `segment` / `index`: one `.log` file with its sparse `.index` and `.timeindex`.
//! - `checkpoint` / `producer_state` / `flush`: recovery point, idempotence, group-commit fsync.
//! - [`cleaner`]: log compaction (`cleanup.policy=compact`): latest record per key, crash-safe swap.
//! - [`manager`]: [`LogManager`]: all partitions of a data directory and their background work.
//! - [`config`]: topic configs (Kafka names, defaults, validation); [`metadata`]: sled store.
//!
//! # Durability
//!
//! A batch is written to the page cache by `append` and fsynced (fdatasync) by a small shared
//! pool of flusher threads. `flush.messages=1` (Sluice's default) means every append is fsynced
//! before [`PartitionLog::wait_durable`] completes, by group commit: one fsync covers every
//! append that arrived while the previous one ran. The broker acknowledges only after that when
//! [`LogConfig::sync_before_ack`] is true. With `flush.messages=N>1` or a finite `flush.ms`, a
//! flush runs when N messages are unflushed or the oldest is older than `flush.ms`, and acks do
//! not wait for it.
//!
//! What survives what:
//! - **Process crash (kill -9, panic)**: nothing acknowledged is lost under either setting: the
//!   bytes are in the kernel's page cache once `append` returns. Recovery re-verifies (CRC32C)
//!   everything after the checkpoint's recovery point and cuts a torn tail.
//! - **Machine crash / power loss**: with `flush.messages=1` nothing acknowledged is lost, since
//!   acks wait for the fsync. With larger values, up to `flush.messages` messages or `flush.ms`
//!   of acknowledged data may be lost (as in Kafka, where replication is what covers this).
//!
//! A per-partition checkpoint (log start, recovery point, producer state, leader epochs) is
//! replaced atomically at segment roll, every ~10 s when the log changed, on DeleteRecords and
//! retention, and at clean shutdown, so opening a log CRC-scans only what came after it.

pub mod cleaner;
pub mod config;
pub mod error;
pub mod manager;
pub mod metadata;
pub mod partition;

mod checkpoint;
mod flush;
mod index;
mod producer_state;
mod segment;

pub use cleaner::{CleanOptions, CleanOutcome};
pub use config::{BrokerLogConfig, CleanupPolicy, ConfigError, LogConfig, TimestampType};
pub use error::{AppendError, ReadError, StorageError};
pub use manager::LogManager;
pub use metadata::MetadataStore;
pub use partition::{
    AppendOutcome, FOLLOWER_CACHE_TAIL, PartitionLog, ProducerCheck, ReadResult, RecoveryStats,
    RetentionOutcome,
};
pub use sluice_protocol::batch::BatchError;
