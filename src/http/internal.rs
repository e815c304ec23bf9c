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
use crate::sync::receiver::{self, ReceiveError};
use crate::sync::SyncError;

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

impl From<ReceiveError> for ApiError {
    fn from(error: ReceiveError) -> Self {
        match error {
            ReceiveError::Bad { what, reason } => {
                tracing::warn!(%reason, "rejected a peer {what}");
                ApiError::BadRequest(format!("bad {what}: {reason}"))
            }
            ReceiveError::Service(error) => error.into(),
        }
    }
}

pub async fn root(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    Ok(octets(receiver::root(&state.services.replica, &body)?))
}

pub async fn nodes(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    Ok(octets(receiver::nodes(&state.services.replica, &body)?))
}

pub async fn reconcile(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    Ok(octets(receiver::reconcile(&state.services.replica, body.to_vec()).await?))
}

pub async fn records(State(state): State<AppState>, body: Bytes) -> Result<StatusCode, ApiError> {
    receiver::records(&state.services.replica, body.to_vec()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
pub struct SyncQuery {
    peer: String,
}

/// Runs one anti-entropy round with the alive member at `?peer=host:port` now and
/// answers what it did: for an operator who wants a repair without waiting, and for the
/// `repair` benchmark. Any address that is not an alive member's is refused (422), so
/// the node never calls an address a client names.
pub async fn sync_now(
    State(state): State<AppState>,
    Query(query): Query<SyncQuery>,
) -> Result<Response, ApiError> {
    let report = state.driver.sync_now(&query.peer).await.map_err(|error| match error {
        SyncError::NotAMember(_) => {
            ApiError::Validation { field: "peer", message: error.to_string() }
        }
        error => {
            tracing::warn!(peer = %query.peer, %error, "operator's sync round failed");
            ApiError::BadGateway(format!(
                "the sync round with {} failed (see the node's log)",
                query.peer
            ))
        }
    })?;
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
