//! Records out of fetched batches, whatever codec the producer used.
//!
//! Batches are checked (CRC32C) and, when compressed, their records area is inflated with a
//! pure-Rust codec (gzip, snappy raw or xerial-framed, LZ4 frame, zstd) into an uncompressed
//! copy of the batch, which `sluice_protocol::records::read_records` then walks. Inflated size is
//! bounded so a hostile batch cannot exhaust memory.

use std::io::Read;

use sluice_protocol::batch::{
    BatchHeader, HEADER_LEN, LOG_OVERHEAD, iter_batches, verify_stored_batch,
};
use sluice_protocol::records::read_records;

use crate::error::{ClientError, Result};

/// Largest records area one batch may inflate to (Kafka's own limits are far below).
const MAX_INFLATED: u64 = 256 << 20;

/// An owned record, ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) offset: i64,
    pub(crate) timestamp: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// What one partition's fetched bytes held.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    /// Data records at or after the fetch offset, in offset order.
    pub(crate) records: Vec<Record>,
    /// The offset after the last whole batch (control batches included), if any batch was whole.
    pub(crate) next_offset: Option<i64>,
}

/// Decodes the record batches of a fetch response partition, dropping records before `from`
/// (a batch may start before the offset asked for) and control records.
pub(crate) fn decode_fetched(data: &[u8], from: i64) -> Result<Decoded> {
    let mut out = Decoded::default();
    for item in iter_batches(data) {
        let (header, bytes) = item.map_err(|e| {
            ClientError::Protocol(format!("fetched data is not a record batch: {e}"))
        })?;
        verify_stored_batch(bytes).map_err(|e| ClientError::Protocol(format!("fetched {e}")))?;
        out.next_offset = Some(header.last_offset() + 1);
        if header.is_control() || header.last_offset() < from {
            continue;
        }
        let inflated;
        let plain = if header.compression() == 0 {
            bytes
        } else {
            inflated = inflate_batch(&header, bytes)?;
            &inflated[..]
        };
        let (_, records) = read_records(plain).map_err(|e| {
            ClientError::Protocol(format!(
                "batch at offset {} of the fetched data: {e}",
                header.base_offset
            ))
        })?;
        out.records
            .extend(records.into_iter().filter(|r| r.offset >= from).map(|r| {
                Record {
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: r.key.map(<[u8]>::to_vec),
                    value: r.value.map(<[u8]>::to_vec),
                    headers: r
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                        .collect(),
                }
            }));
    }
    Ok(out)
}

/// The batch with its records area inflated and the compression bits cleared. The CRC is left
/// stale: the copy is only read, never sent or stored.
fn inflate_batch(header: &BatchHeader, batch: &[u8]) -> Result<Vec<u8>> {
    let body = decompress(header.compression(), &batch[HEADER_LEN..]).map_err(|why| {
        ClientError::Protocol(format!(
            "cannot decompress the {} batch at offset {}: {why}",
            codec_name(header.compression()),
            header.base_offset
        ))
    })?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&batch[..HEADER_LEN]);
    out.extend_from_slice(&body);
    let batch_length = i32::try_from(out.len() - LOG_OVERHEAD)
        .map_err(|_| ClientError::Protocol("an inflated batch is larger than 2 GiB".into()))?;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attributes = i16::from_be_bytes([out[21], out[22]]) & !0x07;
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    Ok(out)
}

/// Kafka's name for a compression codec id.
pub(crate) fn codec_name(codec: u8) -> &'static str {
    match codec {
        0 => "uncompressed",
        1 => "gzip",
        2 => "snappy",
        3 => "lz4",
        4 => "zstd",
        _ => "unknown-codec",
    }
}

/// Inflates a records area compressed with Kafka codec `codec`.
pub(crate) fn decompress(codec: u8, data: &[u8]) -> Result<Vec<u8>, String> {
    match codec {
        1 => read_bounded(flate2::read::MultiGzDecoder::new(data)),
        2 => snappy(data),
        3 => read_bounded(lz4_flex::frame::FrameDecoder::new(data)),
        4 => {
            let decoder =
                ruzstd::decoding::StreamingDecoder::new(data).map_err(|e| e.to_string())?;
            read_bounded(decoder)
        }
        other => Err(format!("unknown compression codec {other}")),
    }
}

fn read_bounded(r: impl Read) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    r.take(MAX_INFLATED + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() as u64 > MAX_INFLATED {
        return Err(format!("inflates to more than {MAX_INFLATED} bytes"));
    }
    Ok(out)
}

/// xerial-snappy's stream header, written by the Java client's `SnappyOutputStream`.
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";

/// Kafka's snappy: the Java client frames it the xerial way (magic, version, then length-prefixed
/// raw blocks); librdkafka writes one raw snappy block. Both must be read.
fn snappy(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut decoder = snap::raw::Decoder::new();
    let mut raw = |block: &[u8], out: &mut Vec<u8>| -> Result<(), String> {
        let len = snap::raw::decompress_len(block).map_err(|e| e.to_string())?;
        if (out.len() + len) as u64 > MAX_INFLATED {
            return Err(format!("inflates to more than {MAX_INFLATED} bytes"));
        }
        out.extend_from_slice(&decoder.decompress_vec(block).map_err(|e| e.to_string())?);
        Ok(())
    };
    let mut out = Vec::new();
    if !data.starts_with(XERIAL_MAGIC) {
        raw(data, &mut out)?;
        return Ok(out);
    }
    // 8 bytes of magic, then version and compatible-version (i32 each).
    let mut rest = data.get(16..).ok_or("truncated xerial snappy header")?;
    while !rest.is_empty() {
        let len_bytes: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or("truncated xerial snappy block length")?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let block = rest
            .get(4..4 + len)
            .ok_or("xerial snappy block runs past the batch")?;
        raw(block, &mut out)?;
        rest = &rest[4 + len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use sluice_protocol::batch::compute_crc;
    use sluice_protocol::records::{NewRecord, ProducerInfo, build_batch};

    use super::*;

    fn sample_batch(base_offset: i64) -> Vec<u8> {
        let recs: Vec<NewRecord<'_>> = (0..3)
            .map(|i| NewRecord {
                key: Some(if i == 0 { b"k0" } else { b"kx" }),
                value: Some(b"value-value-value-value"),
                headers: &[],
                timestamp: 1_000 + i,
            })
            .collect();
        let mut b = build_batch(&recs, ProducerInfo::NONE);
        b[..8].copy_from_slice(&base_offset.to_be_bytes());
        b
    }

    /// Re-encodes `plain` (an uncompressed batch) with `codec` applied to its records area.
    fn compress_batch(plain: &[u8], codec: u8, compress: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
        let mut out = plain[..HEADER_LEN].to_vec();
        out.extend_from_slice(&compress(&plain[HEADER_LEN..]));
        let len = (out.len() - LOG_OVERHEAD) as i32;
        out[8..12].copy_from_slice(&len.to_be_bytes());
        out[21..23].copy_from_slice(&(codec as i16).to_be_bytes());
        let crc = compute_crc(&out);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn gzip(d: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(d).expect("gzip");
        e.finish().expect("gzip")
    }
    fn snappy_raw(d: &[u8]) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(d).expect("snappy")
    }
    fn snappy_xerial(d: &[u8]) -> Vec<u8> {
        let mut out = XERIAL_MAGIC.to_vec();
        out.extend_from_slice(&1i32.to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
        for chunk in d.chunks(10) {
            let block = snappy_raw(chunk);
            out.extend_from_slice(&(block.len() as u32).to_be_bytes());
            out.extend_from_slice(&block);
        }
        out
    }
    fn lz4(d: &[u8]) -> Vec<u8> {
        let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
        e.write_all(d).expect("lz4");
        e.finish().expect("lz4")
    }
    fn zstd(d: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(d, ruzstd::encoding::CompressionLevel::Fastest)
    }

    #[test]
    fn every_codec_reads_back_the_same_records() {
        let plain = sample_batch(10);
        let expected = decode_fetched(&plain, 0).expect("plain").records;
        assert_eq!(expected.len(), 3);
        assert_eq!(expected[0].key.as_deref(), Some(&b"k0"[..]));
        type Compress = fn(&[u8]) -> Vec<u8>;
        let codecs: [(u8, Compress); 5] = [
            (1, gzip),
            (2, snappy_raw),
            (2, snappy_xerial),
            (3, lz4),
            (4, zstd),
        ];
        for (codec, f) in codecs {
            let batch = compress_batch(&plain, codec, f);
            let got = decode_fetched(&batch, 0).expect("decodes");
            assert_eq!(got.records, expected, "codec {codec}");
            assert_eq!(got.next_offset, Some(13));
        }
    }

    #[test]
    fn records_before_the_fetch_offset_and_partial_batches_are_dropped() {
        let mut data = sample_batch(10);
        data.extend_from_slice(&sample_batch(13)[..40]);
        let got = decode_fetched(&data, 11).expect("decodes");
        assert_eq!(
            got.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![11, 12]
        );
        assert_eq!(got.next_offset, Some(13));
    }

    #[test]
    fn a_corrupt_batch_is_an_error() {
        let mut b = sample_batch(0);
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(decode_fetched(&b, 0).is_err());
        let bad = compress_batch(&sample_batch(0), 4, |d| d.to_vec());
        assert!(decode_fetched(&bad, 0).is_err());
    }
}
