//! The cluster image: what every node believes about brokers, topics and partitions.
//!
//! Today one node builds it from its own metadata store; with replication it becomes the state
//! machine of the metadata Raft group, changed only by [`MetadataCommand`]s applied in log order.
//! Readers take a cheap snapshot (`Arc<ClusterImage>`) and never block writers.

use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;

/// A broker as clients see it in Metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// `node.id`.
    pub node_id: i32,
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: u16,
    /// `broker.rack` (availability zone).
    pub rack: Option<String>,
}

/// One partition's placement and leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition index.
    pub index: i32,
    /// Current leader's node id.
    pub leader: i32,
    /// Leader epoch: bumps with every leadership change.
    pub leader_epoch: i32,
    /// Replica node ids, preferred leader first.
    pub replicas: Vec<i32>,
    /// In-sync replicas.
    pub isr: Vec<i32>,
}

/// A topic in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Topic id (KIP-516).
    pub id: Uuid,
    /// Partitions in index order.
    pub partitions: Vec<PartitionInfo>,
    /// Topic-level config overrides (Kafka names); defaults are not stored.
    pub configs: BTreeMap<String, String>,
    /// Internal topics (`__consumer_offsets`) are hidden from listings unless asked for.
    pub internal: bool,
}

impl TopicInfo {
    /// Replication factor (replicas of partition 0).
    pub fn replication_factor(&self) -> i16 {
        self.partitions
            .first()
            .map_or(0, |p| p.replicas.len() as i16)
    }
}

/// The whole picture, versioned by the offset of the last command applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterImage {
    /// Kafka-style cluster id.
    pub cluster_id: String,
    /// The node acting as controller.
    pub controller_id: i32,
    /// Live brokers by node id.
    pub brokers: BTreeMap<i32, BrokerInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, Arc<TopicInfo>>,
    /// Broker-level config overrides set at runtime (IncrementalAlterConfigs on the broker).
    pub broker_configs: BTreeMap<String, String>,
    /// The first producer id no node has reserved yet.
    pub next_producer_id: i64,
    /// The last block of producer ids each node reserved: `[first, end)`.
    pub producer_id_blocks: BTreeMap<i32, (i64, i64)>,
}

impl ClusterImage {
    /// A topic by id.
    pub fn topic_by_id(&self, id: Uuid) -> Option<&Arc<TopicInfo>> {
        self.topics.values().find(|t| t.id == id)
    }
}

/// A change to the image. In a cluster these are the entries of the metadata Raft log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataCommand {
    /// Adds a topic with its partitions.
    CreateTopic(TopicInfo),
    /// Removes a topic and its partitions.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Appends partitions to a topic.
    CreatePartitions {
        /// Topic name.
        name: String,
        /// The new partitions, continuing the index sequence.
        partitions: Vec<PartitionInfo>,
    },
    /// Replaces a topic's config overrides.
    SetTopicConfigs {
        /// Topic name.
        name: String,
        /// The complete new set of overrides.
        configs: BTreeMap<String, String>,
    },
    /// Replaces the runtime broker-level config overrides.
    SetBrokerConfigs {
        /// The complete new set.
        configs: BTreeMap<String, String>,
    },
    /// Names the cluster; the first one committed wins, later ones are no-ops.
    InitCluster {
        /// Kafka-style cluster id.
        cluster_id: String,
    },
    /// A partition leader's report of its leadership and ISR (Kafka's AlterPartition), so
    /// every node answers Metadata alike. Applied only if `leader_epoch` is not older than
    /// what the image has.
    SetPartitionState {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
        /// The leader's node id.
        leader: i32,
        /// Its leader epoch (Raft term).
        leader_epoch: i32,
        /// In-sync replicas, in replica order.
        isr: Vec<i32>,
    },
    /// Reserves the next `count` producer ids for `node` (its InitProducerId answers).
    ReserveProducerIds {
        /// The node reserving.
        node: i32,
        /// How many ids.
        count: i64,
    },
}

impl ClusterImage {
    /// Applies one command. Commands are validated before they are proposed, so applying never
    /// fails; a command naming a topic that is gone is a no-op, as a replayed log requires.
    pub fn apply(&mut self, command: &MetadataCommand) {
        match command {
            MetadataCommand::CreateTopic(topic) => {
                // Two nodes may propose the same name at once: the first committed wins, and
                // the proposer of the second sees another id under the name.
                self.topics
                    .entry(topic.name.clone())
                    .or_insert_with(|| Arc::new(topic.clone()));
            }
            MetadataCommand::DeleteTopic { name } => {
                self.topics.remove(name);
            }
            MetadataCommand::CreatePartitions { name, partitions } => {
                if let Some(topic) = self.topics.get_mut(name) {
                    Arc::make_mut(topic)
                        .partitions
                        .extend(partitions.iter().cloned());
                }
            }
            MetadataCommand::SetTopicConfigs { name, configs } => {
                if let Some(topic) = self.topics.get_mut(name) {
                    Arc::make_mut(topic).configs = configs.clone();
                }
            }
            MetadataCommand::SetBrokerConfigs { configs } => {
                self.broker_configs = configs.clone();
            }
            MetadataCommand::InitCluster { cluster_id } => {
                if self.cluster_id.is_empty() {
                    self.cluster_id = cluster_id.clone();
                }
            }
            MetadataCommand::SetPartitionState {
                topic,
                partition,
                leader,
                leader_epoch,
                isr,
            } => {
                if let Some(t) = self.topics.get_mut(topic)
                    && let Some(p) = usize::try_from(*partition)
                        .ok()
                        .and_then(|i| Arc::make_mut(t).partitions.get_mut(i))
                    && *leader_epoch >= p.leader_epoch
                {
                    p.leader = *leader;
                    p.leader_epoch = *leader_epoch;
                    p.isr = isr.clone();
                }
            }
            MetadataCommand::ReserveProducerIds { node, count } => {
                let first = self.next_producer_id;
                self.next_producer_id = first.saturating_add((*count).max(0));
                self.producer_id_blocks
                    .insert(*node, (first, self.next_producer_id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, partitions: i32) -> TopicInfo {
        TopicInfo {
            name: name.into(),
            id: Uuid::from_u128(7),
            partitions: (0..partitions)
                .map(|index| PartitionInfo {
                    index,
                    leader: 1,
                    leader_epoch: 0,
                    replicas: vec![1],
                    isr: vec![1],
                })
                .collect(),
            configs: BTreeMap::new(),
            internal: false,
        }
    }

    #[test]
    fn commands_change_the_image_and_stale_ones_are_no_ops() {
        let mut image = ClusterImage::default();
        image.apply(&MetadataCommand::CreateTopic(topic("orders", 2)));
        image.apply(&MetadataCommand::CreatePartitions {
            name: "orders".into(),
            partitions: topic("x", 3).partitions[2..].to_vec(),
        });
        assert_eq!(image.topics["orders"].partitions.len(), 3);
        image.apply(&MetadataCommand::DeleteTopic {
            name: "orders".into(),
        });
        image.apply(&MetadataCommand::CreatePartitions {
            name: "orders".into(),
            partitions: vec![],
        });
        assert!(image.topics.is_empty());
    }

    #[test]
    fn first_creation_wins_and_partition_state_never_goes_back_an_epoch() {
        let mut image = ClusterImage::default();
        image.apply(&MetadataCommand::CreateTopic(topic("orders", 1)));
        let mut other = topic("orders", 3);
        other.id = Uuid::from_u128(8);
        image.apply(&MetadataCommand::CreateTopic(other));
        assert_eq!(image.topics["orders"].id, Uuid::from_u128(7));
        let state = |leader, leader_epoch, isr: &[i32]| MetadataCommand::SetPartitionState {
            topic: "orders".into(),
            partition: 0,
            leader,
            leader_epoch,
            isr: isr.to_vec(),
        };
        image.apply(&state(2, 5, &[2, 1]));
        image.apply(&state(1, 4, &[1]));
        let p = &image.topics["orders"].partitions[0];
        assert_eq!(
            (p.leader, p.leader_epoch, p.isr.clone()),
            (2, 5, vec![2, 1])
        );
        image.apply(&state(2, 5, &[2]));
        assert_eq!(image.topics["orders"].partitions[0].isr, vec![2]);
        // A partition that does not exist is ignored.
        image.apply(&MetadataCommand::SetPartitionState {
            topic: "orders".into(),
            partition: 9,
            leader: 1,
            leader_epoch: 9,
            isr: vec![1],
        });
        assert_eq!(image.topics["orders"].partitions.len(), 1);
    }
}
