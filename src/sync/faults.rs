//! A transport that injects faults, for tests: cut links fail at once (a refused
//! connection), black-holed ones hang until the caller's deadline would fire (a peer
//! that silently drops packets). Production code never builds one; it wraps any
//! [`Peer`] so tests keep the real transport underneath.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::cluster::Member;
use crate::model::{Key, Record};
use crate::transport::{Peer, PeerError};
use crate::wire::{
    Digest, NodesRequest, Pushed, ReconcileReply, ReconcileRequest, RootReply, RootRequest,
};

/// How long a black-holed call hangs before it fails as a timeout would.
pub const BLACK_HOLE: Duration = Duration::from_secs(2);

/// Links a test has cut or black-holed (by peer address). A cheap-clone handle.
#[derive(Clone, Default)]
pub struct Faults {
    cut: Arc<RwLock<HashSet<String>>>,
    black_holed: Arc<RwLock<HashSet<String>>>,
}

impl Faults {
    pub fn cut(&self, addr: &str) {
        self.cut.write().unwrap_or_else(|e| e.into_inner()).insert(addr.to_owned());
    }

    pub fn black_hole(&self, addr: &str) {
        self.black_holed.write().unwrap_or_else(|e| e.into_inner()).insert(addr.to_owned());
    }

    pub fn heal(&self) {
        self.cut.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.black_holed.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    async fn check(&self, addr: &str) -> Result<(), PeerError> {
        if self.cut.read().unwrap_or_else(|e| e.into_inner()).contains(addr) {
            return Err(PeerError::Cut(addr.to_owned()));
        }
        let silent = self.black_holed.read().unwrap_or_else(|e| e.into_inner()).contains(addr);
        if silent {
            tokio::time::sleep(BLACK_HOLE).await;
            return Err(PeerError::Timeout {
                addr: addr.to_owned(),
                ms: BLACK_HOLE.as_millis() as u64,
            });
        }
        Ok(())
    }
}

/// `inner` with `faults` applied to every call.
pub struct FaultyPeer {
    pub inner: Arc<dyn Peer>,
    pub faults: Faults,
}

#[async_trait::async_trait]
impl Peer for FaultyPeer {
    async fn root(&self, addr: &str, request: &RootRequest) -> Result<RootReply, PeerError> {
        self.faults.check(addr).await?;
        self.inner.root(addr, request).await
    }

    async fn descendants(
        &self,
        addr: &str,
        request: &NodesRequest,
    ) -> Result<Vec<Digest>, PeerError> {
        self.faults.check(addr).await?;
        self.inner.descendants(addr, request).await
    }

    async fn reconcile(
        &self,
        addr: &str,
        request: &ReconcileRequest,
    ) -> Result<ReconcileReply, PeerError> {
        self.faults.check(addr).await?;
        self.inner.reconcile(addr, request).await
    }

    async fn push(&self, addr: &str, records: &[(Key, Record)]) -> Result<usize, PeerError> {
        self.faults.check(addr).await?;
        self.inner.push(addr, records).await
    }

    async fn push_writes(&self, addr: &str, writes: &[Pushed]) -> Result<usize, PeerError> {
        self.faults.check(addr).await?;
        self.inner.push_writes(addr, writes).await
    }

    async fn gossip(&self, addr: &str, members: &[Member]) -> Result<Vec<Member>, PeerError> {
        self.faults.check(addr).await?;
        self.inner.gossip(addr, members).await
    }

    async fn swim(&self, addr: &str, packet: Vec<u8>) -> Result<(), PeerError> {
        self.faults.check(addr).await?;
        self.inner.swim(addr, packet).await
    }

    async fn status(&self, addr: &str) -> Result<crate::transport::NodeStatus, PeerError> {
        self.faults.check(addr).await?;
        self.inner.status(addr).await
    }
}
