//! Application rules on top of the store: what a todo or a document write means, how
//! preconditions and conflicts are decided. Knows nothing of HTTP.

pub mod docs;
mod readiness;
mod replica;
mod todos;
pub mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use uuid::Uuid;

use crate::clock::Hlc;
use crate::merkle::Hash;
use crate::model::todo::FieldError;
use crate::model::{Key, Origin, Record, Version};
use crate::store::{Applied, ApplyError, Counts, Store, StoreError};

pub use docs::{DocEntry, DocPage, DocService};
pub use readiness::{Phase, Readiness, ReadyState, Refused};
pub use replica::{fingerprint, MergeReport, ReplicaService, SyncState, TtlRules};
pub use todos::{NewTodo, TodoPage, TodoPatch, TodoQuery, TodoService, TodoView};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("the resource's version does not match If-Match")]
    PreconditionFailed,
    #[error("invalid {}: {}", .0.field, .0.message)]
    Invalid(FieldError),
    /// The key's current version is further ahead than our clock may move.
    #[error(transparent)]
    ClockBehind(#[from] crate::clock::ClockBehind),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task was cancelled or panicked (the runtime is shutting down).
    #[error("the operation was interrupted")]
    Interrupted,
}

impl From<ApplyError<ServiceError>> for ServiceError {
    fn from(error: ApplyError<ServiceError>) -> Self {
        match error {
            ApplyError::Rejected(error) => error,
            ApplyError::Store(error) => ServiceError::Store(error),
        }
    }
}

impl From<FieldError> for ServiceError {
    fn from(error: FieldError) -> Self {
        ServiceError::Invalid(error)
    }
}

/// An `If-Match` precondition: `*`, or a list of entity tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    Any,
    OneOf(Vec<String>),
}

impl IfMatch {
    /// Strong comparison (RFC 9110 §13.1.1): weak tags never match.
    pub fn allows(&self, version: &Version) -> bool {
        match self {
            IfMatch::Any => true,
            IfMatch::OneOf(tags) => {
                let current = version.etag();
                tags.contains(&current)
            }
        }
    }
}

/// A record for the pusher (`sync::push`): a committed local write, or a write a peer
/// pushed that was new here, to be passed on within its span of the id ring
/// (`sync::spread`).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub key: Key,
    pub record: Record,
    /// `None` for a local write (it goes to the whole ring); for a pushed write, the
    /// end of the span we pass it on to.
    pub relay_until: Option<uuid::Uuid>,
}

impl Outgoing {
    /// Queues `records` (with their `relay_until`) for the pusher without waiting; what
    /// does not fit is counted as dropped (anti-entropy carries it).
    fn offer(
        outbox: &mpsc::Sender<Outgoing>,
        pushes: &PushStats,
        records: impl IntoIterator<Item = (Key, Record, Option<uuid::Uuid>)>,
    ) {
        let mut dropped = 0;
        for (key, record, relay_until) in records {
            if outbox.try_send(Outgoing { key, record, relay_until }).is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            PushStats::add(&pushes.dropped_records, dropped);
            tracing::debug!(dropped, "push queue full; anti-entropy will carry the writes");
        }
    }
}

/// Stamps local writes: this node's origin and its hybrid logical clock.
#[derive(Clone)]
pub struct Writer {
    store: Store,
    clock: Arc<Hlc>,
    origin: Origin,
    /// Where committed local writes go to be pushed to peers (best effort: a full
    /// queue drops them, counted; anti-entropy repairs what is dropped).
    outbox: Option<mpsc::Sender<Outgoing>>,
    pushes: Arc<PushStats>,
}

/// What became of local writes meant for peers (see `sync::push`). Nothing handed to
/// the pusher disappears without being counted here.
#[derive(Debug, Default)]
pub struct PushStats {
    /// Records delivered to a peer (counted once per peer).
    pub sent_records: AtomicU64,
    /// Push requests that succeeded.
    pub sent_requests: AtomicU64,
    /// Records in push requests that failed (a peer down or slow): anti-entropy
    /// carries them.
    pub failed_records: AtomicU64,
    /// Records not queued because a queue was full (the outbox, or a peer's
    /// pipeline): anti-entropy carries them.
    pub dropped_records: AtomicU64,
    /// Records a peer pushed that were new here and that we passed on within their
    /// span of the ring (counted once per record; only in a cluster larger than the
    /// fan-out, where the origin does not reach every peer itself).
    pub relayed_records: AtomicU64,
}

impl PushStats {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl Writer {
    pub fn new(
        store: Store,
        clock: Arc<Hlc>,
        outbox: Option<mpsc::Sender<Outgoing>>,
        pushes: Arc<PushStats>,
    ) -> Self {
        let origin = store.identity();
        Writer { store, clock, origin, outbox, pushes }
    }

    /// Hands a durable local write to the pusher, never blocking the client.
    fn announce(&self, key: Key, record: Record) {
        if let Some(outbox) = &self.outbox {
            Outgoing::offer(outbox, &self.pushes, [(key, record, None)]);
        }
    }

    /// A version for a new local write replacing `current`. Call it inside
    /// `apply_with`, under the store's write lock, so it is greater than the record it
    /// replaces; when it cannot be (that record is stamped further ahead than our clock
    /// may move) the write fails instead of answering 2xx without taking effect.
    fn next_version(&self, current: Option<&Record>) -> Result<Version, ServiceError> {
        let ts = match current {
            Some(record) => self.clock.next_after(record.version.ts)?,
            None => self.clock.now(),
        };
        Ok(Version { ts, origin: self.origin, uuid: Uuid::new_v4() })
    }

    /// Our physical clock (ms): what expiry instants are compared with.
    fn now_ms(&self) -> u64 {
        self.clock.physical_ms()
    }

    /// The expiry of a write stamped `version` that lives `ttl` (saturating).
    fn expiry(version: &Version, ttl: std::time::Duration) -> u64 {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        version.ts.millis().saturating_add(ttl_ms)
    }

    /// `record` if a reader sees a value in it now (not a tombstone, not expired).
    fn visible<'a>(&self, record: Option<&'a Record>) -> Option<&'a Record> {
        let now = self.now_ms();
        record.filter(|record| record.is_visible(now))
    }

    /// Waits until the write is durable, then hands it to the pusher.
    async fn commit(&self, key: &Key, applied: &Applied) -> Result<(), ServiceError> {
        self.store.wait_durable(applied.seq).await?;
        if applied.changed {
            self.announce(key.clone(), applied.record.clone());
        }
        Ok(())
    }
}

/// The longest TTL a write may ask for: 999,999 days (so every expiry is a date RFC 3339
/// can write).
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(999_999 * 86_400);

/// Checks a requested TTL: more than zero, at most [`MAX_TTL`].
pub fn check_ttl(field: &'static str, ttl: std::time::Duration) -> Result<(), FieldError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(FieldError {
            field,
            message: format!("must be more than 0 and at most 999999d, got {ttl:?}"),
        });
    }
    Ok(())
}

/// What a node says about its data.
#[derive(Debug, Clone)]
pub struct DataStatus {
    pub merkle_root: Hash,
    pub counts: Counts,
    /// Remote timestamps refused as too far ahead of our clock.
    pub refused_timestamps: u64,
    /// The furthest ahead (ms) a refused timestamp was.
    pub furthest_refused_ms: u64,
    /// Whether the store accepts writes (see `store::fault`).
    pub storage: crate::store::StorageStatus,
}

/// Everything the HTTP layer may call.
#[derive(Clone)]
pub struct Services {
    pub todos: TodoService,
    pub docs: DocService,
    pub replica: ReplicaService,
    pub changes: watch::ChangeFeed,
    pub readiness: Readiness,
    /// Counts of what the pusher did with local writes.
    pub pushes: Arc<PushStats>,
    store: Store,
    clock: Arc<Hlc>,
}

impl Services {
    pub fn new(
        store: Store,
        clock: Arc<Hlc>,
        readiness: Readiness,
        outbox: Option<mpsc::Sender<Outgoing>>,
        ttl: TtlRules,
    ) -> Self {
        let pushes = Arc::new(PushStats::default());
        let writer = Writer::new(store.clone(), clock.clone(), outbox.clone(), pushes.clone());
        let relay = outbox.map(|outbox| (outbox, pushes.clone()));
        Services {
            pushes,
            todos: TodoService::new(writer.clone()),
            docs: DocService::new(writer),
            replica: ReplicaService::new(
                store.clone(),
                clock.clone(),
                ttl,
                readiness.clone(),
                relay,
            ),
            changes: watch::ChangeFeed::new(store.clone()),
            readiness,
            store,
            clock,
        }
    }

    /// Whether the store accepts writes, and why not.
    pub fn storage(&self) -> crate::store::StorageStatus {
        self.store.storage_status()
    }

    pub fn status(&self) -> DataStatus {
        DataStatus {
            merkle_root: self.store.merkle_root(),
            counts: self.store.counts(),
            refused_timestamps: self.clock.refused_observations(),
            furthest_refused_ms: self.clock.furthest_refused_ms(),
            storage: self.store.storage_status(),
        }
    }
}
