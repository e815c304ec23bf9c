//! Opening a data directory: its format marker, this node's identity, and the in-memory
//! Merkle tree and counts rebuilt from record headers.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::changes;
use super::commit::Committer;
use super::fault::{FaultKind, Health, Reserve};
use super::index::Indexes;
use super::meta::{META_FORMAT, META_JOINED_AT, META_NODE_ID};
use super::{
    key_text, split_stored_key, Counts, Engine, Inner, Store, StoreError, WriteState, STORE_FORMAT,
};
use crate::codec;
use crate::merkle::{self, MerkleTree};
use crate::model::{Key, NodeId, Origin, Timestamp};

/// How a store is opened.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// Keep the Merkle tree (false only to measure what it costs; such a store must not
    /// sync).
    pub merkle_upkeep: bool,
    /// Bytes of the reserve file given back when the disk fills (see `fault.rs`); 0 for
    /// none.
    pub reserve_bytes: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { merkle_upkeep: true, reserve_bytes: 0 }
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`. Blocking: call from a blocking context.
    /// `now_ms` becomes this node's `joined_at` if the directory is new.
    pub fn open(dir: &Path, now_ms: u64) -> Result<Store, StoreError> {
        Store::open_with(dir, now_ms, OpenOptions::default())
    }

    /// [`Store::open`] with options. The reserve is made after the store opened; if
    /// the disk has no room for it, the store opens anyway, already faulted as full
    /// (reads served, writes refused until there is room).
    pub fn open_with(dir: &Path, now_ms: u64, options: OpenOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(sled::Error::Io)?;
        let engine = open_engine(dir)?;
        check_format(&engine)?;
        let identity = load_or_create_identity(&engine, now_ms)?;
        let (mut write, highest_ts_at_open) = scan(&engine.records, options.merkle_upkeep)?;
        let last_change = engine.changes.last()?.map_or(0, |(key, _)| changes::id_of(&key));
        write.next_change = last_change + 1;
        let reserve = Reserve::new(dir, options.reserve_bytes);
        let reserve_error = reserve.make().err();
        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            identity,
            highest_ts_at_open,
            engine: RwLock::new(Some(Arc::new(engine))),
            write: Mutex::new(write),
            health: Health::new(reserve),
            committer: Committer::new(),
            merkle_upkeep: options.merkle_upkeep,
            feed: changes::Feed::new(last_change),
        });
        inner.committer.spawn(Arc::downgrade(&inner)).map_err(sled::Error::Io)?;
        if let Some(error) = reserve_error {
            let kind = FaultKind::of(error.kind());
            inner.health.fault(kind, format!("cannot make the reserve file: {error}"));
            inner.health.set_clean();
        }
        Ok(Store { inner })
    }
}

/// Opens sled in `dir` with its trees, and sled's data file for the extra fsync.
pub(super) fn open_engine(dir: &Path) -> Result<Engine, StoreError> {
    let db = open_db(dir)?;
    let records = db.open_tree("records")?;
    let indexes = Indexes::open(&db)?;
    let meta = db.open_tree("meta")?;
    let changes = db.open_tree("changes")?;
    let path = dir.join("db");
    let data_file = File::open(&path)
        .map_err(|source| StoreError::DataFile { path: path.display().to_string(), source })?;
    Ok(Engine { db, records, indexes, meta, changes, data_file })
}

/// How long an open waits for the directory lock: sled's background threads release it
/// a moment after the last handle closes, and a restarted process may start while the old
/// one is still exiting.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens sled in `dir`, waiting up to [`LOCK_WAIT`] for another holder of its lock.
fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    let started = Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .open();
        match opened {
            Err(sled::Error::Io(io)) if is_lock_held(&io) => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(StoreError::InUse { dir: dir.display().to_string() });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

/// True when sled could not take the directory's file lock (another open handle holds it).
fn is_lock_held(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("could not acquire lock")
}

/// Rebuilds the Merkle tree (left empty without `merkle_upkeep`) and counts from record
/// headers; finds the highest timestamp.
pub(super) fn scan(
    records: &sled::Tree,
    merkle_upkeep: bool,
) -> Result<(WriteState, Timestamp), StoreError> {
    let mut merkle = MerkleTree::new();
    let mut counts = Counts::default();
    let mut highest = Timestamp::default();
    for entry in records.iter() {
        let (stored_key, bytes) = entry?;
        let Some((segment, key_bytes)) = split_stored_key(&stored_key) else {
            return Err(StoreError::CorruptKey { key: key_text(&stored_key) });
        };
        let codec::Header { version, live, .. } = codec::peek_record(&bytes)
            .map_err(|source| StoreError::Corrupt { key: key_text(key_bytes), source })?;
        if merkle_upkeep {
            merkle.toggle(segment, &merkle::entry_hash(key_bytes, version));
        }
        highest = highest.max(codec::decode_version(version).ts);
        if live {
            if Key::is_todo_bytes(key_bytes) {
                counts.todos += 1;
            } else {
                counts.docs += 1;
            }
        }
    }
    Ok((WriteState { merkle, counts, undo: Default::default(), next_change: 1 }, highest))
}

/// Refuses a directory written in another format; marks a new one with ours.
fn check_format(engine: &Engine) -> Result<(), StoreError> {
    let Engine { db, meta, records, .. } = engine;
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

fn load_or_create_identity(engine: &Engine, now_ms: u64) -> Result<Origin, StoreError> {
    let Engine { db, meta, .. } = engine;
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
