//! The HTTP client side of `/internal/` (the only user of reqwest): [`PeerClient`]
//! implements the [`Peer`] transport.
//!
//! Every call has a deadline that fits its work, so a peer that silently drops packets
//! costs a round with it at most a few seconds and never stalls other peers' rounds:
//! connecting takes at most [`CONNECT_TIMEOUT`]; small exchanges (root, Merkle nodes,
//! gossip) end after [`SMALL_TIMEOUT`]; bulk transfers (reconcile replies, record
//! batches) are bounded by progress: they fail once no byte has moved for
//! [`STALL_TIMEOUT`], however long the whole transfer takes.

use std::time::Duration;

use crate::cluster::Member;
use crate::model::{Key, Record};
use crate::transport::{Peer, PeerError};
use crate::wire::{
    self, Digest, NodesRequest, ReconcileReply, ReconcileRequest, RootReply, RootRequest,
};

pub const TOKEN_HEADER: &str = "x-kvs-cluster-token";

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const SMALL_TIMEOUT: Duration = Duration::from_secs(2);
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The token proving cluster membership: a keyed BLAKE3 of a fixed context, so the key
/// itself never travels. Compared in constant time by `blake3::Hash`'s `==`.
pub fn cluster_token(key: &[u8; 32]) -> blake3::Hash {
    blake3::keyed_hash(key, b"kvs internal api v1")
}

#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    token: Option<String>,
}

/// Whether a call moves a little or a lot of data (see the module doc).
#[derive(Clone, Copy)]
enum Size {
    Small,
    Bulk,
}

impl PeerClient {
    pub fn new(key: Option<&[u8; 32]>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(STALL_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("a client without TLS roots or proxies builds");
        PeerClient { http, token: key.map(|key| cluster_token(key).to_hex().to_string()) }
    }

    async fn call(
        &self,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        size: Size,
    ) -> Result<Vec<u8>, PeerError> {
        let url = format!("http://{addr}/internal/v1/{path}");
        let mut request =
            self.http.post(url).header("content-type", "application/octet-stream").body(body);
        if let Size::Small = size {
            request = request.timeout(SMALL_TIMEOUT);
        }
        if let Some(token) = &self.token {
            request = request.header(TOKEN_HEADER, token);
        }
        let failed = |error: reqwest::Error| {
            if error.is_timeout() {
                let ms = match size {
                    Size::Small => SMALL_TIMEOUT,
                    Size::Bulk => STALL_TIMEOUT,
                };
                PeerError::Timeout { addr: addr.to_owned(), ms: ms.as_millis() as u64 }
            } else {
                PeerError::Unreachable { addr: addr.to_owned(), reason: error.to_string() }
            }
        };
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(failed)?;
        if !status.is_success() {
            let body = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(PeerError::Status { addr: addr.to_owned(), status: status.as_u16(), body });
        }
        Ok(bytes.to_vec())
    }

    fn wire<T>(addr: &str, result: Result<T, wire::WireError>) -> Result<T, PeerError> {
        result.map_err(|error| PeerError::Wire { addr: addr.to_owned(), reason: error.to_string() })
    }
}

#[async_trait::async_trait]
impl Peer for PeerClient {
    async fn root(&self, addr: &str, request: &RootRequest) -> Result<RootReply, PeerError> {
        let body = self.call(addr, "root", request.encode(), Size::Small).await?;
        Self::wire(addr, RootReply::decode(&body))
    }

    async fn descendants(
        &self,
        addr: &str,
        request: &NodesRequest,
    ) -> Result<Vec<Digest>, PeerError> {
        let body = self.call(addr, "nodes", request.encode(), Size::Small).await?;
        Self::wire(addr, wire::decode_digests(&body, request.reply_len()))
    }

    async fn reconcile(
        &self,
        addr: &str,
        request: &ReconcileRequest,
    ) -> Result<ReconcileReply, PeerError> {
        let body = self.call(addr, "reconcile", request.encode(), Size::Bulk).await?;
        Self::wire(addr, ReconcileReply::decode(&body, request))
    }

    async fn push(&self, addr: &str, records: &[(Key, Record)]) -> Result<usize, PeerError> {
        let batch = wire::compress_batch(records);
        let bytes = batch.len();
        self.call(addr, "records", batch, Size::Bulk).await.map(|_| bytes)
    }

    async fn gossip(&self, addr: &str, members: &[Member]) -> Result<Vec<Member>, PeerError> {
        let body = serde_json::to_vec(members).expect("members serialize");
        let reply = self.call(addr, "gossip", body, Size::Small).await?;
        serde_json::from_slice(&reply).map_err(|error| PeerError::Wire {
            addr: addr.to_owned(),
            reason: format!("undecodable member list: {error}"),
        })
    }
}
