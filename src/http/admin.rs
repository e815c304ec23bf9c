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
#[schema(example = json!({"token_id": "5f0c2a4e-8d1b-4c55-9a39-0e6f7b1d2c3a"}))]
pub struct Revoke {
    /// The token's id (`jti`), as `kvs token issue` printed it.
    #[schema(pattern = "^[A-Za-z0-9-]{1,64}$")]
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
    let id = body.token_id.as_str();
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
    state.services.docs.put(&format!("{REVOKED_PREFIX}{id}"), document, None, None).await?;
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SyncQuery {
    /// The advertised address of one alive member; every alive peer when absent.
    pub peer: Option<String>,
}

/// One anti-entropy round the operator asked for.
#[derive(Debug, Serialize, ToSchema)]
pub struct SyncRound {
    pub peer_id: String,
    pub peer_name: String,
    pub peer_addr: String,
    pub ok: bool,
    /// Why the round failed (the node's log has the detail).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Segments of the key space whose digests differed at the start.
    pub differing_segments: usize,
    /// Records taken from the peer.
    pub pulled: usize,
    /// Records sent to the peer.
    pub pushed: usize,
    /// Records the peer sent that this node refused.
    pub refused: usize,
    pub requests: usize,
    pub record_bytes: usize,
    pub rebased: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SyncRounds {
    pub rounds: Vec<SyncRound>,
}

/// Run an anti-entropy round now with one alive peer, or with every alive peer in
/// parallel, and report what each did.
#[utoipa::path(post, path = "/admin/v1/sync", tag = "admin", params(SyncQuery),
    responses(
        (status = 200, description = "One entry per round (a failed round says why)", body = SyncRounds),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks admin:*", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`peer` is not an alive member's address", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn sync(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<SyncQuery>,
) -> Result<Json<SyncRounds>, ApiError> {
    let mut peers = state.cluster.alive_peers();
    if let Some(addr) = &query.peer {
        peers.retain(|member| &member.addr == addr);
        if peers.is_empty() {
            return Err(ApiError::NotFound(format!("no alive member has the address {addr:?}")));
        }
    }
    let mut rounds = tokio::task::JoinSet::new();
    for member in peers {
        let driver = state.driver.clone();
        rounds.spawn(async move {
            let result = driver.round_with(&member).await;
            (member, result)
        });
    }
    let mut report = Vec::new();
    while let Some(joined) = rounds.join_next().await {
        let (member, result) = joined.map_err(|error| ApiError::Internal(error.to_string()))?;
        let mut round = SyncRound {
            peer_id: member.id.to_string(),
            peer_name: member.name,
            peer_addr: member.addr,
            ok: result.is_ok(),
            error: None,
            differing_segments: 0,
            pulled: 0,
            pushed: 0,
            refused: 0,
            requests: 0,
            record_bytes: 0,
            rebased: false,
        };
        match result {
            Ok(done) => {
                round.differing_segments = done.differing_segments;
                round.pulled = done.pulled;
                round.pushed = done.pushed;
                round.refused = done.refused;
                round.requests = done.requests;
                round.record_bytes = done.record_bytes;
                round.rebased = done.rebased;
            }
            Err(error) => {
                tracing::warn!(peer = %round.peer_addr, %error, "operator's sync round failed");
                round.error = Some(error.to_string());
            }
        }
        report.push(round);
    }
    report.sort_by(|a, b| a.peer_name.cmp(&b.peer_name).then(a.peer_addr.cmp(&b.peer_addr)));
    Ok(Json(SyncRounds { rounds: report }))
}

/// One member as the cluster view shows it. The figures are the member's own answer;
/// they are absent when it was not asked (not alive) or did not answer (`error`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterMember {
    pub id: String,
    pub name: String,
    pub addr: String,
    /// `alive`, `suspect`, `dead` or `left`, as this node's membership sees it.
    pub state: &'static str,
    /// The node that answered this request.
    pub this_node: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub todos: Option<u64>,
    /// Live todos and documents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merkle_root: Option<String>,
    /// Client writes the member accepted since it started (two reads give writes/s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes_total: Option<u64>,
    /// The member's last completed anti-entropy round with any peer (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync_ms: Option<u64>,
    /// Why the member's figures are missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterView {
    pub node_id: String,
    /// This node's clock when it answered (ms since the epoch).
    pub now_ms: u64,
    /// Every alive member answered and all the answers carry the same Merkle root.
    pub roots_agree: bool,
    pub members: Vec<ClusterMember>,
}

/// Every member with its figures, asked of each alive peer now (what `/ui/` shows).
#[utoipa::path(get, path = "/admin/v1/cluster", tag = "admin",
    responses(
        (status = 200, description = "The cluster as this node sees it", body = ClusterView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks admin:*", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn cluster(State(state): State<AppState>) -> Json<ClusterView> {
    let me = super::health::local_status(&state);
    let alive: std::collections::HashSet<uuid::Uuid> =
        state.cluster.alive_peers().into_iter().map(|member| member.id).collect();
    let mut asks = tokio::task::JoinSet::new();
    // (id, asked, row): the rows of this node and the alive peers decide `roots_agree`.
    let mut members = Vec::new();
    for member in state.cluster.members() {
        let this_node = member.id == state.node.id.0;
        let mut row = ClusterMember {
            id: member.id.to_string(),
            name: member.name.clone(),
            addr: member.addr.clone(),
            state: member.state.as_str(),
            this_node,
            ready: None,
            todos: None,
            records: None,
            merkle_root: None,
            writes_total: None,
            last_sync_ms: None,
            error: None,
        };
        let asked = this_node || alive.contains(&member.id);
        if this_node {
            fill(&mut row, me.clone());
        } else if asked {
            let peer = state.driver.peer().clone();
            asks.spawn(async move { (member.id, peer.status(&member.addr).await) });
        }
        members.push((member.id, asked, row));
    }
    while let Some(Ok((id, answer))) = asks.join_next().await {
        let Some((_, _, row)) = members.iter_mut().find(|(member, _, _)| *member == id) else {
            continue;
        };
        match answer {
            Ok(status) if status.node_id == row.id => fill(row, status),
            Ok(status) => {
                row.error = Some(format!("answered as another node ({})", status.node_id));
            }
            Err(error) => row.error = Some(error.to_string()),
        }
    }
    let roots: Vec<&Option<String>> =
        members.iter().filter(|(_, asked, _)| *asked).map(|(_, _, row)| &row.merkle_root).collect();
    let roots_agree =
        roots.iter().all(|root| root.is_some()) && roots.windows(2).all(|pair| pair[0] == pair[1]);
    let mut members: Vec<ClusterMember> = members.into_iter().map(|(_, _, row)| row).collect();
    members.sort_by(|a, b| a.name.cmp(&b.name).then(a.addr.cmp(&b.addr)));
    Json(ClusterView { node_id: me.node_id, now_ms: me.now_ms, roots_agree, members })
}

fn fill(row: &mut ClusterMember, status: crate::transport::NodeStatus) {
    row.ready = Some(status.ready);
    row.todos = Some(status.todos);
    row.records = Some(status.records);
    row.merkle_root = Some(status.merkle_root);
    row.writes_total = Some(status.writes_total);
    row.last_sync_ms = status.last_sync_ms;
}
