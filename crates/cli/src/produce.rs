//! `produce`: stdin lines to records, in batches of up to 1000 lines or about 1 MiB, one
//! Produce request (acks=all) per partition leader per batch.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sluice_protocol::kafka_protocol::messages::TopicName;
use sluice_protocol::kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use sluice_protocol::kafka_protocol::protocol::StrBytes;
use sluice_protocol::records::{NewRecord, ProducerInfo, build_batch};

use crate::client::{Client, TopicInfo, is_leader_change};
use crate::error::{ClientError, Result};
use crate::output::{Json, Out, Progress};
use crate::partitioner::partition_for_key;
use crate::wire::check;

/// Most lines in one batch.
const MAX_LINES: usize = 1000;
/// Most payload bytes in one batch: under Kafka's default `max.message.bytes` (1 MiB + 12)
/// once record and batch overhead are added.
const MAX_BATCH_BYTES: usize = 1_000_000;
/// Estimated per-record overhead in a batch (length, attributes, deltas, lengths, headers).
const RECORD_OVERHEAD: usize = 16;
/// Produce attempts of a batch whose leader moved.
const ATTEMPTS: usize = 3;

/// One stdin line split into key and value.
struct Line {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
}

/// Options of `produce`.
pub(crate) struct ProduceOptions<'a> {
    pub(crate) topic: &'a str,
    pub(crate) key_separator: Option<&'a [u8]>,
    pub(crate) partition: Option<i32>,
}

/// Produces every line of `input`.
pub(crate) fn run(
    client: &mut Client,
    out: &mut Out,
    opts: &ProduceOptions<'_>,
    input: impl BufRead,
) -> Result<()> {
    let mut topic = client.topic(opts.topic)?;
    if let Some(p) = opts.partition {
        topic.leader_of(p)?;
    }
    let mut counts: BTreeMap<i32, u64> = BTreeMap::new();
    let mut total = 0u64;
    let mut progress = Progress::new("produced");
    let mut batch_no = 0usize;
    let mut lines = LineBatches::new(input, opts.key_separator);
    while let Some(batch) = lines.next_batch()? {
        let mut by_partition: BTreeMap<i32, Vec<&Line>> = BTreeMap::new();
        // Kafka's partitioners index the partition list by position, not by partition id.
        let indexes: Vec<i32> = topic.partitions.iter().map(|p| p.index).collect();
        let pick = |i: usize| indexes.get(i % indexes.len().max(1)).copied().unwrap_or(0);
        for line in &batch {
            let p = match (opts.partition, &line.key) {
                (Some(p), _) => p,
                (None, Some(k)) => pick(partition_for_key(k, indexes.len()) as usize),
                // Unkeyed: the whole batch goes to the next partition in turn.
                (None, None) => pick(batch_no),
            };
            by_partition.entry(p).or_default().push(line);
        }
        batch_no += 1;
        send(client, &mut topic, &by_partition)?;
        for (p, ls) in &by_partition {
            *counts.entry(*p).or_default() += ls.len() as u64;
            total += ls.len() as u64;
        }
        progress.update(total);
    }
    progress.finish();
    eprintln!(
        "produced {total} record{} to {} partition{} of topic {}",
        if total == 1 { "" } else { "s" },
        counts.len(),
        if counts.len() == 1 { "" } else { "s" },
        topic.name
    );
    if out.json {
        return out.json(&Json::obj([
            ("topic", Json::from(&topic.name)),
            ("records", Json::from(total)),
            (
                "partitions",
                Json::Arr(
                    counts
                        .iter()
                        .map(|(p, c)| {
                            Json::obj([("partition", Json::from(*p)), ("records", Json::from(*c))])
                        })
                        .collect(),
                ),
            ),
        ]));
    }
    Ok(())
}

/// Sends one batch per partition, grouped by leader; retries partitions whose leader moved.
fn send(
    client: &mut Client,
    topic: &mut TopicInfo,
    by_partition: &BTreeMap<i32, Vec<&Line>>,
) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut batches: BTreeMap<i32, Bytes> = by_partition
        .iter()
        .map(|(p, lines)| {
            let records: Vec<NewRecord<'_>> = lines
                .iter()
                .map(|l| NewRecord {
                    key: l.key.as_deref(),
                    value: Some(&l.value),
                    headers: &[],
                    timestamp: now,
                })
                .collect();
            (*p, Bytes::from(build_batch(&records, ProducerInfo::NONE)))
        })
        .collect();
    for attempt in 1..=ATTEMPTS {
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for p in batches.keys() {
            by_leader.entry(topic.leader_of(*p)?).or_default().push(*p);
        }
        let mut moved = BTreeMap::new();
        for (leader, partitions) in by_leader {
            let timeout_ms = client.timeout_ms();
            let topic_ref = &*topic;
            let batches_ref = &batches;
            let (r, v) = client.broker(leader)?.call(
                |v| {
                    let mut t = TopicProduceData::default();
                    // Produce v13 names topics by id (KIP-516), earlier versions by name.
                    if v >= 13 {
                        t.topic_id = topic_ref.id;
                    } else {
                        t.name = TopicName(StrBytes::from_string(topic_ref.name.clone()));
                    }
                    t.partition_data = partitions
                        .iter()
                        .map(|p| {
                            let mut d = PartitionProduceData::default();
                            d.index = *p;
                            d.records = batches_ref.get(p).cloned();
                            d
                        })
                        .collect();
                    let mut req = ProduceRequest::default();
                    req.acks = -1;
                    req.timeout_ms = timeout_ms;
                    req.topic_data = vec![t];
                    req
                },
                Duration::ZERO,
            )?;
            for t in r.responses {
                if (v >= 13 && t.topic_id != topic.id)
                    || (v < 13 && t.name.0.as_str() != topic.name)
                {
                    continue;
                }
                for p in t.partition_responses {
                    if is_leader_change(p.error_code) && attempt < ATTEMPTS {
                        if let Some(b) = batches.get(&p.index) {
                            moved.insert(p.index, b.clone());
                        }
                        continue;
                    }
                    let detail = p
                        .record_errors
                        .first()
                        .and_then(|e| e.batch_index_error_message.clone());
                    let message = p.error_message.as_ref().or(detail.as_ref());
                    check(p.error_code, message, || {
                        format!(
                            "cannot produce to partition {} of topic {}",
                            p.index, topic.name
                        )
                    })?;
                }
            }
        }
        if moved.is_empty() {
            return Ok(());
        }
        *topic = client.topic(&topic.name)?;
        batches = moved;
    }
    Err(ClientError::Protocol(format!(
        "the leaders of topic {} kept moving; some records may not have been written",
        topic.name
    )))
}

/// Reads stdin in batches of lines.
struct LineBatches<R> {
    input: R,
    separator: Option<Vec<u8>>,
    /// A line read but left for the next batch.
    pending: Option<Line>,
}

impl<R: BufRead> LineBatches<R> {
    fn new(input: R, separator: Option<&[u8]>) -> Self {
        LineBatches {
            input,
            separator: separator.map(<[u8]>::to_vec),
            pending: None,
        }
    }

    fn next_batch(&mut self) -> Result<Option<Vec<Line>>> {
        let mut batch: Vec<Line> = Vec::new();
        let mut bytes = 0usize;
        loop {
            let line = match self.pending.take() {
                Some(line) => line,
                None => match self.read_line()? {
                    Some(line) => line,
                    None => break,
                },
            };
            let size = line.key.as_ref().map_or(0, Vec::len) + line.value.len() + RECORD_OVERHEAD;
            // A line that would overflow the batch starts the next one (a single huge line
            // still goes alone: the broker is the judge of its size).
            if !batch.is_empty() && (batch.len() >= MAX_LINES || bytes + size > MAX_BATCH_BYTES) {
                self.pending = Some(line);
                break;
            }
            bytes += size;
            batch.push(line);
        }
        Ok(if batch.is_empty() { None } else { Some(batch) })
    }

    fn read_line(&mut self) -> Result<Option<Line>> {
        let mut buf = Vec::new();
        let n = self
            .input
            .read_until(b'\n', &mut buf)
            .map_err(|source| ClientError::Io {
                what: "cannot read stdin",
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        Ok(Some(self.split(buf)))
    }

    /// Splits at the first separator; a line without one is a value with a null key.
    fn split(&self, line: Vec<u8>) -> Line {
        let Some(sep) = self.separator.as_deref() else {
            return Line {
                key: None,
                value: line,
            };
        };
        match line.windows(sep.len()).position(|w| w == sep) {
            Some(at) => Line {
                key: Some(line[..at].to_vec()),
                value: line[at + sep.len()..].to_vec(),
            },
            None => Line {
                key: None,
                value: line,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_at_the_first_separator_and_batch_at_1000() {
        let mut input = String::new();
        for i in 0..1500 {
            input.push_str(&format!("k{i}::v::{i}\n"));
        }
        input.push_str("no-key");
        let mut b = LineBatches::new(input.as_bytes(), Some(b"::"));
        let first = b.next_batch().expect("reads").expect("a batch");
        assert_eq!(first.len(), 1000);
        assert_eq!(first[0].key.as_deref(), Some(&b"k0"[..]));
        assert_eq!(first[0].value, b"v::0");
        let second = b.next_batch().expect("reads").expect("a batch");
        assert_eq!(second.len(), 501);
        assert_eq!(second[500].key, None);
        assert_eq!(second[500].value, b"no-key");
        assert!(b.next_batch().expect("reads").is_none());
    }

    #[test]
    fn big_lines_cut_batches_by_bytes() {
        let line = "x".repeat(300_000) + "\n";
        let input = line.repeat(5);
        let mut b = LineBatches::new(input.as_bytes(), None);
        // 3 x 300_016 fits under 1_000_000, a fourth would not.
        assert_eq!(b.next_batch().expect("reads").expect("batch").len(), 3);
        assert_eq!(b.next_batch().expect("reads").expect("batch").len(), 2);
        assert!(b.next_batch().expect("reads").is_none());
    }
}
