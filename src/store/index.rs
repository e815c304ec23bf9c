//! Secondary indexes, derived from records: which entries a record implies, and how an
//! apply moves from the old record's entries to the new one's.
//!
//! - `todo_order`: `created_at (HLC, 8 BE) ‖ todo id (16)` for live todos;
//! - `doc_names`: the path of live documents;
//! - `tombstones`: `ts (8 BE) ‖ key` for tombstones, oldest first (for the purge).
//!
//! Written without a transaction (see the store's module doc): new entries before the
//! record, old entries after it; readers check entries against the record.

use crate::model::todo::StoredTodo;
use crate::model::{Key, Record};

use super::StoreError;

pub(super) struct Indexes {
    pub(super) todo_order: sled::Tree,
    pub(super) doc_names: sled::Tree,
    pub(super) tombstones: sled::Tree,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Index {
    TodoOrder,
    DocNames,
    Tombstones,
}

type Entry = (Index, Vec<u8>);

/// The entries an apply adds and removes, computed before anything is written.
pub(super) struct IndexChange {
    insert: Vec<Entry>,
    remove: Vec<Entry>,
}

/// The index entries `record` implies for `key`. A live todo whose value does not
/// decode is refused (`strict`), or contributes nothing (not `strict`: a record that
/// is already stored was validated on the way in).
fn entries(
    key: &Key,
    key_bytes: &[u8],
    record: &Record,
    strict: bool,
) -> Result<Vec<Entry>, StoreError> {
    let Some(bytes) = record.live_bytes() else {
        let mut entry = record.version.ts.raw().to_be_bytes().to_vec();
        entry.extend_from_slice(key_bytes);
        return Ok(vec![(Index::Tombstones, entry)]);
    };
    match key {
        Key::Todo(id) => match StoredTodo::decode(bytes) {
            Ok(todo) => {
                let mut entry = todo.created_at.to_be_bytes().to_vec();
                entry.extend_from_slice(id.as_bytes());
                Ok(vec![(Index::TodoOrder, entry)])
            }
            Err(reason) if strict => Err(StoreError::InvalidTodo { key: key.to_string(), reason }),
            Err(_) => Ok(Vec::new()),
        },
        Key::Doc(path) => Ok(vec![(Index::DocNames, path.as_bytes().to_vec())]),
    }
}

/// A tombstone-index entry: its timestamp and the record key it names.
pub(super) fn parse_tombstone_entry(entry: &[u8]) -> Option<(u64, &[u8])> {
    let (ts, key) = entry.split_at_checked(8)?;
    Some((u64::from_be_bytes(ts.try_into().ok()?), key))
}

impl IndexChange {
    pub(super) fn new(
        key: &Key,
        key_bytes: &[u8],
        current: Option<&Record>,
        candidate: &Record,
    ) -> Result<Self, StoreError> {
        let new = entries(key, key_bytes, candidate, true)?;
        let old = match current {
            Some(current) => entries(key, key_bytes, current, false)?,
            None => Vec::new(),
        };
        let insert = new.iter().filter(|entry| !old.contains(entry)).cloned().collect();
        let remove = old.into_iter().filter(|entry| !new.contains(entry)).collect();
        Ok(IndexChange { insert, remove })
    }

    /// The change that drops every entry of `record` (for a purge).
    pub(super) fn removing(key: &Key, key_bytes: &[u8], record: &Record) -> Self {
        let remove = entries(key, key_bytes, record, false).unwrap_or_default();
        IndexChange { insert: Vec::new(), remove }
    }
}

impl Indexes {
    pub(super) fn open(db: &sled::Db) -> sled::Result<Indexes> {
        Ok(Indexes {
            todo_order: db.open_tree("todo_order")?,
            doc_names: db.open_tree("doc_names")?,
            tombstones: db.open_tree("tombstones")?,
        })
    }

    fn tree(&self, index: Index) -> &sled::Tree {
        match index {
            Index::TodoOrder => &self.todo_order,
            Index::DocNames => &self.doc_names,
            Index::Tombstones => &self.tombstones,
        }
    }

    pub(super) fn insert_new(&self, change: &IndexChange) -> sled::Result<()> {
        for (index, entry) in &change.insert {
            self.tree(*index).insert(entry.as_slice(), &[])?;
        }
        Ok(())
    }

    pub(super) fn remove_old(&self, change: &IndexChange) -> sled::Result<()> {
        for (index, entry) in &change.remove {
            self.tree(*index).remove(entry.as_slice())?;
        }
        Ok(())
    }

    pub(super) fn clear(&self) -> sled::Result<()> {
        self.todo_order.clear()?;
        self.doc_names.clear()?;
        self.tombstones.clear()
    }
}
