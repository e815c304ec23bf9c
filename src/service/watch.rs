//! Following the change log (see `store::changes`): a watch starts now or resumes after a
//! change number, reads what it missed from the log, then takes live changes as they
//! become durable. A watcher never slows a writer: a live queue it does not drain makes it
//! catch up from the log, and one the log no longer covers ends with [`WatchEnd::FellBehind`].
//!
//! Live changes reach watchers through *lanes*, one per distinct scope: the pacer sends
//! a lane only the changes in its scope, with the range of numbers it looked at, so a
//! watcher knows it missed nothing in between, and a watcher is not woken by writes it
//! does not watch (a quiet lane gets an empty batch once a second, which moves its
//! watchers' place on).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use uuid::Uuid;

use super::todos::{view, TodoView};
use crate::model::{Key, Version};
use crate::store::{Change, ChangeBatch, Store, StoreError};

/// Changes of one collection: the todos, or the documents under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// A lane with nothing in its scope for this long gets an empty batch.
const QUIET: Duration = Duration::from_secs(1);

/// What a lane sends: the changes in its scope among those numbered `from..=through`,
/// in order. A watcher that has taken every change up to `from - 1` has, after this
/// one, taken every change in its scope up to `through`.
#[derive(Debug)]
pub struct Paced {
    from: u64,
    through: u64,
    changes: Vec<Arc<Change>>,
}

/// The live feed's lanes, shared by the pacer and the watches that subscribe.
#[derive(Default)]
struct Lanes {
    /// Whether the pacer runs (it is started by the first watch: it needs the runtime).
    started: bool,
    /// The pacer ended with the store's feed: every lane is closed.
    closed: bool,
    /// The number after the last one the pacer looked at; 0 before it looked at any.
    next: u64,
    lanes: Vec<Lane>,
}

struct Lane {
    scope: Scope,
    sender: broadcast::Sender<Arc<Paced>>,
    /// The first number its next batch covers: it has looked at every one before it.
    from: u64,
    /// When it last sent.
    sent: Instant,
}

impl Lane {
    /// Sends `changes` (those in scope) as covering every number up to `through`.
    fn send(&mut self, through: u64, changes: Vec<Arc<Change>>, now: Instant) {
        let paced = Paced { from: self.from, through, changes };
        let _ = self.sender.send(Arc::new(paced)); // its watchers all left: dropped next time
        self.from = through + 1;
        self.sent = now;
    }
}

#[derive(Clone)]
pub struct ChangeFeed {
    store: Store,
    lanes: Arc<Mutex<Lanes>>,
}

impl ChangeFeed {
    pub(super) fn new(store: Store) -> ChangeFeed {
        ChangeFeed { store, lanes: Arc::default() }
    }

    /// A watch of `scope` from now, or resumed after change `after`.
    pub fn watch(&self, scope: Scope, after: Option<u64>) -> Result<Watch, WatchError> {
        // Subscribed first, so nothing published between the check and the first read
        // is missed (what the log also holds is skipped by number).
        let live = self.subscribe(&scope);
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

    /// The receiver of `scope`'s lane, opened if it is the first watch of that scope. A
    /// new lane covers from the next number the pacer looks at: it vouches for nothing
    /// it has not seen.
    fn subscribe(&self, scope: &Scope) -> broadcast::Receiver<Arc<Paced>> {
        let mut lanes = lock(&self.lanes);
        if !lanes.started {
            lanes.started = true;
            tokio::spawn(pace(self.store.subscribe_changes(), self.lanes.clone()));
        }
        if lanes.closed {
            return broadcast::channel(1).1; // dropped sender: a feed closed already
        }
        if let Some(lane) = lanes.lanes.iter().find(|lane| lane.scope == *scope) {
            return lane.sender.subscribe();
        }
        let (sender, receiver) = broadcast::channel(PACED_BACKLOG);
        let from = lanes.next;
        lanes.lanes.push(Lane { scope: scope.clone(), sender, from, sent: Instant::now() });
        receiver
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Republishes the store's batches (one per flush) as one batch per [`PACE`], split into
/// the lanes: the first batch after a quiet spell goes out at once, what comes within
/// `PACE` of the last send goes out together at its end. Changes stay in order; a lag
/// here leaves a gap in the numbers, which watchers fill from the log.
async fn pace(mut raw: broadcast::Receiver<ChangeBatch>, lanes: Arc<Mutex<Lanes>>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut last_send = Instant::now() - PACE;
    let mut quiet_check = tokio::time::interval(QUIET);
    quiet_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            batch = raw.recv() => batch,
            _ = quiet_check.tick() => {
                send_quiet(&mut lock(&lanes));
                continue;
            }
        };
        let mut merged: Vec<Arc<Change>> = match first {
            Ok(batch) => batch.to_vec(),
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => break,
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
        send(&mut lock(&lanes), &merged);
        last_send = Instant::now();
        if closed {
            break;
        }
    }
    let mut lanes = lock(&lanes);
    lanes.closed = true;
    lanes.lanes.clear(); // their watchers see the feed closed
}

/// Sends each lane the changes of `merged` in its scope; forgets lanes nobody watches.
fn send(lanes: &mut Lanes, merged: &[Arc<Change>]) {
    let (Some(first), Some(last)) = (merged.first(), merged.last()) else { return };
    if first.id != lanes.next {
        // A gap (the pacer lagged): no lane may vouch for the numbers it did not see.
        lanes.lanes.iter_mut().for_each(|lane| lane.from = first.id);
    }
    lanes.next = last.id + 1;
    lanes.lanes.retain(|lane| lane.sender.receiver_count() > 0);
    let now = Instant::now();
    for lane in &mut lanes.lanes {
        let changes: Vec<Arc<Change>> =
            merged.iter().filter(|change| in_scope(&lane.scope, &change.key)).cloned().collect();
        if changes.is_empty() {
            continue;
        }
        lane.send(last.id, changes, now);
    }
}

/// Sends an empty batch to each lane quiet for [`QUIET`], so its watchers' place moves
/// on with the log (one far behind would have to read the log after a lag).
fn send_quiet(lanes: &mut Lanes) {
    let now = Instant::now();
    let through = lanes.next.saturating_sub(1);
    for lane in &mut lanes.lanes {
        if lane.from <= through && now - lane.sent >= QUIET {
            lane.send(through, Vec::new(), now);
        }
    }
}

pub struct Watch {
    store: Store,
    live: broadcast::Receiver<Arc<Paced>>,
    /// Every change in scope up to this number is taken.
    last: u64,
    /// Read the log until `last` reaches this (resuming, or after a gap in the live feed).
    catch_up_to: u64,
    scope: Scope,
}

impl Watch {
    /// The changes in scope among the next ones taken, in order: waits until its lane
    /// sends, and is empty for a quiet lane's batch (once a second) or when the log read
    /// held nothing in scope. They are shared, not copied: a thousand watchers of one
    /// change hold one change.
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
                        let in_scope = batch.into_iter().filter(|c| in_scope(&self.scope, &c.key));
                        return Ok(in_scope.map(Arc::new).collect());
                    }
                    None => {}
                }
            }
            match self.live.recv().await {
                Ok(batch) => {
                    if !self.follow(&batch, &mut taken) {
                        // A batch ahead of us (the pacer lagged): the log has the gap.
                        self.catch_up_to = self.catch_up_to.max(batch.through);
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Err(WatchEnd::Closed),
            }
            if self.last != before {
                return Ok(taken);
            }
        }
    }

    /// Takes the changes of `batch` that follow `last` into `taken` (shared: the only
    /// copy is of the pointer); false when the batch starts past `last + 1` (changes
    /// were skipped: the log has them).
    fn follow(&mut self, batch: &Paced, taken: &mut Vec<Arc<Change>>) -> bool {
        if batch.through <= self.last {
            return true;
        }
        if batch.from > self.last + 1 {
            return false;
        }
        taken.extend(batch.changes.iter().filter(|change| change.id > self.last).cloned());
        self.last = batch.through;
        true
    }
}

fn in_scope(scope: &Scope, key: &Key) -> bool {
    match (scope, key) {
        (Scope::Todos, Key::Todo(_)) => true,
        (Scope::Docs { prefix }, Key::Doc(path)) => path.starts_with(prefix.as_str()),
        _ => false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeId, Origin, Record, Timestamp, Value};

    fn doc_record(n: u64) -> Record {
        Record {
            version: Version {
                ts: Timestamp::from_raw(n),
                origin: Origin { node: NodeId(Uuid::from_u128(1)), joined_at: 1 },
                uuid: Uuid::from_u128(n.into()),
            },
            value: Value::Live(b"1".to_vec()),
            expires_at: None,
        }
    }

    /// Writes `paths` (one change each) and waits until they are durable.
    async fn write(store: &Store, first: u64, paths: &[String]) {
        let mut seq = 0;
        for (n, path) in paths.iter().enumerate() {
            let key = Key::doc(path).unwrap();
            seq = store.apply(&key, doc_record(first + n as u64)).unwrap().seq;
        }
        store.wait_durable(seq).await.unwrap();
    }

    fn docs(prefix: &str) -> Scope {
        Scope::Docs { prefix: prefix.into() }
    }

    /// Takes from `watch` until it holds `want` changes (or 10 s pass).
    async fn take(watch: &mut Watch, want: usize) -> Vec<(u64, Key)> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while got.len() < want {
            let next = tokio::time::timeout_at(deadline, watch.next()).await;
            let Ok(changes) = next else { break };
            got.extend(changes.unwrap().iter().map(|change| (change.id, change.key.clone())));
        }
        got
    }

    #[tokio::test]
    async fn each_watcher_gets_exactly_its_scope_in_order_and_a_quiet_one_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1).unwrap();
        let feed = ChangeFeed::new(store.clone());
        let scopes = [docs("a/"), docs("b/"), docs(""), docs("a/x"), docs("quiet/")];
        let mut watches: Vec<Watch> =
            scopes.iter().map(|scope| feed.watch(scope.clone(), None).unwrap()).collect();
        // Several rounds, so the changes come in several paced batches.
        let mut written: Vec<(u64, Key)> = Vec::new();
        for round in 0..5u64 {
            let paths: Vec<String> = (0..40u64)
                .map(|n| format!("{}/x{}", ["a", "b", "c"][(n % 3) as usize], n + round * 40))
                .collect();
            write(&store, written.len() as u64 + 1, &paths).await;
            for path in paths {
                written.push((written.len() as u64 + 1, Key::doc(&path).unwrap()));
            }
            tokio::time::sleep(PACE).await;
        }
        for (scope, watch) in scopes.iter().zip(&mut watches) {
            let want: Vec<(u64, Key)> =
                written.iter().filter(|(_, key)| in_scope(scope, key)).cloned().collect();
            assert_eq!(take(watch, want.len()).await, want, "{scope:?}");
        }
        // The quiet lane was sent nothing in scope, but its place moves on within QUIET.
        let quiet = &mut watches[4];
        let deadline = tokio::time::Instant::now() + QUIET * 5;
        while quiet.last < written.len() as u64 && tokio::time::Instant::now() < deadline {
            let taken = tokio::time::timeout_at(deadline, quiet.next()).await;
            assert!(taken.map_or(true, |taken| taken.unwrap().is_empty()));
        }
        assert_eq!(quiet.last, written.len() as u64);
    }

    #[test]
    fn a_lane_vouches_only_for_numbers_it_looked_at() {
        let (sender, mut receiver) = broadcast::channel(8);
        let lane = Lane { scope: docs("a/"), sender, from: 3, sent: Instant::now() };
        let mut lanes = Lanes { started: true, closed: false, next: 3, lanes: vec![lane] };
        let change = |id: u64, path: &str| {
            Arc::new(Change { id, key: Key::doc(path).unwrap(), record: doc_record(id) })
        };
        send(&mut lanes, &[change(3, "a/1"), change(4, "b/1")]);
        let paced = receiver.try_recv().unwrap();
        assert_eq!((paced.from, paced.through, paced.changes.len()), (3, 4, 1));
        // Nothing in scope: nothing sent, and the next batch covers these numbers too.
        send(&mut lanes, &[change(5, "b/2")]);
        send(&mut lanes, &[change(6, "a/2")]);
        let paced = receiver.try_recv().unwrap();
        assert_eq!((paced.from, paced.through, paced.changes[0].id), (5, 6, 6));
        // The pacer lagged past 7..=9: the lane covers only from what it saw.
        send(&mut lanes, &[change(10, "a/3")]);
        let paced = receiver.try_recv().unwrap();
        assert_eq!((paced.from, paced.through), (10, 10));
    }

    #[tokio::test]
    async fn a_batch_past_a_gap_sends_the_watcher_to_the_log_instead_of_stalling() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1).unwrap();
        let paths: Vec<String> = (1..=6).map(|n| format!("a/{n}")).collect();
        write(&store, 1, &paths).await;
        let (sender, live) = broadcast::channel(8);
        let mut watch =
            Watch { store: store.clone(), live, last: 2, catch_up_to: 2, scope: docs("a/") };
        let changes = store.changes_after(4, 10).unwrap().into_iter().map(Arc::new).collect();
        // It comes while the watcher waits (one already queued is the other path).
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            sender.send(Arc::new(Paced { from: 5, through: 6, changes })).unwrap();
            sender
        });
        let ids: Vec<u64> = take(&mut watch, 4).await.into_iter().map(|(id, _)| id).collect();
        drop(later.await.unwrap());
        assert_eq!(ids, vec![3, 4, 5, 6]);
    }
}
