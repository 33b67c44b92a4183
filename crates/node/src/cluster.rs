//! Topics, partitions and their logs on this node, and the controller's decisions about them.
//!
//! Every change follows one path: validate, commit, then make this node match. A single node
//! commits to its metadata store (sled, flushed) and applies the command to its in-memory
//! [`ClusterImage`], opening or removing logs. A node of a multi-node cluster ([`Quorum`])
//! commits by proposing the command to the metadata Raft group (forwarded to the controller
//! when this node is not it); every node then *reconciles*: it follows the group's image and
//! starts a Raft member for each partition it is a replica of, stops and deletes those whose
//! topic is gone, and applies config changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use kafka_protocol::ResponseError;
use sluice_replication::image::{
    BrokerInfo, ClusterImage, MetadataCommand, PartitionInfo, TopicInfo,
};
use sluice_replication::metadata::MetadataError;
use sluice_replication::partition::Partition;
use sluice_storage::config::{
    BrokerLogConfig, ConfigSource, ConfigType, TOPIC_CONFIGS, topic_config,
};
use sluice_storage::metadata::TopicRecord;
use sluice_storage::{LogManager, MetadataStore};
use std::time::Duration;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::quorum::Quorum;

/// Name of the internal offsets topic.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Longest topic name Kafka accepts.
const MAX_TOPIC_NAME: usize = 249;
/// Producer ids reserved from the metadata store at a time.
const PRODUCER_ID_BLOCK: i64 = 1000;
/// Store prefix of the node's own small records.
const NODE_PREFIX: &str = "node";
/// Store key of the dynamic (runtime-set) broker configs.
const DYNAMIC_BROKER_CONFIGS: &str = "dynamic-broker-configs";

/// A refused admin operation: the Kafka error and a sentence for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (error code {code})")]
pub struct AdminError {
    /// Kafka error code.
    pub code: i16,
    /// What went wrong, for `error_message`.
    pub message: String,
}

impl AdminError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ResponseError, message: impl Into<String>) -> Self {
        AdminError {
            code: kind.code(),
            message: message.into(),
        }
    }

    fn storage(e: impl std::fmt::Display) -> Self {
        AdminError::new(ResponseError::KafkaStorageError, e.to_string())
    }
}

/// A topic to create, as CreateTopics describes it.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// -1 for `num.partitions`.
    pub num_partitions: i32,
    /// -1 for `default.replication.factor`.
    pub replication_factor: i16,
    /// Manual assignment: (partition, replicas); empty for automatic placement.
    pub assignments: Vec<(i32, Vec<i32>)>,
    /// Config overrides.
    pub configs: BTreeMap<String, String>,
}

/// What CreateTopics reports back.
#[derive(Debug, Clone)]
pub struct CreatedTopic {
    /// Topic id.
    pub id: Uuid,
    /// Partitions.
    pub num_partitions: i32,
    /// Replication factor.
    pub replication_factor: i16,
    /// Effective configs.
    pub configs: Vec<sluice_storage::config::ConfigEntry>,
}

/// One config as DescribeConfigs reports it.
#[derive(Debug, Clone)]
pub struct ConfigView {
    /// Kafka name.
    pub name: String,
    /// Effective value.
    pub value: String,
    /// Kafka ConfigSource code.
    pub source: i8,
    /// Not changeable at runtime.
    pub read_only: bool,
    /// Kafka ConfigType code.
    pub config_type: i8,
    /// One line of documentation.
    pub doc: &'static str,
    /// (name, value, source) of every level that sets it, most specific first.
    pub synonyms: Vec<(String, String, i8)>,
}

/// Kafka ConfigSource codes not in the storage crate's enum.
const DYNAMIC_DEFAULT_BROKER_CONFIG: i8 = 3;

/// A topic's partitions hosted here, by index (`None`: this node is not a replica).
type Hosted = Vec<Option<Arc<Partition>>>;

struct State {
    image: Arc<ClusterImage>,
    partitions: HashMap<String, Hosted>,
}

struct ProducerIdBlock {
    next: i64,
    end: i64,
}

/// This node's topics and partitions.
pub struct Cluster {
    config: BrokerConfig,
    store: Arc<MetadataStore>,
    logs: Arc<LogManager>,
    state: RwLock<State>,
    /// Static broker log settings with the dynamic ones applied on top.
    log_defaults: RwLock<BrokerLogConfig>,
    /// Serializes metadata changes, as a controller's single thread would.
    admin: tokio::sync::Mutex<()>,
    producer_ids: Mutex<ProducerIdBlock>,
    /// The Raft side of a multi-node cluster; `None` for a single node.
    quorum: Option<Quorum>,
    /// Serializes reconciliation with the metadata image.
    reconciling: tokio::sync::Mutex<()>,
    /// Tasks following the metadata image and publishing partition state (multi-node).
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Cluster {
    /// Opens the metadata store and every log, reconciling the two.
    pub async fn open(config: &BrokerConfig) -> anyhow::Result<Arc<Cluster>> {
        let config = config.clone();
        if config.is_clustered() {
            return Cluster::open_clustered(config).await;
        }
        tokio::task::spawn_blocking(move || Cluster::open_blocking(config))
            .await
            .context("start-up task panicked")?
            .map(Arc::new)
    }

    /// A node of a multi-node cluster: opens the logs, joins the metadata group, hosts what
    /// the image assigns here and follows the image from then on.
    async fn open_clustered(config: BrokerConfig) -> anyhow::Result<Arc<Cluster>> {
        let for_open = config.clone();
        let (store, logs) = tokio::task::spawn_blocking(move || {
            let config = for_open;
            let store = open_store(&config)?;
            // Topic configs are known once the image is; until then logs run on the broker
            // defaults, and retention starts only after the first reconciliation.
            let base = config
                .log
                .log_config(&BTreeMap::new())
                .context("broker log defaults are invalid")?;
            let logs = LogManager::open_with(&config.data_dir, config.log.clone(), &|_: &str| {
                base.clone()
            })
            .context("cannot open the partition logs")?;
            anyhow::Ok((store, Arc::new(logs)))
        })
        .await
        .context("start-up task panicked")??;
        let quorum = Quorum::start(&config).await?;
        let cluster = Arc::new(Cluster {
            log_defaults: RwLock::new(config.log.clone()),
            state: RwLock::new(State {
                image: Arc::new(ClusterImage::default()),
                partitions: HashMap::new(),
            }),
            config,
            store,
            logs,
            admin: tokio::sync::Mutex::new(()),
            producer_ids: Mutex::new(ProducerIdBlock { next: 0, end: 0 }),
            quorum: Some(quorum),
            reconciling: tokio::sync::Mutex::new(()),
            background: Mutex::new(Vec::new()),
        });
        cluster
            .reconcile()
            .await
            .map_err(|e| anyhow::anyhow!("cannot host this node's partitions: {}", e.message))?;
        // Logs of topics the image no longer has were deleted while this node was away.
        let image = cluster.image();
        let stale: std::collections::BTreeSet<String> = cluster
            .logs
            .partitions()
            .into_iter()
            .map(|(topic, _, _)| topic)
            .filter(|t| !image.topics.contains_key(t))
            .collect();
        for topic in stale {
            warn!(%topic, "removing logs of a topic deleted while this node was away");
            cluster.logs.delete_topic(&topic)?;
        }
        cluster.logs.start_background();
        let follower = tokio::spawn(follow_image(Arc::clone(&cluster)));
        let publisher = tokio::spawn(publish_partition_states(Arc::clone(&cluster)));
        lock(&cluster.background).extend([follower, publisher]);
        info!(
            topics = image.topics.len(),
            cluster_id = %image.cluster_id,
            "cluster metadata and this node's replicas loaded"
        );
        Ok(cluster)
    }

    /// Makes this node match the metadata group's image: hosts a Raft member for every
    /// partition it is a replica of, stops and deletes what was removed, applies configs.
    async fn reconcile(&self) -> Result<(), AdminError> {
        let Some(quorum) = &self.quorum else {
            return Ok(());
        };
        let _one = self.reconciling.lock().await;
        let meta = quorum.metadata.image();
        let me = self.config.node_id;
        let mut defaults = self.config.log.clone();
        for (k, v) in &meta.broker_configs {
            if let Err(e) = defaults.set(k, v) {
                warn!("ignoring dynamic broker config {k}={v}: {e}");
            }
        }
        *write(&self.log_defaults) = defaults.clone();
        let old = self.image();
        let gone: Vec<String> = read(&self.state)
            .partitions
            .keys()
            .filter(|name| {
                meta.topics.get(*name).map(|t| t.id) != old.topics.get(*name).map(|t| t.id)
            })
            .cloned()
            .collect();
        for name in gone {
            let hosted = write(&self.state).partitions.remove(&name);
            for p in hosted.into_iter().flatten().flatten() {
                if let Some(replica) = p.replica() {
                    quorum.stop_replica(&name, p.index(), replica).await;
                }
            }
            let logs = self.logs.clone();
            let topic = name.clone();
            tokio::task::spawn_blocking(move || logs.delete_topic(&topic))
                .await
                .map_err(AdminError::storage)?
                .map_err(AdminError::storage)?;
            info!(topic = %name, "removed this node's replicas of a deleted topic");
        }
        for topic in meta.topics.values() {
            let log_config = defaults
                .log_config(&topic.configs)
                .map_err(AdminError::storage)?;
            let min_isr = min_insync(&defaults, &topic.configs);
            for p in &topic.partitions {
                if !p.replicas.contains(&me) {
                    continue;
                }
                if let Some(existing) = self.partition(&topic.name, p.index) {
                    existing.log().set_config(log_config.clone());
                    existing.set_min_insync_replicas(min_isr);
                    continue;
                }
                let log = match self.logs.get(&topic.name, p.index) {
                    Some(log) => {
                        log.set_config(log_config.clone());
                        log
                    }
                    None => self
                        .logs
                        .create(&topic.name, p.index, log_config.clone())
                        .map_err(AdminError::storage)?,
                };
                let replica = quorum
                    .start_replica(&topic.name, p.index, &p.replicas, log)
                    .await
                    .map_err(|e| {
                        AdminError::new(ResponseError::KafkaStorageError, format!("{e:#}"))
                    })?;
                let partition = Arc::new(Partition::replicated(&topic.name, p.index, replica));
                partition.set_min_insync_replicas(min_isr);
                let mut state = write(&self.state);
                let hosted = state.partitions.entry(topic.name.clone()).or_default();
                let slot = usize::try_from(p.index).unwrap_or(0);
                if hosted.len() <= slot {
                    hosted.resize(slot + 1, None);
                }
                hosted[slot] = Some(partition);
            }
        }
        let mut image = (*meta).clone();
        image.brokers = self.peer_brokers();
        image.controller_id = quorum.controller_id();
        write(&self.state).image = Arc::new(image);
        Ok(())
    }

    /// The brokers of a multi-node cluster, from the peer list every node is given.
    fn peer_brokers(&self) -> BTreeMap<i32, BrokerInfo> {
        self.config
            .peers
            .iter()
            .map(|p| {
                (
                    p.node_id,
                    BrokerInfo {
                        node_id: p.node_id,
                        host: p.kafka_host.clone(),
                        port: p.kafka_port,
                        rack: p.rack.clone(),
                    },
                )
            })
            .collect()
    }

    /// The controller's node id (-1 while the metadata group elects one).
    pub fn controller_id(&self) -> i32 {
        match &self.quorum {
            Some(q) => q.controller_id(),
            None => self.config.node_id,
        }
    }

    /// The broker leading a partition, as [`Cluster::partition_view`] sees it.
    pub fn partition_leader(&self, topic: &str, index: i32) -> Option<BrokerInfo> {
        let image = self.image();
        let info = image
            .topics
            .get(topic)?
            .partitions
            .get(usize::try_from(index).ok()?)?;
        let leader = self.partition_view(topic, info).leader;
        image.brokers.get(&leader).cloned()
    }

    /// True when this node is one of several, replicating with Raft.
    pub fn is_clustered(&self) -> bool {
        self.quorum.is_some()
    }

    /// A partition's leader, leader epoch and ISR as clients should see them. Leaders publish
    /// their state to the metadata group (below), so every node answers alike from its image;
    /// a replica hosted here that knows a newer leader epoch than the image (the new leader's
    /// report is under way) answers from what it knows.
    pub fn partition_view(&self, topic: &str, info: &PartitionInfo) -> PartitionInfo {
        let Some(p) = self.partition(topic, info.index) else {
            return info.clone();
        };
        if self.quorum.is_none() {
            return PartitionInfo {
                leader: self.config.node_id,
                leader_epoch: p.leader_epoch(),
                isr: vec![self.config.node_id],
                ..info.clone()
            };
        }
        let epoch = p.leader_epoch();
        match p.leader(self.config.node_id) {
            Some(leader) if epoch > info.leader_epoch => PartitionInfo {
                leader,
                leader_epoch: epoch,
                isr: if p.is_leader() {
                    p.in_sync_replicas(self.config.node_id)
                } else {
                    info.isr.clone()
                },
                ..info.clone()
            },
            _ => info.clone(),
        }
    }

    /// What this node, as leader, should publish for a partition: `Some` when the image's
    /// leader, epoch or ISR differ from the live ones.
    fn state_to_publish(&self, topic: &TopicInfo, info: &PartitionInfo) -> Option<MetadataCommand> {
        let p = self.partition(&topic.name, info.index)?;
        if !p.is_leader() {
            return None;
        }
        let live: std::collections::BTreeSet<i32> = p
            .in_sync_replicas(self.config.node_id)
            .into_iter()
            .collect();
        // In replica order, as Kafka lists it.
        let isr: Vec<i32> = info
            .replicas
            .iter()
            .copied()
            .filter(|r| live.contains(r))
            .collect();
        let epoch = p.leader_epoch();
        let same = info.leader == self.config.node_id
            && info.leader_epoch == epoch
            && info
                .isr
                .iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>()
                == isr.iter().copied().collect();
        (!same).then(|| MetadataCommand::SetPartitionState {
            topic: topic.name.clone(),
            partition: info.index,
            leader: self.config.node_id,
            leader_epoch: epoch,
            isr,
        })
    }

    /// Commits a metadata change: the store then the image here, or through the metadata
    /// group (and this node reconciled with the result) in a multi-node cluster.
    async fn commit<T: Send + 'static>(
        &self,
        persist: impl FnOnce(&MetadataStore) -> Result<T, sluice_storage::StorageError> + Send + 'static,
        command: MetadataCommand,
    ) -> Result<(), AdminError> {
        match &self.quorum {
            None => {
                self.persist(persist).await?;
                self.apply(command)
            }
            Some(q) => {
                q.metadata.propose(&command).await.map_err(metadata_error)?;
                self.reconcile().await
            }
        }
    }

    /// Replicas for `count` new partitions from `first`: brokers in rack-alternating order
    /// (one rack's broker, the next rack's, ...), each partition starting one further along,
    /// so replicas of a partition sit in different racks and preferred leaders spread evenly.
    fn place(&self, first: i32, count: i32, rf: i16) -> Vec<PartitionInfo> {
        if self.quorum.is_none() {
            return (first..first + count)
                .map(|i| single_replica(i, self.config.node_id))
                .collect();
        }
        let order = rack_alternating(&self.config.peers);
        let start = (uuid::Uuid::new_v4().as_u128() % order.len().max(1) as u128) as usize;
        assign(&order, start, first, count, rf)
    }

    fn open_blocking(config: BrokerConfig) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        let store = open_store(&config)?;
        let store_was_reset = store.damaged().is_some();
        if store_was_reset {
            // The producer-id counter went with the damaged store, but partitions still hold
            // idempotence state for the ids it handed out; restarting at 0 would give a new
            // producer an id whose old sequence numbers make its first batch look out of order.
            // Skip far past anything a counter could have reached: the current time in ms.
            let skip = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1 << 40, |d| d.as_millis() as i64);
            store
                .allocate_producer_ids(skip)
                .context("cannot move the producer-id counter past old ids")?;
            warn!(
                next_producer_id = skip,
                "metadata store was reset: producer ids restart past every id handed out before"
            );
        }
        let mut log_defaults = config.log.clone();
        let dynamic = load_dynamic_configs(&store)?;
        for (k, v) in &dynamic {
            if let Err(e) = log_defaults.set(k, v) {
                warn!("ignoring stored dynamic broker config {k}={v}: {e}");
            }
        }
        let mut records: BTreeMap<String, TopicRecord> = store
            .topics()
            .context("cannot read topics from the metadata store")?
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let defaults_for_open = log_defaults.clone();
        let base = log_defaults
            .log_config(&BTreeMap::new())
            .context("broker log defaults are invalid")?;
        let overrides: BTreeMap<String, BTreeMap<String, String>> = records
            .iter()
            .map(|(name, r)| (name.clone(), r.configs.clone()))
            .collect();
        let config_for = move |topic: &str| {
            overrides
                .get(topic)
                .and_then(|o| defaults_for_open.log_config(o).ok())
                .unwrap_or_else(|| base.clone())
        };
        let logs = Arc::new(
            LogManager::open_with(&config.data_dir, log_defaults.clone(), &config_for)
                .context("cannot open the partition logs")?,
        );
        // Partition directories are the source of truth for data: a topic the store does not
        // know either lost its metadata (store reset: adopt it) or was being deleted when the
        // node stopped (finish the deletion).
        let mut on_disk: BTreeMap<String, i32> = BTreeMap::new();
        for (topic, partition, _) in logs.partitions() {
            let n = on_disk.entry(topic).or_insert(0);
            *n = (*n).max(partition + 1);
        }
        for (topic, count) in &on_disk {
            if records.contains_key(topic) {
                continue;
            }
            if store_was_reset {
                warn!(%topic, partitions = count, "adopting topic found on disk with default configs (metadata store was reset)");
                let record = TopicRecord {
                    name: topic.clone(),
                    id: *Uuid::new_v4().as_bytes(),
                    partitions: *count,
                    replication_factor: 1,
                    configs: BTreeMap::new(),
                };
                store.put_topic(&record)?;
                records.insert(topic.clone(), record);
            } else {
                warn!(%topic, "removing logs of a topic deleted before the last shutdown");
                logs.delete_topic(topic)?;
            }
        }
        let mut image = ClusterImage {
            cluster_id: store.cluster_id()?,
            controller_id: config.node_id,
            broker_configs: dynamic,
            ..ClusterImage::default()
        };
        image.brokers.insert(
            config.node_id,
            BrokerInfo {
                node_id: config.node_id,
                host: config.advertise_host.clone(),
                port: config.advertise_port,
                rack: config.rack.clone(),
            },
        );
        let mut partitions = HashMap::new();
        for record in records.values() {
            let topic = topic_info(record, config.node_id);
            let log_config = log_defaults
                .log_config(&record.configs)
                .with_context(|| format!("stored configs of topic {} are invalid", record.name))?;
            let mut hosted = Vec::new();
            for p in &topic.partitions {
                let log = match logs.get(&topic.name, p.index) {
                    Some(log) => {
                        log.set_config(log_config.clone());
                        log
                    }
                    None => logs.create(&topic.name, p.index, log_config.clone())?,
                };
                let partition = Arc::new(Partition::new(&topic.name, p.index, log, p.leader_epoch));
                partition.set_min_insync_replicas(min_insync(&log_defaults, &record.configs));
                hosted.push(Some(partition));
            }
            partitions.insert(topic.name.clone(), hosted);
            image.topics.insert(topic.name.clone(), Arc::new(topic));
        }
        logs.start_background();
        info!(
            topics = image.topics.len(),
            cluster_id = %image.cluster_id,
            "metadata and logs loaded"
        );
        let producer_ids = ProducerIdBlock { next: 0, end: 0 };
        Ok(Cluster {
            config,
            store,
            logs,
            state: RwLock::new(State {
                image: Arc::new(image),
                partitions,
            }),
            log_defaults: RwLock::new(log_defaults),
            admin: tokio::sync::Mutex::new(()),
            producer_ids: Mutex::new(producer_ids),
            quorum: None,
            reconciling: tokio::sync::Mutex::new(()),
            background: Mutex::new(Vec::new()),
        })
    }

    /// A consistent snapshot of the cluster image.
    pub fn image(&self) -> Arc<ClusterImage> {
        read(&self.state).image.clone()
    }

    /// The partition replica hosted here, if any.
    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        let state = read(&self.state);
        let partitions = state.partitions.get(topic)?;
        usize::try_from(index)
            .ok()
            .and_then(|i| partitions.get(i))
            .cloned()
            .flatten()
    }

    /// The partition if this node leads it; else the error a client gets: UNKNOWN_TOPIC_OR_PARTITION
    /// for a topic or index that does not exist, NOT_LEADER_OR_FOLLOWER for one led elsewhere.
    pub fn leader_partition(&self, topic: &str, index: i32) -> Result<Arc<Partition>, i16> {
        match self.partition(topic, index) {
            Some(p) if p.is_leader() => Ok(p),
            Some(_) => Err(ResponseError::NotLeaderOrFollower.code()),
            None => {
                let exists = self
                    .image()
                    .topics
                    .get(topic)
                    .is_some_and(|t| index >= 0 && (index as usize) < t.partitions.len());
                Err(if exists {
                    ResponseError::NotLeaderOrFollower.code()
                } else {
                    ResponseError::UnknownTopicOrPartition.code()
                })
            }
        }
    }

    /// Kafka's topic name rules.
    pub fn validate_topic_name(&self, name: &str) -> Result<(), AdminError> {
        let invalid = |why: String| AdminError::new(ResponseError::InvalidTopicException, why);
        if name.is_empty() {
            return Err(invalid("topic name is empty".into()));
        }
        if name == "." || name == ".." {
            return Err(invalid(format!("topic name cannot be '{name}'")));
        }
        if name.len() > MAX_TOPIC_NAME {
            return Err(invalid(format!(
                "topic name is {} characters, the limit is {MAX_TOPIC_NAME}",
                name.len()
            )));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(invalid(format!(
                "topic name '{name}' contains '{c}'; only ASCII letters, digits, '.', '_' and '-' are allowed"
            )));
        }
        Ok(())
    }

    /// Creates missing topics a client asked for, with the broker's defaults. Failures are
    /// logged; the caller reports the topics as still missing.
    pub async fn auto_create_topics(&self, names: &[String]) {
        for name in names {
            if self.validate_topic_name(name).is_err() || name.starts_with("__") {
                continue;
            }
            let spec = TopicSpec {
                name: name.clone(),
                num_partitions: -1,
                replication_factor: -1,
                assignments: Vec::new(),
                configs: BTreeMap::new(),
            };
            match self.create_topic(spec, false).await {
                Ok(_) => info!(topic = %name, "auto-created topic"),
                Err(e) if e.code == ResponseError::TopicAlreadyExists.code() => {}
                Err(e) => warn!(topic = %name, "auto-creation failed: {}", e.message),
            }
        }
    }

    /// Creates an internal topic if it does not exist yet.
    pub async fn ensure_internal_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<(), AdminError> {
        if self.image().topics.contains_key(name) {
            return Ok(());
        }
        let _guard = self.admin.lock().await;
        if self.image().topics.contains_key(name) {
            return Ok(());
        }
        let spec = TopicSpec {
            name: name.to_string(),
            num_partitions: partitions,
            replication_factor: self.config.offsets_topic_replication_factor,
            assignments: Vec::new(),
            configs,
        };
        match self.create_topic_locked(spec, false, true).await {
            // Another node created it first (nodes start together).
            Err(e) if e.code == ResponseError::TopicAlreadyExists.code() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// CreateTopics for one topic.
    pub async fn create_topic(
        &self,
        spec: TopicSpec,
        validate_only: bool,
    ) -> Result<CreatedTopic, AdminError> {
        let _guard = self.admin.lock().await;
        self.create_topic_locked(spec, validate_only, false).await
    }

    async fn create_topic_locked(
        &self,
        spec: TopicSpec,
        validate_only: bool,
        internal: bool,
    ) -> Result<CreatedTopic, AdminError> {
        self.validate_topic_name(&spec.name)?;
        if self.image().topics.contains_key(&spec.name) {
            return Err(AdminError::new(
                ResponseError::TopicAlreadyExists,
                format!("topic '{}' already exists", spec.name),
            ));
        }
        if !internal && spec.name == OFFSETS_TOPIC {
            return Err(AdminError::new(
                ResponseError::InvalidRequest,
                format!("'{OFFSETS_TOPIC}' is an internal topic the broker creates itself"),
            ));
        }
        let (num_partitions, replication_factor) = if spec.assignments.is_empty() {
            let n = if spec.num_partitions == -1 {
                self.config.num_partitions
            } else {
                spec.num_partitions
            };
            let rf = if spec.replication_factor == -1 {
                self.config.default_replication_factor
            } else {
                spec.replication_factor
            };
            if n <= 0 {
                return Err(AdminError::new(
                    ResponseError::InvalidPartitions,
                    format!("number of partitions must be larger than 0, got {n}"),
                ));
            }
            if rf <= 0 {
                return Err(AdminError::new(
                    ResponseError::InvalidReplicationFactor,
                    format!("replication factor must be larger than 0, got {rf}"),
                ));
            }
            let brokers = self.image().brokers.len() as i16;
            if rf > brokers {
                return Err(AdminError::new(
                    ResponseError::InvalidReplicationFactor,
                    format!(
                        "replication factor {rf} is larger than the {brokers} available broker(s)"
                    ),
                ));
            }
            (n, rf)
        } else {
            if spec.num_partitions != -1 || spec.replication_factor != -1 {
                return Err(AdminError::new(
                    ResponseError::InvalidRequest,
                    "give either replica assignments or partitions and replication factor, not both",
                ));
            }
            self.check_assignments(
                spec.assignments.iter().map(|(_, r)| r.as_slice()),
                0,
                &spec.assignments.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            )?;
            let rf = spec.assignments[0].1.len() as i16;
            (spec.assignments.len() as i32, rf)
        };
        self.check_topic_configs(&spec.configs)?;
        let id = Uuid::new_v4();
        let created = CreatedTopic {
            id,
            num_partitions,
            replication_factor,
            configs: read(&self.log_defaults).describe(&spec.configs),
        };
        if validate_only {
            return Ok(created);
        }
        let record = TopicRecord {
            name: spec.name.clone(),
            id: *id.as_bytes(),
            partitions: num_partitions,
            replication_factor,
            configs: spec.configs.clone(),
        };
        let partitions = if spec.assignments.is_empty() || self.quorum.is_none() {
            self.place(0, num_partitions, replication_factor)
        } else {
            let mut a = spec.assignments.clone();
            a.sort_by_key(|(p, _)| *p);
            a.into_iter()
                .map(|(index, replicas)| PartitionInfo {
                    index,
                    leader: -1,
                    leader_epoch: -1,
                    isr: replicas.clone(),
                    replicas,
                })
                .collect()
        };
        let topic = TopicInfo {
            internal,
            partitions,
            ..topic_info(&record, self.config.node_id)
        };
        self.commit(
            move |store| store.put_topic(&record),
            MetadataCommand::CreateTopic(topic),
        )
        .await?;
        if self.image().topics.get(&spec.name).map(|t| t.id) != Some(id) {
            // Another node's creation of the same name was committed first.
            return Err(AdminError::new(
                ResponseError::TopicAlreadyExists,
                format!("topic '{}' already exists", spec.name),
            ));
        }
        info!(topic = %spec.name, partitions = num_partitions, "created topic");
        Ok(created)
    }

    /// Replicas must be distinct live brokers, the same count for every partition, and
    /// partitions numbered from `first` without gaps.
    fn check_assignments<'a>(
        &self,
        replicas: impl Iterator<Item = &'a [i32]>,
        first: i32,
        indexes: &[i32],
    ) -> Result<(), AdminError> {
        let bad = |m: String| AdminError::new(ResponseError::InvalidReplicaAssignment, m);
        let image = self.image();
        let mut expected_len = None;
        for (i, r) in replicas.enumerate() {
            if r.is_empty() {
                return Err(bad(format!(
                    "partition {} has no replicas",
                    first + i as i32
                )));
            }
            if *expected_len.get_or_insert(r.len()) != r.len() {
                return Err(bad(
                    "all partitions must have the same number of replicas".into()
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for b in r {
                if !image.brokers.contains_key(b) {
                    return Err(bad(format!("broker {b} is not a live broker")));
                }
                if !seen.insert(*b) {
                    return Err(bad(format!("broker {b} appears twice in one partition")));
                }
            }
        }
        let mut sorted = indexes.to_vec();
        sorted.sort_unstable();
        if sorted
            .iter()
            .enumerate()
            .any(|(i, p)| *p != first + i as i32)
        {
            return Err(bad(format!(
                "partition indexes must run from {first} without gaps"
            )));
        }
        Ok(())
    }

    fn check_topic_configs(&self, configs: &BTreeMap<String, String>) -> Result<(), AdminError> {
        read(&self.log_defaults)
            .log_config(configs)
            .map_err(|e| AdminError::new(ResponseError::InvalidConfig, e.to_string()))?;
        if let Some(codec) = configs.get("compression.type")
            && codec != "producer"
        {
            return Err(AdminError::new(
                ResponseError::InvalidConfig,
                format!(
                    "compression.type={codec} would need recompressing every batch; Sluice stores batches as produced (compression.type=producer)"
                ),
            ));
        }
        Ok(())
    }

    /// DeleteTopics for one topic. Returns its id.
    pub async fn delete_topic(&self, name: &str) -> Result<Uuid, AdminError> {
        if !self.config.delete_topic_enable {
            return Err(AdminError::new(
                ResponseError::TopicDeletionDisabled,
                "delete.topic.enable is false on this broker",
            ));
        }
        let _guard = self.admin.lock().await;
        let topic = self.existing(name)?;
        if topic.internal {
            return Err(AdminError::new(
                ResponseError::InvalidTopicException,
                format!("'{name}' is an internal topic and cannot be deleted"),
            ));
        }
        let owned = name.to_string();
        self.commit(
            move |store| store.delete_topic(&owned).map(|_| ()),
            MetadataCommand::DeleteTopic {
                name: name.to_string(),
            },
        )
        .await?;
        info!(topic = %name, "deleted topic");
        Ok(topic.id)
    }

    /// CreatePartitions: grows a topic to `total` partitions.
    pub async fn create_partitions(
        &self,
        name: &str,
        total: i32,
        assignments: Option<Vec<Vec<i32>>>,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        let _guard = self.admin.lock().await;
        let topic = self.existing(name)?;
        let current = topic.partitions.len() as i32;
        if total <= current {
            return Err(AdminError::new(
                ResponseError::InvalidPartitions,
                format!(
                    "topic '{name}' has {current} partitions; the new count must be larger, got {total}"
                ),
            ));
        }
        let rf = topic.replication_factor() as usize;
        let new: Vec<PartitionInfo> = match assignments {
            Some(a) => {
                if a.len() as i32 != total - current {
                    return Err(AdminError::new(
                        ResponseError::InvalidReplicaAssignment,
                        format!(
                            "{} assignments given for {} new partitions",
                            a.len(),
                            total - current
                        ),
                    ));
                }
                if a.iter().any(|r| r.len() != rf) {
                    return Err(AdminError::new(
                        ResponseError::InvalidReplicaAssignment,
                        format!("every new partition needs {rf} replicas, as the topic has"),
                    ));
                }
                let indexes: Vec<i32> = (current..total).collect();
                self.check_assignments(a.iter().map(Vec::as_slice), current, &indexes)?;
                a.into_iter()
                    .zip(current..)
                    .map(|(replicas, index)| PartitionInfo {
                        index,
                        // A replicated partition has no leader until its group elects one.
                        leader: if self.quorum.is_some() {
                            -1
                        } else {
                            replicas[0]
                        },
                        leader_epoch: if self.quorum.is_some() { -1 } else { 0 },
                        isr: replicas.clone(),
                        replicas,
                    })
                    .collect()
            }
            None => self.place(current, total - current, rf as i16),
        };
        if validate_only {
            return Ok(());
        }
        let mut record = self.record_of(&topic);
        record.partitions = total;
        self.commit(
            move |store| store.put_topic(&record),
            MetadataCommand::CreatePartitions {
                name: name.to_string(),
                partitions: new,
            },
        )
        .await?;
        info!(topic = %name, from = current, to = total, "added partitions");
        Ok(())
    }

    /// The topic's stored overrides.
    pub fn topic_overrides(&self, name: &str) -> Result<BTreeMap<String, String>, AdminError> {
        Ok(self.existing(name)?.configs.clone())
    }

    /// Replaces a topic's overrides.
    pub async fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        let _guard = self.admin.lock().await;
        let topic = self.existing(name)?;
        self.check_topic_configs(&configs)?;
        if validate_only {
            return Ok(());
        }
        let mut record = self.record_of(&topic);
        record.configs = configs.clone();
        self.commit(
            move |store| store.put_topic(&record),
            MetadataCommand::SetTopicConfigs {
                name: name.to_string(),
                configs,
            },
        )
        .await
    }

    /// Every topic config with its effective value.
    pub fn describe_topic_configs(&self, name: &str) -> Result<Vec<ConfigView>, AdminError> {
        let topic = self.existing(name)?;
        let defaults = read(&self.log_defaults);
        Ok(defaults
            .describe(&topic.configs)
            .into_iter()
            .map(|e| {
                let def = topic_config(e.name);
                let mut synonyms =
                    vec![(e.name.to_string(), e.value.clone(), e.source.kafka_code())];
                if e.source == ConfigSource::TopicOverride
                    && let Some(def) = def
                {
                    let (value, source) = defaults.topic_default(def);
                    let name = def.broker_keys.first().map_or(def.name, |(k, _)| *k);
                    synonyms.push((name.to_string(), value, source.kafka_code()));
                }
                ConfigView {
                    name: e.name.to_string(),
                    value: e.value,
                    source: e.source.kafka_code(),
                    read_only: false,
                    config_type: e.kind.kafka_code(),
                    doc: e.doc,
                    synonyms,
                }
            })
            .collect())
    }

    /// Runtime broker-level overrides (cluster-wide dynamic defaults).
    pub fn broker_overrides(&self) -> BTreeMap<String, String> {
        self.image().broker_configs.clone()
    }

    /// Every broker config with its effective value: node settings (read-only at runtime) and
    /// the broker-level defaults of topic configs (dynamic).
    pub fn describe_broker_configs(&self) -> Vec<ConfigView> {
        let dynamic = self.image().broker_configs.clone();
        let defaults = read(&self.log_defaults);
        let mut out: Vec<ConfigView> = self
            .config
            .describe_node_keys()
            .into_iter()
            .map(|e| {
                let source = if e.overridden {
                    ConfigSource::StaticBroker.kafka_code()
                } else {
                    ConfigSource::Default.kafka_code()
                };
                ConfigView {
                    source,
                    synonyms: vec![(e.name.clone(), e.value.clone(), source)],
                    name: e.name,
                    value: e.value,
                    read_only: true,
                    config_type: ConfigType::String.kafka_code(),
                    doc: e.doc,
                }
            })
            .collect();
        out.extend(
            self.config
                .log
                .describe_startup_keys()
                .into_iter()
                .map(|k| {
                    let source = if k.overridden {
                        ConfigSource::StaticBroker.kafka_code()
                    } else {
                        ConfigSource::Default.kafka_code()
                    };
                    ConfigView {
                        name: k.name.to_string(),
                        synonyms: vec![(k.name.to_string(), k.value.clone(), source)],
                        value: k.value,
                        source,
                        read_only: true,
                        config_type: k.kind.kafka_code(),
                        doc: k.doc,
                    }
                }),
        );
        for def in TOPIC_CONFIGS {
            let Some((key, _)) = def.broker_keys.first() else {
                continue;
            };
            let (value, source) = defaults.topic_default(def);
            let source = if dynamic.contains_key(*key) {
                DYNAMIC_DEFAULT_BROKER_CONFIG
            } else {
                source.kafka_code()
            };
            out.push(ConfigView {
                name: key.to_string(),
                synonyms: vec![(key.to_string(), value.clone(), source)],
                value,
                source,
                read_only: false,
                config_type: def.kind.kafka_code(),
                doc: def.doc,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Replaces the runtime broker-level overrides and re-derives every topic's log settings.
    pub async fn set_broker_configs(
        &self,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        let _guard = self.admin.lock().await;
        let mut defaults = self.config.log.clone();
        for (k, v) in &configs {
            // The storage layer reads its own keys (log.cleaner.*, ...) only at start-up.
            if BrokerLogConfig::is_startup_key(k)
                || self
                    .config
                    .describe_node_keys()
                    .iter()
                    .any(|e| &e.name == k)
            {
                return Err(AdminError::new(
                    ResponseError::InvalidRequest,
                    format!(
                        "'{k}' cannot be changed at runtime; restart the node with --override {k}=..."
                    ),
                ));
            }
            defaults
                .set(k, v)
                .map_err(|e| AdminError::new(ResponseError::InvalidConfig, e.to_string()))?;
        }
        if validate_only {
            return Ok(());
        }
        let encoded = encode_configs(&configs);
        if self.quorum.is_none() {
            self.persist(move |store| store.put(NODE_PREFIX, DYNAMIC_BROKER_CONFIGS, &encoded))
                .await?;
            *write(&self.log_defaults) = defaults;
            return self.apply(MetadataCommand::SetBrokerConfigs { configs });
        }
        // Reconciling re-derives every node's log defaults from the committed configs.
        drop(defaults);
        self.commit(|_| Ok(()), MetadataCommand::SetBrokerConfigs { configs })
            .await
    }

    /// True when `key` of a resource type holds a comma-separated list.
    pub fn is_list_config(&self, resource_type: i8, key: &str) -> bool {
        let name = if resource_type == 2 {
            Some(key)
        } else {
            TOPIC_CONFIGS
                .iter()
                .find(|d| d.broker_keys.iter().any(|(k, _)| *k == key))
                .map(|d| d.name)
        };
        name.and_then(topic_config)
            .is_some_and(|d| d.kind == ConfigType::List)
    }

    /// The effective value of a key at the broker level (for APPEND/SUBTRACT on unset keys).
    pub fn effective_value(&self, resource_type: i8, key: &str) -> String {
        let defaults = read(&self.log_defaults);
        let def = if resource_type == 2 {
            topic_config(key)
        } else {
            TOPIC_CONFIGS
                .iter()
                .find(|d| d.broker_keys.iter().any(|(k, _)| *k == key))
        };
        def.map(|d| defaults.topic_default(d).0).unwrap_or_default()
    }

    /// A fresh producer id for an idempotent producer.
    pub async fn allocate_producer_id(&self) -> Result<i64, AdminError> {
        if let Some(id) = self.take_producer_id() {
            return Ok(id);
        }
        let _guard = self.admin.lock().await;
        // Another request may have reserved a block while this one waited.
        if let Some(id) = self.take_producer_id() {
            return Ok(id);
        }
        let first = match &self.quorum {
            None => {
                self.persist(|store| store.allocate_producer_ids(PRODUCER_ID_BLOCK))
                    .await?
            }
            Some(q) => {
                let node = self.config.node_id;
                q.metadata
                    .propose(&MetadataCommand::ReserveProducerIds {
                        node,
                        count: PRODUCER_ID_BLOCK,
                    })
                    .await
                    .map_err(metadata_error)?;
                // Reservations by this node are serialized by the admin lock, so the last
                // block recorded for it is the one just committed.
                q.metadata
                    .image()
                    .producer_id_blocks
                    .get(&node)
                    .map(|(first, _)| *first)
                    .ok_or_else(|| {
                        AdminError::new(
                            ResponseError::UnknownServerError,
                            "a producer-id block was committed but is not in the image",
                        )
                    })?
            }
        };
        let mut block = lock(&self.producer_ids);
        block.next = first + 1;
        block.end = first + PRODUCER_ID_BLOCK;
        Ok(first)
    }

    fn take_producer_id(&self) -> Option<i64> {
        let mut block = lock(&self.producer_ids);
        (block.next < block.end).then(|| {
            block.next += 1;
            block.next - 1
        })
    }

    /// Closes every log cleanly (flush and checkpoint) so the next start needs no recovery.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        for task in lock(&self.background).drain(..) {
            task.abort();
        }
        if let Some(q) = &self.quorum {
            let hosted: Vec<Arc<Partition>> = read(&self.state)
                .partitions
                .values()
                .flatten()
                .flatten()
                .cloned()
                .collect();
            for p in hosted {
                if let Some(replica) = p.replica() {
                    q.stop_replica(p.topic(), p.index(), replica).await;
                }
            }
            q.shutdown().await;
        }
        let logs = self.logs.clone();
        tokio::task::spawn_blocking(move || logs.shutdown())
            .await
            .context("shutdown task panicked")?
            .context("clean shutdown of the logs failed")?;
        Ok(())
    }

    fn existing(&self, name: &str) -> Result<Arc<TopicInfo>, AdminError> {
        self.image().topics.get(name).cloned().ok_or_else(|| {
            AdminError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("topic '{name}' does not exist"),
            )
        })
    }

    fn record_of(&self, topic: &TopicInfo) -> TopicRecord {
        TopicRecord {
            name: topic.name.clone(),
            id: *topic.id.as_bytes(),
            partitions: topic.partitions.len() as i32,
            replication_factor: topic.replication_factor(),
            configs: topic.configs.clone(),
        }
    }

    /// Runs a metadata-store write off the async threads (sled flushes to disk).
    async fn persist<T: Send + 'static>(
        &self,
        f: impl FnOnce(&MetadataStore) -> Result<T, sluice_storage::StorageError> + Send + 'static,
    ) -> Result<T, AdminError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(AdminError::storage)?
            .map_err(AdminError::storage)
    }

    /// Applies a committed command: the image first, then the logs it implies.
    fn apply(&self, command: MetadataCommand) -> Result<(), AdminError> {
        let defaults = read(&self.log_defaults).clone();
        let mut state = write(&self.state);
        let mut image = (*state.image).clone();
        image.apply(&command);
        match &command {
            MetadataCommand::CreateTopic(topic) => {
                let log_config = defaults
                    .log_config(&topic.configs)
                    .map_err(AdminError::storage)?;
                let mut hosted = Vec::new();
                for p in &topic.partitions {
                    let log = self
                        .logs
                        .create(&topic.name, p.index, log_config.clone())
                        .map_err(AdminError::storage)?;
                    let partition =
                        Arc::new(Partition::new(&topic.name, p.index, log, p.leader_epoch));
                    partition.set_min_insync_replicas(min_insync(&defaults, &topic.configs));
                    hosted.push(Some(partition));
                }
                state.partitions.insert(topic.name.clone(), hosted);
            }
            MetadataCommand::DeleteTopic { name } => {
                state.partitions.remove(name);
                self.logs.delete_topic(name).map_err(AdminError::storage)?;
            }
            MetadataCommand::CreatePartitions { name, partitions } => {
                let configs = image
                    .topics
                    .get(name)
                    .map(|t| t.configs.clone())
                    .unwrap_or_default();
                let log_config = defaults.log_config(&configs).map_err(AdminError::storage)?;
                for p in partitions {
                    let log = self
                        .logs
                        .create(name, p.index, log_config.clone())
                        .map_err(AdminError::storage)?;
                    let partition = Arc::new(Partition::new(name, p.index, log, p.leader_epoch));
                    partition.set_min_insync_replicas(min_insync(&defaults, &configs));
                    state
                        .partitions
                        .entry(name.clone())
                        .or_default()
                        .push(Some(partition));
                }
            }
            MetadataCommand::SetTopicConfigs { name, configs } => {
                let log_config = defaults.log_config(configs).map_err(AdminError::storage)?;
                for p in state.partitions.get(name).into_iter().flatten().flatten() {
                    p.log().set_config(log_config.clone());
                    p.set_min_insync_replicas(min_insync(&defaults, configs));
                }
            }
            // A single node names itself and hands out producer ids from its store.
            // A single node names itself, hands out producer ids from its store and leads
            // every partition itself.
            MetadataCommand::InitCluster { .. }
            | MetadataCommand::ReserveProducerIds { .. }
            | MetadataCommand::SetPartitionState { .. } => {}
            MetadataCommand::SetBrokerConfigs { .. } => {
                for (name, hosted) in &state.partitions {
                    let configs = image
                        .topics
                        .get(name)
                        .map(|t| t.configs.clone())
                        .unwrap_or_default();
                    if let Ok(log_config) = defaults.log_config(&configs) {
                        for p in hosted.iter().flatten() {
                            p.log().set_config(log_config.clone());
                            p.set_min_insync_replicas(min_insync(&defaults, &configs));
                        }
                    }
                }
            }
        }
        state.image = Arc::new(image);
        Ok(())
    }
}

/// Opens the node's sled store in `<data>/meta/sled`: one level down, so that a damaged copy
/// moved aside next to it can never be mistaken for a partition directory.
fn open_store(config: &BrokerConfig) -> anyhow::Result<Arc<MetadataStore>> {
    let meta_dir = config.data_dir.join("meta");
    std::fs::create_dir_all(&meta_dir)
        .with_context(|| format!("cannot create {}", meta_dir.display()))?;
    Ok(Arc::new(
        MetadataStore::open(&meta_dir.join("sled")).context("cannot open the metadata store")?,
    ))
}

/// Follows the metadata group's image, reconciling this node with every change (a failed
/// reconciliation is retried after a second, or at the next change).
async fn follow_image(cluster: Arc<Cluster>) {
    let Some(quorum) = &cluster.quorum else {
        return;
    };
    let mut changes = quorum.metadata.subscribe();
    loop {
        if let Err(e) = cluster.reconcile().await {
            warn!("applying the cluster image failed: {}; retrying", e.message);
            let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
            continue;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Node ids taking one from each rack in turn (racks in name order, nodes in the order given).
fn rack_alternating(peers: &[crate::config::PeerConfig]) -> Vec<i32> {
    let mut racks: BTreeMap<Option<String>, Vec<i32>> = BTreeMap::new();
    for p in peers {
        racks.entry(p.rack.clone()).or_default().push(p.node_id);
    }
    let mut order = Vec::new();
    for round in 0.. {
        let before = order.len();
        for ids in racks.values() {
            if let Some(id) = ids.get(round) {
                order.push(*id);
            }
        }
        if order.len() == before {
            break;
        }
    }
    order
}

/// Partition `first + k` gets the `rf` brokers of `order` from position `start + k` on.
fn assign(order: &[i32], start: usize, first: i32, count: i32, rf: i16) -> Vec<PartitionInfo> {
    let n = order.len().max(1);
    (0..count)
        .map(|k| {
            let replicas: Vec<i32> = (0..usize::try_from(rf).unwrap_or(0))
                .filter_map(|j| order.get((start + k as usize + j) % n).copied())
                .collect();
            // No leader until the group elects one and the winner publishes it: clients get
            // LEADER_NOT_AVAILABLE and ask again, rather than a guess.
            PartitionInfo {
                index: first + k,
                leader: -1,
                leader_epoch: -1,
                isr: replicas.clone(),
                replicas,
            }
        })
        .collect()
}

/// How often a leader compares its partitions' live state with the image.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// Publishes, for every partition this node leads, its leadership and ISR to the metadata
/// group when they differ from the image (Kafka's AlterPartition), so every node's Metadata
/// answers the same leader, epoch and ISR. The ISR depends on time (followers age out of it),
/// so it is re-evaluated every [`PUBLISH_EVERY`].
async fn publish_partition_states(cluster: Arc<Cluster>) {
    let Some(quorum) = &cluster.quorum else {
        return;
    };
    let mut failing = false;
    loop {
        tokio::time::sleep(PUBLISH_EVERY).await;
        let image = cluster.image();
        let changes: Vec<MetadataCommand> = image
            .topics
            .values()
            .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
            .filter_map(|(t, p)| cluster.state_to_publish(t, p))
            .collect();
        for change in changes {
            match quorum.metadata.propose(&change).await {
                Ok(()) => failing = false,
                Err(e) => {
                    // The controller is being elected or unreachable: retried next round.
                    if !failing {
                        warn!(error = %e, "cannot publish partition leadership and ISR; retrying");
                    }
                    failing = true;
                    break;
                }
            }
        }
    }
}

fn metadata_error(e: MetadataError) -> AdminError {
    match e {
        MetadataError::NotController { controller } => AdminError::new(
            ResponseError::NotController,
            match controller {
                Some(c) => format!("the controller is node {c}; ask it"),
                None => "no controller right now (an election is in progress); retry".into(),
            },
        ),
        MetadataError::Failed(why) => AdminError::new(
            ResponseError::UnknownServerError,
            format!("the metadata change was not committed: {why}"),
        ),
    }
}

fn single_replica(index: i32, node_id: i32) -> PartitionInfo {
    PartitionInfo {
        index,
        leader: node_id,
        leader_epoch: 0,
        replicas: vec![node_id],
        isr: vec![node_id],
    }
}

fn topic_info(record: &TopicRecord, node_id: i32) -> TopicInfo {
    TopicInfo {
        name: record.name.clone(),
        id: Uuid::from_bytes(record.id),
        partitions: (0..record.partitions)
            .map(|i| single_replica(i, node_id))
            .collect(),
        configs: record.configs.clone(),
        internal: record.name.starts_with("__"),
    }
}

fn min_insync(defaults: &BrokerLogConfig, configs: &BTreeMap<String, String>) -> i32 {
    let value = configs
        .get("min.insync.replicas")
        .cloned()
        .unwrap_or_else(|| {
            topic_config("min.insync.replicas")
                .map(|d| defaults.topic_default(d).0)
                .unwrap_or_default()
        });
    value.parse().unwrap_or(1)
}

fn encode_configs(configs: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = String::new();
    for (k, v) in configs {
        out.push_str(k);
        out.push('=');
        out.push_str(v);
        out.push('\n');
    }
    out.into_bytes()
}

fn load_dynamic_configs(store: &MetadataStore) -> anyhow::Result<BTreeMap<String, String>> {
    let Some(raw) = store.get(NODE_PREFIX, DYNAMIC_BROKER_CONFIGS)? else {
        return Ok(BTreeMap::new());
    };
    let text = String::from_utf8(raw).context("stored dynamic broker configs are not UTF-8")?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerConfig;

    fn peer(id: i32, rack: &str) -> PeerConfig {
        PeerConfig::parse(&format!("{id}=h{id}:9092/127.0.0.1:{}/{rack}", 9000 + id)).unwrap()
    }

    #[test]
    fn replicas_of_a_partition_sit_in_different_racks_and_leaders_spread() {
        // Two nodes per zone, listed zone by zone.
        let peers = [
            peer(1, "az-a"),
            peer(2, "az-a"),
            peer(3, "az-b"),
            peer(4, "az-b"),
            peer(5, "az-c"),
            peer(6, "az-c"),
        ];
        let order = rack_alternating(&peers);
        assert_eq!(order, vec![1, 3, 5, 2, 4, 6]);
        let rack = |id: i32| peers.iter().find(|p| p.node_id == id).unwrap().rack.clone();
        let placed = assign(&order, 4, 0, 12, 3);
        let mut leaders = BTreeMap::new();
        for (k, p) in placed.iter().enumerate() {
            assert_eq!(p.index, k as i32);
            assert_eq!(p.replicas.len(), 3);
            let racks: std::collections::BTreeSet<_> =
                p.replicas.iter().map(|r| rack(*r)).collect();
            assert_eq!(racks.len(), 3, "partition {k}: {:?}", p.replicas);
            // Preferred leaders (the first replica) spread evenly.
            *leaders.entry(p.replicas[0]).or_insert(0) += 1;
        }
        assert_eq!(leaders.len(), 6);
        assert!(leaders.values().all(|n| *n == 2), "{leaders:?}");
    }
}
