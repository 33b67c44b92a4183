//! Broker configuration: command-line flags plus `--override KEY=VALUE` with Kafka's names.
//!
//! Keys are routed to their owner: log keys (`log.*`, `message.max.bytes`, ...) to the storage
//! crate's catalog, group keys to the coordinator's, the rest are the node's own (below). A key
//! nobody knows is a start-up error, not a silent no-op: an operator's typo must be seen.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use sluice_storage::config::BrokerLogConfig;

/// Node-level keys: (name, default, description).
const NODE_KEYS: &[(&str, &str, &str)] = &[
    (
        "auto.create.topics.enable",
        "true",
        "Create a topic when a client asks for metadata of or produces to a missing one.",
    ),
    (
        "num.partitions",
        "1",
        "Partitions of an auto-created topic, and of CreateTopics with -1.",
    ),
    (
        "default.replication.factor",
        "1",
        "Replication factor of auto-created topics and of CreateTopics with -1.",
    ),
    (
        "socket.request.max.bytes",
        "104857600",
        "Largest request frame accepted; larger frames close the connection.",
    ),
    (
        "queued.max.request.bytes",
        "536870912",
        "Request bytes held in memory at once across all connections; readers wait beyond it.",
    ),
    (
        "max.connections",
        "10000",
        "Client connections accepted at once; more are refused.",
    ),
    (
        "connections.max.idle.ms",
        "600000",
        "Close a client connection idle for this long.",
    ),
    (
        "offsets.topic.num.partitions",
        "50",
        "Partitions of __consumer_offsets (fixed when it is first created).",
    ),
    (
        "offsets.topic.replication.factor",
        "1",
        "Replication factor of __consumer_offsets.",
    ),
    (
        "offsets.topic.segment.bytes",
        "104857600",
        "segment.bytes of __consumer_offsets.",
    ),
    ("delete.topic.enable", "true", "Allow DeleteTopics."),
    (
        "replica.lag.time.max.ms",
        "30000",
        "A follower that has not caught up with the leader's log end of this long ago, or not answered for this long, leaves the ISR.",
    ),
    (
        "fetch.max.bytes",
        "57671680",
        "Upper bound on one Fetch response, whatever the client asks.",
    ),
];

/// Group coordinator keys with their defaults.
const GROUP_KEYS: &[(&str, &str, &str)] = &[
    (
        "group.initial.rebalance.delay.ms",
        "3000",
        "Wait this long for more members when an empty group gets its first one.",
    ),
    (
        "group.min.session.timeout.ms",
        "6000",
        "Smallest session timeout a member may ask for.",
    ),
    (
        "group.max.session.timeout.ms",
        "1800000",
        "Largest session timeout a member may ask for.",
    ),
    (
        "group.max.size",
        "2147483647",
        "Members allowed in one group.",
    ),
    (
        "offsets.retention.minutes",
        "10080",
        "Keep committed offsets of an empty group this long.",
    ),
    (
        "offsets.retention.check.interval.ms",
        "600000",
        "How often expired offsets are removed.",
    ),
    (
        "offset.metadata.max.bytes",
        "4096",
        "Largest metadata string of a committed offset.",
    ),
];

/// Everything the node needs to start.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `node.id`.
    pub node_id: i32,
    /// `broker.rack`.
    pub rack: Option<String>,
    /// Listener address.
    pub listen: String,
    /// Host returned in Metadata.
    pub advertise_host: String,
    /// Port returned in Metadata (0: the bound port).
    pub advertise_port: u16,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Log settings and their broker-level defaults for topics.
    pub log: BrokerLogConfig,
    /// Every override as given, for DescribeConfigs on the broker.
    pub overrides: BTreeMap<String, String>,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `num.partitions`.
    pub num_partitions: i32,
    /// `default.replication.factor`.
    pub default_replication_factor: i16,
    /// `socket.request.max.bytes`.
    pub socket_request_max_bytes: usize,
    /// `queued.max.request.bytes`.
    pub queued_max_request_bytes: usize,
    /// `max.connections`.
    pub max_connections: usize,
    /// `connections.max.idle.ms`.
    pub connections_max_idle_ms: u64,
    /// `offsets.topic.num.partitions`.
    pub offsets_topic_num_partitions: i32,
    /// `offsets.topic.segment.bytes`.
    pub offsets_topic_segment_bytes: i64,
    /// `delete.topic.enable`.
    pub delete_topic_enable: bool,
    /// `fetch.max.bytes`.
    pub fetch_max_bytes: usize,
    /// `offsets.topic.replication.factor`.
    pub offsets_topic_replication_factor: i16,
    /// `replica.lag.time.max.ms`.
    pub replica_lag_time_max_ms: u64,
    /// Every node of the cluster, this one included; empty for a single-node cluster without
    /// Raft (the embedded default).
    pub peers: Vec<PeerConfig>,
}

/// One node of a cluster, as `--peer ID=KAFKA_HOST:PORT/RAFT_HOST:PORT[/RACK]` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// `node.id`.
    pub node_id: i32,
    /// The Kafka address clients are told (Metadata) and this node listens on.
    pub kafka_host: String,
    /// Its port.
    pub kafka_port: u16,
    /// The node-to-node (Raft) address, `host:port`; resolved whenever a connection is made.
    pub raft_addr: String,
    /// `broker.rack`.
    pub rack: Option<String>,
}

impl PeerConfig {
    /// Parses `ID=KAFKA_HOST:PORT/RAFT_HOST:PORT[/RACK]`.
    pub fn parse(spec: &str) -> anyhow::Result<PeerConfig> {
        let usage = || format!("--peer '{spec}' is not ID=KAFKA_HOST:PORT/RAFT_HOST:PORT[/RACK]");
        let (id, rest) = spec.split_once('=').with_context(usage)?;
        let node_id: i32 = id.trim().parse().ok().with_context(usage)?;
        let mut parts = rest.split('/');
        let kafka = parts.next().with_context(usage)?;
        let raft = parts.next().with_context(usage)?;
        let rack = parts.next().map(str::to_string).filter(|r| !r.is_empty());
        if parts.next().is_some() || node_id < 0 {
            bail!(usage());
        }
        let (kafka_host, kafka_port) = split_host_port(kafka).with_context(usage)?;
        split_host_port(raft).with_context(usage)?;
        let raft_addr = raft.to_string();
        Ok(PeerConfig {
            node_id,
            kafka_host,
            kafka_port,
            raft_addr,
            rack,
        })
    }
}

/// One broker config as DescribeConfigs lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfigEntry {
    /// Kafka name.
    pub name: String,
    /// Effective value.
    pub value: String,
    /// True when set with `--override` (STATIC_BROKER_CONFIG), else DEFAULT_CONFIG.
    pub overridden: bool,
    /// What it does.
    pub doc: &'static str,
}

impl BrokerConfig {
    /// Builds the configuration from flags, refusing unknown keys and bad values.
    pub fn from_args(
        node_id: i32,
        listen: &str,
        advertise: Option<&str>,
        rack: Option<String>,
        data_dir: PathBuf,
        overrides: &[String],
    ) -> anyhow::Result<Self> {
        let mut map = BTreeMap::new();
        for item in overrides {
            let Some((key, value)) = item.split_once('=') else {
                bail!("--override '{item}' is not KEY=VALUE");
            };
            map.insert(key.trim().to_string(), value.trim().to_string());
        }
        Self::new(node_id, listen, advertise, rack, data_dir, map)
    }

    /// Builds the configuration from an override map.
    pub fn new(
        node_id: i32,
        listen: &str,
        advertise: Option<&str>,
        rack: Option<String>,
        data_dir: PathBuf,
        overrides: BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        if node_id < 0 {
            bail!("--node-id must be >= 0, got {node_id}");
        }
        let (advertise_host, advertise_port) = split_host_port(advertise.unwrap_or(listen))
            .with_context(|| "--advertise / --listen must be HOST:PORT")?;
        let mut log = BrokerLogConfig::default();
        for (key, value) in &overrides {
            let known = NODE_KEYS.iter().chain(GROUP_KEYS).any(|(k, ..)| k == key);
            if known {
                continue;
            }
            log.set(key, value)
                .map_err(|e| anyhow::anyhow!("--override {key}={value}: {e}"))?;
        }
        let get = |key: &str| -> &str {
            overrides.get(key).map(String::as_str).unwrap_or_else(|| {
                NODE_KEYS
                    .iter()
                    .chain(GROUP_KEYS)
                    .find(|(k, ..)| *k == key)
                    .map_or("", |(_, d, _)| d)
            })
        };
        let config = BrokerConfig {
            node_id,
            rack,
            listen: listen.to_string(),
            advertise_host,
            advertise_port,
            data_dir,
            auto_create_topics: parse_bool(
                "auto.create.topics.enable",
                get("auto.create.topics.enable"),
            )?,
            num_partitions: parse_int("num.partitions", get("num.partitions"), 1, 1_000_000)?
                as i32,
            default_replication_factor: parse_int(
                "default.replication.factor",
                get("default.replication.factor"),
                1,
                i16::MAX as i64,
            )? as i16,
            socket_request_max_bytes: parse_int(
                "socket.request.max.bytes",
                get("socket.request.max.bytes"),
                1024,
                i32::MAX as i64,
            )? as usize,
            queued_max_request_bytes: parse_int(
                "queued.max.request.bytes",
                get("queued.max.request.bytes"),
                1024,
                i64::MAX / 2,
            )? as usize,
            max_connections: parse_int(
                "max.connections",
                get("max.connections"),
                1,
                i32::MAX as i64,
            )? as usize,
            connections_max_idle_ms: parse_int(
                "connections.max.idle.ms",
                get("connections.max.idle.ms"),
                1,
                i64::MAX,
            )? as u64,
            offsets_topic_num_partitions: parse_int(
                "offsets.topic.num.partitions",
                get("offsets.topic.num.partitions"),
                1,
                100_000,
            )? as i32,
            offsets_topic_segment_bytes: parse_int(
                "offsets.topic.segment.bytes",
                get("offsets.topic.segment.bytes"),
                14,
                i32::MAX as i64,
            )?,
            delete_topic_enable: parse_bool("delete.topic.enable", get("delete.topic.enable"))?,
            fetch_max_bytes: parse_int(
                "fetch.max.bytes",
                get("fetch.max.bytes"),
                1024,
                i32::MAX as i64,
            )? as usize,
            offsets_topic_replication_factor: parse_int(
                "offsets.topic.replication.factor",
                get("offsets.topic.replication.factor"),
                1,
                i16::MAX as i64,
            )? as i16,
            replica_lag_time_max_ms: parse_int(
                "replica.lag.time.max.ms",
                get("replica.lag.time.max.ms"),
                1,
                i64::MAX,
            )? as u64,
            log,
            overrides: overrides.clone(),
            peers: Vec::new(),
        };
        for (key, ..) in GROUP_KEYS {
            parse_int(key, get(key), 0, i64::MAX)?;
        }
        if config.queued_max_request_bytes < config.socket_request_max_bytes + 4 {
            bail!(
                "queued.max.request.bytes ({}) must hold at least one frame of socket.request.max.bytes ({})",
                config.queued_max_request_bytes,
                config.socket_request_max_bytes
            );
        }
        Ok(config)
    }

    /// Makes this node one of `peers` (its own entry included): its advertised address and
    /// rack come from its entry, and replication factors not set explicitly default to
    /// min(3, nodes), as a three-zone cluster expects.
    pub fn with_peers(mut self, peers: Vec<PeerConfig>) -> anyhow::Result<Self> {
        if peers.is_empty() {
            return Ok(self);
        }
        let mut ids = std::collections::BTreeSet::new();
        for p in &peers {
            if !ids.insert(p.node_id) {
                bail!("--peer lists node {} twice", p.node_id);
            }
        }
        let Some(me) = peers.iter().find(|p| p.node_id == self.node_id) else {
            bail!(
                "--peer must list this node (--node-id {}) too",
                self.node_id
            );
        };
        self.advertise_host = me.kafka_host.clone();
        self.advertise_port = me.kafka_port;
        if me.rack.is_some() {
            self.rack = me.rack.clone();
        }
        let default_rf = peers.len().min(3) as i16;
        if !self.overrides.contains_key("default.replication.factor") {
            self.default_replication_factor = default_rf;
        }
        if !self
            .overrides
            .contains_key("offsets.topic.replication.factor")
        {
            self.offsets_topic_replication_factor = default_rf;
        }
        self.peers = peers;
        Ok(self)
    }

    /// True when this node is one of several (Raft replication).
    pub fn is_clustered(&self) -> bool {
        !self.peers.is_empty()
    }

    /// A group-coordinator setting (always valid: checked at start-up).
    pub fn group_setting(&self, key: &str) -> i64 {
        let value = self.overrides.get(key).map(String::as_str).or_else(|| {
            GROUP_KEYS
                .iter()
                .find(|(k, ..)| *k == key)
                .map(|(_, d, _)| *d)
        });
        value.and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// The node's and the coordinator's keys with their effective values, for DescribeConfigs.
    pub fn describe_node_keys(&self) -> Vec<BrokerConfigEntry> {
        NODE_KEYS
            .iter()
            .chain(GROUP_KEYS)
            .map(|(name, default, doc)| BrokerConfigEntry {
                name: name.to_string(),
                value: match *name {
                    // A multi-node cluster defaults these to min(3, nodes).
                    "default.replication.factor" => self.default_replication_factor.to_string(),
                    "offsets.topic.replication.factor" => {
                        self.offsets_topic_replication_factor.to_string()
                    }
                    _ => self
                        .overrides
                        .get(*name)
                        .cloned()
                        .unwrap_or_else(|| default.to_string()),
                },
                overridden: self.overrides.contains_key(*name),
                doc,
            })
            .collect()
    }

    /// The address to bind, parsed.
    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listen
            .parse()
            .with_context(|| format!("--listen {} is not IP:PORT", self.listen))
    }
}

fn split_host_port(s: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("'{s}' has no port"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("'{port}' is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("'{s}' has no host");
    }
    Ok((host.to_string(), port))
}

fn parse_bool(key: &str, value: &str) -> anyhow::Result<bool> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => bail!("{key}={value}: expected true or false"),
    }
}

fn parse_int(key: &str, value: &str, min: i64, max: i64) -> anyhow::Result<i64> {
    let n: i64 = value
        .parse()
        .with_context(|| format!("{key}={value}: expected an integer"))?;
    if n < min || n > max {
        bail!("{key}={value}: must be between {min} and {max}");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {

    #[test]
    fn peers_parse_and_make_this_node_one_of_a_cluster() {
        let specs = [
            "1=kafka-1:9092/127.0.0.1:9093/az-a",
            "2=kafka-2:9092/127.0.0.2:9093/az-b",
            "3=kafka-3:9092/127.0.0.3:9093",
        ];
        let peers: Vec<PeerConfig> = specs
            .iter()
            .map(|s| PeerConfig::parse(s).unwrap())
            .collect();
        assert_eq!(peers[2].rack, None);
        assert_eq!(peers[1].raft_addr, "127.0.0.2:9093");
        let base = || {
            BrokerConfig::new(
                2,
                "0.0.0.0:9092",
                None,
                None,
                PathBuf::from("d"),
                BTreeMap::new(),
            )
            .unwrap()
        };
        let c = base().with_peers(peers.clone()).unwrap();
        assert!(c.is_clustered());
        assert_eq!(
            (c.advertise_host.as_str(), c.advertise_port),
            ("kafka-2", 9092)
        );
        assert_eq!(c.rack.as_deref(), Some("az-b"));
        assert_eq!(c.default_replication_factor, 3);
        assert_eq!(c.offsets_topic_replication_factor, 3);
        // An explicit setting wins over the cluster default.
        let explicit =
            BTreeMap::from([("default.replication.factor".to_string(), "2".to_string())]);
        let c = BrokerConfig::new(1, "0.0.0.0:9092", None, None, PathBuf::from("d"), explicit)
            .unwrap()
            .with_peers(peers.clone())
            .unwrap();
        assert_eq!(c.default_replication_factor, 2);
        // This node must be listed; ids must be distinct; specs must be whole.
        let err = BrokerConfig::new(
            7,
            "0.0.0.0:9092",
            None,
            None,
            PathBuf::from("d"),
            BTreeMap::new(),
        )
        .unwrap()
        .with_peers(peers.clone())
        .unwrap_err();
        assert!(err.to_string().contains("--node-id 7"), "{err}");
        let twice = vec![peers[0].clone(), peers[0].clone(), peers[1].clone()];
        assert!(base().with_peers(twice).is_err());
        for bad in [
            "x=h:1/127.0.0.1:2",
            "1=h:1",
            "1=h/127.0.0.1:2",
            "1=h:1/127.0.0.1:2/a/b",
            "-1=h:1/127.0.0.1:2",
        ] {
            assert!(PeerConfig::parse(bad).is_err(), "{bad} parsed");
        }
    }

    use super::*;

    fn config(overrides: &[&str]) -> anyhow::Result<BrokerConfig> {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        BrokerConfig::from_args(1, "127.0.0.1:9092", None, None, "d".into(), &o)
    }

    #[test]
    fn defaults_match_kafka_where_kafka_has_one() {
        let c = config(&[]).expect("defaults are valid");
        assert!(c.auto_create_topics);
        assert_eq!(c.num_partitions, 1);
        assert_eq!(c.socket_request_max_bytes, 104_857_600);
        assert_eq!(
            (c.advertise_host.as_str(), c.advertise_port),
            ("127.0.0.1", 9092)
        );
        assert_eq!(c.group_setting("group.initial.rebalance.delay.ms"), 3000);
        assert!(c.log.cleaner_enable());
        assert_eq!(c.log.cleaner_backoff_ms(), 15_000);
    }

    #[test]
    fn cleaner_overrides_reach_the_log_manager() {
        let c = config(&["log.cleaner.enable=false", "log.cleaner.backoff.ms=100"]).expect("valid");
        assert!(!c.log.cleaner_enable());
        assert_eq!(c.log.cleaner_backoff_ms(), 100);
        assert!(config(&["log.cleaner.enable=maybe"]).is_err());
        assert!(config(&["log.cleaner.backoff.ms=-1"]).is_err());
    }

    #[test]
    fn overrides_reach_their_owner() {
        let c =
            config(&["num.partitions=4", "log.retention.check.interval.ms=1000"]).expect("valid");
        assert_eq!(c.num_partitions, 4);
        assert_eq!(c.log.retention_check_interval_ms(), 1000);
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        assert!(config(&["num.partition=4"]).is_err());
        assert!(config(&["num.partitions=zero"]).is_err());
        assert!(config(&["auto.create.topics.enable=yes"]).is_err());
        assert!(config(&["socket.request.max.bytes"]).is_err());
        assert!(
            config(&["queued.max.request.bytes=1048576"]).is_err(),
            "smaller than one frame"
        );
    }
}
