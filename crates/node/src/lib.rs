//! The Sluice broker node: configuration, listener, connections and request dispatch.
//!
//! - [`config`]: broker settings from flags and `--override KEY=VALUE` (Kafka names).
//! - [`server`] / [`connection`]: accept loop; per-connection framing, pipelining, ordering.
//! - [`broker`]: the shared broker state and dispatch of each API to its handler.
//! - `handlers`: one module per group of Kafka APIs (produce, fetch, metadata, admin, groups).
//! - [`alloc_guard`]: keeps a hostile array length in a request from aborting the process;
//!   tunes glibc malloc to reuse memory under load and hands it back once the node is quiet.

pub mod alloc_guard;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod groups;
mod handlers;
pub mod quorum;
pub mod server;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::broker::Broker;
use crate::config::BrokerConfig;

/// Logs to stderr; `SLUICE_LOG` (or `RUST_LOG`) takes tracing filter directives. By default
/// openraft's own logging is off: it reports every failed heartbeat of every group while a
/// peer is down. The transport logs a peer becoming unreachable and reachable once each;
/// `SLUICE_LOG=info,openraft=info` brings openraft's back.
pub fn init_logging() {
    let filter = std::env::var("SLUICE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,openraft=off".into());
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// A running node: its bound address and the handle that stops it.
pub struct Node {
    /// The address the listener is bound to (useful with port 0).
    pub local_addr: std::net::SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Node {
    /// Opens the data directory, binds the listener and starts serving.
    pub async fn start(config: BrokerConfig) -> anyhow::Result<Node> {
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        Self::start_with_listener(config, listener).await
    }

    /// Starts serving on an already-bound listener.
    pub async fn start_with_listener(
        mut config: BrokerConfig,
        listener: TcpListener,
    ) -> anyhow::Result<Node> {
        let local_addr = listener.local_addr()?;
        if config.advertise_port == 0 {
            config.advertise_port = local_addr.port();
        }
        let broker = Broker::open(config).await?;
        let (tx, rx) = watch::channel(false);
        info!(
            node_id = broker.config().node_id,
            "serving Kafka clients on {local_addr}, advertised as {}:{}",
            broker.config().advertise_host,
            broker.config().advertise_port
        );
        let task = tokio::spawn(async move {
            server::run(listener, broker.clone(), rx).await;
            broker.shutdown().await
        });
        Ok(Node {
            local_addr,
            shutdown: tx,
            task,
        })
    }

    /// Stops accepting, lets connections finish, and closes the logs cleanly.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.context("node task panicked")?
    }
}

/// Runs a node until SIGINT or SIGTERM, then shuts it down cleanly.
pub async fn run_until_signal(config: BrokerConfig) -> anyhow::Result<()> {
    let node = Node::start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        _ = term.recv() => info!("SIGTERM: shutting down"),
    }
    node.stop().await?;
    info!("shut down cleanly");
    Ok(())
}
