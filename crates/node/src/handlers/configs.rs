//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics and the broker.
//!
//! Topic configs are overrides stored with the topic; broker configs that are defaults for
//! topics (`log.retention.ms`, ...) can be changed at runtime cluster-wide, as Kafka's dynamic
//! broker configs; node settings (`num.partitions`, ...) are read-only at runtime.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_configs_request::AlterConfigsRequest;
use kafka_protocol::messages::alter_configs_response::{
    AlterConfigsResourceResponse, AlterConfigsResponse,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsRequest;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
    DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_request::IncrementalAlterConfigsRequest;
use kafka_protocol::messages::incremental_alter_configs_response as incremental;
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;
use crate::cluster::{AdminError, ConfigView};

/// Kafka's ConfigResource types.
const TOPIC: i8 = 2;
const BROKER: i8 = 4;

/// IncrementalAlterConfigs operations.
const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

pub(crate) fn describe_configs(
    broker: &Broker,
    req: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let mut response = DescribeConfigsResponse::default();
    for resource in req.resources {
        let mut result = DescribeConfigsResult::default();
        result.resource_type = resource.resource_type;
        let entries = match resource.resource_type {
            TOPIC => broker
                .cluster
                .describe_topic_configs(resource.resource_name.as_str()),
            BROKER => check_broker_name(broker, resource.resource_name.as_str())
                .map(|()| broker.cluster.describe_broker_configs()),
            other => Err(unsupported_resource(other)),
        };
        match entries {
            Ok(entries) => {
                // Null or empty both mean every key, as Kafka's ConfigHelper reads it.
                let wanted = resource
                    .configuration_keys
                    .as_ref()
                    .filter(|keys| !keys.is_empty())
                    .map(|keys| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>());
                result.configs = entries
                    .into_iter()
                    .filter(|e| {
                        wanted
                            .as_ref()
                            .is_none_or(|w| w.iter().any(|k| k == &e.name))
                    })
                    .map(|e| {
                        config_result(e, req.include_synonyms, req.include_documentation, version)
                    })
                    .collect();
            }
            Err(e) => {
                result.error_code = e.code;
                result.error_message = Some(StrBytes::from_string(e.message));
            }
        }
        result.resource_name = resource.resource_name;
        response.results.push(result);
    }
    response
}

fn config_result(
    e: ConfigView,
    include_synonyms: bool,
    include_documentation: bool,
    version: i16,
) -> DescribeConfigsResourceResult {
    let mut r = DescribeConfigsResourceResult::default();
    r.name = StrBytes::from_string(e.name.clone());
    r.value = Some(StrBytes::from_string(e.value.clone()));
    r.read_only = e.read_only;
    r.config_source = e.source;
    r.is_sensitive = false;
    if include_synonyms {
        r.synonyms = e
            .synonyms
            .iter()
            .map(|(name, value, source)| {
                let mut s = DescribeConfigsSynonym::default();
                s.name = StrBytes::from_string(name.clone());
                s.value = Some(StrBytes::from_string(value.clone()));
                s.source = *source;
                s
            })
            .collect();
    }
    if version >= 3 {
        r.config_type = e.config_type;
        if include_documentation {
            r.documentation = Some(StrBytes::from_static_str(e.doc));
        }
    }
    r
}

pub(crate) async fn alter_configs(
    broker: &Broker,
    req: AlterConfigsRequest,
    _version: i16,
) -> AlterConfigsResponse {
    let mut response = AlterConfigsResponse::default();
    for resource in req.resources {
        // AlterConfigs replaces the whole set of overrides of the resource.
        let mut configs = BTreeMap::new();
        let mut outcome = Ok(());
        for c in &resource.configs {
            match &c.value {
                Some(v) => {
                    configs.insert(c.name.to_string(), v.to_string());
                }
                None => {
                    outcome = Err(AdminError::new(
                        ResponseError::InvalidConfig,
                        format!("config '{}' has a null value", c.name),
                    ))
                }
            }
        }
        if outcome.is_ok() {
            outcome = apply(
                broker,
                resource.resource_type,
                resource.resource_name.as_str(),
                configs,
                req.validate_only,
            )
            .await;
        }
        let mut r = AlterConfigsResourceResponse::default();
        r.resource_type = resource.resource_type;
        r.resource_name = resource.resource_name;
        if let Err(e) = outcome {
            r.error_code = e.code;
            r.error_message = Some(StrBytes::from_string(e.message));
        }
        response.responses.push(r);
    }
    response
}

pub(crate) async fn incremental_alter_configs(
    broker: &Broker,
    req: IncrementalAlterConfigsRequest,
    _version: i16,
) -> incremental::IncrementalAlterConfigsResponse {
    let mut response = incremental::IncrementalAlterConfigsResponse::default();
    for resource in req.resources {
        let name = resource.resource_name.to_string();
        let current = match resource.resource_type {
            TOPIC => broker.cluster.topic_overrides(&name),
            BROKER => check_broker_name(broker, &name).map(|()| broker.cluster.broker_overrides()),
            other => Err(unsupported_resource(other)),
        };
        let outcome = match current {
            Err(e) => Err(e),
            Ok(mut configs) => {
                let mut result = Ok(());
                for c in &resource.configs {
                    if let Err(e) = apply_op(
                        broker,
                        resource.resource_type,
                        &mut configs,
                        c.name.as_str(),
                        c.config_operation,
                        c.value.as_deref(),
                    ) {
                        result = Err(e);
                        break;
                    }
                }
                match result {
                    Ok(()) => {
                        apply(
                            broker,
                            resource.resource_type,
                            &name,
                            configs,
                            req.validate_only,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let mut r = incremental::AlterConfigsResourceResponse::default();
        r.resource_type = resource.resource_type;
        r.resource_name = resource.resource_name;
        if let Err(e) = outcome {
            r.error_code = e.code;
            r.error_message = Some(StrBytes::from_string(e.message));
        }
        response.responses.push(r);
    }
    response
}

fn apply_op(
    broker: &Broker,
    resource_type: i8,
    configs: &mut BTreeMap<String, String>,
    key: &str,
    op: i8,
    value: Option<&str>,
) -> Result<(), AdminError> {
    let invalid = |m: String| AdminError::new(ResponseError::InvalidConfig, m);
    match op {
        SET => {
            let v = value.ok_or_else(|| invalid(format!("SET of '{key}' needs a value")))?;
            configs.insert(key.to_string(), v.to_string());
        }
        DELETE => {
            configs.remove(key);
        }
        APPEND | SUBTRACT => {
            if !broker.cluster.is_list_config(resource_type, key) {
                return Err(invalid(format!(
                    "'{key}' is not a list; APPEND and SUBTRACT apply only to list configs"
                )));
            }
            let v = value
                .ok_or_else(|| invalid(format!("APPEND/SUBTRACT of '{key}' needs a value")))?;
            let current = configs
                .get(key)
                .cloned()
                .unwrap_or_else(|| broker.cluster.effective_value(resource_type, key));
            let mut items: Vec<String> = current
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if op == APPEND {
                    if !items.iter().any(|i| i == item) {
                        items.push(item.to_string());
                    }
                } else {
                    items.retain(|i| i != item);
                }
            }
            configs.insert(key.to_string(), items.join(","));
        }
        other => {
            return Err(AdminError::new(
                ResponseError::InvalidRequest,
                format!("unknown config operation {other}"),
            ));
        }
    }
    Ok(())
}

async fn apply(
    broker: &Broker,
    resource_type: i8,
    name: &str,
    configs: BTreeMap<String, String>,
    validate_only: bool,
) -> Result<(), AdminError> {
    match resource_type {
        TOPIC => {
            broker
                .cluster
                .set_topic_configs(name, configs, validate_only)
                .await
        }
        BROKER => {
            check_broker_name(broker, name)?;
            broker
                .cluster
                .set_broker_configs(configs, validate_only)
                .await
        }
        other => Err(unsupported_resource(other)),
    }
}

fn check_broker_name(broker: &Broker, name: &str) -> Result<(), AdminError> {
    // "" is the cluster-wide default resource; a node id names one broker.
    if name.is_empty() || name == broker.config().node_id.to_string() {
        Ok(())
    } else {
        Err(AdminError::new(
            ResponseError::InvalidRequest,
            format!(
                "broker '{name}' is not this node ({})",
                broker.config().node_id
            ),
        ))
    }
}

fn unsupported_resource(resource_type: i8) -> AdminError {
    AdminError::new(
        ResponseError::InvalidRequest,
        format!("config resource type {resource_type} is not supported (topics: 2, brokers: 4)"),
    )
}
