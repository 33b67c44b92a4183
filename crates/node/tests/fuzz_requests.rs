//! The request decoder never panics or aborts on client input. Seeds are well-formed requests of
//! every advertised API and version; the mutations are what breaks decoders: flipped bytes, a
//! huge array or string length written somewhere, truncation, random tails. Failing cases are
//! kept by proptest in `fuzz_requests.proptest-regressions` next to this file.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::{Encodable, StrBytes};
use proptest::prelude::*;
use sluice_node::alloc_guard::GuardedAllocator;
use sluice_node::broker::implemented_apis;
use sluice_protocol::api_table::ApiTable;
use sluice_protocol::request::decode_request;

// The same guard the broker binary runs with: without it, a huge array length aborts the test
// process inside the third-party decoder.
#[global_allocator]
static ALLOCATOR: GuardedAllocator = GuardedAllocator;

/// A default request body of `key` (the crate's defaults are valid requests).
fn default_body(key: ApiKey) -> Option<RequestKind> {
    use kafka_protocol::messages::*;
    Some(match key {
        ApiKey::Produce => RequestKind::Produce(ProduceRequest::default()),
        ApiKey::Fetch => RequestKind::Fetch(FetchRequest::default()),
        ApiKey::ListOffsets => RequestKind::ListOffsets(ListOffsetsRequest::default()),
        ApiKey::Metadata => RequestKind::Metadata(MetadataRequest::default()),
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(OffsetCommitRequest::default()),
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(OffsetFetchRequest::default()),
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(FindCoordinatorRequest::default()),
        ApiKey::JoinGroup => RequestKind::JoinGroup(JoinGroupRequest::default()),
        ApiKey::Heartbeat => RequestKind::Heartbeat(HeartbeatRequest::default()),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(LeaveGroupRequest::default()),
        ApiKey::SyncGroup => RequestKind::SyncGroup(SyncGroupRequest::default()),
        ApiKey::DescribeGroups => RequestKind::DescribeGroups(DescribeGroupsRequest::default()),
        ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
        ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ApiKey::CreateTopics => RequestKind::CreateTopics(CreateTopicsRequest::default()),
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(DeleteTopicsRequest::default()),
        ApiKey::DeleteRecords => RequestKind::DeleteRecords(DeleteRecordsRequest::default()),
        ApiKey::InitProducerId => RequestKind::InitProducerId(InitProducerIdRequest::default()),
        ApiKey::OffsetForLeaderEpoch => {
            RequestKind::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest::default())
        }
        ApiKey::DescribeConfigs => RequestKind::DescribeConfigs(DescribeConfigsRequest::default()),
        ApiKey::AlterConfigs => RequestKind::AlterConfigs(AlterConfigsRequest::default()),
        ApiKey::CreatePartitions => {
            RequestKind::CreatePartitions(CreatePartitionsRequest::default())
        }
        ApiKey::DeleteGroups => RequestKind::DeleteGroups(DeleteGroupsRequest::default()),
        ApiKey::IncrementalAlterConfigs => {
            RequestKind::IncrementalAlterConfigs(IncrementalAlterConfigsRequest::default())
        }
        ApiKey::OffsetDelete => RequestKind::OffsetDelete(OffsetDeleteRequest::default()),
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        _ => return None,
    })
}

/// Every (api, version) the broker advertises, with a well-formed frame of it (no length prefix).
fn seeds() -> Vec<(ApiKey, i16, Vec<u8>)> {
    let mut out = Vec::new();
    for (key, min, max) in implemented_apis() {
        let range = key.valid_versions();
        for version in min.max(range.min)..=max.min(range.max) {
            let Some(body) = default_body(key) else {
                continue;
            };
            let mut buf = BytesMut::new();
            let mut header = RequestHeader::default();
            header.request_api_key = key as i16;
            header.request_api_version = version;
            header.correlation_id = 1;
            header.client_id = Some(StrBytes::from_static_str("fuzz"));
            if header
                .encode(&mut buf, key.request_header_version(version))
                .is_err()
            {
                continue;
            }
            // Some defaults are not encodable at every version; those seeds are skipped.
            if body.encode(&mut buf, version).is_ok() {
                out.push((key, version, buf.to_vec()));
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    BigLength { at: usize, value: u32 },
    Truncate { keep: usize },
    Tail { bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        (
            any::<usize>(),
            prop_oneof![
                Just(0x7fff_ffffu32),
                Just(0x1000_0000),
                Just(0xffff_fffe),
                any::<u32>()
            ]
        )
            .prop_map(|(at, value)| Mutation::BigLength { at, value }),
        any::<usize>().prop_map(|keep| Mutation::Truncate { keep }),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Mutation::Tail { bytes }),
    ]
}

fn apply(frame: &mut Vec<u8>, m: &Mutation) {
    // The first 8 bytes (key, version, correlation id) stay, so the body decoder is reached.
    let body_len = frame.len().saturating_sub(8);
    match m {
        Mutation::Flip { at, bits } if body_len > 0 => frame[8 + at % body_len] ^= bits,
        Mutation::BigLength { at, value } if body_len >= 4 => {
            let at = 8 + at % (body_len - 3);
            frame[at..at + 4].copy_from_slice(&value.to_be_bytes());
        }
        Mutation::Truncate { keep } => frame.truncate(8 + keep % (body_len + 1)),
        Mutation::Tail { bytes } => frame.extend_from_slice(bytes),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_requests_never_panic_or_abort(
        pick in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let seeds = seeds();
        let table = ApiTable::new(implemented_apis());
        let (key, version, frame) = &seeds[pick % seeds.len()];
        let mut frame = frame.clone();
        for m in &mutations {
            apply(&mut frame, m);
        }
        // Ok or Err are both fine; what may not happen is a panic escaping or an abort.
        let result = decode_request(Bytes::from(frame), &table);
        if let Ok(request) = result {
            prop_assert_eq!(request.api_key, *key);
            prop_assert_eq!(request.version(), *version);
        }
    }
}

#[test]
fn every_advertised_api_and_version_has_a_seed() {
    let seeds = seeds();
    let expected: usize = implemented_apis()
        .iter()
        .map(|(k, min, max)| {
            let r = k.valid_versions();
            (max.min(&r.max) - min.max(&r.min) + 1) as usize
        })
        .sum();
    // A few defaults cannot be encoded at old versions; most must be there.
    assert!(
        seeds.len() * 10 >= expected * 9,
        "{} seeds for {expected} api versions",
        seeds.len()
    );
    let table = ApiTable::new(implemented_apis());
    for (key, version, frame) in seeds {
        let request = decode_request(Bytes::from(frame), &table)
            .unwrap_or_else(|e| panic!("seed {key:?} v{version} does not decode: {e}"));
        assert_eq!((request.api_key, request.version()), (key, version));
    }
}
