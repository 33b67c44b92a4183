//! A global allocator that keeps absurd allocation requests from aborting the broker.
//!
//! The kafka-protocol decoder (0.18) sizes a `Vec` from an array length read off the wire before
//! it decodes a single element (upstream PRs #152/#161/#200 are still open). An 8-byte request
//! can therefore ask for hundreds of GiB; the system allocator refuses, and Rust aborts the
//! process, which no `catch_unwind` can stop. Frames are bounded by `socket.request.max.bytes`,
//! so no legitimate allocation in this process comes near [`HUGE`]. Requests that large get
//! address space reserved with `MAP_NORESERVE`: nothing is committed, the decoder then fails on
//! the missing elements, and the reservation is returned. Everything else goes to the system
//! allocator untouched.
//!
//! The module also owns how the node uses glibc's malloc: [`keep_freed_memory`] tunes it to
//! reuse memory while a load runs, and [`return_idle_memory`] hands that memory back to the
//! kernel once the node is quiet.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at or above this size are reserved lazily instead of committed.
const HUGE: usize = 1 << 30;

/// Blocks below this come from malloc's heaps, not from a mapping of their own (glibc's ceiling).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;
/// Free memory a heap keeps at its top before it is handed back to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 64 << 20;
/// One heap for every thread: `malloc_trim` gives back the free top only of the main heap, and
/// a trimmed node should hold no more than what is in use. (Threads still cache small blocks
/// of their own; whether one arena's lock costs throughput on many cores is not yet measured.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 1;
/// No pad when a heap grows (glibc's is 128 KiB): `calloc` zeroes the old top of a heap it
/// extends, so with a pad every large zeroed block, such as sled's 512 KiB metrics histograms,
/// first-touched 128 KiB of pages (5 MB of idle RSS in all).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TOP_PAD: libc::c_int = 0;

/// Makes glibc's malloc keep freed memory for reuse instead of returning it to the kernel.
///
/// Request frames, replication frames and segment reads are allocated and freed at hundreds of
/// megabytes a second. With glibc's defaults (mappings for blocks from 128 KiB, a heap trimmed
/// once 128 KiB lie free at its top, both raised only as blocks come and go) much of that memory
/// went back to the kernel and every new frame first-touched fresh pages: under a three-node
/// produce load each node took 3,000-13,000 page faults a second, and zeroing those pages cost
/// a follower more than a tenth of its CPU. Kept, the same pages are reused hot. The price is
/// that a heap stays near the peak a load reached; [`return_idle_memory`] hands that back once
/// the node is quiet. It can only do so for a single heap: `malloc_trim` returns the free top of
/// the main heap alone, and the free tops of per-thread arenas kept 30-75 MB after a burst. So
/// all threads share one arena ([`ARENA_MAX`]); on two cores that cost no throughput
/// (docs/benchmarks.md, 2026-11-29).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's tuning parameters; it is called before the
        // runtime starts any thread.
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
                && libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX) == 1
                && libc::mallopt(libc::M_TOP_PAD, TOP_PAD) == 1
        };
        if !ok {
            tracing::warn!("malloc refused its tuning; freed memory may go back to the kernel");
        }
    }
}

/// How often the housekeeping thread looks at the node's CPU use and malloc's free memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// A node that used less CPU than this share of one core over an interval counts as quiet.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const QUIET_CPU_SHARE: f64 = 0.05;
/// Free heap memory a quiet node keeps; above it, the first quiet interval trims.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const KEEP_WHEN_QUIET: usize = 8 << 20;
/// Free heap memory a busy node keeps; above it, the node trims, but at most every
/// [`BUSY_TRIM_EVERY`], so the pages a load reuses are refaulted rarely.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const KEEP_WHEN_BUSY: usize = 64 << 20;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const BUSY_TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Starts a thread that hands the memory a load left behind back to the kernel.
///
/// [`keep_freed_memory`] keeps a load's peak so that the load reuses warm pages; once the load
/// is gone that peak is only RSS an operator pays for (1000 connections left 178 MB). So every
/// [`TRIM_INTERVAL`] this thread reads the node's CPU time and malloc's free bytes: after an
/// interval in which the node was quiet (below [`QUIET_CPU_SHARE`] of a core) and some work
/// was done since the last trim, it calls `malloc_trim(0)` when more than [`KEEP_WHEN_QUIET`]
/// lies free; a busy node trims only above [`KEEP_WHEN_BUSY`] and at most every
/// [`BUSY_TRIM_EVERY`]. `malloc_trim` gives back the pages of free blocks inside the heap
/// (`madvise`) and shrinks its free top. A trim of a few hundred MB takes 3-8 ms, with the
/// heap's lock held. Call once, from `main`; without glibc it does nothing.
pub fn return_idle_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new()
            .name("sluice-trim".into())
            .spawn(trim_loop);
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the memory trimmer; RSS will stay at a load's peak");
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_loop() {
    let mut last_cpu = process_cpu();
    let mut last_trim = std::time::Instant::now();
    // Work since the last trim: a quiet node trims once per quiet spell, not every interval
    // (free chunks stay counted as free after `madvise`, so the free figure alone would not
    // say that the trim is done). Start-up (recovery, opening the metadata store) counts as
    // work, so its garbage goes in the first quiet interval.
    let mut worked = true;
    loop {
        std::thread::sleep(TRIM_INTERVAL);
        let cpu = process_cpu();
        let busy = cpu.saturating_sub(last_cpu).as_secs_f64()
            > TRIM_INTERVAL.as_secs_f64() * QUIET_CPU_SHARE;
        last_cpu = cpu;
        worked |= busy;
        // SAFETY: mallinfo2 only reads malloc's statistics (it takes each arena's lock).
        let free = unsafe { libc::mallinfo2() }.fordblks;
        if !trim_due(busy, worked, free, last_trim.elapsed()) {
            continue;
        }
        let before = resident_bytes();
        let started = std::time::Instant::now();
        // SAFETY: malloc_trim only returns free memory to the kernel; it takes each arena's
        // lock while it walks that arena, so allocating threads wait, never break.
        unsafe { libc::malloc_trim(0) };
        tracing::debug!(
            busy,
            free_heap_bytes = free,
            rss_before = before,
            rss_after = resident_bytes(),
            took_us = started.elapsed().as_micros() as u64,
            "returned free heap memory to the kernel"
        );
        last_trim = std::time::Instant::now();
        worked = false;
    }
}

/// Whether to trim now: `busy` this interval, `worked` since the last trim, `free` heap bytes,
/// `since_trim` since the last trim (or the thread's start).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_due(busy: bool, worked: bool, free: usize, since_trim: std::time::Duration) -> bool {
    if busy {
        free > KEEP_WHEN_BUSY && since_trim >= BUSY_TRIM_EVERY
    } else {
        worked && free > KEEP_WHEN_QUIET
    }
}

/// User plus system CPU time of the whole process so far.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn process_cpu() -> std::time::Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return std::time::Duration::ZERO;
        }
        usage
    };
    let micros = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
    };
    std::time::Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// Resident set size from `/proc/self/statm` (0 if it cannot be read), for the log.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// The broker's global allocator; see the module docs.
pub struct GuardedAllocator;

// SAFETY: small requests are forwarded unchanged to `System`. Huge requests are served by an
// anonymous private mapping, which is page aligned (we fall back to `System` for larger
// alignments) and zero-filled, and are released with `munmap` of the same size, which
// `dealloc` receives through the same `Layout`.
unsafe impl GlobalAlloc for GuardedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() < HUGE || layout.align() > 4096 {
            // SAFETY: same contract as ours.
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            ptr.cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() < HUGE || layout.align() > 4096 {
            // SAFETY: `ptr` came from `System.alloc` with this layout.
            unsafe { System.dealloc(ptr, layout) };
            return;
        }
        // SAFETY: `ptr` is the start of a mapping of exactly `layout.size()` bytes made above.
        unsafe {
            libc::munmap(ptr.cast(), layout.size());
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() < HUGE || layout.align() > 4096 {
            // SAFETY: same contract as ours.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: anonymous mappings are zero-filled.
        unsafe { self.alloc(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() < HUGE && new_size < HUGE && layout.align() <= 4096 {
            // SAFETY: both the old and the new block belong to `System`.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Crossing the threshold: move the block between the two allocators by hand.
        // SAFETY: `new_size` is non-zero and the alignment is valid (it came from `layout`).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as for alloc.
        let new_ptr = unsafe { self.alloc(new_layout) };
        if !new_ptr.is_null() {
            // SAFETY: both blocks are valid for the smaller of the two sizes and do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new_ptr
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_quiet_node_trims_once_after_work_when_enough_is_free() {
        let long_ago = Duration::from_secs(3600);
        assert!(trim_due(false, true, KEEP_WHEN_QUIET + 1, Duration::ZERO));
        // Nothing done since the last trim: the free figure still counts madvised chunks.
        assert!(!trim_due(false, false, KEEP_WHEN_BUSY * 4, long_ago));
        assert!(!trim_due(false, true, KEEP_WHEN_QUIET, long_ago));
    }

    #[test]
    fn a_busy_node_trims_only_a_large_surplus_and_at_most_once_a_minute() {
        assert!(!trim_due(true, true, KEEP_WHEN_QUIET * 2, BUSY_TRIM_EVERY));
        assert!(!trim_due(
            true,
            true,
            KEEP_WHEN_BUSY + 1,
            BUSY_TRIM_EVERY / 2
        ));
        assert!(trim_due(true, true, KEEP_WHEN_BUSY + 1, BUSY_TRIM_EVERY));
    }

    #[test]
    fn the_process_cpu_clock_moves_with_work() {
        let before = process_cpu();
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while process_cpu() <= before {
            x = std::hint::black_box(x.wrapping_add(1));
            assert!(
                spin.elapsed() < Duration::from_secs(10),
                "no CPU time counted"
            );
        }
        assert!(resident_bytes() > 0);
    }
}
