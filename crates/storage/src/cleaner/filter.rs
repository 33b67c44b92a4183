//! One stored batch, minus the records the cleaner drops.
//!
//! Only uncompressed batches are taken apart. Kept records are copied byte for byte (their
//! offset and timestamp deltas stay valid because `baseOffset`, `baseTimestamp` and
//! `lastOffsetDelta` are not touched); only `batchLength`, `recordCount` and the CRC32C change.

use sluice_protocol::batch::{BatchHeader, HEADER_LEN, LOG_OVERHEAD, compute_crc, read_varlong};

/// Byte positions in the magic-2 header (see `sluice_protocol::batch`).
const BATCH_LENGTH_AT: usize = 8;
const CRC_AT: usize = 17;
const RECORD_COUNT_AT: usize = 57;

/// One record of an uncompressed batch as the cleaner needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawRecord<'a> {
    /// Absolute offset.
    pub(crate) offset: i64,
    /// The record's timestamp (the batch's for LogAppendTime batches).
    pub(crate) timestamp: i64,
    /// `None` for a keyless record.
    pub(crate) key: Option<&'a [u8]>,
    /// True when the value is null (a tombstone).
    pub(crate) tombstone: bool,
    /// The whole record as stored, length prefix included.
    pub(crate) bytes: &'a [u8],
}

/// Splits the records of an uncompressed batch (`batch` holds the whole batch). `None` if
/// the records area is malformed; the caller then keeps the batch as it is.
pub(crate) fn split_records<'a>(h: &BatchHeader, batch: &'a [u8]) -> Option<Vec<RawRecord<'a>>> {
    let mut rest = batch.get(HEADER_LEN..h.size())?;
    let mut out = Vec::with_capacity(h.record_count.clamp(0, 4096) as usize);
    while !rest.is_empty() {
        let (len, used) = read_varlong(rest)?;
        let len = usize::try_from(len).ok()?;
        let whole = rest.get(..used.checked_add(len)?)?;
        let mut rec = &whole[used..];
        // attributes (1 byte), timestampDelta (varlong), offsetDelta (varint), key, value.
        rec = rec.get(1..)?;
        let (ts_delta, n) = read_varlong(rec)?;
        rec = &rec[n..];
        let (offset_delta, n) = read_varlong(rec)?;
        rec = &rec[n..];
        let (key_len, n) = read_varlong(rec)?;
        rec = &rec[n..];
        let key = if key_len < 0 {
            None
        } else {
            let k = rec.get(..usize::try_from(key_len).ok()?)?;
            rec = &rec[k.len()..];
            Some(k)
        };
        let (value_len, _) = read_varlong(rec)?;
        out.push(RawRecord {
            offset: h.base_offset.checked_add(offset_delta)?,
            timestamp: if h.is_log_append_time() {
                h.max_timestamp
            } else {
                h.base_timestamp.saturating_add(ts_delta)
            },
            key,
            tombstone: value_len < 0,
            bytes: whole,
        });
        rest = &rest[whole.len()..];
    }
    Some(out)
}

/// The batch rebuilt with only `kept` records (possibly none): same header except
/// `batchLength`, `recordCount` and the CRC32C.
pub(crate) fn rebuild(batch: &[u8], kept: &[RawRecord<'_>]) -> Vec<u8> {
    let body: usize = kept.iter().map(|r| r.bytes.len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + body);
    out.extend_from_slice(&batch[..HEADER_LEN]);
    for r in kept {
        out.extend_from_slice(r.bytes);
    }
    let length = (out.len() - LOG_OVERHEAD) as i32;
    out[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
    out[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = compute_crc(&out);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::batch::verify_stored_batch;
    use sluice_protocol::records::{NewRecord, ProducerInfo, build_batch, read_records};

    #[test]
    fn rebuilt_batch_keeps_offsets_and_passes_its_crc() {
        let recs = [
            NewRecord {
                key: Some(b"a"),
                value: Some(b"1"),
                headers: &[],
                timestamp: 10,
            },
            NewRecord {
                key: Some(b"b"),
                value: None,
                headers: &[],
                timestamp: 11,
            },
            NewRecord {
                key: None,
                value: Some(b"3"),
                headers: &[],
                timestamp: 12,
            },
        ];
        let mut batch = build_batch(&recs, ProducerInfo::NONE);
        batch[..8].copy_from_slice(&100i64.to_be_bytes());
        let h = BatchHeader::parse(&batch).expect("header");
        let split = split_records(&h, &batch).expect("split");
        assert_eq!(split.len(), 3);
        assert_eq!(split[0].key, Some(&b"a"[..]));
        assert!(split[1].tombstone && !split[0].tombstone);
        assert_eq!(split[1].timestamp, 11);
        assert_eq!(split[2].key, None);
        assert_eq!(
            split.iter().map(|r| r.offset).collect::<Vec<_>>(),
            [100, 101, 102]
        );

        let kept = [split[1], split[2]];
        let rebuilt = rebuild(&batch, &kept);
        let nh = verify_stored_batch(&rebuilt).expect("valid CRC");
        assert_eq!(nh.base_offset, 100);
        assert_eq!(nh.last_offset_delta, 2, "lastOffsetDelta unchanged");
        assert_eq!(nh.record_count, 2);
        let (_, views) = read_records(&rebuilt).expect("records");
        assert_eq!(
            views.iter().map(|v| v.offset).collect::<Vec<_>>(),
            [101, 102]
        );
        assert_eq!(views[1].timestamp, 12);

        let empty = rebuild(&batch, &[]);
        let eh = verify_stored_batch(&empty).expect("valid CRC");
        assert_eq!((eh.record_count, eh.size()), (0, HEADER_LEN));
        assert_eq!(eh.last_offset(), 102);
    }

    #[test]
    fn malformed_records_are_not_split() {
        let recs = [NewRecord {
            key: Some(b"a"),
            value: Some(b"1"),
            headers: &[],
            timestamp: 10,
        }];
        let mut batch = build_batch(&recs, ProducerInfo::NONE);
        let h = BatchHeader::parse(&batch).expect("header");
        batch[HEADER_LEN] = 0x7e; // record length 63: runs past the batch
        assert!(split_records(&h, &batch).is_none());
    }
}
