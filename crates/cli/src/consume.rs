//! `consume`: Fetch from partition leaders and print records, alone or as a group member.
//!
//! When to stop: with neither `-n` nor `--follow`, at the end of each partition as it was when
//! consuming (or, in a group, the current assignment) started, so the command terminates even
//! while producers keep writing; with `-n COUNT`, after COUNT records, waiting for them as long
//! as it takes; with `--follow`, only on Ctrl-C (SIGINT/SIGTERM) or COUNT. A group member then
//! commits what it printed and leaves the group; a second Ctrl-C exits at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice_protocol::kafka_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::fetch_request::{
    FetchPartition, FetchRequest, FetchTopic,
};
use sluice_protocol::kafka_protocol::messages::{BrokerId, TopicName};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use crate::client::{Client, EARLIEST, LATEST, TopicInfo, is_leader_change};
use crate::error::{ClientError, Result};
use crate::group_protocol::{Assignment, TopicPartition, fetch_offsets};
use crate::member::{GroupMember, HEARTBEAT_INTERVAL};
use crate::output::{Json, Out, Progress};
use crate::records::{Record, decode_fetched};
use crate::template::{FormatRecord, Template};

/// How long the broker may hold a Fetch with nothing to return: short enough to heartbeat and
/// to notice Ctrl-C on time.
const MAX_WAIT: Duration = Duration::from_millis(500);
/// Fetch response size bounds (Kafka's consumer defaults are 50 MiB and 1 MiB; the per-partition
/// bound is larger here so one large batch cannot stall a partition).
const FETCH_MAX_BYTES: i32 = 50 << 20;
const PARTITION_MAX_BYTES: i32 = 8 << 20;
/// A group member commits what it printed at least this often.
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// Options of `consume`.
pub(crate) struct ConsumeOptions<'a> {
    pub(crate) topic: &'a str,
    pub(crate) group: Option<&'a str>,
    pub(crate) from_beginning: bool,
    pub(crate) count: Option<u64>,
    pub(crate) partition: Option<i32>,
    pub(crate) follow: bool,
    pub(crate) verbose: bool,
    pub(crate) template: &'a Template,
}

impl ConsumeOptions<'_> {
    fn stop_at_end(&self) -> bool {
        self.count.is_none() && !self.follow
    }

    /// Where to start a partition without a committed offset.
    fn reset_to(&self) -> i64 {
        if self.from_beginning {
            EARLIEST
        } else {
            LATEST
        }
    }
}

/// Consumes as the options say.
pub(crate) fn run(client: &mut Client, out: &mut Out, opts: &ConsumeOptions<'_>) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal asks for a clean stop (commit, leave); a second one exits at once.
        let _ = signal_hook::flag::register_conditional_shutdown(
            signal,
            128 + signal,
            Arc::clone(&stop),
        );
        let _ = signal_hook::flag::register(signal, Arc::clone(&stop));
    }
    let mut sink = Sink {
        json: out.json,
        out,
        topic: opts.topic.to_string(),
        template: opts.template,
        printed: 0,
        limit: opts.count,
        progress: Progress::new("consumed"),
        buf: Vec::new(),
    };
    let result = match opts.group {
        None => alone(client, &mut sink, opts, &stop),
        Some(group) => in_group(client, &mut sink, opts, group, &stop),
    };
    sink.progress.finish();
    let flushed = sink.flush();
    result.and(flushed)
}

/// Prints records to stdout.
struct Sink<'a> {
    out: &'a mut Out,
    json: bool,
    topic: String,
    template: &'a Template,
    printed: u64,
    limit: Option<u64>,
    progress: Progress,
    buf: Vec<u8>,
}

impl Sink<'_> {
    fn full(&self) -> bool {
        self.limit.is_some_and(|l| self.printed >= l)
    }

    fn emit(&mut self, partition: i32, r: &Record) {
        if self.json {
            let doc = Json::obj([
                ("topic", Json::from(&self.topic)),
                ("partition", Json::from(partition)),
                ("offset", Json::from(r.offset)),
                ("timestamp", Json::from(r.timestamp)),
                ("key", Json::bytes(r.key.as_deref())),
                ("value", Json::bytes(r.value.as_deref())),
            ]);
            self.buf.extend_from_slice(doc.render().as_bytes());
            self.buf.push(b'\n');
        } else {
            let headers: Vec<(&[u8], Option<&[u8]>)> = r
                .headers
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_deref()))
                .collect();
            let view = FormatRecord {
                topic: &self.topic,
                partition,
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                headers: &headers,
            };
            self.template.render(&view, &mut self.buf);
        }
        self.printed += 1;
    }

    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.out.write(&self.buf)?;
            self.buf.clear();
        }
        self.out.flush()?;
        self.progress.update(self.printed);
        Ok(())
    }
}

/// Where each partition is, and where it stops.
struct Fetcher {
    topic: TopicInfo,
    /// Next offset to print, per partition.
    next: BTreeMap<i32, i64>,
    /// Offset to stop at, per partition, when stopping at the end.
    end: Option<BTreeMap<i32, i64>>,
    reset_to: i64,
    round: usize,
}

impl Fetcher {
    fn new(
        client: &mut Client,
        topic: TopicInfo,
        next: BTreeMap<i32, i64>,
        opts: &ConsumeOptions<'_>,
    ) -> Result<Fetcher> {
        let partitions: Vec<i32> = next.keys().copied().collect();
        let end = if opts.stop_at_end() {
            Some(client.list_offsets(&topic, &partitions, LATEST)?)
        } else {
            None
        };
        Ok(Fetcher {
            topic,
            next,
            end,
            reset_to: opts.reset_to(),
            round: 0,
        })
    }

    fn at_end(&self, p: i32) -> bool {
        match (&self.end, self.next.get(&p)) {
            (Some(end), Some(next)) => end.get(&p).is_none_or(|e| next >= e),
            _ => false,
        }
    }

    /// True when stopping at the end and every partition got there.
    fn done(&self) -> bool {
        self.end.is_some() && self.next.keys().all(|p| self.at_end(*p))
    }

    /// One Fetch per leader of the partitions still to read; prints what came back.
    fn fetch_once(&mut self, client: &mut Client, sink: &mut Sink<'_>) -> Result<()> {
        let mut active: Vec<i32> = self
            .next
            .keys()
            .copied()
            .filter(|p| !self.at_end(*p))
            .collect();
        if active.is_empty() {
            // Nothing assigned (a group with more members than partitions): just pace the loop.
            std::thread::sleep(MAX_WAIT);
            return Ok(());
        }
        // Rotate so a busy partition cannot starve the others of response space.
        let turn = self.round % active.len();
        active.rotate_left(turn);
        self.round = self.round.wrapping_add(1);
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for p in active {
            by_leader
                .entry(self.topic.leader_of(p)?)
                .or_default()
                .push(p);
        }
        let mut stale_metadata = false;
        for (leader, partitions) in by_leader {
            if sink.full() {
                break;
            }
            let positions: Vec<(i32, i64)> =
                partitions.iter().map(|p| (*p, self.next[p])).collect();
            let topic = &self.topic;
            let (r, v) = client.broker(leader)?.call(
                |v| {
                    let mut t = FetchTopic::default();
                    // Fetch v13+ names topics by id (KIP-516).
                    if v >= 13 {
                        t.topic_id = topic.id;
                    } else {
                        t.topic = TopicName(StrBytes::from_string(topic.name.clone()));
                    }
                    t.partitions = positions
                        .iter()
                        .map(|&(p, offset)| {
                            let mut fp = FetchPartition::default();
                            fp.partition = p;
                            fp.fetch_offset = offset;
                            fp.partition_max_bytes = PARTITION_MAX_BYTES;
                            fp
                        })
                        .collect();
                    let mut req = FetchRequest::default();
                    if v <= 14 {
                        req.replica_id = BrokerId(-1);
                    }
                    req.max_wait_ms = i32::try_from(MAX_WAIT.as_millis()).unwrap_or(500);
                    req.min_bytes = 1;
                    req.max_bytes = FETCH_MAX_BYTES;
                    req.topics = vec![t];
                    req
                },
                MAX_WAIT,
            )?;
            if r.error_code != 0 {
                return Err(ClientError::kafka(r.error_code, None, || {
                    format!(
                        "broker {leader} refused to fetch from topic {}",
                        self.topic.name
                    )
                }));
            }
            for t in r.responses {
                let ours = if v >= 13 {
                    t.topic_id == self.topic.id
                } else {
                    t.topic.0.as_str() == self.topic.name
                };
                if !ours {
                    continue;
                }
                for p in t.partitions {
                    let Some(&from) = self.next.get(&p.partition_index) else {
                        continue;
                    };
                    match p.error_code {
                        0 => {}
                        c if c == ResponseError::OffsetOutOfRange.code() => {
                            let reset = client.list_offsets(
                                &self.topic,
                                &[p.partition_index],
                                self.reset_to,
                            )?;
                            let to = reset.get(&p.partition_index).copied().unwrap_or(from);
                            eprintln!(
                                "offset {from} of partition {} of topic {} is out of range; continuing at {to}",
                                p.partition_index, self.topic.name
                            );
                            self.next.insert(p.partition_index, to);
                            continue;
                        }
                        c if is_leader_change(c)
                            || c == ResponseError::UnknownTopicOrPartition.code() =>
                        {
                            stale_metadata = true;
                            continue;
                        }
                        c => {
                            return Err(ClientError::kafka(c, None, || {
                                format!(
                                    "cannot fetch partition {} of topic {}",
                                    p.partition_index, self.topic.name
                                )
                            }));
                        }
                    }
                    let Some(data) = p.records.as_ref().filter(|d| !d.is_empty()) else {
                        continue;
                    };
                    let decoded = decode_fetched(data, from)?;
                    let stop_at = self
                        .end
                        .as_ref()
                        .and_then(|e| e.get(&p.partition_index).copied());
                    let mut next = decoded.next_offset.unwrap_or(from).max(from);
                    for r in &decoded.records {
                        if sink.full() || stop_at.is_some_and(|e| r.offset >= e) {
                            next = r.offset;
                            break;
                        }
                        sink.emit(p.partition_index, r);
                        next = r.offset + 1;
                    }
                    if let Some(last) = decoded.records.last() {
                        // Everything printed: skip on past trailing control or filtered batches.
                        if next == last.offset + 1 {
                            next = next.max(decoded.next_offset.unwrap_or(next));
                        }
                    }
                    // Written first, then counted as consumed: a group commits only offsets of
                    // records that reached stdout (a closed pipe loses nothing unseen).
                    sink.flush()?;
                    self.next.insert(p.partition_index, next);
                }
            }
            sink.flush()?;
        }
        if stale_metadata {
            // The leader moved or is being elected: learn who leads now before asking again.
            std::thread::sleep(MAX_WAIT);
            self.topic = client.topic(&self.topic.name)?;
        }
        Ok(())
    }
}

/// Consume without a group: every partition (or `--partition`) from latest or earliest.
fn alone(
    client: &mut Client,
    sink: &mut Sink<'_>,
    opts: &ConsumeOptions<'_>,
    stop: &AtomicBool,
) -> Result<()> {
    let topic = client.topic(opts.topic)?;
    let partitions: Vec<i32> = match opts.partition {
        Some(p) => {
            topic.leader_of(p)?;
            vec![p]
        }
        None => topic.partitions.iter().map(|p| p.index).collect(),
    };
    let start = client.list_offsets(&topic, &partitions, opts.reset_to())?;
    let mut fetcher = Fetcher::new(client, topic, start, opts)?;
    while !stop.load(Ordering::SeqCst) && !sink.full() && !fetcher.done() {
        fetcher.fetch_once(client, sink)?;
    }
    Ok(())
}

/// Consume as a group member; commits what it printed and leaves the group at the end, also
/// when stopping on an error (what was printed was printed).
fn in_group(
    client: &mut Client,
    sink: &mut Sink<'_>,
    opts: &ConsumeOptions<'_>,
    group: &str,
    stop: &AtomicBool,
) -> Result<()> {
    // A missing topic is an error before joining, not an empty assignment after it.
    client.topic(opts.topic)?;
    let mut member = GroupMember::new(client, group, vec![opts.topic.to_string()])?;
    let mut state = GroupState::default();
    let result = member_loop(client, sink, opts, &mut member, &mut state, stop);
    let committed = match (&result, state.fetcher.as_ref()) {
        (_, Some(fetcher)) => commit_printed(client, &member, fetcher, &mut state.committed),
        _ => Ok(()),
    };
    let left = member.leave(client);
    result.and(committed).and(left)
}

#[derive(Default)]
struct GroupState {
    fetcher: Option<Fetcher>,
    /// What the group has committed, per partition, as far as this member knows.
    committed: BTreeMap<i32, i64>,
}

fn member_loop(
    client: &mut Client,
    sink: &mut Sink<'_>,
    opts: &ConsumeOptions<'_>,
    member: &mut GroupMember,
    state: &mut GroupState,
    stop: &AtomicBool,
) -> Result<()> {
    loop {
        let assignment = member.join(client)?;
        let partitions = assignment.get(opts.topic).cloned().unwrap_or_default();
        if opts.verbose {
            let list = partitions
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            eprintln!(
                "joined group {} as {} (generation {}): assigned partitions [{list}] of topic {}",
                member.group(),
                member.member_id,
                member.generation,
                opts.topic
            );
        }
        let topic = client.topic(opts.topic)?;
        let wanted: Assignment = [(opts.topic.to_string(), partitions.clone())]
            .into_iter()
            .collect();
        let fetched = fetch_offsets(client, member.coordinator, member.group(), Some(&wanted))?;
        state.committed = fetched
            .into_iter()
            .filter(|((t, _), o)| t == opts.topic && *o >= 0)
            .map(|((_, p), o)| (p, o))
            .collect();
        let missing: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !state.committed.contains_key(p))
            .collect();
        let reset = if missing.is_empty() {
            BTreeMap::new()
        } else {
            client.list_offsets(&topic, &missing, opts.reset_to())?
        };
        let next: BTreeMap<i32, i64> = partitions
            .iter()
            .map(|p| {
                (
                    *p,
                    state
                        .committed
                        .get(p)
                        .or(reset.get(p))
                        .copied()
                        .unwrap_or(0),
                )
            })
            .collect();
        state.fetcher = Some(Fetcher::new(client, topic, next, opts)?);
        let mut last_commit = Instant::now();
        while let Some(fetcher) = state.fetcher.as_mut() {
            if stop.load(Ordering::SeqCst) || sink.full() || fetcher.done() {
                return Ok(());
            }
            if member.heartbeat_if_due(client)? {
                // Hand over cleanly: commit what was printed in this generation, then rejoin.
                // A commit refused because the generation already ended is not an error here.
                let _ = commit_printed(client, member, fetcher, &mut state.committed);
                break;
            }
            if last_commit.elapsed() >= COMMIT_INTERVAL {
                match commit_printed(client, member, fetcher, &mut state.committed) {
                    Ok(()) => last_commit = Instant::now(),
                    // The generation ended under us: the next heartbeat would say so; rejoin now.
                    Err(e) if e.kafka_code().is_some_and(generation_ended) => break,
                    Err(e) => return Err(e),
                }
            }
            fetcher.fetch_once(client, sink)?;
        }
    }
}

/// Codes that mean this member's generation is over and it must rejoin.
fn generation_ended(code: i16) -> bool {
    [
        ResponseError::RebalanceInProgress,
        ResponseError::IllegalGeneration,
        ResponseError::UnknownMemberId,
    ]
    .iter()
    .any(|e| e.code() == code)
}

/// Commits the next offset of every partition that moved since the last commit.
fn commit_printed(
    client: &mut Client,
    member: &GroupMember,
    fetcher: &Fetcher,
    committed: &mut BTreeMap<i32, i64>,
) -> Result<()> {
    let offsets: BTreeMap<TopicPartition, i64> = fetcher
        .next
        .iter()
        .filter(|(p, o)| committed.get(p) != Some(o))
        .map(|(p, o)| ((fetcher.topic.name.clone(), *p), *o))
        .collect();
    if offsets.is_empty() {
        return Ok(());
    }
    member.commit(client, &offsets).map_err(ClientError::from)?;
    for ((_, p), o) in offsets {
        committed.insert(p, o);
    }
    Ok(())
}

/// Heartbeats are due every [`HEARTBEAT_INTERVAL`]; a Fetch never holds the loop longer than
/// [`MAX_WAIT`], so the session never lapses while records are printed.
const _: () = assert!(MAX_WAIT.as_millis() * 4 < HEARTBEAT_INTERVAL.as_millis());
