//! `consume` of batches other clients compressed. The zstd batch is one kcat (librdkafka 2.0)
//! produced, kept as a fixture; kcat will not compress gzip, snappy or lz4 for a broker that,
//! like Kafka 4.0, no longer advertises Produce v0-2, so those batches are built here with the
//! same pure-Rust crates the Java and librdkafka formats are read with (gzip, raw and
//! xerial-framed snappy, LZ4 frame). Every batch goes in with a raw Produce, and the stored
//! batches are checked to carry the codec before sluicectl reads them back.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::{Bytes, BytesMut};
use common::TestNode;
use sluice_protocol::batch::{HEADER_LEN, LOG_OVERHEAD, compute_crc, iter_batches};
use sluice_protocol::client::{decode_response, encode_request};
use sluice_protocol::kafka_protocol::messages::fetch_request::{
    FetchPartition, FetchRequest, FetchTopic,
};
use sluice_protocol::kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use sluice_protocol::kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind, TopicName};
use sluice_protocol::kafka_protocol::protocol::StrBytes;
use sluice_protocol::records::{NewRecord, ProducerInfo, build_batch};

/// The compression codec of every batch stored in partition 0 of `topic`, by a raw Fetch v12.
fn stored_codecs(bootstrap: &str, topic: &str) -> Vec<u8> {
    let r = call(
        bootstrap,
        ApiKey::Fetch,
        12,
        RequestKind::Fetch(fetch_request(topic)),
    );
    let ResponseKind::Fetch(r) = r else {
        panic!("not a fetch response")
    };
    let records = r.responses[0].partitions[0]
        .records
        .clone()
        .expect("records");
    iter_batches(&records)
        .map(|b| b.expect("a batch").0.compression())
        .collect()
}

fn fetch_request(topic: &str) -> FetchRequest {
    let mut p = FetchPartition::default();
    p.partition = 0;
    p.fetch_offset = 0;
    p.partition_max_bytes = 1 << 20;
    let mut t = FetchTopic::default();
    t.topic = TopicName(StrBytes::from_string(topic.to_string()));
    t.partitions = vec![p];
    let mut req = FetchRequest::default();
    req.max_bytes = 1 << 20;
    req.topics = vec![t];
    req
}

/// One request on a fresh connection, its response decoded.
fn call(bootstrap: &str, key: ApiKey, version: i16, body: RequestKind) -> ResponseKind {
    let mut out = BytesMut::new();
    encode_request(&mut out, key, version, 1, "compression-test", &body).expect("encodes");
    let mut s = TcpStream::connect(bootstrap).expect("connect");
    s.write_all(&out).expect("send");
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("length");
    let mut frame = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut frame).expect("frame");
    decode_response(Bytes::from(frame), key, version)
        .expect("decodes")
        .1
}

/// `count` keyed records with repetitive values, as an uncompressed batch.
fn plain_batch(tag: &str, count: usize) -> Vec<u8> {
    let keys: Vec<String> = (0..count).map(|i| format!("{tag}-key-{i}")).collect();
    let values: Vec<String> = (0..count)
        .map(|i| format!("{tag} value {i} {}", "payload ".repeat(30)))
        .collect();
    let records: Vec<NewRecord<'_>> = (0..count)
        .map(|i| NewRecord {
            key: Some(keys[i].as_bytes()),
            value: Some(values[i].as_bytes()),
            headers: &[],
            timestamp: 1_700_000_000_000 + i as i64,
        })
        .collect();
    build_batch(&records, ProducerInfo::NONE)
}

/// The batch with its records area compressed by `compress` and marked with `codec`.
fn compressed(plain: &[u8], codec: i16, compress: fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let mut b = plain[..HEADER_LEN].to_vec();
    b.extend_from_slice(&compress(&plain[HEADER_LEN..]));
    let len = (b.len() - LOG_OVERHEAD) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    b[21..23].copy_from_slice(&codec.to_be_bytes());
    let crc = compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

fn gzip(d: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(d).expect("gzip");
    e.finish().expect("gzip")
}

/// librdkafka's snappy: one raw block.
fn snappy_raw(d: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(d).expect("snappy")
}

/// The Java client's snappy: xerial framing, blocks of at most 32 KiB (small ones here, to
/// have several).
fn snappy_xerial(d: &[u8]) -> Vec<u8> {
    let mut out = b"\x82SNAPPY\x00".to_vec();
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    for chunk in d.chunks(1000) {
        let block = snappy_raw(chunk);
        out.extend_from_slice(&(block.len() as i32).to_be_bytes());
        out.extend_from_slice(&block);
    }
    out
}

fn lz4(d: &[u8]) -> Vec<u8> {
    let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
    e.write_all(d).expect("lz4");
    e.finish().expect("lz4")
}

fn produce_raw(bootstrap: &str, topic: &str, batch: Vec<u8>) {
    let mut p = PartitionProduceData::default();
    p.index = 0;
    p.records = Some(Bytes::from(batch));
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.partition_data = vec![p];
    let mut req = ProduceRequest::default();
    req.acks = -1;
    req.timeout_ms = 5000;
    req.topic_data = vec![t];
    let ResponseKind::Produce(r) = call(bootstrap, ApiKey::Produce, 9, RequestKind::Produce(req))
    else {
        panic!("not a produce response")
    };
    assert_eq!(
        r.responses[0].partition_responses[0].error_code, 0,
        "produce accepted"
    );
}

/// A zstd batch exactly as kcat (librdkafka 2.0.2) produced it: 50 records
/// "zstd record {i} " + "payload " x 40, piped into `kcat -P -z zstd -X linger.ms=50` and
/// copied from the segment file it landed in. A fixture rather than a live kcat run, so that
/// `cargo test` needs nothing installed; proto-tests/test_kcat.py runs kcat itself.
const KCAT_ZSTD_BATCH: &[u8] = include_bytes!("fixtures/kcat-2.0.2-zstd.batch");

#[test]
fn zstd_batches_from_kcat_are_read_back() {
    let n = TestNode::start();
    n.ctl(&["topic", "create", "zstd", "-p", "1"]).ok();
    let lines: Vec<String> = (0..50)
        .map(|i| format!("zstd record {i} {}", "payload ".repeat(40)))
        .collect();
    produce_raw(&n.bootstrap, "zstd", KCAT_ZSTD_BATCH.to_vec());
    produce_raw(&n.bootstrap, "zstd", KCAT_ZSTD_BATCH.to_vec());

    let codecs = stored_codecs(&n.bootstrap, "zstd");
    assert_eq!(codecs, vec![4, 4], "stored as produced");
    let out = n.ctl(&["consume", "zstd", "--from-beginning"]).ok().stdout;
    let twice: Vec<&str> = lines.iter().chain(&lines).map(String::as_str).collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), twice);
    let first = n
        .ctl(&["--json", "consume", "zstd", "--from-beginning", "-n", "53"])
        .ok()
        .json_lines();
    let offsets: Vec<i64> = first
        .iter()
        .map(|l| l["offset"].as_i64().expect("offset"))
        .collect();
    assert_eq!(
        offsets,
        (0..53).collect::<Vec<i64>>(),
        "offsets run on into the second batch"
    );
    assert_eq!(first[52]["value"], lines[2].as_str());
}

#[test]
fn gzip_snappy_and_lz4_batches_are_read_back_in_order() {
    let n = TestNode::start();
    n.ctl(&["topic", "create", "mixed", "-p", "1"]).ok();
    type Compress = fn(&[u8]) -> Vec<u8>;
    let codecs: [(&str, i16, Compress); 4] = [
        ("gzip", 1, gzip),
        ("snappy-raw", 2, snappy_raw),
        ("snappy-xerial", 2, snappy_xerial),
        ("lz4", 3, lz4),
    ];
    let mut want = Vec::new();
    for (tag, codec, f) in codecs {
        let plain = plain_batch(tag, 20);
        let batch = compressed(&plain, codec, f);
        assert!(batch.len() < plain.len() / 2, "{tag} compresses");
        produce_raw(&n.bootstrap, "mixed", batch);
        want.extend(
            (0..20).map(|i| format!("{tag}-key-{i}={tag} value {i} {}", "payload ".repeat(30))),
        );
    }
    assert_eq!(stored_codecs(&n.bootstrap, "mixed"), vec![1, 2, 2, 3]);
    let out = n
        .ctl(&[
            "consume",
            "mixed",
            "--from-beginning",
            "--format",
            "%k=%v\\n",
        ])
        .ok()
        .stdout;
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
    // Offsets run on across batches of different codecs; -n cuts inside a compressed batch.
    let lines = n
        .ctl(&["--json", "consume", "mixed", "--from-beginning", "-n", "25"])
        .ok()
        .json_lines();
    assert_eq!(lines.len(), 25);
    assert_eq!(lines[24]["offset"], 24);
    assert_eq!(lines[24]["key"], "snappy-raw-key-4");
    assert_eq!(lines[24]["timestamp"], 1_700_000_000_004i64);
}
