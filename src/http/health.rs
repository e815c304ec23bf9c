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
    /// Whether the store can make writes durable (a full disk or failing I/O says no).
    pub storage: Storage,
    /// What became of local writes pushed to peers since start.
    pub push: Push,
}

/// Push-on-write counters: records sent, failed or dropped are all counted; failed and
/// dropped ones reach peers by anti-entropy.
#[derive(Debug, Serialize, ToSchema)]
pub struct Push {
    /// Records delivered (once per peer).
    pub sent_records: u64,
    /// Push requests that succeeded.
    pub sent_requests: u64,
    /// Records in pushes that failed (a peer down or slow).
    pub failed_records: u64,
    /// Records not queued because a queue was full.
    pub dropped_records: u64,
    /// Records peers pushed that were new here and were passed on (only in a cluster
    /// larger than `push_fanout`).
    pub relayed_records: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Storage {
    /// False while the disk is full or failing: writes answer 507 or 503.
    pub writable: bool,
    /// `disk_full` or `io`, while not writable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<&'static str>,
    /// The error that began the fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the fault began (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// False only in the moment between a fault and the store reopening on durable data.
    pub reads_durable: bool,
    /// Whether the reserve file (given back when the disk fills) is in place.
    pub reserve_held: bool,
}

impl From<crate::store::StorageStatus> for Storage {
    fn from(status: crate::store::StorageStatus) -> Self {
        Storage {
            writable: status.writable,
            fault: status.fault.map(|kind| kind.as_str()),
            reason: status.reason,
            since: status.since_ms.map(rfc3339),
            reads_durable: status.reads_durable,
            reserve_held: status.reserve_held,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Security {
    /// How peer routes are guarded: `signed` (cluster key), `open` (no key: loopback
    /// or `cluster.insecure`) or `closed` (no key beyond loopback).
    pub peer_auth: &'static str,
    /// TLS on this port.
    pub tls: bool,
    /// Peers must present a certificate signed by `tls.ca` (`tls.peer_auth: mtls`).
    pub peer_mtls: bool,
    /// Client tokens required on the public API (`auth.public_key`).
    pub client_auth: bool,
    /// Per-client rate limit, requests per second (absent: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<u32>,
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
    let storage = state.services.storage();
    let ready = readiness.ready && storage.writable;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let reason = match (readiness.ready, storage.writable) {
        (false, _) => Some(readiness.reason.to_string()),
        (true, false) => Some(format!(
            "storage is not writable ({}): {}",
            storage.fault.map_or("io", |kind| kind.as_str()),
            storage.reason.unwrap_or_default()
        )),
        (true, true) => None,
    };
    (status, Json(Ready { ready, reason })).into_response()
}

/// What this node tells a peer's `GET /admin/v1/cluster` about itself.
pub fn local_status(state: &AppState) -> crate::transport::NodeStatus {
    let readiness = state.services.readiness.current();
    let data = state.services.status();
    crate::transport::NodeStatus {
        node_id: state.node.id.to_string(),
        node_name: state.node.name.clone(),
        ready: readiness.ready && data.storage.writable,
        todos: data.counts.todos,
        records: data.counts.todos + data.counts.docs,
        merkle_root: merkle::hex(&data.merkle_root),
        writes_total: state.metrics.writes(),
        last_sync_ms: state.cluster.last_sync().into_values().max(),
        now_ms: state.cluster.now_ms(),
    }
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
        ready: readiness.ready && data.storage.writable,
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
            tls: state.tls,
            peer_mtls: state.access.peer_cert_required,
            client_auth: state.access.verifier.is_some(),
            rate_limit_per_second: state.access.limiter.as_ref().map(|l| l.per_second),
        },
        storage: data.storage.into(),
        push: {
            use crate::service::PushStats;
            let stats = &state.services.pushes;
            Push {
                sent_records: PushStats::get(&stats.sent_records),
                sent_requests: PushStats::get(&stats.sent_requests),
                failed_records: PushStats::get(&stats.failed_records),
                dropped_records: PushStats::get(&stats.dropped_records),
                relayed_records: PushStats::get(&stats.relayed_records),
            }
        },
    })
}
