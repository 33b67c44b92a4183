//! The record batch (magic 2) as it travels on the wire and sits on disk.
//!
//! A broker never re-encodes a producer's batch: it validates the 61-byte header and the CRC,
//! then patches `baseOffset` and `partitionLeaderEpoch`, which lie outside the CRC'd range.
//! Records are only walked (never decompressed) to check that an uncompressed batch holds the
//! number of records its header claims.

use thiserror::Error;

/// Bytes in a magic-2 batch header, from `baseOffset` through `recordCount`.
pub const HEADER_LEN: usize = 61;
/// Bytes before `batchLength` counts: `baseOffset` (8) and `batchLength` (4) itself.
pub const LOG_OVERHEAD: usize = 12;
/// The only message format this broker stores.
pub const MAGIC_V2: i8 = 2;
/// First byte covered by the CRC32C (`attributes`).
pub const CRC_START: usize = 21;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const PARTITION_LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORD_COUNT: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;

/// Why a batch was refused. Each maps to one Kafka error code.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// The bytes are not a whole, intact batch (short, bad length, CRC mismatch): CORRUPT_MESSAGE.
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// The batch is intact but breaks a rule (magic, record count, control batch): INVALID_RECORD.
    #[error("invalid record batch: {0}")]
    Invalid(String),
}

impl BatchError {
    /// The Kafka error code a client should get for this batch.
    pub fn error_code(&self) -> i16 {
        match self {
            BatchError::Corrupt(_) => 2,
            BatchError::Invalid(_) => 87,
        }
    }
}

/// The parsed 61-byte header of a magic-2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Bytes after the `batchLength` field.
    pub batch_length: i32,
    /// Leader epoch when the batch was appended.
    pub partition_leader_epoch: i32,
    /// Message format version.
    pub magic: i8,
    /// CRC32C over bytes 21.. of the batch.
    pub crc: u32,
    /// Compression, timestamp type, transactional and control flags.
    pub attributes: i16,
    /// Offset of the last record relative to `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest timestamp in the batch (or the append time for LogAppendTime topics).
    pub max_timestamp: i64,
    /// Idempotent producer id, -1 when none.
    pub producer_id: i64,
    /// Producer epoch, -1 when none.
    pub producer_epoch: i16,
    /// Sequence number of the first record, -1 when none.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub record_count: i32,
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

impl BatchHeader {
    /// Parses the header at the start of `buf` without checking the CRC or the body.
    ///
    /// Fails if fewer than [`HEADER_LEN`] bytes are present or the magic is not 2.
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Corrupt(format!(
                "{} bytes is shorter than a batch header ({HEADER_LEN})",
                buf.len()
            )));
        }
        let magic = buf[MAGIC] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::Invalid(format!(
                "magic {magic} is not supported, only magic 2 record batches are"
            )));
        }
        let header = BatchHeader {
            base_offset: i64_at(buf, BASE_OFFSET),
            batch_length: i32_at(buf, BATCH_LENGTH),
            partition_leader_epoch: i32_at(buf, PARTITION_LEADER_EPOCH),
            magic,
            crc: i32_at(buf, CRC) as u32,
            attributes: i16_at(buf, ATTRIBUTES),
            last_offset_delta: i32_at(buf, LAST_OFFSET_DELTA),
            base_timestamp: i64_at(buf, BASE_TIMESTAMP),
            max_timestamp: i64_at(buf, MAX_TIMESTAMP),
            producer_id: i64_at(buf, PRODUCER_ID),
            producer_epoch: i16_at(buf, PRODUCER_EPOCH),
            base_sequence: i32_at(buf, BASE_SEQUENCE),
            record_count: i32_at(buf, RECORD_COUNT),
        };
        if (header.batch_length as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64 {
            return Err(BatchError::Corrupt(format!(
                "batch length {} is smaller than the header",
                header.batch_length
            )));
        }
        Ok(header)
    }

    /// Total bytes of this batch on the wire, including `baseOffset` and `batchLength`.
    pub fn size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// Compression codec id: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> u8 {
        (self.attributes & COMPRESSION_MASK) as u8
    }

    /// True when the batch's timestamps are broker append times.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }

    /// True for batches written inside a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    /// True for control batches (transaction markers).
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    /// True when the batch carries an idempotent producer id.
    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }

    /// Sequence number of the last record, wrapping at i32::MAX as Kafka does.
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        let last = self.base_sequence as i64 + self.last_offset_delta as i64;
        (last % (i32::MAX as i64 + 1)) as i32
    }
}

/// Computes the CRC32C a batch should carry.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[CRC_START..])
}

/// Checks that `batch` is exactly one intact magic-2 batch, as a producer must send it.
///
/// Verifies the length, magic, CRC32C, that `lastOffsetDelta` matches the record count, and, for
/// uncompressed batches, that the records area holds exactly `recordCount` length-prefixed
/// records. Nothing is decompressed.
pub fn validate_producer_batch(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(batch)?;
    if header.size() != batch.len() {
        return Err(BatchError::Corrupt(format!(
            "batch length field says {} bytes but {} were sent",
            header.size(),
            batch.len()
        )));
    }
    let crc = compute_crc(batch);
    if crc != header.crc {
        return Err(BatchError::Corrupt(format!(
            "CRC32C mismatch: header {:#010x}, computed {crc:#010x}",
            header.crc
        )));
    }
    if header.record_count < 1 {
        return Err(BatchError::Invalid(format!(
            "record count {} is not positive",
            header.record_count
        )));
    }
    if header.last_offset_delta != header.record_count - 1 {
        return Err(BatchError::Invalid(format!(
            "lastOffsetDelta {} does not match record count {}",
            header.last_offset_delta, header.record_count
        )));
    }
    if header.is_control() {
        return Err(BatchError::Invalid(
            "clients may not write control batches".into(),
        ));
    }
    if header.has_producer_id() && header.base_sequence < 0 {
        return Err(BatchError::Invalid(format!(
            "idempotent batch from producer {} has no sequence number",
            header.producer_id
        )));
    }
    if header.compression() > 4 {
        return Err(BatchError::Invalid(format!(
            "unknown compression codec {}",
            header.compression()
        )));
    }
    if header.compression() == 0 {
        count_uncompressed_records(&batch[HEADER_LEN..], header.record_count)?;
    }
    Ok(header)
}

/// Checks a batch read back from disk: header, length and CRC32C.
pub fn verify_stored_batch(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(batch)?;
    if header.size() != batch.len() {
        return Err(BatchError::Corrupt(format!(
            "stored batch is {} bytes, its header says {}",
            batch.len(),
            header.size()
        )));
    }
    let crc = compute_crc(batch);
    if crc != header.crc {
        return Err(BatchError::Corrupt(format!(
            "stored batch at offset {} fails its CRC32C (header {:#010x}, computed {crc:#010x})",
            header.base_offset, header.crc
        )));
    }
    Ok(header)
}

/// Walks the length prefixes of an uncompressed records area without decoding the records.
fn count_uncompressed_records(mut records: &[u8], expected: i32) -> Result<(), BatchError> {
    let mut count = 0i32;
    while let Some(&first) = records.first() {
        // Lengths under 8 KiB take one or two bytes: decode those inline, the rest the long way.
        let second = records.get(1).copied().unwrap_or(0x80);
        let (len, used) = if first & 0x80 == 0 {
            (((first >> 1) as i32) ^ -((first & 1) as i32), 1)
        } else if second & 0x80 == 0 {
            let raw = ((first & 0x7f) as u32) | ((second as u32) << 7);
            (((raw >> 1) as i32) ^ -((raw & 1) as i32), 2)
        } else {
            read_varint(records).ok_or_else(|| {
                BatchError::Invalid(format!("record {count} has a malformed length"))
            })?
        };
        if len < 0 || (len as u64) > (records.len() - used) as u64 {
            return Err(BatchError::Invalid(format!(
                "record {count} claims {len} bytes, {} remain",
                records.len() - used
            )));
        }
        records = &records[used + len as usize..];
        count += 1;
        if count > expected {
            break;
        }
    }
    if count != expected {
        return Err(BatchError::Invalid(format!(
            "batch header says {expected} records, found {count}"
        )));
    }
    Ok(())
}

/// Reads a zigzag varint (at most 5 bytes). Returns the value and the bytes used.
pub fn read_varint(buf: &[u8]) -> Option<(i32, usize)> {
    let mut raw: u32 = 0;
    for (i, &b) in buf.iter().enumerate().take(5) {
        raw |= ((b & 0x7f) as u32) << (7 * i);
        if b & 0x80 == 0 {
            let value = ((raw >> 1) as i32) ^ -((raw & 1) as i32);
            return Some((value, i + 1));
        }
    }
    None
}

/// Reads a zigzag varlong (at most 10 bytes). Returns the value and the bytes used.
pub fn read_varlong(buf: &[u8]) -> Option<(i64, usize)> {
    let mut raw: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(10) {
        raw |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Some((((raw >> 1) as i64) ^ -((raw & 1) as i64), i + 1));
        }
    }
    None
}

/// Overwrites `baseOffset` and `partitionLeaderEpoch` in a batch header prefix.
///
/// Both lie before the CRC'd range, so the batch stays valid. `prefix` must be at least the
/// first 16 bytes of the batch.
pub fn patch_offset_and_epoch(prefix: &mut [u8], base_offset: i64, leader_epoch: i32) {
    prefix[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    prefix[PARTITION_LEADER_EPOCH..PARTITION_LEADER_EPOCH + 4]
        .copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Marks a batch as LogAppendTime with `append_time` as its max timestamp and fixes the CRC.
///
/// Used only for topics with `message.timestamp.type=LogAppendTime`; costs one CRC pass.
pub fn set_log_append_time(batch: &mut [u8], append_time: i64) {
    let attributes = i16_at(batch, ATTRIBUTES) | TIMESTAMP_TYPE_BIT;
    batch[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&append_time.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Iterates over whole batches in a buffer of concatenated batches, stopping at the first
/// incomplete one. Yields `(header, bytes)`; does not check CRCs.
pub fn iter_batches(
    mut buf: &[u8],
) -> impl Iterator<Item = Result<(BatchHeader, &[u8]), BatchError>> {
    std::iter::from_fn(move || {
        if buf.len() < HEADER_LEN {
            return None;
        }
        match BatchHeader::parse(buf) {
            Err(e) => {
                buf = &[];
                Some(Err(e))
            }
            Ok(h) if h.size() > buf.len() => None,
            Ok(h) => {
                let (this, rest) = buf.split_at(h.size());
                buf = rest;
                Some(Ok((h, this)))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an uncompressed batch by hand so the tests do not depend on an encoder we also own.
    fn batch(records: &[&[u8]], producer_id: i64, base_sequence: i32) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, value) in records.iter().enumerate() {
            let mut rec = Vec::new();
            rec.push(0u8); // attributes
            push_varint(&mut rec, 0); // timestamp delta
            push_varint(&mut rec, i as i32); // offset delta
            push_varint(&mut rec, -1); // null key
            push_varint(&mut rec, value.len() as i32);
            rec.extend_from_slice(value);
            push_varint(&mut rec, 0); // no headers
            push_varint(&mut body, rec.len() as i32);
            body.extend_from_slice(&rec);
        }
        let mut b = vec![0u8; HEADER_LEN];
        b.extend_from_slice(&body);
        let len = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        b[16] = 2;
        b[23..27].copy_from_slice(&(records.len() as i32 - 1).to_be_bytes());
        b[27..35].copy_from_slice(&1000i64.to_be_bytes());
        b[35..43].copy_from_slice(&1000i64.to_be_bytes());
        b[43..51].copy_from_slice(&producer_id.to_be_bytes());
        b[51..53].copy_from_slice(&0i16.to_be_bytes());
        b[53..57].copy_from_slice(&base_sequence.to_be_bytes());
        b[57..61].copy_from_slice(&(records.len() as i32).to_be_bytes());
        let crc = compute_crc(&b);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn push_varint(out: &mut Vec<u8>, v: i32) {
        let mut z = ((v << 1) ^ (v >> 31)) as u32;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }

    #[test]
    fn valid_batch_passes_and_reports_its_header() {
        let b = batch(&[b"a", b"bb", b"ccc"], 7, 10);
        let h = validate_producer_batch(&b).expect("valid");
        assert_eq!(h.record_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.producer_id, 7);
        assert_eq!(h.last_sequence(), 12);
        assert_eq!(h.size(), b.len());
    }

    #[test]
    fn record_lengths_of_one_two_and_three_varint_bytes_are_walked() {
        let small = [1u8; 10];
        let medium = [2u8; 100];
        let large = [3u8; 20_000];
        let b = batch(&[&small, &medium, &large, &medium], -1, -1);
        assert_eq!(validate_producer_batch(&b).map(|h| h.record_count), Ok(4));
        // The same records claimed as five: the walk must count exactly four.
        let mut wrong = b.clone();
        wrong[57..61].copy_from_slice(&5i32.to_be_bytes());
        wrong[23..27].copy_from_slice(&4i32.to_be_bytes());
        let crc = compute_crc(&wrong);
        wrong[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            validate_producer_batch(&wrong).map_err(|e| e.error_code()),
            Err(87)
        );
    }

    #[test]
    fn flipped_body_byte_is_corrupt() {
        let mut b = batch(&[b"hello"], -1, -1);
        let last = b.len() - 2;
        b[last] ^= 0xff;
        assert_eq!(
            validate_producer_batch(&b).map_err(|e| e.error_code()),
            Err(2)
        );
    }

    #[test]
    fn patching_offset_and_epoch_keeps_crc_valid() {
        let mut b = batch(&[b"x", b"y"], -1, -1);
        patch_offset_and_epoch(&mut b, 42, 9);
        let h = verify_stored_batch(&b).expect("still valid");
        assert_eq!(h.base_offset, 42);
        assert_eq!(h.partition_leader_epoch, 9);
        assert_eq!(h.last_offset(), 43);
    }

    #[test]
    fn record_count_mismatch_is_invalid() {
        let mut b = batch(&[b"x", b"y"], -1, -1);
        b[57..61].copy_from_slice(&3i32.to_be_bytes());
        b[23..27].copy_from_slice(&2i32.to_be_bytes());
        let crc = compute_crc(&b);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            validate_producer_batch(&b).map_err(|e| e.error_code()),
            Err(87)
        );
    }

    #[test]
    fn trailing_bytes_are_corrupt() {
        let mut b = batch(&[b"x"], -1, -1);
        b.push(0);
        assert_eq!(
            validate_producer_batch(&b).map_err(|e| e.error_code()),
            Err(2)
        );
    }

    #[test]
    fn old_magic_is_invalid() {
        let mut b = batch(&[b"x"], -1, -1);
        b[16] = 1;
        assert_eq!(
            validate_producer_batch(&b).map_err(|e| e.error_code()),
            Err(87)
        );
    }

    #[test]
    fn log_append_time_rewrites_crc() {
        let mut b = batch(&[b"x"], -1, -1);
        set_log_append_time(&mut b, 5555);
        let h = verify_stored_batch(&b).expect("valid after rewrite");
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 5555);
    }

    #[test]
    fn iter_batches_stops_at_a_torn_tail() {
        let mut buf = batch(&[b"one"], -1, -1);
        buf.extend(batch(&[b"two", b"three"], -1, -1));
        let torn = batch(&[b"four"], -1, -1);
        buf.extend_from_slice(&torn[..torn.len() - 1]);
        let counts: Vec<i32> = iter_batches(&buf)
            .map(|r| r.expect("whole batches parse").0.record_count)
            .collect();
        assert_eq!(counts, vec![1, 2]);
    }

    #[test]
    fn sequence_wraps_like_kafka() {
        let mut b = batch(&[b"x", b"y"], 1, i32::MAX);
        let crc = compute_crc(&b);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        let h = BatchHeader::parse(&b).expect("parses");
        assert_eq!(h.last_sequence(), 0);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = validate_producer_batch(&data);
            let _ = verify_stored_batch(&data);
            for r in iter_batches(&data) { let _ = r; }
        }
    }
}
