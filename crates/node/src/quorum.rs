//! A node's part in a multi-node cluster: the node-to-node (Raft) listener, the connections to
//! its peers, its member of the metadata group, and the Raft members of the partitions it
//! hosts. `cluster.rs` decides what to host; this module starts and stops the members.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_replication::image::MetadataCommand;
use sluice_replication::metadata::{METADATA_GROUP, MetadataGroup};
use sluice_replication::raft::replica::RaftReplica;
use sluice_replication::raft::transport::{GroupNetwork, Peers, RaftServer};
use sluice_storage::PartitionLog;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::BrokerConfig;

/// The leader's heartbeat interval in every group; an election starts after 3-6 missed ones.
/// Short enough that clients see a new leader about a second after one dies, long enough that
/// a few hundred partitions' heartbeats stay a small load.
pub const HEARTBEAT: Duration = Duration::from_millis(200);

/// This node's Raft side.
pub struct Quorum {
    node_id: u64,
    /// The metadata group (the controller is its leader).
    pub metadata: MetadataGroup,
    server: RaftServer,
    peers: Arc<Peers>,
    serving: JoinHandle<()>,
    lag_max: Duration,
}

/// The Raft group name of a partition: its directory name.
pub fn group_name(topic: &str, index: i32) -> String {
    format!("{topic}-{index}")
}

impl Quorum {
    /// Binds the Raft listener, starts the metadata member and waits until a controller is
    /// known and this node's image has caught up with what was committed before it.
    pub async fn start(config: &BrokerConfig) -> anyhow::Result<Quorum> {
        let me = config
            .peers
            .iter()
            .find(|p| p.node_id == config.node_id)
            .context("this node is not among its peers")?;
        let node_id = u64::try_from(config.node_id).context("node ids are not negative")?;
        let listener = TcpListener::bind(me.raft_addr.as_str())
            .await
            .with_context(|| format!("cannot listen for peers on {}", me.raft_addr))?;
        let peers = Arc::new(Peers::default());
        let mut voters = BTreeSet::new();
        for p in &config.peers {
            let id = u64::try_from(p.node_id).context("node ids are not negative")?;
            voters.insert(id);
            if id != node_id {
                peers.set(id, &p.raft_addr);
            }
        }
        let server = RaftServer::default();
        let serving = tokio::spawn(server.clone().serve(listener));
        let meta_dir = config.data_dir.join("meta");
        std::fs::create_dir_all(&meta_dir)
            .with_context(|| format!("cannot create {}", meta_dir.display()))?;
        let metadata = MetadataGroup::start(
            &meta_dir,
            node_id,
            &voters,
            GroupNetwork::new(Arc::clone(&peers), METADATA_GROUP),
            HEARTBEAT,
        )
        .await
        .context("cannot start the metadata group member")?
        .with_forwarding(node_id, Arc::clone(&peers));
        server.register(METADATA_GROUP, metadata.raft().clone());
        info!(
            raft_listen = %me.raft_addr,
            voters = ?voters,
            "waiting for a quorum of the metadata group (a majority of the peers must be up)"
        );
        metadata
            .wait_ready()
            .await
            .context("the metadata group did not become ready")?;
        if metadata.image().cluster_id.is_empty() {
            // Every node may propose; the first committed name wins.
            let cluster_id = new_cluster_id();
            metadata
                .propose(&MetadataCommand::InitCluster { cluster_id })
                .await
                .context("cannot name the cluster")?;
        }
        info!(
            controller = ?metadata.controller(),
            cluster_id = %metadata.image().cluster_id,
            "metadata group ready"
        );
        Ok(Quorum {
            node_id,
            metadata,
            server,
            peers,
            serving,
            lag_max: Duration::from_millis(config.replica_lag_time_max_ms),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The controller's node id, or -1 during an election.
    pub fn controller_id(&self) -> i32 {
        self.metadata
            .controller()
            .and_then(|c| i32::try_from(c).ok())
            .unwrap_or(-1)
    }

    /// Starts this node's member of a partition's group over its open log and routes the
    /// group's traffic to it.
    pub async fn start_replica(
        &self,
        topic: &str,
        index: i32,
        replicas: &[i32],
        log: Arc<PartitionLog>,
    ) -> anyhow::Result<Arc<RaftReplica>> {
        let group = group_name(topic, index);
        let voters: Vec<u64> = replicas
            .iter()
            .filter_map(|r| u64::try_from(*r).ok())
            .collect();
        let replica = RaftReplica::start(
            self.node_id,
            &voters,
            Arc::clone(&log),
            GroupNetwork::new(Arc::clone(&self.peers), &group),
            HEARTBEAT,
            self.lag_max,
        )
        .await
        .with_context(|| format!("cannot start the replica of {group}"))?;
        self.server.register(&group, replica.raft().clone());
        self.server.register_log(&group, log);
        Ok(Arc::new(replica))
    }

    /// Stops routing a partition's traffic and stops its member.
    pub async fn stop_replica(&self, topic: &str, index: i32, replica: &RaftReplica) {
        let group = group_name(topic, index);
        self.server.deregister(&group);
        if let Err(e) = replica.shutdown().await {
            tracing::warn!(%group, error = %e, "stopping a partition's Raft member failed");
        }
    }

    /// Stops the metadata member and the listener (partition members are stopped by their
    /// owner first).
    pub async fn shutdown(&self) {
        self.server.deregister(METADATA_GROUP);
        if let Err(e) = self.metadata.shutdown().await {
            tracing::warn!(error = %e, "stopping the metadata member failed");
        }
        self.serving.abort();
    }
}

/// A Kafka-style cluster id: 16 random bytes, URL-safe base64 without padding (22 chars).
fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits = uuid::Uuid::new_v4().as_u128();
    (0..22)
        .map(|i| ALPHABET[((bits >> (i * 6)) & 63) as usize] as char)
        .collect()
}
