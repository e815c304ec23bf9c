//! The sled-backed store. [`Store::apply_with`] is the only mutation.
//!
//! Trees:
//! - `records`: `segment (2 bytes, BE) ‖ key bytes` → encoded record. Prefixing the
//!   Merkle segment keeps every leaf's records contiguous for the sync layer.
//! - `todo_order`, `doc_names`, `tombstones`: secondary indexes (see `index.rs`).
//! - `meta`: this node's identity and when it last synced with a peer.
//!
//! The Merkle tree and the live counts are kept in memory and rebuilt at open from the
//! record headers (key and version only — no value is hashed), so they cannot disagree
//! with the records after a crash.
//!
//! The two indexes are written without a sled transaction: under a concurrent flush a
//! multi-tree transaction (or batch) costs ~110 µs against ~16 µs for plain inserts
//! (measured here). Instead they are ordered so that a crash between the writes can only
//! leave *extra* index entries, never miss one: new entries are inserted before the
//! record, old ones removed after it (sled recovers a prefix of its log). Readers check
//! every index entry against the record it names and skip stale ones.
//!
//! Locking: one `std::sync::Mutex` serialises applies. Its critical section is a read and
//! a few sled inserts (microseconds, no `.await`, no network), which is what makes every
//! read-modify-write atomic. Reads do not take it.

mod changes;
mod commit;
mod fault;
mod index;
mod meta;
mod open;

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::codec::{self, CodecError};
use crate::merkle::{self, Hash, MerkleTree};
use crate::model::{Key, Origin, Record, Timestamp, Value, Version};
pub use changes::{Batch as ChangeBatch, Change, ChangeLimits};
use commit::Committer;
pub use commit::FlushObserver;
pub use fault::{FaultKind, StorageStatus, RESERVE_FILE};
use fault::{Health, Stage};
use index::{IndexChange, Indexes};
pub use open::OpenOptions;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record {key} is unreadable: {source}")]
    Corrupt { key: String, source: CodecError },
    #[error("a stored record key ({key:?}) is not a valid key")]
    CorruptKey { key: String },
    #[error("stored metadata {0:?} is unreadable")]
    CorruptMeta(&'static str),
    #[error(
        "the data directory holds store format {found}; this build reads format \
         {STORE_FORMAT} (move the directory away and let the node bootstrap from its peers)"
    )]
    Format { found: u8 },
    #[error("record for {key} holds an invalid todo: {reason}")]
    InvalidTodo { key: String, reason: String },
    /// The store cannot make writes durable now (see `fault.rs`); nothing was kept.
    #[error("the store refuses writes until its disk recovers ({kind:?}: {reason})")]
    Unwritable { kind: FaultKind, reason: String },
    /// The store is reopening after a fault; retry in a moment.
    #[error("the store is reopening after a storage fault")]
    Reopening,
    #[error("sled's data file {path} was not found, so it cannot be fsynced: {source}")]
    DataFile { path: String, source: std::io::Error },
    #[error("the store is closed")]
    Closed,
    #[error(
        "the data directory {dir} is in use by another kvs process (or another open of it \
         in this one); stop that one or choose another --data-dir"
    )]
    InUse { dir: String },
}

impl StoreError {
    /// The kind of storage fault behind this error, if it is one: the disk is full, or
    /// another I/O failure (by `io::ErrorKind`, never by message text).
    pub fn fault(&self) -> Option<FaultKind> {
        match self {
            StoreError::Sled(sled::Error::Io(io)) => Some(FaultKind::of(io.kind())),
            StoreError::Unwritable { kind, .. } => Some(*kind),
            StoreError::Reopening | StoreError::DataFile { .. } => Some(FaultKind::Io),
            _ => None,
        }
    }

    /// True when the disk is full: the write was refused and nothing was kept.
    pub fn is_storage_full(&self) -> bool {
        self.fault() == Some(FaultKind::DiskFull)
    }
}

/// Why an [`Store::apply_with`] did not happen: the caller's own refusal, or the store's.
#[derive(Debug)]
pub enum ApplyError<E> {
    Rejected(E),
    Store(StoreError),
}

impl<E> From<StoreError> for ApplyError<E> {
    fn from(error: StoreError) -> Self {
        ApplyError::Store(error)
    }
}

/// The result of an apply.
#[derive(Debug, Clone)]
pub struct Applied {
    /// False when the candidate lost to (or equalled) the stored record: nothing changed.
    pub changed: bool,
    /// The record now stored under the key.
    pub record: Record,
    /// Pass to [`Store::wait_durable`] before acknowledging.
    pub seq: u64,
}

/// Live record counts (tombstones not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub todos: u64,
    pub docs: u64,
}

struct WriteState {
    merkle: MerkleTree,
    counts: Counts,
    /// Every apply not yet known durable, with the record it replaced: what a fault
    /// rolls back, and what readers are served for those keys until it has.
    undo: VecDeque<Undo>,
    /// The number the next change gets in the change log.
    next_change: u64,
}

struct Undo {
    seq: u64,
    key: Key,
    previous: Option<Record>,
    /// The change this apply logged: published once it is durable.
    change: Option<Arc<Change>>,
}

/// One open sled handle and its trees. Replaced whole when the store reopens after a
/// fault (sled's errors are sticky).
struct Engine {
    db: sled::Db,
    records: sled::Tree,
    indexes: Indexes,
    meta: sled::Tree,
    /// The change log (see `changes.rs`).
    changes: sled::Tree,
    /// sled's data file, for an `fdatasync` after sled's flush: sled 0.34 uses
    /// `sync_file_range`, which does not survive power loss on Linux.
    data_file: File,
}

impl Engine {
    /// sled's flush, then an `fdatasync` of its data file.
    /// A flush slower than `SLOW_FLUSH` is logged (at debug) with how its time split.
    fn flush(&self) -> Result<(), StoreError> {
        let start = Instant::now();
        let bytes = self.db.flush()?;
        let flushed = start.elapsed();
        self.data_file.sync_data().map_err(sled::Error::Io)?;
        let total = start.elapsed();
        if total >= SLOW_FLUSH {
            tracing::debug!(
                total_ms = total.as_secs_f64() * 1e3,
                sled_flush_ms = flushed.as_secs_f64() * 1e3,
                fdatasync_ms = (total - flushed).as_secs_f64() * 1e3,
                bytes,
                "slow flush"
            );
        }
        Ok(())
    }
}

/// A flush this slow is logged at debug level.
const SLOW_FLUSH: Duration = Duration::from_millis(20);

/// How long a caller waits for the store to reopen after a fault.
const REOPEN_WAIT: Duration = Duration::from_secs(3);

struct Inner {
    dir: PathBuf,
    identity: Origin,
    highest_ts_at_open: Timestamp,
    /// `None` only while the store reopens after a fault.
    engine: RwLock<Option<Arc<Engine>>>,
    write: Mutex<WriteState>,
    health: Health,
    committer: Committer,
    /// False only for the `merkle-cost` benchmark: the tree is then left empty.
    merkle_upkeep: bool,
    feed: changes::Feed,
}

impl Inner {
    /// XORs a record's entry into (or out of) the Merkle tree: the one place that keeps
    /// the tree, so the benchmark switch that skips it is checked once.
    fn toggle_entry(
        &self,
        state: &mut WriteState,
        segment: u16,
        key_bytes: &[u8],
        record: &Record,
    ) {
        if self.merkle_upkeep {
            state.merkle.toggle(segment, &entry_of(key_bytes, record));
        }
    }

    /// The current handle. While the store reopens after a fault (milliseconds on a
    /// small store, about two seconds at a million records) callers wait up to
    /// [`REOPEN_WAIT`], then get [`StoreError::Reopening`].
    fn engine(&self) -> Result<Arc<Engine>, StoreError> {
        let started = std::time::Instant::now();
        loop {
            if let Some(engine) = &*self.engine.read().unwrap_or_else(PoisonError::into_inner) {
                return Ok(engine.clone());
            }
            if started.elapsed() >= REOPEN_WAIT {
                return Err(StoreError::Reopening);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// A read on the current handle. sled's errors are sticky, so between a fault and the
    /// reopen (up to a second) the faulted handle can refuse reads of durable data too:
    /// such a read waits for the fresh handle (up to [`REOPEN_WAIT`]) and is tried again
    /// there, rather than failing a reader for a writer's fault.
    fn read<T>(&self, read: impl Fn(&Engine) -> Result<T, sled::Error>) -> Result<T, StoreError> {
        let engine = self.engine()?;
        match read(&engine) {
            Err(_) if !self.health.is_healthy() => {
                // Only a weak reference while waiting: the reopen needs the last strong one
                // gone (sled's directory lock goes with it), and the weak one keeps the
                // old handle's address from being reused by the fresh one.
                let faulted = Arc::downgrade(&engine);
                drop(engine);
                let started = std::time::Instant::now();
                loop {
                    let current = self.engine()?;
                    if !std::sync::Weak::ptr_eq(&faulted, &Arc::downgrade(&current)) {
                        return Ok(read(&current)?);
                    }
                    drop(current);
                    if started.elapsed() >= REOPEN_WAIT {
                        return Err(StoreError::Reopening);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
            result => Ok(result?),
        }
    }

    fn lock_write(&self) -> MutexGuard<'_, WriteState> {
        // A panic while holding the lock leaves at worst extra index entries (which readers
        // skip) and a Merkle tree one apply behind the records until the next open; keep
        // serving rather than refuse every write.
        self.write.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refuses a write while the store is faulted (call with the write lock held).
    fn check_writable(&self) -> Result<(), StoreError> {
        if self.health.is_healthy() {
            return Ok(());
        }
        let (kind, reason) = self.health.refusal();
        Err(StoreError::Unwritable { kind, reason })
    }

    /// Flushes the current handle (see [`Engine::flush`]).
    fn flush_engine(&self) -> Result<(), StoreError> {
        self.engine()?.flush()
    }

    /// A write to sled failed under the write lock: lets go of the lock (faulting takes
    /// it), faults the store, and returns the error for the writer.
    fn failed_write(&self, state: MutexGuard<'_, WriteState>, error: sled::Error) -> StoreError {
        drop(state);
        let error = StoreError::from(error);
        self.fault(&error);
        error
    }

    /// Drops the undo entries of applies now durable.
    /// Drops the undo entries of applies now durable; their changes are marked durable
    /// and returned, for [`changes::Feed::send`] once the writers are acknowledged.
    fn forget_undo(&self, flushed: u64) -> Vec<Arc<Change>> {
        let mut durable = Vec::new();
        {
            let mut state = self.lock_write();
            while state.undo.front().is_some_and(|undo| undo.seq <= flushed) {
                if let Some(change) = state.undo.pop_front().and_then(|undo| undo.change) {
                    durable.push(change);
                }
            }
        }
        self.feed.mark_durable(&durable);
        durable
    }

    /// Sends durable changes to the live watchers.
    fn send_changes(&self, changes: Vec<Arc<Change>>) {
        self.feed.send(changes);
    }

    /// Takes the next change number and logs `record` under `key` with it (in the same
    /// flush group as the record itself). Call with the write lock held.
    fn log_change(
        &self,
        engine: &Engine,
        state: &mut WriteState,
        key: &Key,
        key_bytes: &[u8],
        record: &Record,
    ) -> Result<Arc<Change>, sled::Error> {
        let id = state.next_change;
        let arrival = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        engine
            .changes
            .insert(changes::entry_key(id), changes::encode(arrival, key_bytes, record))?;
        state.next_change += 1;
        Ok(Arc::new(Change { id, key: key.clone(), record: record.clone() }))
    }

    /// Faults the store after a storage error in an apply or a flush (see `fault.rs`)
    /// and wakes the committer thread, which recovers (never the caller's thread: a
    /// reopen can take seconds). Errors that are not storage faults change nothing.
    fn fault(&self, error: &StoreError) {
        let Some(kind) = error.fault() else { return };
        {
            let _state = self.lock_write();
            let reason = match kind {
                FaultKind::DiskFull => {
                    format!("no space left on the filesystem of {}", self.dir.display())
                }
                FaultKind::Io => format!("I/O error under {}: {error}", self.dir.display()),
            };
            self.health.fault(kind, reason);
            let (kind, reason) = self.health.refusal();
            self.committer.lose_unflushed(kind, &reason);
        }
        self.committer.request_flush();
    }

    /// One recovery attempt (the committer calls it once a second while faulted).
    fn recover(&self) {
        match self.health.stage() {
            Stage::Healthy => {}
            Stage::Dirty => {
                let full = self.health.kind() == FaultKind::DiskFull;
                if full && !self.health.reserve().release() {
                    let room = fault::free_bytes(&self.dir).unwrap_or(0);
                    if room < fault::MIN_FREE_BYTES {
                        return; // sled cannot reopen yet; keep serving from the old handle
                    }
                }
                match self.reopen() {
                    Ok(()) => {
                        self.health.set_clean();
                        self.recover();
                    }
                    Err(error) => {
                        tracing::debug!(%error, "storage: reopen failed; retrying");
                    }
                }
            }
            Stage::Clean => {
                let reserve = self.health.reserve();
                let needed = reserve.bytes() + fault::MIN_FREE_BYTES;
                if self.health.kind() == FaultKind::DiskFull
                    && fault::free_bytes(&self.dir).unwrap_or(0) < needed
                {
                    return;
                }
                if let Err(error) = reserve.make() {
                    tracing::debug!(%error, "storage: cannot make the reserve yet");
                    return;
                }
                let probe = self.engine().and_then(|engine| {
                    engine.meta.insert(meta::META_PROBE, &[1])?;
                    self.flush_engine()
                });
                match probe {
                    Ok(()) => {
                        self.health.set_healthy();
                        self.committer.request_flush();
                    }
                    Err(error) => {
                        tracing::debug!(%error, "storage: still unwritable");
                        self.health
                            .fault(error.fault().unwrap_or(FaultKind::Io), error.to_string());
                    }
                }
            }
        }
    }

    /// Swaps the failing handle for a fresh one on what is durable, rolls the lost
    /// applies back on it, and rebuilds the Merkle tree and counts. Readers get
    /// [`StoreError::Reopening`] meanwhile.
    fn reopen(&self) -> Result<(), StoreError> {
        let old = self.engine.write().unwrap_or_else(PoisonError::into_inner).take();
        drop(old); // the lock on the directory goes with the last handle (open waits)
        let engine = Arc::new(open::open_engine(&self.dir)?);
        let mut state = self.lock_write();
        let rolled_back = rollback(&engine, &state.undo);
        // Changes past the last published one were not durable (or were lost): gone, and
        // their numbers given out again.
        let durable = self.feed.durable();
        for entry in engine.changes.range(changes::entry_key(durable + 1)..) {
            engine.changes.remove(entry?.0)?;
        }
        let (rebuilt, _) = open::scan(&engine.records, self.merkle_upkeep)?;
        state.merkle = rebuilt.merkle;
        state.counts = rebuilt.counts;
        state.next_change = durable + 1;
        *self.engine.write().unwrap_or_else(PoisonError::into_inner) = Some(engine.clone());
        rolled_back?;
        engine.flush()?;
        state.undo.clear();
        Ok(())
    }
}

/// Puts back, on a fresh handle, the record each lost apply replaced (the first one
/// per key is the durable version).
fn rollback(engine: &Engine, undo: &VecDeque<Undo>) -> Result<(), StoreError> {
    let mut done = std::collections::HashSet::new();
    for entry in undo {
        let key_bytes = entry.key.to_bytes();
        if !done.insert(key_bytes.clone()) {
            continue;
        }
        let stored_key = record_key(&key_bytes);
        let current = match engine.records.get(&stored_key)? {
            Some(bytes) => Some(decode(&key_bytes, &bytes)?),
            None => None,
        };
        if current == entry.previous {
            continue;
        }
        match (&entry.previous, &current) {
            (Some(previous), current) => {
                let index = IndexChange::new(&entry.key, &key_bytes, current.as_ref(), previous)?;
                engine.indexes.insert_new(&index)?;
                engine.records.insert(stored_key, codec::encode_record(previous))?;
                engine.indexes.remove_old(&index)?;
            }
            (None, Some(current)) => {
                engine.records.remove(&stored_key)?;
                engine
                    .indexes
                    .remove_old(&IndexChange::removing(&entry.key, &key_bytes, current))?;
            }
            (None, None) => {}
        }
    }
    Ok(())
}

/// A cheap-to-clone handle to one node's database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// A position in the newest-first todo listing (opaque to clients).
pub type TodoCursor = [u8; 24];

/// The layout of keys and values in the trees. Format 1 (before 2026-11-22) had text
/// todo keys and JSON todo values; bump when either changes.
pub const STORE_FORMAT: u8 = 2;

impl Store {
    /// This node's id and `joined_at`, stamped on every local write.
    pub fn identity(&self) -> Origin {
        self.inner.identity
    }

    /// The highest record timestamp found at open: the clock must start past it.
    pub fn highest_ts_at_open(&self) -> Timestamp {
        self.inner.highest_ts_at_open
    }

    /// The record under `key`. While the store is faulted and the lost applies are not
    /// rolled back yet, a key they touched reads as its durable version.
    pub fn get(&self, key: &Key) -> Result<Option<Record>, StoreError> {
        if !self.inner.health.is_healthy() && self.inner.health.stage() == Stage::Dirty {
            let state = self.inner.lock_write();
            if let Some(undo) = state.undo.iter().find(|undo| undo.key == *key) {
                return Ok(undo.previous.clone());
            }
        }
        let key_bytes = key.to_bytes();
        let found = self.inner.read(|engine| engine.records.get(record_key(&key_bytes)))?;
        match found {
            Some(bytes) => Ok(Some(decode(&key_bytes, &bytes)?)),
            None => Ok(None),
        }
    }

    /// The logged changes after `after`, in order, at most `limit`, none past the last
    /// durable one.
    pub fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let durable = self.inner.feed.durable();
        if after >= durable {
            return Ok(Vec::new());
        }
        let engine = self.inner.engine()?;
        let range = changes::entry_key(after + 1)..=changes::entry_key(durable);
        let mut found = Vec::new();
        for entry in engine.changes.range(range).take(limit) {
            let (key, bytes) = entry?;
            found.push(changes::decode(changes::id_of(&key), &bytes)?.1);
        }
        Ok(found)
    }

    /// The oldest change the log still holds.
    pub fn oldest_change(&self) -> Result<Option<u64>, StoreError> {
        let first = self.inner.engine()?.changes.first()?;
        Ok(first.map(|(key, _)| changes::id_of(&key)))
    }

    /// The number of the last durable change (0 before the first).
    pub fn last_change(&self) -> u64 {
        self.inner.feed.durable()
    }

    /// Every change from now on, as soon as it is durable. A receiver that falls more
    /// than a thousand changes behind is told it lagged (and reads them from the log).
    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<ChangeBatch> {
        self.inner.feed.subscribe()
    }

    pub fn set_change_limits(&self, limits: ChangeLimits) {
        self.inner.feed.set_limits(limits);
    }

    /// Drops the oldest changes past the log's limits (at most `max` of them); returns
    /// how many. The newest change is always kept, even when it is past the age limit:
    /// its number is where the numbering resumes after a restart.
    pub fn trim_changes(&self, now_ms: u64, max: usize) -> Result<usize, StoreError> {
        let limits = self.inner.feed.limits();
        let durable = self.inner.feed.durable();
        let engine = self.inner.engine()?;
        let mut trimmed = 0;
        for entry in engine.changes.range(..changes::entry_key(durable)).take(max) {
            let (key, bytes) = entry?;
            let id = changes::id_of(&key);
            let (arrival, _) = changes::decode(id, &bytes)?;
            let over = durable - id >= limits.max_entries;
            let old = now_ms.saturating_sub(arrival) > limits.max_age_ms;
            if !over && !old {
                break;
            }
            engine.changes.remove(key)?;
            trimmed += 1;
        }
        Ok(trimmed)
    }

    /// Whether writes are accepted now (cheap: one atomic load).
    pub fn writable(&self) -> bool {
        self.inner.health.is_healthy()
    }

    /// Whether writes are accepted, and why not.
    /// Tells `observer` of every group flush from now on (set once).
    pub fn observe_flushes(&self, observer: Arc<dyn FlushObserver>) {
        self.inner.committer.observe(observer);
    }

    pub fn storage_status(&self) -> StorageStatus {
        self.inner.health.status()
    }

    /// Stores `record` if it supersedes what is stored (the merge rule).
    pub fn apply(&self, key: &Key, record: Record) -> Result<Applied, StoreError> {
        self.apply_with(key, |_| Ok::<_, std::convert::Infallible>(record)).map_err(|e| match e {
            ApplyError::Store(error) => error,
            ApplyError::Rejected(never) => match never {},
        })
    }

    /// The only mutation. Under the write lock: reads the current record, asks `decide`
    /// for a candidate (or a refusal), and stores the candidate if it supersedes the
    /// current record. Every mutation does, atomically:
    /// 1. insert the new index entries, write the record, remove the old index entries
    ///    (in that order: see the module doc);
    /// 2. XOR the old entry out of and the new one into the Merkle tree;
    /// 3. update the live counts;
    /// 4. take a sequence number for [`Store::wait_durable`].
    ///
    /// A candidate that does not supersede the current record changes nothing.
    pub fn apply_with<E>(
        &self,
        key: &Key,
        decide: impl FnOnce(Option<&Record>) -> Result<Record, E>,
    ) -> Result<Applied, ApplyError<E>> {
        let key_bytes = key.to_bytes();
        let segment = merkle::segment_of(&key_bytes);
        let stored_key = record_key_in(segment, &key_bytes);
        let inner = &*self.inner;
        inner.check_writable()?;
        let engine = inner.engine()?;

        let mut state = self.lock_write();
        inner.check_writable()?;
        let current = match engine.records.get(&stored_key).map_err(StoreError::from)? {
            Some(bytes) => Some(decode(&key_bytes, &bytes)?),
            None => None,
        };
        let candidate = decide(current.as_ref()).map_err(ApplyError::Rejected)?;
        if let Some(current) = &current {
            if !candidate.supersedes(current) {
                let seq = inner.committer.last_applied();
                return Ok(Applied { changed: false, record: current.clone(), seq });
            }
        }
        let index = IndexChange::new(key, &key_bytes, current.as_ref(), &candidate)?;
        let encoded = codec::encode_record(&candidate);
        let written = engine.indexes.insert_new(&index).and_then(|()| {
            let change = inner.log_change(&engine, &mut state, key, &key_bytes, &candidate)?;
            engine.records.insert(stored_key.as_slice(), encoded)?;
            Ok(change)
        });
        let change = match written {
            Ok(change) => change,
            // The index entries that may have been written are stale ones readers skip; a
            // logged change is past the last published one, so the reopen drops it.
            Err(error) => return Err(ApplyError::Store(inner.failed_write(state, error))),
        };
        // The record is written: from here on the tree and counts must follow it, so a
        // failure to drop an old index entry only leaves a stale entry readers skip.
        if let Err(error) = engine.indexes.remove_old(&index) {
            tracing::warn!(%key, %error, "could not remove a stale index entry");
        }

        if let Some(current) = &current {
            inner.toggle_entry(&mut state, segment, &key_bytes, current);
            adjust(&mut state.counts, key, current.is_live(), -1);
        }
        inner.toggle_entry(&mut state, segment, &key_bytes, &candidate);
        adjust(&mut state.counts, key, candidate.is_live(), 1);
        let seq = inner.committer.applied();
        state.undo.push_back(Undo {
            seq,
            key: key.clone(),
            previous: current,
            change: Some(change),
        });
        drop(state);
        inner.committer.request_flush();
        Ok(Applied { changed: true, record: candidate, seq })
    }

    /// The second mutation: removes the record under `key` if it is still exactly
    /// `version` (so a write that raced in since is kept), with its index entries, Merkle
    /// entry and count. Returns whether it removed anything. For records a sync peer
    /// proved may have been deleted (see `sync`), and for expired tombstones.
    pub fn remove_if_current(&self, key: &Key, version: &Version) -> Result<bool, StoreError> {
        let inner = &*self.inner;
        let key_bytes = key.to_bytes();
        let segment = merkle::segment_of(&key_bytes);
        let stored_key = record_key_in(segment, &key_bytes);
        inner.check_writable()?;
        let engine = inner.engine()?;
        let mut state = self.lock_write();
        inner.check_writable()?;
        let current = match engine.records.get(&stored_key)? {
            Some(bytes) => decode(&key_bytes, &bytes)?,
            None => return Ok(false),
        };
        if current.version != *version {
            return Ok(false);
        }
        // A live record removed outright is a delete to watchers (a purged tombstone
        // changes nothing they can see).
        let removed = Record::new(current.version, Value::Tombstone);
        let change = match current.is_live() {
            true => match inner.log_change(&engine, &mut state, key, &key_bytes, &removed) {
                Ok(change) => Some(change),
                Err(error) => return Err(inner.failed_write(state, error)),
            },
            false => None,
        };
        if let Err(error) = engine.records.remove(&stored_key) {
            return Err(inner.failed_write(state, error));
        }
        if let Err(error) =
            engine.indexes.remove_old(&IndexChange::removing(key, &key_bytes, &current))
        {
            tracing::warn!(%key, %error, "could not remove a stale index entry");
        }
        inner.toggle_entry(&mut state, segment, &key_bytes, &current);
        adjust(&mut state.counts, key, current.is_live(), -1);
        let seq = inner.committer.applied();
        state.undo.push_back(Undo { seq, key: key.clone(), previous: Some(current), change });
        drop(state);
        inner.committer.request_flush();
        Ok(true)
    }

    /// Removes tombstones written before `older_than` (expired by the tombstone TTL),
    /// at most `limit` of them, through [`Store::remove_if_current`]. The purge horizon
    /// is raised to `older_than` and flushed *first*: a crash mid-purge must never leave tombstones gone
    /// while peers are still told we hold them. Returns how many were purged.
    pub fn purge_tombstones(
        &self,
        older_than: Timestamp,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let engine = self.inner.engine()?;
        let end = older_than.raw().to_be_bytes().to_vec();
        let expired: Vec<sled::IVec> =
            engine.indexes.tombstones.range(..end).keys().take(limit).collect::<Result<_, _>>()?;
        // The horizon moves even when nothing expired: it says what this node may lack,
        // and keeping it at now − TTL on every node in contact lets rule 2 of
        // `sync::rules` finish off a record some nodes dropped (others would otherwise
        // hand it back and forth for ever).
        let raised = self.raise_purge_horizon(older_than.millis())?;
        if expired.is_empty() {
            return Ok(0);
        }
        if raised {
            engine.db.flush()?;
        }
        let mut purged = 0;
        for entry in expired {
            let parsed = index::parse_prefixed_entry(&entry)
                .and_then(|(ts, key_bytes)| Some((ts, Key::from_bytes(key_bytes).ok()?)));
            let Some((ts, key)) = parsed else {
                engine.indexes.tombstones.remove(&entry)?;
                continue;
            };
            let current = self.get(&key)?;
            let removed = match current {
                Some(record) if !record.is_live() && record.version.ts.raw() == ts => {
                    self.remove_if_current(&key, &record.version)?
                }
                _ => false,
            };
            if removed {
                purged += 1;
            } else {
                // The key was written again since: the entry is stale.
                engine.indexes.tombstones.remove(&entry)?;
            }
        }
        Ok(purged)
    }

    /// Rewrites live records whose expiry is at or before `now_ms` to their expired form
    /// ([`Record::expired`]), at most `limit` of them, through [`Store::apply`]: the
    /// Merkle tree does not move (same key and version), watchers see a delete, and the
    /// expired form is purged later like a tombstone. Returns how many were rewritten.
    pub fn expire_due(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let engine = self.inner.engine()?;
        let end = now_ms.saturating_add(1).to_be_bytes().to_vec();
        let due: Vec<sled::IVec> =
            engine.indexes.expiries.range(..end).keys().take(limit).collect::<Result<_, _>>()?;
        let mut expired = 0;
        for entry in due {
            let parsed = index::parse_prefixed_entry(&entry)
                .and_then(|(at, key_bytes)| Some((at, Key::from_bytes(key_bytes).ok()?)));
            let current = match &parsed {
                Some((_, key)) => self.get(key)?,
                None => None,
            };
            match (parsed, current) {
                (Some((at, key)), Some(record))
                    if record.is_live() && record.expires_at == Some(at) =>
                {
                    // The apply drops the index entry with the live form.
                    if self.apply(&key, record.expired())?.changed {
                        expired += 1;
                    }
                }
                // Rewritten or deleted since, or not ours to read: the entry is stale.
                _ => {
                    engine.indexes.expiries.remove(&entry)?;
                }
            }
        }
        Ok(expired)
    }

    /// Resolves once the apply numbered `seq` (and every one before it) is on disk.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), StoreError> {
        self.inner.committer.wait_durable(seq).await
    }

    /// The hashes of the children of the Merkle node at `level` (0 = root) and `index`,
    /// or `None` when that node is a leaf or does not exist.
    /// The Merkle nodes `depth` levels below node (`level`, `index`), or `None` if
    /// there is no such node or the tree is not that deep below it.
    pub fn merkle_descendants(
        &self,
        level: usize,
        index: usize,
        depth: usize,
    ) -> Option<Vec<Hash>> {
        let state = self.lock_write();
        (depth > 0 && level + depth <= merkle::DEPTH && state.merkle.node(level, index).is_some())
            .then(|| state.merkle.descendants(level, index, depth).to_vec())
    }

    /// Every record (tombstones included) whose key falls in Merkle leaf `segment`.
    pub fn records_in_segment(&self, segment: u16) -> Result<Vec<(Key, Record)>, StoreError> {
        Ok(self.records_in_segments(&[segment])?.pop().unwrap_or_default())
    }

    /// The records of each of `segments` (ascending, no repeats), in that order. One
    /// forward scan serves nearby segments: each new sled scan copies a whole leaf node,
    /// which made a scan per segment cost more than the records it returned.
    pub fn records_in_segments(
        &self,
        segments: &[u16],
    ) -> Result<Vec<Vec<(Key, Record)>>, StoreError> {
        /// A scan walks past the records of at most this many unwanted segments before
        /// it starts a new scan at the next wanted one.
        const REOPEN_GAP: u16 = 16;
        let mut out: Vec<Vec<(Key, Record)>> = vec![Vec::new(); segments.len()];
        if !segments.is_sorted_by(|a, b| a < b) {
            for (slot, segment) in out.iter_mut().zip(segments) {
                *slot = self.records_in_segments(&[*segment])?.pop().unwrap_or_default();
            }
            return Ok(out);
        }
        let engine = self.inner.engine()?;
        let mut wanted = 0;
        'scans: while wanted < segments.len() {
            for entry in engine.records.range(segments[wanted].to_be_bytes()..) {
                let (stored_key, bytes) = entry?;
                let Some((segment, key_bytes)) = split_stored_key(&stored_key) else {
                    return Err(StoreError::CorruptKey { key: key_text(&stored_key) });
                };
                while segments[wanted] < segment {
                    wanted += 1;
                    if wanted == segments.len() {
                        break 'scans;
                    }
                }
                if segments[wanted] == segment {
                    let key = Key::from_bytes(key_bytes)
                        .map_err(|_| StoreError::CorruptKey { key: key_text(key_bytes) })?;
                    out[wanted].push((key, decode(key_bytes, &bytes)?));
                } else if segments[wanted] - segment > REOPEN_GAP {
                    continue 'scans;
                }
            }
            break;
        }
        Ok(out)
    }

    pub fn merkle_root(&self) -> Hash {
        self.lock_write().merkle.root()
    }

    pub fn counts(&self) -> Counts {
        self.lock_write().counts
    }

    /// How many handles to this store exist (the database stays locked until the last
    /// one is dropped).
    pub fn handle_count(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// Flushes and stops the committer. Later writes fail to become durable. On a
    /// faulted store there is nothing left to flush: it returns at once.
    pub fn close(&self) -> Result<(), StoreError> {
        self.inner.committer.stop();
        if self.inner.health.is_healthy() {
            self.inner.flush_engine()?;
        }
        Ok(())
    }

    fn lock_write(&self) -> MutexGuard<'_, WriteState> {
        self.inner.lock_write()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.committer.stop();
    }
}

/// A stored record key's Merkle segment and key bytes; `None` if it is too short.
fn split_stored_key(stored_key: &[u8]) -> Option<(u16, &[u8])> {
    let (segment, key_bytes) = stored_key.split_at_checked(2)?;
    Some((u16::from_be_bytes([segment[0], segment[1]]), key_bytes))
}

fn record_key(key_bytes: &[u8]) -> Vec<u8> {
    record_key_in(merkle::segment_of(key_bytes), key_bytes)
}

fn record_key_in(segment: u16, key_bytes: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(2 + key_bytes.len());
    stored.extend_from_slice(&segment.to_be_bytes());
    stored.extend_from_slice(key_bytes);
    stored
}

fn decode(key_bytes: &[u8], bytes: &[u8]) -> Result<Record, StoreError> {
    codec::decode_record(bytes)
        .map_err(|source| StoreError::Corrupt { key: key_text(key_bytes), source })
}

/// A stored key as a log or error names it.
fn key_text(key_bytes: &[u8]) -> String {
    match Key::from_bytes(key_bytes) {
        Ok(key) => key.to_string(),
        Err(_) => String::from_utf8_lossy(key_bytes).into_owned(),
    }
}

fn entry_of(key_bytes: &[u8], record: &Record) -> Hash {
    merkle::entry_hash(key_bytes, &codec::encode_version(&record.version))
}

fn adjust(counts: &mut Counts, key: &Key, live: bool, delta: i64) {
    if !live {
        return;
    }
    let count = match key {
        Key::Todo(_) => &mut counts.todos,
        Key::Doc(_) => &mut counts.docs,
    };
    *count = count.saturating_add_signed(delta);
}

#[cfg(test)]
mod tests;
