//! Records inside an uncompressed magic-2 batch: building batches the broker writes itself
//! (consumer offsets), and reading records back (replay, `sluicectl consume`).
//!
//! The produce path never comes here: producer batches are stored as they arrive.

use crate::batch::{
    BatchError, BatchHeader, HEADER_LEN, LOG_OVERHEAD, compute_crc, read_varint, read_varlong,
};

/// One record to put in a batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct NewRecord<'a> {
    /// Record key; `None` is a null key.
    pub key: Option<&'a [u8]>,
    /// Record value; `None` is a null value (a tombstone).
    pub value: Option<&'a [u8]>,
    /// Record headers.
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
    /// Create time in ms.
    pub timestamp: i64,
}

/// Producer identity of a batch; `NONE` for batches without idempotence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInfo {
    /// Producer id, -1 for none.
    pub producer_id: i64,
    /// Producer epoch, -1 for none.
    pub producer_epoch: i16,
    /// Sequence of the first record, -1 for none.
    pub base_sequence: i32,
}

impl ProducerInfo {
    /// No idempotent producer.
    pub const NONE: ProducerInfo = ProducerInfo {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
}

fn push_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn push_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => push_varint(out, -1),
        Some(b) => {
            push_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// Builds one uncompressed magic-2 batch with base offset 0 and a valid CRC.
///
/// Panics never; an empty `records` yields a batch with no records, which validation refuses.
pub fn build_batch(records: &[NewRecord<'_>], producer: ProducerInfo) -> Vec<u8> {
    let base_ts = records.first().map_or(0, |r| r.timestamp);
    let max_ts = records.iter().map(|r| r.timestamp).max().unwrap_or(base_ts);
    let mut out = vec![0u8; HEADER_LEN];
    let mut rec = Vec::new();
    for (i, r) in records.iter().enumerate() {
        rec.clear();
        rec.push(0); // record attributes
        push_varint(&mut rec, r.timestamp - base_ts);
        push_varint(&mut rec, i as i64);
        push_bytes(&mut rec, r.key);
        push_bytes(&mut rec, r.value);
        push_varint(&mut rec, r.headers.len() as i64);
        for (k, v) in r.headers {
            push_bytes(&mut rec, Some(k.as_bytes()));
            push_bytes(&mut rec, *v);
        }
        push_varint(&mut out, rec.len() as i64);
        out.extend_from_slice(&rec);
    }
    let batch_length = (out.len() - LOG_OVERHEAD) as i32;
    let count = records.len() as i32;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    out[12..16].copy_from_slice(&(-1i32).to_be_bytes());
    out[16] = 2;
    out[21..23].copy_from_slice(&0i16.to_be_bytes());
    out[23..27].copy_from_slice(&(count - 1).max(0).to_be_bytes());
    out[27..35].copy_from_slice(&base_ts.to_be_bytes());
    out[35..43].copy_from_slice(&max_ts.to_be_bytes());
    out[43..51].copy_from_slice(&producer.producer_id.to_be_bytes());
    out[51..53].copy_from_slice(&producer.producer_epoch.to_be_bytes());
    out[53..57].copy_from_slice(&producer.base_sequence.to_be_bytes());
    out[57..61].copy_from_slice(&count.to_be_bytes());
    let crc = compute_crc(&out);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

/// A record read from an uncompressed batch, borrowing the batch's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Absolute offset.
    pub offset: i64,
    /// Absolute timestamp.
    pub timestamp: i64,
    /// Key, `None` when null.
    pub key: Option<&'a [u8]>,
    /// Value, `None` when null.
    pub value: Option<&'a [u8]>,
    /// Headers in order.
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn varint(&mut self) -> Result<i64, BatchError> {
        let (v, used) = read_varlong(self.buf)
            .ok_or_else(|| BatchError::Corrupt("malformed varint in a record".into()))?;
        self.buf = &self.buf[used..];
        Ok(v)
    }

    fn bytes(&mut self) -> Result<Option<&'a [u8]>, BatchError> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.buf.len() {
            return Err(BatchError::Corrupt(
                "record field runs past the record".into(),
            ));
        }
        let (b, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(Some(b))
    }

    fn byte(&mut self) -> Result<u8, BatchError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| BatchError::Corrupt("record is truncated".into()))?;
        self.buf = rest;
        Ok(b)
    }
}

/// Decodes the records of one uncompressed batch (header included in `batch`).
pub fn read_records(batch: &[u8]) -> Result<(BatchHeader, Vec<RecordView<'_>>), BatchError> {
    let header = BatchHeader::parse(batch)?;
    if header.size() > batch.len() {
        return Err(BatchError::Corrupt("batch is truncated".into()));
    }
    if header.compression() != 0 {
        return Err(BatchError::Invalid(format!(
            "batch is compressed (codec {}); decompress it first",
            header.compression()
        )));
    }
    let mut body = &batch[HEADER_LEN..header.size()];
    let mut records = Vec::with_capacity(header.record_count.clamp(0, 4096) as usize);
    while !body.is_empty() {
        let (len, used) = read_varint(body)
            .ok_or_else(|| BatchError::Corrupt("malformed record length".into()))?;
        let len = usize::try_from(len)
            .map_err(|_| BatchError::Corrupt("negative record length".into()))?;
        if used + len > body.len() {
            return Err(BatchError::Corrupt("record runs past the batch".into()));
        }
        let mut c = Cursor {
            buf: &body[used..used + len],
        };
        body = &body[used + len..];
        let _attributes = c.byte()?;
        let ts_delta = c.varint()?;
        let offset_delta = c.varint()?;
        let key = c.bytes()?;
        let value = c.bytes()?;
        let header_count = c.varint()?;
        let mut headers = Vec::new();
        for _ in 0..header_count.max(0) {
            let k = c.bytes()?.unwrap_or_default();
            let v = c.bytes()?;
            headers.push((k, v));
        }
        records.push(RecordView {
            offset: header.base_offset + offset_delta,
            timestamp: if header.is_log_append_time() {
                header.max_timestamp
            } else {
                header.base_timestamp + ts_delta
            },
            key,
            value,
            headers,
        });
    }
    Ok((header, records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::validate_producer_batch;

    #[test]
    fn built_batches_validate_and_read_back() {
        let headers = [("h", Some(&b"v"[..]))];
        let recs = [
            NewRecord {
                key: Some(b"k1"),
                value: Some(b"v1"),
                headers: &headers,
                timestamp: 100,
            },
            NewRecord {
                key: None,
                value: None,
                headers: &[],
                timestamp: 105,
            },
        ];
        let b = build_batch(&recs, ProducerInfo::NONE);
        let h = validate_producer_batch(&b).expect("valid");
        assert_eq!((h.record_count, h.max_timestamp), (2, 105));
        let (_, read) = read_records(&b).expect("reads");
        assert_eq!(read[0].key, Some(&b"k1"[..]));
        assert_eq!(read[0].headers, vec![(&b"h"[..], Some(&b"v"[..]))]);
        assert_eq!(
            (read[1].offset, read[1].timestamp, read[1].value),
            (1, 105, None)
        );
    }

    #[test]
    fn a_record_longer_than_its_batch_is_corrupt_not_a_panic() {
        let mut b = build_batch(
            &[NewRecord {
                value: Some(b"xyz"),
                ..NewRecord::default()
            }],
            ProducerInfo::NONE,
        );
        b[HEADER_LEN] = 0x7e; // record length 63
        assert!(read_records(&b).is_err());
    }
}
