//! Record schemas against byte vectors written out by hand from Kafka's JSON schemas
//! (OffsetCommitKey/Value, GroupMetadataKey/Value), not just encoder against decoder.

use bytes::Bytes;

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let digits: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

/// OffsetCommitKey v1: version, group "grp", topic "top", partition 5.
const OFFSET_KEY: &str = "0001 0003 677270 0003 746f70 00000005";
/// GroupMetadataKey v2: version, group "grp".
const GROUP_KEY: &str = "0002 0003 677270";
/// OffsetCommitValue v3: offset 100, leader epoch 3, metadata "md", commit timestamp 0x0102030405.
const OFFSET_VALUE_V3: &str = "0003 0000000000000064 00000003 0002 6d64 0000000102030405";
/// GroupMetadataValue v3: "consumer", generation 2, protocol "range", leader "m1", state
/// timestamp 1000, one member "m1" (no instance id), client "c", host "/h", rebalance 30000,
/// session 10000, subscription [aa], assignment [bb cc].
const GROUP_VALUE_V3: &str =
    "0003 0008 636f6e73756d6572 00000002 0005 72616e6765 0002 6d31 00000000000003e8
    00000001 0002 6d31 ffff 0001 63 0002 2f68 00007530 00002710 00000001 aa 00000002 bbcc";

fn sample_group() -> GroupMetadataValue {
    GroupMetadataValue {
        protocol_type: "consumer".into(),
        generation: 2,
        protocol: Some("range".into()),
        leader: Some("m1".into()),
        current_state_timestamp: 1000,
        members: vec![MemberMetadataValue {
            member_id: "m1".into(),
            group_instance_id: None,
            client_id: "c".into(),
            client_host: "/h".into(),
            rebalance_timeout: 30_000,
            session_timeout: 10_000,
            subscription: Bytes::from_static(&[0xaa]),
            assignment: Bytes::from_static(&[0xbb, 0xcc]),
        }],
    }
}

#[test]
fn keys_match_kafka_bytes() {
    let key = RecordKey::OffsetCommit {
        group: "grp".into(),
        topic: "top".into(),
        partition: 5,
    };
    assert_eq!(key.encode().as_ref(), hex(OFFSET_KEY).as_slice());
    assert_eq!(RecordKey::decode(&hex(OFFSET_KEY)).unwrap(), key);
    // Key version 0 is the same schema.
    let mut v0 = hex(OFFSET_KEY);
    v0[1] = 0;
    assert_eq!(RecordKey::decode(&v0).unwrap(), key);

    let key = RecordKey::GroupMetadata {
        group: "grp".into(),
    };
    assert_eq!(key.encode().as_ref(), hex(GROUP_KEY).as_slice());
    assert_eq!(RecordKey::decode(&hex(GROUP_KEY)).unwrap(), key);
}

#[test]
fn offset_values_match_kafka_bytes() {
    let value = OffsetCommitValue {
        offset: 100,
        leader_epoch: 3,
        metadata: "md".into(),
        commit_timestamp: 0x01_0203_0405,
        expire_timestamp: None,
    };
    assert_eq!(value.encode().as_ref(), hex(OFFSET_VALUE_V3).as_slice());
    assert_eq!(
        OffsetCommitValue::decode(&hex(OFFSET_VALUE_V3)).unwrap(),
        value
    );

    // v0: offset, metadata, timestamp.
    let v0 = OffsetCommitValue::decode(&hex("0000 0000000000000064 0002 6d64 0000000102030405"))
        .unwrap();
    assert_eq!(
        v0,
        OffsetCommitValue {
            leader_epoch: -1,
            ..value.clone()
        }
    );
    // v1: offset, metadata, commit timestamp, expire timestamp; written when one is set.
    let v1_bytes = hex("0001 0000000000000064 0002 6d64 0000000102030405 00000000000007d0");
    let v1 = OffsetCommitValue::decode(&v1_bytes).unwrap();
    assert_eq!(v1.expire_timestamp, Some(2000));
    assert_eq!(v1.encode().as_ref(), v1_bytes.as_slice());
    // v2: v1 without the expire timestamp.
    let v2 = OffsetCommitValue::decode(&hex("0002 0000000000000064 0002 6d64 0000000102030405"))
        .unwrap();
    assert_eq!(v2, v0);
    // v4 (flexible): compact string (length + 1) and a tagged-field section, here with one
    // unknown tag that must be skipped.
    let v4 = OffsetCommitValue::decode(&hex(
        "0004 0000000000000064 00000003 03 6d64 0000000102030405 01 05 02 abcd",
    ))
    .unwrap();
    assert_eq!(v4, value);
}

#[test]
fn group_values_match_kafka_bytes() {
    let value = sample_group();
    assert_eq!(value.encode().as_ref(), hex(GROUP_VALUE_V3).as_slice());
    assert_eq!(
        GroupMetadataValue::decode(&hex(GROUP_VALUE_V3)).unwrap(),
        value
    );

    // v0: no state timestamp, no instance id, no rebalance timeout (it takes the session's).
    let v0 = hex(
        "0000 0008 636f6e73756d6572 00000002 0005 72616e6765 0002 6d31
         00000001 0002 6d31 0001 63 0002 2f68 00002710 00000001 aa 00000002 bbcc",
    );
    let decoded = GroupMetadataValue::decode(&v0).unwrap();
    assert_eq!(decoded.current_state_timestamp, -1);
    assert_eq!(decoded.members[0].rebalance_timeout, 10_000);
    assert_eq!(decoded.members[0].assignment.as_ref(), [0xbb, 0xcc]);

    // v3 with a static member.
    let mut with_instance = sample_group();
    with_instance.members[0].group_instance_id = Some("i".into());
    let bytes = with_instance.encode();
    assert_eq!(
        &bytes[43..48],
        hex("0001 69 0001").as_slice(),
        "instance id sits after the member id"
    );
    assert_eq!(GroupMetadataValue::decode(&bytes).unwrap(), with_instance);

    // v4 (flexible): compact strings, arrays and bytes, tagged fields per member and at the end.
    let v4 = hex(
        "0004 09 636f6e73756d6572 00000002 06 72616e6765 03 6d31 00000000000003e8
         02 03 6d31 00 02 63 03 2f68 00007530 00002710 02 aa 03 bbcc 01 00 01 ff
         00",
    );
    assert_eq!(GroupMetadataValue::decode(&v4).unwrap(), value);

    // An Empty group: null protocol and leader, no members.
    let empty = GroupMetadataValue {
        protocol_type: "consumer".into(),
        generation: 3,
        protocol: None,
        leader: None,
        current_state_timestamp: 5,
        members: vec![],
    };
    assert_eq!(
        empty.encode().as_ref(),
        hex("0003 0008 636f6e73756d6572 00000003 ffff ffff 0000000000000005 00000000").as_slice()
    );
    assert_eq!(GroupMetadataValue::decode(&empty.encode()).unwrap(), empty);
}

#[test]
fn corrupt_records_are_errors_not_panics() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty key", vec![]),
        ("one byte", vec![0]),
        ("truncated key", hex("0001 0003 6772")),
        ("negative string length", hex("0002 fffe")),
        ("bad utf-8", hex("0002 0002 c328")),
    ];
    for (what, bytes) in cases {
        assert!(
            matches!(
                RecordKey::decode(&bytes),
                Err(CoordinatorError::CorruptRecord { .. })
            ),
            "{what}"
        );
    }
    assert_eq!(
        RecordKey::decode(&hex("0003 0001 67")),
        Err(CoordinatorError::UnknownKeyVersion(3))
    );
    assert!(matches!(
        OffsetCommitValue::decode(&hex("0005 00")),
        Err(CoordinatorError::UnsupportedValueVersion { version: 5, .. })
    ));
    assert!(OffsetCommitValue::decode(&hex("0003 0000000000000064")).is_err());
    // A member count far beyond the bytes present.
    assert!(
        GroupMetadataValue::decode(&hex(
            "0003 0000 00000001 ffff ffff 0000000000000000 7fffffff"
        ))
        .is_err()
    );
    // Negative bytes length.
    assert!(
        GroupMetadataValue::decode(&hex(
            "0003 0000 00000001 ffff ffff 0000000000000000 00000001 0001 61 ffff 0000 0000 00000000 00000000 ffffffff"
        ))
        .is_err()
    );
    // Null where v4 wants a string.
    assert!(GroupMetadataValue::decode(&hex("0004 00")).is_err());
    // A varint that never ends.
    assert!(OffsetCommitValue::decode(&hex("0004 0000000000000064 00000003 ffffffffff")).is_err());
    assert!(subscription_topics(&hex("ffff")).is_err());
}

#[test]
fn subscription_topics_read_any_subscription_version() {
    for version in 0..=3 {
        let mut sub = kafka_protocol::messages::ConsumerProtocolSubscription::default();
        sub.topics = vec!["a".into(), "b".into()];
        let mut buf = bytes::BytesMut::new();
        bytes::BufMut::put_i16(&mut buf, version);
        kafka_protocol::protocol::Encodable::encode(&sub, &mut buf, version).unwrap();
        assert_eq!(
            subscription_topics(&buf).unwrap(),
            vec!["a".to_string(), "b".to_string()]
        );
    }
}

proptest::proptest! {
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        let _ = RecordKey::decode(&bytes);
        let _ = OffsetCommitValue::decode(&bytes);
        let _ = GroupMetadataValue::decode(&bytes);
        let _ = subscription_topics(&bytes);
    }

    #[test]
    fn group_values_round_trip(
        generation in proptest::num::i32::ANY,
        ts in proptest::num::i64::ANY,
        names in proptest::collection::vec("[a-z]{0,8}", 1..4),
        instance in proptest::option::of("[a-z]{1,5}"),
        payload in proptest::collection::vec(proptest::num::u8::ANY, 0..16),
    ) {
        let value = GroupMetadataValue {
            protocol_type: names[0].clone(),
            generation,
            protocol: names.get(1).cloned(),
            leader: names.get(2).cloned(),
            current_state_timestamp: ts,
            members: names.iter().map(|n| MemberMetadataValue {
                member_id: n.clone(),
                group_instance_id: instance.clone(),
                client_id: n.clone(),
                client_host: String::new(),
                rebalance_timeout: generation,
                session_timeout: 1,
                subscription: Bytes::from(payload.clone()),
                assignment: Bytes::new(),
            }).collect(),
        };
        proptest::prop_assert_eq!(GroupMetadataValue::decode(&value.encode()).unwrap(), value);
    }
}
