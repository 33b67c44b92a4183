//! The crate's error family. Every variant knows the Kafka error code a client should see.

use std::io;
use std::sync::Arc;

use sluice_protocol::batch::BatchError;
use thiserror::Error;

/// Kafka's KAFKA_STORAGE_ERROR.
pub const KAFKA_STORAGE_ERROR: i16 = 56;
/// Kafka's OFFSET_OUT_OF_RANGE.
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
/// Kafka's CORRUPT_MESSAGE.
pub const CORRUPT_MESSAGE: i16 = 2;
/// Kafka's MESSAGE_TOO_LARGE.
pub const MESSAGE_TOO_LARGE: i16 = 10;
/// Kafka's OUT_OF_ORDER_SEQUENCE_NUMBER.
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
/// Kafka's INVALID_PRODUCER_EPOCH.
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
/// Kafka's INVALID_RECORD.
pub const INVALID_RECORD: i16 = 87;
/// Kafka's INVALID_CONFIG.
pub const INVALID_CONFIG: i16 = 40;

/// A failure of the disk, of the data on it, or of a request against the log's state.
#[derive(Debug, Error, Clone)]
pub enum StorageError {
    /// An I/O call failed; `context` says what the log was doing.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error (shared so the error can be cloned to every waiter).
        #[source]
        source: Arc<io::Error>,
    },
    /// Bytes on disk are not what the log wrote (checkpoint, index or segment damage that could
    /// not be repaired).
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// An offset outside `[log_start, high watermark]` for DeleteRecords and the like.
    #[error("offset {offset} is out of range [{log_start}, {limit}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: i64,
        /// The log start offset.
        log_start: i64,
        /// The largest offset allowed (high watermark or log end).
        limit: i64,
    },
    /// The log was closed (clean shutdown, topic deletion); nothing more can be written.
    #[error("log {0} is closed")]
    Closed(String),
    /// An earlier write or fsync failed, so the log refuses further work until reopened.
    #[error("log {log} is offline after an I/O failure: {reason}")]
    Offline {
        /// `<topic>-<partition>`.
        log: String,
        /// The first failure.
        reason: String,
    },
    /// A config value was refused.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl StorageError {
    /// Wraps an `io::Error` with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    /// The Kafka error code for this failure.
    pub fn error_code(&self) -> i16 {
        match self {
            StorageError::OffsetOutOfRange { .. } => OFFSET_OUT_OF_RANGE,
            StorageError::Config(_) => INVALID_CONFIG,
            StorageError::Corrupt(_) => CORRUPT_MESSAGE,
            StorageError::Io { .. } | StorageError::Closed(_) | StorageError::Offline { .. } => {
                KAFKA_STORAGE_ERROR
            }
        }
    }
}

/// Why a produce batch was not appended.
#[derive(Debug, Error, Clone)]
pub enum AppendError {
    /// The batch is malformed (CORRUPT_MESSAGE 2) or breaks a rule (INVALID_RECORD 87).
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The batch is larger than `max.message.bytes`.
    #[error("batch of {size} bytes exceeds max.message.bytes {max}")]
    MessageTooLarge {
        /// Bytes in the batch.
        size: usize,
        /// The topic's limit.
        max: usize,
    },
    /// The producer skipped or repeated sequence numbers.
    #[error(
        "out of order sequence from producer {producer_id} (epoch {epoch}): got {first_seq}, expected {expected}"
    )]
    OutOfOrderSequence {
        /// Producer id.
        producer_id: i64,
        /// Producer epoch of the batch.
        epoch: i16,
        /// First sequence of the batch.
        first_seq: i32,
        /// The sequence the broker expected (-1 when only 0 would do after an epoch bump).
        expected: i32,
    },
    /// The producer was fenced by a newer epoch.
    #[error("producer {producer_id} epoch {epoch} is older than the current epoch {current}")]
    InvalidProducerEpoch {
        /// Producer id.
        producer_id: i64,
        /// Producer epoch of the batch.
        epoch: i16,
        /// Latest epoch the partition has seen.
        current: i16,
    },
    /// Records without a key sent to a compacted topic: the whole batch is refused with
    /// INVALID_RECORD, naming each offending record (KIP-467), as Kafka's LogValidator does.
    #[error(
        "{} records have no key, which compacted topic partition {log} cannot accept (batch indexes {indexes:?})",
        indexes.len()
    )]
    KeylessRecords {
        /// `<topic>-<partition>`.
        log: String,
        /// Indexes of the keyless records within the batch.
        indexes: Vec<i32>,
    },
    /// The disk failed or the log is closed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl AppendError {
    /// Per-record errors (batch index, message) for the Produce response's `record_errors`.
    pub fn record_errors(&self) -> Vec<(i32, String)> {
        match self {
            AppendError::KeylessRecords { log, indexes } => indexes
                .iter()
                .map(|&i| {
                    (
                        i,
                        format!(
                            "Compacted topic cannot accept message without key in topic partition {log}."
                        ),
                    )
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The Kafka error code for this failure.
    pub fn error_code(&self) -> i16 {
        match self {
            AppendError::Batch(e) => e.error_code(),
            AppendError::MessageTooLarge { .. } => MESSAGE_TOO_LARGE,
            AppendError::KeylessRecords { .. } => INVALID_RECORD,
            AppendError::OutOfOrderSequence { .. } => OUT_OF_ORDER_SEQUENCE_NUMBER,
            AppendError::InvalidProducerEpoch { .. } => INVALID_PRODUCER_EPOCH,
            AppendError::Storage(e) => e.error_code(),
        }
    }
}

/// Why a read returned no data.
#[derive(Debug, Error, Clone)]
pub enum ReadError {
    /// The offset is below the log start or past the log end: OFFSET_OUT_OF_RANGE.
    #[error("offset out of range, log holds [{log_start}, {log_end})")]
    OffsetOutOfRange {
        /// First offset still in the log.
        log_start: i64,
        /// Next offset to be written.
        log_end: i64,
    },
    /// A stored batch failed its CRC or header check on the way out. Reported as
    /// CORRUPT_MESSAGE (2), which is what Kafka's fetch path answers for a
    /// `CorruptRecordException`; the data is never served.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The disk failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl ReadError {
    /// The Kafka error code for this failure.
    pub fn error_code(&self) -> i16 {
        match self {
            ReadError::OffsetOutOfRange { .. } => OFFSET_OUT_OF_RANGE,
            ReadError::Corrupt(_) => CORRUPT_MESSAGE,
            ReadError::Storage(e) => e.error_code(),
        }
    }
}
