//! The produce load: N connections, each keeping up to `in_flight` Produce requests outstanding.
//!
//! Every request is encoded once before the clock starts (one per partition per connection) and
//! only its correlation id is patched per send, so the generator spends its CPU on the socket,
//! not on encoding. Requests of one connection rotate over the topic's partitions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use sluice_protocol::client::{decode_response, encode_request};
use sluice_protocol::kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use sluice_protocol::kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind, TopicName};
use sluice_protocol::kafka_protocol::protocol::StrBytes;
use sluice_protocol::records::{NewRecord, ProducerInfo, build_batch};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, Semaphore, mpsc};

use crate::histogram::Histogram;
use crate::wire::{CLIENT_ID, Conn, Error, Versions, read_frame};

/// What to send.
#[derive(Debug, Clone)]
pub struct ProduceOpts {
    /// Broker address (`127.0.0.1:PORT`).
    pub bootstrap: String,
    /// Topic; created with `partitions` partitions if missing.
    pub topic: String,
    /// Partitions to spread requests over (0..partitions).
    pub partitions: i32,
    /// Connections, each its own producer.
    pub connections: usize,
    /// Requests each connection keeps outstanding.
    pub in_flight: usize,
    /// Records per batch (one batch per request).
    pub records: usize,
    /// Value bytes per record (no key).
    pub size: usize,
    /// 0, 1 or -1.
    pub acks: i16,
    /// Stop sending after this many messages...
    pub messages: u64,
    /// ...or after this long, whichever comes first.
    pub duration: Duration,
    /// Total messages per second across connections; `None` sends as fast as responses allow.
    pub rate: Option<f64>,
}

/// What happened.
#[derive(Debug, Default)]
pub struct Report {
    /// Messages acknowledged without error (sent, for acks=0).
    pub messages: u64,
    /// Value bytes of those messages.
    pub value_bytes: u64,
    /// Record batch bytes of those messages, as they go into the log.
    pub batch_bytes: u64,
    /// From the first send to the last acknowledgement.
    pub elapsed: Duration,
    /// Requests sent.
    pub requests: u64,
    /// Partition responses with an error code.
    pub errors: u64,
    /// The first error seen, for the operator.
    pub first_error: Option<String>,
    /// Request latency (send to response), µs.
    pub latency: Histogram,
    /// Rate-limited runs: sends that left later than 1 ms after their scheduled time.
    pub late_sends: u64,
}

struct Shared {
    opts: ProduceOpts,
    batch_len: u64,
    sent_messages: AtomicU64,
    deadline: Instant,
    start: Instant,
    report: Mutex<Report>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One batch of `records` records of `size` bytes, base offset 0, valid CRC.
pub fn make_batch(records: usize, size: usize) -> Bytes {
    let value = vec![b'x'; size];
    let ts = now_ms();
    let recs: Vec<NewRecord<'_>> = (0..records)
        .map(|_| NewRecord {
            key: None,
            value: Some(&value),
            headers: &[],
            timestamp: ts,
        })
        .collect();
    Bytes::from(build_batch(&recs, ProducerInfo::NONE))
}

fn encode_produce(
    v: &Versions,
    topic: &str,
    partition: i32,
    acks: i16,
    batch: &Bytes,
) -> Result<Vec<u8>, Error> {
    let mut p = PartitionProduceData::default();
    p.index = partition;
    p.records = Some(batch.clone());
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.partition_data.push(p);
    let mut req = ProduceRequest::default();
    req.acks = acks;
    req.timeout_ms = 30_000;
    req.topic_data.push(t);
    let mut out = BytesMut::new();
    encode_request(
        &mut out,
        ApiKey::Produce,
        v.produce,
        0,
        CLIENT_ID,
        &RequestKind::Produce(req),
    )
    .map_err(|e| e.to_string())?;
    Ok(out.to_vec())
}

/// Runs the load and returns what was acknowledged.
pub async fn run(opts: ProduceOpts) -> Result<Report, Error> {
    let mut admin = Conn::connect(&opts.bootstrap).await?;
    let versions = admin.negotiate().await?;
    admin
        .create_topic(&versions, &opts.topic, opts.partitions)
        .await?;
    let batch = make_batch(opts.records.max(1), opts.size);
    let mut conns = Vec::with_capacity(opts.connections);
    for c in 0..opts.connections.max(1) {
        let conn = Conn::connect(&opts.bootstrap).await?;
        // Connection c starts at partition c so several connections spread at once.
        let mut frames = Vec::new();
        for i in 0..opts.partitions.max(1) {
            let p = (c as i32 + i) % opts.partitions.max(1);
            frames.push(encode_produce(
                &versions,
                &opts.topic,
                p,
                opts.acks,
                &batch,
            )?);
        }
        conns.push((conn.into_stream(), frames));
    }
    let start = Instant::now();
    let shared = Arc::new(Shared {
        batch_len: batch.len() as u64,
        deadline: start + opts.duration,
        start,
        sent_messages: AtomicU64::new(0),
        report: Mutex::new(Report::default()),
        opts,
    });
    let mut tasks = Vec::new();
    for (c, (stream, frames)) in conns.into_iter().enumerate() {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            connection(c, stream, frames, shared, versions).await
        }));
    }
    let mut failure = None;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => failure = failure.or(Some(format!("connection task: {e}"))),
        }
    }
    let shared =
        Arc::try_unwrap(shared).map_err(|_| "connection tasks still hold state".to_string())?;
    let report = shared.report.into_inner();
    match failure {
        Some(e) if report.messages == 0 => Err(e),
        Some(e) => {
            eprintln!("sluice-loadgen: a connection failed after some load: {e}");
            Ok(report)
        }
        None => Ok(report),
    }
}

/// Takes one batch's worth of the message budget; false when the budget or time is spent.
fn take_budget(shared: &Shared) -> bool {
    if Instant::now() >= shared.deadline {
        return false;
    }
    let m = shared.opts.records.max(1) as u64;
    shared.sent_messages.fetch_add(m, Ordering::Relaxed) < shared.opts.messages
}

async fn connection(
    index: usize,
    stream: tokio::net::TcpStream,
    mut frames: Vec<Vec<u8>>,
    shared: Arc<Shared>,
    versions: Versions,
) -> Result<(), Error> {
    let opts = &shared.opts;
    let (mut rd, mut wr) = stream.into_split();
    let window = Arc::new(Semaphore::new(opts.in_flight.max(1)));
    let (tx, mut rx) = mpsc::unbounded_channel::<(i32, Instant)>();
    let expect_responses = opts.acks != 0;
    // Per-connection interval between requests when rate-limited; connections are staggered.
    let interval = opts.rate.map(|r| {
        Duration::from_secs_f64(opts.connections.max(1) as f64 * opts.records.max(1) as f64 / r)
    });

    let writer = async {
        let mut out: Vec<u8> = Vec::with_capacity(512 << 10);
        let mut correlation: i32 = 0;
        let mut sent = 0u64;
        let mut late = 0u64;
        let mut next_due = interval
            .map(|i| shared.start + i.mul_f64(index as f64 / opts.connections.max(1) as f64));
        while take_budget(&shared) {
            if let (Some(due), Some(step)) = (next_due.as_mut(), interval) {
                let now = Instant::now();
                if now < *due {
                    if !out.is_empty() {
                        wr.write_all(&out)
                            .await
                            .map_err(|e| format!("write: {e}"))?;
                        out.clear();
                    }
                    tokio::time::sleep_until((*due).into()).await;
                } else if now > *due + Duration::from_millis(1) {
                    late += 1;
                }
                *due += step;
            }
            if expect_responses {
                let permit = match window.try_acquire() {
                    Ok(p) => p,
                    Err(_) => {
                        if !out.is_empty() {
                            wr.write_all(&out)
                                .await
                                .map_err(|e| format!("write: {e}"))?;
                            out.clear();
                        }
                        window.acquire().await.map_err(|e| e.to_string())?
                    }
                };
                permit.forget();
            }
            correlation = correlation.wrapping_add(1);
            let n = frames.len() as u64;
            let frame = &mut frames[(sent % n) as usize];
            frame[8..12].copy_from_slice(&correlation.to_be_bytes());
            out.extend_from_slice(frame);
            sent += 1;
            if expect_responses {
                // The reader is gone only after an error it reports itself.
                let _ = tx.send((correlation, Instant::now()));
            }
            if out.len() >= 256 << 10 {
                wr.write_all(&out)
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                out.clear();
            }
        }
        if !out.is_empty() {
            wr.write_all(&out)
                .await
                .map_err(|e| format!("write: {e}"))?;
        }
        drop(tx);
        Ok::<(u64, u64), Error>((sent, late))
    };

    let reader = async {
        let mut hist = Histogram::new();
        let mut acked = 0u64;
        let mut errors = 0u64;
        let mut first_error = None;
        let mut last_ack = None;
        let mut buf = bytes::BytesMut::new();
        if expect_responses {
            while let Some((correlation, sent_at)) = rx.recv().await {
                let frame =
                    tokio::time::timeout(Duration::from_secs(60), read_frame(&mut rd, &mut buf))
                        .await
                        .map_err(|_| "no Produce response in 60 s".to_string())??;
                let now = Instant::now();
                let (corr, body) = decode_response(frame, ApiKey::Produce, versions.produce)
                    .map_err(|e| e.to_string())?;
                if corr != correlation {
                    return Err(format!(
                        "response for correlation id {corr}, expected {correlation}"
                    ));
                }
                let ResponseKind::Produce(r) = body else {
                    return Err("unexpected response kind".into());
                };
                hist.record(now.duration_since(sent_at).as_micros() as u64);
                for p in r
                    .responses
                    .iter()
                    .flat_map(|t| t.partition_responses.iter())
                {
                    if p.error_code == 0 {
                        acked += opts.records.max(1) as u64;
                    } else {
                        errors += 1;
                        if first_error.is_none() {
                            first_error = Some(format!(
                                "partition {}: error {} {}",
                                p.index,
                                p.error_code,
                                p.error_message.as_deref().unwrap_or("")
                            ));
                        }
                    }
                }
                last_ack = Some(now);
                window.add_permits(1);
            }
        }
        Ok::<_, Error>((hist, acked, errors, first_error, last_ack))
    };

    // try_join: a reader error (a closed socket, a bad frame) also stops the writer, which may
    // be waiting for window permits that will never come back.
    let ((sent, late), (hist, acked, errors, first_error, last_ack)) =
        tokio::try_join!(writer, reader)?;
    let mut report = shared.report.lock().await;
    let acked = if expect_responses {
        acked
    } else {
        sent * opts.records.max(1) as u64
    };
    let end = last_ack.unwrap_or_else(Instant::now);
    report.messages += acked;
    report.value_bytes += acked * opts.size as u64;
    report.batch_bytes += acked / opts.records.max(1) as u64 * shared.batch_len;
    report.elapsed = report.elapsed.max(end.duration_since(shared.start));
    report.requests += sent;
    report.errors += errors;
    report.late_sends += late;
    if report.first_error.is_none() {
        report.first_error = first_error;
    }
    report.latency.merge(&hist);
    Ok(())
}
