//! The client side of `/internal/` (the only user of reqwest).
//!
//! Every request carries the cluster token when a key is configured. Tests can cut
//! links through [`Faults`], which lives here, in the transport, so no production code
//! path knows about it.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::cluster::Member;
use crate::model::{Key, Record};
use crate::wire::{
    self, Digest, NodesRequest, ReconcileReply, ReconcileRequest, RootReply, RootRequest, WireError,
};

pub const TOKEN_HEADER: &str = "x-kvs-cluster-token";

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {addr} unreachable: {source}")]
    Unreachable { addr: String, source: reqwest::Error },
    #[error("peer {addr} answered {status}: {body}")]
    Status { addr: String, status: u16, body: String },
    #[error("peer {addr} sent a bad body: {source}")]
    Wire { addr: String, source: WireError },
    #[error("link to {0} is cut (test fault)")]
    Cut(String),
}

/// The token proving cluster membership: a keyed BLAKE3 of a fixed context, so the key
/// itself never travels. Compared in constant time by `blake3::Hash`'s `==`.
pub fn cluster_token(key: &[u8; 32]) -> blake3::Hash {
    blake3::keyed_hash(key, b"kvs internal api v1")
}

/// Links a test has cut (by peer address). Empty in production.
#[derive(Clone, Default)]
pub struct Faults(Arc<RwLock<HashSet<String>>>);

impl Faults {
    pub fn cut(&self, addr: &str) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(addr.to_owned());
    }

    pub fn heal(&self) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn is_cut(&self, addr: &str) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).contains(addr)
    }
}

#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    token: Option<String>,
    faults: Faults,
}

impl PeerClient {
    pub fn new(key: Option<&[u8; 32]>, faults: Faults) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("a client without TLS roots or proxies builds");
        PeerClient { http, token: key.map(|key| cluster_token(key).to_hex().to_string()), faults }
    }

    async fn call(&self, addr: &str, path: &str, body: Vec<u8>) -> Result<Vec<u8>, PeerError> {
        if self.faults.is_cut(addr) {
            return Err(PeerError::Cut(addr.to_owned()));
        }
        let url = format!("http://{addr}/internal/v1/{path}");
        let mut request =
            self.http.post(url).header("content-type", "application/octet-stream").body(body);
        if let Some(token) = &self.token {
            request = request.header(TOKEN_HEADER, token);
        }
        let unreachable = |source| PeerError::Unreachable { addr: addr.to_owned(), source };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            let body = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(PeerError::Status { addr: addr.to_owned(), status: status.as_u16(), body });
        }
        Ok(bytes.to_vec())
    }

    fn wire<T>(addr: &str, result: Result<T, WireError>) -> Result<T, PeerError> {
        result.map_err(|source| PeerError::Wire { addr: addr.to_owned(), source })
    }

    pub async fn root(&self, addr: &str, request: &RootRequest) -> Result<RootReply, PeerError> {
        let body = self.call(addr, "root", request.encode()).await?;
        Self::wire(addr, RootReply::decode(&body))
    }

    pub async fn descendants(
        &self,
        addr: &str,
        request: &NodesRequest,
    ) -> Result<Vec<Digest>, PeerError> {
        let body = self.call(addr, "nodes", request.encode()).await?;
        Self::wire(addr, wire::decode_digests(&body, request.reply_len()))
    }

    pub async fn reconcile(
        &self,
        addr: &str,
        request: &ReconcileRequest,
    ) -> Result<ReconcileReply, PeerError> {
        let body = self.call(addr, "reconcile", request.encode()).await?;
        Self::wire(addr, ReconcileReply::decode(&body, request))
    }

    /// Sends records to be merged; returns the bytes of the batch sent.
    pub async fn push(&self, addr: &str, records: &[(Key, Record)]) -> Result<usize, PeerError> {
        let batch = wire::compress_batch(records);
        let bytes = batch.len();
        self.call(addr, "records", batch).await.map(|_| bytes)
    }

    /// Sends our member list, returns theirs.
    pub async fn gossip(&self, addr: &str, members: &[Member]) -> Result<Vec<Member>, PeerError> {
        let body = serde_json::to_vec(members).expect("members serialize");
        let reply = self.call(addr, "gossip", body).await?;
        serde_json::from_slice(&reply).map_err(|error| PeerError::Status {
            addr: addr.to_owned(),
            status: 200,
            body: format!("undecodable member list: {error}"),
        })
    }
}
