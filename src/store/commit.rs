//! Group commit: one thread flushes sled in a loop and tells every writer it covered.
//!
//! sled's `flush_async` deadlocks when many tasks call it at once (see
//! shared/DEPENDENCIES.md), and a flush per write caps throughput at a few thousand per
//! second. Instead each apply takes a sequence number, pokes this thread, and awaits the
//! first flush that started after its apply: one fsync covers every write before it.
//!
//! The same thread drives recovery from a storage fault (`fault.rs`): while the store
//! is faulted it tries once a second instead of flushing, so a failing disk costs one
//! attempt a second, not a busy loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;

use tokio::sync::watch;

use super::fault::{FaultKind, RETRY};
use super::{Inner, StoreError};

/// What the committer has made durable, and what was lost to a fault.
#[derive(Clone, Debug, Default)]
struct FlushState {
    /// Every apply with a sequence number up to this one is on disk (unless lost).
    flushed: u64,
    /// Applies lost to faults: their writers are told so, whatever later flushes cover.
    lost: Vec<Lost>,
}

/// Applies numbered in `(after, upto]` were not made durable and were rolled back.
#[derive(Clone, Debug)]
struct Lost {
    after: u64,
    upto: u64,
    kind: FaultKind,
    reason: Arc<str>,
}

impl FlushState {
    /// The fault that lost the apply numbered `seq`, if one did.
    fn lost(&self, seq: u64) -> Option<&Lost> {
        self.lost.iter().find(|lost| lost.after < seq && seq <= lost.upto)
    }
}

#[derive(Default)]
struct Signal {
    pending: bool,
    stop: bool,
}

/// Told of every successful group flush (how long it took, how many applies it made
/// durable): the metrics' view of the write path, without the store knowing them.
pub trait FlushObserver: Send + Sync {
    fn flushed(&self, took: std::time::Duration, applies: u64);
}

struct Shared {
    observer: std::sync::OnceLock<Arc<dyn FlushObserver>>,
    applied: AtomicU64,
    signal: Mutex<Signal>,
    wake: Condvar,
    state: watch::Sender<FlushState>,
}

pub(super) struct Committer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Committer {
    pub(super) fn new() -> Committer {
        let (state, _) = watch::channel(FlushState::default());
        let shared = Arc::new(Shared {
            observer: std::sync::OnceLock::new(),
            applied: AtomicU64::new(0),
            signal: Mutex::new(Signal::default()),
            wake: Condvar::new(),
            state,
        });
        Committer { shared, thread: Mutex::new(None) }
    }

    /// Starts the thread; it holds the store only while it flushes or recovers.
    pub(super) fn spawn(&self, store: Weak<Inner>) -> std::io::Result<()> {
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name("kvs-committer".into())
            .spawn(move || run(&shared, &store))?;
        *self.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(thread);
        Ok(())
    }

    /// Sets who is told of each flush (once; later calls are ignored).
    pub(super) fn observe(&self, observer: Arc<dyn FlushObserver>) {
        let _ = self.shared.observer.set(observer);
    }

    /// Records that one more apply has reached sled and returns its sequence number.
    /// Called with the store's write lock held, so numbers follow apply order.
    pub(super) fn applied(&self) -> u64 {
        self.shared.applied.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The sequence number of the latest apply (a no-op apply waits for it: the record
    /// it found may not be durable yet).
    pub(super) fn last_applied(&self) -> u64 {
        self.shared.applied.load(Ordering::SeqCst)
    }

    /// Asks for a flush (without the write lock held).
    pub(super) fn request_flush(&self) {
        let mut signal = self.shared.signal.lock().unwrap_or_else(PoisonError::into_inner);
        signal.pending = true;
        self.shared.wake.notify_one();
    }

    /// Marks every apply after the last flush, up to the latest, as lost to a fault
    /// (call with the write lock held, right after the store faulted).
    pub(super) fn lose_unflushed(&self, kind: FaultKind, reason: &str) {
        let upto = self.last_applied();
        self.shared.state.send_modify(|s| {
            if upto > s.flushed && !s.lost.iter().any(|lost| lost.upto >= upto) {
                s.lost.push(Lost { after: s.flushed, upto, kind, reason: reason.into() });
            }
        });
    }

    /// Resolves once the apply numbered `seq` is on disk, or fails if it was lost.
    pub(super) async fn wait_durable(&self, seq: u64) -> Result<(), StoreError> {
        let start = std::time::Instant::now();
        let mut state = self.shared.state.subscribe();
        let reached = state
            .wait_for(|s| s.flushed >= seq || s.lost(seq).is_some())
            .await
            .map_err(|_| StoreError::Closed)?;
        if start.elapsed() >= std::time::Duration::from_millis(40) {
            tracing::debug!(
                wait_ms = start.elapsed().as_secs_f64() * 1e3,
                seq,
                "slow durable wait"
            );
        }
        match reached.lost(seq) {
            Some(lost) => {
                Err(StoreError::Unwritable { kind: lost.kind, reason: lost.reason.to_string() })
            }
            None => Ok(()),
        }
    }

    /// Stops the thread (after a last flush if the store is healthy). Idempotent, and
    /// never waits on the disk for longer than the flush in progress.
    pub(super) fn stop(&self) {
        {
            let mut signal = self.shared.signal.lock().unwrap_or_else(PoisonError::into_inner);
            signal.stop = true;
            self.shared.wake.notify_one();
        }
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = thread {
            if thread.thread().id() == std::thread::current().id() {
                return; // the store's last handle was dropped by the committer itself
            }
            if thread.join().is_err() {
                tracing::error!("committer thread panicked");
            }
        }
    }
}

fn run(shared: &Shared, store: &Weak<Inner>) {
    loop {
        let healthy = store.upgrade().is_some_and(|inner| inner.health.is_healthy());
        {
            let mut signal = shared.signal.lock().unwrap_or_else(PoisonError::into_inner);
            if healthy {
                while !signal.pending && !signal.stop {
                    signal = shared.wake.wait(signal).unwrap_or_else(PoisonError::into_inner);
                }
            } else if !signal.stop && !signal.pending {
                signal = shared
                    .wake
                    .wait_timeout(signal, RETRY)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if signal.stop {
                if let Some(inner) = store.upgrade().filter(|inner| inner.health.is_healthy()) {
                    flush(shared, &inner);
                }
                return;
            }
            signal.pending = false;
        }
        let Some(inner) = store.upgrade() else { return };
        if inner.health.is_healthy() {
            flush(shared, &inner);
        } else {
            inner.recover();
        }
    }
}

/// One group flush: on success every apply up to the target is durable; on failure
/// the store faults (and starts recovering at once).
fn flush(shared: &Shared, inner: &Inner) {
    // Every apply numbered up to `target` finished before this flush starts.
    let target = shared.applied.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    match inner.flush_engine() {
        Ok(()) => {
            // In the change log before the writers hear back (a writer that reads it after
            // its acknowledgement finds its own change); sent to live watchers after.
            let changes = inner.forget_undo(target);
            let mut applies = 0;
            shared.state.send_modify(|s| {
                applies = target.saturating_sub(s.flushed);
                s.flushed = s.flushed.max(target);
            });
            if let Some(observer) = shared.observer.get() {
                observer.flushed(started.elapsed(), applies);
            }
            inner.send_changes(changes);
        }
        Err(error) => {
            inner.fault(&error);
            inner.recover();
        }
    }
}
