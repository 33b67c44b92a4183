//! Three nodes in one process, each with its own Kafka and Raft ports: what the replicated
//! paths answer at the protocol level, exactly (real clients cover the rest in
//! proto-tests/test_cluster.py). Every node names the same cluster and controller; admin
//! requests sent to a non-controller are forwarded; a produce to a follower gets
//! NOT_LEADER_OR_FOLLOWER; the leader checks an idempotent producer's sequences before
//! proposing (a resent batch gets its original offsets and is stored once, a gap is refused)
//! and stamps LogAppendTime. A leader that lost its quorum times an acks=all produce out at its
//! timeout_ms and still stops promptly with one pending.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::Conn;
use kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsRequest, DeleteRecordsTopic,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_node::Node;
use sluice_node::config::{BrokerConfig, PeerConfig};
use tokio::net::TcpListener;

const TOPIC: &str = "replicated";
/// A topic with `message.timestamp.type=LogAppendTime`.
const STAMPED: &str = "stamped";
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const POLICY_VIOLATION: i16 = 44;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const REQUEST_TIMED_OUT: i16 = 7;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// A port nothing listens on right now on 127.0.0.1 (the OS picks it).
async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

struct Cluster {
    nodes: Vec<Node>,
    addrs: Vec<std::net::SocketAddr>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn start_three() -> Cluster {
    let mut listeners = Vec::new();
    let mut peers = Vec::new();
    for id in 1..=3 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let kafka = l.local_addr().expect("addr");
        let raft = free_port().await;
        peers.push(
            PeerConfig::parse(&format!("{id}={kafka}/127.0.0.1:{raft}/az-{id}")).expect("peer"),
        );
        listeners.push(l);
    }
    let mut dirs = Vec::new();
    let mut starts = Vec::new();
    let mut addrs = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = l.local_addr().expect("addr");
        let config = BrokerConfig::new(
            i as i32 + 1,
            &addr.to_string(),
            None,
            None,
            dir.path().to_path_buf(),
            BTreeMap::new(),
        )
        .expect("config")
        .with_peers(peers.clone())
        .expect("peers");
        addrs.push(addr);
        dirs.push(dir);
        // Each start waits for a quorum of the metadata group, so they run together.
        starts.push(tokio::spawn(Node::start_with_listener(config, l)));
    }
    let mut nodes = Vec::new();
    for s in starts {
        nodes.push(s.await.expect("start task").expect("node starts"));
    }
    Cluster {
        nodes,
        addrs,
        _dirs: dirs,
    }
}

/// (leader, ISR) of partition 0 of `topic` as `conn`'s node reports it.
async fn leader_of(conn: &mut Conn, topic: &str) -> (i32, Vec<i32>) {
    let mut t = MetadataRequestTopic::default();
    t.name = Some(name(topic));
    let mut req = MetadataRequest::default();
    req.topics = Some(vec![t]);
    let ResponseKind::Metadata(r) = conn
        .call(ApiKey::Metadata, 12, RequestKind::Metadata(req))
        .await
    else {
        panic!("wrong kind")
    };
    let p = &r.topics[0].partitions[0];
    (p.leader_id.0, p.isr_nodes.iter().map(|b| b.0).collect())
}

/// (cluster id, controller id) as `conn`'s node reports them.
async fn cluster_of(conn: &mut Conn) -> (String, i32) {
    let mut req = MetadataRequest::default();
    req.topics = Some(vec![]);
    let ResponseKind::Metadata(r) = conn
        .call(ApiKey::Metadata, 12, RequestKind::Metadata(req))
        .await
    else {
        panic!("wrong kind")
    };
    (
        r.cluster_id.map(|c| c.to_string()).unwrap_or_default(),
        r.controller_id.0,
    )
}

async fn produce(conn: &mut Conn, batch: Bytes) -> PartitionProduceResponse {
    produce_to(conn, TOPIC, batch).await
}

async fn produce_to(conn: &mut Conn, topic: &str, batch: Bytes) -> PartitionProduceResponse {
    common::produce_one(conn, 9, topic, batch).await
}

/// (error code, records bytes) of a fetch of partition 0 from offset 0.
async fn fetch(conn: &mut Conn) -> (i16, usize) {
    let mut p = FetchPartition::default();
    p.partition = 0;
    p.fetch_offset = 0;
    p.partition_max_bytes = 1 << 20;
    let mut t = FetchTopic::default();
    t.topic = name(TOPIC);
    t.partitions = vec![p];
    let mut req = FetchRequest::default();
    req.max_wait_ms = 0;
    req.max_bytes = 1 << 20;
    req.topics = vec![t];
    let ResponseKind::Fetch(r) = conn.call(ApiKey::Fetch, 11, RequestKind::Fetch(req)).await else {
        panic!("wrong kind")
    };
    let p = &r.responses[0].partitions[0];
    (p.error_code, p.records.as_ref().map_or(0, Bytes::len))
}

/// A connection to each node, in node order.
async fn connect_all(cluster: &Cluster) -> Vec<Conn> {
    let mut conns = Vec::new();
    for a in &cluster.addrs {
        conns.push(Conn::connect(*a).await);
    }
    conns
}

/// A topic with one partition replicated on all three nodes.
fn one_partition_rf3(topic: &str) -> CreatableTopic {
    let mut t = CreatableTopic::default();
    t.name = name(topic);
    t.num_partitions = 1;
    t.replication_factor = 3;
    t
}

/// Bytes in the segment files of the partition directory `partition` anywhere under `dir`.
fn segment_bytes(dir: &std::path::Path, partition: &str) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read data dir").flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == partition) {
            for f in std::fs::read_dir(&path)
                .expect("read partition dir")
                .flatten()
            {
                if f.path().extension().is_some_and(|e| e == "log") {
                    total += f.metadata().expect("segment metadata").len();
                }
            }
        } else {
            total += segment_bytes(&path, partition);
        }
    }
    total
}

/// Creates `topics` through `conn`'s node; each must succeed.
async fn create_topics(conn: &mut Conn, topics: Vec<CreatableTopic>) {
    let mut req = CreateTopicsRequest::default();
    req.topics = topics;
    req.timeout_ms = 10_000;
    let ResponseKind::CreateTopics(r) = conn
        .call(ApiKey::CreateTopics, 7, RequestKind::CreateTopics(req))
        .await
    else {
        panic!("wrong kind")
    };
    for t in &r.topics {
        assert_eq!(t.error_code, 0, "{:?}", t.error_message);
    }
}

/// Waits until every node reports the same elected leader and a full ISR for partition 0
/// (the leader has published its state), at most 30 s.
async fn agreed_leader(conns: &mut [Conn], topic: &str) -> i32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = Vec::new();
        for c in conns.iter_mut() {
            seen.push(leader_of(c, topic).await);
        }
        let (leader, isr) = &seen[0];
        if *leader > 0 && isr.len() == 3 && seen.iter().all(|s| s == &seen[0]) {
            return *leader;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes never agreed on a leader and ISR of {topic}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_partitions_answer_from_the_leader_and_check_sequences_there() {
    let cluster = start_three().await;
    let mut conns = connect_all(&cluster).await;

    // Every node names the same cluster and the same controller.
    let mut seen = Vec::new();
    for c in conns.iter_mut() {
        seen.push(cluster_of(c).await);
    }
    let (cluster_id, controller) = seen[0].clone();
    assert!(!cluster_id.is_empty() && controller > 0, "{seen:?}");
    assert!(seen.iter().all(|s| s == &seen[0]), "{seen:?}");

    // CreateTopics sent to a node that is not the controller: it forwards the change.
    let other = (controller as usize) % 3;
    let topic = one_partition_rf3(TOPIC);
    let mut stamped = one_partition_rf3(STAMPED);
    let mut c = CreatableTopicConfig::default();
    c.name = StrBytes::from_static_str("message.timestamp.type");
    c.value = Some(StrBytes::from_static_str("LogAppendTime"));
    stamped.configs = vec![c];
    create_topics(&mut conns[other], vec![topic, stamped]).await;

    let leader = agreed_leader(&mut conns, TOPIC).await;
    let li = (leader - 1) as usize;
    let fi = (li + 1) % 3;

    let mut init = InitProducerIdRequest::default();
    init.transactional_id = None;
    init.transaction_timeout_ms = 60_000;
    let ResponseKind::InitProducerId(r) = conns[fi]
        .call(ApiKey::InitProducerId, 4, RequestKind::InitProducerId(init))
        .await
    else {
        panic!("wrong kind")
    };
    assert_eq!(r.error_code, 0);
    let pid = r.producer_id.0;
    assert!(pid >= 0);

    let first = common::batch(&[b"a", b"b", b"c"], pid, 0);
    // A follower does not take writes or serve reads.
    let r = produce(&mut conns[fi], first.clone()).await;
    assert_eq!(r.error_code, NOT_LEADER_OR_FOLLOWER);
    assert_eq!(fetch(&mut conns[fi]).await.0, NOT_LEADER_OR_FOLLOWER);

    let r = produce(&mut conns[li], first.clone()).await;
    assert_eq!((r.error_code, r.base_offset), (0, 0));
    // The same batch again (a producer's retry): the original offsets, nothing stored.
    let r = produce(&mut conns[li], first).await;
    assert_eq!((r.error_code, r.base_offset), (0, 0));
    let r = produce(&mut conns[li], common::batch(&[b"d", b"e"], pid, 3)).await;
    assert_eq!((r.error_code, r.base_offset), (0, 3));
    // A gap in the sequence is refused.
    let r = produce(&mut conns[li], common::batch(&[b"x"], pid, 9)).await;
    assert_eq!(r.error_code, OUT_OF_ORDER_SEQUENCE_NUMBER);
    // Batches without a producer id are not checked.
    let r = produce(&mut conns[li], common::batch(&[b"f"], -1, -1)).await;
    assert_eq!((r.error_code, r.base_offset), (0, 5));

    // Exactly six records are stored (the retry added none), all of them committed.
    let mut lp = ListOffsetsPartition::default();
    lp.partition_index = 0;
    lp.timestamp = -1;
    let mut lt = ListOffsetsTopic::default();
    lt.name = name(TOPIC);
    lt.partitions = vec![lp];
    let mut req = ListOffsetsRequest::default();
    req.replica_id = (-1).into();
    req.topics = vec![lt];
    let ResponseKind::ListOffsets(r) = conns[li]
        .call(ApiKey::ListOffsets, 7, RequestKind::ListOffsets(req))
        .await
    else {
        panic!("wrong kind")
    };
    assert_eq!(r.topics[0].partitions[0].offset, 6);
    let (code, bytes) = fetch(&mut conns[li]).await;
    assert_eq!(code, 0);
    assert!(bytes > 0);
    let mut p = DeleteRecordsPartition::default();
    p.partition_index = 0;
    p.offset = 2;
    let mut dt = DeleteRecordsTopic::default();
    dt.name = name(TOPIC);
    dt.partitions = vec![p];
    let mut req = DeleteRecordsRequest::default();
    req.topics = vec![dt];
    req.timeout_ms = 5_000;
    let ResponseKind::DeleteRecords(r) = conns[li]
        .call(ApiKey::DeleteRecords, 2, RequestKind::DeleteRecords(req))
        .await
    else {
        panic!("wrong kind")
    };
    // Moving the log start is not replicated yet: refused, not done on the leader alone.
    assert_eq!(r.topics[0].partitions[0].error_code, POLICY_VIOLATION);

    // LogAppendTime is stamped once, by the leader, and answered with the produce.
    let stamped_leader = (agreed_leader(&mut conns, STAMPED).await - 1) as usize;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let r = produce_to(
        &mut conns[stamped_leader],
        STAMPED,
        common::batch(&[b"t"], -1, -1),
    )
    .await;
    assert_eq!(r.error_code, 0);
    assert!(
        r.log_append_time_ms >= before,
        "log_append_time_ms {} (batch timestamps are 2023; the produce started at {before})",
        r.log_append_time_ms
    );

    for node in cluster.nodes {
        node.stop().await.expect("clean stop");
    }
}

/// A leader whose followers are gone cannot commit: an acks=all produce is answered with
/// REQUEST_TIMED_OUT once its timeout_ms passes, and a produce still waiting does not keep the
/// leader from stopping (its connection is closed after the shutdown grace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_without_a_quorum_times_out_and_does_not_hold_a_stopping_leader() {
    let cluster = start_three().await;
    let mut conns = connect_all(&cluster).await;
    let topic = one_partition_rf3(TOPIC);
    create_topics(&mut conns[0], vec![topic]).await;
    let leader = agreed_leader(&mut conns, TOPIC).await;
    let r = produce(
        &mut conns[(leader - 1) as usize],
        common::batch(&[b"a"], -1, -1),
    )
    .await;
    assert_eq!((r.error_code, r.base_offset), (0, 0));

    // Both followers stop; the leader keeps its term but can no longer reach a majority.
    let mut leader_conn = conns.swap_remove((leader - 1) as usize);
    drop(conns);
    let mut leader_node = None;
    for (i, node) in cluster.nodes.into_iter().enumerate() {
        if i == (leader - 1) as usize {
            leader_node = Some(node);
        } else {
            node.stop().await.expect("a follower stops cleanly");
        }
    }
    let leader_node = leader_node.expect("the leader is one of the nodes");

    let request = common::produce_request(TOPIC, common::batch(&[b"b"], -1, -1), 300);
    let ResponseKind::Produce(mut r) = leader_conn.call(ApiKey::Produce, 9, request).await else {
        panic!("wrong kind")
    };
    let p = r.responses.remove(0).partition_responses.remove(0);
    assert_eq!(p.error_code, REQUEST_TIMED_OUT, "{:?}", p.error_message);

    // A produce that would wait a minute is pending when the leader is told to stop: its batch
    // is in the leader's log (appended when the request started), waiting for a majority.
    let dir = cluster._dirs[(leader - 1) as usize].path().to_path_buf();
    let before = segment_bytes(&dir, &format!("{TOPIC}-0"));
    let request = common::produce_request(TOPIC, common::batch(&[b"c"], -1, -1), 60_000);
    leader_conn.send(ApiKey::Produce, 9, &request).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while segment_bytes(&dir, &format!("{TOPIC}-0")) == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the produce never reached the leader's log"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopped = tokio::time::timeout(Duration::from_secs(30), leader_node.stop()).await;
    assert!(
        stopped.is_ok(),
        "the leader did not stop within 30 s of being told to, with a produce pending"
    );
    // The client is not answered (nothing was committed); its connection is closed.
    assert!(leader_conn.read_frame().await.is_none());
}
