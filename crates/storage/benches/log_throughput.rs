//! Append and read throughput of one partition log.
//!
//! `cargo bench -p sluice-storage --bench log_throughput`. Batches are ~16 KiB of 100 B records,
//! ~16 KiB of 1 KB records, or a single 100 B record; with `flush.messages` huge (page-cache
//! speed) and `flush.messages=1` (every append fsynced by group commit before it counts: one
//! producer thread waiting for each append, and 8 producer threads sharing fsyncs).
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_protocol::batch::{HEADER_LEN, LOG_OVERHEAD, compute_crc};
use sluice_storage::{LogConfig, PartitionLog};

fn push_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// An uncompressed batch of `count` records with `size`-byte values.
fn batch(count: usize, size: usize) -> Bytes {
    let mut body = Vec::new();
    let value = vec![b'v'; size];
    for i in 0..count {
        let mut rec = vec![0u8];
        push_varint(&mut rec, 0);
        push_varint(&mut rec, i as i64);
        push_varint(&mut rec, -1);
        push_varint(&mut rec, size as i64);
        rec.extend_from_slice(&value);
        push_varint(&mut rec, 0);
        push_varint(&mut body, rec.len() as i64);
        body.extend_from_slice(&rec);
    }
    let mut b = vec![0u8; HEADER_LEN];
    b.extend_from_slice(&body);
    let len = (b.len() - LOG_OVERHEAD) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    b[16] = 2;
    b[23..27].copy_from_slice(&(count as i32 - 1).to_be_bytes());
    b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
    b[51..53].copy_from_slice(&(-1i16).to_be_bytes());
    b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
    b[57..61].copy_from_slice(&(count as i32).to_be_bytes());
    let crc = compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(b)
}

fn shapes() -> Vec<(&'static str, Bytes, u64)> {
    // ~16 KiB batches: 100 B records need ~108 B each on the wire, 1 KB records ~1010 B.
    vec![
        ("16KiB_of_100B", batch(150, 100), 150),
        ("16KiB_of_1KB", batch(16, 1000), 16),
        ("1x100B", batch(1, 100), 1),
    ]
}

fn open(dir: &std::path::Path, flush_messages: u64) -> PartitionLog {
    let config = LogConfig {
        flush_messages,
        segment_bytes: 256 << 20,
        ..LogConfig::default()
    };
    PartitionLog::open(dir, "bench", 0, config).expect("open")
}

fn append_page_cache(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_page_cache");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for (name, b, _) in shapes() {
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |bench| {
            bench.iter_custom(|iters| {
                let dir = tempfile::tempdir().expect("tempdir");
                let log = open(dir.path(), u64::MAX);
                let start = Instant::now();
                for _ in 0..iters {
                    log.append(b.clone(), 0, 0).expect("append");
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn append_fsync_one_producer(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_fsync_1_producer");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for (name, b, _) in shapes() {
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |bench| {
            bench.iter_custom(|iters| {
                let dir = tempfile::tempdir().expect("tempdir");
                let log = open(dir.path(), 1);
                let start = Instant::now();
                for _ in 0..iters {
                    let o = log.append(b.clone(), 0, 0).expect("append");
                    log.wait_durable_blocking(o.last_offset + 1)
                        .expect("durable");
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn append_fsync_group_commit(c: &mut Criterion) {
    const PRODUCERS: u64 = 8;
    let mut g = c.benchmark_group("append_fsync_8_producers");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for (name, b, _) in shapes() {
        g.throughput(Throughput::Bytes(b.len() as u64 * PRODUCERS));
        g.bench_function(BenchmarkId::from_parameter(name), |bench| {
            bench.iter_custom(|iters| {
                let dir = tempfile::tempdir().expect("tempdir");
                let log = Arc::new(open(dir.path(), 1));
                let start = Instant::now();
                let threads: Vec<_> = (0..PRODUCERS)
                    .map(|_| {
                        let log = Arc::clone(&log);
                        let b = b.clone();
                        std::thread::spawn(move || {
                            for _ in 0..iters {
                                let o = log.append(b.clone(), 0, 0).expect("append");
                                log.wait_durable_blocking(o.last_offset + 1)
                                    .expect("durable");
                            }
                        })
                    })
                    .collect();
                for t in threads {
                    t.join().expect("producer");
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn read_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("read_1MiB_fetches");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for (name, b, _) in shapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), u64::MAX);
        let mut total = 0u64;
        while total < 64 << 20 {
            log.append(b.clone(), 0, 0).expect("append");
            total += b.len() as u64;
        }
        let end = log.log_end_offset();
        g.throughput(Throughput::Bytes(total));
        g.bench_function(BenchmarkId::from_parameter(name), |bench| {
            bench.iter(|| {
                let mut offset = 0;
                let mut bytes = 0usize;
                while offset < end {
                    let r = log.read(offset, 1 << 20, i64::MAX, true).expect("read");
                    bytes += r.records.len();
                    offset = r.next_offset;
                }
                bytes
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    append_page_cache,
    append_fsync_one_producer,
    append_fsync_group_commit,
    read_throughput
);
criterion_main!(benches);
