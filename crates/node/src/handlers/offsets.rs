//! ListOffsets, OffsetForLeaderEpoch and DeleteRecords: questions and changes about where a
//! partition's log starts and ends.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_records_request::DeleteRecordsRequest;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsResponse, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderEpochRequest;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};

use crate::broker::Broker;

/// ListOffsets special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

pub(crate) fn list_offsets(
    broker: &Broker,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut response = ListOffsetsResponse::default();
    for topic in req.topics {
        let mut t = ListOffsetsTopicResponse::default();
        for p in topic.partitions {
            let mut r = ListOffsetsPartitionResponse::default();
            r.partition_index = p.partition_index;
            r.timestamp = -1;
            r.offset = -1;
            r.leader_epoch = -1;
            match broker
                .cluster
                .leader_partition(topic.name.0.as_str(), p.partition_index)
            {
                Err(code) => r.error_code = code,
                Ok(partition) => match partition.check_leader_epoch(p.current_leader_epoch) {
                    Err(code) => r.error_code = code,
                    Ok(()) => {
                        let found = match p.timestamp {
                            LATEST => Ok(Some((-1, partition.high_watermark()))),
                            EARLIEST | EARLIEST_LOCAL => {
                                Ok(Some((-1, partition.log_start_offset())))
                            }
                            LATEST_TIERED => Ok(None),
                            MAX_TIMESTAMP => Ok(partition.max_timestamp()),
                            ts if ts >= 0 => partition
                                .offset_for_timestamp(ts)
                                .map(|o| o.map(|(off, ts)| (ts, off))),
                            _ => Err(ResponseError::InvalidRequest.code()),
                        };
                        match found {
                            Ok(Some((ts, offset))) => {
                                r.timestamp = ts;
                                r.offset = offset;
                                if version >= 4 {
                                    r.leader_epoch = partition.leader_epoch();
                                }
                            }
                            Ok(None) => {}
                            Err(code) => r.error_code = code,
                        }
                    }
                },
            }
            t.partitions.push(r);
        }
        t.name = topic.name;
        response.topics.push(t);
    }
    response
}

pub(crate) fn offset_for_leader_epoch(
    broker: &Broker,
    req: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    let mut response = OffsetForLeaderEpochResponse::default();
    for topic in req.topics {
        let mut t = OffsetForLeaderTopicResult::default();
        for p in topic.partitions {
            let mut r = EpochEndOffset::default();
            r.partition = p.partition;
            r.leader_epoch = -1;
            r.end_offset = -1;
            match broker
                .cluster
                .leader_partition(topic.topic.0.as_str(), p.partition)
            {
                Err(code) => r.error_code = code,
                Ok(partition) => match partition.check_leader_epoch(p.current_leader_epoch) {
                    Err(code) => r.error_code = code,
                    Ok(()) => {
                        if let Some((epoch, end)) = partition.end_offset_for_epoch(p.leader_epoch) {
                            r.leader_epoch = epoch;
                            r.end_offset = end;
                        }
                    }
                },
            }
            t.partitions.push(r);
        }
        t.topic = topic.topic;
        response.topics.push(t);
    }
    response
}

pub(crate) async fn delete_records(
    broker: &Broker,
    req: DeleteRecordsRequest,
    _version: i16,
) -> DeleteRecordsResponse {
    let mut response = DeleteRecordsResponse::default();
    for topic in req.topics {
        let mut t = DeleteRecordsTopicResult::default();
        for p in topic.partitions {
            let mut r = DeleteRecordsPartitionResult::default();
            r.partition_index = p.partition_index;
            r.low_watermark = -1;
            match broker
                .cluster
                .leader_partition(topic.name.0.as_str(), p.partition_index)
            {
                Err(code) => r.error_code = code,
                // Moving the log start on a replicated partition is not replicated yet: refused
                // rather than done on the leader alone.
                Ok(partition) if partition.replica().is_some() => {
                    r.error_code = ResponseError::PolicyViolation.code()
                }
                Ok(partition) => match partition.delete_records_before(p.offset).await {
                    Ok(low) => r.low_watermark = low,
                    Err(code) => r.error_code = code,
                },
            }
            t.partitions.push(r);
        }
        t.name = topic.name;
        response.topics.push(t);
    }
    response
}
