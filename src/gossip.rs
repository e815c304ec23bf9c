//! The membership tasks: joining through the seeds, gossip rounds, and the farewell.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::service::{Phase, Readiness};
use crate::sync::Driver;
use crate::transport::{Peer, PeerError};

/// Every `interval`: age the members, then exchange lists with a random alive peer —
/// or, every tenth round and whenever nobody is alive, with a seed (which also heals
/// partitions and lets a standalone node find a cluster that came up later). The
/// ageing runs on its own schedule: an exchange that hangs is cut off at the interval,
/// so a silent peer never holds back suspicion of the others.
pub async fn gossip_loop(
    cluster: Cluster,
    peer: Arc<dyn Peer>,
    seeds: Vec<String>,
    readiness: Readiness,
    interval: Duration,
    stop: CancellationToken,
) {
    let me = cluster.me().addr;
    let seeds: Vec<String> = seeds.into_iter().filter(|seed| *seed != me).collect();
    let mut round: usize = 0;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        cluster.tick();
        round += 1;
        let target = match cluster.random_alive_peer() {
            Some(member) if !round.is_multiple_of(10) || seeds.is_empty() => member.addr,
            _ if !seeds.is_empty() => seeds[round % seeds.len()].clone(),
            _ => continue,
        };
        match tokio::time::timeout(interval, peer.gossip(&target, &cluster.members())).await {
            Ok(Ok(theirs)) => {
                let first_hand = first_hand(&theirs, &target);
                cluster.on_gossip(theirs, first_hand);
            }
            Ok(Err(error)) => tracing::trace!(peer = %target, %error, "gossip failed"),
            Err(_) => tracing::trace!(peer = %target, "gossip timed out"),
        }
        if readiness.phase() == Phase::Standalone && !cluster.alive_peers().is_empty() {
            tracing::info!("peers found: leaving standalone mode");
            let _ = readiness.advance(Phase::Ready);
        }
    }
}

/// The peer we dialled at `addr` speaks for the entry at that address.
fn first_hand(theirs: &[crate::cluster::Member], addr: &str) -> Option<uuid::Uuid> {
    theirs.iter().find(|member| member.addr == addr).map(|member| member.id)
}

/// Joins through the seeds, then syncs once with a peer (through the driver) before
/// reporting ready. With no answer within `join_timeout`, runs standalone (and says so).
pub async fn join(
    driver: Driver,
    seeds: Vec<String>,
    readiness: Readiness,
    join_timeout: Duration,
    stop: CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + join_timeout;
    let cluster = driver.cluster().clone();
    let me = cluster.me().addr;
    loop {
        for seed in seeds.iter().filter(|seed| **seed != me) {
            match driver.peer().gossip(seed, &cluster.members()).await {
                Ok(theirs) => {
                    let first_hand = first_hand(&theirs, seed);
                    cluster.on_gossip(theirs, first_hand);
                }
                Err(PeerError::Status { status: 401, .. }) => tracing::warn!(
                    %seed,
                    "the seed refused our signature: is cluster.key the same on both nodes?"
                ),
                Err(PeerError::Status { status: 403, .. }) => tracing::warn!(
                    %seed,
                    "the seed has no cluster key and refuses peers (give both nodes one key)"
                ),
                Err(error) => tracing::debug!(%seed, %error, "seed did not answer"),
            }
        }
        if let Some(member) = cluster.random_alive_peer() {
            match driver.round_with(&member).await {
                Ok(report) => {
                    tracing::info!(peer = %member.addr, pulled = report.pulled, "joined the cluster and synced");
                    if readiness.phase() != Phase::Ready {
                        if let Err(refused) = readiness.advance(Phase::Ready) {
                            tracing::warn!(%refused, "could not report ready after joining");
                        }
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(peer = %member.addr, %error, "first sync failed; retrying")
                }
            }
        }
        if tokio::time::Instant::now() >= deadline && readiness.phase() == Phase::Joining {
            tracing::warn!(
                ?join_timeout,
                "no seed answered within join_timeout: running standalone"
            );
            let _ = readiness.advance(Phase::Standalone);
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Marks us `left` and tells every alive peer, waiting at most `within`.
pub async fn farewell(cluster: &Cluster, peer: &Arc<dyn Peer>, within: Duration) {
    cluster.leave();
    let members = cluster.members();
    let mut sends = tokio::task::JoinSet::new();
    for member in cluster.alive_peers() {
        let (peer, members) = (peer.clone(), members.clone());
        sends.spawn(async move { peer.gossip(&member.addr, &members).await.map(drop) });
    }
    let all = async { while sends.join_next().await.is_some() {} };
    if tokio::time::timeout(within, all).await.is_err() {
        tracing::debug!("not every peer heard our farewell");
    }
}
