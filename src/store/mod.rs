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

mod commit;
mod index;
mod meta;
mod open;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::codec::{self, CodecError};
use crate::merkle::{self, Hash, MerkleTree};
use crate::model::{Key, Origin, Record, Timestamp, Version};
use commit::Committer;
use index::{IndexChange, Indexes};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record {key} is unreadable: {source}")]
    Corrupt { key: String, source: CodecError },
    #[error("stored metadata {0:?} is unreadable")]
    CorruptMeta(&'static str),
    #[error(
        "the data directory holds store format {found}; this build reads format \
         {STORE_FORMAT} (move the directory away and let the node bootstrap from its peers)"
    )]
    Format { found: u8 },
    #[error("record for {key} holds an invalid todo: {reason}")]
    InvalidTodo { key: String, reason: String },
    #[error("flushing to disk failed: {0}")]
    Flush(String),
    #[error("the store is closed")]
    Closed,
    #[error(
        "the data directory {dir} is in use by another kvs process (or another open of it \
         in this one); stop that one or choose another --data-dir"
    )]
    InUse { dir: String },
}

impl StoreError {
    /// True when the disk is full: the write was refused and nothing changed.
    pub fn is_storage_full(&self) -> bool {
        let full = |text: &str| text.contains("No space left") || text.contains("StorageFull");
        match self {
            StoreError::Sled(sled::Error::Io(io)) => {
                io.kind() == std::io::ErrorKind::StorageFull || full(&io.to_string())
            }
            StoreError::Flush(reason) => full(reason),
            _ => false,
        }
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
}

struct Inner {
    db: sled::Db,
    records: sled::Tree,
    indexes: Indexes,
    meta: sled::Tree,
    identity: Origin,
    highest_ts_at_open: Timestamp,
    write: Mutex<WriteState>,
    committer: Committer,
    /// False only for the `merkle-cost` benchmark: the tree is then left empty.
    merkle_upkeep: bool,
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

    pub fn get(&self, key: &Key) -> Result<Option<Record>, StoreError> {
        let key_bytes = key.to_bytes();
        match self.inner.records.get(record_key(&key_bytes))? {
            Some(bytes) => Ok(Some(decode(&key_bytes, &bytes)?)),
            None => Ok(None),
        }
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

        let mut state = self.lock_write();
        let current = match inner.records.get(&stored_key).map_err(StoreError::from)? {
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
        inner.indexes.insert_new(&index).map_err(StoreError::from)?;
        inner.records.insert(stored_key.as_slice(), encoded).map_err(StoreError::from)?;
        // The record is written: from here on the tree and counts must follow it, so a
        // failure to drop an old index entry only leaves a stale entry readers skip.
        if let Err(error) = inner.indexes.remove_old(&index) {
            tracing::warn!(%key, %error, "could not remove a stale index entry");
        }

        if let Some(current) = &current {
            inner.toggle_entry(&mut state, segment, &key_bytes, current);
            adjust(&mut state.counts, key, current.is_live(), -1);
        }
        inner.toggle_entry(&mut state, segment, &key_bytes, &candidate);
        adjust(&mut state.counts, key, candidate.is_live(), 1);
        let seq = inner.committer.applied();
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
        let mut state = self.lock_write();
        let current = match inner.records.get(&stored_key)? {
            Some(bytes) => decode(&key_bytes, &bytes)?,
            None => return Ok(false),
        };
        if current.version != *version {
            return Ok(false);
        }
        inner.records.remove(&stored_key)?;
        inner.indexes.remove_old(&IndexChange::removing(key, &key_bytes, &current))?;
        inner.toggle_entry(&mut state, segment, &key_bytes, &current);
        adjust(&mut state.counts, key, current.is_live(), -1);
        drop(state);
        inner.committer.applied();
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
        let inner = &*self.inner;
        let end = older_than.raw().to_be_bytes().to_vec();
        let expired: Vec<sled::IVec> =
            inner.indexes.tombstones.range(..end).keys().take(limit).collect::<Result<_, _>>()?;
        // The horizon moves even when nothing expired: it says what this node may lack,
        // and keeping it at now − TTL on every node in contact lets rule 2 of
        // `sync::rules` finish off a record some nodes dropped (others would otherwise
        // hand it back and forth for ever).
        let raised = self.raise_purge_horizon(older_than.millis())?;
        if expired.is_empty() {
            return Ok(0);
        }
        if raised {
            inner.db.flush()?;
        }
        let mut purged = 0;
        for entry in expired {
            let parsed = index::parse_tombstone_entry(&entry)
                .and_then(|(ts, key_bytes)| Some((ts, Key::from_bytes(key_bytes).ok()?)));
            let Some((ts, key)) = parsed else {
                inner.indexes.tombstones.remove(&entry)?;
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
                inner.indexes.tombstones.remove(&entry)?;
            }
        }
        Ok(purged)
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
        let mut wanted = 0;
        'scans: while wanted < segments.len() {
            for entry in self.inner.records.range(segments[wanted].to_be_bytes()..) {
                let (stored_key, bytes) = entry?;
                let segment = u16::from_be_bytes([stored_key[0], stored_key[1]]);
                while segments[wanted] < segment {
                    wanted += 1;
                    if wanted == segments.len() {
                        break 'scans;
                    }
                }
                if segments[wanted] == segment {
                    let key_bytes = &stored_key[2..];
                    let key = Key::from_bytes(key_bytes)
                        .map_err(|_| StoreError::CorruptMeta("records"))?;
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

    /// Flushes and stops the committer. Later writes fail to become durable.
    pub fn close(&self) -> Result<(), StoreError> {
        self.inner.committer.stop();
        self.inner.db.flush()?;
        Ok(())
    }

    fn lock_write(&self) -> MutexGuard<'_, WriteState> {
        // A panic while holding the lock leaves at worst extra index entries (which readers
        // skip) and a Merkle tree one apply behind the records until the next open; keep
        // serving rather than refuse every write.
        self.inner.write.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.committer.stop();
    }
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
