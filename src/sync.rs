//! Anti-entropy (the convergence guarantee) and push-on-write (the fast path).
//!
//! One round with a peer:
//! 1. send our root (one request); the answer carries the peer's root, its purge horizon
//!    and last contact (see `service::SyncState`) and, when the roots differ, the 256
//!    digests of level 2, so the walk starts two levels down. Equal roots end the round;
//! 2. walk down the differing subtrees, all differing nodes of a level per request, as
//!    4-byte digests through a window picked at random for the round (see `wire`).
//!    Where differences are dense (≥ 3/4 of the last step's nodes differ) a request
//!    skips a level and asks for grandchildren: the bytes are about the same and a round
//!    trip is saved. The walk stops early once a differing subtree holds few records
//!    (≤ 16 on our side), since their fingerprints then cost less than another level of
//!    digests;
//! 3. reconcile the differing leaf segments: send the fingerprints of our records there,
//!    receive the peer's records we do not have (merged here) and the list of ours it
//!    does not have (pushed back). Only differing records cross, not whole leaves.

use std::collections::HashMap;
use std::time::Duration;

use rand::seq::SliceRandom;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, Member};
use crate::merkle::{Hash, DEPTH, FANOUT};
use crate::model::{Key, Record};
use crate::peer::{PeerClient, PeerError};
use crate::service::{fingerprint, ReplicaService, ServiceError, SyncState};
use crate::wire::{self, NodesRequest, ReconcileRequest, RootRequest};

/// Peers one node syncs with per interval.
pub const SYNC_FANOUT: usize = 8;

/// Pushes under way at once, over all peers.
pub const MAX_PUSHES_IN_FLIGHT: usize = 256;

/// A differing subtree holding at most this many of our records is reconciled at once
/// instead of being walked further (its fingerprints are no bigger than 16 digests).
pub const RECONCILE_BELOW_RECORDS: u64 = FANOUT as u64;

/// Fingerprints per reconcile request (1 MiB of them), and segments at most.
pub const FINGERPRINTS_PER_REQUEST: usize = 262_144;
pub const SEGMENTS_PER_REQUEST: usize = 16_384;

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RoundReport {
    pub requests: usize,
    pub differing_segments: usize,
    pub pulled: usize,
    pub pushed: usize,
    /// Bytes the pulled and pushed record batches took on the wire (compressed); the
    /// rest of a round's traffic is metadata and HTTP.
    pub record_bytes: usize,
    /// The peer had not synced since we purged tombstones: nothing was exchanged.
    pub skipped_stale_peer: bool,
    /// We had not synced since the peer purged tombstones: our copy was discarded and
    /// the round bootstrapped it afresh from the peer.
    pub rebased: bool,
}

/// One anti-entropy round with the peer at `addr`.
pub async fn sync_round(
    peer: &PeerClient,
    replica: &ReplicaService,
    addr: &str,
) -> Result<RoundReport, SyncError> {
    let mut report = RoundReport::default();
    let window = rand::random_range(0..wire::WINDOWS);
    let ask = RootRequest { window, root: replica.root() };
    let theirs = peer.root(addr, &ask).await?;
    report.requests += 1;
    let ours = replica.sync_state()?;
    let peer_state =
        SyncState { purge_horizon: theirs.purge_horizon, last_contact: theirs.last_contact };
    if peer_state.is_stale_against(&ours) {
        // The peer may hold data we deleted and purged: pull nothing from it. It will
        // discard its copy when it starts a round with a node as fresh as we are.
        report.skipped_stale_peer = true;
        return Ok(report);
    }
    let rebase = ours.is_stale_against(&peer_state);
    if rebase {
        let discarding = replica.clone();
        tokio::task::spawn_blocking(move || discarding.rebase()).await??;
        report.rebased = true;
    }
    if theirs.root != replica.root() {
        // The reply carries level 2 when our roots differed as sent; after a rebase our
        // root changed since, so the walk starts at the root instead.
        let start = if theirs.top.is_empty() || rebase {
            Walk { level: 0, differing: vec![0], dense: true }
        } else {
            let top = NodesRequest { window, level: 0, depth: wire::TOP_LEVEL, indices: vec![0] };
            let differing = differing_below(&top, &replica.descendants(&top), &theirs.top);
            let dense = differing.len() * 4 >= wire::TOP_WIDTH * 3;
            Walk { level: usize::from(wire::TOP_LEVEL), differing, dense }
        };
        let segments = differing_segments(peer, replica, addr, window, start, &mut report).await?;
        report.differing_segments = segments.len();
        reconcile(peer, replica, addr, window, &segments, &mut report).await?;
    }
    if rebase {
        replica.rebased();
    }
    Ok(report)
}

/// Where the walk stands: the differing nodes of one level.
struct Walk {
    level: usize,
    differing: Vec<u32>,
    /// At least 3/4 of the last step's nodes differed.
    dense: bool,
}

/// The nodes `request` names below its indices whose digests differ between `ours`
/// (full hashes) and `theirs` (digests through the request's window).
fn differing_below(request: &NodesRequest, ours: &[Hash], theirs: &[wire::Digest]) -> Vec<u32> {
    let width = FANOUT.pow(request.depth.into());
    let mut differing = Vec::new();
    for (position, index) in request.indices.iter().enumerate() {
        for below in 0..width {
            let at = position * width + below;
            if ours.get(at).map(|hash| wire::digest(hash, request.window)).as_ref()
                != theirs.get(at)
            {
                differing.push(index * width as u32 + below as u32);
            }
        }
    }
    differing
}

/// Step 2: walks down from `walk` to the leaf segments under the differing subtrees
/// where it stops.
async fn differing_segments(
    peer: &PeerClient,
    replica: &ReplicaService,
    addr: &str,
    window: u8,
    walk: Walk,
    report: &mut RoundReport,
) -> Result<Vec<u16>, SyncError> {
    let records = replica.record_count();
    let Walk { mut level, mut differing, mut dense } = walk;
    let worth_walking = |level: usize| {
        level < DEPTH && records / (FANOUT as u64).pow(level as u32) > RECONCILE_BELOW_RECORDS
    };
    while !differing.is_empty() && worth_walking(level) {
        let depth = if dense { 2 } else { 1 }.min(DEPTH - level);
        let (level_u8, depth_u8) = (level as u8, depth as u8);
        let request = NodesRequest { window, level: level_u8, depth: depth_u8, indices: differing };
        let theirs = peer.descendants(addr, &request).await?;
        report.requests += 1;
        differing = differing_below(&request, &replica.descendants(&request), &theirs);
        dense = differing.len() * 4 >= request.reply_len() * 3;
        level += depth;
    }
    let width = FANOUT.pow((DEPTH - level) as u32) as u32;
    Ok(differing
        .iter()
        .flat_map(|index| (index * width..(index + 1) * width).map(|s| s as u16))
        .collect())
}

/// Step 3, in requests of at most [`FINGERPRINTS_PER_REQUEST`] fingerprints; the peer
/// may answer fewer segments than asked (to bound its reply), the rest are sent again.
async fn reconcile(
    peer: &PeerClient,
    replica: &ReplicaService,
    addr: &str,
    window: u8,
    segments: &[u16],
    report: &mut RoundReport,
) -> Result<(), SyncError> {
    let mut next = 0;
    while next < segments.len() {
        let (reader, wanted) = (replica.clone(), segments[next..].to_vec());
        let (request, ours) =
            tokio::task::spawn_blocking(move || our_side(&reader, window, &wanted)).await??;
        let reply = peer.reconcile(addr, &request).await?;
        report.requests += 1;
        next += reply.covered as usize;
        // A wanted record of ours may just be an older version of one the peer sent:
        // push only those the peer's reply does not supersede.
        let theirs: HashMap<&Key, &Record> = reply.records.iter().map(|(k, r)| (k, r)).collect();
        let to_push: Vec<(Key, Record)> = reply
            .wanted
            .iter()
            .map(|at| &ours[*at as usize])
            .filter(|(key, record)| theirs.get(key).is_none_or(|their| record.supersedes(their)))
            .cloned()
            .collect();
        report.pulled += reply.records.len();
        report.record_bytes += reply.records_bytes;
        replica.merge(reply.records).await?;
        if !to_push.is_empty() {
            report.pushed += to_push.len();
            report.record_bytes += peer.push(addr, &to_push).await?;
            report.requests += 1;
        }
    }
    Ok(())
}

/// A reconcile request for the first of `segments` (as many as fit), and our records
/// in the order of its fingerprints. Blocking.
fn our_side(
    replica: &ReplicaService,
    window: u8,
    segments: &[u16],
) -> Result<(ReconcileRequest, Vec<(Key, Record)>), ServiceError> {
    let mut request = ReconcileRequest { window, segments: Vec::new() };
    let mut ours = Vec::new();
    for segment in segments.iter().take(SEGMENTS_PER_REQUEST) {
        let records = replica.records_in(&[*segment])?;
        let full =
            !request.segments.is_empty() && ours.len() + records.len() > FINGERPRINTS_PER_REQUEST;
        if full {
            break;
        }
        let prints = records.iter().map(|(key, record)| fingerprint(key, record, window)).collect();
        request.segments.push((*segment, prints));
        ours.extend(records);
    }
    Ok((request, ours))
}

/// One round with a cluster member, as the join and the anti-entropy loop run it: a
/// round that was not skipped (stale peer) is recorded as contact, with the member and
/// on disk (`SyncState::last_contact`, which the stale-replica rule reads).
pub async fn round_with(
    cluster: &Cluster,
    peer: &PeerClient,
    replica: &ReplicaService,
    member: &Member,
) -> Result<RoundReport, SyncError> {
    let report = sync_round(peer, replica, &member.addr).await?;
    if !report.skipped_stale_peer {
        cluster.record_sync(member.id);
        if let Err(error) = replica.note_contact() {
            tracing::warn!(%error, "could not record the sync time");
        }
    }
    Ok(report)
}

/// Every `interval` (±25 % jitter), one round with each of up to [`SYNC_FANOUT`] alive
/// peers (all of them in a small cluster), one after another. With a single random peer
/// per interval a write made without push reaches the last of 5 nodes only after
/// several intervals (p99 2.3 s at 1 s, measured); this way it takes one. An idle round
/// is one request with a 48-byte answer, so the cost is a few small requests per interval.
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
        let mut peers = cluster.alive_peers();
        peers.shuffle(&mut rand::rng());
        peers.truncate(SYNC_FANOUT);
        for member in peers {
            if stop.is_cancelled() {
                return;
            }
            match round_with(&cluster, &peer, &replica, &member).await {
                Ok(report) if report.skipped_stale_peer => {
                    tracing::info!(peer = %member.addr, "peer has been away longer than tombstone_ttl; not syncing from it until it re-bootstraps");
                }
                Ok(report) => {
                    if report.differing_segments > 0 {
                        tracing::debug!(peer = %member.addr, ?report, "anti-entropy repaired differences");
                    }
                }
                Err(error) => {
                    tracing::debug!(peer = %member.addr, %error, "anti-entropy round failed")
                }
            }
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
