//! `cluster info`: who the cluster is, its brokers, and how healthy its partitions are.

use std::time::Duration;

use sluice_protocol::kafka_protocol::messages::ApiKey;
use sluice_protocol::kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;

use crate::client::{BrokerInfo, Client};
use crate::error::Result;
use crate::output::{Json, Out, Table, cell};
use crate::wire::check;

/// Partition health counted over every topic, internal ones included.
#[derive(Debug, Default, PartialEq, Eq)]
struct Health {
    topics: usize,
    partitions: usize,
    /// ISR smaller than the replica set.
    under_replicated: usize,
    /// No leader.
    offline: usize,
}

/// Prints the cluster's id, controller, brokers and partition health.
pub(crate) fn info(client: &mut Client, out: &mut Out) -> Result<()> {
    let meta = client.metadata(None)?;
    let (mut cluster_id, mut controller, mut brokers) = (
        meta.cluster_id.clone(),
        meta.controller,
        meta.brokers.clone(),
    );
    // DescribeCluster names the active controller (in KRaft, Metadata's controller id is any
    // broker); use it when the broker has it.
    if client.any().supports(ApiKey::DescribeCluster) {
        let (r, _) = client
            .any()
            .call(|_| DescribeClusterRequest::default(), Duration::ZERO)?;
        check(r.error_code, r.error_message.as_ref(), || {
            "the broker refused DescribeCluster".into()
        })?;
        cluster_id = Some(r.cluster_id.to_string());
        controller = r.controller_id.0;
        brokers = r
            .brokers
            .iter()
            .map(|b| BrokerInfo {
                id: b.broker_id.0,
                host: b.host.to_string(),
                port: b.port,
                rack: b.rack.as_ref().map(|r| r.to_string()),
            })
            .collect();
    }
    brokers.sort_by_key(|b| b.id);
    let mut health = Health {
        topics: meta.topics.len(),
        ..Health::default()
    };
    for p in meta.topics.iter().flat_map(|t| &t.partitions) {
        health.partitions += 1;
        if p.isr.len() < p.replicas.len() {
            health.under_replicated += 1;
        }
        if p.leader < 0 {
            health.offline += 1;
        }
    }
    if out.json {
        let doc = Json::obj([
            ("cluster_id", Json::from(cluster_id)),
            ("controller", Json::from(controller)),
            (
                "brokers",
                Json::Arr(
                    brokers
                        .iter()
                        .map(|b| {
                            Json::obj([
                                ("id", Json::from(b.id)),
                                ("host", Json::from(&b.host)),
                                ("port", Json::from(b.port)),
                                ("rack", Json::from(b.rack.clone())),
                            ])
                        })
                        .collect(),
                ),
            ),
            ("topics", Json::from(health.topics)),
            ("partitions", Json::from(health.partitions)),
            ("under_replicated", Json::from(health.under_replicated)),
            ("offline", Json::from(health.offline)),
        ]);
        return out.json(&doc);
    }
    let mut summary = Table::new(&[
        "CLUSTER-ID",
        "CONTROLLER",
        "TOPICS",
        "PARTITIONS",
        "UNDER-REPLICATED",
        "OFFLINE",
    ]);
    summary.row(vec![
        cell(cluster_id),
        controller.to_string(),
        health.topics.to_string(),
        health.partitions.to_string(),
        health.under_replicated.to_string(),
        health.offline.to_string(),
    ]);
    let mut table = Table::new(&["BROKER", "HOST", "PORT", "RACK"]);
    for b in &brokers {
        table.row(vec![
            b.id.to_string(),
            b.host.clone(),
            b.port.to_string(),
            cell(b.rack.clone()),
        ]);
    }
    out.text(&format!("{}\n{}", summary.render(), table.render()))
}
