//! sluice-loadgen against a real node started in-process: every acknowledged message is in the
//! log, the fetch loop reads back exactly what was produced, and broker errors are counted, not
//! hidden.

use std::path::PathBuf;
use std::time::Duration;

use sluice_loadgen::fetch::{self, FetchOpts};
use sluice_loadgen::produce::{self, ProduceOpts};
use sluice_node::Node;
use sluice_node::config::BrokerConfig;

/// A data directory removed on drop (no tempfile crate: tokio and our crates only).
struct DataDir(PathBuf);

impl DataDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "sluice-loadgen-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create data dir");
        DataDir(dir)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start_node(dir: &DataDir) -> Node {
    let config =
        BrokerConfig::from_args(1, "127.0.0.1:0", None, None, dir.0.clone(), &[]).expect("config");
    Node::start(config).await.expect("node starts")
}

fn opts(addr: std::net::SocketAddr, topic: &str) -> ProduceOpts {
    ProduceOpts {
        bootstrap: addr.to_string(),
        topic: topic.into(),
        partitions: 2,
        connections: 2,
        in_flight: 4,
        records: 100,
        size: 50,
        acks: -1,
        messages: 2_000,
        duration: Duration::from_secs(30),
        rate: None,
    }
}

async fn fetch_all(addr: std::net::SocketAddr, topic: &str, partition: i32) -> fetch::Report {
    fetch::run(FetchOpts {
        bootstrap: addr.to_string(),
        topic: topic.into(),
        partition,
        offset: 0,
        messages: 1_000_000,
        duration: Duration::from_secs(10),
        max_bytes: 1 << 20,
        partition_max_bytes: 4096,
    })
    .await
    .expect("fetch runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_is_read_back() {
    let dir = DataDir::new("roundtrip");
    let node = start_node(&dir).await;
    let addr = node.local_addr;

    let report = produce::run(opts(addr, "lg")).await.expect("produce runs");
    assert_eq!((report.messages, report.errors), (2_000, 0));
    assert_eq!(report.requests, 20);
    assert_eq!(report.latency.count(), 20);
    assert_eq!(report.value_bytes, 2_000 * 50);

    // Small partition_max_bytes: several fetches, each ending on a partial batch.
    let p0 = fetch_all(addr, "lg", 0).await;
    let p1 = fetch_all(addr, "lg", 1).await;
    assert_eq!(p0.messages + p1.messages, 2_000);
    assert_eq!(
        (p0.next_offset, p1.next_offset),
        (p0.messages as i64, p1.messages as i64)
    );
    assert!(
        p0.messages > 0 && p1.messages > 0,
        "both partitions got batches"
    );
    assert!(p0.requests > 1, "read in more than one fetch");

    node.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_run_takes_its_time_and_refused_batches_are_errors() {
    let dir = DataDir::new("rate");
    let node = start_node(&dir).await;
    let addr = node.local_addr;

    // 1,000 messages at 5,000/s cannot finish in much under 0.2 s.
    let mut o = opts(addr, "rated");
    o.messages = 1_000;
    o.rate = Some(5_000.0);
    let report = produce::run(o).await.expect("produce runs");
    assert_eq!(report.messages, 1_000);
    assert!(
        report.elapsed >= Duration::from_millis(150),
        "{:?}",
        report.elapsed
    );

    // acks=2 is invalid: every partition answer carries an error and nothing counts as sent.
    let mut o = opts(addr, "bad-acks");
    o.acks = 2;
    let report = produce::run(o).await.expect("produce runs");
    assert_eq!(report.messages, 0);
    assert_eq!(report.errors, 20);
    assert!(report.first_error.is_some());

    node.stop().await.expect("clean stop");
}
