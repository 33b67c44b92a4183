//! Every advertised API at every advertised version gets an answer that decodes, with the
//! fields of that version only. (The encoder refuses a field a version does not have, and a
//! client of that version would then wait for a response that never comes.)

mod common;

use bytes::Bytes;
use common::{TestNode, batch};
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsRequest, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsRequest, DeleteRecordsTopic,
};
use kafka_protocol::messages::delete_topics_request::{DeleteTopicState, DeleteTopicsRequest};
use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderEpochRequest, OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, DescribeClusterRequest, FindCoordinatorRequest,
    InitProducerIdRequest, RequestKind, ResponseKind, TopicName, alter_configs_request,
    incremental_alter_configs_request,
};
use kafka_protocol::protocol::StrBytes;
use sluice_node::broker::implemented_apis;

const TOPIC: &str = "matrix";

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn versions(key: ApiKey) -> std::ops::RangeInclusive<i16> {
    let (_, min, max) = implemented_apis()
        .into_iter()
        .find(|(k, ..)| *k == key)
        .unwrap_or_else(|| panic!("{key:?} is not implemented"));
    let crate_range = key.valid_versions();
    min.max(crate_range.min)..=max.min(crate_range.max)
}

#[tokio::test]
async fn every_api_answers_at_every_version() {
    let node = TestNode::start(&[("num.partitions", "1")]).await;
    let mut conn = node.connect().await;

    for v in versions(ApiKey::ApiVersions) {
        let r = conn
            .call(
                ApiKey::ApiVersions,
                v,
                RequestKind::ApiVersions(ApiVersionsRequest::default()),
            )
            .await;
        let ResponseKind::ApiVersions(r) = r else {
            panic!("wrong kind")
        };
        assert_eq!(r.error_code, 0, "ApiVersions v{v}");
        assert_eq!(
            r.api_keys.len(),
            implemented_apis().len(),
            "ApiVersions v{v} lists every implemented API"
        );
    }

    // Metadata creates the topic (auto-creation) and tells us its id.
    let mut topic_id = uuid::Uuid::nil();
    for v in versions(ApiKey::Metadata) {
        let mut req = MetadataRequest::default();
        let mut t = MetadataRequestTopic::default();
        t.name = Some(name(TOPIC));
        req.topics = Some(vec![t]);
        let ResponseKind::Metadata(r) = conn
            .call(ApiKey::Metadata, v, RequestKind::Metadata(req))
            .await
        else {
            panic!("wrong kind")
        };
        assert_eq!(r.topics.len(), 1, "Metadata v{v}");
        assert_eq!(r.topics[0].error_code, 0, "Metadata v{v}");
        assert_eq!(r.topics[0].partitions.len(), 1, "Metadata v{v}");
        assert_eq!(r.brokers.len(), 1, "Metadata v{v}");
        if v >= 10 {
            topic_id = r.topics[0].topic_id;
        }
    }
    assert!(!topic_id.is_nil());

    let mut produced = 0i64;
    for v in versions(ApiKey::Produce) {
        let mut req = ProduceRequest::default();
        req.acks = -1;
        req.timeout_ms = 5000;
        let mut t = TopicProduceData::default();
        if v >= 13 {
            t.topic_id = topic_id;
        } else {
            t.name = name(TOPIC);
        }
        let mut p = PartitionProduceData::default();
        p.index = 0;
        p.records = Some(batch(&[b"a", b"b"], -1, -1));
        t.partition_data = vec![p];
        req.topic_data = vec![t];
        let ResponseKind::Produce(r) = conn
            .call(ApiKey::Produce, v, RequestKind::Produce(req))
            .await
        else {
            panic!("wrong kind")
        };
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0, "Produce v{v}");
        assert_eq!(p.base_offset, produced, "Produce v{v}");
        produced += 2;
    }

    for v in versions(ApiKey::Fetch) {
        let mut req = FetchRequest::default();
        req.max_wait_ms = 0;
        req.min_bytes = 1;
        req.max_bytes = 1 << 20;
        req.replica_id = kafka_protocol::messages::BrokerId(-1);
        let mut t = FetchTopic::default();
        if v >= 13 {
            t.topic_id = topic_id;
        } else {
            t.topic = name(TOPIC);
        }
        let mut p = FetchPartition::default();
        p.partition = 0;
        p.fetch_offset = 0;
        p.partition_max_bytes = 1 << 20;
        t.partitions = vec![p];
        req.topics = vec![t];
        let ResponseKind::Fetch(r) = conn.call(ApiKey::Fetch, v, RequestKind::Fetch(req)).await
        else {
            panic!("wrong kind")
        };
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "Fetch v{v}");
        assert_eq!(p.high_watermark, produced, "Fetch v{v}");
        assert!(
            p.records.as_ref().is_some_and(|b: &Bytes| b.len() > 61),
            "Fetch v{v} returns batches"
        );
    }

    for v in versions(ApiKey::ListOffsets) {
        let mut req = ListOffsetsRequest::default();
        let mut t = ListOffsetsTopic::default();
        t.name = name(TOPIC);
        let mut p = ListOffsetsPartition::default();
        p.partition_index = 0;
        p.timestamp = -1;
        t.partitions = vec![p];
        req.topics = vec![t];
        let ResponseKind::ListOffsets(r) = conn
            .call(ApiKey::ListOffsets, v, RequestKind::ListOffsets(req))
            .await
        else {
            panic!("wrong kind")
        };
        let p = &r.topics[0].partitions[0];
        assert_eq!((p.error_code, p.offset), (0, produced), "ListOffsets v{v}");
    }

    for v in versions(ApiKey::OffsetForLeaderEpoch) {
        let mut req = OffsetForLeaderEpochRequest::default();
        let mut t = OffsetForLeaderTopic::default();
        t.topic = name(TOPIC);
        let mut p = OffsetForLeaderPartition::default();
        p.partition = 0;
        p.leader_epoch = 0;
        p.current_leader_epoch = -1;
        t.partitions = vec![p];
        req.topics = vec![t];
        let ResponseKind::OffsetForLeaderEpoch(r) = conn
            .call(
                ApiKey::OffsetForLeaderEpoch,
                v,
                RequestKind::OffsetForLeaderEpoch(req),
            )
            .await
        else {
            panic!("wrong kind")
        };
        let p = &r.topics[0].partitions[0];
        assert_eq!(
            (p.error_code, p.end_offset),
            (0, produced),
            "OffsetForLeaderEpoch v{v}"
        );
    }

    for v in versions(ApiKey::DeleteRecords) {
        let mut req = DeleteRecordsRequest::default();
        let mut t = DeleteRecordsTopic::default();
        t.name = name(TOPIC);
        let mut p = DeleteRecordsPartition::default();
        p.partition_index = 0;
        p.offset = v as i64;
        t.partitions = vec![p];
        req.topics = vec![t];
        let ResponseKind::DeleteRecords(r) = conn
            .call(ApiKey::DeleteRecords, v, RequestKind::DeleteRecords(req))
            .await
        else {
            panic!("wrong kind")
        };
        let p = &r.topics[0].partitions[0];
        assert_eq!(
            (p.error_code, p.low_watermark),
            (0, v as i64),
            "DeleteRecords v{v}"
        );
    }

    for v in versions(ApiKey::CreateTopics) {
        let mut req = CreateTopicsRequest::default();
        let mut t = CreatableTopic::default();
        t.name = name(&format!("created-{v}"));
        t.num_partitions = 2;
        t.replication_factor = 1;
        let mut c = CreatableTopicConfig::default();
        c.name = StrBytes::from_static_str("retention.ms");
        c.value = Some(StrBytes::from_static_str("3600000"));
        t.configs = vec![c];
        req.topics = vec![t];
        req.timeout_ms = 5000;
        let ResponseKind::CreateTopics(r) = conn
            .call(ApiKey::CreateTopics, v, RequestKind::CreateTopics(req))
            .await
        else {
            panic!("wrong kind")
        };
        assert_eq!(
            r.topics[0].error_code, 0,
            "CreateTopics v{v}: {:?}",
            r.topics[0].error_message
        );
    }

    for v in versions(ApiKey::CreatePartitions) {
        let mut req = CreatePartitionsRequest::default();
        let mut t = CreatePartitionsTopic::default();
        t.name = name("created-2");
        t.count = 3 + v as i32;
        req.topics = vec![t];
        let ResponseKind::CreatePartitions(r) = conn
            .call(
                ApiKey::CreatePartitions,
                v,
                RequestKind::CreatePartitions(req),
            )
            .await
        else {
            panic!("wrong kind")
        };
        assert_eq!(
            r.results[0].error_code, 0,
            "CreatePartitions v{v}: {:?}",
            r.results[0].error_message
        );
    }

    for v in versions(ApiKey::DescribeConfigs) {
        let mut req = DescribeConfigsRequest::default();
        req.include_synonyms = true;
        req.include_documentation = v >= 3;
        let mut topic = DescribeConfigsResource::default();
        topic.resource_type = 2;
        topic.resource_name = StrBytes::from_static_str("created-2");
        let mut broker = DescribeConfigsResource::default();
        broker.resource_type = 4;
        broker.resource_name = StrBytes::from_static_str("1");
        req.resources = vec![topic, broker];
        let ResponseKind::DescribeConfigs(r) = conn
            .call(
                ApiKey::DescribeConfigs,
                v,
                RequestKind::DescribeConfigs(req),
            )
            .await
        else {
            panic!("wrong kind")
        };
        assert_eq!(r.results[0].error_code, 0, "DescribeConfigs v{v}");
        let retention = r.results[0]
            .configs
            .iter()
            .find(|c| c.name.as_str() == "retention.ms")
            .expect("retention.ms is described");
        assert_eq!(
            retention.value.as_deref(),
            Some("3600000"),
            "DescribeConfigs v{v}"
        );
        assert_eq!(r.results[1].error_code, 0, "DescribeConfigs v{v} broker");
        assert!(
            r.results[1]
                .configs
                .iter()
                .any(|c| c.name.as_str() == "num.partitions")
        );
    }

    for v in versions(ApiKey::AlterConfigs) {
        let mut req = alter_configs_request::AlterConfigsRequest::default();
        let mut res = alter_configs_request::AlterConfigsResource::default();
        res.resource_type = 2;
        res.resource_name = StrBytes::from_static_str("created-3");
        let mut c = alter_configs_request::AlterableConfig::default();
        c.name = StrBytes::from_static_str("retention.bytes");
        c.value = Some(StrBytes::from_string(format!("{}", 1_000_000 + v as i64)));
        res.configs = vec![c];
        req.resources = vec![res];
        let ResponseKind::AlterConfigs(r) = conn
            .call(ApiKey::AlterConfigs, v, RequestKind::AlterConfigs(req))
            .await
        else {
            panic!("wrong kind")
        };
        assert_eq!(
            r.responses[0].error_code, 0,
            "AlterConfigs v{v}: {:?}",
            r.responses[0].error_message
        );
    }

    for v in versions(ApiKey::IncrementalAlterConfigs) {
        let mut req = incremental_alter_configs_request::IncrementalAlterConfigsRequest::default();
        let mut res = incremental_alter_configs_request::AlterConfigsResource::default();
        res.resource_type = 2;
        res.resource_name = StrBytes::from_static_str("created-3");
        let mut c = incremental_alter_configs_request::AlterableConfig::default();
        c.name = StrBytes::from_static_str("cleanup.policy");
        c.config_operation = 2; // APPEND
        c.value = Some(StrBytes::from_static_str("compact"));
        res.configs = vec![c];
        req.resources = vec![res];
        let ResponseKind::IncrementalAlterConfigs(r) = conn
            .call(
                ApiKey::IncrementalAlterConfigs,
                v,
                RequestKind::IncrementalAlterConfigs(req),
            )
            .await
        else {
            panic!("wrong kind")
        };
        assert_eq!(
            r.responses[0].error_code, 0,
            "IncrementalAlterConfigs v{v}: {:?}",
            r.responses[0].error_message
        );
    }

    for v in versions(ApiKey::DeleteTopics) {
        let mut req = DeleteTopicsRequest::default();
        let topic = format!("created-{}", v + 1);
        if v >= 6 {
            let mut t = DeleteTopicState::default();
            t.name = Some(name(&topic));
            req.topics = vec![t];
        } else {
            req.topic_names = vec![name(&topic)];
        }
        let ResponseKind::DeleteTopics(r) = conn
            .call(ApiKey::DeleteTopics, v, RequestKind::DeleteTopics(req))
            .await
        else {
            panic!("wrong kind")
        };
        assert_eq!(
            r.responses[0].error_code, 0,
            "DeleteTopics v{v}: {:?}",
            r.responses[0].error_message
        );
    }

    let mut ids = Vec::new();
    for v in versions(ApiKey::InitProducerId) {
        let mut req = InitProducerIdRequest::default();
        req.transactional_id = None;
        req.transaction_timeout_ms = 60000;
        let ResponseKind::InitProducerId(r) = conn
            .call(ApiKey::InitProducerId, v, RequestKind::InitProducerId(req))
            .await
        else {
            panic!("wrong kind")
        };
        assert_eq!(r.error_code, 0, "InitProducerId v{v}");
        ids.push(r.producer_id.0);
    }
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "every producer gets its own id");

    for v in versions(ApiKey::FindCoordinator) {
        let mut req = FindCoordinatorRequest::default();
        if v >= 4 {
            req.coordinator_keys = vec![StrBytes::from_static_str("g")];
        } else {
            req.key = StrBytes::from_static_str("g");
        }
        let ResponseKind::FindCoordinator(r) = conn
            .call(
                ApiKey::FindCoordinator,
                v,
                RequestKind::FindCoordinator(req),
            )
            .await
        else {
            panic!("wrong kind")
        };
        let (code, port) = if v >= 4 {
            (r.coordinators[0].error_code, r.coordinators[0].port)
        } else {
            (r.error_code, r.port)
        };
        assert_eq!(
            (code, port),
            (0, node.addr.port() as i32),
            "FindCoordinator v{v}"
        );
    }

    for v in versions(ApiKey::DescribeCluster) {
        let ResponseKind::DescribeCluster(r) = conn
            .call(
                ApiKey::DescribeCluster,
                v,
                RequestKind::DescribeCluster(DescribeClusterRequest::default()),
            )
            .await
        else {
            panic!("wrong kind")
        };
        assert_eq!(
            (r.error_code, r.brokers.len()),
            (0, 1),
            "DescribeCluster v{v}"
        );
    }

    node.stop().await;
}
