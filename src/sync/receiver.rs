//! The serving side of the peer protocol: what a node answers to `/internal/v1/*`,
//! from request bytes to reply bytes. `http::internal` only moves bytes in and out, and
//! the simulation calls these directly, so both exercise the same code.
//!
//! Decoding is checked (`wire`), decompression and merges run on the blocking pool,
//! and a bad request changes nothing.

use crate::service::{MergeReport, ReplicaService, ServiceError};
use crate::wire::{self, NodesRequest, ReconcileRequest, RootReply, RootRequest, TOP_LEVEL};

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The request does not decode or breaks a rule: refused whole.
    #[error("bad {what}: {reason}")]
    Bad { what: &'static str, reason: String },
    #[error(transparent)]
    Service(#[from] ServiceError),
}

fn bad(what: &'static str, error: impl std::fmt::Display) -> ReceiveError {
    ReceiveError::Bad { what, reason: error.to_string() }
}

/// Our root, purge horizon and last contact; and level 2 when the asker's root differs.
pub fn root(replica: &ReplicaService, body: &[u8]) -> Result<Vec<u8>, ReceiveError> {
    let request = RootRequest::decode(body).map_err(|e| bad("root request", e))?;
    replica.note_peer()?;
    let sync = replica.sync_state()?;
    let root = replica.root();
    let top = if root == request.root {
        Vec::new()
    } else {
        let top =
            NodesRequest { window: request.window, level: 0, depth: TOP_LEVEL, indices: vec![0] };
        replica.descendants(&top).iter().map(|hash| wire::digest(hash, request.window)).collect()
    };
    let reply =
        RootReply { root, purge_horizon: sync.purge_horizon, last_contact: sync.last_contact, top };
    Ok(reply.encode())
}

pub fn nodes(replica: &ReplicaService, body: &[u8]) -> Result<Vec<u8>, ReceiveError> {
    let request = NodesRequest::decode(body).map_err(|e| bad("node request", e))?;
    Ok(wire::encode_digests(&replica.descendants(&request), request.window))
}

pub async fn reconcile(replica: &ReplicaService, body: Vec<u8>) -> Result<Vec<u8>, ReceiveError> {
    let replica = replica.clone();
    let answered = tokio::task::spawn_blocking(move || {
        let request = ReconcileRequest::decode(&body).map_err(|e| bad("reconcile request", e))?;
        Ok::<_, ReceiveError>(replica.reconcile(&request)?.encode())
    })
    .await;
    answered.map_err(|_| ServiceError::Interrupted)?
}

/// Decompresses (on the blocking pool) and merges a record batch.
pub async fn records(replica: &ReplicaService, body: Vec<u8>) -> Result<MergeReport, ReceiveError> {
    replica.note_peer()?;
    let decoded = tokio::task::spawn_blocking(move || wire::decompress_batch(&body)).await;
    let records =
        decoded.map_err(|_| ServiceError::Interrupted)?.map_err(|e| bad("record batch", e))?;
    replica.merge(records).await.map_err(|error| refused("record batch", error))
}

/// Decompresses and merges fresh writes a peer pushed ([`wire::Pushed`]); those new
/// here are passed on within their span (`sync::spread`).
pub async fn pushed(replica: &ReplicaService, body: Vec<u8>) -> Result<MergeReport, ReceiveError> {
    replica.note_peer()?;
    let decoded = tokio::task::spawn_blocking(move || wire::decompress_pushed(&body)).await;
    let writes =
        decoded.map_err(|_| ServiceError::Interrupted)?.map_err(|e| bad("pushed writes", e))?;
    replica.merge_pushed(writes).await.map_err(|error| refused("pushed writes", error))
}

fn refused(what: &'static str, error: ServiceError) -> ReceiveError {
    match error {
        ServiceError::Invalid(field) => bad(what, field.message),
        other => ReceiveError::Service(other),
    }
}
