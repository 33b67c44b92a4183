//! Group commit: a small shared pool of flusher threads fsyncs partitions that asked for it.
//!
//! A partition is queued at most once at a time; the fsync a flusher runs covers every append
//! that completed before it started, and appends arriving meanwhile queue the partition again,
//! so one fsync serves a whole burst. No thread per partition, and never an fsync on the thread
//! that appended.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use crate::partition::Inner;

/// Threads in the process-wide flusher pool.
const FLUSH_THREADS: usize = 2;

pub(crate) struct FlushPool {
    queue: Mutex<VecDeque<Arc<Inner>>>,
    ready: Condvar,
}

impl FlushPool {
    /// The process-wide pool, started on first use.
    pub(crate) fn global() -> &'static FlushPool {
        static POOL: OnceLock<&'static FlushPool> = OnceLock::new();
        POOL.get_or_init(|| {
            let pool: &'static FlushPool = Box::leak(Box::new(FlushPool {
                queue: Mutex::new(VecDeque::new()),
                ready: Condvar::new(),
            }));
            for i in 0..FLUSH_THREADS {
                let spawned = thread::Builder::new()
                    .name(format!("sluice-flush-{i}"))
                    .spawn(move || pool.run());
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "could not start a flusher thread");
                }
            }
            pool
        })
    }

    /// Queues `log` for an fsync unless it is already queued.
    pub(crate) fn submit(&self, log: &Arc<Inner>) {
        if log.flush_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Arc::clone(log));
        self.ready.notify_one();
    }

    fn run(&self) {
        loop {
            let log = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if let Some(l) = q.pop_front() {
                        break l;
                    }
                    q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
                }
            };
            // Cleared before the fsync so appends during it queue another one.
            log.flush_queued.store(false, Ordering::Release);
            log.flush_now();
            if log.checkpoint_wanted.swap(false, Ordering::AcqRel) {
                log.checkpoint_or_fail(false);
            }
        }
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread (for callers without a runtime).
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}
