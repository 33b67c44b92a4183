//! LogManager: discovering partitions, creating, deleting, clean shutdown.

mod common;

use common::{all_batches, batch_of};
use sluice_storage::{BrokerLogConfig, LogConfig, LogManager};

#[test]
fn partitions_survive_shutdown_and_deleted_topics_do_not_return() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("meta")).expect("a non-partition dir");
    {
        let mgr = LogManager::open(dir.path(), BrokerLogConfig::default()).expect("open");
        assert!(mgr.partitions().is_empty());
        for (topic, p) in [("orders", 0), ("orders", 1), ("my-topic", 0), ("doomed", 0)] {
            let log = mgr.create(topic, p, LogConfig::default()).expect("create");
            log.append(batch_of(1, 10, p as u64, 0), 0, 0)
                .expect("append");
        }
        // create() of an existing partition hands back the same log.
        let again = mgr
            .create("orders", 0, LogConfig::default())
            .expect("create");
        assert_eq!(again.log_end_offset(), 1);
        mgr.start_background();
        mgr.delete_topic("doomed").expect("delete");
        assert!(mgr.get("doomed", 0).is_none());
        assert!(!dir.path().join("doomed-0").exists(), "renamed at once");
        mgr.shutdown().expect("shutdown");
    }
    let mut broker = BrokerLogConfig::default();
    broker
        .set("num.recovery.threads.per.data.dir", "3")
        .expect("valid");
    let mgr = LogManager::open(dir.path(), broker).expect("reopen");
    let mut names: Vec<(String, i32)> = mgr
        .partitions()
        .into_iter()
        .map(|(t, p, _)| (t, p))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("my-topic".into(), 0),
            ("orders".into(), 0),
            ("orders".into(), 1)
        ]
    );
    let log = mgr.get("orders", 1).expect("present");
    assert!(log.recovery_stats().clean_shutdown);
    assert_eq!(log.recovery_stats().batches_scanned, 0);
    assert_eq!(all_batches(&log, 0).len(), 1);
    mgr.shutdown().expect("shutdown");
}
