//! The membership tasks: joining through the seeds, the whole-list exchange (gossip
//! rounds), SWIM's probes and packets, and the farewell.
//!
//! Two protocols, one view ([`Cluster`]): SWIM (`cluster::swim`, over
//! `/internal/v1/swim`) detects failures and spreads joins and deaths with per-node
//! traffic that does not grow with the cluster; the whole-list exchange (JSON over
//! `/internal/v1/gossip`) carries addresses, names and leaving, lets a new node learn
//! everyone from its seed, and heals partitions through the seeds. It runs every
//! `gossip_interval × ⌈N / 2⌉`, so its traffic per node stays flat as N grows.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::swim::{Liveness, Output, Swim, SwimId, Timer};
use crate::cluster::{Cluster, MemberState};
use crate::service::{Phase, Readiness};
use crate::sync::Driver;
use crate::transport::{Peer, PeerError};

/// How much slower than `gossip_interval` the whole-list exchange runs with `members`
/// listed: ⌈N / 2⌉ (1 up to 3 members), so a list that grows with N is sent less often
/// and the bytes per node per second stay flat.
fn round_scale(members: usize) -> u64 {
    (members as u64).div_ceil(2).max(1)
}

/// Every round (`interval` × [`round_scale`]): age the members SWIM does not track, then
/// exchange lists with a random alive peer — or, every tenth round and whenever nobody
/// is alive, with a seed (which also heals partitions and lets a standalone node find a
/// cluster that came up later). An exchange that hangs is cut off at the interval, so a
/// silent peer never holds back the rounds.
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
    loop {
        let scale = round_scale(cluster.member_count());
        let every = interval.saturating_mul(scale as u32);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        cluster.tick(scale);
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
        readiness.leave_standalone_if(!cluster.alive_peers().is_empty());
    }
}

/// SWIM packets in flight at most; past it a packet is dropped (SWIM tolerates loss).
const SWIM_SENDS_AT_ONCE: usize = 64;
/// How often the SWIM task looks for listed members SWIM has not met (or holds down).
const MEET_EVERY: Duration = Duration::from_millis(250);
/// A member SWIM has not met (or holds down) is asked to let us in at most this often.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// Runs this node's SWIM member: feeds it the packets peers send (taken from
/// [`Cluster::take_swim_inbox`]) and its timers, sends what it says to send, and after
/// every step hands its view to the [`Cluster`]. Every [`MEET_EVERY`] it announces
/// itself to members the list exchange brought that SWIM has not met, or holds down:
/// that is how a new node meets everyone, and how both sides of a healed partition
/// meet again (the one that hears from a member it holds down tells it so, and that
/// member rejoins as its next life). `epoch`: this process's start (ms), so a restarted
/// node's identity wins over its previous life's.
pub async fn swim_loop(cluster: Cluster, peer: Arc<dyn Peer>, epoch: u64, stop: CancellationToken) {
    let Some(mut packets) = cluster.take_swim_inbox() else {
        tracing::error!("the SWIM inbox was already taken: membership runs on heartbeats only");
        return;
    };
    let mut swim = Swim::new(SwimId::of(&cluster.me(), epoch), rand::random());
    // SWIM's view after its last step (it changes only in steps).
    let mut view = swim.view();
    let (due, mut timers) = mpsc::unbounded_channel::<Timer<SwimId>>();
    let sends = Arc::new(Semaphore::new(SWIM_SENDS_AT_ONCE));
    let mut pending = tokio::task::JoinSet::new();
    let mut announced: HashMap<uuid::Uuid, Instant> = HashMap::new();
    let mut meet = tokio::time::interval(MEET_EVERY);
    loop {
        let step = tokio::select! {
            _ = stop.cancelled() => return,
            Some(packet) = packets.recv() => swim.handle(&packet),
            Some(timer) = timers.recv() => swim.timer(timer),
            _ = meet.tick() => Ok(meet_unmet(&mut swim, &view, &cluster, &mut announced)),
        };
        while pending.try_join_next().is_some() {}
        match step {
            Ok(outputs) => {
                for output in outputs {
                    act(output, &peer, &sends, &due, &mut pending);
                }
            }
            Err(error) => tracing::debug!(%error, "a SWIM packet or timer was refused"),
        }
        view = swim.view();
        cluster.apply_swim(&view);
    }
}

/// Announces us to the listed members SWIM has no live identity for (each at most every
/// [`ANNOUNCE_EVERY`]); returns what SWIM says to do.
fn meet_unmet(
    swim: &mut Swim,
    view: &[(SwimId, Liveness)],
    cluster: &Cluster,
    announced: &mut HashMap<uuid::Uuid, Instant>,
) -> Vec<Output> {
    let live: HashSet<uuid::Uuid> = view
        .iter()
        .filter(|(_, liveness)| *liveness != Liveness::Down)
        .map(|(id, _)| id.node)
        .collect();
    let me = swim.me().node;
    let now = Instant::now();
    let members = cluster.members();
    announced.retain(|id, at| {
        now.duration_since(*at) < ANNOUNCE_EVERY && members.iter().any(|m| m.id == *id)
    });
    let mut outputs = Vec::new();
    for member in members {
        let unmet = member.id != me
            && member.state != MemberState::Left
            && !live.contains(&member.id)
            && !announced.contains_key(&member.id);
        if !unmet {
            continue;
        }
        announced.insert(member.id, now);
        // An announce is accepted by whichever life of the member answers at the
        // address, so the epoch here does not matter.
        match swim.join(SwimId::of(&member, 0)) {
            Ok(more) => outputs.extend(more),
            Err(error) => tracing::debug!(%error, "could not announce to a member"),
        }
    }
    outputs
}

/// Carries out one of SWIM's outputs.
fn act(
    output: Output,
    peer: &Arc<dyn Peer>,
    sends: &Arc<Semaphore>,
    due: &mpsc::UnboundedSender<Timer<SwimId>>,
    pending: &mut tokio::task::JoinSet<()>,
) {
    match output {
        Output::Send { to, packet } => {
            let Ok(permit) = sends.clone().try_acquire_owned() else {
                tracing::debug!(peer = %to.addr, "too many SWIM packets in flight: one dropped");
                return;
            };
            let peer = peer.clone();
            pending.spawn(async move {
                if let Err(error) = peer.swim(&to.addr, packet).await {
                    tracing::trace!(peer = %to.addr, %error, "SWIM packet not delivered");
                }
                drop(permit);
            });
        }
        Output::Schedule { after, timer } => {
            let due = due.clone();
            pending.spawn(async move {
                tokio::time::sleep(after).await;
                let _ = due.send(timer);
            });
        }
        Output::Up(member) => {
            tracing::debug!(member = %member.name, addr = %member.addr, "member up")
        }
        Output::Down(member) => {
            tracing::info!(member = %member.name, addr = %member.addr, "member declared down")
        }
        Output::ProbeFailed(member) => {
            tracing::debug!(member = %member.name, addr = %member.addr, "probe failed: member suspect")
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
