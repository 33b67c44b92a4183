//! Fetch responses framed without copying their records.
//!
//! The generic encoder copies every partition's record batches into the response buffer. Here the
//! response is written as a list of parts: small encoded pieces, and the records `Bytes` the
//! storage read returned, untouched, so the connection can hand them to the socket as they are.
//! Only what the broker itself puts in a Fetch response is handled; anything else (leader hints,
//! diverging epochs, snapshot ids, node endpoints, unknown tagged fields) makes
//! [`encode_fetch_response`] return `None`, and the caller uses the generic encoder.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::fetch_response::{FetchResponse, PartitionData};

use crate::response::response_header_version;

/// Oldest and newest Fetch versions this encoder writes.
pub const VERSIONS: std::ops::RangeInclusive<i16> = 4..=17;

/// Writes parts into a list: bytes accumulate in `current` until a records `Bytes` is spliced in.
struct Parts {
    done: Vec<Bytes>,
    current: BytesMut,
    len: usize,
}

impl Parts {
    fn splice(&mut self, records: &Bytes) {
        // Small record sets are cheaper to copy than to hand over as their own write.
        if records.len() < 4096 {
            self.current.put_slice(records);
        } else {
            let head = self.current.split().freeze();
            self.len += head.len() + records.len();
            self.done.push(head);
            self.done.push(records.clone());
        }
    }

    fn uvarint(&mut self, mut v: u32) {
        while v >= 0x80 {
            self.current.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.current.put_u8(v as u8);
    }

    fn array_len(&mut self, n: usize, flexible: bool) {
        if flexible {
            self.uvarint(n as u32 + 1);
        } else {
            self.current.put_i32(n as i32);
        }
    }

    fn finish(mut self) -> Vec<Bytes> {
        let tail = self.current.split().freeze();
        self.len += tail.len();
        self.done.push(tail);
        // The frame's length prefix counts everything after itself.
        let total = (self.len - 4) as i32;
        let mut first = BytesMut::from(&self.done[0][..]);
        first[0..4].copy_from_slice(&total.to_be_bytes());
        self.done[0] = first.freeze();
        self.done
    }
}

fn only_broker_fields(p: &PartitionData) -> bool {
    p.diverging_epoch == Default::default()
        && p.current_leader == Default::default()
        && p.snapshot_id == Default::default()
        && p.unknown_tagged_fields.is_empty()
        && p.aborted_transactions
            .as_ref()
            .is_none_or(|a| a.iter().all(|t| t.unknown_tagged_fields.is_empty()))
}

/// The whole response frame (length prefix, header, body) as parts to write in order, or `None`
/// when the response carries a field this encoder does not write (see the module docs).
pub fn encode_fetch_response(
    correlation_id: i32,
    version: i16,
    r: &FetchResponse,
) -> Option<Vec<Bytes>> {
    if !VERSIONS.contains(&version)
        || !r.node_endpoints.is_empty()
        || !r.unknown_tagged_fields.is_empty()
        || r.responses.iter().any(|t| {
            !t.unknown_tagged_fields.is_empty() || !t.partitions.iter().all(only_broker_fields)
        })
    {
        return None;
    }
    if version < 7 && (r.session_id != 0 || r.error_code != 0) {
        return None;
    }
    let flexible = version >= 12;
    let mut w = Parts {
        done: Vec::new(),
        current: BytesMut::with_capacity(256),
        len: 0,
    };
    w.current.put_i32(0); // frame length, filled in by finish()
    w.current.put_i32(correlation_id);
    if response_header_version(ApiKey::Fetch, version) >= 1 {
        w.uvarint(0);
    }
    w.current.put_i32(r.throttle_time_ms);
    if version >= 7 {
        w.current.put_i16(r.error_code);
        w.current.put_i32(r.session_id);
    }
    w.array_len(r.responses.len(), flexible);
    for t in &r.responses {
        if version >= 13 {
            w.current.put_slice(t.topic_id.as_bytes());
        } else if flexible {
            w.uvarint(t.topic.len() as u32 + 1);
            w.current.put_slice(t.topic.as_bytes());
        } else {
            w.current.put_i16(t.topic.len() as i16);
            w.current.put_slice(t.topic.as_bytes());
        }
        w.array_len(t.partitions.len(), flexible);
        for p in &t.partitions {
            w.current.put_i32(p.partition_index);
            w.current.put_i16(p.error_code);
            w.current.put_i64(p.high_watermark);
            w.current.put_i64(p.last_stable_offset);
            if version >= 5 {
                w.current.put_i64(p.log_start_offset);
            }
            match &p.aborted_transactions {
                None if flexible => w.uvarint(0),
                None => w.current.put_i32(-1),
                Some(aborted) => {
                    w.array_len(aborted.len(), flexible);
                    for a in aborted {
                        w.current.put_i64(a.producer_id.0);
                        w.current.put_i64(a.first_offset);
                        if flexible {
                            w.uvarint(0);
                        }
                    }
                }
            }
            if version >= 11 {
                w.current.put_i32(p.preferred_read_replica.0);
            }
            match &p.records {
                None if flexible => w.uvarint(0),
                None => w.current.put_i32(-1),
                Some(records) => {
                    if flexible {
                        w.uvarint(records.len() as u32 + 1);
                    } else {
                        w.current.put_i32(records.len() as i32);
                    }
                    w.splice(records);
                }
            }
            if flexible {
                w.uvarint(0);
            }
        }
        if flexible {
            w.uvarint(0);
        }
    }
    if flexible {
        w.uvarint(0);
    }
    Some(w.finish())
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, EpochEndOffset, FetchableTopicResponse,
    };
    use kafka_protocol::messages::{BrokerId, ProducerId, ResponseKind, TopicName};
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::response::encode_response;

    fn response(records: &[Option<Bytes>]) -> FetchResponse {
        let mut r = FetchResponse::default();
        r.throttle_time_ms = 3;
        for (ti, name) in ["alpha", "beta"].into_iter().enumerate() {
            let mut t = FetchableTopicResponse::default();
            t.topic = TopicName(StrBytes::from_static_str(name));
            t.topic_id = uuid::Uuid::from_u128(0x1234_5678 + ti as u128);
            for (i, rec) in records.iter().enumerate() {
                let mut p = PartitionData::default();
                p.partition_index = i as i32;
                p.error_code = if rec.is_none() { 1 } else { 0 };
                p.high_watermark = 100 + i as i64;
                p.last_stable_offset = 90 + i as i64;
                p.log_start_offset = 7;
                p.preferred_read_replica = BrokerId(-1);
                p.records = rec.clone();
                let mut a = AbortedTransaction::default();
                a.producer_id = ProducerId(42);
                a.first_offset = 11;
                p.aborted_transactions = if i == 0 { Some(vec![a]) } else { Some(vec![]) };
                t.partitions.push(p);
            }
            r.responses.push(t);
        }
        r
    }

    /// What the generic encoder writes for the same response, at the same version.
    fn reference(r: &FetchResponse, version: i16) -> Vec<u8> {
        let mut r = r.clone();
        if version < 13 {
            for t in &mut r.responses {
                t.topic_id = uuid::Uuid::nil();
            }
        } else {
            for t in &mut r.responses {
                t.topic = TopicName::default();
            }
        }
        let mut out = BytesMut::new();
        encode_response(
            &mut out,
            77,
            ApiKey::Fetch,
            version,
            &ResponseKind::Fetch(r),
        )
        .expect("the reference encoder takes it");
        out.to_vec()
    }

    #[test]
    fn every_version_is_byte_identical_to_the_generic_encoder() {
        let big = Bytes::from(vec![0xab; 10_000]);
        let small = Bytes::from_static(b"tiny batch bytes");
        let r = response(&[Some(big.clone()), Some(small), Some(Bytes::new()), None]);
        for version in VERSIONS {
            let mut r = r.clone();
            if version < 13 {
                r.responses
                    .iter_mut()
                    .for_each(|t| t.topic_id = uuid::Uuid::nil());
            } else {
                r.responses
                    .iter_mut()
                    .for_each(|t| t.topic = TopicName::default());
            }
            if version < 11 {
                // A version without the field must carry its default.
                for t in &mut r.responses {
                    for p in &mut t.partitions {
                        p.preferred_read_replica = BrokerId(-1);
                    }
                }
            }
            let parts = encode_fetch_response(77, version, &r).expect("broker fields only");
            let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
            assert_eq!(joined, reference(&r, version), "Fetch v{version}");
            // The big record set is handed over, not copied.
            assert!(
                parts
                    .iter()
                    .any(|p| p.as_ptr() == big.as_ptr() && p.len() == big.len()),
                "v{version}: records were copied"
            );
        }
    }

    #[test]
    fn fields_it_does_not_write_send_the_caller_to_the_generic_encoder() {
        let mut r = response(&[Some(Bytes::from_static(b"x"))]);
        let mut diverging = EpochEndOffset::default();
        diverging.epoch = 3;
        diverging.end_offset = 9;
        r.responses[0].partitions[0].diverging_epoch = diverging;
        assert!(encode_fetch_response(1, 12, &r).is_none());
        assert!(
            encode_fetch_response(1, 3, &response(&[])).is_none(),
            "v3 is not written"
        );
    }
}
