//! `topic create|list|describe|delete|add-partitions|config`.

use std::time::Duration;

use sluice_protocol::kafka_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::TopicName;
use sluice_protocol::kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsRequest, CreatePartitionsTopic,
};
use sluice_protocol::kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use sluice_protocol::kafka_protocol::messages::delete_topics_request::{
    DeleteTopicState, DeleteTopicsRequest,
};
use sluice_protocol::kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use sluice_protocol::kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig, IncrementalAlterConfigsRequest,
};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use crate::client::{Client, EARLIEST, LATEST, topic_error, topic_id_string};
use crate::error::{ClientError, Result};
use crate::output::{Json, Out, Table, cell};
use crate::wire::check;

/// ConfigResource type of a topic.
const TOPIC_RESOURCE: i8 = 2;
/// DescribeConfigs source of a value set on the topic itself.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// `topic create`.
pub(crate) fn create(
    client: &mut Client,
    out: &mut Out,
    topic: &str,
    partitions: Option<i32>,
    replication_factor: Option<i16>,
    configs: &[(String, String)],
) -> Result<()> {
    let timeout_ms = client.timeout_ms();
    let conn = client.controller()?;
    // CreateTopics v4+ (KIP-464) takes -1 for "the broker's default"; older brokers need both.
    let v = conn.version(sluice_protocol::kafka_protocol::messages::ApiKey::CreateTopics)?;
    if v < 4 && (partitions.is_none() || replication_factor.is_none()) {
        return Err(ClientError::Invalid(
            "this broker has no default partition count or replication factor for new topics; give -p and -r".into(),
        ));
    }
    let (r, v) = conn.call(
        |_| {
            let mut t = CreatableTopic::default();
            t.name = name(topic);
            t.num_partitions = partitions.unwrap_or(-1);
            t.replication_factor = replication_factor.unwrap_or(-1);
            t.configs = configs
                .iter()
                .map(|(k, val)| {
                    let mut c = CreatableTopicConfig::default();
                    c.name = StrBytes::from_string(k.clone());
                    c.value = Some(StrBytes::from_string(val.clone()));
                    c
                })
                .collect();
            let mut req = CreateTopicsRequest::default();
            req.topics = vec![t];
            req.timeout_ms = timeout_ms;
            req
        },
        Duration::ZERO,
    )?;
    let result = r
        .topics
        .into_iter()
        .find(|t| t.name.0.as_str() == topic)
        .ok_or_else(|| {
            ClientError::Protocol(format!("CreateTopics did not answer for topic {topic}"))
        })?;
    check(result.error_code, result.error_message.as_ref(), || {
        if result.error_code == ResponseError::TopicAlreadyExists.code() {
            format!("topic {topic} already exists")
        } else {
            format!("cannot create topic {topic}")
        }
    })?;
    // v5+ answers with what the broker chose for -1; older ones only echo success.
    let (p, rf) = if v >= 5 && result.num_partitions > 0 {
        (
            i64::from(result.num_partitions),
            i64::from(result.replication_factor),
        )
    } else {
        let t = client.topic(topic)?;
        (t.partitions.len() as i64, t.replication_factor() as i64)
    };
    if out.json {
        return out.json(&Json::obj([
            ("name", Json::from(topic)),
            ("partitions", Json::from(p)),
            ("replication_factor", Json::from(rf)),
        ]));
    }
    out.text(&format!(
        "created topic {topic} with {p} partition{}, replication factor {rf}\n",
        if p == 1 { "" } else { "s" }
    ))
}

/// `topic list`.
pub(crate) fn list(client: &mut Client, out: &mut Out, internal: bool) -> Result<()> {
    let meta = client.metadata(None)?;
    let topics: Vec<_> = meta
        .topics
        .iter()
        .filter(|t| internal || !t.internal)
        .collect();
    if out.json {
        return out.json(&Json::Arr(
            topics
                .iter()
                .map(|t| {
                    Json::obj([
                        ("name", Json::from(&t.name)),
                        ("partitions", Json::from(t.partitions.len())),
                        ("replication_factor", Json::from(t.replication_factor())),
                    ])
                })
                .collect(),
        ));
    }
    let mut table = Table::new(&["NAME", "PARTITIONS", "REPLICATION"]);
    for t in topics {
        table.row(vec![
            t.name.clone(),
            t.partitions.len().to_string(),
            t.replication_factor().to_string(),
        ]);
    }
    out.text(&table.render())
}

/// One config entry as DescribeConfigs gave it.
struct ConfigEntry {
    name: String,
    value: Option<String>,
    source: i8,
}

fn source_name(source: i8) -> &'static str {
    match source {
        1 => "DYNAMIC_TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => "DEFAULT_CONFIG",
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        7 => "CLIENT_METRICS_CONFIG",
        8 => "GROUP_CONFIG",
        _ => "UNKNOWN",
    }
}

/// The topic's configs: those set on the topic, or all with `all`.
fn describe_configs(client: &mut Client, topic: &str, all: bool) -> Result<Vec<ConfigEntry>> {
    let (r, _) = client.any().call(
        |_| {
            let mut res = DescribeConfigsResource::default();
            res.resource_type = TOPIC_RESOURCE;
            res.resource_name = StrBytes::from_string(topic.to_string());
            res.configuration_keys = None;
            let mut req = DescribeConfigsRequest::default();
            req.resources = vec![res];
            req
        },
        Duration::ZERO,
    )?;
    let result = r.results.into_iter().next().ok_or_else(|| {
        ClientError::Protocol(format!("DescribeConfigs did not answer for topic {topic}"))
    })?;
    if result.error_code != 0 {
        return Err(match result.error_message.as_ref().map(|m| m.as_str()) {
            Some(m) if !m.is_empty() => ClientError::kafka(result.error_code, Some(m), String::new),
            _ => topic_error(result.error_code, topic),
        });
    }
    let mut entries: Vec<ConfigEntry> = result
        .configs
        .into_iter()
        .filter(|c| all || c.config_source == DYNAMIC_TOPIC_CONFIG)
        .map(|c| ConfigEntry {
            name: c.name.to_string(),
            // A sensitive value is never shown, whatever the broker sent.
            value: if c.is_sensitive {
                None
            } else {
                c.value.map(|v| v.to_string())
            },
            source: c.config_source,
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

fn configs_json(entries: &[ConfigEntry]) -> Json {
    Json::obj(
        entries
            .iter()
            .map(|e| (e.name.clone(), Json::from(e.value.clone()))),
    )
}

fn configs_table(entries: &[ConfigEntry], all: bool) -> String {
    if entries.is_empty() {
        return "no configs set on the topic (--all-configs shows every value)\n".into();
    }
    let mut table = if all {
        Table::new(&["CONFIG", "VALUE", "SOURCE"])
    } else {
        Table::new(&["CONFIG", "VALUE"])
    };
    for e in entries {
        let mut row = vec![
            e.name.clone(),
            e.value.clone().unwrap_or_else(|| "(sensitive)".into()),
        ];
        if all {
            row.push(source_name(e.source).into());
        }
        table.row(row);
    }
    table.render()
}

/// `topic describe`.
pub(crate) fn describe(
    client: &mut Client,
    out: &mut Out,
    topic: &str,
    all_configs: bool,
) -> Result<()> {
    let info = client.topic(topic)?;
    let indexes: Vec<i32> = info.partitions.iter().map(|p| p.index).collect();
    let online: Vec<i32> = info
        .partitions
        .iter()
        .filter(|p| p.leader >= 0)
        .map(|p| p.index)
        .collect();
    let earliest = client.list_offsets(&info, &online, EARLIEST)?;
    let latest = client.list_offsets(&info, &online, LATEST)?;
    let configs = describe_configs(client, topic, all_configs)?;
    let ids = |v: &[i32]| v.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    if out.json {
        let partitions = info
            .partitions
            .iter()
            .map(|p| {
                Json::obj([
                    ("partition", Json::from(p.index)),
                    ("leader", Json::from(p.leader)),
                    ("replicas", Json::arr(p.replicas.iter().copied())),
                    ("isr", Json::arr(p.isr.iter().copied())),
                    ("earliest", Json::from(earliest.get(&p.index).copied())),
                    ("latest", Json::from(latest.get(&p.index).copied())),
                ])
            })
            .collect();
        return out.json(&Json::obj([
            ("name", Json::from(topic)),
            ("id", Json::from(topic_id_string(&info.id))),
            ("partitions", Json::Arr(partitions)),
            ("configs", configs_json(&configs)),
        ]));
    }
    let mut head = Table::new(&["TOPIC", "ID", "PARTITIONS", "REPLICATION"]);
    head.row(vec![
        topic.to_string(),
        topic_id_string(&info.id),
        indexes.len().to_string(),
        info.replication_factor().to_string(),
    ]);
    let mut parts = Table::new(&[
        "PARTITION",
        "LEADER",
        "REPLICAS",
        "ISR",
        "EARLIEST",
        "LATEST",
    ]);
    for p in &info.partitions {
        parts.row(vec![
            p.index.to_string(),
            if p.leader >= 0 {
                p.leader.to_string()
            } else {
                "none".into()
            },
            ids(&p.replicas),
            ids(&p.isr),
            cell(earliest.get(&p.index)),
            cell(latest.get(&p.index)),
        ]);
    }
    out.text(&format!(
        "{}\n{}\n{}",
        head.render(),
        parts.render(),
        configs_table(&configs, all_configs)
    ))
}

/// `topic delete`: deletes what it can, then reports every failure.
pub(crate) fn delete(client: &mut Client, out: &mut Out, topics: &[String]) -> Result<()> {
    let timeout_ms = client.timeout_ms();
    let (r, _) = client.controller()?.call(
        |v| {
            let mut req = DeleteTopicsRequest::default();
            req.timeout_ms = timeout_ms;
            if v >= 6 {
                req.topics = topics
                    .iter()
                    .map(|t| {
                        let mut s = DeleteTopicState::default();
                        s.name = Some(name(t));
                        s
                    })
                    .collect();
            } else {
                req.topic_names = topics.iter().map(|t| name(t)).collect();
            }
            req
        },
        Duration::ZERO,
    )?;
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for t in topics {
        let answer = r
            .responses
            .iter()
            .find(|x| x.name.as_ref().is_some_and(|n| n.0.as_str() == t.as_str()));
        match answer {
            None => errors.push(ClientError::Protocol(format!(
                "DeleteTopics did not answer for topic {t}"
            ))),
            Some(a) if a.error_code == 0 => deleted.push(t.clone()),
            Some(a) => errors.push(match a.error_message.as_ref().map(|m| m.as_str()) {
                Some(m) if !m.is_empty() => ClientError::kafka(a.error_code, Some(m), String::new),
                _ => topic_error(a.error_code, t),
            }),
        }
    }
    if out.json {
        out.json(&Json::obj([("deleted", Json::arr(deleted.iter()))]))?;
    } else {
        for t in &deleted {
            out.text(&format!("deleted topic {t}\n"))?;
        }
    }
    last_of(errors)
}

/// Prints all but the last error, returns the last: each failure gets its own sentence.
pub(crate) fn last_of(mut errors: Vec<ClientError>) -> Result<()> {
    match errors.pop() {
        None => Ok(()),
        Some(last) => {
            for e in errors {
                eprintln!("{e}");
            }
            Err(last)
        }
    }
}

/// `topic add-partitions`.
pub(crate) fn add_partitions(
    client: &mut Client,
    out: &mut Out,
    topic: &str,
    total: i32,
) -> Result<()> {
    let timeout_ms = client.timeout_ms();
    let (r, _) = client.controller()?.call(
        |_| {
            let mut t = CreatePartitionsTopic::default();
            t.name = name(topic);
            t.count = total;
            t.assignments = None;
            let mut req = CreatePartitionsRequest::default();
            req.topics = vec![t];
            req.timeout_ms = timeout_ms;
            req
        },
        Duration::ZERO,
    )?;
    let result = r.results.into_iter().next().ok_or_else(|| {
        ClientError::Protocol(format!("CreatePartitions did not answer for topic {topic}"))
    })?;
    if result.error_code != 0 {
        return Err(match result.error_message.as_ref().map(|m| m.as_str()) {
            Some(m) if !m.is_empty() => ClientError::kafka(result.error_code, Some(m), String::new),
            _ => topic_error(result.error_code, topic),
        });
    }
    if out.json {
        return out.json(&Json::obj([
            ("name", Json::from(topic)),
            ("partitions", Json::from(total)),
        ]));
    }
    out.text(&format!(
        "topic {topic} now has {total} partition{}\n",
        if total == 1 { "" } else { "s" }
    ))
}

/// `topic config`: applies `--set`/`--delete` if any, then shows the configs.
pub(crate) fn config(
    client: &mut Client,
    out: &mut Out,
    topic: &str,
    set: &[(String, String)],
    delete: &[String],
    all_configs: bool,
) -> Result<()> {
    if !set.is_empty() || !delete.is_empty() {
        let (r, _) = client.any().call(
            |_| {
                let mut configs = Vec::new();
                for (k, v) in set {
                    let mut c = AlterableConfig::default();
                    c.name = StrBytes::from_string(k.clone());
                    c.config_operation = OP_SET;
                    c.value = Some(StrBytes::from_string(v.clone()));
                    configs.push(c);
                }
                for k in delete {
                    let mut c = AlterableConfig::default();
                    c.name = StrBytes::from_string(k.clone());
                    c.config_operation = OP_DELETE;
                    c.value = None;
                    configs.push(c);
                }
                let mut res = AlterConfigsResource::default();
                res.resource_type = TOPIC_RESOURCE;
                res.resource_name = StrBytes::from_string(topic.to_string());
                res.configs = configs;
                let mut req = IncrementalAlterConfigsRequest::default();
                req.resources = vec![res];
                req
            },
            Duration::ZERO,
        )?;
        let result = r.responses.into_iter().next().ok_or_else(|| {
            ClientError::Protocol(format!(
                "IncrementalAlterConfigs did not answer for topic {topic}"
            ))
        })?;
        if result.error_code != 0 {
            return Err(match result.error_message.as_ref().map(|m| m.as_str()) {
                Some(m) if !m.is_empty() => {
                    ClientError::kafka(result.error_code, Some(m), String::new)
                }
                _ if result.error_code == ResponseError::InvalidConfig.code() => {
                    ClientError::kafka(result.error_code, None, || {
                        format!("invalid config for topic {topic}")
                    })
                }
                _ => topic_error(result.error_code, topic),
            });
        }
    }
    let configs = describe_configs(client, topic, all_configs)?;
    if out.json {
        return out.json(&Json::obj([
            ("name", Json::from(topic)),
            ("configs", configs_json(&configs)),
        ]));
    }
    out.text(&configs_table(&configs, all_configs))
}
