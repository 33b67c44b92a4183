//! sluicectl, the ops CLI of Sluice: admin, produce and consume over the Kafka wire protocol,
//! against Sluice or any Kafka-compatible cluster. Blocking sockets, one thread.
//!
//! - [`args`]: the command line (clap); values are checked here, so typos are usage errors.
//! - [`error`]: the client-layer error type, exit codes, Kafka error names.
//! - `wire`: one broker connection: ApiVersions, version choice, framed calls under `--timeout`.
//! - `client`: the cluster: bootstrap, per-broker connections, Metadata, ListOffsets, coordinators.
//! - `cluster`, `topics`, `groups`: the admin commands.
//! - `produce` (with `partitioner`, Kafka's murmur2) and `consume` (with `member`, the group
//!   member, and `group_protocol`, the consumer protocol bytes and range assignor).
//! - `records`: fetched batches to records, decompressing gzip, snappy, lz4 and zstd.
//! - `output`, [`template`], `datetime`: JSON, tables and progress; `--format`; ISO 8601 times.

pub mod args;
mod client;
mod cluster;
mod consume;
mod datetime;
pub mod error;
mod group_protocol;
mod groups;
mod member;
mod output;
mod partitioner;
mod produce;
mod records;
pub mod template;
mod topics;
mod wire;

use args::{Cli, ClusterCommand, Command, GroupCommand, TopicCommand};
use clap::CommandFactory;
use error::{ClientError, Result};

/// Runs one parsed command line; output goes to stdout, progress to stderr.
pub fn run(cli: Cli) -> Result<()> {
    if let Command::Completion { shell } = cli.command {
        let mut command = Cli::command();
        let mut stdout = std::io::stdout();
        clap_complete::generate(shell, &mut command, "sluicectl", &mut stdout);
        return Ok(());
    }
    let mut out = output::Out::stdout(cli.json);
    let mut client = client::Client::connect(&cli.bootstrap, cli.timeout)?;
    let c = &mut client;
    let o = &mut out;
    match &cli.command {
        Command::Cluster {
            command: ClusterCommand::Info,
        } => cluster::info(c, o)?,
        Command::Topic { command } => match command {
            TopicCommand::Create {
                name,
                partitions,
                replication_factor,
                configs,
            } => topics::create(c, o, name, *partitions, *replication_factor, configs)?,
            TopicCommand::List { internal } => topics::list(c, o, *internal)?,
            TopicCommand::Describe { name, all_configs } => {
                topics::describe(c, o, name, *all_configs)?
            }
            TopicCommand::Delete { names } => topics::delete(c, o, names)?,
            TopicCommand::AddPartitions { name, total } => {
                topics::add_partitions(c, o, name, *total)?
            }
            TopicCommand::Config {
                name,
                set,
                delete,
                all_configs,
            } => topics::config(c, o, name, set, delete, *all_configs)?,
        },
        Command::Group { command } => match command {
            GroupCommand::List => groups::list(c, o)?,
            GroupCommand::Describe { name } => groups::describe(c, o, name)?,
            GroupCommand::Delete { names } => groups::delete(c, o, names)?,
            GroupCommand::ResetOffsets(args) => groups::reset_offsets(c, o, args)?,
        },
        Command::Produce(args) => {
            let opts = produce::ProduceOptions {
                topic: &args.topic,
                key_separator: args.key_separator.as_deref().map(str::as_bytes),
                partition: args.partition,
            };
            produce::run(c, o, &opts, std::io::stdin().lock())?;
        }
        Command::Consume(args) => {
            let opts = consume::ConsumeOptions {
                topic: &args.topic,
                group: args.group.as_deref(),
                from_beginning: args.from_beginning,
                count: args.count,
                partition: args.partition,
                follow: args.follow,
                verbose: args.verbose,
                template: &args.format,
            };
            consume::run(c, o, &opts)?;
        }
        Command::Completion { .. } => {
            return Err(ClientError::Invalid(
                "completion is handled before connecting".into(),
            ));
        }
    }
    out.flush()
}
