//! What peers may ask of this node, and how their records are let in.
//!
//! Incoming records are untrusted: a batch is validated whole (keys, record encoding,
//! todo shape, JSON documents) before any of it is applied, so a bad batch changes
//! nothing. Accepted records go through the one merge rule in `Store::apply`.

use std::collections::HashSet;
use std::sync::Arc;

use super::ServiceError;
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
    pub(super) fn new(store: Store, clock: Arc<Hlc>, tombstone_ttl_ms: u64) -> Self {
        ReplicaService { store, clock, tombstone_ttl_ms }
    }

    /// Tombstones written before this are expired and may be purged.
    fn tombstone_cutoff(&self) -> Timestamp {
        let now = self.clock.physical_ms();
        Timestamp::from_parts(now.saturating_sub(self.tombstone_ttl_ms), 0)
    }

    /// Purges expired tombstones (at most `limit`); returns how many went.
    pub fn purge_expired(&self, limit: usize) -> Result<usize, ServiceError> {
        Ok(self.store.purge_tombstones(self.tombstone_cutoff(), limit)?)
    }

    /// Notes a completed sync with a peer (the "away too long" rule reads it at start).
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
        for (key, record) in records {
            if !record.is_live() && record.version.ts < cutoff {
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
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1).unwrap();
        let clock = Arc::new(Hlc::new(ManualClock::new(100_000), 1_000));
        let replica = ReplicaService::new(store.clone(), clock, 10_000);
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
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1).unwrap();
        let clock = Arc::new(Hlc::new(ManualClock::new(100_000), 1_000));
        let replica = ReplicaService::new(store.clone(), clock, 10_000);
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
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1).unwrap();
        let clock = Arc::new(Hlc::new(ManualClock::new(100_000), 1_000));
        let replica = ReplicaService::new(store.clone(), clock, 10_000);
        let mut bad = tombstone(99_000);
        bad.value = Value::Live(b"{not json".to_vec());
        let good = (Key::doc("good").unwrap(), tombstone(99_500));
        let result = replica.merge(vec![good, (Key::doc("bad").unwrap(), bad)]).await;
        assert!(matches!(result, Err(ServiceError::Invalid(_))));
        assert_eq!(store.merkle_root(), crate::merkle::ZERO);
    }
}
