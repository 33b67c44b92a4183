//! The consume load: one connection reading one partition from an offset with one Fetch in
//! flight at a time, as a Kafka consumer does. Records are counted from each batch header, not
//! parsed, so the figure is what the broker serves, not what a client can decode.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_protocol::batch::{BatchHeader, HEADER_LEN};
use sluice_protocol::kafka_protocol::messages::fetch_request::{
    FetchPartition, FetchRequest, FetchTopic,
};
use sluice_protocol::kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind, TopicName};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use crate::histogram::Histogram;
use crate::wire::{Conn, Error};

/// What to read.
#[derive(Debug, Clone)]
pub struct FetchOpts {
    /// Broker address.
    pub bootstrap: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset to read.
    pub offset: i64,
    /// Stop after this many records...
    pub messages: u64,
    /// ...or this long, or when the high watermark is reached.
    pub duration: Duration,
    /// Fetch `max_bytes`.
    pub max_bytes: i32,
    /// Fetch `partition_max_bytes` (librdkafka's default is 1 MiB).
    pub partition_max_bytes: i32,
}

/// What was read.
#[derive(Debug, Default)]
pub struct Report {
    /// Records (data batches only).
    pub messages: u64,
    /// Batch bytes received.
    pub batch_bytes: u64,
    /// First request to last response.
    pub elapsed: Duration,
    /// Fetch requests sent.
    pub requests: u64,
    /// Fetch round trips, µs.
    pub latency: Histogram,
    /// Next offset to read when the run stopped.
    pub next_offset: i64,
}

/// Counts whole batches in `records`; returns (records, bytes, next offset).
pub fn count_batches(records: &[u8], mut next: i64) -> Result<(u64, u64, i64), Error> {
    let mut rest = records;
    let (mut msgs, mut bytes) = (0u64, 0u64);
    while rest.len() >= HEADER_LEN {
        let h = BatchHeader::parse(rest).map_err(|e| format!("bad batch at offset {next}: {e}"))?;
        let size = h.size();
        if size > rest.len() {
            break; // a partial batch at the end of a fetch is normal
        }
        if !h.is_control() && h.last_offset() >= next {
            // A batch may start before the fetch offset: count only the records from `next` on.
            let skipped = (next - h.base_offset).max(0) as u64;
            msgs += (h.record_count.max(0) as u64).saturating_sub(skipped);
        }
        bytes += size as u64;
        next = next.max(h.last_offset() + 1);
        rest = &rest[size..];
    }
    Ok((msgs, bytes, next))
}

/// Runs the fetch loop.
pub async fn run(opts: FetchOpts) -> Result<Report, Error> {
    let mut conn = Conn::connect(&opts.bootstrap).await?;
    let versions = conn.negotiate().await?;
    let mut report = Report {
        next_offset: opts.offset,
        ..Report::default()
    };
    let start = Instant::now();
    let deadline = start + opts.duration;
    let topic = TopicName(StrBytes::from_string(opts.topic.clone()));
    while report.messages < opts.messages && Instant::now() < deadline {
        let mut p = FetchPartition::default();
        p.partition = opts.partition;
        p.fetch_offset = report.next_offset;
        p.partition_max_bytes = opts.partition_max_bytes;
        let mut t = FetchTopic::default();
        t.topic = topic.clone();
        t.partitions.push(p);
        let mut req = FetchRequest::default();
        req.max_wait_ms = 500;
        req.min_bytes = 1;
        req.max_bytes = opts.max_bytes;
        req.topics.push(t);
        let sent = Instant::now();
        let ResponseKind::Fetch(r) = conn
            .call(ApiKey::Fetch, versions.fetch, RequestKind::Fetch(req))
            .await?
        else {
            return Err("Fetch: unexpected response kind".into());
        };
        report.latency.record(sent.elapsed().as_micros() as u64);
        report.requests += 1;
        if r.error_code != 0 {
            return Err(format!("Fetch error {}", r.error_code));
        }
        let Some(part) = r.responses.iter().flat_map(|t| t.partitions.iter()).next() else {
            return Err("Fetch response without the partition".into());
        };
        if part.error_code != 0 {
            return Err(format!("Fetch partition error {}", part.error_code));
        }
        let records: Bytes = part.records.clone().unwrap_or_default();
        let (msgs, bytes, next) = count_batches(&records, report.next_offset)?;
        report.messages += msgs;
        report.batch_bytes += bytes;
        report.next_offset = next;
        report.elapsed = start.elapsed();
        if next >= part.high_watermark && msgs == 0 {
            break; // caught up with everything there is
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::produce::make_batch;
    use sluice_protocol::batch::patch_offset_and_epoch;

    #[test]
    fn counts_whole_batches_and_stops_at_a_partial_one() {
        let mut a = make_batch(10, 5).to_vec();
        patch_offset_and_epoch(&mut a[..16], 100, 0);
        let mut b = make_batch(3, 5).to_vec();
        patch_offset_and_epoch(&mut b[..16], 110, 0);
        let mut all = a.clone();
        all.extend_from_slice(&b);
        all.extend_from_slice(&a[..40]);
        let (msgs, bytes, next) = count_batches(&all, 100).expect("parses");
        assert_eq!((msgs, bytes, next), (13, (a.len() + b.len()) as u64, 113));
    }

    #[test]
    fn records_before_the_fetch_offset_are_not_counted() {
        let mut a = make_batch(10, 5).to_vec();
        patch_offset_and_epoch(&mut a[..16], 100, 0);
        let (msgs, _, next) = count_batches(&a, 104).expect("parses");
        assert_eq!((msgs, next), (6, 110));
    }
}
