//! Who runs anti-entropy rounds, and when.
//!
//! - at most one round per peer at a time (a per-peer async mutex);
//! - rounds with different peers run in parallel, at most [`PARALLEL_ROUNDS`] at once,
//!   so a silent peer delays only its own rounds (its calls end at their deadlines);
//! - a rebase round excludes every other round (a read-write lock: ordinary rounds read,
//!   a rebase writes), so nothing merges while a rebase drops records;
//! - every round goes through [`Driver::round_with`]: the loop below, the join's first
//!   round and the operator's `POST /internal/v1/sync?peer=` alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::{RwLock, Semaphore};
use tokio_util::sync::CancellationToken;

use super::round::{sync_round, RoundReport};
use super::SyncError;
use crate::cluster::{Cluster, Member};
use crate::service::{Phase, ReplicaService};
use crate::transport::Peer;
use crate::wire;

/// Peers one node syncs with per interval.
pub const SYNC_FANOUT: usize = 8;

/// Rounds under way at once, over all peers.
pub const PARALLEL_ROUNDS: usize = 4;

#[derive(Clone)]
pub struct Driver {
    inner: Arc<Inner>,
}

struct Inner {
    peer: Arc<dyn Peer>,
    replica: ReplicaService,
    cluster: Cluster,
    per_peer: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    exclusive: RwLock<()>,
    parallel: Semaphore,
    rng: Mutex<StdRng>,
    stats: Mutex<HashMap<uuid::Uuid, PeerRounds>>,
}

/// Anti-entropy rounds with one peer since start.
#[derive(Debug, Clone, Default)]
pub struct PeerRounds {
    pub name: String,
    pub ok: u64,
    pub failed: u64,
    pub requests: u64,
    pub record_bytes: u64,
    pub pulled: u64,
    pub pushed: u64,
    pub refused: u64,
    /// Whether our Merkle root equalled the peer's when the last completed round began.
    pub root_equal: Option<bool>,
}

impl Driver {
    pub fn new(peer: Arc<dyn Peer>, replica: ReplicaService, cluster: Cluster) -> Self {
        Driver::seeded(peer, replica, cluster, rand::random())
    }

    /// A driver whose random choices (digest windows, peer order) follow `seed`.
    pub fn seeded(
        peer: Arc<dyn Peer>,
        replica: ReplicaService,
        cluster: Cluster,
        seed: u64,
    ) -> Self {
        Driver {
            inner: Arc::new(Inner {
                peer,
                replica,
                cluster,
                per_peer: Mutex::new(HashMap::new()),
                exclusive: RwLock::new(()),
                parallel: Semaphore::new(PARALLEL_ROUNDS),
                rng: Mutex::new(StdRng::seed_from_u64(seed)),
                stats: Mutex::default(),
            }),
        }
    }

    pub fn peer(&self) -> &Arc<dyn Peer> {
        &self.inner.peer
    }

    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    fn peer_lock(&self, addr: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.per_peer.lock().unwrap_or_else(PoisonError::into_inner);
        locks.entry(addr.to_owned()).or_default().clone()
    }

    fn window(&self) -> u8 {
        let mut rng = self.inner.rng.lock().unwrap_or_else(PoisonError::into_inner);
        rng.random_range(0..wire::WINDOWS)
    }

    /// Whether a round with `addr` is under way now.
    pub fn busy_with(&self, addr: &str) -> bool {
        self.peer_lock(addr).try_lock().is_err()
    }

    /// One round with a member, waiting for any round with it already under way. A
    /// completed round is recorded as contact, with the member and on disk (the purge
    /// rules read it). A peer whose horizon calls for a rebase gets the round re-run
    /// exclusively, with the node not serving meanwhile (persisted: a crash resumes it).
    pub async fn round_with(&self, member: &Member) -> Result<RoundReport, SyncError> {
        let result = self.round_inner(member).await;
        let mut stats = self.inner.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let peer = stats.entry(member.id).or_default();
        peer.name.clone_from(&member.name);
        match &result {
            Ok(report) => {
                peer.ok += 1;
                peer.requests += report.requests as u64;
                peer.record_bytes += report.record_bytes as u64;
                peer.pulled += report.pulled as u64;
                peer.pushed += report.pushed as u64;
                peer.refused += report.refused as u64;
                peer.root_equal = Some(report.differing_segments == 0);
            }
            Err(_) => peer.failed += 1,
        }
        result
    }

    /// What rounds with each peer have done since start (for `/metrics`).
    pub fn stats(&self) -> Vec<(uuid::Uuid, PeerRounds)> {
        let stats = self.inner.stats.lock().unwrap_or_else(PoisonError::into_inner);
        stats.iter().map(|(id, rounds)| (*id, rounds.clone())).collect()
    }

    async fn round_inner(&self, member: &Member) -> Result<RoundReport, SyncError> {
        let addr = member.addr.as_str();
        let lock = self.peer_lock(addr);
        let _one_per_peer = lock.lock().await;
        let _permit = self.inner.parallel.acquire().await.expect("the semaphore is never closed");
        let replica = &self.inner.replica;
        let window = self.window();
        // The phase mirrors `meta.rebasing`: set from it at start, and with it by
        // `begin_rebase`/`end_rebase`; no need to read the store every round.
        let pending = replica.readiness().phase() == Phase::Rebasing;
        let report = if pending {
            self.rebase_round(addr, window).await?
        } else {
            let shared = self.inner.exclusive.read().await;
            match sync_round(&*self.inner.peer, replica, addr, window, false).await {
                Err(SyncError::RebaseNeeded) => {
                    drop(shared);
                    tracing::warn!(peer = %addr, "the peer purged tombstones written after our last contact: rebasing on it");
                    replica.begin_rebase()?;
                    self.rebase_round(addr, window).await?
                }
                other => other?,
            }
        };
        self.inner.cluster.record_sync(member.id);
        if let Err(error) = replica.note_contact() {
            tracing::warn!(%error, "could not record the sync time");
        }
        Ok(report)
    }

    /// A round that runs alone, and ends the rebase when it completes.
    async fn rebase_round(&self, addr: &str, window: u8) -> Result<RoundReport, SyncError> {
        let _alone = self.inner.exclusive.write().await;
        let report = sync_round(&*self.inner.peer, &self.inner.replica, addr, window, true).await?;
        self.inner.replica.end_rebase()?;
        tracing::info!(peer = %addr, dropped = report.dropped, "rebase complete");
        Ok(report)
    }

    /// `POST /internal/v1/sync?peer=`: one round with the alive member at `addr`. Any
    /// other address is refused: the node never calls an address a client names.
    pub async fn sync_now(&self, addr: &str) -> Result<RoundReport, SyncError> {
        let member = self
            .inner
            .cluster
            .alive_peers()
            .into_iter()
            .find(|member| member.addr == addr)
            .ok_or_else(|| SyncError::NotAMember(addr.to_owned()))?;
        self.round_with(&member).await
    }

    /// Up to [`SYNC_FANOUT`] alive peers, shuffled by this driver's RNG.
    fn pick_peers(&self) -> Vec<Member> {
        let mut peers = self.inner.cluster.alive_peers();
        let mut rng = self.inner.rng.lock().unwrap_or_else(PoisonError::into_inner);
        peers.shuffle(&mut *rng);
        peers.truncate(SYNC_FANOUT);
        peers
    }
}

/// Every `interval` (±25 % jitter), starts a round with each of up to [`SYNC_FANOUT`]
/// alive peers (all of them in a small cluster) that has no round under way; rounds run
/// in parallel (bounded) and are not waited for, so one silent peer never holds back
/// the others or the next interval. An idle round is one request with a 48-byte answer.
pub async fn anti_entropy_loop(driver: Driver, interval: Duration, stop: CancellationToken) {
    let mut rounds = tokio::task::JoinSet::new();
    loop {
        let jitter = rand::random_range(0.75..1.25);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval.mul_f64(jitter)) => {}
        }
        while rounds.try_join_next().is_some() {}
        if !driver.inner.replica.writable() {
            continue; // a faulted store cannot merge; it recovers first (store::fault)
        }
        for member in driver.pick_peers() {
            if driver.busy_with(&member.addr) {
                continue;
            }
            let driver = driver.clone();
            rounds.spawn(async move {
                match driver.round_with(&member).await {
                    Ok(report) if report.differing_segments > 0 => {
                        tracing::debug!(peer = %member.addr, ?report, "anti-entropy repaired differences");
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(peer = %member.addr, %error, "anti-entropy round failed")
                    }
                }
            });
        }
    }
    rounds.shutdown().await;
}
