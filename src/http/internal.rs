//! `/internal/v1/*`: the receiver side of the peer protocol (see `wire.rs`).
//! With a cluster key, every request must carry a valid signature and every reply is
//! signed (`auth.rs`); see [`authenticate`].

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::ApiError;
use super::{AppState, INTERNAL_BODY_LIMIT};
use crate::auth::{PeerAuth, FROM_HEADER, REPLY_SIGNATURE_HEADER, SIGNATURE_HEADER};
use crate::cluster::MAX_MEMBERS;
use crate::sync::receiver::{self, ReceiveError};
use crate::sync::SyncError;
use crate::tls::ClientCert;

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

/// The member a peer request comes from: proven by its signature with a cluster key,
/// as it claims without one.
#[derive(Clone, Copy, Debug)]
pub struct Sender(pub Option<uuid::Uuid>);

/// Lets through what the node's [`PeerAuth`] allows. A body announced larger than
/// [`INTERNAL_BODY_LIMIT`] is refused with 413 before anything else. Signed mode refuses
/// a missing, malformed or stale signature header with 401 before reading the body or
/// taking a peer slot; then reads the whole body to check the MAC over its hash, refuses
/// a bad or replayed signature with 401, and signs the reply. In every mode at most
/// [`super::PEER_REQUESTS_AT_ONCE`] bodies are read and handled at once, and a body not
/// received within [`super::REQUEST_TIMEOUT`] answers 408, so stalled uploads cannot
/// hold the peer slots.
pub async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if announced.is_some_and(|length| length > INTERNAL_BODY_LIMIT as u64) {
        return too_large();
    }
    if state.access.peer_cert_required
        && !request.extensions().get::<ClientCert>().is_some_and(|cert| cert.verified)
    {
        return ApiError::Forbidden(
            "peer routes need a client certificate signed by the cluster's CA (tls.peer_auth: mtls)"
                .into(),
        )
        .into_response();
    }
    let membership = matches!(request.uri().path(), "/internal/v1/gossip" | "/internal/v1/swim");
    if !membership && !state.services.replica.writable() {
        // Merging needs a writable store; the peer retries on its next round.
        return ApiError::StorageUnavailable.into_response();
    }
    let (parts, body) = request.into_parts();
    let signed = match &*state.peer_auth {
        PeerAuth::Closed => return ApiError::PeersClosed.into_response(),
        PeerAuth::Open => None,
        PeerAuth::Signed { key, replays } => {
            let header = parts.headers.get(SIGNATURE_HEADER).and_then(|value| value.to_str().ok());
            match crate::auth::precheck(header, state.cluster.now_ms()) {
                Ok(signed) => Some((key, replays, signed)),
                Err(error) => return refuse(&state, parts.uri.path(), &error),
            }
        }
    };
    let Ok(_turn) = state.peer_slots.acquire().await else {
        return ApiError::Internal("peer request limiter closed".into()).into_response();
    };
    let body = match tokio::time::timeout(
        super::REQUEST_TIMEOUT,
        axum::body::to_bytes(body, INTERNAL_BODY_LIMIT),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => return too_large(),
        Err(_) => return ApiError::RequestTimeout.into_response(),
    };
    let Some((key, replays, signed)) = signed else {
        let claimed = parts
            .headers
            .get(FROM_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| uuid::Uuid::try_parse(text).ok());
        let mut request = Request::from_parts(parts, Body::from(body));
        request.extensions_mut().insert(Sender(claimed));
        return next.run(request).await;
    };
    let path = parts.uri.path_and_query().map_or(parts.uri.path(), |p| p.as_str());
    let verified = key
        .check_mac(&signed, parts.method.as_str(), path, &body)
        .and_then(|()| replays.accept(&signed, state.cluster.now_ms()));
    if let Err(error) = verified {
        return refuse(&state, parts.uri.path(), &error);
    }
    let mut request = Request::from_parts(parts, Body::from(body));
    request.extensions_mut().insert(Sender(Some(signed.from)));
    let (mut parts, body) = next.run(request).await.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::Internal("could not read our own reply".into()).into_response();
    };
    let signature = key.sign_reply(&signed.mac, parts.status.as_u16(), &body);
    let value = HeaderValue::from_str(&signature).expect("hex is a valid header value");
    parts.headers.insert(REPLY_SIGNATURE_HEADER, value);
    Response::from_parts(parts, Body::from(body))
}

fn too_large() -> Response {
    ApiError::PayloadTooLarge(format!("peer bodies are limited to {INTERNAL_BODY_LIMIT} bytes"))
        .into_response()
}

/// 401 for a peer request that failed authentication, logged (throttled) with why.
fn refuse(state: &AppState, path: &str, error: &crate::auth::AuthError) -> Response {
    state.warnings.warn(
        "peer-auth",
        |held_back| tracing::warn!(%path, %error, held_back, "refused a peer request"),
    );
    ApiError::Unauthorized.into_response()
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

/// Fresh writes a peer pushed, each with the span of the ring it is passed on to
/// (`sync::spread`): those new here are passed on.
pub async fn spread(State(state): State<AppState>, body: Bytes) -> Result<StatusCode, ApiError> {
    receiver::pushed(&state.services.replica, body.to_vec()).await?;
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

/// What this node holds now, for a peer's `GET /admin/v1/cluster`.
pub async fn status(State(state): State<AppState>) -> Response {
    let mut response = axum::Json(super::health::local_status(&state)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub async fn gossip(
    State(state): State<AppState>,
    Extension(sender): Extension<Sender>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let remote: Vec<crate::cluster::Member> =
        serde_json::from_slice(&body).map_err(|e| bad_peer_body("member list", e))?;
    if remote.len() > MAX_MEMBERS {
        return Err(bad_peer_body("member list", format!("more than {MAX_MEMBERS} members")));
    }
    let ours = state.cluster.on_gossip(remote, sender.0);
    // A node joining through us: we are in a cluster from now, not a gossip round later.
    state.services.readiness.leave_standalone_if(!state.cluster.alive_peers().is_empty());
    let reply = serde_json::to_vec(&ours).map_err(|error| ApiError::Internal(error.to_string()))?;
    state.cluster.count_answered(body.len(), reply.len());
    let mut response =
        ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], reply)
            .into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// One SWIM packet for the membership task (`gossip::swim_loop`), answered at once with
/// 202: SWIM's replies travel as packets of their own. A packet the task has no room
/// for is dropped and answered 429 (SWIM tolerates loss).
pub async fn swim(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    if body.len() > crate::cluster::swim::MAX_PACKET_BYTES {
        return Err(bad_peer_body(
            "membership packet",
            format!("over {} bytes", crate::cluster::swim::MAX_PACKET_BYTES),
        ));
    }
    state.cluster.count_answered(body.len(), 0);
    if !state.cluster.swim_packet(body.to_vec()) {
        return Err(ApiError::TooManyRequests {
            retry_after_secs: 1,
            limit: crate::cluster::SWIM_INBOX as u32,
        });
    }
    Ok(StatusCode::ACCEPTED.into_response())
}
