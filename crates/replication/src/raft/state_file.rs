//! `raft-state`: the small file beside a partition's segments that holds what the segment log
//! cannot: the vote, where the Raft log starts (last purged log id and the offset of the next
//! data entry), the entries that carry no records (a new leader's blank entry, membership
//! changes) and the last snapshot's meta.
//!
//! It changes rarely (elections, membership changes, purges, truncations), so it is rewritten
//! whole: written to `raft-state.tmp`, fsynced, renamed over, directory fsynced. A CRC32C over
//! the contents refuses a damaged file instead of trusting it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use openraft::{EmptyNode, LogId, Membership, SnapshotMeta, Vote};

use super::codec::{
    Reader, put_log_id, put_membership, put_snapshot_meta, put_u32, put_u64, put_vote,
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
            put_vote(&mut w, v);
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
            put_snapshot_meta(&mut w, meta);
        }
    }
    w.extend_from_slice(&s.snapshot_end_offset.to_be_bytes());
    put_u64(&mut w, s.snapshot_term);
    let crc = crc32c::crc32c(&w);
    w.extend_from_slice(&crc.to_be_bytes());
    w
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
    let vote = if r.flag()? { Some(r.vote()?) } else { None };
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
        Some(r.snapshot_meta()?)
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
    use std::collections::BTreeSet;

    use openraft::{CommittedLeaderId, StoredMembership};

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
