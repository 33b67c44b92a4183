//! The metadata Raft group: the cluster image's replicated log.
//!
//! Like KRaft's `__cluster_metadata`, it is an internal partition (`__cluster_metadata-0`) whose
//! Raft log is its segment log: each committed record is one [`MetadataCommand`]. Every node
//! runs a member and an applier that follows the high watermark (the commit index), decoding
//! commands in log order into its [`ClusterImage`], so all nodes converge on the same image.
//! The leader of this group is the cluster's controller: only it accepts proposals; the others
//! answer with who to ask ([`MetadataError::NotController`]).
//!
//! The image is rebuilt at start by replaying the whole log (it is small and kept forever);
//! image snapshots come later.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{Raft, RaftNetworkFactory};
use sluice_protocol::batch::iter_batches;
use sluice_protocol::records::{NewRecord, ProducerInfo, build_batch, read_records};
use sluice_storage::{LogConfig, PartitionLog};
use tokio::sync::watch;
use uuid::Uuid;

use crate::image::{ClusterImage, MetadataCommand, PartitionInfo, TopicInfo};
use crate::raft::codec::{Reader, put_bytes, put_u32};
use crate::raft::transport::Peers;
use crate::raft::wire::Response;
use crate::raft::{CommitMachine, PartitionRaft, RecordBatch, SegmentRaftLog, partition_config};

/// The metadata partition's directory name (`<topic>-<partition>`), also its group name.
pub const METADATA_GROUP: &str = "__cluster_metadata-0";
/// Bytes read from the metadata log at a time while applying.
const APPLY_READ: usize = 1024 * 1024;

/// Why a metadata operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// This node is not the controller; `controller` is who is, when known.
    #[error("this node is not the controller (the controller is {controller:?})")]
    NotController {
        /// The controller's node id, if known.
        controller: Option<u64>,
    },
    /// The log, Raft or the applier failed.
    #[error("metadata log: {0}")]
    Failed(String),
}

/// This node's member of the metadata group.
pub struct MetadataGroup {
    raft: Raft<PartitionRaft>,
    log: Arc<PartitionLog>,
    image: watch::Receiver<Arc<ClusterImage>>,
    applied: watch::Receiver<Applied>,
    applier: tokio::task::JoinHandle<()>,
    /// This node's id and the peers to forward proposals to the controller through.
    forward: Option<(u64, Arc<Peers>)>,
}

/// How long a proposal waits for a controller (an election) before giving up.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How far the applier got: the next offset to apply, or why it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Applied {
    Upto(i64),
    Stopped(String),
}

impl MetadataGroup {
    /// Opens (or creates) `<data_dir>/__cluster_metadata-0`, starts this node's member and its
    /// applier, and, on a fresh log, initializes the group with `voters` (every node may do
    /// this with the same voters; it is a no-op once the group exists).
    pub async fn start<N: RaftNetworkFactory<PartitionRaft>>(
        data_dir: &Path,
        node_id: u64,
        voters: &BTreeSet<u64>,
        network: N,
        heartbeat: Duration,
    ) -> Result<Self, MetadataError> {
        let failed = |e: &dyn std::fmt::Display| MetadataError::Failed(e.to_string());
        let config = LogConfig {
            // The metadata log is the cluster's history: never deleted by age or size.
            retention_ms: -1,
            retention_bytes: -1,
            ..LogConfig::default()
        };
        let (topic, partition) = ("__cluster_metadata", 0);
        let log = Arc::new(
            PartitionLog::open(&data_dir.join(METADATA_GROUP), topic, partition, config)
                .map_err(|e| failed(&e))?,
        );
        let fresh = log.log_end_offset() == 0;
        let store = SegmentRaftLog::open(Arc::clone(&log)).map_err(|e| failed(&e))?;
        let sm = CommitMachine::open(&store);
        let raft_config = partition_config(METADATA_GROUP, heartbeat).map_err(|e| failed(&e))?;
        let raft = Raft::new(
            node_id,
            Arc::new(raft_config),
            network,
            store.for_raft_core(),
            sm,
        )
        .await
        .map_err(|e| failed(&e))?;
        if fresh {
            match raft.initialize(voters.clone()).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(failed(&e)),
            }
        }
        let (image_tx, image) = watch::channel(Arc::new(ClusterImage::default()));
        let (applied_tx, applied) = watch::channel(Applied::Upto(log.log_start_offset()));
        let applier = tokio::spawn(apply_loop(Arc::clone(&log), image_tx, applied_tx));
        Ok(MetadataGroup {
            raft,
            log,
            image,
            applied,
            applier,
            forward: None,
        })
    }

    /// The Raft member (to register with the transport's server).
    pub fn raft(&self) -> &Raft<PartitionRaft> {
        &self.raft
    }

    /// The image as of the last applied command.
    pub fn image(&self) -> Arc<ClusterImage> {
        Arc::clone(&self.image.borrow())
    }

    /// Image changes, for whoever opens and closes partitions as topics come and go.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterImage>> {
        self.image.clone()
    }

    /// The controller (this group's leader) as this node knows it.
    pub fn controller(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// Forwards proposals made here to the controller over `peers` when this node is not
    /// the controller (without it, [`MetadataGroup::propose`] answers `NotController`).
    pub fn with_forwarding(mut self, node_id: u64, peers: Arc<Peers>) -> Self {
        self.forward = Some((node_id, peers));
        self
    }

    /// Waits until this node knows a controller and its image includes everything committed
    /// before that controller's term began: what a node needs before it serves clients.
    pub async fn wait_ready(&self) -> Result<(), MetadataError> {
        let mut rx = self.raft.metrics();
        loop {
            let ready = {
                let m = rx.borrow_and_update();
                // A leader's first entry is a blank one of its own term: once an entry of the
                // current term is applied, everything committed before it is too.
                m.current_leader.is_some()
                    && m.last_applied
                        .is_some_and(|l| l.leader_id.term == m.current_term)
            };
            if ready {
                break;
            }
            rx.changed()
                .await
                .map_err(|_| MetadataError::Failed("the metadata member stopped".into()))?;
        }
        self.wait_applied(self.log.high_watermark()).await
    }

    /// Commits `command` and returns once this node's image includes it. On a node that is
    /// not the controller the command is forwarded to the controller (see
    /// [`MetadataGroup::with_forwarding`]); during an election it waits, at most
    /// [`PROPOSE_TIMEOUT`] in all, for a controller to appear.
    pub async fn propose(&self, command: &MetadataCommand) -> Result<(), MetadataError> {
        let value = encode_command(command);
        let batch = Bytes::from(build_batch(
            &[NewRecord {
                value: Some(&value),
                timestamp: now_ms(),
                ..NewRecord::default()
            }],
            ProducerInfo::NONE,
        ));
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        let mut metrics = self.raft.metrics();
        let end = loop {
            metrics.borrow_and_update();
            match self.commit(batch.clone()).await {
                Ok(end) => break end,
                Err(MetadataError::NotController { controller }) => {
                    let forwardable = self
                        .forward
                        .as_ref()
                        .is_some_and(|(me, _)| controller.is_some_and(|c| c != *me));
                    if forwardable || tokio::time::Instant::now() >= deadline {
                        return Err(MetadataError::NotController { controller });
                    }
                    // No controller yet (or a stale one): wait for the membership's view
                    // to change, then try again.
                    let _ = tokio::time::timeout_at(deadline, metrics.changed()).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.wait_applied(end).await
    }

    /// Commits one command batch here or at the controller; returns its end offset.
    async fn commit(&self, batch: Bytes) -> Result<i64, MetadataError> {
        let leader = match self.raft.client_write(RecordBatch(batch.clone())).await {
            Ok(r) => {
                return r.data.map(|a| a.last_offset + 1).ok_or_else(|| {
                    MetadataError::Failed("a command committed without offsets".into())
                });
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => f.leader_id,
            Err(e) => return Err(MetadataError::Failed(e.to_string())),
        };
        let (Some((me, peers)), Some(controller)) = (&self.forward, leader) else {
            return Err(MetadataError::NotController { controller: leader });
        };
        if controller == *me {
            return Err(MetadataError::NotController { controller: None });
        }
        match peers
            .write(controller, METADATA_GROUP, batch, PROPOSE_TIMEOUT)
            .await
        {
            Ok(Response::Written { end }) => Ok(end),
            Ok(Response::NotLeader(_)) | Err(_) => {
                Err(MetadataError::NotController { controller: None })
            }
            Ok(Response::Refused(why)) => Err(MetadataError::Failed(why)),
            Ok(other) => Err(MetadataError::Failed(format!(
                "unexpected answer from the controller: {other:?}"
            ))),
        }
    }

    /// Waits until this node's image includes every command before `end`.
    async fn wait_applied(&self, end: i64) -> Result<(), MetadataError> {
        let mut applied = self.applied.clone();
        let result = applied
            .wait_for(|a| match a {
                Applied::Upto(n) => *n >= end,
                Applied::Stopped(_) => true,
            })
            .await
            .map_err(|_| MetadataError::Failed("the applier stopped".into()))?
            .clone();
        match result {
            Applied::Upto(_) => Ok(()),
            Applied::Stopped(why) => Err(MetadataError::Failed(why)),
        }
    }

    /// Stops the member and closes the log.
    pub async fn shutdown(&self) -> Result<(), MetadataError> {
        self.applier.abort();
        self.raft
            .shutdown()
            .await
            .map_err(|e| MetadataError::Failed(e.to_string()))?;
        self.log
            .close()
            .map_err(|e| MetadataError::Failed(e.to_string()))
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Follows the commit index, applying each committed command to the image in log order.
async fn apply_loop(
    log: Arc<PartitionLog>,
    image_tx: watch::Sender<Arc<ClusterImage>>,
    applied_tx: watch::Sender<Applied>,
) {
    let mut hw_rx = log.subscribe();
    let mut next = log.log_start_offset();
    let mut image = ClusterImage::default();
    loop {
        let hw = *hw_rx.borrow_and_update();
        let before = next;
        while next < hw {
            match apply_range(&log, next, hw, &mut image) {
                Ok(n) if n > next => next = n,
                Ok(_) => break,
                Err(why) => {
                    // A committed command this node cannot read: its image would diverge from
                    // the others', so it stops applying and every proposal here fails loudly.
                    tracing::error!(offset = next, %why, "metadata log unreadable; applier stopped");
                    applied_tx.send_replace(Applied::Stopped(why));
                    return;
                }
            }
        }
        if next != before {
            image_tx.send_replace(Arc::new(image.clone()));
            applied_tx.send_replace(Applied::Upto(next));
        }
        if hw_rx.changed().await.is_err() {
            return;
        }
    }
}

/// Applies the commands of the batches from `from` below `hw`; returns the next offset.
fn apply_range(
    log: &PartitionLog,
    from: i64,
    hw: i64,
    image: &mut ClusterImage,
) -> Result<i64, String> {
    let r = log
        .read(from, APPLY_READ, hw, true)
        .map_err(|e| e.to_string())?;
    let mut next = from;
    for batch in iter_batches(&r.records) {
        let (header, bytes) = batch.map_err(|e| e.to_string())?;
        let (_, records) = read_records(bytes).map_err(|e| e.to_string())?;
        for record in records {
            let value = record
                .value
                .ok_or_else(|| format!("record at offset {} has no value", record.offset))?;
            let command = decode_command(value)
                .map_err(|e| format!("record at offset {}: {e}", record.offset))?;
            image.apply(&command);
        }
        next = header.last_offset() + 1;
    }
    Ok(next)
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    put_bytes(w, s.as_bytes());
}

fn put_i32(w: &mut Vec<u8>, v: i32) {
    w.extend_from_slice(&v.to_be_bytes());
}

fn put_configs(w: &mut Vec<u8>, configs: &BTreeMap<String, String>) {
    put_u32(w, configs.len());
    for (k, v) in configs {
        put_str(w, k);
        put_str(w, v);
    }
}

fn put_partitions(w: &mut Vec<u8>, partitions: &[PartitionInfo]) {
    put_u32(w, partitions.len());
    for p in partitions {
        put_i32(w, p.index);
        put_i32(w, p.leader);
        put_i32(w, p.leader_epoch);
        for ids in [&p.replicas, &p.isr] {
            put_u32(w, ids.len());
            for id in ids {
                put_i32(w, *id);
            }
        }
    }
}

/// Version byte of the command encoding.
const COMMAND_VERSION: u8 = 1;

/// The record value of one command.
pub fn encode_command(command: &MetadataCommand) -> Vec<u8> {
    let mut w = vec![COMMAND_VERSION];
    match command {
        MetadataCommand::CreateTopic(t) => {
            w.push(0);
            put_str(&mut w, &t.name);
            w.extend_from_slice(t.id.as_bytes());
            put_partitions(&mut w, &t.partitions);
            put_configs(&mut w, &t.configs);
            w.push(u8::from(t.internal));
        }
        MetadataCommand::DeleteTopic { name } => {
            w.push(1);
            put_str(&mut w, name);
        }
        MetadataCommand::CreatePartitions { name, partitions } => {
            w.push(2);
            put_str(&mut w, name);
            put_partitions(&mut w, partitions);
        }
        MetadataCommand::SetTopicConfigs { name, configs } => {
            w.push(3);
            put_str(&mut w, name);
            put_configs(&mut w, configs);
        }
        MetadataCommand::SetBrokerConfigs { configs } => {
            w.push(4);
            put_configs(&mut w, configs);
        }
        MetadataCommand::InitCluster { cluster_id } => {
            w.push(5);
            put_str(&mut w, cluster_id);
        }
        MetadataCommand::SetPartitionState {
            topic,
            partition,
            leader,
            leader_epoch,
            isr,
        } => {
            w.push(7);
            put_str(&mut w, topic);
            put_i32(&mut w, *partition);
            put_i32(&mut w, *leader);
            put_i32(&mut w, *leader_epoch);
            put_u32(&mut w, isr.len());
            for id in isr {
                put_i32(&mut w, *id);
            }
        }
        MetadataCommand::ReserveProducerIds { node, count } => {
            w.push(6);
            put_i32(&mut w, *node);
            w.extend_from_slice(&count.to_be_bytes());
        }
    }
    w
}

impl Reader<'_> {
    fn i32(&mut self) -> Result<i32, String> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(i32::from_be_bytes(b))
    }

    fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }

    fn configs(&mut self) -> Result<BTreeMap<String, String>, String> {
        let n = self.count()?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = self.string()?;
            m.insert(k, self.string()?);
        }
        Ok(m)
    }

    fn ids(&mut self) -> Result<Vec<i32>, String> {
        let n = self.count()?;
        (0..n).map(|_| self.i32()).collect()
    }

    fn partitions(&mut self) -> Result<Vec<PartitionInfo>, String> {
        let n = self.count()?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(PartitionInfo {
                index: self.i32()?,
                leader: self.i32()?,
                leader_epoch: self.i32()?,
                replicas: self.ids()?,
                isr: self.ids()?,
            });
        }
        Ok(v)
    }
}

/// Decodes a record value written by [`encode_command`].
pub fn decode_command(value: &[u8]) -> Result<MetadataCommand, String> {
    let mut r = Reader { buf: value };
    let version = r.u8()?;
    if version != COMMAND_VERSION {
        return Err(format!(
            "command version {version} is not {COMMAND_VERSION}"
        ));
    }
    let command = match r.u8()? {
        0 => {
            let name = r.string()?;
            let id = Uuid::from_slice(r.take(16)?).map_err(|e| e.to_string())?;
            MetadataCommand::CreateTopic(TopicInfo {
                name,
                id,
                partitions: r.partitions()?,
                configs: r.configs()?,
                internal: r.flag()?,
            })
        }
        1 => MetadataCommand::DeleteTopic { name: r.string()? },
        2 => MetadataCommand::CreatePartitions {
            name: r.string()?,
            partitions: r.partitions()?,
        },
        3 => MetadataCommand::SetTopicConfigs {
            name: r.string()?,
            configs: r.configs()?,
        },
        4 => MetadataCommand::SetBrokerConfigs {
            configs: r.configs()?,
        },
        5 => MetadataCommand::InitCluster {
            cluster_id: r.string()?,
        },
        7 => MetadataCommand::SetPartitionState {
            topic: r.string()?,
            partition: r.i32()?,
            leader: r.i32()?,
            leader_epoch: r.i32()?,
            isr: r.ids()?,
        },
        6 => MetadataCommand::ReserveProducerIds {
            node: r.i32()?,
            count: r.i64()?,
        },
        k => return Err(format!("unknown command {k}")),
    };
    if !r.buf.is_empty() {
        return Err(format!("{} trailing bytes", r.buf.len()));
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commands() -> Vec<MetadataCommand> {
        let partition = |index| PartitionInfo {
            index,
            leader: 2,
            leader_epoch: 3,
            replicas: vec![2, 3, 1],
            isr: vec![2, 3],
        };
        let configs = BTreeMap::from([("retention.ms".to_string(), "-1".to_string())]);
        vec![
            MetadataCommand::CreateTopic(TopicInfo {
                name: "orders".into(),
                id: Uuid::from_u128(0x1234),
                partitions: vec![partition(0), partition(1)],
                configs: configs.clone(),
                internal: false,
            }),
            MetadataCommand::DeleteTopic {
                name: "orders".into(),
            },
            MetadataCommand::CreatePartitions {
                name: "orders".into(),
                partitions: vec![partition(2)],
            },
            MetadataCommand::SetTopicConfigs {
                name: "orders".into(),
                configs: configs.clone(),
            },
            MetadataCommand::SetBrokerConfigs { configs },
            MetadataCommand::InitCluster {
                cluster_id: "sluice-test".into(),
            },
            MetadataCommand::ReserveProducerIds {
                node: 2,
                count: 1000,
            },
            MetadataCommand::SetPartitionState {
                topic: "orders".into(),
                partition: 1,
                leader: 3,
                leader_epoch: 7,
                isr: vec![3, 1],
            },
        ]
    }

    #[test]
    fn commands_round_trip_and_damage_is_refused() {
        for c in commands() {
            let bytes = encode_command(&c);
            assert_eq!(decode_command(&bytes), Ok(c));
            for n in 0..bytes.len() {
                assert!(
                    decode_command(&bytes[..n]).is_err(),
                    "{n}-byte prefix decoded"
                );
            }
        }
    }
}
