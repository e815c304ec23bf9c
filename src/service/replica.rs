//! What peers may ask of this node, and how their records are let in.
//!
//! Incoming records are untrusted: a batch is validated whole (keys, record encoding,
//! todo shape, JSON documents) before any of it is applied, so a bad batch changes
//! nothing. Accepted records go through the one merge rule in `Store::apply`.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Readiness, ReadyState, ServiceError};
use crate::clock::{Hlc, Observation};
use crate::codec;
use crate::merkle::{self, Hash};
use crate::model::todo::StoredTodo;
use crate::model::{Key, Record, Timestamp};
use crate::store::Store;
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
    tombstone_ttl_ms: u64,
    readiness: Readiness,
}

/// What a peer needs to know to tell whether one of the two replicas is stale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncState {
    /// This node may lack tombstones written before this (ms; 0: it lacks none).
    pub purge_horizon: u64,
    /// When this node last completed a sync round it started (ms), if ever.
    pub last_contact: Option<u64>,
}

impl SyncState {
    /// True when `self` may hold records whose tombstones `other` has purged: `other`
    /// dropped tombstones written after our last contact, so we never saw them. Such a
    /// replica must not be pulled from, and must discard its copy and bootstrap.
    ///
    /// Two replicas are never stale with respect to each other: a node purges (or refuses
    /// expired tombstones) only while its last contact is within the TTL, so its horizon
    /// (now − TTL) never passes its own last contact; if B's horizon is past A's last
    /// contact, B synced after A did, so A's horizon cannot be past B's last contact.
    /// So a whole cluster that was down longer than the TTL discards nothing: of any two
    /// nodes, the one that synced last is never stale.
    pub fn is_stale_against(&self, other: &SyncState) -> bool {
        self.last_contact.is_some_and(|contact| other.purge_horizon > contact)
    }
}

/// How an incoming batch went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Records that replaced (or created) ours.
    pub applied: usize,
    /// Records we already had, or that lost to ours.
    pub ignored: usize,
    /// Tombstones older than the TTL: already purged here, so not taken back.
    pub expired: usize,
}

impl ReplicaService {
    pub(super) fn new(
        store: Store,
        clock: Arc<Hlc>,
        tombstone_ttl_ms: u64,
        readiness: Readiness,
    ) -> Self {
        ReplicaService { store, clock, tombstone_ttl_ms, readiness }
    }

    pub fn sync_state(&self) -> Result<SyncState, ServiceError> {
        Ok(SyncState {
            purge_horizon: self.store.purge_horizon()?,
            last_contact: self.store.last_contact()?,
        })
    }

    /// True while this node has not completed a round for longer than the TTL: it may
    /// be cut off from deletes, so it must not purge (its peers may still need the
    /// tombstones it holds, and purging would make *them* look stale).
    fn is_out_of_contact(&self) -> Result<bool, ServiceError> {
        let now = self.clock.physical_ms();
        let last = self.store.last_contact()?;
        Ok(last.is_some_and(|last| now.saturating_sub(last) > self.tombstone_ttl_ms))
    }

    /// Discards our copy (the node keeps its identity) because a peer purged tombstones
    /// written after our last contact: we may hold data deleted since. The node reports
    /// not ready until [`ReplicaService::rebased`], after the round has pulled the
    /// peer's copy.
    pub fn rebase(&self) -> Result<(), ServiceError> {
        tracing::warn!("a peer purged tombstones written after our last contact: discarding the local copy and bootstrapping afresh");
        self.readiness.set(ReadyState {
            ready: false,
            reason: "away longer than tombstone_ttl: bootstrapping afresh".into(),
            ..self.readiness.current()
        });
        Ok(self.store.discard_all()?)
    }

    pub fn rebased(&self) {
        self.readiness.set(ReadyState {
            ready: true,
            reason: String::new(),
            ..self.readiness.current()
        });
    }

    /// Tombstones written before this are expired and may be purged.
    fn tombstone_cutoff(&self) -> Timestamp {
        let now = self.clock.physical_ms();
        Timestamp::from_parts(now.saturating_sub(self.tombstone_ttl_ms), 0)
    }

    /// Purges expired tombstones (at most `limit`); returns how many went. Purges
    /// nothing while this node is out of contact for longer than the TTL.
    pub fn purge_expired(&self, limit: usize) -> Result<usize, ServiceError> {
        if self.is_out_of_contact()? {
            return Ok(0);
        }
        Ok(self.store.purge_tombstones(self.tombstone_cutoff(), limit)?)
    }

    /// Notes a completed sync round with a peer (see [`SyncState`]).
    pub fn note_contact(&self) -> Result<(), ServiceError> {
        Ok(self.store.set_last_contact(self.clock.physical_ms())?)
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

    pub fn records_in(&self, segments: &[u16]) -> Result<Vec<(Key, Record)>, ServiceError> {
        let mut out = Vec::new();
        for segment in segments {
            out.extend(self.store.records_in_segment(*segment)?);
        }
        Ok(out)
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
        for (segment, theirs) in &request.segments {
            if reply.records.len() >= budget {
                break;
            }
            let ours = self.store.records_in_segment(*segment)?;
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

    /// Validates the whole batch, then merges it and waits until it is durable.
    pub async fn merge(&self, records: Vec<(Key, Record)>) -> Result<MergeReport, ServiceError> {
        for (key, record) in &records {
            validate(key, record)?;
        }
        let mut report = MergeReport::default();
        let mut last_seq = 0;
        let cutoff = self.tombstone_cutoff();
        let refuse_expired = !self.is_out_of_contact()?;
        for (key, record) in records {
            if refuse_expired && !record.is_live() && record.version.ts < cutoff {
                report.expired += 1;
                continue;
            }
            if let Observation::AheadBy(ms) = self.clock.observe(record.version.ts) {
                tracing::warn!(%key, ahead_ms = ms, "merged a record from further ahead than max_clock_skew");
            }
            let applied = self.store.apply(&key, record)?;
            last_seq = last_seq.max(applied.seq);
            if applied.changed {
                report.applied += 1;
            } else {
                report.ignored += 1;
            }
        }
        if report.expired > 0 {
            // We will never hold those tombstones: peers must know, as after a purge.
            self.store.raise_purge_horizon(cutoff.millis())?;
        }
        self.store.wait_durable(last_seq).await?;
        Ok(report)
    }
}

fn validate(key: &Key, record: &Record) -> Result<(), ServiceError> {
    let Some(bytes) = record.live_bytes() else { return Ok(()) };
    let problem = match key {
        Key::Todo(_) => StoredTodo::decode(bytes).err(),
        Key::Doc(_) => {
            serde_json::from_slice::<serde::de::IgnoredAny>(bytes).err().map(|e| e.to_string())
        }
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

    /// A replica on a fresh store whose clock reads 100 s, with a 10 s tombstone TTL.
    fn replica_at_100s() -> (tempfile::TempDir, Store, ReplicaService) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1).unwrap();
        let clock = Arc::new(Hlc::new(ManualClock::new(100_000), 1_000));
        let ready =
            Readiness::new(ReadyState { ready: true, standalone: true, reason: String::new() });
        let replica = ReplicaService::new(store.clone(), clock, 10_000, ready);
        (dir, store, replica)
    }

    #[test]
    fn staleness_follows_the_purge_horizon_and_last_contact() {
        let state = |purge_horizon, last_contact| SyncState { purge_horizon, last_contact };
        // b purged tombstones written after a's last contact: a is stale, b is not.
        assert!(state(0, Some(100)).is_stale_against(&state(150, Some(400))));
        assert!(!state(150, Some(400)).is_stale_against(&state(0, Some(100))));
        // A node that never synced has nothing stale to bring back; neither has a peer
        // that never purged.
        assert!(!state(0, None).is_stale_against(&state(150, Some(400))));
        assert!(!state(0, Some(100)).is_stale_against(&state(0, Some(400))));
    }

    proptest::proptest! {
        /// With horizons never past their own last contact (the purge rule), two nodes
        /// are never both stale, so no pair discards both copies.
        #[test]
        fn two_nodes_are_never_stale_against_each_other(
            contact_a in 1u64..1_000, contact_b in 1u64..1_000, ha in 0u64..1_000, hb in 0u64..1_000,
        ) {
            let a = SyncState { purge_horizon: ha.min(contact_a), last_contact: Some(contact_a) };
            let b = SyncState { purge_horizon: hb.min(contact_b), last_contact: Some(contact_b) };
            proptest::prop_assert!(!(a.is_stale_against(&b) && b.is_stale_against(&a)));
        }
    }

    #[tokio::test]
    async fn out_of_contact_a_node_neither_purges_nor_refuses_old_tombstones() {
        let (_dir, store, replica) = replica_at_100s();
        store.set_last_contact(85_000).unwrap(); // 15 s ago, TTL 10 s
        let old = Key::doc("old").unwrap();
        let report = replica.merge(vec![(old.clone(), tombstone(80_000))]).await.unwrap();
        assert_eq!(report, MergeReport { applied: 1, ignored: 0, expired: 0 });
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
        assert_eq!(report, MergeReport { applied: 1, ignored: 0, expired: 1 });
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
