//! The node-to-node transport of partition Raft groups: one TCP connection per peer, shared by
//! every group, requests multiplexed by correlation id (see [`super::wire`]).
//!
//! - [`RaftServer`] accepts peers' connections and hands each request to the group it names;
//!   each request runs as its own task, so a slow group never holds up another, and a connection
//!   has at most [`MAX_IN_FLIGHT`] requests being handled (reading pauses beyond that).
//! - [`Peers`] keeps one lazily (re)connected client per peer; [`GroupNetwork`] is the
//!   `RaftNetworkFactory` a group's `Raft` is built with.
//!
//! Frames queued for one connection are written together and flushed when the queue runs dry,
//! so heartbeats of many groups to the same peer leave in few writes.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{EmptyNode, Raft, RaftNetwork, RaftNetworkFactory};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::wire::{
    Frame, MAX_FRAME, Request, Response, decode_request, decode_response, encode_request,
    encode_response,
};
use super::{CatchUpSource, PartitionRaft, RecordBatch};
use sluice_storage::PartitionLog;

/// Requests one connection may have in progress on the receiving side.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Frames one connection may have queued for writing; senders wait beyond that.
const WRITE_QUEUE: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads one length-prefixed frame; `Ok(None)` at a clean end of stream.
async fn read_frame(r: &mut OwnedReadHalf) -> io::Result<Option<Bytes>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {len}-byte frame exceeds the {MAX_FRAME}-byte limit"),
        ));
    }
    // Filled by `read_buf` into spare capacity: no zeroing pass over a large frame.
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let want = len - buf.len();
        let mut limited = (&mut buf).limit(want);
        if r.read_buf(&mut limited).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a frame",
            ));
        }
    }
    Ok(Some(buf.freeze()))
}

/// Writes queued frames, flushing only when the queue is empty (many frames, few writes).
async fn write_frames(w: OwnedWriteHalf, mut rx: mpsc::Receiver<Frame>) -> io::Result<()> {
    // Small pieces gather in the buffer; a piece larger than it (a big batch) is written
    // straight from its own bytes.
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    while let Some(frame) = rx.recv().await {
        let mut next = Some(frame);
        while let Some(f) = next {
            let len = u32::try_from(f.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
            w.write_all(&len.to_be_bytes()).await?;
            for part in f.parts() {
                w.write_all(part).await?;
            }
            next = rx.try_recv().ok();
        }
        w.flush().await?;
    }
    Ok(())
}

/// The groups this node serves, by name.
#[derive(Clone, Default)]
pub struct RaftServer {
    groups: Arc<RwLock<HashMap<String, Raft<PartitionRaft>>>>,
    logs: Arc<RwLock<HashMap<String, Arc<PartitionLog>>>>,
}

impl RaftServer {
    /// Routes requests for `group` to `raft` from now on.
    pub fn register(&self, group: &str, raft: Raft<PartitionRaft>) {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group.to_string(), raft);
    }

    /// Serves `group`'s committed batches to replicas catching up after a snapshot.
    pub fn register_log(&self, group: &str, log: Arc<PartitionLog>) {
        self.logs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group.to_string(), log);
    }

    /// Stops routing requests for `group` (they are refused).
    pub fn deregister(&self, group: &str) {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(group);
        self.logs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(group);
    }

    fn log(&self, group: &str) -> Option<Arc<PartitionLog>> {
        self.logs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(group)
            .cloned()
    }

    fn get(&self, group: &str) -> Option<Raft<PartitionRaft>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(group)
            .cloned()
    }

    /// Accepts peers on `listener` until the task is dropped or aborted, which also closes
    /// every connection it accepted.
    pub async fn serve(self, listener: TcpListener) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            // Reap finished connections so the set does not grow with churn.
            while connections.try_join_next().is_some() {}
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let server = self.clone();
                    connections.spawn(async move {
                        if let Err(e) = server.connection(stream).await {
                            tracing::warn!(%peer, error = %e, "raft peer connection closed");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accepting a raft peer failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn connection(&self, stream: TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)?;
        let (mut r, w) = stream.into_split();
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer = tokio::spawn(write_frames(w, rx));
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        // Requests in progress die with the connection.
        let mut requests = tokio::task::JoinSet::new();
        let result = loop {
            while requests.try_join_next().is_some() {}
            let frame = match read_frame(&mut r).await {
                Ok(Some(f)) => f,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            let (correlation, group, req) = match decode_request(&frame) {
                Ok(v) => v,
                Err(why) => {
                    break Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("malformed raft request: {why}"),
                    ));
                }
            };
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break Ok(());
            };
            let server = self.clone();
            let tx = tx.clone();
            requests.spawn(async move {
                let resp = server.handle(&group, req).await;
                // A closed queue means the connection is gone; the sender will retry.
                let _ = tx.send(encode_response(correlation, &resp)).await;
                drop(permit);
            });
        };
        drop(tx);
        writer.abort();
        result
    }

    async fn handle(&self, group: &str, req: Request) -> Response {
        if let Request::ReadLog { from, max_bytes } = req {
            let Some(log) = self.log(group) else {
                return Response::Refused(format!("no log of {group} here"));
            };
            // Only committed records: below the high watermark.
            let hw = log.high_watermark();
            return match log.read(from, max_bytes as usize, hw, true) {
                Ok(r) => Response::Log(r.records),
                Err(e) => Response::Refused(e.to_string()),
            };
        }
        let Some(raft) = self.get(group) else {
            return Response::Refused(format!("no raft group {group} here"));
        };
        match req {
            Request::AppendEntries(r) => match raft.append_entries(r).await {
                Ok(a) => Response::AppendEntries(a),
                Err(e) => Response::Refused(e.to_string()),
            },
            Request::Vote(r) => match raft.vote(r).await {
                Ok(v) => Response::Vote(v),
                Err(e) => Response::Refused(e.to_string()),
            },
            Request::InstallSnapshot(r) => match raft.install_snapshot(r).await {
                Ok(s) => Response::InstallSnapshot(s),
                Err(e) => Response::Refused(e.to_string()),
            },
            Request::Write(batch) => match raft.client_write(RecordBatch(batch)).await {
                Ok(r) => match r.data {
                    Some(a) => Response::Written {
                        end: a.last_offset + 1,
                    },
                    None => Response::Refused("committed without offsets".into()),
                },
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    Response::NotLeader(f.leader_id)
                }
                Err(e) => Response::Refused(e.to_string()),
            },
            Request::ReadLog { .. } => Response::Refused("handled above".into()),
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>;

/// A live connection to a peer.
struct Link {
    tx: mpsc::Sender<Frame>,
    pending: Pending,
    alive: Arc<std::sync::atomic::AtomicBool>,
}

/// One peer: its address and its (lazily opened, reopened after failure) connection.
pub struct PeerClient {
    /// `host:port`, resolved at every connection attempt (a peer's name may not resolve yet
    /// when this node starts, or may move to another address when its container is recreated).
    addr: String,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    next_correlation: AtomicU64,
    /// Whether the last connection attempt succeeded: a change is logged once, not every
    /// retry (each group's heartbeats retry several times a second).
    reachable: std::sync::atomic::AtomicBool,
}

impl PeerClient {
    fn new(addr: String) -> Self {
        PeerClient {
            addr,
            link: tokio::sync::Mutex::new(None),
            next_correlation: AtomicU64::new(1),
            reachable: std::sync::atomic::AtomicBool::new(true),
        }
    }

    async fn link(&self) -> io::Result<Arc<Link>> {
        let mut guard = self.link.lock().await;
        if let Some(l) = guard.as_ref().filter(|l| l.alive.load(Ordering::Acquire)) {
            return Ok(Arc::clone(l));
        }
        let stream = match TcpStream::connect(self.addr.as_str()).await {
            Ok(s) => {
                if !self.reachable.swap(true, Ordering::AcqRel) {
                    tracing::info!(addr = %self.addr, "raft peer reachable again");
                }
                s
            }
            Err(e) => {
                if self.reachable.swap(false, Ordering::AcqRel) {
                    tracing::warn!(addr = %self.addr, error = %e, "cannot reach raft peer; retrying (its partitions elect leaders among the others)");
                }
                return Err(e);
            }
        };
        stream.set_nodelay(true)?;
        let (mut r, w) = stream.into_split();
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let pending: Pending = Arc::default();
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let link = Arc::new(Link {
            tx,
            pending: Arc::clone(&pending),
            alive: Arc::clone(&alive),
        });
        let addr = self.addr.clone();
        let reader_addr = self.addr.clone();
        let writer_alive = Arc::clone(&alive);
        tokio::spawn(async move {
            if let Err(e) = write_frames(w, rx).await {
                tracing::debug!(%addr, error = %e, "raft peer write failed");
            }
            writer_alive.store(false, Ordering::Release);
        });
        tokio::spawn(async move {
            let why = loop {
                match read_frame(&mut r).await {
                    Ok(Some(frame)) => match decode_response(&frame) {
                        Ok((c, resp)) => {
                            if let Some(waiter) = lock(&pending).remove(&c) {
                                let _ = waiter.send(resp);
                            }
                        }
                        Err(why) => break format!("malformed raft response: {why}"),
                    },
                    Ok(None) => break "closed by the peer".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            tracing::debug!(addr = %reader_addr, %why, "raft peer connection ended");
            alive.store(false, Ordering::Release);
            // Dropping the waiters fails their calls; the next call reconnects.
            lock(&pending).clear();
        });
        *guard = Some(Arc::clone(&link));
        Ok(link)
    }

    /// Sends `req` for `group` and waits for the answer, at most `ttl`.
    async fn call(&self, group: &str, req: &Request, ttl: Duration) -> io::Result<Response> {
        let link = self.link().await?;
        let correlation = self.next_correlation.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&link.pending).insert(correlation, tx);
        let sent = async {
            link.tx
                .send(encode_request(correlation, group, req))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "connection closed"))?;
            rx.await
                .map_err(|_| io::Error::new(io::ErrorKind::ConnectionReset, "connection lost"))
        };
        match tokio::time::timeout(ttl, sent).await {
            Ok(r) => r,
            Err(_) => {
                lock(&link.pending).remove(&correlation);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer from {} in {ttl:?}", self.addr),
                ))
            }
        }
    }
}

/// Every peer this node talks to, by node id.
#[derive(Default)]
pub struct Peers {
    peers: RwLock<HashMap<u64, Arc<PeerClient>>>,
}

impl Peers {
    /// Sets (or changes) a peer's address; a changed address gets a fresh connection.
    pub fn set(&self, node: u64, addr: impl ToString) {
        let addr = addr.to_string();
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        if peers.get(&node).is_some_and(|p| p.addr == addr) {
            return;
        }
        peers.insert(node, Arc::new(PeerClient::new(addr)));
    }

    /// Asks `node` to commit `batch` in `group` as its leader: [`Response::Written`] with the
    /// batch's end offset, [`Response::NotLeader`], or [`Response::Refused`].
    pub async fn write(
        &self,
        node: u64,
        group: &str,
        batch: Bytes,
        ttl: Duration,
    ) -> io::Result<Response> {
        let peer = self.get(node).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no address for node {node}"),
            )
        })?;
        peer.call(group, &Request::Write(batch), ttl).await
    }

    fn get(&self, node: u64) -> Option<Arc<PeerClient>> {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .cloned()
    }
}

/// The `RaftNetworkFactory` of one group: its RPCs ride the shared peer connections.
#[derive(Clone)]
pub struct GroupNetwork {
    peers: Arc<Peers>,
    group: String,
    acks: Arc<AckTimes>,
}

/// When each peer last answered this group's AppendEntries (heartbeats included): how a leader
/// tells a live follower from a dead one on a partition nobody writes to.
#[derive(Debug, Default)]
pub struct AckTimes {
    last: Mutex<HashMap<u64, Instant>>,
}

impl AckTimes {
    fn record(&self, node: u64) {
        lock(&self.last).insert(node, Instant::now());
    }

    /// True if `node` answered within `within`.
    pub fn answered_within(&self, node: u64, within: Duration) -> bool {
        lock(&self.last)
            .get(&node)
            .is_some_and(|t| t.elapsed() <= within)
    }
}

impl GroupNetwork {
    /// The network of group `group` over `peers`.
    pub fn new(peers: Arc<Peers>, group: &str) -> Self {
        GroupNetwork {
            peers,
            group: group.to_string(),
            acks: Arc::default(),
        }
    }

    /// When each peer last answered this group's AppendEntries.
    pub fn ack_times(&self) -> Arc<AckTimes> {
        Arc::clone(&self.acks)
    }
}

impl CatchUpSource for GroupNetwork {
    fn read(
        &self,
        leader: u64,
        from: i64,
        max_bytes: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, String>> + Send + '_>>
    {
        Box::pin(async move {
            let peer = self
                .peers
                .get(leader)
                .ok_or_else(|| format!("no address for node {leader}"))?;
            let req = Request::ReadLog {
                from,
                max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
            };
            match peer
                .call(&self.group, &req, Duration::from_secs(30))
                .await
                .map_err(|e| e.to_string())?
            {
                Response::Log(b) => Ok(b),
                Response::Refused(why) => Err(why),
                other => Err(format!("unexpected answer {other:?}")),
            }
        })
    }
}

/// A group's view of one peer.
pub struct GroupPeer {
    peers: Arc<Peers>,
    group: String,
    target: u64,
    acks: Arc<AckTimes>,
}

impl RaftNetworkFactory<PartitionRaft> for GroupNetwork {
    type Network = GroupPeer;

    async fn new_client(&mut self, target: u64, _node: &EmptyNode) -> GroupPeer {
        GroupPeer {
            peers: Arc::clone(&self.peers),
            group: self.group.clone(),
            target,
            acks: Arc::clone(&self.acks),
        }
    }
}

fn unreachable(e: &io::Error) -> Unreachable {
    Unreachable::new(e)
}

impl GroupPeer {
    async fn call(&self, req: Request, option: &RPCOption) -> Result<Response, io::Error> {
        let peer = self.peers.get(self.target).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no address for node {}", self.target),
            )
        })?;
        peer.call(&self.group, &req, option.hard_ttl()).await
    }
}

/// The peer is up but its member of this group is not (not created yet, shutting down):
/// reported as unreachable so openraft backs off instead of retrying at once.
fn refused(why: String) -> Unreachable {
    Unreachable::new(&io::Error::other(why))
}

fn unexpected(resp: &Response) -> NetworkError {
    NetworkError::new(&io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected answer {resp:?}"),
    ))
}

impl RaftNetwork<PartitionRaft> for GroupPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<PartitionRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, EmptyNode, RaftError<u64>>> {
        match self.call(Request::AppendEntries(rpc), &option).await {
            Ok(Response::AppendEntries(a)) => {
                self.acks.record(self.target);
                Ok(a)
            }
            Ok(Response::Refused(why)) => Err(RPCError::Unreachable(refused(why))),
            Ok(other) => Err(RPCError::Network(unexpected(&other))),
            Err(e) => Err(RPCError::Unreachable(unreachable(&e))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<PartitionRaft>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, EmptyNode, RaftError<u64, InstallSnapshotError>>,
    > {
        match self.call(Request::InstallSnapshot(rpc), &option).await {
            Ok(Response::InstallSnapshot(s)) => Ok(s),
            Ok(Response::Refused(why)) => Err(RPCError::Unreachable(refused(why))),
            Ok(other) => Err(RPCError::Network(unexpected(&other))),
            Err(e) => Err(RPCError::Unreachable(unreachable(&e))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, EmptyNode, RaftError<u64>>> {
        match self.call(Request::Vote(rpc), &option).await {
            Ok(Response::Vote(v)) => Ok(v),
            Ok(Response::Refused(why)) => Err(RPCError::Unreachable(refused(why))),
            Ok(other) => Err(RPCError::Network(unexpected(&other))),
            Err(e) => Err(RPCError::Unreachable(unreachable(&e))),
        }
    }
}
