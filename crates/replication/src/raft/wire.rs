//! The node-to-node messages of partition Raft groups, framed for one shared connection per
//! peer: every request names its group (`<topic>-<partition>`) and carries a correlation id, so
//! requests of all groups interleave on the connection and answers may come back in any order.
//!
//! A frame is a big-endian u32 length and then the body; bodies larger than [`MAX_FRAME`] are
//! refused before anything is allocated. Record batches are carried as they are stored, and
//! decoded as slices of the received frame (no copy).

use bytes::Bytes;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Entry, EntryPayload};

use super::codec::{
    Reader, put_bytes, put_log_id, put_membership, put_snapshot_meta, put_u32, put_u64, put_vote,
};
use super::log_store::log_id;
use super::{PartitionRaft, RecordBatch};

/// Largest frame body accepted. Appends are bounded well below it by openraft's
/// `max_payload_entries` times `message.max.bytes`.
pub const MAX_FRAME: usize = 128 * 1024 * 1024;

/// A Raft RPC for one group.
#[derive(Debug)]
pub enum Request {
    /// Log replication and heartbeats.
    AppendEntries(AppendEntriesRequest<PartitionRaft>),
    /// An election.
    Vote(VoteRequest<u64>),
    /// A snapshot chunk.
    InstallSnapshot(InstallSnapshotRequest<PartitionRaft>),
    /// Committed batches from `from` on, at most `max_bytes` (at least one batch): how a
    /// replica that fell behind the leader's purged entries copies the records a snapshot
    /// names.
    ReadLog {
        /// First offset wanted.
        from: i64,
        /// Byte budget of the answer.
        max_bytes: u32,
    },
    /// A record batch for the group's leader to commit (a node that is not the metadata
    /// group's leader forwards its proposals this way).
    Write(Bytes),
}

/// The answer to a [`Request`].
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// To [`Request::AppendEntries`].
    AppendEntries(AppendEntriesResponse<u64>),
    /// To [`Request::Vote`].
    Vote(VoteResponse<u64>),
    /// To [`Request::InstallSnapshot`].
    InstallSnapshot(InstallSnapshotResponse<u64>),
    /// To [`Request::ReadLog`]: whole stored batches (empty at the high watermark).
    Log(Bytes),
    /// The receiver could not handle it (unknown group, member shutting down, snapshot
    /// refused); the sender treats it as a failed call and retries later.
    Refused(String),
    /// To [`Request::Write`]: committed; the batch's records end before `end`.
    Written {
        /// The offset after the batch's last record.
        end: i64,
    },
    /// To [`Request::Write`]: the receiver does not lead the group; the leader, if known.
    NotLeader(Option<u64>),
}

/// A frame body in pieces: encoded fields, with record batches as they are (no copy). Its
/// bytes are the pieces in order.
#[derive(Debug, Default)]
pub struct Frame {
    parts: Vec<Bytes>,
    len: usize,
}

impl Frame {
    fn push(&mut self, b: Bytes) {
        self.len += b.len();
        if !b.is_empty() {
            self.parts.push(b);
        }
    }

    /// Body length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty body.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces, in order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The body as one buffer (tests, small frames).
    pub fn to_bytes(&self) -> Bytes {
        let mut v = Vec::with_capacity(self.len);
        for p in &self.parts {
            v.extend_from_slice(p);
        }
        Bytes::from(v)
    }
}

impl From<Vec<u8>> for Frame {
    fn from(v: Vec<u8>) -> Self {
        let mut f = Frame::default();
        f.push(Bytes::from(v));
        f
    }
}

/// A request frame body: correlation id, group, request.
pub fn encode_request(correlation: u64, group: &str, req: &Request) -> Frame {
    let mut frame = Frame::default();
    let mut w = Vec::with_capacity(64);
    put_u64(&mut w, correlation);
    put_bytes(&mut w, group.as_bytes());
    match req {
        Request::AppendEntries(r) => {
            w.push(0);
            put_vote(&mut w, &r.vote);
            put_log_id(&mut w, r.prev_log_id);
            put_log_id(&mut w, r.leader_commit);
            put_u32(&mut w, r.entries.len());
            for e in &r.entries {
                put_u64(&mut w, e.log_id.leader_id.term);
                put_u64(&mut w, e.log_id.index);
                match &e.payload {
                    EntryPayload::Blank => w.push(0),
                    EntryPayload::Normal(RecordBatch(b)) => {
                        w.push(1);
                        put_u32(&mut w, b.len());
                        // The batch itself goes out as it is, between encoded pieces.
                        frame.push(Bytes::from(std::mem::take(&mut w)));
                        frame.push(b.clone());
                    }
                    EntryPayload::Membership(m) => {
                        w.push(2);
                        put_membership(&mut w, m);
                    }
                }
            }
        }
        Request::Vote(r) => {
            w.push(1);
            put_vote(&mut w, &r.vote);
            put_log_id(&mut w, r.last_log_id);
        }
        Request::InstallSnapshot(r) => {
            w.push(2);
            put_vote(&mut w, &r.vote);
            put_snapshot_meta(&mut w, &r.meta);
            put_u64(&mut w, r.offset);
            put_bytes(&mut w, &r.data);
            w.push(u8::from(r.done));
        }
        Request::ReadLog { from, max_bytes } => {
            w.push(3);
            w.extend_from_slice(&from.to_be_bytes());
            w.extend_from_slice(&max_bytes.to_be_bytes());
        }
        Request::Write(b) => {
            w.push(4);
            put_u32(&mut w, b.len());
            frame.push(Bytes::from(std::mem::take(&mut w)));
            frame.push(b.clone());
        }
    }
    frame.push(Bytes::from(w));
    frame
}

/// Decodes a request frame body; record batches are slices of `frame`.
pub fn decode_request(frame: &Bytes) -> Result<(u64, String, Request), String> {
    let mut r = Reader { buf: frame };
    let correlation = r.u64()?;
    let group = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| "group is not UTF-8")?;
    let req = match r.u8()? {
        0 => {
            let vote = r.vote()?;
            let prev_log_id = r.log_id()?;
            let leader_commit = r.log_id()?;
            let n = r.count()?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                let term = r.u64()?;
                let index = r.u64()?;
                let payload = match r.u8()? {
                    0 => EntryPayload::Blank,
                    1 => {
                        let len = r.count()?;
                        let start = frame.len() - r.buf.len();
                        r.take(len)?;
                        EntryPayload::Normal(RecordBatch(frame.slice(start..start + len)))
                    }
                    2 => EntryPayload::Membership(r.membership()?),
                    k => return Err(format!("unknown entry kind {k}")),
                };
                entries.push(Entry {
                    log_id: log_id(term, index),
                    payload,
                });
            }
            Request::AppendEntries(AppendEntriesRequest {
                vote,
                prev_log_id,
                entries,
                leader_commit,
            })
        }
        1 => Request::Vote(VoteRequest {
            vote: r.vote()?,
            last_log_id: r.log_id()?,
        }),
        2 => Request::InstallSnapshot(InstallSnapshotRequest {
            vote: r.vote()?,
            meta: r.snapshot_meta()?,
            offset: r.u64()?,
            data: r.bytes()?.to_vec(),
            done: r.flag()?,
        }),
        3 => Request::ReadLog {
            from: r.i64()?,
            max_bytes: r.u32()?,
        },
        4 => {
            let len = r.count()?;
            let start = frame.len() - r.buf.len();
            r.take(len)?;
            Request::Write(frame.slice(start..start + len))
        }
        k => return Err(format!("unknown request kind {k}")),
    };
    if !r.buf.is_empty() {
        return Err(format!("{} trailing bytes", r.buf.len()));
    }
    Ok((correlation, group, req))
}

/// A response frame body: correlation id, response.
pub fn encode_response(correlation: u64, resp: &Response) -> Frame {
    let mut frame = Frame::default();
    let mut w = Vec::with_capacity(48);
    put_u64(&mut w, correlation);
    match resp {
        Response::AppendEntries(a) => {
            w.push(0);
            match a {
                AppendEntriesResponse::Success => w.push(0),
                AppendEntriesResponse::PartialSuccess(id) => {
                    w.push(1);
                    put_log_id(&mut w, *id);
                }
                AppendEntriesResponse::Conflict => w.push(2),
                AppendEntriesResponse::HigherVote(v) => {
                    w.push(3);
                    put_vote(&mut w, v);
                }
            }
        }
        Response::Vote(v) => {
            w.push(1);
            put_vote(&mut w, &v.vote);
            w.push(u8::from(v.vote_granted));
            put_log_id(&mut w, v.last_log_id);
        }
        Response::InstallSnapshot(s) => {
            w.push(2);
            put_vote(&mut w, &s.vote);
        }
        Response::Refused(why) => {
            w.push(3);
            put_bytes(&mut w, why.as_bytes());
        }
        Response::Log(batches) => {
            w.push(4);
            put_u32(&mut w, batches.len());
            frame.push(Bytes::from(std::mem::take(&mut w)));
            frame.push(batches.clone());
        }
        Response::Written { end } => {
            w.push(5);
            w.extend_from_slice(&end.to_be_bytes());
        }
        Response::NotLeader(leader) => {
            w.push(6);
            match leader {
                Some(id) => {
                    w.push(1);
                    put_u64(&mut w, *id);
                }
                None => w.push(0),
            }
        }
    }
    frame.push(Bytes::from(w));
    frame
}

/// Decodes a response frame body; batches are slices of `frame`.
pub fn decode_response(frame: &Bytes) -> Result<(u64, Response), String> {
    let mut r = Reader { buf: frame };
    let correlation = r.u64()?;
    let resp = match r.u8()? {
        0 => Response::AppendEntries(match r.u8()? {
            0 => AppendEntriesResponse::Success,
            1 => AppendEntriesResponse::PartialSuccess(r.log_id()?),
            2 => AppendEntriesResponse::Conflict,
            3 => AppendEntriesResponse::HigherVote(r.vote()?),
            k => return Err(format!("unknown append response {k}")),
        }),
        1 => Response::Vote(VoteResponse {
            vote: r.vote()?,
            vote_granted: r.flag()?,
            last_log_id: r.log_id()?,
        }),
        2 => Response::InstallSnapshot(InstallSnapshotResponse { vote: r.vote()? }),
        3 => Response::Refused(String::from_utf8_lossy(r.bytes()?).into_owned()),
        4 => {
            let len = r.count()?;
            let start = frame.len() - r.buf.len();
            r.take(len)?;
            Response::Log(frame.slice(start..start + len))
        }
        5 => Response::Written { end: r.i64()? },
        6 => Response::NotLeader(if r.flag()? { Some(r.u64()?) } else { None }),
        k => return Err(format!("unknown response kind {k}")),
    };
    if !r.buf.is_empty() {
        return Err(format!("{} trailing bytes", r.buf.len()));
    }
    Ok((correlation, resp))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::{Membership, SnapshotMeta, StoredMembership, Vote};

    use super::*;

    fn append() -> AppendEntriesRequest<PartitionRaft> {
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(2, 9)),
            leader_commit: Some(log_id(2, 8)),
            entries: vec![
                Entry {
                    log_id: log_id(3, 10),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: log_id(3, 11),
                    payload: EntryPayload::Normal(RecordBatch(Bytes::from_static(b"batch"))),
                },
                Entry {
                    log_id: log_id(3, 12),
                    payload: EntryPayload::Membership(Membership::new(
                        vec![BTreeSet::from([1, 2, 3])],
                        None,
                    )),
                },
            ],
        }
    }

    #[test]
    fn requests_round_trip() {
        let frame = encode_request(7, "orders-3", &Request::AppendEntries(append())).to_bytes();
        let (c, g, req) = decode_request(&frame).expect("decode");
        assert_eq!((c, g.as_str()), (7, "orders-3"));
        match req {
            Request::AppendEntries(a) => {
                let want = append();
                assert_eq!(
                    (a.vote, a.prev_log_id, a.leader_commit),
                    (want.vote, want.prev_log_id, want.leader_commit)
                );
                assert_eq!(a.entries, want.entries);
            }
            other => panic!("decoded {other:?}"),
        }
        let snap = InstallSnapshotRequest::<PartitionRaft> {
            vote: Vote::new(4, 2),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(4, 100)),
                last_membership: StoredMembership::new(
                    Some(log_id(1, 0)),
                    Membership::new(vec![BTreeSet::from([1, 2])], None),
                ),
                snapshot_id: "4-100".to_string(),
            },
            offset: 0,
            data: vec![1, 2, 3],
            done: true,
        };
        let frame = encode_request(8, "g", &Request::InstallSnapshot(snap.clone())).to_bytes();
        match decode_request(&frame).expect("decode").2 {
            Request::InstallSnapshot(s) => assert_eq!(s, snap),
            other => panic!("decoded {other:?}"),
        }
        let read = Request::ReadLog {
            from: 1 << 40,
            max_bytes: 1 << 20,
        };
        let frame = encode_request(9, "g", &read).to_bytes();
        match decode_request(&frame).expect("decode").2 {
            Request::ReadLog { from, max_bytes } => {
                assert_eq!((from, max_bytes), (1 << 40, 1 << 20))
            }
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn responses_round_trip() {
        for resp in [
            Response::AppendEntries(AppendEntriesResponse::Success),
            Response::AppendEntries(AppendEntriesResponse::PartialSuccess(Some(log_id(2, 5)))),
            Response::AppendEntries(AppendEntriesResponse::Conflict),
            Response::AppendEntries(AppendEntriesResponse::HigherVote(Vote::new(9, 3))),
            Response::Vote(VoteResponse {
                vote: Vote::new(5, 2),
                vote_granted: true,
                last_log_id: Some(log_id(4, 40)),
            }),
            Response::InstallSnapshot(InstallSnapshotResponse {
                vote: Vote::new_committed(5, 2),
            }),
            Response::Refused("no such group".to_string()),
            Response::Log(Bytes::from_static(b"some batches")),
            Response::Log(Bytes::new()),
        ] {
            let frame = encode_response(11, &resp).to_bytes();
            assert_eq!(decode_response(&frame), Ok((11, resp)));
        }
    }

    #[test]
    fn garbage_is_refused() {
        let frame = encode_request(7, "orders-3", &Request::AppendEntries(append())).to_bytes();
        for n in 0..frame.len() {
            assert!(
                decode_request(&Bytes::copy_from_slice(&frame[..n])).is_err(),
                "a {n}-byte prefix decoded"
            );
        }
        let mut longer = frame.to_vec();
        longer.push(0);
        assert!(decode_request(&Bytes::from(longer)).is_err());
    }
}
