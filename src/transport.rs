//! The peer protocol as a trait: what one node can ask another. The anti-entropy driver,
//! the push loop and gossip talk to peers only through [`Peer`]; `peer::PeerClient`
//! implements it over HTTP (reqwest), `sync::faults` wraps any transport with injected
//! faults for tests, and the simulation delivers calls in memory. So this module knows
//! neither HTTP nor sockets.

use crate::cluster::Member;
use crate::model::{Key, Record};
use crate::wire::{
    Digest, NodesRequest, Pushed, ReconcileReply, ReconcileRequest, RootReply, RootRequest,
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    #[error("peer {addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("peer {addr} did not answer within {ms} ms")]
    Timeout { addr: String, ms: u64 },
    /// The peer refused the request; `body` is its problem detail (for our log only).
    #[error("peer {addr} answered {status}")]
    Status { addr: String, status: u16, body: String },
    #[error("peer {addr} sent a bad body: {reason}")]
    Wire { addr: String, reason: String },
    /// The peer's answer broke a protocol rule (a claim our clock or limits refuse).
    #[error("peer {addr} broke the protocol: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("link to {0} is cut (test fault)")]
    Cut(String),
}

/// One node's view of the others: every call names the peer by its advertised address.
#[async_trait::async_trait]
pub trait Peer: Send + Sync + 'static {
    async fn root(&self, addr: &str, request: &RootRequest) -> Result<RootReply, PeerError>;

    /// The digests of the requested Merkle nodes' descendants, in request order.
    async fn descendants(
        &self,
        addr: &str,
        request: &NodesRequest,
    ) -> Result<Vec<Digest>, PeerError>;

    async fn reconcile(
        &self,
        addr: &str,
        request: &ReconcileRequest,
    ) -> Result<ReconcileReply, PeerError>;

    /// Sends records to be merged; returns the bytes of the batch sent.
    async fn push(&self, addr: &str, records: &[(Key, Record)]) -> Result<usize, PeerError>;

    /// Sends fresh writes (push on write): merged like [`Peer::push`], and the peer
    /// passes on those new to it within their span (`sync::spread`). A transport
    /// without the distinction sends a push, which is not passed on.
    async fn push_writes(&self, addr: &str, writes: &[Pushed]) -> Result<usize, PeerError> {
        let records: Vec<(Key, Record)> =
            writes.iter().map(|(key, record, _)| (key.clone(), record.clone())).collect();
        self.push(addr, &records).await
    }

    /// Sends our member list, returns theirs.
    async fn gossip(&self, addr: &str, members: &[Member]) -> Result<Vec<Member>, PeerError>;

    /// Delivers one SWIM packet (best effort, no answer: replies come as packets). A
    /// transport that does not carry them (the sync simulation) says the peer is
    /// unreachable, and membership there runs on heartbeats alone.
    async fn swim(&self, addr: &str, packet: Vec<u8>) -> Result<(), PeerError> {
        drop(packet);
        Err(PeerError::Unreachable {
            addr: addr.to_owned(),
            reason: "this transport carries no SWIM packets".into(),
        })
    }

    /// What the peer holds now (for the operators' cluster view, not for sync). A
    /// transport that does not carry it (the simulation) says the peer is unreachable.
    async fn status(&self, addr: &str) -> Result<NodeStatus, PeerError> {
        Err(PeerError::Unreachable {
            addr: addr.to_owned(),
            reason: "this transport carries no status requests".into(),
        })
    }
}

/// One node's answer to `POST /internal/v1/status`: what `GET /admin/v1/cluster` shows
/// of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub node_name: String,
    pub ready: bool,
    pub todos: u64,
    /// Live todos and documents.
    pub records: u64,
    /// Hex of the Merkle root over every record (tombstones included).
    pub merkle_root: String,
    /// Client writes this node has accepted since it started (a rate comes from two reads).
    pub writes_total: u64,
    /// When this node last completed an anti-entropy round with any peer (ms since the epoch).
    pub last_sync_ms: Option<u64>,
    /// This node's clock when it answered (ms since the epoch).
    pub now_ms: u64,
}
