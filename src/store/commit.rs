//! Group commit: one thread flushes sled in a loop and tells every writer it covered.
//!
//! sled's `flush_async` deadlocks when many tasks call it at once (see
//! shared/DEPENDENCIES.md), and a flush per write caps throughput at a few thousand per
//! second. Instead each apply takes a sequence number, pokes this thread, and awaits the
//! first flush that started after its apply: one fsync covers every write before it.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use super::StoreError;

/// What the committer has made durable.
#[derive(Clone, Debug, Default)]
struct FlushState {
    /// Every apply with a sequence number up to this one is on disk.
    flushed: u64,
    /// The last flush failed: applies up to `.0` may not be durable; `.1` says why.
    failed: Option<(u64, Arc<str>)>,
}

#[derive(Default)]
struct Signal {
    pending: bool,
    stop: bool,
}

struct Shared {
    db: sled::Db,
    /// The data file, for an `fdatasync` after sled's flush: sled 0.34 uses
    /// `sync_file_range`, which does not survive power loss on Linux.
    data_file: Option<File>,
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
    pub(super) fn start(db: sled::Db, data_file: Option<File>) -> std::io::Result<Committer> {
        let (state, _) = watch::channel(FlushState::default());
        let shared = Arc::new(Shared {
            db,
            data_file,
            applied: AtomicU64::new(0),
            signal: Mutex::new(Signal::default()),
            wake: Condvar::new(),
            state,
        });
        let runner = shared.clone();
        let thread =
            std::thread::Builder::new().name("kvs-committer".into()).spawn(move || runner.run())?;
        Ok(Committer { shared, thread: Mutex::new(Some(thread)) })
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

    /// Resolves once the apply numbered `seq` is on disk, or fails with the flush error.
    pub(super) async fn wait_durable(&self, seq: u64) -> Result<(), StoreError> {
        let mut state = self.shared.state.subscribe();
        let reached = state
            .wait_for(|s| {
                s.flushed >= seq || s.failed.as_ref().is_some_and(|(upto, _)| *upto >= seq)
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        if reached.flushed >= seq {
            return Ok(());
        }
        let reason = reached.failed.as_ref().map(|(_, why)| why.to_string()).unwrap_or_default();
        Err(StoreError::Flush(reason))
    }

    /// Flushes whatever is pending and stops the thread. Idempotent.
    pub(super) fn stop(&self) {
        {
            let mut signal = self.shared.signal.lock().unwrap_or_else(PoisonError::into_inner);
            signal.stop = true;
            self.shared.wake.notify_one();
        }
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("committer thread panicked");
            }
        }
    }
}

impl Shared {
    fn run(&self) {
        loop {
            {
                let mut signal = self.signal.lock().unwrap_or_else(PoisonError::into_inner);
                while !signal.pending && !signal.stop {
                    signal = self.wake.wait(signal).unwrap_or_else(PoisonError::into_inner);
                }
                if !signal.pending {
                    return;
                }
                signal.pending = false;
            }
            // Every apply numbered up to `target` finished before this flush starts.
            let target = self.applied.load(Ordering::SeqCst);
            match self.flush() {
                Ok(()) => self.state.send_modify(|s| {
                    s.flushed = s.flushed.max(target);
                    s.failed = None;
                }),
                Err(error) => {
                    tracing::error!(%error, "flush failed; writes are not acknowledged until one succeeds");
                    self.state.send_modify(|s| s.failed = Some((target, error.to_string().into())));
                    // Retry soon: the writers after this one still need a flush.
                    std::thread::sleep(Duration::from_millis(50));
                    self.signal.lock().unwrap_or_else(PoisonError::into_inner).pending = true;
                }
            }
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(StoreError::from)?;
        if let Some(file) = &self.data_file {
            file.sync_data().map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        }
        Ok(())
    }
}
