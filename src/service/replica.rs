//! What peers may ask of this node, and how their records are let in.
//!
//! Incoming records are untrusted: a batch is validated whole (keys, record encoding,
//! todo shape, JSON documents) before any of it is applied, so a bad batch changes
//! nothing. Accepted records go through the one merge rule in `Store::apply`.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Outgoing, Phase, PushStats, Readiness, ServiceError};
use crate::clock::{Hlc, Observation};
use crate::codec;
use crate::merkle::{self, Hash};
use crate::model::todo::StoredTodo;
use crate::model::{Key, Record, Timestamp};
use crate::store::{ApplyError, Store};
use crate::wire::{self, Digest, NodesRequest, ReconcileReply, ReconcileRequest};

/// A reconcile reply stops taking segments once it holds this many records.
pub const RECONCILE_REPLY_RECORDS: usize = 50_000;

/// A record's fingerprint: a digest of its Merkle entry hash (key and full version)
/// through `window`.
pub fn fingerprint(key: &Key, record: &Record, window: u8) -> Digest {
    let entry = merkle::entry_hash(&key.to_bytes(), &codec::encode_version(&record.version));
    wire::digest(&entry, window)
}

#[derive(Clone)]
pub struct ReplicaService {
    store: Store,
    clock: Arc<Hlc>,
    ttl: TtlRules,
    readiness: Readiness,
    /// Where records a peer pushed that were new here go to be passed on (with push on
    /// write), and the counters of what became of them.
    relay: Option<(mpsc::Sender<Outgoing>, Arc<PushStats>)>,
}

/// How tombstones expire on this node.
#[derive(Debug, Clone, Copy)]
pub struct TtlRules {
    pub tombstone_ttl_ms: u64,
    /// Seeds are configured. Such a node purges nothing before its first completed
    /// round: it has never held the cluster's data, and a purge horizon it raised alone
    /// would make its peers drop old records it simply never received.
    pub seeded: bool,
}

/// What a peer needs to know of this node's tombstones and contact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncState {
    /// This node may lack tombstones written before this (ms; 0: it lacks none).
    pub purge_horizon: u64,
    /// When this node last completed a sync round it started (ms), if ever.
    pub last_contact: Option<u64>,
}

/// How an incoming batch went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Records that replaced (or created) ours.
    pub applied: usize,
    /// Records we already had, or that lost to ours.
    pub ignored: usize,
    /// Tombstones older than the TTL for keys we do not hold: already purged here, so
    /// not taken back (the purge horizon says so).
    pub expired: usize,
    /// Live records for keys we do not hold, older than our purge horizon: their delete
    /// may be among the tombstones we purged, so they are not taken (see `sync`).
    pub purged: usize,
    /// Records stamped further ahead of our clock than `max_clock_skew`: refused for
    /// now; anti-entropy offers them again once our clock has caught up.
    pub future: usize,
}

/// Why one record of a batch was not taken.
enum Refusal {
    Expired,
    Purged,
}

impl ReplicaService {
    pub(super) fn new(
        store: Store,
        clock: Arc<Hlc>,
        ttl: TtlRules,
        readiness: Readiness,
        relay: Option<(mpsc::Sender<Outgoing>, Arc<PushStats>)>,
    ) -> Self {
        ReplicaService { store, clock, ttl, readiness, relay }
    }

    pub fn sync_state(&self) -> Result<SyncState, ServiceError> {
        Ok(SyncState {
            purge_horizon: self.store.purge_horizon()?,
            last_contact: self.store.last_contact()?,
        })
    }

    pub fn tombstone_ttl_ms(&self) -> u64 {
        self.ttl.tombstone_ttl_ms
    }

    /// How far ahead of our clock (ms) a peer's timestamps and claims may be.
    pub fn max_skew_ms(&self) -> u64 {
        self.clock.max_skew_ms()
    }

    /// Our physical clock (ms).
    pub fn now_ms(&self) -> u64 {
        self.clock.physical_ms()
    }

    /// Whether this node may purge tombstones (and refuse expired ones): only while it
    /// is in contact. A node that has not completed a round for longer than the TTL may
    /// be cut off from deletes, and its peers may still need the tombstones it holds; a
    /// seeded node that never completed a round has never held the cluster's data. Its
    /// purge horizon therefore never passes its own last contact.
    fn may_purge(&self) -> Result<bool, ServiceError> {
        Ok(match self.store.last_contact()? {
            Some(last) => self.now_ms().saturating_sub(last) <= self.ttl.tombstone_ttl_ms,
            // Never synced: only a node that is the whole cluster (no seeds, and no peer
            // has ever called it) may purge; one that peers joined could lack their
            // writes, and its horizon would make them drop those.
            None => !self.ttl.seeded && !self.store.peer_seen()?,
        })
    }

    /// Tombstones written before this are expired and may be purged.
    fn tombstone_cutoff(&self) -> Timestamp {
        Timestamp::from_parts(self.now_ms().saturating_sub(self.ttl.tombstone_ttl_ms), 0)
    }

    /// Purges expired tombstones (at most `limit`); returns how many went. Purges
    /// nothing while this node may not (see `may_purge`). Blocking.
    pub fn purge_expired(&self, limit: usize) -> Result<usize, ServiceError> {
        if !self.may_purge()? {
            return Ok(0);
        }
        Ok(self.store.purge_tombstones(self.tombstone_cutoff(), limit)?)
    }

    /// Rewrites records whose expiry has come to their expired form (at most `limit`);
    /// returns how many. Blocking. Needs no contact with anyone: the expiry instant is
    /// in the record, and the rewrite keeps the Merkle tree as it is.
    pub fn expire_due(&self, limit: usize) -> Result<usize, ServiceError> {
        Ok(self.store.expire_due(self.now_ms(), limit)?)
    }

    /// Notes a completed sync round with a peer (see [`SyncState`]).
    /// A peer called us: from now on we purge only while in contact.
    pub fn note_peer(&self) -> Result<(), ServiceError> {
        Ok(self.store.set_peer_seen()?)
    }

    pub fn note_contact(&self) -> Result<(), ServiceError> {
        Ok(self.store.set_last_contact(self.now_ms())?)
    }

    /// The readiness this replica reports through.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// A peer purged tombstones written after our last contact: until a round with it
    /// completes we may hold deleted data, so we stop serving and say why. Persisted
    /// first, so a crash mid-rebase resumes it.
    pub fn begin_rebase(&self) -> Result<(), ServiceError> {
        self.store.set_rebasing(true)?;
        if let Err(refused) = self.readiness.advance(Phase::Rebasing) {
            tracing::warn!(%refused, "could not report rebasing");
        }
        Ok(())
    }

    /// The rebase round completed: serve again.
    pub fn end_rebase(&self) -> Result<(), ServiceError> {
        self.store.set_rebasing(false)?;
        if let Err(refused) = self.readiness.advance(Phase::Ready) {
            tracing::warn!(%refused, "could not report ready after rebasing");
        }
        Ok(())
    }

    /// Drops our records that a peer lacks and that are older than its purge horizon
    /// (each only if it is still the version named): their delete may be among the
    /// tombstones the peer purged (see `sync::rules`). Returns how many went. Blocking.
    pub fn drop_lacking(&self, records: &[(Key, Record)]) -> Result<usize, ServiceError> {
        let mut dropped = 0;
        for (key, record) in records {
            if self.store.remove_if_current(key, &record.version)? {
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// Whether the store accepts writes: sync waits (and peers are told to retry) while
    /// it does not, rather than having batches half-applied.
    pub fn writable(&self) -> bool {
        self.store.writable()
    }

    pub fn root(&self) -> Hash {
        self.store.merkle_root()
    }

    /// Records this node holds (live; an estimate of how full the leaves are).
    pub fn record_count(&self) -> u64 {
        let counts = self.store.counts();
        counts.todos + counts.docs
    }

    /// The requested descendants of every requested node, in request order.
    pub fn descendants(&self, request: &NodesRequest) -> Vec<Hash> {
        let (level, depth) = (request.level.into(), request.depth.into());
        request
            .indices
            .iter()
            .flat_map(|index| {
                self.store.merkle_descendants(level, *index as usize, depth).unwrap_or_default()
            })
            .collect()
    }

    /// The records of each of `segments` (ascending), in that order. Blocking.
    pub fn records_by_segment(
        &self,
        segments: &[u16],
    ) -> Result<Vec<Vec<(Key, Record)>>, ServiceError> {
        Ok(self.store.records_in_segments(segments)?)
    }

    /// Answers a peer's reconcile request: our records in its segments that it did not
    /// fingerprint, and the positions of its fingerprints we do not hold. Stops after the
    /// segment that brings the reply past [`RECONCILE_REPLY_RECORDS`]. Blocking.
    pub fn reconcile(&self, request: &ReconcileRequest) -> Result<ReconcileReply, ServiceError> {
        self.reconcile_within(request, RECONCILE_REPLY_RECORDS)
    }

    fn reconcile_within(
        &self,
        request: &ReconcileRequest,
        budget: usize,
    ) -> Result<ReconcileReply, ServiceError> {
        let mut reply = ReconcileReply::default();
        let mut position = 0u32;
        let print = |(key, record): &(Key, Record)| fingerprint(key, record, request.window);
        let segments: Vec<u16> = request.segments.iter().map(|(segment, _)| *segment).collect();
        let mut in_segments = self.store.records_in_segments(&segments)?.into_iter();
        for (_, theirs) in &request.segments {
            if reply.records.len() >= budget {
                break;
            }
            let ours = in_segments.next().unwrap_or_default();
            let our_prints: HashSet<Digest> = ours.iter().map(print).collect();
            let their_prints: HashSet<&Digest> = theirs.iter().collect();
            for print in theirs {
                if !our_prints.contains(print) {
                    reply.wanted.push(position);
                }
                position += 1;
            }
            reply
                .records
                .extend(ours.into_iter().filter(|entry| !their_prints.contains(&print(entry))));
            reply.covered += 1;
        }
        Ok(reply)
    }

    /// Validates the whole batch, then merges it on the blocking pool and waits until
    /// it is durable. See [`MergeReport`] for what is refused.
    pub async fn merge(&self, records: Vec<(Key, Record)>) -> Result<MergeReport, ServiceError> {
        self.merge_and_relay(records, Vec::new()).await
    }

    /// Merges writes a peer pushed; those new here that carry a span are then handed to
    /// our own pushes, which pass them on within it (`sync::spread`). A second copy of a
    /// write changes nothing here, so it is never passed on twice.
    pub async fn merge_pushed(
        &self,
        writes: Vec<wire::Pushed>,
    ) -> Result<MergeReport, ServiceError> {
        let (records, spans) =
            writes.into_iter().map(|(key, record, until)| ((key, record), until)).unzip();
        self.merge_and_relay(records, spans).await
    }

    /// Merges `records`; `spans` (empty, or one per record) says which are passed on.
    async fn merge_and_relay(
        &self,
        records: Vec<(Key, Record)>,
        spans: Vec<Option<uuid::Uuid>>,
    ) -> Result<MergeReport, ServiceError> {
        for (key, record) in &records {
            validate(key, record)?;
        }
        let replica = self.clone();
        let keep_fresh = self.relay.is_some() && spans.iter().any(Option::is_some);
        let merged =
            tokio::task::spawn_blocking(move || replica.merge_blocking(records, keep_fresh)).await;
        let (report, last_seq, fresh) = merged.map_err(|_| ServiceError::Interrupted)??;
        self.store.wait_durable(last_seq).await?;
        if let Some((outbox, pushes)) = self.relay.as_ref().filter(|_| !fresh.is_empty()) {
            let relayed = fresh.into_iter().filter_map(|(at, key, record)| {
                spans.get(at).copied().flatten().map(|until| (key, record, Some(until)))
            });
            Outgoing::offer(outbox, pushes, relayed);
        }
        if report.future > 0 {
            tracing::warn!(
                refused = report.future,
                "refused records stamped further ahead of our clock than max_clock_skew"
            );
        }
        Ok(report)
    }

    /// Merges `records`; with `keep_fresh`, also returns those that changed our state
    /// (with their place in `records`).
    #[allow(clippy::type_complexity)]
    fn merge_blocking(
        &self,
        records: Vec<(Key, Record)>,
        keep_fresh: bool,
    ) -> Result<(MergeReport, u64, Vec<(usize, Key, Record)>), ServiceError> {
        let mut report = MergeReport::default();
        let mut fresh = Vec::new();
        let mut last_seq = 0;
        let cutoff = self.tombstone_cutoff();
        let refuse_expired = self.may_purge()?;
        let expired = |record: &Record| !record.is_live() && record.version.ts < cutoff;
        if refuse_expired && records.iter().any(|(_, record)| expired(record)) {
            // We are about to refuse tombstones we will then never hold: peers must
            // know, as after a purge — and before the refusal is acknowledged.
            self.store.raise_purge_horizon(cutoff.millis())?;
        }
        let horizon = Timestamp::from_parts(self.store.purge_horizon()?, 0);
        let now_ms = self.now_ms();
        for (at, (key, record)) in records.into_iter().enumerate() {
            // A write that is already due arrives as what it now is: its expired form.
            let record = if record.is_due(now_ms) { record.expired() } else { record };
            if let Observation::Refused { .. } = self.clock.observe(record.version.ts) {
                report.future += 1;
                continue;
            }
            let decided = self.store.apply_with(&key, |current| match current {
                None if refuse_expired && expired(&record) => Err(Refusal::Expired),
                None if record.is_live() && record.version.ts < horizon => Err(Refusal::Purged),
                _ => Ok(record),
            });
            match decided {
                Ok(applied) => {
                    last_seq = last_seq.max(applied.seq);
                    if applied.changed {
                        report.applied += 1;
                        if keep_fresh {
                            fresh.push((at, key, applied.record));
                        }
                    } else {
                        report.ignored += 1;
                    }
                }
                Err(ApplyError::Rejected(Refusal::Expired)) => report.expired += 1,
                Err(ApplyError::Rejected(Refusal::Purged)) => report.purged += 1,
                Err(ApplyError::Store(error)) => return Err(error.into()),
            }
        }
        Ok((report, last_seq, fresh))
    }
}

fn validate(key: &Key, record: &Record) -> Result<(), ServiceError> {
    let Some(bytes) = record.live_bytes() else { return Ok(()) };
    let problem = match key {
        Key::Todo(id) => match StoredTodo::decode(bytes) {
            Ok(todo) => todo.check(*id).err().map(|error| error.to_string()),
            Err(reason) => Some(reason),
        },
        Key::Doc(_) => crate::model::json::check_document(bytes).err().map(|e| e.to_string()),
    };
    match problem {
        None => Ok(()),
        Some(reason) => Err(ServiceError::Invalid(crate::model::todo::FieldError {
            field: "records",
            message: format!("{key}: {reason}"),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::model::{NodeId, Origin, Value, Version};

    /// A replica on a fresh store whose clock reads 100 s, with a 10 s tombstone TTL
    /// and no seeds (it may purge from the start).
    fn replica_at_100s() -> (tempfile::TempDir, Store, ReplicaService) {
        replica_with(false)
    }

    fn replica_with(seeded: bool) -> (tempfile::TempDir, Store, ReplicaService) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1).unwrap();
        let clock = Arc::new(Hlc::new(ManualClock::new(100_000), 1_000));
        let ready = Readiness::new(Phase::Standalone);
        let ttl = TtlRules { tombstone_ttl_ms: 10_000, seeded };
        let replica = ReplicaService::new(store.clone(), clock, ttl, ready, None);
        (dir, store, replica)
    }

    fn live(ms: u64, name: &str) -> (Key, Record) {
        let mut record = tombstone(ms);
        record.value = Value::Live(b"{}".to_vec());
        (Key::doc(name).unwrap(), record)
    }

    /// Point 7 of the sync-core issue: a seeded node that never completed a round
    /// must not purge, or its horizon would make its peers drop what it never had.
    #[test]
    fn a_seeded_node_that_never_synced_does_not_purge() {
        let (_dir, store, replica) = replica_with(true);
        store.apply(&Key::doc("old").unwrap(), tombstone(80_000)).unwrap();
        assert_eq!(replica.purge_expired(10).unwrap(), 0);
        assert_eq!(replica.sync_state().unwrap().purge_horizon, 0);
        replica.note_contact().unwrap();
        assert_eq!(replica.purge_expired(10).unwrap(), 1);
    }

    /// Point 3: a record stamped far ahead is refused and does not move the clock.
    #[tokio::test]
    async fn far_future_records_are_refused_and_the_clock_stays() {
        let (_dir, store, replica) = replica_at_100s();
        let before = replica.clock.now();
        let (key, mut far) = live(0, "far");
        far.version.ts = Timestamp::from_raw(u64::MAX);
        let (near_key, near) = live(100_500, "near");
        let report =
            replica.merge(vec![(key.clone(), far), (near_key.clone(), near)]).await.unwrap();
        assert_eq!((report.future, report.applied), (1, 1));
        assert_eq!(store.get(&key).unwrap(), None);
        assert!(store.get(&near_key).unwrap().is_some());
        let after = replica.clock.now();
        assert!(after > before && after.millis() <= 100_500, "clock moved to {after}");
    }

    /// Rule 3 of `sync::rules`: a live record for a key we lack, older than our purge
    /// horizon, may be one whose delete we purged: refused.
    #[tokio::test]
    async fn records_older_than_our_horizon_for_keys_we_lack_are_refused() {
        let (_dir, store, replica) = replica_at_100s();
        store.raise_purge_horizon(90_000).unwrap();
        let (old_key, old) = live(85_000, "old");
        let (new_key, new) = live(95_000, "new");
        let report =
            replica.merge(vec![(old_key.clone(), old), (new_key.clone(), new)]).await.unwrap();
        assert_eq!((report.purged, report.applied), (1, 1));
        assert_eq!(store.get(&old_key).unwrap(), None);
        // A key we hold takes an older-than-horizon update as usual (no delete of it
        // can be missing: we hold the key).
        let (_, older) = live(80_000, "new");
        let report = replica.merge(vec![(new_key, older)]).await.unwrap();
        assert_eq!(report.ignored, 1);
    }

    #[tokio::test]
    async fn out_of_contact_a_node_neither_purges_nor_refuses_old_tombstones() {
        let (_dir, store, replica) = replica_at_100s();
        store.set_last_contact(85_000).unwrap(); // 15 s ago, TTL 10 s
        let old = Key::doc("old").unwrap();
        let report = replica.merge(vec![(old.clone(), tombstone(80_000))]).await.unwrap();
        assert_eq!(report, MergeReport { applied: 1, ..MergeReport::default() });
        assert_eq!(replica.purge_expired(10).unwrap(), 0);
        assert_eq!(replica.sync_state().unwrap().purge_horizon, 0);

        // Back in contact: the old tombstone goes, and the horizon says so.
        replica.note_contact().unwrap();
        assert_eq!(replica.purge_expired(10).unwrap(), 1);
        assert_eq!(replica.sync_state().unwrap().purge_horizon, 90_000);
        assert_eq!(store.get(&old).unwrap(), None);
    }

    fn tombstone(ms: u64) -> Record {
        Record {
            version: Version {
                ts: Timestamp::from_parts(ms, 0),
                origin: Origin { node: NodeId(uuid::Uuid::from_u128(2)), joined_at: 1 },
                uuid: uuid::Uuid::from_u128(ms.into()),
            },
            value: Value::Tombstone,
            expires_at: None,
        }
    }

    #[tokio::test]
    async fn expired_tombstones_are_not_taken_back_and_are_purged() {
        let (_dir, store, replica) = replica_at_100s();
        let (old, fresh) = (Key::doc("old").unwrap(), Key::doc("fresh").unwrap());
        let report = replica
            .merge(vec![(old.clone(), tombstone(80_000)), (fresh.clone(), tombstone(95_000))])
            .await
            .unwrap();
        assert_eq!(report, MergeReport { applied: 1, expired: 1, ..MergeReport::default() });
        assert_eq!(store.get(&old).unwrap(), None);
        assert!(store.get(&fresh).unwrap().is_some());
        assert_eq!(replica.purge_expired(10).unwrap(), 0);
    }

    #[test]
    fn reconcile_sends_what_the_asker_lacks_and_names_what_it_lacks() {
        let (_dir, store, replica) = replica_at_100s();
        let keys: Vec<Key> = (0..40).map(|n| Key::doc(&format!("k{n}")).unwrap()).collect();
        for (n, key) in keys.iter().enumerate() {
            store.apply(key, tombstone(99_000 + n as u64)).unwrap();
        }
        let mut segments: Vec<u16> =
            keys.iter().map(|key| merkle::segment_of(&key.to_bytes())).collect();
        segments.sort_unstable();
        segments.dedup();
        // The asker holds k0 as we do, plus one record we lack, in k0's segment.
        let k0 = (keys[0].clone(), store.get(&keys[0]).unwrap().unwrap());
        let k0_segment = merkle::segment_of(&k0.0.to_bytes());
        let unknown: Digest = [7; 4];
        let request = ReconcileRequest {
            window: 3,
            segments: segments
                .iter()
                .map(|s| {
                    (
                        *s,
                        if *s == k0_segment {
                            vec![fingerprint(&k0.0, &k0.1, 3), unknown]
                        } else {
                            vec![]
                        },
                    )
                })
                .collect(),
        };
        let reply = replica.reconcile(&request).unwrap();
        assert_eq!(reply.covered as usize, segments.len());
        assert_eq!(reply.records.len(), 39);
        assert!(!reply.records.iter().any(|(key, _)| *key == k0.0));
        // Positions run over all fingerprints in request order: k0's is 0, the unknown 1.
        assert_eq!(reply.wanted, vec![1]);

        // A small budget stops early, after whole segments.
        let reply = replica.reconcile_within(&request, 10).unwrap();
        assert!((reply.covered as usize) < segments.len());
        assert!(reply.records.len() >= 10);
        let covered = &request.segments[..reply.covered as usize];
        assert!(reply.records.iter().all(|(key, _)| {
            covered.iter().any(|(s, _)| *s == merkle::segment_of(&key.to_bytes()))
        }));
    }

    #[tokio::test]
    async fn a_batch_with_one_bad_record_changes_nothing() {
        let (_dir, store, replica) = replica_at_100s();
        let mut bad = tombstone(99_000);
        bad.value = Value::Live(b"{not json".to_vec());
        let good = (Key::doc("good").unwrap(), tombstone(99_500));
        let result = replica.merge(vec![good, (Key::doc("bad").unwrap(), bad)]).await;
        assert!(matches!(result, Err(ServiceError::Invalid(_))));
        assert_eq!(store.merkle_root(), crate::merkle::ZERO);
    }
}
