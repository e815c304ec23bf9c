//! Following the change log (see `store::changes`): a watch starts now or resumes after a
//! change number, reads what it missed from the log, then takes live changes as they
//! become durable. A watcher never slows a writer: a live queue it does not drain makes it
//! catch up from the log, and one the log no longer covers ends with [`WatchEnd::FellBehind`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use uuid::Uuid;

use super::todos::{view, TodoView};
use crate::model::{Key, Version};
use crate::store::{Change, ChangeBatch, Store, StoreError};

/// Changes of one collection: the todos, or the documents under a prefix.
#[derive(Debug, Clone)]
pub enum Scope {
    Todos,
    Docs { prefix: String },
}

/// One change as a watcher sees it.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub id: u64,
    pub version: Version,
    /// When the written value expires (ms since the epoch), if ever.
    pub expires_at: Option<u64>,
    pub item: Item,
}

#[derive(Debug, Clone)]
pub enum Item {
    /// `todo` is `None` for a delete.
    Todo { id: Uuid, todo: Option<TodoView> },
    /// `value` (the JSON document as stored) is `None` for a delete.
    Doc { path: String, value: Option<Vec<u8>> },
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("change {asked} is no longer kept (the oldest kept is {oldest}): list again, then watch from now")]
    Gone { asked: u64, oldest: u64 },
    #[error(
        "change {asked} is past this node's newest ({newest}): list again, then watch from now"
    )]
    Unknown { asked: u64, newest: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a watch ended.
#[derive(Debug, thiserror::Error)]
pub enum WatchEnd {
    #[error("fell behind the change log (change {next} is no longer kept): list again, then watch from now")]
    FellBehind { next: u64 },
    #[error("the node is shutting down")]
    Closed,
    #[error("reading the change log failed: {0}")]
    Store(#[from] StoreError),
}

/// Changes read from the log per step.
const LOG_BATCH: usize = 256;

/// Watchers get the changes of this long in one batch (the first after a quiet spell at
/// once): a thousand watchers cost a wake-up each per interval, not one per flush, and all
/// of them take the same batch (so its text can be rendered once for all).
pub const PACE: Duration = Duration::from_millis(50);

/// Paced batches kept for watchers that have not taken them (about 13 s of them): one
/// further behind catches up from the log.
const PACED_BACKLOG: usize = 256;

#[derive(Clone)]
pub struct ChangeFeed {
    store: Store,
    /// The paced feed, started by the first watch (it needs the runtime); weak, so the
    /// pacer's end (the store's feed closed) closes every watch.
    paced: Arc<OnceLock<broadcast::WeakSender<ChangeBatch>>>,
}

impl ChangeFeed {
    pub(super) fn new(store: Store) -> ChangeFeed {
        ChangeFeed { store, paced: Arc::default() }
    }

    /// A watch of `scope` from now, or resumed after change `after`.
    pub fn watch(&self, scope: Scope, after: Option<u64>) -> Result<Watch, WatchError> {
        // Subscribed first, so nothing published between the check and the first read
        // is missed (what the log also holds is skipped by number).
        let live = self.subscribe();
        let newest = self.store.last_change();
        let last = match after {
            None => newest,
            Some(asked) if asked > newest => return Err(WatchError::Unknown { asked, newest }),
            Some(asked) if asked < newest => {
                let oldest = self.store.oldest_change()?.unwrap_or(newest + 1);
                if oldest > asked + 1 {
                    return Err(WatchError::Gone { asked, oldest });
                }
                asked
            }
            Some(asked) => asked,
        };
        Ok(Watch { store: self.store.clone(), live, last, catch_up_to: newest, scope })
    }

    fn subscribe(&self) -> broadcast::Receiver<ChangeBatch> {
        let weak = self.paced.get_or_init(|| {
            let (paced, _) = broadcast::channel(PACED_BACKLOG);
            tokio::spawn(pace(self.store.subscribe_changes(), paced.clone()));
            paced.downgrade()
        });
        match weak.upgrade() {
            Some(paced) => paced.subscribe(),
            // The pacer ended with the store: a feed that is closed already.
            None => broadcast::channel(1).1,
        }
    }
}

/// Republishes the store's batches (one per flush) as one batch per [`PACE`]: the first
/// batch after a quiet spell goes out at once, what comes within `PACE` of the last send
/// goes out together at its end. Changes stay in order; a lag here leaves a gap in the
/// numbers, which watchers fill from the log.
async fn pace(mut raw: broadcast::Receiver<ChangeBatch>, paced: broadcast::Sender<ChangeBatch>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut last_send = Instant::now() - PACE;
    loop {
        let mut merged: Vec<Arc<Change>> = match raw.recv().await {
            Ok(batch) => batch.to_vec(),
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        let due = tokio::time::sleep_until(last_send + PACE);
        tokio::pin!(due);
        let closed = loop {
            tokio::select! {
                biased;
                () = &mut due => break false,
                batch = raw.recv() => match batch {
                    Ok(batch) => merged.extend(batch.iter().cloned()),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break true,
                },
            }
        };
        let _ = paced.send(Arc::new(merged)); // no watcher: nothing to do
        last_send = Instant::now();
        if closed {
            return;
        }
    }
}

pub struct Watch {
    store: Store,
    live: broadcast::Receiver<ChangeBatch>,
    /// The number of the last change taken (whether or not it was in scope).
    last: u64,
    /// Read the log until `last` reaches this (resuming, or after a gap in the live feed).
    catch_up_to: u64,
    scope: Scope,
}

impl Watch {
    /// The changes in scope among the next ones taken, in order: waits until there is a
    /// change, in scope or not, and is empty when none was in scope (a watcher wakes once
    /// per paced batch, whatever the batch holds). They are shared, not copied: a
    /// thousand watchers of one change hold one change.
    ///
    /// Live changes already queued come first (the cheap path: shared, no read), then
    /// the log when the queue skipped some (a lag), else the next live batch when it
    /// comes.
    pub async fn next(&mut self) -> Result<Vec<Arc<Change>>, WatchEnd> {
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        let before = self.last;
        let mut taken = Vec::new();
        loop {
            let mut gap = false;
            while !gap {
                match self.live.try_recv() {
                    Ok(batch) => gap = !self.follow(&batch, &mut taken),
                    Err(TryRecvError::Lagged(_)) => gap = true,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => return Err(WatchEnd::Closed),
                }
            }
            if self.last != before {
                return Ok(taken);
            }
            if gap {
                self.catch_up_to = self.catch_up_to.max(self.store.last_change());
            }
            if self.last < self.catch_up_to {
                let store = self.store.clone();
                let after = self.last;
                let batch =
                    tokio::task::spawn_blocking(move || store.changes_after(after, LOG_BATCH))
                        .await
                        .map_err(|_| WatchEnd::Closed)??;
                match batch.first() {
                    Some(first) if first.id != self.last + 1 => {
                        return Err(WatchEnd::FellBehind { next: self.last + 1 });
                    }
                    Some(_) => {
                        self.last = batch.last().map_or(self.last, |change| change.id);
                        let in_scope = batch.into_iter().filter(|c| self.in_scope(&c.key));
                        return Ok(in_scope.map(Arc::new).collect());
                    }
                    None => {}
                }
            }
            match self.live.recv().await {
                // A batch ahead of us (after a lag) leaves the gap to the log.
                Ok(batch) => _ = self.follow(&batch, &mut taken),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Err(WatchEnd::Closed),
            }
            if self.last != before {
                return Ok(taken);
            }
        }
    }

    fn in_scope(&self, key: &Key) -> bool {
        match (&self.scope, key) {
            (Scope::Todos, Key::Todo(_)) => true,
            (Scope::Docs { prefix }, Key::Doc(path)) => path.starts_with(prefix.as_str()),
            _ => false,
        }
    }

    /// Takes the changes of `batch` that follow `last`, and puts those in scope into
    /// `taken` (shared: the only copy is of the pointer, and only for those in scope);
    /// false when the batch starts past `last + 1` (changes were skipped: the log has
    /// them).
    fn follow(&mut self, batch: &ChangeBatch, taken: &mut Vec<Arc<Change>>) -> bool {
        for change in batch.iter() {
            if change.id <= self.last {
                continue;
            }
            if change.id != self.last + 1 {
                return false;
            }
            self.last = change.id;
            if self.in_scope(&change.key) {
                taken.push(change.clone());
            }
        }
        true
    }
}

/// A change as a watcher sees it: the todo decoded, or the document's bytes.
pub fn event(change: &Change) -> WatchEvent {
    let item = match &change.key {
        Key::Todo(id) => Item::Todo { id: *id, todo: view(*id, change.record.clone()) },
        Key::Doc(path) => {
            Item::Doc { path: path.clone(), value: change.record.live_bytes().map(<[u8]>::to_vec) }
        }
    };
    let record = &change.record;
    WatchEvent { id: change.id, version: record.version, expires_at: record.expires_at, item }
}
