//! `GET /metrics` in the Prometheus text format (the only user of prometheus-client).
//!
//! What is measured as it happens — requests and their latency, group flushes — lives in
//! [`Metrics`] for the node's life. What is a state — records, members, pushes, rounds per
//! peer, storage — is read at scrape time into a [`Snapshot`] by the HTTP layer and
//! rendered beside them, so a peer that is gone leaves no stale series behind. One
//! `Metrics` per node: nodes in one process (tests) keep separate figures.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::store::FlushObserver;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

/// The node's long-lived figures.
#[derive(Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    flush_seconds: Histogram,
    flush_applies: Histogram,
    /// Client writes answered with a success (what the dashboard turns into writes/s).
    writes: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
            }),
            flush_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            flush_applies: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            writes: Counter::default(),
        }
    }
}

impl Metrics {
    /// Counts one answered request; `route` is the matched route template (never the raw
    /// path, so keys and ids do not become series).
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        let data_route = route.starts_with("/todos") || route.starts_with("/kv");
        let write = matches!(method, "POST" | "PUT" | "PATCH" | "DELETE");
        if data_route && write && (200..300).contains(&status) {
            self.writes.inc();
        }
        let (route, method) = (route.to_owned(), method.to_owned());
        self.requests
            .get_or_create(&RequestLabels { route: route.clone(), method: method.clone(), status })
            .inc();
        self.latency.get_or_create(&RouteLabels { route, method }).observe(took.as_secs_f64());
    }

    /// Client writes answered with a success since start.
    pub fn writes(&self) -> u64 {
        self.writes.get()
    }

    /// The text exposition: the long-lived figures and `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut registry = Registry::with_prefix("kvs");
        registry.register(
            "http_requests",
            "Requests answered, by route template, method and status",
            self.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response, by route template and method",
            self.latency.clone(),
        );
        registry.register(
            "durable_flush_duration_seconds",
            "Group flushes (sled flush + fdatasync) that made writes durable",
            self.flush_seconds.clone(),
        );
        registry.register(
            "durable_flush_applies",
            "Writes made durable by one group flush",
            self.flush_applies.clone(),
        );
        registry.register(
            "client_writes",
            "Client writes (todos and documents) this node accepted",
            self.writes.clone(),
        );
        snapshot.register(&mut registry);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

impl FlushObserver for Metrics {
    fn flushed(&self, took: Duration, applies: u64) {
        self.flush_seconds.observe(took.as_secs_f64());
        self.flush_applies.observe(applies as f64);
    }
}

/// Anti-entropy with one peer since start.
#[derive(Debug, Clone, Default)]
pub struct PeerFigures {
    pub name: String,
    pub rounds_ok: u64,
    pub rounds_failed: u64,
    pub requests: u64,
    pub record_bytes: u64,
    pub pulled: u64,
    pub pushed: u64,
    pub refused: u64,
    /// Our root equalled the peer's when the last completed round began.
    pub root_equal: Option<bool>,
    /// Seconds since the last completed round, if there was one.
    pub since_last_sync: Option<f64>,
}

/// The node's state at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub todos: u64,
    pub documents: u64,
    pub ready: bool,
    pub storage_writable: bool,
    /// Members by state (alive, suspect, dead, left).
    pub members: Vec<(&'static str, u64)>,
    pub push_sent_records: u64,
    pub push_sent_requests: u64,
    pub push_failed_records: u64,
    pub push_dropped_records: u64,
    pub push_relayed_records: u64,
    pub skewed_timestamps: u64,
    /// (received, sent) bytes of the membership exchanges this node answered.
    pub membership_bytes: (u64, u64),
    pub peers: Vec<PeerFigures>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    peer: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionOnlyLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    peer: String,
    direction: &'static str,
}

impl Snapshot {
    fn register(&self, registry: &mut Registry) {
        let records: Family<KindLabels, Gauge> = Family::default();
        records.get_or_create(&KindLabels { kind: "todo" }).set(self.todos as i64);
        records.get_or_create(&KindLabels { kind: "document" }).set(self.documents as i64);
        registry.register("records", "Live records by kind (tombstones not counted)", records);
        registry.register(
            "ready",
            "1 when the node serves (joined and synced)",
            ConstGauge::new(i64::from(self.ready)),
        );
        registry.register(
            "storage_writable",
            "1 when the store accepts writes (0 on a full disk or failing I/O)",
            ConstGauge::new(i64::from(self.storage_writable)),
        );
        let members: Family<StateLabels, Gauge> = Family::default();
        for (state, count) in &self.members {
            members.get_or_create(&StateLabels { state }).set(*count as i64);
        }
        registry.register("members", "Members this node knows, by state", members);
        for (name, help, value) in [
            (
                "push_records_sent",
                "Local writes pushed to peers (per peer)",
                self.push_sent_records,
            ),
            ("push_requests_sent", "Push requests sent to peers", self.push_sent_requests),
            (
                "push_records_failed",
                "Pushed writes a peer did not take (left to anti-entropy)",
                self.push_failed_records,
            ),
            (
                "push_records_dropped",
                "Writes not pushed because a peer's queue was full (left to anti-entropy)",
                self.push_dropped_records,
            ),
            (
                "push_records_relayed",
                "Writes peers pushed that were new here and were passed on to this node's fan-out",
                self.push_relayed_records,
            ),
            (
                "clock_skew_refusals",
                "Remote timestamps refused as further ahead than max_clock_skew",
                self.skewed_timestamps,
            ),
        ] {
            registry.register(name, help, ConstCounter::new(value));
        }
        let membership: Family<DirectionOnlyLabels, Counter> = Family::default();
        let (received, sent) = self.membership_bytes;
        membership.get_or_create(&DirectionOnlyLabels { direction: "received" }).inc_by(received);
        membership.get_or_create(&DirectionOnlyLabels { direction: "sent" }).inc_by(sent);
        registry.register(
            "membership_bytes",
            "Bytes of the membership exchanges this node answered: requests received, replies sent",
            membership,
        );
        let rounds: Family<OutcomeLabels, Counter> = Family::default();
        let requests: Family<PeerLabels, Counter> = Family::default();
        let bytes: Family<PeerLabels, Counter> = Family::default();
        let repaired: Family<DirectionLabels, Counter> = Family::default();
        let refused: Family<PeerLabels, Counter> = Family::default();
        let since: Family<PeerLabels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
        let equal: Family<PeerLabels, Gauge> = Family::default();
        for peer in &self.peers {
            let label = PeerLabels { peer: peer.name.clone() };
            let outcome = |outcome| OutcomeLabels { peer: peer.name.clone(), outcome };
            rounds.get_or_create(&outcome("ok")).inc_by(peer.rounds_ok);
            rounds.get_or_create(&outcome("failed")).inc_by(peer.rounds_failed);
            requests.get_or_create(&label).inc_by(peer.requests);
            bytes.get_or_create(&label).inc_by(peer.record_bytes);
            let direction = |direction| DirectionLabels { peer: peer.name.clone(), direction };
            repaired.get_or_create(&direction("pulled")).inc_by(peer.pulled);
            repaired.get_or_create(&direction("pushed")).inc_by(peer.pushed);
            refused.get_or_create(&label).inc_by(peer.refused);
            if let Some(seconds) = peer.since_last_sync {
                since.get_or_create(&label).set(seconds);
            }
            if let Some(same) = peer.root_equal {
                equal.get_or_create(&label).set(i64::from(same));
            }
        }
        registry.register("sync_rounds", "Anti-entropy rounds by peer and outcome", rounds);
        registry.register("sync_requests", "Requests anti-entropy rounds made, by peer", requests);
        registry.register(
            "sync_record_bytes",
            "Compressed record bytes anti-entropy moved, by peer",
            bytes,
        );
        registry.register(
            "sync_repaired_records",
            "Records anti-entropy pulled from or pushed to a peer",
            repaired,
        );
        registry.register(
            "sync_refused_records",
            "Records a peer sent in a round that this node refused",
            refused,
        );
        registry.register(
            "seconds_since_last_sync",
            "Seconds since the last completed round with each peer",
            since,
        );
        registry.register(
            "root_equal",
            "1 when this node's Merkle root equalled the peer's at the last round",
            equal,
        );
    }
}

/// The shared handle the daemon gives the store (flushes) and the router (requests).
pub type SharedMetrics = Arc<Metrics>;
