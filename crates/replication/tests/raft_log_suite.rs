//! openraft's own storage test suite, run against the segment-log-backed Raft log.

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use sluice_replication::raft::{CommitMachine, PartitionRaft, SegmentRaftLog};
use sluice_storage::{LogConfig, PartitionLog};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<PartitionRaft, SegmentRaftLog, CommitMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, SegmentRaftLog, CommitMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = PartitionLog::open(&dir.path().join("t-0"), "t", 0, LogConfig::default())
            .expect("open partition log");
        let store = SegmentRaftLog::open(Arc::new(log))?;
        let sm = CommitMachine::open(&store);
        Ok((dir, store, sm))
    }
}

type S = Suite<PartitionRaft, SegmentRaftLog, CommitMachine, Builder, TempDir>;

/// Each case of openraft's `Suite::test_store` on a fresh store, so a failure names its case.
/// Left out: `get_initial_state_membership_from_log_and_sm`, which appends index 3 right after
/// index 1. Raft never leaves a hole in a log, and this log refuses one (its indexes are
/// positions in the segment log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_cases() {
    let mut failed = Vec::new();
    macro_rules! check {
        ($name:ident) => {{
            let (_dir, store, sm) = Builder.build().await.expect("build");
            if let Err(e) = S::$name(store, sm).await {
                failed.push(format!("{}: {e}", stringify!($name)));
            }
        }};
    }
    check!(last_membership_in_log_initial);
    check!(last_membership_in_log);
    check!(last_membership_in_log_multi_step);
    check!(get_membership_initial);
    check!(get_membership_from_log_and_empty_sm);
    check!(get_membership_from_empty_log_and_sm);
    check!(get_membership_from_log_le_sm_last_applied);
    check!(get_membership_from_log_gt_sm_last_applied_1);
    check!(get_membership_from_log_gt_sm_last_applied_2);
    check!(get_initial_state_without_init);
    check!(get_initial_state_with_state);
    check!(get_initial_state_last_log_gt_sm);
    check!(get_initial_state_last_log_lt_sm);
    check!(get_initial_state_log_ids);
    check!(get_initial_state_re_apply_committed);
    check!(save_vote);
    check!(get_log_entries);
    check!(limited_get_log_entries);
    check!(try_get_log_entry);
    check!(initial_logs);
    check!(get_log_state);
    check!(get_log_id);
    check!(last_id_in_log);
    check!(last_applied_state);
    check!(purge_logs_upto_0);
    check!(purge_logs_upto_5);
    check!(purge_logs_upto_20);
    check!(delete_logs_since_11);
    check!(delete_logs_since_0);
    check!(append_to_log);
    check!(snapshot_meta);
    check!(apply_single);
    check!(apply_multiple);
    if let Err(e) = S::transfer_snapshot(&Builder).await {
        failed.push(format!("transfer_snapshot: {e}"));
    }
    assert!(failed.is_empty(), "failed: {failed:#?}");
}
