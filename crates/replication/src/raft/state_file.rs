//! `raft-state`: the small file beside a partition's segments that holds what the segment log
//! cannot: the vote, where the Raft log starts (last purged log id and the offset of the next
//! data entry), the entries that carry no records (a new leader's blank entry, membership
//! changes) and the last snapshot's meta.
//!
//! It changes rarely (elections, membership changes, purges, truncations), so it is rewritten
//! whole: written to `raft-state.tmp`, fsynced, renamed over, directory fsynced. A CRC32C over
//! the contents refuses a damaged file instead of trusting it.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use openraft::{
    CommittedLeaderId, EmptyNode, LeaderId, LogId, Membership, SnapshotMeta, StoredMembership, Vote,
};

const MAGIC: &[u8; 4] = b"SLRS";
const VERSION: u8 = 1;
/// The file's name inside the partition directory.
pub(crate) const FILE_NAME: &str = "raft-state";

/// An entry that is not a record batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MetaPayload {
    /// The entry a new leader appends at the start of its term.
    Blank,
    /// A membership change.
    Membership(Membership<u64, EmptyNode>),
}

/// A non-data entry and its place in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetaEntry {
    pub(crate) index: u64,
    pub(crate) term: u64,
    pub(crate) payload: MetaPayload,
}

/// Everything `raft-state` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RaftState {
    pub(crate) vote: Option<Vote<u64>>,
    pub(crate) last_purged: Option<LogId<u64>>,
    /// Index of the first entry held (after `last_purged`; later if the log began with a gap).
    pub(crate) first_index: u64,
    /// Offset of the first record batch whose entry is at or after `first_index`.
    pub(crate) anchor_offset: i64,
    /// Non-data entries after `last_purged`, in index order.
    pub(crate) meta_entries: Vec<MetaEntry>,
    pub(crate) snapshot: Option<SnapshotMeta<u64, EmptyNode>>,
    /// Offset after the last record batch the snapshot covers.
    pub(crate) snapshot_end_offset: i64,
    /// Term of the batch that ends at `snapshot_end_offset` (0 if none).
    pub(crate) snapshot_term: u64,
}

pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Reads the file; `Ok(None)` if there is none (a partition that never ran Raft).
pub(crate) fn load(dir: &Path) -> io::Result<Option<RaftState>> {
    let bytes = match fs::read(path(dir)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    decode(&bytes).map(Some).map_err(|why| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is unreadable: {why}", path(dir).display()),
        )
    })
}

/// Replaces the file atomically and durably.
pub(crate) fn store(dir: &Path, state: &RaftState) -> io::Result<()> {
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&encode(state))?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path(dir))?;
    File::open(dir)?.sync_all()
}

fn encode(s: &RaftState) -> Vec<u8> {
    let mut w = Vec::with_capacity(128);
    w.extend_from_slice(MAGIC);
    w.push(VERSION);
    match &s.vote {
        None => w.push(0),
        Some(v) => {
            w.push(1);
            put_u64(&mut w, v.leader_id.term);
            put_opt_u64(&mut w, v.leader_id.voted_for);
            w.push(u8::from(v.committed));
        }
    }
    put_log_id(&mut w, s.last_purged);
    put_u64(&mut w, s.first_index);
    w.extend_from_slice(&s.anchor_offset.to_be_bytes());
    put_u32(&mut w, s.meta_entries.len());
    for e in &s.meta_entries {
        put_u64(&mut w, e.index);
        put_u64(&mut w, e.term);
        match &e.payload {
            MetaPayload::Blank => w.push(0),
            MetaPayload::Membership(m) => {
                w.push(1);
                put_membership(&mut w, m);
            }
        }
    }
    match &s.snapshot {
        None => w.push(0),
        Some(meta) => {
            w.push(1);
            put_log_id(&mut w, meta.last_log_id);
            put_log_id(&mut w, *meta.last_membership.log_id());
            put_membership(&mut w, meta.last_membership.membership());
            put_u32(&mut w, meta.snapshot_id.len());
            w.extend_from_slice(meta.snapshot_id.as_bytes());
        }
    }
    w.extend_from_slice(&s.snapshot_end_offset.to_be_bytes());
    put_u64(&mut w, s.snapshot_term);
    let crc = crc32c::crc32c(&w);
    w.extend_from_slice(&crc.to_be_bytes());
    w
}

fn put_u64(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(w: &mut Vec<u8>, n: usize) {
    // Counts here are entries and node ids of one partition: far below u32::MAX.
    w.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_opt_u64(w: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => w.push(0),
        Some(v) => {
            w.push(1);
            put_u64(w, v);
        }
    }
}

fn put_log_id(w: &mut Vec<u8>, id: Option<LogId<u64>>) {
    match id {
        None => w.push(0),
        Some(id) => {
            w.push(1);
            put_u64(w, id.leader_id.term);
            put_u64(w, id.index);
        }
    }
}

fn put_membership(w: &mut Vec<u8>, m: &Membership<u64, EmptyNode>) {
    let configs = m.get_joint_config();
    put_u32(w, configs.len());
    for c in configs {
        put_u32(w, c.len());
        for id in c {
            put_u64(w, *id);
        }
    }
    let nodes: Vec<u64> = m.nodes().map(|(id, _)| *id).collect();
    put_u32(w, nodes.len());
    for id in nodes {
        put_u64(w, id);
    }
}

/// A bounds-checked reader over the file's bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("truncated".to_string());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    fn i64(&mut self) -> Result<i64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(i64::from_be_bytes(b))
    }

    fn count(&mut self) -> Result<usize, String> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        let n = u32::from_be_bytes(b) as usize;
        // Every counted item is at least one byte: a count past the rest is corrupt, and
        // refusing it here keeps a damaged file from asking for a huge allocation.
        if n > self.buf.len() {
            return Err(format!("count {n} exceeds the file"));
        }
        Ok(n)
    }

    fn flag(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("bad flag byte {b}")),
        }
    }

    fn opt_u64(&mut self) -> Result<Option<u64>, String> {
        Ok(if self.flag()? {
            Some(self.u64()?)
        } else {
            None
        })
    }

    fn log_id(&mut self) -> Result<Option<LogId<u64>>, String> {
        if !self.flag()? {
            return Ok(None);
        }
        let term = self.u64()?;
        let index = self.u64()?;
        Ok(Some(LogId::new(CommittedLeaderId::new(term, 0), index)))
    }

    fn membership(&mut self) -> Result<Membership<u64, EmptyNode>, String> {
        let n = self.count()?;
        let mut configs = Vec::with_capacity(n);
        for _ in 0..n {
            let m = self.count()?;
            let mut c = BTreeSet::new();
            for _ in 0..m {
                c.insert(self.u64()?);
            }
            configs.push(c);
        }
        let n = self.count()?;
        let mut nodes = BTreeSet::new();
        for _ in 0..n {
            nodes.insert(self.u64()?);
        }
        Ok(Membership::new(configs, Some(nodes)))
    }
}

fn decode(bytes: &[u8]) -> Result<RaftState, String> {
    if bytes.len() < MAGIC.len() + 1 + 4 {
        return Err("too short".to_string());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let mut c = [0u8; 4];
    c.copy_from_slice(crc);
    if crc32c::crc32c(body) != u32::from_be_bytes(c) {
        return Err("CRC32C mismatch".to_string());
    }
    let mut r = Reader { buf: body };
    if r.take(4)? != MAGIC {
        return Err("not a raft-state file".to_string());
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(format!("version {version} is not {VERSION}"));
    }
    let vote = if r.flag()? {
        let term = r.u64()?;
        let voted_for = r.opt_u64()?;
        let committed = r.flag()?;
        Some(Vote {
            leader_id: LeaderId { term, voted_for },
            committed,
        })
    } else {
        None
    };
    let last_purged = r.log_id()?;
    let first_index = r.u64()?;
    let anchor_offset = r.i64()?;
    let n = r.count()?;
    let mut meta_entries = Vec::with_capacity(n);
    for _ in 0..n {
        let index = r.u64()?;
        let term = r.u64()?;
        let payload = match r.u8()? {
            0 => MetaPayload::Blank,
            1 => MetaPayload::Membership(r.membership()?),
            k => return Err(format!("unknown entry kind {k}")),
        };
        meta_entries.push(MetaEntry {
            index,
            term,
            payload,
        });
    }
    let snapshot = if r.flag()? {
        let last_log_id = r.log_id()?;
        let membership_log_id = r.log_id()?;
        let membership = r.membership()?;
        let n = r.count()?;
        let snapshot_id = String::from_utf8(r.take(n)?.to_vec())
            .map_err(|_| "snapshot id is not UTF-8".to_string())?;
        Some(SnapshotMeta {
            last_log_id,
            last_membership: StoredMembership::new(membership_log_id, membership),
            snapshot_id,
        })
    } else {
        None
    };
    let snapshot_end_offset = r.i64()?;
    let snapshot_term = r.u64()?;
    if !r.buf.is_empty() {
        return Err(format!("{} trailing bytes", r.buf.len()));
    }
    Ok(RaftState {
        vote,
        last_purged,
        first_index,
        anchor_offset,
        meta_entries,
        snapshot,
        snapshot_end_offset,
        snapshot_term,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RaftState {
        let m = Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            Some(BTreeSet::from([1, 2, 3, 4])),
        );
        RaftState {
            vote: Some(Vote::new_committed(7, 2)),
            last_purged: Some(LogId::new(CommittedLeaderId::new(3, 0), 41)),
            first_index: 42,
            anchor_offset: 9000,
            meta_entries: vec![
                MetaEntry {
                    index: 42,
                    term: 4,
                    payload: MetaPayload::Blank,
                },
                MetaEntry {
                    index: 50,
                    term: 4,
                    payload: MetaPayload::Membership(m.clone()),
                },
            ],
            snapshot: Some(SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(3, 0), 41)),
                last_membership: StoredMembership::new(
                    Some(LogId::new(CommittedLeaderId::new(1, 0), 0)),
                    m,
                ),
                snapshot_id: "3-41".to_string(),
            }),
            snapshot_end_offset: 8999,
            snapshot_term: 3,
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(decode(&encode(&s)), Ok(s));
        let empty = RaftState::default();
        assert_eq!(decode(&encode(&empty)), Ok(empty));
    }

    #[test]
    fn damage_is_refused_not_trusted() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flipped byte {i} accepted");
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "prefix of {n} bytes accepted");
        }
    }

    #[test]
    fn store_then_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()).expect("load"), None);
        store(dir.path(), &sample()).expect("store");
        assert_eq!(load(dir.path()).expect("load"), Some(sample()));
    }
}
