//! The HTTP client side of `/internal/` (the only user of reqwest): [`PeerClient`]
//! implements the [`Peer`] transport.
//!
//! Every call has a deadline that fits its work, so a peer that silently drops packets
//! costs a round with it at most a few seconds and never stalls other peers' rounds:
//! connecting takes at most [`CONNECT_TIMEOUT`]; small exchanges (root, Merkle nodes,
//! gossip) end after [`SMALL_TIMEOUT`]; bulk transfers (reconcile replies, record
//! batches) are bounded by progress: they fail once no byte has moved for
//! [`STALL_TIMEOUT`], however long the whole transfer takes.
//!
//! With a cluster key every request is signed and every reply's signature checked
//! (`auth.rs`); without one, requests name their sender only.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{ClusterKey, FROM_HEADER, REPLY_SIGNATURE_HEADER, SIGNATURE_HEADER};
use crate::clock::PhysicalClock;
use crate::cluster::Member;
use crate::model::{Key, Record};
use crate::transport::{NodeStatus, Peer, PeerError};
use crate::wire::{
    self, Digest, NodesRequest, Pushed, ReconcileReply, ReconcileRequest, RootReply, RootRequest,
};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const SMALL_TIMEOUT: Duration = Duration::from_secs(2);
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    /// `https` when the cluster runs TLS.
    scheme: &'static str,
    key: Option<ClusterKey>,
    /// This node's id: the sender every request names.
    me: uuid::Uuid,
    clock: Arc<dyn PhysicalClock>,
}

/// Whether a call moves a little or a lot of data (see the module doc).
#[derive(Clone, Copy)]
enum Size {
    Small,
    Bulk,
}

impl PeerClient {
    /// `tls`: `None` for plain HTTP; `Some(None)` for TLS trusting the system's roots;
    /// `Some(Some(config))` for TLS with the cluster's CA (and our certificate, under
    /// mutual TLS).
    pub fn new(
        key: Option<ClusterKey>,
        me: uuid::Uuid,
        clock: Arc<dyn PhysicalClock>,
        tls: Option<Option<crate::tls::ClientTls>>,
    ) -> Self {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(STALL_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(Some(config)) = &tls {
            builder = builder.use_preconfigured_tls(config.clone());
        }
        let http = builder.build().expect("a client without proxies builds");
        let scheme = if tls.is_some() { "https" } else { "http" };
        PeerClient { http, scheme, key, me, clock }
    }

    async fn call(
        &self,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        size: Size,
    ) -> Result<Vec<u8>, PeerError> {
        let path = format!("/internal/v1/{path}");
        let mut request = self
            .http
            .post(format!("{}://{addr}{path}", self.scheme))
            .header("content-type", "application/octet-stream")
            .header(FROM_HEADER, self.me.simple().to_string());
        if let Size::Small = size {
            request = request.timeout(SMALL_TIMEOUT);
        }
        let signed = self.key.as_ref().map(|key| {
            let (header, mac) =
                key.sign_request("POST", &path, &body, self.me, self.clock.now_ms());
            (key, header, mac)
        });
        if let Some((_, header, _)) = &signed {
            request = request.header(SIGNATURE_HEADER, header);
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
        let response = request.body(body).send().await.map_err(failed)?;
        let status = response.status();
        let reply_signature = response
            .headers()
            .get(REPLY_SIGNATURE_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let bytes = response.bytes().await.map_err(failed)?;
        if let Some((key, _, mac)) = &signed {
            // An unsigned error (a proxy, or a node refusing us before it can sign) is
            // still reported as that status; a success must be signed.
            let checked =
                key.verify_reply(mac, status.as_u16(), reply_signature.as_deref(), &bytes);
            if let (Err(error), true) = (checked, status.is_success()) {
                return Err(PeerError::Protocol {
                    addr: addr.to_owned(),
                    reason: format!("reply signature: {error}"),
                });
            }
        }
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

    async fn push_writes(&self, addr: &str, writes: &[Pushed]) -> Result<usize, PeerError> {
        let body = wire::compress_pushed(writes);
        let bytes = body.len();
        match self.call(addr, "spread", body, Size::Bulk).await {
            // A peer from before the spread (a rolling upgrade) merges them as records;
            // the rest of their span gets them by anti-entropy.
            Err(PeerError::Status { status: 404, .. }) => {
                let records: Vec<(Key, Record)> =
                    writes.iter().map(|(key, record, _)| (key.clone(), record.clone())).collect();
                self.push(addr, &records).await
            }
            answered => answered.map(|_| bytes),
        }
    }

    async fn gossip(&self, addr: &str, members: &[Member]) -> Result<Vec<Member>, PeerError> {
        let body = serde_json::to_vec(members).expect("members serialize");
        let reply = self.call(addr, "gossip", body, Size::Small).await?;
        serde_json::from_slice(&reply).map_err(|error| PeerError::Wire {
            addr: addr.to_owned(),
            reason: format!("undecodable member list: {error}"),
        })
    }

    async fn swim(&self, addr: &str, packet: Vec<u8>) -> Result<(), PeerError> {
        self.call(addr, "swim", packet, Size::Small).await.map(drop)
    }

    async fn status(&self, addr: &str) -> Result<NodeStatus, PeerError> {
        let reply = self.call(addr, "status", Vec::new(), Size::Small).await?;
        serde_json::from_slice(&reply).map_err(|error| PeerError::Wire {
            addr: addr.to_owned(),
            reason: format!("undecodable status: {error}"),
        })
    }
}
