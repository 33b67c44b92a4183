//! The broker: shared state of one node and the dispatch of each request to its handler.
//!
//! Every request is *started* by [`Broker::start`] in the order it arrived on its connection.
//! Starting does what must happen in order (a produce appends to the log); what may take a while
//! (waiting for durability, a long-poll fetch, a rebalance) is returned as a [`Completion`] that
//! the connection's writer awaits in order.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use sluice_protocol::api_table::ApiTable;
use sluice_protocol::request::Request;

use crate::cluster::Cluster;
use crate::config::BrokerConfig;
use crate::groups::Groups;
use crate::handlers;

/// Who sent a request.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The client id from the request header.
    pub client_id: String,
    /// The peer's address.
    pub peer: SocketAddr,
}

/// The rest of a started request: its response, now or later, or none (acks=0).
pub enum Completion {
    /// Answered already; `None` means no response is sent (Produce with acks=0).
    Ready(Option<Box<ResponseKind>>),
    /// Answered when the future completes.
    Later(Pin<Box<dyn Future<Output = Option<Box<ResponseKind>>> + Send>>),
}

impl Completion {
    /// A response available now.
    pub fn now(response: ResponseKind) -> Self {
        Completion::Ready(Some(Box::new(response)))
    }

    /// A response that needs waiting for.
    pub fn later(f: impl Future<Output = ResponseKind> + Send + 'static) -> Self {
        Completion::Later(Box::pin(async move { Some(Box::new(f.await)) }))
    }

    /// True when the response needs no more waiting. A deferred response is polled once
    /// (without registering interest), so one that has just finished, e.g. a produce whose
    /// fsync completed with the previous one, counts as ready and goes out in the same write.
    pub fn is_ready(&mut self) -> bool {
        if let Completion::Later(f) = self {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if let std::task::Poll::Ready(response) = f.as_mut().poll(&mut cx) {
                *self = Completion::Ready(response);
            }
        }
        matches!(self, Completion::Ready(_))
    }

    /// Waits for the response.
    pub async fn finish(self) -> Option<Box<ResponseKind>> {
        match self {
            Completion::Ready(r) => r,
            Completion::Later(f) => f.await,
        }
    }
}

/// The APIs the node answers itself, with their versions. Group APIs come from the
/// coordinator's own table; [`implemented_apis`] joins the two, and is the single source for
/// ApiVersions and dispatch (a test calls every listed API at every listed version).
const NODE_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 13),
    (ApiKey::Fetch, 4, 17),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
];

/// Every API this broker implements, with the versions advertised in ApiVersions.
pub fn implemented_apis() -> Vec<(ApiKey, i16, i16)> {
    NODE_APIS
        .iter()
        .chain(sluice_coordinator::SUPPORTED_APIS)
        .copied()
        .collect()
}

/// One node's shared state.
pub struct Broker {
    config: BrokerConfig,
    api_table: ApiTable,
    /// Topics, partitions and their logs.
    pub cluster: Arc<Cluster>,
    /// Consumer groups and committed offsets.
    pub groups: Groups,
    /// queued.max.request.bytes, in KiB permits.
    request_memory: Arc<tokio::sync::Semaphore>,
}

impl Broker {
    /// Opens the data directory (recovering logs as needed) and loads groups and offsets.
    pub async fn open(config: BrokerConfig) -> anyhow::Result<Arc<Broker>> {
        let cluster = Cluster::open(&config).await?;
        let groups = Groups::start(&config, cluster.clone()).await?;
        let budget_kib = config.queued_max_request_bytes.div_ceil(1024);
        Ok(Arc::new(Broker {
            request_memory: Arc::new(tokio::sync::Semaphore::new(budget_kib)),
            api_table: ApiTable::new(implemented_apis()),
            config,
            cluster,
            groups,
        }))
    }

    /// The node's configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Waits until `bytes` of request memory are free in the broker-wide budget
    /// (`queued.max.request.bytes`); the permit gives them back when dropped.
    pub async fn reserve_request_memory(&self, bytes: usize) -> tokio::sync::OwnedSemaphorePermit {
        // A frame is never larger than the whole budget (checked at start-up), so this always
        // completes once enough requests have been answered.
        let kib = bytes.div_ceil(1024).max(1) as u32;
        match self.request_memory.clone().acquire_many_owned(kib).await {
            Ok(permit) => permit,
            // The semaphore is never closed.
            Err(_) => unreachable!("the request memory semaphore is never closed"),
        }
    }

    /// The APIs and versions advertised in ApiVersions.
    pub fn api_table(&self) -> &ApiTable {
        &self.api_table
    }

    /// Starts one request; see the module docs for what "start" means.
    pub async fn start(self: &Arc<Self>, request: Request, ctx: RequestContext) -> Completion {
        let version = request.version();
        let api_key = request.api_key;
        match request.body {
            RequestKind::ApiVersions(_) => Completion::now(ResponseKind::ApiVersions(
                self.api_table.api_versions_response(0),
            )),
            RequestKind::Metadata(r) => Completion::now(ResponseKind::Metadata(
                handlers::metadata::metadata(self, r, version).await,
            )),
            RequestKind::DescribeCluster(r) => Completion::now(ResponseKind::DescribeCluster(
                handlers::metadata::describe_cluster(self, r, version),
            )),
            RequestKind::Produce(r) => handlers::produce::start(self, r, version),
            RequestKind::Fetch(r) => handlers::fetch::start(self, r, version),
            RequestKind::ListOffsets(r) => Completion::now(ResponseKind::ListOffsets(
                handlers::offsets::list_offsets(self, r, version),
            )),
            RequestKind::OffsetForLeaderEpoch(r) => {
                Completion::now(ResponseKind::OffsetForLeaderEpoch(
                    handlers::offsets::offset_for_leader_epoch(self, r, version),
                ))
            }
            RequestKind::DeleteRecords(r) => Completion::now(ResponseKind::DeleteRecords(
                handlers::offsets::delete_records(self, r, version).await,
            )),
            RequestKind::CreateTopics(r) => Completion::now(ResponseKind::CreateTopics(
                handlers::admin::create_topics(self, r, version).await,
            )),
            RequestKind::DeleteTopics(r) => Completion::now(ResponseKind::DeleteTopics(
                handlers::admin::delete_topics(self, r, version).await,
            )),
            RequestKind::CreatePartitions(r) => Completion::now(ResponseKind::CreatePartitions(
                handlers::admin::create_partitions(self, r, version).await,
            )),
            RequestKind::DescribeConfigs(r) => Completion::now(ResponseKind::DescribeConfigs(
                handlers::configs::describe_configs(self, r, version),
            )),
            RequestKind::AlterConfigs(r) => Completion::now(ResponseKind::AlterConfigs(
                handlers::configs::alter_configs(self, r, version).await,
            )),
            RequestKind::IncrementalAlterConfigs(r) => {
                Completion::now(ResponseKind::IncrementalAlterConfigs(
                    handlers::configs::incremental_alter_configs(self, r, version).await,
                ))
            }
            RequestKind::InitProducerId(r) => Completion::now(ResponseKind::InitProducerId(
                handlers::producer_id::init_producer_id(self, r, version).await,
            )),
            RequestKind::FindCoordinator(r) => Completion::now(ResponseKind::FindCoordinator(
                handlers::groups::find_coordinator(self, r, version).await,
            )),
            RequestKind::OffsetCommit(r) => handlers::groups::offset_commit(self, r, version, &ctx),
            body @ (RequestKind::JoinGroup(_)
            | RequestKind::SyncGroup(_)
            | RequestKind::Heartbeat(_)
            | RequestKind::LeaveGroup(_)
            | RequestKind::OffsetFetch(_)
            | RequestKind::OffsetDelete(_)
            | RequestKind::DescribeGroups(_)
            | RequestKind::ListGroups(_)
            | RequestKind::DeleteGroups(_)) => self.groups.start_request(body, version, &ctx),
            _ => {
                // Unreachable while IMPLEMENTED_APIS and this match agree (tested); never
                // leave a client hanging silently if they drift.
                tracing::error!(
                    ?api_key,
                    "advertised API has no handler; dropping the request"
                );
                Completion::Ready(None)
            }
        }
    }

    /// Stops background work and closes every log cleanly.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        self.groups.shutdown().await;
        self.cluster.shutdown().await
    }
}
