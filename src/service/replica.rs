//! What peers may ask of this node, and how their records are let in.
//!
//! Incoming records are untrusted: a batch is validated whole (keys, record encoding,
//! todo shape, JSON documents) before any of it is applied, so a bad batch changes
//! nothing. Accepted records go through the one merge rule in `Store::apply`.

use std::sync::Arc;

use super::ServiceError;
use crate::clock::{Hlc, Observation};
use crate::merkle::Hash;
use crate::model::todo::StoredTodo;
use crate::model::{Key, Record};
use crate::store::Store;
use crate::wire::NodesRequest;

#[derive(Clone)]
pub struct ReplicaService {
    store: Store,
    clock: Arc<Hlc>,
}

/// How an incoming batch went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Records that replaced (or created) ours.
    pub applied: usize,
    /// Records we already had, or that lost to ours.
    pub ignored: usize,
}

impl ReplicaService {
    pub(super) fn new(store: Store, clock: Arc<Hlc>) -> Self {
        ReplicaService { store, clock }
    }

    pub fn root(&self) -> Hash {
        self.store.merkle_root()
    }

    /// The children of every requested node, in request order.
    pub fn children(&self, request: &NodesRequest) -> Vec<Hash> {
        request
            .indices
            .iter()
            .flat_map(|index| {
                self.store
                    .merkle_children(request.level.into(), *index as usize)
                    .unwrap_or_default()
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

    /// Validates the whole batch, then merges it and waits until it is durable.
    pub async fn merge(&self, records: Vec<(Key, Record)>) -> Result<MergeReport, ServiceError> {
        for (key, record) in &records {
            validate(key, record)?;
        }
        let mut report = MergeReport::default();
        let mut last_seq = 0;
        for (key, record) in records {
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
