//! `GET /metrics` (needs `metrics:*` with tokens on) and the layer that counts every
//! answered request by its route template.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::cluster::MemberState;
use crate::metrics::{PeerFigures, Snapshot};
use crate::service::PushStats;

/// Counts the request under its matched route (`/todos/{id}`, never the raw path);
/// requests no route matched count as `unmatched`.
pub async fn count(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.request(&route, &method, response.status().as_u16(), started.elapsed());
    response
}

/// The Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format (names kvs_*)", body = String, content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let data = state.services.status();
    let members = state.cluster.members();
    let count = |wanted: MemberState| members.iter().filter(|m| m.state == wanted).count() as u64;
    let now = state.cluster.now_ms();
    let last_sync = state.cluster.last_sync();
    let peers = state
        .driver
        .stats()
        .into_iter()
        .map(|(id, rounds)| PeerFigures {
            name: rounds.name,
            rounds_ok: rounds.ok,
            rounds_failed: rounds.failed,
            requests: rounds.requests,
            record_bytes: rounds.record_bytes,
            pulled: rounds.pulled,
            pushed: rounds.pushed,
            refused: rounds.refused,
            root_equal: rounds.root_equal,
            since_last_sync: last_sync.get(&id).map(|at| now.saturating_sub(*at) as f64 / 1000.0),
        })
        .collect();
    let pushes = &state.services.pushes;
    let snapshot = Snapshot {
        todos: data.counts.todos,
        documents: data.counts.docs,
        ready: state.services.readiness.current().ready,
        storage_writable: data.storage.writable,
        members: [MemberState::Alive, MemberState::Suspect, MemberState::Dead, MemberState::Left]
            .into_iter()
            .map(|s| (s.as_str(), count(s)))
            .collect(),
        push_sent_records: PushStats::get(&pushes.sent_records),
        push_sent_requests: PushStats::get(&pushes.sent_requests),
        push_failed_records: PushStats::get(&pushes.failed_records),
        push_dropped_records: PushStats::get(&pushes.dropped_records),
        push_relayed_records: PushStats::get(&pushes.relayed_records),
        skewed_timestamps: data.refused_timestamps,
        membership_bytes: state.cluster.answered_bytes(),
        peers,
    };
    let text = state.metrics.render(&snapshot);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response()
}
