//! Secondary indexes, derived from records: which entries a record implies, and how an
//! apply moves from the old record's entries to the new one's.
//!
//! - `todo_order`: `created_at (HLC, 8 BE) ‖ todo id (16)` for live todos;
//! - `doc_names`: the path of live documents;
//! - `tombstones`: `ts (8 BE) ‖ key` for tombstones, oldest first (for the purge);
//! - `expiries`: `expires_at (8 BE) ‖ key` for live records that expire, soonest first
//!   (for the pass that rewrites them to their expired form).
//!
//! Written without a transaction (see the store's module doc): new entries before the
//! record, old entries after it; readers check entries against the record.

use uuid::Uuid;

use crate::model::todo::StoredTodo;
use crate::model::{Key, Record};

use super::{Store, StoreError, TodoCursor};

pub(super) struct Indexes {
    pub(super) todo_order: sled::Tree,
    pub(super) doc_names: sled::Tree,
    pub(super) tombstones: sled::Tree,
    pub(super) expiries: sled::Tree,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Index {
    TodoOrder,
    DocNames,
    Tombstones,
    Expiries,
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
    let prefixed = |index, prefix: u64| {
        let mut entry = prefix.to_be_bytes().to_vec();
        entry.extend_from_slice(key_bytes);
        (index, entry)
    };
    let Some(bytes) = record.live_bytes() else {
        return Ok(vec![prefixed(Index::Tombstones, record.version.ts.raw())]);
    };
    let mut found = match key {
        Key::Todo(id) => match StoredTodo::decode(bytes) {
            Ok(todo) => {
                let mut entry = todo.created_at.to_be_bytes().to_vec();
                entry.extend_from_slice(id.as_bytes());
                vec![(Index::TodoOrder, entry)]
            }
            Err(reason) if strict => {
                return Err(StoreError::InvalidTodo { key: key.to_string(), reason })
            }
            Err(_) => Vec::new(),
        },
        Key::Doc(path) => vec![(Index::DocNames, path.as_bytes().to_vec())],
    };
    if let Some(at) = record.expires_at {
        found.push(prefixed(Index::Expiries, at));
    }
    Ok(found)
}

/// A tombstone- or expiry-index entry: its timestamp (ms for expiries) and the record
/// key it names.
pub(super) fn parse_prefixed_entry(entry: &[u8]) -> Option<(u64, &[u8])> {
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
            expiries: db.open_tree("expiries")?,
        })
    }

    fn tree(&self, index: Index) -> &sled::Tree {
        match index {
            Index::TodoOrder => &self.todo_order,
            Index::DocNames => &self.doc_names,
            Index::Tombstones => &self.tombstones,
            Index::Expiries => &self.expiries,
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
}

/// Readers over the indexes. Every entry is checked against the record it names, since
/// a crash mid-apply can leave extra entries.
impl Store {
    /// Live todos, newest first, starting after `after`: each with its index position and
    /// record. Stale index entries (left by a crash mid-apply) are skipped.
    pub fn todos_newest_first(
        &self,
        after: Option<TodoCursor>,
    ) -> impl Iterator<Item = Result<(TodoCursor, Uuid, Record), StoreError>> + '_ {
        let range = self.inner.engine().map(|engine| match after {
            Some(cursor) => engine.indexes.todo_order.range(..cursor.to_vec()),
            None => engine.indexes.todo_order.range::<Vec<u8>, _>(..),
        });
        let (range, unavailable) = match range {
            Ok(range) => (Some(range), None),
            Err(error) => (None, Some(Err(error))),
        };
        unavailable.into_iter().chain(
            range
                .into_iter()
                .flatten()
                .rev()
                .filter_map(move |entry| self.todo_at(entry).transpose()),
        )
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
        let (range, unavailable) = match self.inner.engine() {
            Ok(engine) => {
                (Some(engine.indexes.doc_names.range((start, std::ops::Bound::Unbounded))), None)
            }
            Err(error) => (None, Some(Err(error))),
        };
        unavailable.into_iter().chain(
            range
                .into_iter()
                .flatten()
                .take_while(move |entry| {
                    entry.as_ref().map_or(true, |(path, _)| path.starts_with(&prefix))
                })
                .map(|entry| {
                    let (path, _) = entry?;
                    String::from_utf8(path.to_vec())
                        .map_err(|_| StoreError::CorruptMeta("doc_names"))
                }),
        )
    }
}
