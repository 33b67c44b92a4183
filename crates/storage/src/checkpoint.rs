//! The per-partition checkpoint file and the leader epoch cache it carries.
//!
//! The checkpoint says "everything below `recovery_point` is fsynced and verified", and carries
//! the state that would otherwise take a scan of the whole log to rebuild: log start offset,
//! producer state and leader epochs as of the recovery point. It is replaced atomically (write
//! temp, fsync, rename, fsync directory) and CRC'd, so a torn write is detected, never trusted.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use crate::producer_state::ProducerState;

/// File name inside the partition directory.
pub(crate) const CHECKPOINT_FILE: &str = "partition.checkpoint";
const MAGIC: &[u8; 4] = b"SLCP";
/// Version 2 added `cleaned_to`; version 1 files are still read (as "nothing cleaned").
const VERSION: u8 = 2;

/// `(epoch, start offset)` pairs, Kafka's `LeaderEpochFileCache`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EpochCache {
    pub(crate) entries: Vec<(i32, i64)>,
}

impl EpochCache {
    /// Records that `epoch` starts at `offset` if it is newer than the latest epoch.
    pub(crate) fn assign(&mut self, epoch: i32, offset: i64) {
        if epoch < 0 {
            return;
        }
        match self.entries.last() {
            Some(&(e, _)) if e >= epoch => {}
            _ => self.entries.push((epoch, offset)),
        }
    }

    /// The latest epoch, if any.
    pub(crate) fn latest(&self) -> Option<i32> {
        self.entries.last().map(|e| e.0)
    }

    /// Kafka's `endOffsetFor`: for the latest epoch the log end; otherwise the start offset of
    /// the next higher epoch, paired with the largest epoch <= the one asked for.
    pub(crate) fn end_offset_for(&self, epoch: i32, log_end: i64) -> Option<(i32, i64)> {
        if epoch < 0 {
            return None;
        }
        if self.latest() == Some(epoch) {
            return Some((epoch, log_end));
        }
        let higher = self.entries.iter().find(|(e, _)| *e > epoch)?;
        match self.entries.iter().rev().find(|(e, _)| *e <= epoch) {
            Some(&(floor, _)) => Some((floor, higher.1)),
            None => Some((epoch, higher.1)),
        }
    }

    /// Drops epochs that start at or after `offset` (log truncated there).
    pub(crate) fn truncate_from_end(&mut self, offset: i64) {
        self.entries.retain(|&(_, start)| start < offset);
    }

    /// Moves the earliest epoch's start up to the new log start.
    pub(crate) fn truncate_from_start(&mut self, offset: i64) {
        let keep_from = self.entries.iter().rposition(|&(_, start)| start <= offset);
        if let Some(i) = keep_from {
            self.entries.drain(..i);
            if let Some(first) = self.entries.first_mut() {
                first.1 = first.1.max(offset);
            }
        }
    }
}

/// What the checkpoint file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// The log was closed cleanly: nothing after the recovery point exists.
    pub(crate) clean_shutdown: bool,
    pub(crate) log_start: i64,
    pub(crate) recovery_point: i64,
    /// Base offset of the segment the recovery point lies in and the byte position there.
    pub(crate) rp_segment: i64,
    pub(crate) rp_position: u64,
    /// Largest timestamp (and its batch's last offset) in that segment below the recovery point.
    pub(crate) rp_segment_max_ts: Option<(i64, i64)>,
    /// When the segment's first batch arrived (drives `segment.ms`).
    pub(crate) rp_segment_first_ms: Option<i64>,
    pub(crate) epochs: EpochCache,
    pub(crate) producers: ProducerState,
    /// The log cleaner's "cleaned up to" offset: everything below it was compacted once, so
    /// only what lies above it counts as dirty (Kafka's cleaner-offset-checkpoint).
    pub(crate) cleaned_to: i64,
}

/// Cursor over a byte slice for decoding.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.buf.len() < N {
            return None;
        }
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[..N]);
        self.buf = &self.buf[N..];
        Some(a)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|a| a[0])
    }
    pub(crate) fn i16(&mut self) -> Option<i16> {
        self.take().map(i16::from_be_bytes)
    }
    pub(crate) fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_be_bytes)
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }
    pub(crate) fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_be_bytes)
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_be_bytes)
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

fn put_opt_pair(out: &mut Vec<u8>, v: Option<(i64, i64)>) {
    match v {
        Some((a, b)) => {
            out.push(1);
            out.extend_from_slice(&a.to_be_bytes());
            out.extend_from_slice(&b.to_be_bytes());
        }
        None => out.push(0),
    }
}

impl Checkpoint {
    /// `SLCP`, version, fields, then a CRC32C of everything before it.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.clean_shutdown as u8);
        out.extend_from_slice(&self.log_start.to_be_bytes());
        out.extend_from_slice(&self.recovery_point.to_be_bytes());
        out.extend_from_slice(&self.rp_segment.to_be_bytes());
        out.extend_from_slice(&self.rp_position.to_be_bytes());
        put_opt_pair(&mut out, self.rp_segment_max_ts);
        match self.rp_segment_first_ms {
            Some(ms) => {
                out.push(1);
                out.extend_from_slice(&ms.to_be_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&(self.epochs.entries.len() as u32).to_be_bytes());
        for (e, start) in &self.epochs.entries {
            out.extend_from_slice(&e.to_be_bytes());
            out.extend_from_slice(&start.to_be_bytes());
        }
        self.producers.encode(&mut out);
        out.extend_from_slice(&self.cleaned_to.to_be_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes a checkpoint, or explains why it cannot be trusted.
    pub(crate) fn decode(buf: &[u8]) -> Result<Checkpoint, String> {
        if buf.len() < MAGIC.len() + 2 + 4 || &buf[..4] != MAGIC {
            return Err("not a checkpoint file".into());
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32c::crc32c(body) != stored {
            return Err("checkpoint fails its CRC32C".into());
        }
        let version = body[4];
        if version != VERSION && version != 1 {
            return Err(format!(
                "checkpoint format version {} is not supported",
                body[4]
            ));
        }
        let mut r = Reader::new(&body[5..]);
        let parse = |r: &mut Reader<'_>| -> Option<Checkpoint> {
            let clean_shutdown = r.u8()? == 1;
            let log_start = r.i64()?;
            let recovery_point = r.i64()?;
            let rp_segment = r.i64()?;
            let rp_position = r.u64()?;
            let rp_segment_max_ts = match r.u8()? {
                1 => Some((r.i64()?, r.i64()?)),
                _ => None,
            };
            let rp_segment_first_ms = match r.u8()? {
                1 => Some(r.i64()?),
                _ => None,
            };
            let n = r.u32()?;
            let mut epochs = EpochCache::default();
            for _ in 0..n {
                let e = r.i32()?;
                let start = r.i64()?;
                epochs.entries.push((e, start));
            }
            let producers = ProducerState::decode(r)?;
            let cleaned_to = if version >= 2 { r.i64()? } else { 0 };
            Some(Checkpoint {
                clean_shutdown,
                log_start,
                recovery_point,
                rp_segment,
                rp_position,
                rp_segment_max_ts,
                rp_segment_first_ms,
                epochs,
                producers,
                cleaned_to,
            })
        };
        let cp = parse(&mut r).ok_or("checkpoint is truncated")?;
        if !r.is_empty() {
            return Err("checkpoint has trailing bytes".into());
        }
        Ok(cp)
    }

    /// Reads the checkpoint in `dir`: `Ok(None)` if there is none.
    pub(crate) fn read(dir: &Path) -> io::Result<Option<Result<Checkpoint, String>>> {
        match fs::read(dir.join(CHECKPOINT_FILE)) {
            Ok(buf) => Ok(Some(Checkpoint::decode(&buf))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Atomically replaces the checkpoint in `dir`.
    pub(crate) fn write(&self, dir: &Path) -> io::Result<()> {
        write_atomically(dir, CHECKPOINT_FILE, &self.encode())
    }
}

/// Writes `name` in `dir` so that a crash leaves either the old or the new content.
pub(crate) fn write_atomically(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_cache_answers_like_kafka() {
        let mut c = EpochCache::default();
        c.assign(1, 0);
        c.assign(1, 5);
        c.assign(3, 10);
        c.assign(2, 12); // older epoch never goes in
        c.assign(5, 20);
        assert_eq!(c.entries, vec![(1, 0), (3, 10), (5, 20)]);
        assert_eq!(c.end_offset_for(5, 30), Some((5, 30)));
        assert_eq!(c.end_offset_for(3, 30), Some((3, 20)));
        assert_eq!(c.end_offset_for(4, 30), Some((3, 20)));
        assert_eq!(c.end_offset_for(2, 30), Some((1, 10)));
        assert_eq!(c.end_offset_for(0, 30), Some((0, 0)));
        assert_eq!(c.end_offset_for(6, 30), None);
        assert_eq!(c.end_offset_for(-1, 30), None);
        c.truncate_from_end(20);
        assert_eq!(c.entries, vec![(1, 0), (3, 10)]);
        c.truncate_from_start(12);
        assert_eq!(c.entries, vec![(3, 12)]);
    }

    #[test]
    fn checkpoint_round_trips_and_detects_damage() {
        let mut cp = Checkpoint {
            clean_shutdown: true,
            log_start: 3,
            recovery_point: 99,
            rp_segment: 50,
            rp_position: 4096,
            rp_segment_max_ts: Some((7, 98)),
            rp_segment_first_ms: Some(1),
            cleaned_to: 42,
            ..Default::default()
        };
        cp.epochs.assign(2, 3);
        let buf = cp.encode();
        assert_eq!(Checkpoint::decode(&buf), Ok(cp));
        let mut bad = buf.clone();
        bad[10] ^= 1;
        assert!(Checkpoint::decode(&bad).is_err());
        assert!(Checkpoint::decode(&buf[..buf.len() - 1]).is_err());
    }
}
