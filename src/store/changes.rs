//! The change log: every change that becomes visible on this node — a local write, a
//! merge from a peer, a record removed by the sync rules — numbered in the order it was
//! applied, kept in the `changes` tree so a watcher can resume after a disconnect or a
//! restart, and sent to live watchers once it is durable, in one batch per flush (never
//! before: a change lost to a storage fault is rolled back, its number reused, and never
//! seen).
//!
//! An entry is `[arrival ms: u64 BE][key length: u16 BE][key bytes][record]` under its
//! number (u64 BE). The log is bounded by entries and age ([`ChangeLimits`]); what falls
//! out of it can no longer be resumed from (the caller answers 410, the client relists).
//! The newest change is never trimmed: the numbering resumes from it after a restart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

use super::{codec, StoreError};
use crate::model::{Key, Record};

/// One change, as the log keeps it and watchers get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub id: u64,
    pub key: Key,
    /// The record now stored (a tombstone for a delete); a record removed outright is
    /// shown as a tombstone of the version it had.
    pub record: Record,
}

/// How much of the past the log keeps.
#[derive(Debug, Clone, Copy)]
pub struct ChangeLimits {
    pub max_entries: u64,
    pub max_age_ms: u64,
}

impl Default for ChangeLimits {
    fn default() -> Self {
        ChangeLimits { max_entries: 100_000, max_age_ms: 24 * 3_600_000 }
    }
}

/// The changes one flush made durable, in order: what live watchers are sent (one message
/// per flush, so a thousand watchers cost a flush a thousand wake-ups, not that many per
/// change).
pub type Batch = Arc<Vec<Arc<Change>>>;

/// Batches not yet taken by a watcher beyond this many make it catch up from the log.
const LIVE_BACKLOG: usize = 256;

/// The publishing side, shared by the store's handles.
pub(super) struct Feed {
    live: broadcast::Sender<Batch>,
    /// The highest number published (every change up to it is durable).
    durable: AtomicU64,
    limits: std::sync::Mutex<ChangeLimits>,
}

impl Feed {
    pub(super) fn new(durable: u64) -> Feed {
        Feed {
            live: broadcast::channel(LIVE_BACKLOG).0,
            durable: AtomicU64::new(durable),
            limits: std::sync::Mutex::new(ChangeLimits::default()),
        }
    }

    /// Called by the committer, in order, for the changes a flush made durable: readers
    /// of the log see them from now on (before the writers are acknowledged).
    pub(super) fn mark_durable(&self, changes: &[Arc<Change>]) {
        if let Some(last) = changes.last() {
            self.durable.store(last.id, Ordering::Release);
        }
    }

    /// Then, after the acknowledgements, the live watchers get them.
    pub(super) fn send(&self, changes: Vec<Arc<Change>>) {
        if !changes.is_empty() {
            let _ = self.live.send(Arc::new(changes)); // no watcher: nothing to do
        }
    }

    pub(super) fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<Batch> {
        self.live.subscribe()
    }

    pub(super) fn limits(&self) -> ChangeLimits {
        *self.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn set_limits(&self, limits: ChangeLimits) {
        *self.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = limits;
    }
}

pub(super) fn entry_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub(super) fn encode(arrival_ms: u64, key_bytes: &[u8], record: &Record) -> Vec<u8> {
    let encoded = codec::encode_record(record);
    let mut out = Vec::with_capacity(10 + key_bytes.len() + encoded.len());
    out.extend_from_slice(&arrival_ms.to_be_bytes());
    out.extend_from_slice(&(key_bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(key_bytes);
    out.extend_from_slice(&encoded);
    out
}

/// The arrival time and the change under `id`.
pub(super) fn decode(id: u64, bytes: &[u8]) -> Result<(u64, Change), StoreError> {
    let corrupt = || StoreError::CorruptKey { key: format!("change {id}") };
    let arrival = u64::from_be_bytes(bytes.get(..8).ok_or_else(corrupt)?.try_into().unwrap());
    let len = u16::from_be_bytes(bytes.get(8..10).ok_or_else(corrupt)?.try_into().unwrap());
    let key_bytes = bytes.get(10..10 + len as usize).ok_or_else(corrupt)?;
    let key = Key::from_bytes(key_bytes).map_err(|_| corrupt())?;
    let record = super::decode(key_bytes, &bytes[10 + len as usize..])?;
    Ok((arrival, Change { id, key, record }))
}

pub(super) fn id_of(key: &[u8]) -> u64 {
    key.try_into().map(u64::from_be_bytes).unwrap_or(0)
}
