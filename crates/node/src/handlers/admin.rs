//! CreateTopics, DeleteTopics and CreatePartitions. Validation and placement live in
//! [`crate::cluster`]; these handlers translate between the wire and it.

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::TopicName;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsRequest;
use kafka_protocol::messages::create_partitions_response::{
    CreatePartitionsResponse, CreatePartitionsTopicResult,
};
use kafka_protocol::messages::create_topics_request::CreateTopicsRequest;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;
use crate::cluster::{AdminError, TopicSpec};

pub(crate) async fn create_topics(
    broker: &Broker,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut response = CreateTopicsResponse::default();
    let mut seen = HashSet::new();
    let duplicated: HashSet<String> = req
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.0.to_string()))
        .map(|t| t.name.0.to_string())
        .collect();
    for topic in req.topics {
        let name = topic.name.0.to_string();
        let mut result = CreatableTopicResult::default();
        result.name = topic.name.clone();

        let outcome = if duplicated.contains(&name) {
            Err(AdminError::new(
                ResponseError::InvalidRequest,
                format!("topic '{name}' appears more than once in the request"),
            ))
        } else {
            let mut configs = BTreeMap::new();
            let mut null_config = None;
            for c in &topic.configs {
                match &c.value {
                    Some(v) => {
                        configs.insert(c.name.to_string(), v.to_string());
                    }
                    None => null_config = Some(c.name.to_string()),
                }
            }
            match null_config {
                Some(key) => Err(AdminError::new(
                    ResponseError::InvalidConfig,
                    format!("config '{key}' has a null value"),
                )),
                None => {
                    let spec = TopicSpec {
                        name: name.clone(),
                        num_partitions: topic.num_partitions,
                        replication_factor: topic.replication_factor,
                        assignments: topic
                            .assignments
                            .iter()
                            .map(|a| {
                                (
                                    a.partition_index,
                                    a.broker_ids.iter().map(|b| b.0).collect(),
                                )
                            })
                            .collect(),
                        configs,
                    };
                    broker.cluster.create_topic(spec, req.validate_only).await
                }
            }
        };
        match outcome {
            Ok(created) => {
                if version >= 7 {
                    result.topic_id = created.id;
                }
                if version >= 5 {
                    result.num_partitions = created.num_partitions;
                    result.replication_factor = created.replication_factor;
                    result.configs = Some(
                        created
                            .configs
                            .into_iter()
                            .map(|e| {
                                let mut c = CreatableTopicConfigs::default();
                                c.name = StrBytes::from_static_str(e.name);
                                c.value = Some(StrBytes::from_string(e.value));
                                c.config_source = e.source.kafka_code();
                                c
                            })
                            .collect(),
                    );
                }
            }
            Err(e) => {
                result.error_code = e.code;
                result.error_message = Some(StrBytes::from_string(e.message));
            }
        }
        response.topics.push(result);
    }
    response
}

pub(crate) async fn delete_topics(
    broker: &Broker,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let mut response = DeleteTopicsResponse::default();
    // v6 names topics by name or id; earlier versions by name only.
    let targets: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
        req.topics
            .into_iter()
            .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        req.topic_names
            .into_iter()
            .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
            .collect()
    };
    let mut deleted = Vec::new();
    for (name, id) in targets {
        let mut result = DeletableTopicResult::default();
        let name = match name {
            Some(n) => Some(n),
            None => broker
                .cluster
                .image()
                .topic_by_id(id)
                .map(|t| t.name.clone()),
        };
        let outcome = match &name {
            Some(n) => broker.cluster.delete_topic(n).await,
            None => Err(AdminError::new(
                ResponseError::UnknownTopicId,
                format!("no topic has id {id}"),
            )),
        };
        if outcome.is_ok()
            && let Some(n) = &name
        {
            deleted.push(n.clone());
        }
        result.name = name.map(|n| TopicName(StrBytes::from_string(n)));
        match outcome {
            Ok(deleted_id) if version >= 6 => result.topic_id = deleted_id,
            Ok(_) => {}
            Err(e) => {
                result.error_code = e.code;
                if version >= 5 {
                    result.error_message = Some(StrBytes::from_string(e.message));
                }
                if version >= 6 {
                    result.topic_id = id;
                }
            }
        }
        response.responses.push(result);
    }
    if !deleted.is_empty() {
        broker.groups.topics_deleted(deleted).await;
    }
    response
}

pub(crate) async fn create_partitions(
    broker: &Broker,
    req: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let mut response = CreatePartitionsResponse::default();
    for topic in req.topics {
        let mut result = CreatePartitionsTopicResult::default();
        // An empty list means "place them for me", as a null one does.
        let assignments: Option<Vec<Vec<i32>>> =
            topic.assignments.filter(|a| !a.is_empty()).map(|a| {
                a.into_iter()
                    .map(|x| x.broker_ids.into_iter().map(|b| b.0).collect())
                    .collect()
            });
        let outcome = broker
            .cluster
            .create_partitions(
                topic.name.0.as_str(),
                topic.count,
                assignments,
                req.validate_only,
            )
            .await;
        if let Err(e) = outcome {
            result.error_code = e.code;
            result.error_message = Some(StrBytes::from_string(e.message));
        }
        result.name = topic.name;
        response.results.push(result);
    }
    response
}
