use std::time::Duration;

use super::{check_ttl, IfMatch, ServiceError, Writer};
use crate::model::todo::FieldError;
use crate::model::{Key, Record, Value, Version};

/// Document paths under this prefix are kvs's own (token revocations, say): clients
/// may read them with a permission that covers them, but never write or delete them.
pub const RESERVED_PREFIX: &str = "_kvs/";

/// A revoked token id `ID` is the document `_kvs/revoked/ID` (replicated like any
/// write, so every node learns it within the push latency).
pub const REVOKED_PREFIX: &str = "_kvs/revoked/";

/// A document path with its current version and expiry (what a listing shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocEntry {
    pub path: String,
    pub version: Version,
    pub expires_at: Option<u64>,
}

/// A document as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub json: Vec<u8>,
    pub version: Version,
    /// When it stops being readable (ms since the epoch), if ever.
    pub expires_at: Option<u64>,
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

    /// Stores `json` (already checked to be JSON) at `path`, to expire after `ttl` if
    /// one is given (a put without one never expires). Returns whether the document was
    /// created (no live document was there) and what is stored now.
    pub async fn put(
        &self,
        path: &str,
        json: Vec<u8>,
        ttl: Option<Duration>,
        if_match: Option<&IfMatch>,
    ) -> Result<(bool, Doc), ServiceError> {
        let key = doc_key(path)?;
        if let Some(ttl) = ttl {
            check_ttl("ttl", ttl)?;
        }
        let mut created = false;
        let applied = self.writer.store.apply_with(&key, |stored| {
            let current = self.writer.visible(stored);
            if let Some(condition) = if_match {
                match current {
                    Some(record) if condition.allows(&record.version) => {}
                    _ => return Err(ServiceError::PreconditionFailed),
                }
            }
            created = current.is_none();
            let version = self.writer.next_version(stored)?;
            let expires_at = ttl.map(|ttl| Writer::expiry(&version, ttl));
            Ok(Record { version, value: Value::Live(json), expires_at })
        })?;
        self.writer.commit(&key, &applied).await?;
        let record = applied.record;
        let json = record.live_bytes().unwrap_or_default().to_vec();
        Ok((created, Doc { json, version: record.version, expires_at: record.expires_at }))
    }

    pub fn get(&self, path: &str) -> Result<Option<Doc>, ServiceError> {
        let record = self.writer.store.get(&doc_key(path)?)?;
        let Some(record) = self.writer.visible(record.as_ref()) else { return Ok(None) };
        let json = record.live_bytes().unwrap_or_default().to_vec();
        Ok(Some(Doc { json, version: record.version, expires_at: record.expires_at }))
    }

    pub async fn delete(&self, path: &str, if_match: Option<&IfMatch>) -> Result<(), ServiceError> {
        let key = doc_key(path)?;
        let applied = self.writer.store.apply_with(&key, |current| {
            let visible = self.writer.visible(current).ok_or(ServiceError::NotFound)?;
            if if_match.is_some_and(|condition| !condition.allows(&visible.version)) {
                return Err(ServiceError::PreconditionFailed);
            }
            Ok(Record::new(self.writer.next_version(current)?, Value::Tombstone))
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
            let record = self.writer.store.get(&doc_key(&path)?)?;
            let Some(record) = self.writer.visible(record.as_ref()) else { continue };
            if page.entries.len() == limit {
                page.next = page.entries.last().map(|entry| entry.path.clone());
                break;
            }
            page.entries.push(DocEntry {
                path,
                version: record.version,
                expires_at: record.expires_at,
            });
        }
        Ok(page)
    }
}
