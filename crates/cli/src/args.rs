//! The command line, as clap parses it. Values that can be checked without a broker (KEY=VALUE
//! pairs, dates, formats, timeouts) are checked here, so a typo is a usage error (exit 2).

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::datetime::parse_iso8601;
use crate::template::Template;

const JSON_HELP: &str = "\
Exit codes: 0 success, 1 Kafka or other command error, 2 usage error, 3 connection problem or
timeout. Errors are one sentence on stderr, ending with the Kafka error name when the broker sent
one, e.g. `topic 'orders' already exists (TOPIC_ALREADY_EXISTS)`.

With --json, stdout carries one JSON document (consume: one JSON object per record and line):
  cluster info          {cluster_id, controller, brokers: [{id, host, port, rack}], topics,
                         partitions, under_replicated, offline}
  topic create          {name, partitions, replication_factor}
  topic list            [{name, partitions, replication_factor}]
  topic describe        {name, id, partitions: [{partition, leader, replicas, isr, earliest,
                         latest}], configs: {name: value}}
  topic delete          {deleted: [name]}
  topic add-partitions  {name, partitions}
  topic config          {name, configs: {name: value}} (after any change)
  group list            [{group, state}]
  group describe        {group, state, protocol_type, protocol, members: [{member_id, client_id,
                         host, assignment: [{topic, partitions}]}], offsets: [{topic, partition,
                         committed, end, lag, member_id}]}
  group delete          {deleted: [group]}
  group reset-offsets   {group, topic, dry_run, offsets: [{partition, current, new}]}
  produce               {topic, records, partitions: [{partition, records}]}
  consume               {topic, partition, offset, timestamp, key, value} per line
Keys and values are strings (invalid UTF-8 replaced by U+FFFD) or null; missing numbers are null.";

/// sluicectl: operate a Sluice (or any Kafka-compatible) cluster.
#[derive(Debug, Parser)]
#[command(name = "sluicectl", version, after_long_help = JSON_HELP)]
pub struct Cli {
    /// Brokers to bootstrap from, comma-separated HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "SLUICE_BOOTSTRAP",
        default_value = "127.0.0.1:9092",
        value_delimiter = ',',
        value_name = "HOST:PORT,..."
    )]
    pub bootstrap: Vec<String>,

    /// Print one JSON document instead of tables (see --help for each command's shape).
    #[arg(long, global = true)]
    pub json: bool,

    /// Seconds any network wait may take: connecting, and each request's answer. A wait the
    /// broker holds on purpose (a Fetch long-poll, a group rebalance) may add its own bound.
    #[arg(long, global = true, default_value = "10", value_parser = parse_timeout, value_name = "SECS")]
    pub timeout: Duration,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The nouns.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The cluster as a whole.
    Cluster {
        /// What to do with the cluster.
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Create, list, describe, delete and configure topics.
    Topic {
        /// What to do with topics.
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// List, describe, delete consumer groups and reset their offsets.
    Group {
        /// What to do with groups.
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Produce the lines of stdin as records (acks=all).
    ///
    /// Lines go out in batches of up to 1000 lines or about 1 MB. A record goes to -p
    /// PARTITION if given, else to murmur2(key) % partitions like Kafka's default partitioner
    /// when it has a key, else each batch to the next partition in turn. A summary (records,
    /// partitions) is printed on stderr.
    Produce(ProduceArgs),
    /// Print records of a topic, alone or as a member of a consumer group.
    ///
    /// When it stops: with neither -n nor --follow, at the end of each partition as it was when
    /// consuming started (or, in a group, when the partitions were assigned), so it ends even
    /// while producers keep writing; with -n COUNT, after COUNT records, waiting for them as
    /// long as it takes; with --follow, on Ctrl-C (or COUNT). A group member then commits the
    /// offsets of what it printed and leaves the group. Records of compressed batches (gzip,
    /// snappy, lz4, zstd) are decompressed.
    Consume(ConsumeArgs),
    /// Print a shell completion script.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Cluster id, controller, brokers and racks, and partitions under-replicated or offline.
    Info,
}

/// `topic ...`
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Partitions (default: the broker's num.partitions).
        #[arg(short = 'p', long)]
        partitions: Option<i32>,
        /// Replication factor (default: the broker's default.replication.factor).
        #[arg(short = 'r', long = "replication-factor")]
        replication_factor: Option<i16>,
        /// A topic config, KEY=VALUE (repeatable).
        #[arg(short = 'c', long = "config", value_parser = parse_key_value, value_name = "KEY=VALUE")]
        configs: Vec<(String, String)>,
    },
    /// List topics.
    List {
        /// Include internal topics such as __consumer_offsets.
        #[arg(long)]
        internal: bool,
    },
    /// Partitions (leader, replicas, ISR, earliest and latest offsets) and configs of a topic.
    Describe {
        /// Topic name.
        name: String,
        /// Show every config, not only those set on the topic.
        #[arg(long)]
        all_configs: bool,
    },
    /// Delete topics.
    Delete {
        /// Topic names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Raise a topic's partition count.
    AddPartitions {
        /// Topic name.
        name: String,
        /// The partition count the topic should have.
        #[arg(long, value_name = "N")]
        total: i32,
    },
    /// Show a topic's configs, or change them (IncrementalAlterConfigs) and show the result.
    Config {
        /// Topic name.
        name: String,
        /// Set KEY=VALUE (repeatable).
        #[arg(long = "set", value_parser = parse_key_value, value_name = "KEY=VALUE")]
        set: Vec<(String, String)>,
        /// Remove a topic-level value, back to the broker default (repeatable).
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
        /// Show every config, not only those set on the topic.
        #[arg(long)]
        all_configs: bool,
    },
}

/// `group ...`
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups with their state.
    List,
    /// Members and their partitions, committed offsets, end offsets and lag.
    Describe {
        /// Group id.
        name: String,
    },
    /// Delete groups (they must have no members).
    Delete {
        /// Group ids.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Move a group's committed offsets for one topic (the group must have no members).
    ResetOffsets(ResetArgs),
}

/// `group reset-offsets ...`
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Group id.
    pub name: String,
    /// The topic whose offsets move (all its partitions).
    #[arg(long)]
    pub topic: String,
    /// Where to move them.
    #[command(flatten)]
    pub target: ResetTarget,
    /// Print the plan without committing it.
    #[arg(long)]
    pub dry_run: bool,
}

/// Exactly one reset target. Targets are clamped to [earliest, latest].
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ResetTarget {
    /// The earliest offset of each partition.
    #[arg(long)]
    pub to_earliest: bool,
    /// The latest offset of each partition (skip everything).
    #[arg(long)]
    pub to_latest: bool,
    /// This offset in every partition.
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub to_offset: Option<i64>,
    /// The first record at or after this time (ISO 8601; UTC unless a zone is given).
    #[arg(long, value_parser = parse_datetime, value_name = "ISO8601")]
    pub to_datetime: Option<i64>,
    /// Move the committed offsets by N (negative: back).
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub shift_by: Option<i64>,
}

/// `produce ...`
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to produce to (it must exist).
    pub topic: String,
    /// Split each line into key and value at the first KEY_SEP.
    #[arg(short = 'k', long = "key-separator", value_name = "KEY_SEP", value_parser = parse_separator)]
    pub key_separator: Option<String>,
    /// Produce to this partition (default: murmur2 of the key, or round-robin per batch).
    #[arg(short = 'p', long)]
    pub partition: Option<i32>,
}

/// `consume ...` (when it stops: see [`Command::Consume`]).
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to consume.
    pub topic: String,
    /// Consume as a member of this group: partitions assigned by the group (range), starting
    /// at its committed offsets, committing what was printed.
    #[arg(short = 'g', long)]
    pub group: Option<String>,
    /// Start at the earliest offset (default: latest) where there is no committed offset.
    #[arg(long)]
    pub from_beginning: bool,
    /// Stop after COUNT records.
    #[arg(short = 'n', long, value_name = "COUNT")]
    pub count: Option<u64>,
    /// Only this partition (not with --group).
    #[arg(long, conflicts_with = "group")]
    pub partition: Option<i32>,
    /// Keep waiting for new records instead of stopping at the end.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Report group membership (member id, generation, assigned partitions) on stderr.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Output format: %k key, %v value, %p partition, %o offset, %t topic, %T timestamp (ms),
    /// %h headers, %K/%S key/value length, %%; escapes \n \t \r \0 \\.
    #[arg(long, default_value = "%v\\n", value_parser = parse_template, value_name = "FMT")]
    pub format: Template,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("{s} is not between 0 and 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

fn parse_datetime(s: &str) -> Result<i64, String> {
    parse_iso8601(s)
}

fn parse_template(s: &str) -> Result<Template, String> {
    Template::parse(s)
}

fn parse_separator(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the key separator cannot be empty".into());
    }
    // Let operators type `-k '\t'` for a tab.
    Ok(match s {
        "\\t" => "\t".to_string(),
        "\\n" => "\n".to_string(),
        _ => s.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn reset_needs_exactly_one_target() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        assert!(parse(&["sluicectl", "group", "reset-offsets", "g", "--topic", "t"]).is_err());
        assert!(
            parse(&[
                "sluicectl",
                "group",
                "reset-offsets",
                "g",
                "--topic",
                "t",
                "--to-earliest",
                "--to-latest"
            ])
            .is_err()
        );
        let ok = parse(&[
            "sluicectl",
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--shift-by",
            "-2",
        ])
        .expect("parses");
        match ok.command {
            Command::Group {
                command: GroupCommand::ResetOffsets(r),
            } => assert_eq!(r.target.shift_by, Some(-2)),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["sluicectl", "--timeout", "0", "cluster", "info"][..],
            &["sluicectl", "topic", "create", "t", "-c", "novalue"],
            &["sluicectl", "consume", "t", "--format", "%q"],
            &[
                "sluicectl",
                "group",
                "reset-offsets",
                "g",
                "--topic",
                "t",
                "--to-datetime",
                "soon",
            ],
            &[
                "sluicectl",
                "consume",
                "t",
                "--group",
                "g",
                "--partition",
                "1",
            ],
        ] {
            let e = Cli::try_parse_from(args).expect_err("refused");
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }
}
