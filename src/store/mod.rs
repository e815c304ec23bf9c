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

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use uuid::Uuid;

use crate::codec::{self, CodecError};
use crate::merkle::{self, Hash, MerkleTree};
use crate::model::todo::StoredTodo;
use crate::model::{Key, NodeId, Origin, Record, Timestamp};
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

const META_FORMAT: &str = "store_format";
const META_NODE_ID: &str = "node_id";
const META_JOINED_AT: &str = "joined_at";
const META_LAST_CONTACT: &str = "last_contact";
const META_PURGE_HORIZON: &str = "purge_horizon";

impl Store {
    /// Opens (or creates) the store in `dir`. Blocking: call from a blocking context.
    /// `now_ms` becomes this node's `joined_at` if the directory is new.
    pub fn open(dir: &Path, now_ms: u64) -> Result<Store, StoreError> {
        Store::open_with(dir, now_ms, true)
    }

    /// [`Store::open`], optionally without Merkle upkeep (`merkle_upkeep = false` is for
    /// measuring what the tree costs; such a store must not sync).
    pub fn open_with(dir: &Path, now_ms: u64, merkle_upkeep: bool) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(sled::Error::Io)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let records = db.open_tree("records")?;
        let indexes = Indexes::open(&db)?;
        let meta = db.open_tree("meta")?;
        check_format(&db, &meta, &records)?;
        let identity = load_or_create_identity(&db, &meta, now_ms)?;
        let (write, highest_ts_at_open) = scan(&records)?;
        let data_file = File::open(dir.join("db")).ok();
        let committer = Committer::start(db.clone(), data_file).map_err(sled::Error::Io)?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                records,
                indexes,
                meta,
                identity,
                highest_ts_at_open,
                write: Mutex::new(write),
                committer,
                merkle_upkeep,
            }),
        })
    }

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

    /// The other mutation: removes tombstones written before `older_than` (expired by
    /// the tombstone TTL), at most `limit` of them. Under the write lock, a tombstone is
    /// removed only if it is still the current record; its Merkle entry goes with it.
    /// Returns how many were purged.
    pub fn purge_tombstones(
        &self,
        older_than: Timestamp,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let inner = &*self.inner;
        let end = older_than.raw().to_be_bytes().to_vec();
        let expired: Vec<sled::IVec> =
            inner.indexes.tombstones.range(..end).keys().take(limit).collect::<Result<_, _>>()?;
        let mut purged = 0;
        for entry in expired {
            let Some((ts, key_bytes)) = index::parse_tombstone_entry(&entry) else {
                inner.indexes.tombstones.remove(&entry)?;
                continue;
            };
            let segment = merkle::segment_of(key_bytes);
            let stored_key = record_key_in(segment, key_bytes);
            let mut state = self.lock_write();
            let current = match inner.records.get(&stored_key)? {
                Some(bytes) => Some(decode(key_bytes, &bytes)?),
                None => None,
            };
            match (current, Key::from_bytes(key_bytes)) {
                (Some(record), Ok(key)) if !record.is_live() && record.version.ts.raw() == ts => {
                    inner.records.remove(&stored_key)?;
                    inner.indexes.remove_old(&IndexChange::removing(&key, key_bytes, &record))?;
                    inner.toggle_entry(&mut state, segment, key_bytes, &record);
                    purged += 1;
                }
                // The key was written again since: the entry is stale.
                _ => {
                    inner.indexes.tombstones.remove(&entry)?;
                }
            }
        }
        if purged > 0 {
            // Durable with the purge (the same flush): peers compare it with their last
            // contact to learn that they may hold data whose tombstones are gone here.
            self.raise_purge_horizon(older_than.millis())?;
            let _seq = inner.committer.applied();
            inner.committer.request_flush();
        }
        Ok(purged)
    }

    /// Drops every record and index entry (the node's identity stays): for a node that
    /// was away so long that its copy may hold data whose tombstones are purged.
    pub fn discard_all(&self) -> Result<(), StoreError> {
        let mut state = self.lock_write();
        self.inner.records.clear()?;
        self.inner.indexes.clear()?;
        state.merkle = MerkleTree::new();
        state.counts = Counts::default();
        drop(state);
        self.inner.db.flush()?;
        Ok(())
    }

    /// When this node last completed a sync with a peer (ms), if ever.
    pub fn last_contact(&self) -> Result<Option<u64>, StoreError> {
        self.meta_u64(META_LAST_CONTACT)
    }

    fn meta_u64(&self, name: &'static str) -> Result<Option<u64>, StoreError> {
        match self.inner.meta.get(name)? {
            Some(bytes) => {
                let bytes: [u8; 8] =
                    bytes.as_ref().try_into().map_err(|_| StoreError::CorruptMeta(name))?;
                Ok(Some(u64::from_be_bytes(bytes)))
            }
            None => Ok(None),
        }
    }

    /// The purge horizon (ms): this node may lack tombstones written before it, because
    /// it purged them or refused them as expired. 0 if it never did either.
    pub fn purge_horizon(&self) -> Result<u64, StoreError> {
        Ok(self.meta_u64(META_PURGE_HORIZON)?.unwrap_or(0))
    }

    /// Moves the purge horizon forward to `ms` (never back).
    pub fn raise_purge_horizon(&self, ms: u64) -> Result<(), StoreError> {
        self.inner.meta.fetch_and_update(META_PURGE_HORIZON, |current| {
            let current = current
                .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                .map_or(0, u64::from_be_bytes);
            Some(current.max(ms).to_be_bytes().to_vec())
        })?;
        Ok(())
    }

    pub fn set_last_contact(&self, now_ms: u64) -> Result<(), StoreError> {
        self.inner.meta.insert(META_LAST_CONTACT, &now_ms.to_be_bytes())?;
        Ok(())
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
        let mut out = Vec::new();
        for entry in self.inner.records.scan_prefix(segment.to_be_bytes()) {
            let (stored_key, bytes) = entry?;
            let key_bytes = &stored_key[2..];
            let key = Key::from_bytes(key_bytes).map_err(|_| StoreError::CorruptMeta("records"))?;
            out.push((key, decode(key_bytes, &bytes)?));
        }
        Ok(out)
    }

    pub fn merkle_root(&self) -> Hash {
        self.lock_write().merkle.root()
    }

    pub fn counts(&self) -> Counts {
        self.lock_write().counts
    }

    /// Live todos, newest first, starting after `after`: each with its index position and
    /// record. Stale index entries (left by a crash mid-apply) are skipped.
    pub fn todos_newest_first(
        &self,
        after: Option<TodoCursor>,
    ) -> impl Iterator<Item = Result<(TodoCursor, Uuid, Record), StoreError>> + '_ {
        let range = match after {
            Some(cursor) => self.inner.indexes.todo_order.range(..cursor.to_vec()),
            None => self.inner.indexes.todo_order.range::<Vec<u8>, _>(..),
        };
        range.rev().filter_map(move |entry| self.todo_at(entry).transpose())
    }

    fn todo_at(
        &self,
        entry: sled::Result<(sled::IVec, sled::IVec)>,
    ) -> Result<Option<(TodoCursor, Uuid, Record)>, StoreError> {
        let (index_key, _) = entry?;
        let cursor: TodoCursor =
            index_key.as_ref().try_into().map_err(|_| StoreError::CorruptMeta("todo_order"))?;
        let id =
            Uuid::from_slice(&cursor[8..]).map_err(|_| StoreError::CorruptMeta("todo_order"))?;
        let Some(record) = self.get(&Key::Todo(id))? else { return Ok(None) };
        let created_at = record
            .live_bytes()
            .and_then(|bytes| StoredTodo::decode(bytes).ok())
            .map(|t| t.created_at);
        if created_at.map(u64::to_be_bytes).as_ref()
            != Some(&cursor[..8].try_into().unwrap_or_default())
        {
            return Ok(None);
        }
        Ok(Some((cursor, id, record)))
    }

    /// Document paths starting with `prefix`, in byte order, after `after`. May name
    /// documents that are deleted by now: check the record.
    pub fn doc_paths(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> impl Iterator<Item = Result<String, StoreError>> + '_ {
        let start = match after {
            Some(after) if after.as_bytes() >= prefix.as_bytes() => {
                std::ops::Bound::Excluded(after.as_bytes().to_vec())
            }
            _ => std::ops::Bound::Included(prefix.as_bytes().to_vec()),
        };
        let prefix = prefix.as_bytes().to_vec();
        self.inner
            .indexes
            .doc_names
            .range((start, std::ops::Bound::Unbounded))
            .take_while(move |entry| {
                entry.as_ref().map_or(true, |(path, _)| path.starts_with(&prefix))
            })
            .map(|entry| {
                let (path, _) = entry?;
                String::from_utf8(path.to_vec()).map_err(|_| StoreError::CorruptMeta("doc_names"))
            })
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

/// Rebuilds the Merkle tree and counts from record headers; finds the highest timestamp.
fn scan(records: &sled::Tree) -> Result<(WriteState, Timestamp), StoreError> {
    let mut merkle = MerkleTree::new();
    let mut counts = Counts::default();
    let mut highest = Timestamp::default();
    for entry in records.iter() {
        let (stored_key, bytes) = entry?;
        let key_bytes = stored_key.get(2..).unwrap_or_default();
        let segment = u16::from_be_bytes([stored_key[0], stored_key.get(1).copied().unwrap_or(0)]);
        let (version, live) = codec::peek_record(&bytes)
            .map_err(|source| StoreError::Corrupt { key: key_text(key_bytes), source })?;
        merkle.toggle(segment, &merkle::entry_hash(key_bytes, version));
        highest = highest.max(codec::decode_version(version).ts);
        if live {
            if Key::is_todo_bytes(key_bytes) {
                counts.todos += 1;
            } else {
                counts.docs += 1;
            }
        }
    }
    Ok((WriteState { merkle, counts }, highest))
}

/// Refuses a directory written in another format; marks a new one with ours.
fn check_format(db: &sled::Db, meta: &sled::Tree, records: &sled::Tree) -> Result<(), StoreError> {
    match meta.get(META_FORMAT)? {
        Some(found) if found.as_ref() == [STORE_FORMAT] => Ok(()),
        Some(found) => Err(StoreError::Format { found: found.first().copied().unwrap_or(0) }),
        None if !records.is_empty() => Err(StoreError::Format { found: 1 }),
        None => {
            meta.insert(META_FORMAT, &[STORE_FORMAT])?;
            db.flush()?;
            Ok(())
        }
    }
}

fn load_or_create_identity(
    db: &sled::Db,
    meta: &sled::Tree,
    now_ms: u64,
) -> Result<Origin, StoreError> {
    let node = meta.get(META_NODE_ID)?;
    let joined_at = meta.get(META_JOINED_AT)?;
    match (node, joined_at) {
        (Some(node), Some(joined_at)) => {
            let node =
                Uuid::from_slice(&node).map_err(|_| StoreError::CorruptMeta(META_NODE_ID))?;
            let joined_at: [u8; 8] = joined_at
                .as_ref()
                .try_into()
                .map_err(|_| StoreError::CorruptMeta(META_JOINED_AT))?;
            Ok(Origin { node: NodeId(node), joined_at: u64::from_be_bytes(joined_at) })
        }
        _ => {
            let origin = Origin { node: NodeId::random(), joined_at: now_ms };
            meta.insert(META_JOINED_AT, &origin.joined_at.to_be_bytes())?;
            meta.insert(META_NODE_ID, origin.node.0.as_bytes())?;
            db.flush()?;
            Ok(origin)
        }
    }
}

#[cfg(test)]
mod tests;
