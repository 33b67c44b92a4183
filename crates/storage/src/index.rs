//! Sparse index files: `.index` (relative offset u32, file position u32) and `.timeindex`
//! (timestamp i64, relative offset u32), big-endian as Kafka lays them out.
//!
//! The active segment keeps its entries in memory and writes them in bulk; sealed segments are
//! searched with positional reads so memory does not grow with the size of the log.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes per `.index` entry.
pub(crate) const OFFSET_ENTRY: usize = 8;
/// Bytes per `.timeindex` entry.
pub(crate) const TIME_ENTRY: usize = 12;

/// `relative offset -> position of the batch starting at that offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub(crate) rel: u32,
    pub(crate) pos: u32,
}

/// `largest timestamp so far -> relative offset of the batch that carried it`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub(crate) ts: i64,
    pub(crate) rel: u32,
}

impl OffsetEntry {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.rel.to_be_bytes());
        out.extend_from_slice(&self.pos.to_be_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        OffsetEntry {
            rel: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            pos: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

impl TimeEntry {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ts.to_be_bytes());
        out.extend_from_slice(&self.rel.to_be_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[..8]);
        TimeEntry {
            ts: i64::from_be_bytes(ts),
            rel: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
}

/// Largest entry whose relative offset is <= `rel`.
pub(crate) fn floor_offset(entries: &[OffsetEntry], rel: u32) -> Option<OffsetEntry> {
    let n = entries.partition_point(|e| e.rel <= rel);
    n.checked_sub(1).map(|i| entries[i])
}

/// Largest entry whose timestamp is < `ts`: every record at or before it is older than `ts`.
pub(crate) fn floor_time(entries: &[TimeEntry], ts: i64) -> Option<TimeEntry> {
    let n = entries.partition_point(|e| e.ts < ts);
    n.checked_sub(1).map(|i| entries[i])
}

/// Reads every entry of an index file, or `None` if the file is not a sane index for a log of
/// `log_size` bytes (size not a multiple of the entry, entries not increasing, positions past
/// the end of the log).
pub(crate) fn load_offset_index(
    file: &File,
    log_size: u64,
) -> io::Result<Option<Vec<OffsetEntry>>> {
    let bytes = read_all(file)?;
    if bytes.len() % OFFSET_ENTRY != 0 {
        return Ok(None);
    }
    let entries: Vec<OffsetEntry> = bytes
        .chunks_exact(OFFSET_ENTRY)
        .map(OffsetEntry::decode)
        .collect();
    let sane = entries
        .windows(2)
        .all(|w| w[0].rel < w[1].rel && w[0].pos < w[1].pos)
        && entries.iter().all(|e| (e.pos as u64) < log_size);
    Ok(sane.then_some(entries))
}

/// As [`load_offset_index`] for a time index; `max_rel` bounds the relative offsets.
pub(crate) fn load_time_index(file: &File, max_rel: u64) -> io::Result<Option<Vec<TimeEntry>>> {
    let bytes = read_all(file)?;
    if bytes.len() % TIME_ENTRY != 0 {
        return Ok(None);
    }
    let entries: Vec<TimeEntry> = bytes
        .chunks_exact(TIME_ENTRY)
        .map(TimeEntry::decode)
        .collect();
    let sane = entries
        .windows(2)
        .all(|w| w[0].ts < w[1].ts && w[0].rel <= w[1].rel)
        && entries.iter().all(|e| (e.rel as u64) <= max_rel);
    Ok(sane.then_some(entries))
}

fn read_all(file: &File) -> io::Result<Vec<u8>> {
    let len = file.metadata()?.len() as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

/// Binary search of an on-disk offset index with positional reads.
pub(crate) fn floor_offset_in_file(
    file: &File,
    count: usize,
    rel: u32,
) -> io::Result<Option<OffsetEntry>> {
    let (mut lo, mut hi) = (0usize, count);
    let mut buf = [0u8; OFFSET_ENTRY];
    let mut best = None;
    while lo < hi {
        let mid = (lo + hi) / 2;
        file.read_exact_at(&mut buf, (mid * OFFSET_ENTRY) as u64)?;
        let e = OffsetEntry::decode(&buf);
        if e.rel <= rel {
            best = Some(e);
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(best)
}

/// Binary search of an on-disk time index for the largest entry with timestamp < `ts`.
pub(crate) fn floor_time_in_file(
    file: &File,
    count: usize,
    ts: i64,
) -> io::Result<Option<TimeEntry>> {
    let (mut lo, mut hi) = (0usize, count);
    let mut buf = [0u8; TIME_ENTRY];
    let mut best = None;
    while lo < hi {
        let mid = (lo + hi) / 2;
        file.read_exact_at(&mut buf, (mid * TIME_ENTRY) as u64)?;
        let e = TimeEntry::decode(&buf);
        if e.ts < ts {
            best = Some(e);
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(best)
}

/// The last entry of an on-disk time index (the segment's largest timestamp).
pub(crate) fn last_time_in_file(file: &File, count: usize) -> io::Result<Option<TimeEntry>> {
    if count == 0 {
        return Ok(None);
    }
    let mut buf = [0u8; TIME_ENTRY];
    file.read_exact_at(&mut buf, ((count - 1) * TIME_ENTRY) as u64)?;
    Ok(Some(TimeEntry::decode(&buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_lookups() {
        let e = [
            OffsetEntry { rel: 0, pos: 0 },
            OffsetEntry { rel: 10, pos: 100 },
            OffsetEntry { rel: 20, pos: 200 },
        ];
        assert_eq!(floor_offset(&e, 9), Some(e[0]));
        assert_eq!(floor_offset(&e, 10), Some(e[1]));
        assert_eq!(floor_offset(&e, 99), Some(e[2]));
        assert_eq!(floor_offset(&e[1..], 5), None);
        let t = [TimeEntry { ts: 5, rel: 1 }, TimeEntry { ts: 9, rel: 4 }];
        assert_eq!(floor_time(&t, 5), None);
        assert_eq!(floor_time(&t, 6), Some(t[0]));
        assert_eq!(floor_time(&t, 100), Some(t[1]));
    }

    #[test]
    fn file_search_matches_memory_and_damage_is_detected() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("x.index");
        let entries: Vec<OffsetEntry> = (0..100)
            .map(|i| OffsetEntry {
                rel: i * 3,
                pos: i * 50,
            })
            .collect();
        let mut buf = Vec::new();
        entries.iter().for_each(|e| e.encode(&mut buf));
        std::fs::write(&path, &buf)?;
        let f = File::open(&path)?;
        for rel in [0, 1, 3, 150, 297, 1000] {
            assert_eq!(
                floor_offset_in_file(&f, 100, rel)?,
                floor_offset(&entries, rel)
            );
        }
        assert_eq!(load_offset_index(&f, 10_000)?, Some(entries.clone()));
        assert_eq!(load_offset_index(&f, 100)?, None, "positions past the log");
        std::fs::write(&path, &buf[..buf.len() - 3])?;
        assert_eq!(
            load_offset_index(&File::open(&path)?, 10_000)?,
            None,
            "torn entry"
        );
        Ok(())
    }
}
