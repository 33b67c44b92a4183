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

/// Makes glibc's malloc keep freed memory for reuse instead of returning it to the kernel.
///
/// Request frames, replication frames and segment reads are allocated and freed at hundreds of
/// megabytes a second. With glibc's defaults (mappings for blocks from 128 KiB, a heap trimmed
/// once 128 KiB lie free at its top, both raised only as blocks come and go) much of that memory
/// went back to the kernel and every new frame first-touched fresh pages: under a three-node
/// produce load each node took 3,000-13,000 page faults a second, and zeroing those pages cost
/// a follower more than a tenth of its CPU. Kept, the same pages are reused hot. The price: each
/// arena (up to 8 per core) keeps up to [`TRIM_THRESHOLD`] free at its top, plus free chunks
/// inside its heap that only `malloc_trim` returns, so RSS stays near the peak a load reached
/// (178 MB after 1000 connections, 37 MB once trimmed; docs/benchmarks.md, 2026-11-29).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's tuning parameters; it is called before the
        // runtime starts any thread.
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        };
        if !ok {
            tracing::warn!("malloc refused its tuning; freed memory may go back to the kernel");
        }
    }
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
