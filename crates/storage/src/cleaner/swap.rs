//! Putting cleaned segments in place so that a crash at any point loses nothing and serves
//! nothing twice.
//!
//! 1. Write `<base>.log.cleaned`, `<base>.index.cleaned`, `<base>.timeindex.cleaned`; fsync them.
//! 2. [`publish`] (under the partition's checkpoint lock, once the log is known to be open and
//!    unchanged): rename them to `.swap` (indexes first, the log last); fsync the directory.
//!    A `<base>.log.swap` is therefore always a complete, fsynced file.
//! 3. [`install`] (under the same lock): delete the group's other segments,
//!    rename the index swaps, then rename `<base>.log.swap` over `<base>.log`; fsync the
//!    directory. The first segment of a group shares the new segment's name, so readers of the
//!    old one keep its open file handles and the name switches atomically.
//!
//! On open, [`complete_swaps`] finishes what a crash interrupted: a `.log.swap` that passes a
//! CRC scan replaces `<base>.log` and every segment whose base lies in `(base, last offset of
//! the swap]` (all of them were in its group); one that fails is deleted. Either way the old
//! index files of `base` are deleted and rebuilt from the log, since they may describe the
//! other file. Leftover `.cleaned` files and index `.swap` files are stray files to delete.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::segment::{self, Segment};

const EXTS: [&str; 3] = ["index", "timeindex", "log"];

/// `<base>.<ext>.<suffix>`.
pub(crate) fn temp_path(dir: &Path, base: i64, ext: &str, suffix: &str) -> PathBuf {
    dir.join(format!("{}.{suffix}", segment::file_name(base, ext)))
}

fn remove_if_present(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames the fsynced `.cleaned` files of each base to `.swap` (the log last) and fsyncs the
/// directory once.
pub(crate) fn publish(dir: &Path, bases: &[i64]) -> io::Result<()> {
    for &base in bases {
        for ext in EXTS {
            fs::rename(
                temp_path(dir, base, ext, "cleaned"),
                temp_path(dir, base, ext, "swap"),
            )?;
        }
    }
    sync_dir(dir)
}

/// Removes whatever `.cleaned` / `.swap` files of `base` exist (an abandoned clean).
pub(crate) fn discard(dir: &Path, base: i64) -> io::Result<()> {
    for ext in EXTS {
        for suffix in ["cleaned", "swap"] {
            remove_if_present(&temp_path(dir, base, ext, suffix))?;
        }
    }
    Ok(())
}

/// Swaps one group's published files in: the group's later segments go first, the new log
/// replaces the first segment's name last. The caller fsyncs the directory afterwards.
pub(crate) fn install(dir: &Path, group: &[Arc<Segment>]) -> io::Result<()> {
    let Some(first) = group.first() else {
        return Ok(());
    };
    for s in &group[1..] {
        s.delete_files()?;
    }
    for ext in EXTS {
        fs::rename(
            temp_path(dir, first.base, ext, "swap"),
            dir.join(segment::file_name(first.base, ext)),
        )?;
    }
    Ok(())
}

/// Fsyncs the directory after [`install`].
pub(crate) fn finish(dir: &Path) -> io::Result<()> {
    sync_dir(dir)
}

/// Finishes (or discards) swaps a crash interrupted; returns how many were finished.
pub(crate) fn complete_swaps(dir: &Path, name: &str) -> io::Result<usize> {
    let mut swaps = Vec::new();
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir)? {
        let fname = entry?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = fname.strip_suffix(".swap")
            && let Some(base) = segment::parse_file_name(stem, "log")
        {
            swaps.push(base);
        } else if let Some(base) = segment::parse_file_name(&fname, "log") {
            bases.push(base);
        }
    }
    swaps.sort_unstable();
    let mut finished = 0;
    for base in swaps {
        let path = temp_path(dir, base, "log", "swap");
        let seg = Segment::open_at(dir, base, &path)?;
        let mut last = None;
        let stop = seg.scan(0, seg.size(), i64::MIN, true, |_, h, _| {
            last = Some(h.last_offset());
            true
        })?;
        drop(seg);
        for ext in ["index", "timeindex"] {
            remove_if_present(&dir.join(segment::file_name(base, ext)))?;
            remove_if_present(&temp_path(dir, base, ext, "swap"))?;
        }
        if let Some(problem) = stop.problem {
            tracing::warn!(log = name, swap = %path.display(), reason = %problem, "discarding an incomplete cleaned segment");
            remove_if_present(&path)?;
            continue;
        }
        let covered = last.unwrap_or(base);
        for &b in bases.iter().filter(|&&b| b > base && b <= covered) {
            for ext in EXTS {
                remove_if_present(&dir.join(segment::file_name(b, ext)))?;
            }
        }
        fs::rename(&path, dir.join(segment::file_name(base, "log")))?;
        tracing::info!(
            log = name,
            base,
            "finished swapping in a cleaned segment after a crash"
        );
        finished += 1;
    }
    if finished > 0 {
        sync_dir(dir)?;
    }
    Ok(finished)
}
