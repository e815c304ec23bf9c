//! `/health/*`: liveness, readiness and what this node knows of itself and its peers.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{rfc3339, AppState};
use crate::merkle;

#[derive(Debug, Serialize, ToSchema)]
pub struct Live {
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
    /// Why the node is not ready yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Member {
    pub id: String,
    pub name: String,
    pub addr: String,
    /// alive, suspect, dead or left
    pub state: &'static str,
    /// RFC 3339
    pub joined_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Info {
    pub node_id: String,
    pub node_name: String,
    pub ready: bool,
    /// standalone or cluster
    pub cluster_mode: &'static str,
    /// Hex of the Merkle root over every record (tombstones included).
    pub merkle_root: String,
    /// Live todos.
    pub todo_count: u64,
    /// Live records of every collection (tombstones not counted).
    pub key_count: u64,
    pub members: Vec<Member>,
    /// Peer id → time of the last successful sync with it (RFC 3339).
    pub last_sync: BTreeMap<String, String>,
    /// Remote timestamps refused as further ahead than `max_clock_skew` (their records
    /// wait for a later round).
    pub skewed_timestamps: u64,
    /// How far ahead of this node's clock (ms) the furthest refused timestamp was; a
    /// large value with many refusals means this node's clock is behind its peers'.
    pub furthest_refused_ahead_ms: u64,
    /// Which protections are on (never a secret).
    pub security: Security,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Security {
    /// How peer routes are guarded: `signed` (cluster key), `open` (no key: loopback
    /// or `cluster.insecure`) or `closed` (no key beyond loopback).
    pub peer_auth: &'static str,
    /// TLS on this port (not built yet: always false).
    pub tls: bool,
    /// Client tokens required on the public API (not built yet: always false).
    pub client_auth: bool,
}

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "Alive", body = Live)))]
pub async fn live() -> Json<Live> {
    Json(Live { status: "ok" })
}

/// The node has joined and finished its first sync.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Not ready yet", body = Ready),
    ))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let readiness = state.services.readiness.current();
    let status = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let reason = (!readiness.ready).then_some(readiness.reason);
    (status, Json(Ready { ready: readiness.ready, reason })).into_response()
}

/// What this node holds and whom it knows.
#[utoipa::path(get, path = "/health/info", tag = "health",
    responses((status = 200, description = "Node information", body = Info)))]
pub async fn info(State(state): State<AppState>) -> Json<Info> {
    let readiness = state.services.readiness.current();
    let data = state.services.status();
    let node = &state.node;
    let members = state
        .cluster
        .members()
        .into_iter()
        .map(|member| Member {
            id: member.id.hyphenated().to_string(),
            name: member.name,
            addr: member.addr,
            state: member.state.as_str(),
            joined_at: rfc3339(member.joined_at),
        })
        .collect();
    let last_sync = state
        .cluster
        .last_sync()
        .into_iter()
        .map(|(peer, ms)| (peer.hyphenated().to_string(), rfc3339(ms)))
        .collect();
    Json(Info {
        node_id: node.id.to_string(),
        node_name: node.name.clone(),
        ready: readiness.ready,
        cluster_mode: if readiness.standalone { "standalone" } else { "cluster" },
        merkle_root: merkle::hex(&data.merkle_root),
        todo_count: data.counts.todos,
        key_count: data.counts.todos + data.counts.docs,
        members,
        last_sync,
        skewed_timestamps: data.refused_timestamps,
        furthest_refused_ahead_ms: data.furthest_refused_ms,
        security: Security {
            peer_auth: state.peer_auth.describe(),
            tls: false,
            client_auth: false,
        },
    })
}
