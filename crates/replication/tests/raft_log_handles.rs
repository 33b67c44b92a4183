//! The two kinds of handle on a partition's Raft log: the one openraft's core gets reads data
//! entries without their records (it only applies them, and applying takes offsets from the
//! index table), while log readers, which replication sends from, carry the stored records.

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::{EntryPayload, ServerState};
use sluice_replication::raft::{PartitionRaft, SegmentRaftLog};

mod common;
use common::{NoNetwork, WAIT, open_member, stored, wait_applied, write};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_handle_reads_entries_without_records_and_its_readers_with_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, raft) = open_member(dir.path(), "handles-0", 1, NoNetwork).await;
    raft.initialize(BTreeSet::from([1]))
        .await
        .expect("initialize");
    raft.wait(Some(WAIT))
        .state(ServerState::Leader, "a one-member group leads")
        .await
        .expect("leader");
    for tag in 0..3 {
        write(&raft, tag, 2 + tag as usize).await;
    }
    let last = common::last_index(&raft);
    wait_applied(&raft, last).await;
    let batches: Vec<Vec<u8>> = stored(&log).into_iter().map(|(_, _, b)| b).collect();
    assert_eq!(batches.len(), 3);

    // A second handle on the same log, as the node would open it after a restart.
    let store = SegmentRaftLog::open(Arc::clone(&log)).expect("open raft log");
    let mut core = store.clone().for_raft_core();
    let mut reader = core.get_log_reader().await;
    let through_core = core.try_get_log_entries(..).await.expect("core read");
    let through_reader = reader.try_get_log_entries(..).await.expect("reader read");
    assert_eq!(through_core.len(), through_reader.len());
    let ids = |v: &[openraft::Entry<PartitionRaft>]| v.iter().map(|e| e.log_id).collect::<Vec<_>>();
    assert_eq!(ids(&through_core), ids(&through_reader));

    let records = |v: &[openraft::Entry<PartitionRaft>]| {
        v.iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(b) => Some(b.0.to_vec()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        records(&through_reader),
        batches,
        "readers carry the stored batches"
    );
    assert_eq!(
        records(&through_core),
        vec![Vec::<u8>::new(); 3],
        "the core's handle reads data entries without records"
    );
    // The handle the tests and openraft's storage suite open by default carries records.
    let mut plain = store.clone();
    assert_eq!(
        records(&plain.try_get_log_entries(..).await.expect("read")),
        batches
    );

    raft.shutdown().await.expect("shutdown");
    log.close().expect("close");
}
