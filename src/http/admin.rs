//! `/admin/v1/`: operations on the cluster (need `admin:*`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::JsonBody;
use super::problem::{ApiError, Problem};
use super::AppState;
use crate::backup;
use crate::service::docs::REVOKED_PREFIX;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    /// The token's id (`jti`), as `kvs token issue` printed it.
    pub token_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Revoked {
    pub token_id: String,
    /// When this node recorded the revocation (ms since the epoch).
    pub revoked_at_ms: u64,
}

/// Revoke a client token on every node: a replicated record, pushed like any write.
#[utoipa::path(post, path = "/admin/v1/revoke", tag = "admin", request_body = Revoke,
    responses(
        (status = 200, description = "Revoked (every node refuses the token within the push latency)", body = Revoked),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks admin:*", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a token id", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<Revoke>,
) -> Result<(StatusCode, Json<Revoked>), ApiError> {
    let id = body.token_id.trim();
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ApiError::Validation {
            field: "token_id",
            message: "must be the token's id: 1 to 64 letters, digits or '-'".into(),
        });
    }
    let now = state.cluster.now_ms();
    let document = serde_json::to_vec(&serde_json::json!({ "revoked_at_ms": now }))
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    state.services.docs.put(&format!("{REVOKED_PREFIX}{id}"), document, None).await?;
    tracing::info!(token_id = id, "token revoked");
    Ok((StatusCode::OK, Json(Revoked { token_id: id.to_owned(), revoked_at_ms: now })))
}

/// Segments read per blocking step of a backup (65,536 in all).
const BACKUP_SEGMENTS_PER_STEP: u32 = 256;

/// Stream a backup of every record (tombstones included) while writes go on.
#[utoipa::path(get, path = "/admin/v1/backup", tag = "admin",
    responses(
        (status = 200, description = "A backup stream: a JSON header line, zstd record frames, a JSON trailer with the record count and Merkle root (see README)", content_type = "application/octet-stream"),
    ))]
pub async fn backup(State(state): State<AppState>) -> Response {
    let header = backup::Header {
        format: backup::FORMAT.into(),
        version: backup::VERSION,
        created_at_ms: state.cluster.now_ms(),
        node_id: state.node.id.to_string(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let replica = state.services.replica.clone();
    tokio::spawn(async move {
        if tx.send(Ok(backup::header_line(&header))).await.is_err() {
            return;
        }
        let mut root = backup::RootBuilder::default();
        for first in (0..65_536u32).step_by(BACKUP_SEGMENTS_PER_STEP as usize) {
            let segments: Vec<u16> =
                (first..first + BACKUP_SEGMENTS_PER_STEP).map(|s| s as u16).collect();
            let replica = replica.clone();
            let read = tokio::task::spawn_blocking(move || replica.records_by_segment(&segments));
            let records: Vec<_> = match read.await {
                Ok(Ok(by_segment)) => by_segment.into_iter().flatten().collect(),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "backup stopped: the store could not be read");
                    let _ = tx.send(Err(std::io::Error::other(error.to_string()))).await;
                    return;
                }
                Err(error) => {
                    let _ = tx.send(Err(std::io::Error::other(error.to_string()))).await;
                    return;
                }
            };
            let chunks = records.chunks(backup::FRAME_RECORDS).flat_map(crate::wire::batches);
            for chunk in chunks {
                for (key, record) in chunk {
                    root.add(key, record);
                }
                if tx.send(Ok(backup::frame(chunk))).await.is_err() {
                    return; // the client went away
                }
            }
        }
        let trailer = root.trailer();
        tracing::info!(records = trailer.records, root = %trailer.merkle_root, "backup streamed");
        let _ = tx.send(Ok(backup::end(&trailer))).await;
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    (
        [
            (axum::http::header::CONTENT_TYPE, "application/octet-stream"),
            (axum::http::header::CONTENT_DISPOSITION, "attachment; filename=\"kvs.backup\""),
        ],
        body,
    )
        .into_response()
}
