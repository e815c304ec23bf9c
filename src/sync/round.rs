//! One anti-entropy round with one peer (the driver side of the protocol):
//! 1. send our root (one request); the answer carries the peer's root, its purge horizon
//!    and last contact (checked against our clock: `rules::check_claims`) and, when the
//!    roots differ, the 256 digests of level 2, so the walk starts two levels down.
//!    Equal roots end the round;
//! 2. walk down the differing subtrees, all differing nodes of a level per request, as
//!    4-byte digests through a window picked at random for the round (see `wire`).
//!    Where differences are dense (≥ 3/4 of the last step's nodes differ) a request
//!    skips a level and asks for grandchildren: the bytes are about the same and a round
//!    trip is saved. The walk stops early once a differing subtree holds few records
//!    (≤ 16 on our side), since their fingerprints then cost less than another level of
//!    digests;
//! 3. reconcile the differing leaf segments: send the fingerprints of our records there,
//!    receive the peer's records we do not have (merged here, by the receiver's rules)
//!    and the list of ours it does not have: those it lacks entirely and that are older
//!    than its purge horizon are dropped here (`rules`, rule 2), the rest pushed back.

use std::collections::HashMap;

use super::rules::{self, Bounds};
use super::SyncError;
use crate::merkle::{Hash, DEPTH, FANOUT};
use crate::model::{Key, Record};
use crate::service::{fingerprint, ReplicaService, ServiceError, SyncState};
use crate::transport::{Peer, PeerError};
use crate::wire::{self, NodesRequest, ReconcileRequest, RootRequest};

/// A differing subtree holding at most this many of our records is reconciled at once
/// instead of being walked further (its fingerprints are no bigger than 16 digests).
pub const RECONCILE_BELOW_RECORDS: u64 = FANOUT as u64;

/// Fingerprints per reconcile request (1 MiB of them), and segments at most.
pub const FINGERPRINTS_PER_REQUEST: usize = 262_144;
pub const SEGMENTS_PER_REQUEST: usize = 16_384;

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RoundReport {
    pub requests: usize,
    pub differing_segments: usize,
    pub pulled: usize,
    pub pushed: usize,
    /// Our records the peer lacked and that were older than its purge horizon: their
    /// delete may be among the tombstones it purged, so they were dropped here.
    pub dropped: usize,
    /// Records the peer sent that we refused (expired, possibly purged, or stamped too
    /// far ahead of our clock).
    pub refused: usize,
    /// Bytes the pulled and pushed record batches took on the wire (compressed); the
    /// rest of a round's traffic is metadata and HTTP.
    pub record_bytes: usize,
    /// The peer had purged tombstones written after our last contact (a rebase round).
    pub rebased: bool,
}

/// One anti-entropy round with the peer at `addr`, digests through `window`. With
/// `rebasing` false, a peer whose horizon calls for a rebase ends the round at once
/// with [`SyncError::RebaseNeeded`] (the driver then re-runs it exclusively).
pub async fn sync_round(
    peer: &dyn Peer,
    replica: &ReplicaService,
    addr: &str,
    window: u8,
    rebasing: bool,
) -> Result<RoundReport, SyncError> {
    let mut report = RoundReport::default();
    let ask = RootRequest { window, root: replica.root() };
    let theirs = peer.root(addr, &ask).await?;
    report.requests += 1;
    let peer_state =
        SyncState { purge_horizon: theirs.purge_horizon, last_contact: theirs.last_contact };
    let bounds = Bounds {
        now_ms: replica.now_ms(),
        tombstone_ttl_ms: replica.tombstone_ttl_ms(),
        max_skew_ms: replica.max_skew_ms(),
    };
    rules::check_claims(&peer_state, bounds)
        .map_err(|reason| PeerError::Protocol { addr: addr.to_owned(), reason })?;
    let ours = replica.sync_state()?;
    report.rebased = rules::must_rebase(&ours, &peer_state);
    if report.rebased && !rebasing {
        return Err(SyncError::RebaseNeeded);
    }
    if theirs.root != replica.root() {
        let start = if theirs.top.is_empty() {
            Walk { level: 0, differing: vec![0], dense: true }
        } else {
            let top = NodesRequest { window, level: 0, depth: wire::TOP_LEVEL, indices: vec![0] };
            let differing = differing_below(&top, &replica.descendants(&top), &theirs.top);
            let dense = differing.len() * 4 >= wire::TOP_WIDTH * 3;
            Walk { level: usize::from(wire::TOP_LEVEL), differing, dense }
        };
        let segments = differing_segments(peer, replica, addr, window, start, &mut report).await?;
        report.differing_segments = segments.len();
        let exchange = Exchange { peer, replica, addr, window, horizon: theirs.purge_horizon };
        exchange.reconcile(&segments, &mut report).await?;
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
    peer: &dyn Peer,
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

/// Step 3's parameters.
struct Exchange<'a> {
    peer: &'a dyn Peer,
    replica: &'a ReplicaService,
    addr: &'a str,
    window: u8,
    /// The peer's purge horizon (checked).
    horizon: u64,
}

impl Exchange<'_> {
    /// Step 3, in requests of at most [`FINGERPRINTS_PER_REQUEST`] fingerprints; the
    /// peer may answer fewer segments than asked (to bound its reply), the rest are
    /// sent again.
    async fn reconcile(&self, segments: &[u16], report: &mut RoundReport) -> Result<(), SyncError> {
        let mut next = 0;
        while next < segments.len() {
            let (reader, wanted, window) =
                (self.replica.clone(), segments[next..].to_vec(), self.window);
            let (request, ours) =
                tokio::task::spawn_blocking(move || our_side(&reader, window, &wanted)).await??;
            let reply = self.peer.reconcile(self.addr, &request).await?;
            report.requests += 1;
            next += reply.covered as usize;
            // A wanted record of ours may just be an older version of one the peer
            // sent: push only those the peer's reply does not supersede. Those it lacks
            // entirely and that are older than its horizon are dropped (rule 2).
            let theirs: HashMap<&Key, &Record> =
                reply.records.iter().map(|(k, r)| (k, r)).collect();
            let mut to_push = Vec::new();
            let mut to_drop = Vec::new();
            for (key, record) in reply.wanted.iter().map(|at| &ours[*at as usize]) {
                match theirs.get(key) {
                    Some(their) if !record.supersedes(their) => {}
                    Some(_) => to_push.push((key.clone(), record.clone())),
                    None if rules::may_be_purged_delete(record, self.horizon) => {
                        to_drop.push((key.clone(), record.clone()))
                    }
                    None => to_push.push((key.clone(), record.clone())),
                }
            }
            report.pulled += reply.records.len();
            report.record_bytes += reply.records_bytes;
            let merged = self.replica.merge(reply.records).await?;
            report.refused += merged.expired + merged.purged + merged.future;
            if !to_drop.is_empty() {
                let replica = self.replica.clone();
                report.dropped +=
                    tokio::task::spawn_blocking(move || replica.drop_lacking(&to_drop)).await??;
            }
            for batch in wire::batches(&to_push) {
                report.pushed += batch.len();
                report.record_bytes += self.peer.push(self.addr, batch).await?;
                report.requests += 1;
            }
        }
        Ok(())
    }
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
    let segments = &segments[..segments.len().min(SEGMENTS_PER_REQUEST)];
    // Read in chunks: one store scan per chunk, and no more read than the request holds.
    'chunks: for chunk in segments.chunks(256) {
        for (segment, records) in chunk.iter().zip(replica.records_by_segment(chunk)?) {
            let full = !request.segments.is_empty()
                && ours.len() + records.len() > FINGERPRINTS_PER_REQUEST;
            if full {
                break 'chunks;
            }
            let prints =
                records.iter().map(|(key, record)| fingerprint(key, record, window)).collect();
            request.segments.push((*segment, prints));
            ours.extend(records);
        }
    }
    Ok((request, ours))
}
