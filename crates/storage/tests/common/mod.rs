//! Shared helpers: hand-built record batches, so tests never depend on an encoder we also own.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use sluice_protocol::batch::{HEADER_LEN, LOG_OVERHEAD, compute_crc};
use sluice_storage::{LogConfig, PartitionLog};

pub fn push_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// What a test batch looks like.
#[derive(Clone, Debug)]
pub struct Spec {
    pub base_ts: i64,
    /// (timestamp delta, value) per record.
    pub records: Vec<(i64, Vec<u8>)>,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    /// Compression codec bits; the body is then opaque bytes (never decompressed).
    pub compression: i16,
}

impl Spec {
    pub fn values(values: &[&[u8]], ts: i64) -> Spec {
        Spec {
            base_ts: ts,
            records: values.iter().map(|v| (0, v.to_vec())).collect(),
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            compression: 0,
        }
    }
    pub fn idempotent(mut self, pid: i64, epoch: i16, seq: i32) -> Spec {
        self.producer_id = pid;
        self.producer_epoch = epoch;
        self.base_sequence = seq;
        self
    }
    pub fn build(&self) -> Bytes {
        Bytes::from(self.build_vec())
    }
    pub fn build_vec(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, (delta, value)) in self.records.iter().enumerate() {
            let mut rec = Vec::new();
            rec.push(0u8);
            push_varint(&mut rec, *delta);
            push_varint(&mut rec, i as i64);
            push_varint(&mut rec, -1);
            push_varint(&mut rec, value.len() as i64);
            rec.extend_from_slice(value);
            push_varint(&mut rec, 0);
            push_varint(&mut body, rec.len() as i64);
            body.extend_from_slice(&rec);
        }
        let max_ts = self.base_ts + self.records.iter().map(|r| r.0).max().unwrap_or(0);
        frame_batch(
            &body,
            self.records.len() as i32,
            BatchFields {
                compression: self.compression,
                base_ts: self.base_ts,
                max_ts,
                producer_id: self.producer_id,
                producer_epoch: self.producer_epoch,
                base_sequence: self.base_sequence,
            },
        )
    }
}

/// The header fields a test batch sets (offsets and leader epoch are left for the log).
pub struct BatchFields {
    pub compression: i16,
    pub base_ts: i64,
    pub max_ts: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

/// A magic-2 batch around `body` (the encoded records, `n` of them), its CRC32C computed.
pub fn frame_batch(body: &[u8], n: i32, f: BatchFields) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_LEN];
    b.extend_from_slice(body);
    let len = (b.len() - LOG_OVERHEAD) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    b[12..16].copy_from_slice(&(-1i32).to_be_bytes());
    b[16] = 2;
    b[21..23].copy_from_slice(&f.compression.to_be_bytes());
    b[23..27].copy_from_slice(&(n - 1).to_be_bytes());
    b[27..35].copy_from_slice(&f.base_ts.to_be_bytes());
    b[35..43].copy_from_slice(&f.max_ts.to_be_bytes());
    b[43..51].copy_from_slice(&f.producer_id.to_be_bytes());
    b[51..53].copy_from_slice(&f.producer_epoch.to_be_bytes());
    b[53..57].copy_from_slice(&f.base_sequence.to_be_bytes());
    b[57..61].copy_from_slice(&n.to_be_bytes());
    let crc = compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// A batch of `n` records of `size` bytes each, values tagged with `tag`.
pub fn batch_of(n: usize, size: usize, tag: u64, ts: i64) -> Bytes {
    let records: Vec<(i64, Vec<u8>)> = (0..n)
        .map(|i| {
            let mut v = format!("{tag}:{i}:").into_bytes();
            v.resize(size.max(v.len()), b'x');
            (0, v)
        })
        .collect();
    Spec {
        base_ts: ts,
        records,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        compression: 0,
    }
    .build()
}

pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

/// Every stored batch from `from` on, as (base offset, last offset, value of first record).
pub fn all_batches(log: &PartitionLog, from: i64) -> Vec<(i64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let r = log.read(offset, 1 << 20, i64::MAX, true).expect("read");
        if r.records.is_empty() {
            break;
        }
        for item in sluice_protocol::batch::iter_batches(&r.records) {
            let (h, bytes) = item.expect("whole batch");
            out.push((h.base_offset, h.last_offset(), first_value(bytes)));
        }
        offset = r.next_offset;
    }
    out
}

/// Value of the first record of an uncompressed batch.
pub fn first_value(batch: &[u8]) -> Vec<u8> {
    let mut rest = &batch[HEADER_LEN..];
    let (_len, n) = read_varint(rest);
    rest = &rest[n..];
    rest = &rest[1..]; // attributes
    for _ in 0..3 {
        // timestamp delta, offset delta, key length (-1)
        let (_, n) = read_varint(rest);
        rest = &rest[n..];
    }
    let (vlen, n) = read_varint(rest);
    rest[n..n + vlen as usize].to_vec()
}

fn read_varint(buf: &[u8]) -> (i64, usize) {
    let mut raw = 0u64;
    for (i, &b) in buf.iter().enumerate() {
        raw |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return (((raw >> 1) as i64) ^ -((raw & 1) as i64), i + 1);
        }
    }
    panic!("bad varint")
}

/// The files in `dir` with extension `ext` (`log`, `index`, ...), in name (= base offset) order.
pub fn files(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}
