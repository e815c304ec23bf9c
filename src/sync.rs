//! Anti-entropy (the convergence guarantee) and push-on-write (the fast path).
//!
//! One round with a peer: compare roots (one request); if they differ, walk down the
//! differing subtrees one level per request, all differing nodes of a level at once;
//! then, for the differing leaf segments (in chunks, so memory stays bounded), pull the
//! peer's records and merge them, and push back ours that the peer lacks or that win.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::merkle::{DEPTH, FANOUT};
use crate::model::{Key, Record};
use crate::peer::{PeerClient, PeerError};
use crate::service::{ReplicaService, ServiceError};
use crate::wire::NodesRequest;

/// Pushes under way at once, over all peers.
pub const MAX_PUSHES_IN_FLIGHT: usize = 256;

/// Leaf segments fetched per request: ~15,000 records at 1,000,000 keys.
pub const SEGMENTS_PER_REQUEST: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("merging the peer's records failed: {0}")]
    Merge(#[from] ServiceError),
    #[error("reading our records failed: {0}")]
    Read(#[from] tokio::task::JoinError),
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundReport {
    pub requests: usize,
    pub differing_segments: usize,
    pub pulled: usize,
    pub pushed: usize,
}

/// One anti-entropy round with the peer at `addr`.
pub async fn sync_round(
    peer: &PeerClient,
    replica: &ReplicaService,
    addr: &str,
) -> Result<RoundReport, SyncError> {
    let mut report = RoundReport::default();
    let theirs = peer.root(addr).await?;
    report.requests += 1;
    if theirs == replica.root() {
        return Ok(report);
    }
    let mut differing: Vec<u32> = vec![0];
    for level in 0..DEPTH as u8 {
        let request = NodesRequest { level, indices: differing };
        let theirs = peer.children(addr, &request).await?;
        report.requests += 1;
        let ours = replica.children(&request);
        differing = Vec::new();
        for (position, index) in request.indices.iter().enumerate() {
            for child in 0..FANOUT {
                let at = position * FANOUT + child;
                if theirs.get(at) != ours.get(at) {
                    differing.push(index * FANOUT as u32 + child as u32);
                }
            }
        }
        if differing.is_empty() {
            return Ok(report);
        }
    }
    let segments: Vec<u16> = differing.into_iter().map(|segment| segment as u16).collect();
    report.differing_segments = segments.len();
    for chunk in segments.chunks(SEGMENTS_PER_REQUEST) {
        let theirs = peer.records_in(addr, chunk).await?;
        report.requests += 1;
        let replica_for_read = replica.clone();
        let chunk_owned = chunk.to_vec();
        let ours = tokio::task::spawn_blocking(move || replica_for_read.records_in(&chunk_owned))
            .await??;
        let to_push = newer_than(&ours, &theirs);
        report.pulled += theirs.len();
        replica.merge(theirs).await?;
        if !to_push.is_empty() {
            report.pushed += to_push.len();
            peer.push(addr, &to_push).await?;
            report.requests += 1;
        }
    }
    Ok(report)
}

/// Our records the peer lacks or holds an older version of.
fn newer_than(ours: &[(Key, Record)], theirs: &[(Key, Record)]) -> Vec<(Key, Record)> {
    let theirs: HashMap<&Key, &Record> = theirs.iter().map(|(key, record)| (key, record)).collect();
    ours.iter()
        .filter(|(key, record)| theirs.get(key).is_none_or(|their| record.supersedes(their)))
        .cloned()
        .collect()
}

/// Every `interval` (±25 % jitter), one round with a random alive peer.
pub async fn anti_entropy_loop(
    cluster: Cluster,
    peer: PeerClient,
    replica: ReplicaService,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        let jitter = rand::random_range(0.75..1.25);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval.mul_f64(jitter)) => {}
        }
        let Some(member) = cluster.random_alive_peer() else { continue };
        match sync_round(&peer, &replica, &member.addr).await {
            Ok(report) => {
                cluster.record_sync(member.id);
                if let Err(error) = replica.note_contact() {
                    tracing::warn!(%error, "could not record the sync time");
                }
                if report.differing_segments > 0 {
                    tracing::debug!(peer = %member.addr, ?report, "anti-entropy repaired differences");
                }
            }
            Err(error) => tracing::debug!(peer = %member.addr, %error, "anti-entropy round failed"),
        }
    }
}

/// Sends committed local writes to every alive peer at once, in small batches.
pub async fn push_loop(
    cluster: Cluster,
    peer: PeerClient,
    mut outbox: mpsc::Receiver<(Key, Record)>,
    stop: CancellationToken,
) {
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_PUSHES_IN_FLIGHT));
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            next = outbox.recv() => match next { Some(item) => item, None => return },
        };
        let mut batch = vec![first];
        while batch.len() < 256 {
            match outbox.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let batch = std::sync::Arc::new(batch);
        for member in cluster.alive_peers() {
            // A slow peer must not pile up pushes: past the bound, the batch is left to
            // anti-entropy.
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                tracing::debug!(peer = %member.addr, "too many pushes in flight; anti-entropy will carry this batch");
                continue;
            };
            let (peer, batch) = (peer.clone(), batch.clone());
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(error) = peer.push(&member.addr, &batch).await {
                    tracing::debug!(peer = %member.addr, %error, "push failed; anti-entropy will repair");
                }
            });
        }
    }
}
