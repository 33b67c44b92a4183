//! The accept loop. Takes an already-bound listener and a shutdown signal, so tests bind port 0
//! and stop the node cleanly.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::broker::Broker;
use crate::connection;

/// Accepts connections until `shutdown` becomes true, then waits for every connection task to
/// finish its in-flight responses.
pub async fn run(listener: TcpListener, broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let limit = Arc::new(Semaphore::new(broker.config().max_connections));
    let mut connections = JoinSet::new();
    let for_connections = shutdown.clone();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: log and keep serving the connections we have.
                        error!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    warn!(%peer, "refusing connection: max.connections ({}) reached", broker.config().max_connections);
                    drop(stream);
                    continue;
                };
                let broker = broker.clone();
                let stop = for_connections.clone();
                connections.spawn(async move {
                    connection::serve(stream, peer, broker, stop).await;
                    drop(permit);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    info!(
        "listener closed; waiting for {} connections",
        connections.len()
    );
    while connections.join_next().await.is_some() {}
}

/// Completes once shutdown is signalled (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it before the caller's next await.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
