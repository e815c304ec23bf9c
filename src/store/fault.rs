//! Storage faults: what the store does when the disk fills or an fsync fails, and how it
//! gets back without a restart.
//!
//! sled's I/O errors are sticky: once a write or flush fails, that handle refuses every
//! later write (and some reads) even after space comes back, and a reopen needs free
//! space (sled writes at open). So:
//! 1. The first failure *faults* the store (under the write lock, so no apply slips in
//!    after it): writes are refused from then on, every apply not yet flushed is *lost*
//!    (its writer is told so), and readers are served the last durable version of the
//!    keys those applies touched (the undo log kept by every apply until its flush).
//! 2. On a full disk the node deletes its *reserve* (a file of `storage.reserve_bytes`
//!    made at open, as CockroachDB's ballast), which gives sled room to reopen: the handle
//!    is swapped for a fresh one, the lost applies are rolled back on it (sled may have
//!    logged some of them), and the Merkle tree and counts are rebuilt from what is
//!    durable. Reads of durable data go on from the fresh handle; writes stay refused.
//! 3. Once free space is back above the reserve and a margin, the reserve is made again
//!    and writes resume. Another I/O failure retries the reopen every second instead.
//!
//! Each change of state is logged once, not each retry.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often a faulted store tries to recover.
pub(super) const RETRY: Duration = Duration::from_secs(1);
/// Free space (beyond the reserve) needed before writes resume, or before a reopen is
/// tried on a full disk without a reserve to give back.
pub(super) const MIN_FREE_BYTES: u64 = 4 * 1024 * 1024;
/// The reserve's file name inside the data directory.
pub const RESERVE_FILE: &str = "kvs-reserve";

/// What kind of failure faulted the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The filesystem has no space left (`ENOSPC`, `EDQUOT`).
    DiskFull,
    /// Any other I/O failure (a failed fsync, `EIO`, a read-only remount).
    Io,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::DiskFull => "disk_full",
            FaultKind::Io => "io",
        }
    }

    pub fn of(kind: ErrorKind) -> FaultKind {
        match kind {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => FaultKind::DiskFull,
            _ => FaultKind::Io,
        }
    }
}

/// The store's health as `/health/info` and readiness show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageStatus {
    /// True when writes are accepted.
    pub writable: bool,
    /// Why not, when not.
    pub fault: Option<FaultKind>,
    pub reason: Option<String>,
    /// When the fault began (ms since the epoch).
    pub since_ms: Option<u64>,
    /// True when reads come from a clean handle (durable data only).
    pub reads_durable: bool,
    /// Whether the reserve file is in place.
    pub reserve_held: bool,
}

/// Where a faulted store is on its way back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    Healthy,
    /// The failing handle is still in use; lost applies are not rolled back yet.
    Dirty,
    /// A fresh handle serves durable data; writes wait for free space (or a probe).
    Clean,
}

#[derive(Debug)]
struct State {
    stage: Stage,
    kind: FaultKind,
    reason: String,
    since_ms: u64,
}

/// The fault state machine's data. The transitions are made by `Store` (mod.rs), which
/// owns the handle they act on.
#[derive(Debug)]
pub(super) struct Health {
    /// Fast path for every apply and read: false while faulted.
    healthy: AtomicBool,
    state: Mutex<State>,
    reserve: Reserve,
}

impl Health {
    pub(super) fn new(reserve: Reserve) -> Health {
        Health {
            healthy: AtomicBool::new(true),
            state: Mutex::new(State {
                stage: Stage::Healthy,
                kind: FaultKind::Io,
                reason: String::new(),
                since_ms: 0,
            }),
            reserve,
        }
    }

    pub(super) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn stage(&self) -> Stage {
        self.lock().stage
    }

    pub(super) fn kind(&self) -> FaultKind {
        self.lock().kind
    }

    /// Why writes are refused (for the error a writer gets).
    pub(super) fn refusal(&self) -> (FaultKind, String) {
        let state = self.lock();
        (state.kind, state.reason.clone())
    }

    pub(super) fn reserve(&self) -> &Reserve {
        &self.reserve
    }

    /// Enters the fault (call with the store's write lock held). Returns false if the
    /// store was already faulted (then nothing is logged again).
    pub(super) fn fault(&self, kind: FaultKind, reason: String) -> bool {
        let mut state = self.lock();
        self.healthy.store(false, Ordering::SeqCst);
        if state.stage != Stage::Healthy {
            if state.stage == Stage::Clean {
                // The fresh handle failed too: back to rolling back on the next retry.
                state.stage = Stage::Dirty;
            }
            return false;
        }
        tracing::error!(
            fault = ?kind,
            %reason,
            "storage failed: writes are refused (507 when the disk is full, 503 otherwise) \
             and unflushed writes were not acknowledged; reads serve durable data; \
             the node recovers by itself when the disk does"
        );
        *state = State { stage: Stage::Dirty, kind, reason, since_ms: now_ms() };
        true
    }

    pub(super) fn set_clean(&self) {
        let mut state = self.lock();
        if state.stage == Stage::Dirty {
            state.stage = Stage::Clean;
            tracing::warn!(
                fault = ?state.kind,
                "storage: reopened on durable data; writes resume once the disk has room"
            );
        }
    }

    pub(super) fn set_healthy(&self) {
        let mut state = self.lock();
        if state.stage != Stage::Healthy {
            let seconds = now_ms().saturating_sub(state.since_ms) as f64 / 1000.0;
            tracing::info!(fault = ?state.kind, seconds, "storage recovered: writes resume");
            state.stage = Stage::Healthy;
        }
        self.healthy.store(true, Ordering::SeqCst);
    }

    pub(super) fn status(&self) -> StorageStatus {
        let state = self.lock();
        let healthy = state.stage == Stage::Healthy;
        StorageStatus {
            writable: healthy,
            fault: (!healthy).then_some(state.kind),
            reason: (!healthy).then(|| state.reason.clone()),
            since_ms: (!healthy).then_some(state.since_ms),
            reads_durable: state.stage != Stage::Dirty,
            reserve_held: self.reserve.held(),
        }
    }
}

/// A file of `bytes` in the data directory, given back to the filesystem when the disk
/// fills so that sled can reopen, and made again once there is room.
#[derive(Debug)]
pub(super) struct Reserve {
    path: PathBuf,
    bytes: u64,
}

impl Reserve {
    pub(super) fn new(dir: &Path, bytes: u64) -> Reserve {
        Reserve { path: dir.join(RESERVE_FILE), bytes }
    }

    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(super) fn held(&self) -> bool {
        self.bytes > 0 && self.path.metadata().is_ok_and(|m| m.len() >= self.bytes)
    }

    /// Makes the reserve (allocated, synced). A partial one is removed on failure.
    pub(super) fn make(&self) -> std::io::Result<()> {
        if self.bytes == 0 || self.held() {
            return Ok(());
        }
        let made = (|| {
            let file = File::create(&self.path)?;
            allocate(&file, self.bytes)?;
            file.sync_all()
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
        made
    }

    /// Gives the reserve back; true if there was one.
    pub(super) fn release(&self) -> bool {
        let held = self.path.exists();
        if held {
            if let Err(error) = std::fs::remove_file(&self.path) {
                tracing::error!(%error, path = %self.path.display(), "could not delete the reserve");
                return false;
            }
            tracing::warn!(
                bytes = self.bytes,
                "storage: released the reserve so the store can reopen"
            );
        }
        held
    }
}

/// Allocates `bytes` for `file`: `fallocate` where the filesystem has it, else zeros.
fn allocate(file: &File, bytes: u64) -> std::io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    match fallocate(file, FallocateFlags::empty(), 0, bytes) {
        Ok(()) => Ok(()),
        Err(errno) if errno == rustix::io::Errno::OPNOTSUPP => {
            use std::io::Write;
            let zeros = vec![0u8; 1024 * 1024];
            let mut writer = std::io::BufWriter::new(file);
            let mut left = bytes;
            while left > 0 {
                let step = left.min(zeros.len() as u64) as usize;
                writer.write_all(&zeros[..step])?;
                left -= step as u64;
            }
            writer.flush()
        }
        Err(errno) => Err(errno.into()),
    }
}

/// Bytes available to us on the filesystem holding `dir`.
pub(super) fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
