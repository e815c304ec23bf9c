//! `/admin/v1/`: operations on the cluster (need `admin:*`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::JsonBody;
use super::problem::{ApiError, Problem};
use super::AppState;
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
