//! `sluice`: a Kafka-compatible broker node. With no arguments it starts a single-node cluster
//! with its data in `./sluice-data`, serving clients on `127.0.0.1:9092`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sluice_node::alloc_guard::GuardedAllocator;
use sluice_node::config::BrokerConfig;

#[global_allocator]
static ALLOCATOR: GuardedAllocator = GuardedAllocator;

/// A Kafka-wire-compatible streaming node.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
struct Args {
    /// Where partition logs and metadata live.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "./sluice-data")]
    data_dir: PathBuf,
    /// Address to accept Kafka clients on.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:9092")]
    listen: String,
    /// Address clients are told to connect to (Metadata); defaults to --listen.
    #[arg(long, env = "SLUICE_ADVERTISE")]
    advertise: Option<String>,
    /// This node's broker id.
    #[arg(long, env = "SLUICE_NODE_ID", default_value_t = 1)]
    node_id: i32,
    /// Rack (availability zone) of this node, as Kafka's broker.rack.
    #[arg(long, env = "SLUICE_RACK")]
    rack: Option<String>,
    /// A broker config by its Kafka name, e.g. `num.partitions=4`. Repeatable; in the
    /// environment, separate several with `;`.
    #[arg(
        long = "override",
        value_name = "KEY=VALUE",
        env = "SLUICE_OVERRIDE",
        value_delimiter = ';'
    )]
    overrides: Vec<String>,
    /// Every node of a multi-node cluster, this one included, as
    /// `ID=KAFKA_HOST:PORT/RAFT_HOST:PORT[/RACK]`: its Kafka address (advertised to clients),
    /// its node-to-node Raft address and its rack. Repeatable; in the environment, separate
    /// several with `,`. Without it the node is a single-node cluster.
    #[arg(
        long = "peer",
        value_name = "PEER",
        env = "SLUICE_PEERS",
        value_delimiter = ','
    )]
    peers: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    sluice_node::init_logging();
    sluice_node::alloc_guard::keep_freed_memory();
    sluice_node::alloc_guard::return_idle_memory();
    let config = BrokerConfig::from_args(
        args.node_id,
        &args.listen,
        args.advertise.as_deref(),
        args.rack,
        args.data_dir,
        &args.overrides,
    )?
    .with_peers(
        args.peers
            .iter()
            .map(|p| sluice_node::config::PeerConfig::parse(p))
            .collect::<anyhow::Result<Vec<_>>>()?,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-worker")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(sluice_node::run_until_signal(config))
}
