//! The crate's error type and the Kafka error codes the coordinator answers with.

use thiserror::Error;

/// Why a `__consumer_offsets` record or a load step was refused. None of these is fatal: the
/// runtime logs the error and goes on with the next record.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoordinatorError {
    /// The record's bytes do not follow the schema its version names.
    #[error("corrupt {what} record: {reason}")]
    CorruptRecord {
        /// Which record kind was being read (key, offset commit value, group metadata value).
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A key version this coordinator does not know (e.g. a KIP-848 consumer-group record).
    #[error("unknown __consumer_offsets key version {0}")]
    UnknownKeyVersion(i16),
    /// A value version newer than the schemas this coordinator knows.
    #[error("unsupported {what} value version {version}")]
    UnsupportedValueVersion {
        /// Which value kind.
        what: &'static str,
        /// The version found.
        version: i16,
    },
    /// A record arrived for a partition that is not between `begin_load` and `finish_load`.
    #[error("partition {0} of __consumer_offsets is not being loaded")]
    PartitionNotLoading(i32),
    /// The record's group does not hash to the partition it was read from.
    #[error("group {group:?} belongs to partition {expected}, found in partition {found}")]
    WrongPartition {
        /// The group id in the key.
        group: String,
        /// Where `partition_for` puts it.
        expected: i32,
        /// Where it was read from.
        found: i32,
    },
}

/// Kafka's error codes (`org.apache.kafka.common.protocol.Errors`) used by the coordinator.
pub mod codes {
    /// No error.
    pub const NONE: i16 = 0;
    /// UNKNOWN_SERVER_ERROR.
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    /// UNKNOWN_TOPIC_OR_PARTITION.
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    /// INVALID_FETCH_SIZE.
    pub const INVALID_FETCH_SIZE: i16 = 4;
    /// NOT_LEADER_OR_FOLLOWER.
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    /// REQUEST_TIMED_OUT.
    pub const REQUEST_TIMED_OUT: i16 = 7;
    /// MESSAGE_TOO_LARGE.
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    /// OFFSET_METADATA_TOO_LARGE.
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    /// COORDINATOR_LOAD_IN_PROGRESS.
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    /// COORDINATOR_NOT_AVAILABLE.
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    /// NOT_COORDINATOR.
    pub const NOT_COORDINATOR: i16 = 16;
    /// RECORD_LIST_TOO_LARGE.
    pub const RECORD_LIST_TOO_LARGE: i16 = 18;
    /// NOT_ENOUGH_REPLICAS.
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND.
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
    /// ILLEGAL_GENERATION.
    pub const ILLEGAL_GENERATION: i16 = 22;
    /// INCONSISTENT_GROUP_PROTOCOL.
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    /// INVALID_GROUP_ID.
    pub const INVALID_GROUP_ID: i16 = 24;
    /// UNKNOWN_MEMBER_ID.
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    /// INVALID_SESSION_TIMEOUT.
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    /// REBALANCE_IN_PROGRESS.
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    /// INVALID_COMMIT_OFFSET_SIZE.
    pub const INVALID_COMMIT_OFFSET_SIZE: i16 = 28;
    /// UNSUPPORTED_VERSION.
    pub const UNSUPPORTED_VERSION: i16 = 35;
    /// INVALID_REQUEST.
    pub const INVALID_REQUEST: i16 = 42;
    /// KAFKA_STORAGE_ERROR.
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    /// NON_EMPTY_GROUP.
    pub const NON_EMPTY_GROUP: i16 = 68;
    /// GROUP_ID_NOT_FOUND.
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    /// MEMBER_ID_REQUIRED.
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    /// GROUP_MAX_SIZE_REACHED.
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    /// FENCED_INSTANCE_ID.
    pub const FENCED_INSTANCE_ID: i16 = 82;
    /// GROUP_SUBSCRIBED_TO_TOPIC.
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
    /// UNSTABLE_OFFSET_COMMIT.
    pub const UNSTABLE_OFFSET_COMMIT: i16 = 88;
}

/// Maps the error of a failed `__consumer_offsets` append to what the client is told, as Kafka's
/// coordinator does (`GroupCoordinatorService.normalizeException`): the client must see a
/// coordinator error it knows how to retry, never a produce-path error.
pub fn append_error_to_client(code: i16) -> i16 {
    use codes::*;
    match code {
        // An `Err(0)` from the runtime is a bug on its side; never report it as success.
        NONE => UNKNOWN_SERVER_ERROR,
        UNKNOWN_TOPIC_OR_PARTITION
        | NOT_ENOUGH_REPLICAS
        | NOT_ENOUGH_REPLICAS_AFTER_APPEND
        | REQUEST_TIMED_OUT => COORDINATOR_NOT_AVAILABLE,
        NOT_LEADER_OR_FOLLOWER | KAFKA_STORAGE_ERROR => NOT_COORDINATOR,
        MESSAGE_TOO_LARGE | RECORD_LIST_TOO_LARGE | INVALID_FETCH_SIZE => UNKNOWN_SERVER_ERROR,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::codes::*;
    use super::*;

    #[test]
    fn append_errors_become_coordinator_errors() {
        assert_eq!(
            append_error_to_client(NOT_ENOUGH_REPLICAS),
            COORDINATOR_NOT_AVAILABLE
        );
        assert_eq!(
            append_error_to_client(REQUEST_TIMED_OUT),
            COORDINATOR_NOT_AVAILABLE
        );
        assert_eq!(
            append_error_to_client(NOT_LEADER_OR_FOLLOWER),
            NOT_COORDINATOR
        );
        assert_eq!(append_error_to_client(KAFKA_STORAGE_ERROR), NOT_COORDINATOR);
        assert_eq!(
            append_error_to_client(MESSAGE_TOO_LARGE),
            UNKNOWN_SERVER_ERROR
        );
        assert_eq!(append_error_to_client(NONE), UNKNOWN_SERVER_ERROR);
        assert_eq!(
            append_error_to_client(COORDINATOR_LOAD_IN_PROGRESS),
            COORDINATOR_LOAD_IN_PROGRESS
        );
    }
}
