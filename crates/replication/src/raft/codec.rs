//! The binary primitives `raft-state` and the node-to-node wire share: big-endian integers,
//! optional values, log ids, votes, memberships and snapshot meta, and a bounds-checked reader
//! that refuses a short or inconsistent input instead of trusting it.

use std::collections::BTreeSet;

use openraft::{
    CommittedLeaderId, EmptyNode, LeaderId, LogId, Membership, SnapshotMeta, StoredMembership, Vote,
};

pub(crate) fn put_u64(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u32(w: &mut Vec<u8>, n: usize) {
    // Counts here are entries and node ids of one partition: far below u32::MAX.
    w.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

pub(crate) fn put_opt_u64(w: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => w.push(0),
        Some(v) => {
            w.push(1);
            put_u64(w, v);
        }
    }
}

pub(crate) fn put_log_id(w: &mut Vec<u8>, id: Option<LogId<u64>>) {
    match id {
        None => w.push(0),
        Some(id) => {
            w.push(1);
            put_u64(w, id.leader_id.term);
            put_u64(w, id.index);
        }
    }
}

pub(crate) fn put_membership(w: &mut Vec<u8>, m: &Membership<u64, EmptyNode>) {
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

/// A bounds-checked reader.
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("truncated".to_string());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(i64::from_be_bytes(b))
    }

    pub(crate) fn count(&mut self) -> Result<usize, String> {
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

    pub(crate) fn flag(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("bad flag byte {b}")),
        }
    }

    pub(crate) fn opt_u64(&mut self) -> Result<Option<u64>, String> {
        Ok(if self.flag()? {
            Some(self.u64()?)
        } else {
            None
        })
    }

    pub(crate) fn log_id(&mut self) -> Result<Option<LogId<u64>>, String> {
        if !self.flag()? {
            return Ok(None);
        }
        let term = self.u64()?;
        let index = self.u64()?;
        Ok(Some(LogId::new(CommittedLeaderId::new(term, 0), index)))
    }

    pub(crate) fn membership(&mut self) -> Result<Membership<u64, EmptyNode>, String> {
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

pub(crate) fn put_vote(w: &mut Vec<u8>, v: &Vote<u64>) {
    put_u64(w, v.leader_id.term);
    put_opt_u64(w, v.leader_id.voted_for);
    w.push(u8::from(v.committed));
}

pub(crate) fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    put_u32(w, b.len());
    w.extend_from_slice(b);
}

pub(crate) fn put_snapshot_meta(w: &mut Vec<u8>, meta: &SnapshotMeta<u64, EmptyNode>) {
    put_log_id(w, meta.last_log_id);
    put_log_id(w, *meta.last_membership.log_id());
    put_membership(w, meta.last_membership.membership());
    put_bytes(w, meta.snapshot_id.as_bytes());
}

impl Reader<'_> {
    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(b))
    }

    pub(crate) fn vote(&mut self) -> Result<Vote<u64>, String> {
        let term = self.u64()?;
        let voted_for = self.opt_u64()?;
        let committed = self.flag()?;
        Ok(Vote {
            leader_id: LeaderId { term, voted_for },
            committed,
        })
    }

    pub(crate) fn bytes(&mut self) -> Result<&[u8], String> {
        let n = self.count()?;
        self.take(n)
    }

    pub(crate) fn snapshot_meta(&mut self) -> Result<SnapshotMeta<u64, EmptyNode>, String> {
        let last_log_id = self.log_id()?;
        let membership_log_id = self.log_id()?;
        let membership = self.membership()?;
        let snapshot_id = String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| "snapshot id is not UTF-8".to_string())?;
        Ok(SnapshotMeta {
            last_log_id,
            last_membership: StoredMembership::new(membership_log_id, membership),
            snapshot_id,
        })
    }
}
