//! The membership tasks: joining through the seeds, gossip rounds, and the farewell.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::peer::PeerClient;
use crate::service::{Readiness, ReadyState, ReplicaService};
use crate::sync;

/// Every `interval`: age the members, then exchange lists with a random alive peer —
/// or, every tenth round and whenever nobody is alive, with a seed (which also heals
/// partitions and lets a standalone node find a cluster that came up later).
pub async fn gossip_loop(
    cluster: Cluster,
    peer: PeerClient,
    seeds: Vec<String>,
    readiness: Readiness,
    interval: Duration,
    stop: CancellationToken,
) {
    let me = cluster.me().addr;
    let seeds: Vec<String> = seeds.into_iter().filter(|seed| *seed != me).collect();
    let mut round: usize = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        cluster.tick();
        round += 1;
        let target = match cluster.random_alive_peer() {
            Some(member) if !round.is_multiple_of(10) || seeds.is_empty() => member.addr,
            _ if !seeds.is_empty() => seeds[round % seeds.len()].clone(),
            _ => continue,
        };
        match peer.gossip(&target, &cluster.members()).await {
            Ok(theirs) => {
                cluster.on_gossip(theirs);
            }
            Err(error) => tracing::trace!(peer = %target, %error, "gossip failed"),
        }
        let current = readiness.current();
        if current.ready && current.standalone && !cluster.alive_peers().is_empty() {
            tracing::info!("peers found: leaving standalone mode");
            readiness.set(ReadyState { standalone: false, reason: String::new(), ..current });
        }
    }
}

/// Joins through the seeds, then syncs once with a peer before reporting ready. With no
/// answer within `join_timeout`, runs standalone (and says so).
pub async fn join(
    cluster: Cluster,
    peer: PeerClient,
    replica: ReplicaService,
    seeds: Vec<String>,
    readiness: Readiness,
    join_timeout: Duration,
    stop: CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + join_timeout;
    let me = cluster.me().addr;
    loop {
        for seed in seeds.iter().filter(|seed| **seed != me) {
            match peer.gossip(seed, &cluster.members()).await {
                Ok(theirs) => {
                    cluster.on_gossip(theirs);
                }
                Err(error) => tracing::debug!(%seed, %error, "seed did not answer"),
            }
        }
        if let Some(member) = cluster.random_alive_peer() {
            match sync::round_with(&cluster, &peer, &replica, &member).await {
                Ok(report) if report.skipped_stale_peer => {
                    tracing::info!(peer = %member.addr, "that peer is stale; trying another");
                }
                Ok(report) => {
                    tracing::info!(peer = %member.addr, pulled = report.pulled, "joined the cluster and synced");
                    readiness.set(ReadyState {
                        ready: true,
                        standalone: false,
                        reason: String::new(),
                    });
                    return;
                }
                Err(error) => {
                    tracing::warn!(peer = %member.addr, %error, "first sync failed; retrying")
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                ?join_timeout,
                "no seed answered within join_timeout: running standalone"
            );
            readiness.set(ReadyState {
                ready: true,
                standalone: true,
                reason: "no seed answered within join_timeout".into(),
            });
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Marks us `left` and tells every alive peer, waiting at most `within`.
pub async fn farewell(cluster: &Cluster, peer: &PeerClient, within: Duration) {
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
