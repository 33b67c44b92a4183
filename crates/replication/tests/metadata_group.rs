//! Three nodes on 127.0.0.1-3 run the metadata group over TCP: the controller's commands reach
//! every node's image in order, other nodes refuse proposals naming the controller, and a node
//! restarted from its files replays the log to the same image.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_replication::image::{ClusterImage, MetadataCommand, PartitionInfo, TopicInfo};
use sluice_replication::metadata::{METADATA_GROUP, MetadataError, MetadataGroup};
use sluice_replication::raft::transport::{GroupNetwork, RaftServer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use uuid::Uuid;

mod common;
use common::{WAIT, bind_local, log_errors, peers};

struct Node {
    group: MetadataGroup,
    server: JoinHandle<()>,
}

async fn start(root: &Path, id: u64, listener: TcpListener, addrs: &[SocketAddr]) -> Node {
    let peers = peers(addrs);
    let group = MetadataGroup::start(
        &root.join(format!("node-{id}")),
        id,
        &BTreeSet::from([1, 2, 3]),
        GroupNetwork::new(peers, METADATA_GROUP),
        Duration::from_millis(50),
    )
    .await
    .expect("start metadata group");
    let server = RaftServer::default();
    server.register(METADATA_GROUP, group.raft().clone());
    Node {
        group,
        server: tokio::spawn(server.serve(listener)),
    }
}

async fn stop(node: Node) {
    node.server.abort();
    let _ = node.server.await;
    node.group.shutdown().await.expect("shutdown");
}

fn topic(name: &str, partitions: i32) -> MetadataCommand {
    MetadataCommand::CreateTopic(TopicInfo {
        name: name.to_string(),
        id: Uuid::new_v4(),
        partitions: (0..partitions)
            .map(|index| PartitionInfo {
                index,
                leader: 1 + index % 3,
                leader_epoch: 0,
                replicas: vec![1, 2, 3],
                isr: vec![1, 2, 3],
            })
            .collect(),
        configs: BTreeMap::new(),
        internal: false,
    })
}

/// The controller once every live node names the same one.
async fn controller(nodes: &[Option<Node>]) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no agreed controller"
        );
        let seen: BTreeSet<Option<u64>> = nodes
            .iter()
            .flatten()
            .map(|n| n.group.controller())
            .collect();
        if let [Some(c)] = seen.iter().copied().collect::<Vec<_>>()[..]
            && nodes[c as usize - 1].is_some()
        {
            return c;
        }
        // Wait for any node's view to change, briefly, then look again.
        let first = nodes.iter().flatten().next().expect("a live node");
        let _ = first
            .group
            .raft()
            .wait(Some(Duration::from_millis(200)))
            .metrics(|m| m.current_leader.is_some(), "a controller")
            .await;
    }
}

/// Proposes through whoever the controller is now, retrying while leadership moves.
async fn propose(nodes: &[Option<Node>], command: &MetadataCommand) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let c = controller(nodes).await;
        match nodes[c as usize - 1]
            .as_ref()
            .expect("live")
            .group
            .propose(command)
            .await
        {
            Ok(()) => return,
            Err(MetadataError::NotController { .. }) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "proposal never taken"
                );
            }
            Err(e) => panic!("proposal failed: {e}"),
        }
    }
}

/// This node's image once `done` holds for it.
async fn image_when(node: &Node, done: impl Fn(&ClusterImage) -> bool) -> Arc<ClusterImage> {
    let mut rx = node.group.subscribe();
    tokio::time::timeout(WAIT, rx.wait_for(|i| done(i)))
        .await
        .expect("the image catches up")
        .expect("image channel")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_applies_the_controllers_commands_in_order() {
    log_errors();
    let root = tempfile::tempdir().expect("tempdir");
    let (listeners, addrs) = bind_local(3).await;
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        nodes.push(Some(start(root.path(), i as u64 + 1, l, &addrs).await));
    }

    propose(&nodes, &topic("orders", 3)).await;
    propose(&nodes, &topic("payments", 1)).await;
    propose(
        &nodes,
        &MetadataCommand::SetTopicConfigs {
            name: "orders".into(),
            configs: BTreeMap::from([("retention.ms".into(), "1000".into())]),
        },
    )
    .await;
    let mut images = Vec::new();
    for n in nodes.iter().flatten() {
        images.push(
            image_when(n, |i| {
                i.topics.len() == 2
                    && i.topics["orders"].configs.get("retention.ms") == Some(&"1000".to_string())
            })
            .await,
        );
    }
    assert!(images.windows(2).all(|w| w[0].topics == w[1].topics));
    assert_eq!(images[0].topics["orders"].configs["retention.ms"], "1000");

    // A node that is not the controller refuses, naming the controller.
    let c = controller(&nodes).await;
    let other = (1..=3u64).find(|i| *i != c).expect("another node");
    let refused = nodes[other as usize - 1]
        .as_ref()
        .expect("live")
        .group
        .propose(&topic("nope", 1))
        .await;
    assert_eq!(
        refused,
        Err(MetadataError::NotController {
            controller: Some(c)
        })
    );

    // The controller goes away; the others elect one and go on.
    stop(nodes[c as usize - 1].take().expect("controller")).await;
    propose(
        &nodes,
        &MetadataCommand::DeleteTopic {
            name: "payments".into(),
        },
    )
    .await;
    propose(&nodes, &topic("refunds", 2)).await;

    // It comes back, replays its log and catches up to the same image.
    let listener = TcpListener::bind(addrs[c as usize - 1])
        .await
        .expect("rebind");
    nodes[c as usize - 1] = Some(start(root.path(), c, listener, &addrs).await);
    let mut images = Vec::new();
    for n in nodes.iter().flatten() {
        images.push(
            image_when(n, |i| {
                i.topics.contains_key("refunds") && !i.topics.contains_key("payments")
            })
            .await,
        );
    }
    assert!(images.windows(2).all(|w| w[0].topics == w[1].topics));
    assert_eq!(
        images[0].topics.keys().collect::<Vec<_>>(),
        ["orders", "refunds"]
    );
    assert_eq!(images[0].topics["orders"].configs["retention.ms"], "1000");
    for n in nodes.into_iter().flatten() {
        stop(n).await;
    }
}
