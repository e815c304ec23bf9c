use super::{live, IfMatch, ServiceError, Writer};
use crate::model::todo::FieldError;
use crate::model::{Key, Record, Value, Version};

/// Document paths under this prefix are kvs's own (token revocations, say): clients
/// may read them with a permission that covers them, but never write or delete them.
pub const RESERVED_PREFIX: &str = "_kvs/";

/// A revoked token id `ID` is the document `_kvs/revoked/ID` (replicated like any
/// write, so every node learns it within the push latency).
pub const REVOKED_PREFIX: &str = "_kvs/revoked/";

/// A document path with its current version (what a listing shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocEntry {
    pub path: String,
    pub version: Version,
}

#[derive(Debug, Clone, Default)]
pub struct DocPage {
    pub entries: Vec<DocEntry>,
    /// The path the next page starts after, if there is one.
    pub next: Option<String>,
}

/// Raw JSON documents under `/kv/{path}`.
#[derive(Clone)]
pub struct DocService {
    writer: Writer,
}

fn doc_key(path: &str) -> Result<Key, ServiceError> {
    Key::doc(path).map_err(|error| {
        ServiceError::Invalid(FieldError { field: "key", message: error.to_string() })
    })
}

impl DocService {
    pub(super) fn new(writer: Writer) -> Self {
        DocService { writer }
    }

    /// Stores `json` (already checked to be JSON) at `path`. Returns whether the
    /// document was created (no live document was there) and its new version.
    pub async fn put(
        &self,
        path: &str,
        json: Vec<u8>,
        if_match: Option<&IfMatch>,
    ) -> Result<(bool, Version), ServiceError> {
        let key = doc_key(path)?;
        let mut created = false;
        let applied = self.writer.store.apply_with(&key, |stored| {
            let current = stored.filter(|r| r.is_live());
            if let Some(condition) = if_match {
                match current {
                    Some(record) if condition.allows(&record.version) => {}
                    _ => return Err(ServiceError::PreconditionFailed),
                }
            }
            created = current.is_none();
            Ok(Record { version: self.writer.next_version(stored)?, value: Value::Live(json) })
        })?;
        self.writer.commit(&key, &applied).await?;
        Ok((created, applied.record.version))
    }

    pub fn get(&self, path: &str) -> Result<Option<(Vec<u8>, Version)>, ServiceError> {
        let record = live(self.writer.store.get(&doc_key(path)?)?);
        Ok(record.map(|record| {
            let version = record.version;
            match record.value {
                Value::Live(bytes) => (bytes, version),
                Value::Tombstone => unreachable!("filtered to live records"),
            }
        }))
    }

    pub async fn delete(&self, path: &str, if_match: Option<&IfMatch>) -> Result<(), ServiceError> {
        let key = doc_key(path)?;
        let applied = self.writer.store.apply_with(&key, |current| {
            let current = current.filter(|r| r.is_live()).ok_or(ServiceError::NotFound)?;
            if if_match.is_some_and(|condition| !condition.allows(&current.version)) {
                return Err(ServiceError::PreconditionFailed);
            }
            Ok(Record {
                version: self.writer.next_version(Some(current))?,
                value: Value::Tombstone,
            })
        })?;
        self.writer.commit(&key, &applied).await
    }

    /// Live documents whose path starts with `prefix`, in path order, after `after`.
    pub fn list(
        &self,
        prefix: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<DocPage, ServiceError> {
        let mut page = DocPage::default();
        for path in self.writer.store.doc_paths(prefix, after) {
            let path = path?;
            let Some(record) = live(self.writer.store.get(&doc_key(&path)?)?) else { continue };
            if page.entries.len() == limit {
                page.next = page.entries.last().map(|entry| entry.path.clone());
                break;
            }
            page.entries.push(DocEntry { path, version: record.version });
        }
        Ok(page)
    }
}
