//! `/internal/v1/*`: the receiver side of the peer protocol (see `wire.rs`).
//! Authenticated by the cluster token once a key is configured.

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::ApiError;
use super::AppState;
use crate::peer::TOKEN_HEADER;
use crate::wire::{self, NodesRequest, ReconcileRequest, RootReply, RootRequest, TOP_LEVEL};

fn octets(bytes: Vec<u8>) -> Response {
    let mut response = (StatusCode::OK, bytes).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    response
}

fn bad_peer_body(what: &str, error: impl std::fmt::Display) -> ApiError {
    tracing::warn!(%error, "rejected a peer {what}");
    ApiError::BadRequest(format!("bad {what}: {error}"))
}

/// Refuses peers without the cluster token (when a key is configured).
pub async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = &state.cluster_token else { return next.run(request).await };
    let presented = request
        .headers()
        .get(TOKEN_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| blake3::Hash::from_hex(text).ok());
    // blake3::Hash compares in constant time.
    if presented.as_ref() == Some(expected) {
        next.run(request).await
    } else {
        tracing::warn!(path = %request.uri().path(), "refused a peer request without the cluster key");
        ApiError::Unauthorized.into_response()
    }
}

pub async fn root(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let request = RootRequest::decode(&body).map_err(|e| bad_peer_body("root request", e))?;
    let replica = &state.services.replica;
    let sync = replica.sync_state()?;
    let root = replica.root();
    let top = if root == request.root {
        Vec::new()
    } else {
        let top =
            NodesRequest { window: request.window, level: 0, depth: TOP_LEVEL, indices: vec![0] };
        let hashes = replica.descendants(&top);
        hashes.iter().map(|hash| wire::digest(hash, request.window)).collect()
    };
    let reply =
        RootReply { root, purge_horizon: sync.purge_horizon, last_contact: sync.last_contact, top };
    Ok(octets(reply.encode()))
}

pub async fn nodes(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let request = NodesRequest::decode(&body).map_err(|e| bad_peer_body("node request", e))?;
    let hashes = state.services.replica.descendants(&request);
    Ok(octets(wire::encode_digests(&hashes, request.window)))
}

pub async fn reconcile(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let request =
        ReconcileRequest::decode(&body).map_err(|e| bad_peer_body("reconcile request", e))?;
    let replica = state.services.replica.clone();
    let reply = tokio::task::spawn_blocking(move || {
        replica.reconcile(&request).map(|reply| reply.encode())
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(octets(reply))
}

pub async fn records(State(state): State<AppState>, body: Bytes) -> Result<StatusCode, ApiError> {
    let records = wire::decompress_batch(&body).map_err(|e| bad_peer_body("record batch", e))?;
    state.services.replica.merge(records).await.map_err(|error| match ApiError::from(error) {
        ApiError::Validation { message, .. } => bad_peer_body("record batch", message),
        other => other,
    })?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
pub struct SyncQuery {
    peer: String,
}

/// Runs one anti-entropy round with `?peer=host:port` now and answers what it did: for
/// an operator who wants a repair without waiting, and for the `repair` benchmark.
pub async fn sync_now(
    State(state): State<AppState>,
    Query(query): Query<SyncQuery>,
) -> Result<Response, ApiError> {
    let report =
        crate::sync::sync_round(&state.peer, &state.services.replica, &query.peer).await.map_err(
            |error| ApiError::BadGateway(format!("sync with {} failed: {error}", query.peer)),
        )?;
    Ok(axum::Json(report).into_response())
}

pub async fn gossip(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let remote: Vec<crate::cluster::Member> =
        serde_json::from_slice(&body).map_err(|e| bad_peer_body("member list", e))?;
    if remote.len() > 10_000 {
        return Err(bad_peer_body("member list", "more than 10,000 members"));
    }
    let ours = state.cluster.on_gossip(remote);
    let mut response = axum::Json(ours).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
