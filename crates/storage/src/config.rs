//! Topic configs as Kafka names them: the catalog, validation, broker-level defaults, the
//! effective [`LogConfig`] of a topic, and the listing DescribeConfigs answers with.
//!
//! Values travel as strings (as they do on the wire) and are parsed per the key's type, so an
//! override stored in metadata is exactly what the client sent.

use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;

/// Kafka's default `segment.bytes` (1 GiB).
pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 30;
/// Kafka's default `retention.ms` and `segment.ms` (7 days).
pub const SEVEN_DAYS_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// Kafka's default `max.message.bytes` / `message.max.bytes`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;
/// Kafka's default `producer.id.expiration.ms` (1 day).
pub const DEFAULT_PRODUCER_ID_EXPIRATION_MS: i64 = 86_400_000;
/// Kafka's default `log.retention.check.interval.ms` (5 minutes).
pub const DEFAULT_RETENTION_CHECK_INTERVAL_MS: i64 = 300_000;

/// A refused config key or value. Kafka answers INVALID_CONFIG (40) for all of these.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The key is not a topic (or broker) config this broker knows.
    #[error("unknown config key '{0}'")]
    UnknownKey(String),
    /// The value does not parse as the key's type or is outside its allowed range or set.
    #[error("invalid value '{value}' for config '{key}': {reason}")]
    InvalidValue {
        /// The config key.
        key: String,
        /// The value as sent.
        value: String,
        /// What is wrong, in words an operator can act on.
        reason: String,
    },
}

/// `message.timestamp.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    /// Keep the producer's timestamps.
    #[default]
    CreateTime,
    /// Stamp each batch with the broker's append time (rewrites the batch's CRC).
    LogAppendTime,
}

/// `cleanup.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CleanupPolicy {
    /// Delete old segments by retention.
    #[default]
    Delete,
    /// Keep the latest record per key (the log cleaner, `crate::cleaner`, rewrites old segments).
    Compact,
    /// Both.
    CompactDelete,
}

impl CleanupPolicy {
    /// True when retention may delete segments.
    pub fn deletes(self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }

    /// True when the topic is compacted, so every record needs a key.
    pub fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }
}

/// Per-topic log settings, with Kafka's names in the comments.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll the active segment at this size.
    pub segment_bytes: u64,
    /// `segment.ms`: roll the active segment this long after its first batch.
    pub segment_ms: i64,
    /// `retention.ms`: delete segments whose newest record is older; -1 keeps forever.
    pub retention_ms: i64,
    /// `retention.bytes`: delete oldest segments while the log is larger; -1 for no limit.
    pub retention_bytes: i64,
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: usize,
    /// `index.interval.bytes`: bytes between sparse index entries.
    pub index_interval_bytes: usize,
    /// `flush.messages`: fsync after this many unflushed messages; Sluice's default 1 fsyncs
    /// (by group commit) before acknowledging.
    pub flush_messages: u64,
    /// `flush.ms`: fsync when the oldest unflushed message is this old.
    pub flush_ms: i64,
    /// `message.timestamp.type`.
    pub message_timestamp_type: TimestampType,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `producer.id.expiration.ms` (a broker setting that every log applies).
    pub producer_id_expiration_ms: i64,
    /// `min.cleanable.dirty.ratio`: clean when this share of the cleanable bytes is dirty.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: a segment is cleanable once its newest record is this old.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: clean whatever the dirty ratio once dirty data is this old.
    pub max_compaction_lag_ms: i64,
    /// `delete.retention.ms`: a tombstone survives cleaning until its timestamp is this old.
    pub delete_retention_ms: i64,
    /// `preallocate`: reserve a new segment's whole `segment.bytes` on disk when it is created
    /// (without that, the active segment still reserves a few MiB ahead of its end).
    pub preallocate: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            segment_ms: SEVEN_DAYS_MS,
            retention_ms: SEVEN_DAYS_MS,
            retention_bytes: -1,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            index_interval_bytes: 4096,
            flush_messages: 1,
            flush_ms: i64::MAX,
            message_timestamp_type: TimestampType::CreateTime,
            cleanup_policy: CleanupPolicy::Delete,
            producer_id_expiration_ms: DEFAULT_PRODUCER_ID_EXPIRATION_MS,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            delete_retention_ms: 86_400_000,
            preallocate: false,
        }
    }
}

impl LogConfig {
    /// True when acknowledgements must wait for [`crate::PartitionLog::wait_durable`]: every
    /// append is fsynced (by group commit) before the producer hears back.
    pub fn sync_before_ack(&self) -> bool {
        self.flush_messages <= 1
    }

    /// Bytes of disk to reserve for a new segment when it is created: all of `segment.bytes`
    /// with `preallocate`, else none (the active segment then reserves as it grows).
    pub fn segment_reserve(&self) -> u64 {
        if self.preallocate {
            self.segment_bytes
        } else {
            0
        }
    }
}

/// The value types Kafka's DescribeConfigs reports (`configType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    /// true / false.
    Boolean,
    /// Free text, or one of a fixed set.
    String,
    /// 32-bit integer.
    Int,
    /// 64-bit integer.
    Long,
    /// Floating point.
    Double,
    /// Comma-separated list.
    List,
}

impl ConfigType {
    /// Kafka's `ConfigType` code in DescribeConfigs v3+.
    pub fn kafka_code(self) -> i8 {
        match self {
            ConfigType::Boolean => 1,
            ConfigType::String => 2,
            ConfigType::Int => 3,
            ConfigType::Long => 5,
            ConfigType::Double => 6,
            ConfigType::List => 7,
        }
    }
}

/// Where an effective value comes from (DescribeConfigs `configSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// Set on the topic.
    TopicOverride,
    /// Set in the broker's configuration (e.g. `--override log.retention.ms=...`).
    StaticBroker,
    /// Kafka's (or Sluice's) built-in default.
    Default,
}

impl ConfigSource {
    /// Kafka's `ConfigSource` code: DYNAMIC_TOPIC_CONFIG 1, STATIC_BROKER_CONFIG 4,
    /// DEFAULT_CONFIG 5.
    pub fn kafka_code(self) -> i8 {
        match self {
            ConfigSource::TopicOverride => 1,
            ConfigSource::StaticBroker => 4,
            ConfigSource::Default => 5,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Rule {
    None,
    /// Inclusive bounds on an integer.
    Range(i64, i64),
    /// Inclusive bounds on a double.
    RangeF(f64, f64),
    /// One of these strings (case-sensitive, as Kafka).
    OneOf(&'static [&'static str]),
    /// A non-empty list whose items are each one of these.
    ListOf(&'static [&'static str]),
}

/// One topic config key as Kafka defines it.
#[derive(Debug, Clone, Copy)]
pub struct ConfigDef {
    /// Kafka's topic-level name.
    pub name: &'static str,
    /// Value type.
    pub kind: ConfigType,
    /// The default when neither topic nor broker sets it (Sluice's default where it differs).
    pub default: &'static str,
    /// Broker-level keys that supply the default, highest precedence first, with the factor
    /// that converts their unit to this key's unit (e.g. hours -> ms).
    pub broker_keys: &'static [(&'static str, i64)],
    /// One line for `sluicectl` and error messages.
    pub doc: &'static str,
    rule: Rule,
}

const I32MAX: i64 = i32::MAX as i64;
const HOUR: i64 = 3_600_000;
const MINUTE: i64 = 60_000;
const I64MAX_S: &str = "9223372036854775807";

/// Every topic config a Kafka client may describe or set, in Kafka's alphabetical order.
pub static TOPIC_CONFIGS: &[ConfigDef] = &[
    ConfigDef {
        name: "cleanup.policy",
        kind: ConfigType::List,
        default: "delete",
        broker_keys: &[("log.cleanup.policy", 1)],
        doc: "delete and/or compact old segments",
        rule: Rule::ListOf(&["delete", "compact"]),
    },
    ConfigDef {
        name: "compression.gzip.level",
        kind: ConfigType::Int,
        default: "-1",
        broker_keys: &[("compression.gzip.level", 1)],
        doc: "gzip level when the broker recompresses",
        rule: Rule::Range(-1, 9),
    },
    ConfigDef {
        name: "compression.lz4.level",
        kind: ConfigType::Int,
        default: "9",
        broker_keys: &[("compression.lz4.level", 1)],
        doc: "lz4 level when the broker recompresses",
        rule: Rule::Range(1, 17),
    },
    ConfigDef {
        name: "compression.type",
        kind: ConfigType::String,
        default: "producer",
        broker_keys: &[("compression.type", 1)],
        doc: "codec of stored batches; producer keeps the producer's",
        rule: Rule::OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
    },
    ConfigDef {
        name: "compression.zstd.level",
        kind: ConfigType::Int,
        default: "3",
        broker_keys: &[("compression.zstd.level", 1)],
        doc: "zstd level when the broker recompresses",
        rule: Rule::Range(-131072, 22),
    },
    ConfigDef {
        name: "delete.retention.ms",
        kind: ConfigType::Long,
        default: "86400000",
        broker_keys: &[("log.cleaner.delete.retention.ms", 1)],
        doc: "how long compaction keeps tombstones",
        rule: Rule::Range(0, i64::MAX),
    },
    ConfigDef {
        name: "file.delete.delay.ms",
        kind: ConfigType::Long,
        default: "60000",
        broker_keys: &[("log.segment.delete.delay.ms", 1)],
        doc: "delay before a deleted segment's file is removed",
        rule: Rule::Range(0, i64::MAX),
    },
    ConfigDef {
        name: "flush.messages",
        kind: ConfigType::Long,
        default: "1",
        broker_keys: &[("log.flush.interval.messages", 1)],
        doc: "fsync after this many messages (Sluice default 1: fsync before ack)",
        rule: Rule::Range(1, i64::MAX),
    },
    ConfigDef {
        name: "flush.ms",
        kind: ConfigType::Long,
        default: I64MAX_S,
        broker_keys: &[("log.flush.interval.ms", 1)],
        doc: "fsync when the oldest unflushed message is this old",
        rule: Rule::Range(0, i64::MAX),
    },
    ConfigDef {
        name: "follower.replication.throttled.replicas",
        kind: ConfigType::List,
        default: "",
        broker_keys: &[],
        doc: "replicas throttled on the follower side",
        rule: Rule::None,
    },
    ConfigDef {
        name: "index.interval.bytes",
        kind: ConfigType::Int,
        default: "4096",
        broker_keys: &[("log.index.interval.bytes", 1)],
        doc: "bytes between offset index entries",
        rule: Rule::Range(0, I32MAX),
    },
    ConfigDef {
        name: "leader.replication.throttled.replicas",
        kind: ConfigType::List,
        default: "",
        broker_keys: &[],
        doc: "replicas throttled on the leader side",
        rule: Rule::None,
    },
    ConfigDef {
        name: "local.retention.bytes",
        kind: ConfigType::Long,
        default: "-2",
        broker_keys: &[("log.local.retention.bytes", 1)],
        doc: "local bytes kept with tiered storage (-2: retention.bytes)",
        rule: Rule::Range(-2, i64::MAX),
    },
    ConfigDef {
        name: "local.retention.ms",
        kind: ConfigType::Long,
        default: "-2",
        broker_keys: &[("log.local.retention.ms", 1)],
        doc: "local time kept with tiered storage (-2: retention.ms)",
        rule: Rule::Range(-2, i64::MAX),
    },
    ConfigDef {
        name: "max.compaction.lag.ms",
        kind: ConfigType::Long,
        default: I64MAX_S,
        broker_keys: &[("log.cleaner.max.compaction.lag.ms", 1)],
        doc: "longest a record stays uncompacted",
        rule: Rule::Range(1, i64::MAX),
    },
    ConfigDef {
        name: "max.message.bytes",
        kind: ConfigType::Int,
        default: "1048588",
        broker_keys: &[("message.max.bytes", 1)],
        doc: "largest record batch accepted",
        rule: Rule::Range(0, I32MAX),
    },
    ConfigDef {
        name: "message.downconversion.enable",
        kind: ConfigType::Boolean,
        default: "true",
        broker_keys: &[("log.message.downconversion.enable", 1)],
        doc: "down-convert for old consumers (never done by Sluice)",
        rule: Rule::None,
    },
    ConfigDef {
        name: "message.timestamp.after.max.ms",
        kind: ConfigType::Long,
        default: I64MAX_S,
        broker_keys: &[("log.message.timestamp.after.max.ms", 1)],
        doc: "how far in the future a CreateTime may be",
        rule: Rule::Range(0, i64::MAX),
    },
    ConfigDef {
        name: "message.timestamp.before.max.ms",
        kind: ConfigType::Long,
        default: I64MAX_S,
        broker_keys: &[("log.message.timestamp.before.max.ms", 1)],
        doc: "how far in the past a CreateTime may be",
        rule: Rule::Range(0, i64::MAX),
    },
    ConfigDef {
        name: "message.timestamp.difference.max.ms",
        kind: ConfigType::Long,
        default: I64MAX_S,
        broker_keys: &[("log.message.timestamp.difference.max.ms", 1)],
        doc: "deprecated: largest CreateTime skew",
        rule: Rule::Range(0, i64::MAX),
    },
    ConfigDef {
        name: "message.timestamp.type",
        kind: ConfigType::String,
        default: "CreateTime",
        broker_keys: &[("log.message.timestamp.type", 1)],
        doc: "CreateTime keeps the producer's timestamps, LogAppendTime stamps the broker's",
        rule: Rule::OneOf(&["CreateTime", "LogAppendTime"]),
    },
    ConfigDef {
        name: "min.cleanable.dirty.ratio",
        kind: ConfigType::Double,
        default: "0.5",
        broker_keys: &[("log.cleaner.min.cleanable.ratio", 1)],
        doc: "dirty share that triggers compaction",
        rule: Rule::RangeF(0.0, 1.0),
    },
    ConfigDef {
        name: "min.compaction.lag.ms",
        kind: ConfigType::Long,
        default: "0",
        broker_keys: &[("log.cleaner.min.compaction.lag.ms", 1)],
        doc: "shortest a record stays uncompacted",
        rule: Rule::Range(0, i64::MAX),
    },
    ConfigDef {
        name: "min.insync.replicas",
        kind: ConfigType::Int,
        default: "1",
        broker_keys: &[("min.insync.replicas", 1)],
        doc: "replicas that must have a batch for acks=all",
        rule: Rule::Range(1, I32MAX),
    },
    ConfigDef {
        name: "preallocate",
        kind: ConfigType::Boolean,
        default: "false",
        broker_keys: &[("log.preallocate", 1)],
        doc: "reserve a new segment's segment.bytes on disk when it is created",
        rule: Rule::None,
    },
    ConfigDef {
        name: "remote.storage.enable",
        kind: ConfigType::Boolean,
        default: "false",
        broker_keys: &[],
        doc: "tiered storage (not supported by Sluice)",
        rule: Rule::None,
    },
    ConfigDef {
        name: "retention.bytes",
        kind: ConfigType::Long,
        default: "-1",
        broker_keys: &[("log.retention.bytes", 1)],
        doc: "largest size of the log before old segments go (-1: no limit)",
        rule: Rule::None,
    },
    ConfigDef {
        name: "retention.ms",
        kind: ConfigType::Long,
        default: "604800000",
        broker_keys: &[
            ("log.retention.ms", 1),
            ("log.retention.minutes", MINUTE),
            ("log.retention.hours", HOUR),
        ],
        doc: "age after which segments go (-1: forever)",
        rule: Rule::Range(-1, i64::MAX),
    },
    ConfigDef {
        name: "segment.bytes",
        kind: ConfigType::Int,
        default: "1073741824",
        broker_keys: &[("log.segment.bytes", 1)],
        doc: "segment file size",
        rule: Rule::Range(14, I32MAX),
    },
    ConfigDef {
        name: "segment.index.bytes",
        kind: ConfigType::Int,
        default: "10485760",
        broker_keys: &[("log.index.size.max.bytes", 1)],
        doc: "largest offset index file",
        rule: Rule::Range(4, I32MAX),
    },
    ConfigDef {
        name: "segment.jitter.ms",
        kind: ConfigType::Long,
        default: "0",
        broker_keys: &[("log.roll.jitter.ms", 1), ("log.roll.jitter.hours", HOUR)],
        doc: "random jitter subtracted from segment.ms",
        rule: Rule::Range(0, i64::MAX),
    },
    ConfigDef {
        name: "segment.ms",
        kind: ConfigType::Long,
        default: "604800000",
        broker_keys: &[("log.roll.ms", 1), ("log.roll.hours", HOUR)],
        doc: "age after which the active segment rolls",
        rule: Rule::Range(1, i64::MAX),
    },
    ConfigDef {
        name: "unclean.leader.election.enable",
        kind: ConfigType::Boolean,
        default: "false",
        broker_keys: &[("unclean.leader.election.enable", 1)],
        doc: "allow out-of-sync replicas to lead",
        rule: Rule::None,
    },
];

/// Broker-only keys the storage layer reads: (key, type, default, rule, doc). Read at start-up
/// only, so they are set with `--override` and reported read-only.
static BROKER_ONLY: &[(&str, ConfigType, &str, Rule, &str)] = &[
    (
        "log.cleaner.enable",
        ConfigType::Boolean,
        "true",
        Rule::None,
        "run the log cleaner for compacted topics",
    ),
    (
        "log.cleaner.backoff.ms",
        ConfigType::Long,
        "15000",
        Rule::Range(0, i64::MAX),
        "how long the cleaner sleeps when no log needs cleaning",
    ),
    (
        "log.cleaner.dedupe.buffer.size",
        ConfigType::Long,
        "134217728",
        Rule::Range(1 << 20, i64::MAX),
        "memory for the key-to-offset map of one clean",
    ),
    (
        "log.retention.check.interval.ms",
        ConfigType::Long,
        "300000",
        Rule::Range(1, i64::MAX),
        "how often logs are checked for segments to delete",
    ),
    (
        "producer.id.expiration.ms",
        ConfigType::Int,
        "86400000",
        Rule::Range(1, I32MAX),
        "how long an idle producer id's state is kept",
    ),
    (
        "num.recovery.threads.per.data.dir",
        ConfigType::Int,
        "2",
        Rule::Range(1, I32MAX),
        "threads opening partitions at start-up",
    ),
    (
        "log.flush.scheduler.interval.ms",
        ConfigType::Long,
        "100",
        Rule::Range(1, i64::MAX),
        "how often flush.ms is checked",
    ),
    (
        "log.flush.offset.checkpoint.interval.ms",
        ConfigType::Int,
        "10000",
        Rule::Range(0, I32MAX),
        "how often changed logs write a recovery checkpoint",
    ),
    // Not a Kafka key (Kafka leaves the page cache to the kernel): see `cache_tail_bytes`.
    (
        "sluice.log.cache.tail.bytes",
        ConfigType::Long,
        "1073741824",
        Rule::Range(-1, i64::MAX),
        "newest bytes of each led partition kept in the page cache (-1: all)",
    ),
];

/// Looks up a topic config key.
pub fn topic_config(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn check_value(key: &str, kind: ConfigType, rule: Rule, value: &str) -> Result<(), ConfigError> {
    let v = value.trim();
    match kind {
        ConfigType::Boolean => {
            if !v.eq_ignore_ascii_case("true") && !v.eq_ignore_ascii_case("false") {
                return Err(invalid(key, value, "expected true or false"));
            }
        }
        ConfigType::Int | ConfigType::Long => {
            let n: i64 = v.parse().map_err(|_| {
                invalid(
                    key,
                    value,
                    format!(
                        "expected {}",
                        if kind == ConfigType::Int {
                            "a 32-bit integer"
                        } else {
                            "a 64-bit integer"
                        }
                    ),
                )
            })?;
            if kind == ConfigType::Int && i32::try_from(n).is_err() {
                return Err(invalid(key, value, "expected a 32-bit integer"));
            }
            if let Rule::Range(lo, hi) = rule
                && (n < lo || n > hi)
            {
                return Err(invalid(
                    key,
                    value,
                    if hi == i64::MAX || hi == I32MAX {
                        format!("value must be at least {lo}")
                    } else {
                        format!("value must be in [{lo}, {hi}]")
                    },
                ));
            }
        }
        ConfigType::Double => {
            let f: f64 = v
                .parse()
                .map_err(|_| invalid(key, value, "expected a number"))?;
            if let Rule::RangeF(lo, hi) = rule
                && !(lo..=hi).contains(&f)
            {
                return Err(invalid(
                    key,
                    value,
                    format!("value must be in [{lo}, {hi}]"),
                ));
            }
        }
        ConfigType::String => {
            if let Rule::OneOf(set) = rule
                && !set.contains(&v)
            {
                return Err(invalid(
                    key,
                    value,
                    format!("must be one of {}", set.join(", ")),
                ));
            }
        }
        ConfigType::List => {
            if let Rule::ListOf(set) = rule {
                let items: Vec<&str> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                if items.is_empty() {
                    return Err(invalid(
                        key,
                        value,
                        format!("must list at least one of {}", set.join(", ")),
                    ));
                }
                for item in &items {
                    if !set.contains(item) {
                        return Err(invalid(
                            key,
                            value,
                            format!("'{item}' is not one of {}", set.join(", ")),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Validates one topic-level `(key, value)` as Kafka's AlterConfigs/CreateTopics would.
pub fn validate(key: &str, value: &str) -> Result<(), ConfigError> {
    let def = topic_config(key).ok_or_else(|| ConfigError::UnknownKey(key.to_string()))?;
    check_value(key, def.kind, def.rule, value)
}

/// Validates a whole set of topic overrides.
pub fn validate_all<'a>(
    overrides: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), ConfigError> {
    for (k, v) in overrides {
        validate(k, v)?;
    }
    Ok(())
}

/// One of the storage layer's own broker keys as DescribeConfigs reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct StartupKey {
    /// Kafka name (or `sluice.*` for Sluice's own).
    pub name: &'static str,
    /// Effective value.
    pub value: String,
    /// Set with `--override` (else the default).
    pub overridden: bool,
    /// Value type.
    pub kind: ConfigType,
    /// One line of documentation.
    pub doc: &'static str,
}

/// Broker-level settings: defaults for every topic config plus the storage layer's own knobs.
///
/// Holds only what was set (by `--override KEY=VALUE` or a config file); everything else falls
/// back to Kafka's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrokerLogConfig {
    set: BTreeMap<String, String>,
}

impl BrokerLogConfig {
    /// True if `key` is a broker key this crate understands.
    pub fn is_known_key(key: &str) -> bool {
        Self::is_startup_key(key) || broker_key_target(key).is_some()
    }

    /// True if `key` is one of the storage layer's own broker keys, read only at start-up.
    pub fn is_startup_key(key: &str) -> bool {
        BROKER_ONLY.iter().any(|(k, ..)| *k == key)
    }

    /// The storage layer's own broker keys with their values, for DescribeConfigs.
    pub fn describe_startup_keys(&self) -> Vec<StartupKey> {
        BROKER_ONLY
            .iter()
            .map(|(name, kind, default, _, doc)| StartupKey {
                name,
                value: self
                    .set
                    .get(*name)
                    .cloned()
                    .unwrap_or_else(|| default.to_string()),
                overridden: self.set.contains_key(*name),
                kind: *kind,
                doc,
            })
            .collect()
    }

    /// Sets a broker key (`log.segment.bytes`, `log.retention.hours`, `message.max.bytes`,
    /// `log.retention.check.interval.ms`, ...). Unknown keys are refused so the caller can try
    /// its own keys first and report the rest.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        if let Some((_, kind, _, rule, _)) = BROKER_ONLY.iter().find(|(k, ..)| *k == key) {
            check_value(key, *kind, *rule, value)?;
        } else if let Some((def, factor)) = broker_key_target(key) {
            if factor == 1 {
                check_value(key, def.kind, def.rule, value)?;
            } else {
                let n: i64 = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid(key, value, "expected an integer"))?;
                let scaled = n
                    .checked_mul(factor)
                    .ok_or_else(|| invalid(key, value, "too large"))?;
                check_value(def.name, def.kind, def.rule, &scaled.to_string())
                    .map_err(|_| invalid(key, value, "out of range"))?;
            }
        } else {
            return Err(ConfigError::UnknownKey(key.to_string()));
        }
        self.set.insert(key.to_string(), value.trim().to_string());
        Ok(())
    }

    /// Broker-only numeric setting, or its default.
    fn long(&self, key: &str) -> i64 {
        let default = BROKER_ONLY
            .iter()
            .find(|(k, ..)| *k == key)
            .map(|(_, _, d, ..)| *d)
            .unwrap_or("0");
        self.set
            .get(key)
            .map(String::as_str)
            .unwrap_or(default)
            .parse()
            .unwrap_or(0)
    }

    /// `log.cleaner.enable`: run the log cleaner for `cleanup.policy=compact` topics.
    pub fn cleaner_enable(&self) -> bool {
        self.set
            .get("log.cleaner.enable")
            .is_none_or(|v| v.eq_ignore_ascii_case("true"))
    }
    /// `log.cleaner.backoff.ms`: how long the cleaner sleeps when no log needs cleaning.
    pub fn cleaner_backoff_ms(&self) -> i64 {
        self.long("log.cleaner.backoff.ms")
    }
    /// `log.cleaner.dedupe.buffer.size`: memory for the key -> offset map of one clean.
    pub fn cleaner_dedupe_buffer_size(&self) -> i64 {
        self.long("log.cleaner.dedupe.buffer.size")
    }
    /// `log.retention.check.interval.ms`.
    pub fn retention_check_interval_ms(&self) -> i64 {
        self.long("log.retention.check.interval.ms")
    }
    /// `producer.id.expiration.ms`.
    pub fn producer_id_expiration_ms(&self) -> i64 {
        self.long("producer.id.expiration.ms")
    }
    /// `num.recovery.threads.per.data.dir`: threads opening partitions at start-up.
    pub fn recovery_threads(&self) -> usize {
        self.long("num.recovery.threads.per.data.dir").max(1) as usize
    }
    /// `log.flush.scheduler.interval.ms`: how often `flush.ms` is checked.
    pub fn flush_scheduler_interval_ms(&self) -> i64 {
        self.long("log.flush.scheduler.interval.ms")
    }
    /// `log.flush.offset.checkpoint.interval.ms`: how often changed logs write a checkpoint.
    pub fn checkpoint_interval_ms(&self) -> i64 {
        self.long("log.flush.offset.checkpoint.interval.ms")
    }
    /// `sluice.log.cache.tail.bytes`: how many of each led partition's newest written bytes
    /// stay in the page cache once durable (older pages are dropped as the log grows); `None`
    /// for -1, which leaves every page to the kernel as Kafka does.
    pub fn cache_tail_bytes(&self) -> Option<u64> {
        u64::try_from(self.long("sluice.log.cache.tail.bytes")).ok()
    }

    /// The broker-level value of a topic key and where it comes from (broker or default).
    pub fn topic_default(&self, def: &ConfigDef) -> (String, ConfigSource) {
        for (bk, factor) in def.broker_keys {
            if let Some(v) = self.set.get(*bk) {
                if *factor == 1 {
                    return (v.clone(), ConfigSource::StaticBroker);
                }
                let n: i64 = v.parse().unwrap_or(0);
                return (
                    n.saturating_mul(*factor).to_string(),
                    ConfigSource::StaticBroker,
                );
            }
        }
        (def.default.to_string(), ConfigSource::Default)
    }

    /// The effective value of every topic key for a topic with `overrides`, for
    /// DescribeConfigs. Overrides that name unknown keys are skipped.
    pub fn describe(&self, overrides: &BTreeMap<String, String>) -> Vec<ConfigEntry> {
        TOPIC_CONFIGS
            .iter()
            .map(|def| {
                let (value, source) = match overrides.get(def.name) {
                    Some(v) => (v.clone(), ConfigSource::TopicOverride),
                    None => self.topic_default(def),
                };
                ConfigEntry {
                    name: def.name,
                    value,
                    source,
                    kind: def.kind,
                    doc: def.doc,
                }
            })
            .collect()
    }

    /// Builds a topic's [`LogConfig`] from these defaults and its overrides (validated).
    pub fn log_config(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> Result<LogConfig, ConfigError> {
        validate_all(overrides)?;
        let get = |name: &str| -> String {
            match overrides.get(name) {
                Some(v) => v.trim().to_string(),
                None => topic_config(name)
                    .map(|d| self.topic_default(d).0)
                    .unwrap_or_default(),
            }
        };
        let long = |name: &str| -> Result<i64, ConfigError> {
            let v = get(name);
            v.parse()
                .map_err(|_| invalid(name, &v, "expected an integer"))
        };
        let timestamp = match get("message.timestamp.type").as_str() {
            "LogAppendTime" => TimestampType::LogAppendTime,
            _ => TimestampType::CreateTime,
        };
        let policy = get("cleanup.policy");
        let compact = policy.split(',').any(|p| p.trim() == "compact");
        let delete = policy.split(',').any(|p| p.trim() == "delete");
        let cleanup_policy = match (compact, delete) {
            (true, true) => CleanupPolicy::CompactDelete,
            (true, false) => CleanupPolicy::Compact,
            _ => CleanupPolicy::Delete,
        };
        Ok(LogConfig {
            segment_bytes: long("segment.bytes")?.max(14) as u64,
            segment_ms: long("segment.ms")?.max(1),
            retention_ms: long("retention.ms")?,
            retention_bytes: long("retention.bytes")?,
            max_message_bytes: long("max.message.bytes")?.max(0) as usize,
            index_interval_bytes: long("index.interval.bytes")?.max(0) as usize,
            flush_messages: long("flush.messages")?.max(1) as u64,
            flush_ms: long("flush.ms")?,
            message_timestamp_type: timestamp,
            cleanup_policy,
            producer_id_expiration_ms: self.producer_id_expiration_ms(),
            min_cleanable_dirty_ratio: {
                let v = get("min.cleanable.dirty.ratio");
                v.parse()
                    .map_err(|_| invalid("min.cleanable.dirty.ratio", &v, "expected a number"))?
            },
            min_compaction_lag_ms: long("min.compaction.lag.ms")?.max(0),
            max_compaction_lag_ms: long("max.compaction.lag.ms")?.max(1),
            delete_retention_ms: long("delete.retention.ms")?.max(0),
            preallocate: get("preallocate").eq_ignore_ascii_case("true"),
        })
    }
}

/// Which topic key a broker key feeds, and the unit factor.
fn broker_key_target(key: &str) -> Option<(&'static ConfigDef, i64)> {
    TOPIC_CONFIGS.iter().find_map(|d| {
        d.broker_keys
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, f)| (d, *f))
    })
}

/// One line of a DescribeConfigs answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigEntry {
    /// Topic config key.
    pub name: &'static str,
    /// Effective value.
    pub value: String,
    /// Where the value comes from.
    pub source: ConfigSource,
    /// Value type.
    pub kind: ConfigType,
    /// One-line documentation.
    pub doc: &'static str,
}

impl fmt::Display for ConfigEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={} ({:?})", self.name, self.value, self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn catalog_covers_the_required_keys() {
        for key in [
            "cleanup.policy",
            "compression.type",
            "delete.retention.ms",
            "file.delete.delay.ms",
            "flush.messages",
            "flush.ms",
            "index.interval.bytes",
            "max.message.bytes",
            "message.timestamp.type",
            "min.insync.replicas",
            "retention.bytes",
            "retention.ms",
            "segment.bytes",
            "segment.ms",
            "segment.index.bytes",
            "unclean.leader.election.enable",
            "min.compaction.lag.ms",
            "max.compaction.lag.ms",
            "min.cleanable.dirty.ratio",
            "message.timestamp.difference.max.ms",
            "message.downconversion.enable",
            "preallocate",
            "local.retention.ms",
            "local.retention.bytes",
            "remote.storage.enable",
            "segment.jitter.ms",
        ] {
            let def = topic_config(key).unwrap_or_else(|| panic!("{key} missing"));
            validate(key, def.default).unwrap_or_else(|e| panic!("default of {key} invalid: {e}"));
        }
        let mut names: Vec<_> = TOPIC_CONFIGS.iter().map(|d| d.name).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate keys");
    }

    #[test]
    fn validation_follows_kafka_rules() {
        assert!(validate("segment.bytes", "14").is_ok());
        assert!(matches!(
            validate("segment.bytes", "13"),
            Err(ConfigError::InvalidValue { .. })
        ));
        assert!(
            validate("segment.bytes", "4294967296").is_err(),
            "int overflow"
        );
        assert!(validate("retention.ms", "-1").is_ok());
        assert!(validate("retention.ms", "-2").is_err());
        assert!(validate("min.insync.replicas", "0").is_err());
        assert!(validate("cleanup.policy", "compact,delete").is_ok());
        assert!(validate("cleanup.policy", "purge").is_err());
        assert!(validate("cleanup.policy", "").is_err());
        assert!(validate("compression.type", "zstd").is_ok());
        assert!(validate("compression.type", "brotli").is_err());
        assert!(validate("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate("message.timestamp.type", "logappendtime").is_err());
        assert!(validate("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(validate("preallocate", "yes").is_err());
        assert_eq!(
            validate("no.such.key", "1"),
            Err(ConfigError::UnknownKey("no.such.key".into()))
        );
        let msg = validate("segment.bytes", "1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("at least 14"), "{msg}");
    }

    #[test]
    fn log_config_layers_topic_over_broker_over_default() {
        let mut broker = BrokerLogConfig::default();
        assert_eq!(
            broker.log_config(&BTreeMap::new()),
            Ok(LogConfig::default())
        );
        broker.set("log.retention.hours", "1").expect("valid");
        broker.set("log.segment.bytes", "1048576").expect("valid");
        broker.set("message.max.bytes", "2000").expect("valid");
        let c = broker
            .log_config(&map(&[
                ("segment.bytes", "4096"),
                ("message.timestamp.type", "LogAppendTime"),
            ]))
            .expect("valid");
        assert_eq!(c.retention_ms, 3_600_000);
        assert_eq!(c.segment_bytes, 4096);
        assert_eq!(c.max_message_bytes, 2000);
        assert_eq!(c.message_timestamp_type, TimestampType::LogAppendTime);
        // log.retention.ms outranks log.retention.hours, as in Kafka.
        broker.set("log.retention.ms", "5").expect("valid");
        assert_eq!(
            broker.log_config(&BTreeMap::new()).map(|c| c.retention_ms),
            Ok(5)
        );
        assert!(broker.set("log.segment.bytes", "1").is_err());
        assert!(broker.set("listeners", "x").is_err());
        assert!(broker.log_config(&map(&[("bogus", "1")])).is_err());
    }

    #[test]
    fn preallocate_comes_from_the_topic_or_log_preallocate() {
        let mut broker = BrokerLogConfig::default();
        let none = BTreeMap::new();
        assert_eq!(broker.log_config(&none).map(|c| c.segment_reserve()), Ok(0));
        let topic = broker
            .log_config(&map(&[("preallocate", "TRUE"), ("segment.bytes", "4096")]))
            .expect("valid");
        assert!(topic.preallocate);
        assert_eq!(topic.segment_reserve(), 4096);
        broker.set("log.preallocate", "true").expect("valid");
        assert_eq!(broker.log_config(&none).map(|c| c.preallocate), Ok(true));
        let off = broker
            .log_config(&map(&[("preallocate", "false")]))
            .expect("valid");
        assert_eq!(off.segment_reserve(), 0);
    }

    #[test]
    fn describe_reports_sources() {
        let mut broker = BrokerLogConfig::default();
        broker.set("log.roll.hours", "2").expect("valid");
        let entries = broker.describe(&map(&[("retention.ms", "1000")]));
        assert_eq!(entries.len(), TOPIC_CONFIGS.len());
        let find = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .cloned()
                .expect("listed")
        };
        assert_eq!(find("retention.ms").source, ConfigSource::TopicOverride);
        assert_eq!(find("retention.ms").value, "1000");
        assert_eq!(find("segment.ms").source, ConfigSource::StaticBroker);
        assert_eq!(find("segment.ms").value, "7200000");
        assert_eq!(find("segment.bytes").source, ConfigSource::Default);
        assert_eq!(find("flush.messages").value, "1");
    }

    #[test]
    fn sync_before_ack_follows_flush_messages() {
        let mut c = LogConfig::default();
        assert!(c.sync_before_ack());
        c.flush_messages = 1000;
        assert!(!c.sync_before_ack());
    }
}
