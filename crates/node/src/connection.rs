//! One client connection: frames in, responses out, in request order.
//!
//! The reader splits frames, decodes them and *starts* each request in arrival order (so appends
//! from one connection hit the log in the order they were sent); the part of a request that waits
//! (durability, long-poll fetch, a rebalance) runs while later requests are read and started.
//! The writer sends responses strictly in request order. A bounded channel between the two caps
//! the requests in flight per connection, which also bounds the memory a client can pin.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseKind};
use sluice_protocol::fetch::encode_fetch_response;
use sluice_protocol::frame::FrameDecoder;
use sluice_protocol::request::{RequestError, decode_request};
use sluice_protocol::response::{encode_api_versions_fallback, encode_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tracing::{Instrument, debug, info, warn};

use crate::broker::{Broker, Completion, RequestContext};

/// Requests a single connection may have started but not yet answered.
pub const MAX_IN_FLIGHT: usize = 64;
/// Read buffer growth step; frames larger than this are read with one reservation each.
const READ_CHUNK: usize = 64 * 1024;
/// How long a shutting-down node still waits for a connection's pending responses.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the writer must send for one request.
enum Outgoing {
    /// A response still being produced.
    Pending {
        correlation_id: i32,
        api_key: ApiKey,
        version: i16,
        completion: Completion,
        /// The request's share of queued.max.request.bytes, returned once it is answered.
        _memory: OwnedSemaphorePermit,
    },
    /// Bytes already framed (the KIP-511 fallback).
    Framed(Bytes),
}

/// Serves one connection until the client closes it, it misbehaves, or shutdown is signalled.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let span = tracing::info_span!("conn", %peer);
    async move {
        if let Err(e) = stream.set_nodelay(true) {
            debug!("set_nodelay failed: {e}");
        }
        let (reader, writer) = stream.into_split();
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let mut writer_task = tokio::spawn(write_responses(writer, rx).in_current_span());
        tokio::select! {
            outcome = read_requests(reader, peer, &broker, tx) => {
                if let Err(reason) = outcome {
                    warn!("closing connection: {reason}");
                }
            }
            _ = crate::server::stopped(&mut shutdown) => debug!("closing connection for shutdown"),
        }
        // The writer finishes sending what was already started, then sees the channel close.
        // A shutdown bounds that wait: a produce waiting on replicas that are stopping too
        // would otherwise hold the whole node until its timeout_ms. Its client sees the
        // connection close and retries elsewhere; nothing it was not told of is lost.
        tokio::select! {
            _ = &mut writer_task => {}
            _ = async {
                crate::server::stopped(&mut shutdown).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                warn!(
                    "closing connection with responses still pending, {} s after shutdown began",
                    SHUTDOWN_GRACE.as_secs()
                );
                writer_task.abort();
            }
        }
        debug!("connection closed");
    }
    .instrument(span)
    .await
}

async fn read_requests(
    mut reader: OwnedReadHalf,
    peer: SocketAddr,
    broker: &Arc<Broker>,
    tx: mpsc::Sender<Outgoing>,
) -> Result<(), String> {
    let frames = FrameDecoder::new(broker.config().socket_request_max_bytes);
    let idle = Duration::from_millis(broker.config().connections_max_idle_ms);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // Memory reserved from the broker-wide request budget for the frame being read.
    let mut reserved: Option<OwnedSemaphorePermit> = None;
    loop {
        let (frame, permit) = loop {
            if let Some(frame) = frames.decode(&mut buf).map_err(|e| e.to_string())? {
                let permit = match reserved.take() {
                    Some(p) => p,
                    None => broker.reserve_request_memory(frame.len()).await,
                };
                break (frame, permit);
            }
            // Reserve for the whole frame at once when its size is known (it was checked
            // against socket.request.max.bytes), else a chunk. A large frame first waits for
            // its share of queued.max.request.bytes, so many clients sending big requests at
            // once cannot exhaust memory.
            let need = match frames.check(&buf).map_err(|e| e.to_string())? {
                Some(total) => {
                    if total > READ_CHUNK && reserved.is_none() {
                        reserved = Some(broker.reserve_request_memory(total).await);
                    }
                    total.saturating_sub(buf.len())
                }
                None => READ_CHUNK,
            };
            buf.reserve(need.max(READ_CHUNK));
            let read = tokio::time::timeout(idle, reader.read_buf(&mut buf)).await;
            match read {
                Err(_) => return Err(format!("idle for {} ms", idle.as_millis())),
                Ok(Err(e)) => return Err(format!("read failed: {e}")),
                Ok(Ok(0)) if buf.is_empty() => return Ok(()),
                Ok(Ok(0)) => return Err(format!("client closed mid-frame ({} bytes)", buf.len())),
                Ok(Ok(_)) => {}
            }
        };
        let outgoing = match decode_request(frame, broker.api_table()) {
            Ok(request) => {
                let correlation_id = request.header.correlation_id;
                let api_key = request.api_key;
                let version = request.version();
                let ctx = RequestContext {
                    client_id: request
                        .header
                        .client_id
                        .as_ref()
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                    peer,
                };
                let span =
                    tracing::debug_span!("req", api = ?api_key, v = version, corr = correlation_id);
                let completion = broker.start(request, ctx).instrument(span).await;
                Outgoing::Pending {
                    correlation_id,
                    api_key,
                    version,
                    completion,
                    _memory: permit,
                }
            }
            Err(RequestError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                prefix,
            }) => {
                // KIP-511: answer in v0 so the client can pick a version we support.
                let mut out = BytesMut::new();
                encode_api_versions_fallback(&mut out, prefix.correlation_id, broker.api_table())
                    .map_err(|e| e.to_string())?;
                Outgoing::Framed(out.freeze())
            }
            Err(e) => return Err(format!("unanswerable request: {e}")),
        };
        if tx.send(outgoing).await.is_err() {
            return Err("response writer stopped".into());
        }
    }
}

async fn write_responses(mut writer: OwnedWriteHalf, mut rx: mpsc::Receiver<Outgoing>) {
    let mut out = Outbound::default();
    let mut next = rx.recv().await;
    while let Some(item) = next.take() {
        if !append_response(&mut out, item).await {
            return;
        }
        // Coalesce responses that are already complete into one write, but never hold a
        // finished response back while a later one is still waiting.
        while out.len() < 1 << 20 {
            let Ok(mut item) = rx.try_recv() else { break };
            if !item.is_ready() {
                next = Some(item);
                break;
            }
            if !append_response(&mut out, item).await {
                return;
            }
        }
        if let Err(e) = out.flush(&mut writer).await {
            info!("write failed, dropping connection: {e}");
            return;
        }
        if next.is_none() {
            next = rx.recv().await;
        }
    }
    let _ = writer.shutdown().await;
}

/// Responses waiting to be written: small ones encoded into one buffer, record batches of
/// fetch responses kept as the `Bytes` storage returned, and all of it written with vectored
/// writes, so batches go from the read to the socket without another copy.
#[derive(Default)]
struct Outbound {
    buf: BytesMut,
    chunks: Vec<Bytes>,
    chunked: usize,
}

/// Parts smaller than this are copied into the buffer: a syscall slice costs more than that.
const COPY_BELOW: usize = 4096;

impl Outbound {
    fn len(&self) -> usize {
        self.chunked + self.buf.len()
    }

    fn push_chunk(&mut self, chunk: Bytes) {
        self.chunked += chunk.len();
        self.chunks.push(chunk);
    }

    fn push_parts(&mut self, parts: Vec<Bytes>) {
        for part in parts {
            if part.len() < COPY_BELOW {
                self.buf.extend_from_slice(&part);
            } else {
                if !self.buf.is_empty() {
                    let head = self.buf.split().freeze();
                    self.push_chunk(head);
                }
                self.push_chunk(part);
            }
        }
    }

    async fn flush(&mut self, writer: &mut OwnedWriteHalf) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let tail = self.buf.split().freeze();
            self.push_chunk(tail);
        }
        let mut chunks = std::mem::take(&mut self.chunks);
        self.chunked = 0;
        let (mut first, mut offset) = (0usize, 0usize);
        while first < chunks.len() {
            let slices: Vec<std::io::IoSlice<'_>> = chunks[first..]
                .iter()
                .enumerate()
                .take(64)
                .map(|(i, c)| std::io::IoSlice::new(if i == 0 { &c[offset..] } else { c }))
                .collect();
            let mut written = writer.write_vectored(&slices).await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while written > 0 {
                let left = chunks[first].len() - offset;
                if written >= left {
                    written -= left;
                    first += 1;
                    offset = 0;
                } else {
                    offset += written;
                    written = 0;
                }
            }
        }
        chunks.clear();
        self.chunks = chunks;
        if self.buf.capacity() > 4 << 20 {
            // A burst of big responses should not pin its buffer for the life of the connection.
            self.buf = BytesMut::with_capacity(64 * 1024);
        }
        Ok(())
    }
}

impl Outgoing {
    fn is_ready(&mut self) -> bool {
        match self {
            Outgoing::Framed(_) => true,
            Outgoing::Pending { completion, .. } => completion.is_ready(),
        }
    }
}

/// Appends one response to `out`. Returns false when the connection must close: a response
/// that cannot be encoded is a broker bug, and closing lets the client retry at once instead of
/// waiting for its request timeout.
async fn append_response(out: &mut Outbound, item: Outgoing) -> bool {
    match item {
        Outgoing::Framed(bytes) => out.buf.extend_from_slice(&bytes),
        Outgoing::Pending {
            correlation_id,
            api_key,
            version,
            completion,
            ..
        } => {
            let body: Option<Box<ResponseKind>> = completion.finish().await;
            let Some(body) = body else { return true };
            if let ResponseKind::Fetch(fetch) = body.as_ref()
                && let Some(parts) = encode_fetch_response(correlation_id, version, fetch)
            {
                out.push_parts(parts);
                return true;
            }
            let mark = out.buf.len();
            if let Err(e) = encode_response(&mut out.buf, correlation_id, api_key, version, &body) {
                tracing::error!("{e}; closing the connection");
                out.buf.truncate(mark);
                return false;
            }
        }
    }
    true
}
