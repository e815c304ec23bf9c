//! Opening a data directory: its format marker, this node's identity, and the in-memory
//! Merkle tree and counts rebuilt from record headers.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::commit::Committer;
use super::index::Indexes;
use super::meta::{META_FORMAT, META_JOINED_AT, META_NODE_ID};
use super::{key_text, Counts, Inner, Store, StoreError, WriteState, STORE_FORMAT};
use crate::codec;
use crate::merkle::{self, MerkleTree};
use crate::model::{Key, NodeId, Origin, Timestamp};

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
        let db = open_db(dir)?;
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
