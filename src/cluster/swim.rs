//! SWIM membership (foca) as a pure state machine: probes, indirect probes through k
//! members, suspicion refuted by incarnation numbers, updates piggy-backed on every
//! message within a packet budget, and a periodic exchange of the member list with one
//! member (foca's announce) whose interval grows with log N, like memberlist's push-pull.
//! Suspicion timeouts and retransmissions grow with log N too (Lifeguard): the config
//! follows the cluster's size as members come and go. A member whose own probes keep
//! failing is more likely slow itself than surrounded by dead members, so it waits
//! longer before declaring anyone down (Lifeguard's local health multiplier, which foca
//! lacks: see [`Swim::timer`]).
//!
//! No IO, no clock, no global RNG: a [`Swim`] is fed packets ([`Swim::handle`]) and due
//! timers ([`Swim::timer`]) by its caller, and answers with [`Output`]s (packets to send,
//! timers to arm, members up and down). The same core runs in the daemon and, thousands
//! at once, in the simulation (`cluster::swim_sim`). foca is confined to this module.

use std::num::NonZeroU32;
use std::time::Duration;

use foca::{AccumulatingRuntime, Config, Foca, Identity, OwnedNotification, PostcardCodec};
use rand_pcg::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

pub use foca::Timer;

/// A member's identity as SWIM sees it: which node, where it listens, and which life of
/// it (`incarnation_epoch`: the ms its process started, bumped when it must rejoin after
/// being declared down, so a restarted node always wins over its old self).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SwimId {
    pub node: uuid::Uuid,
    pub addr: String,
    pub name: String,
    pub joined_at: u64,
    pub incarnation_epoch: u64,
}

impl SwimId {
    /// The identity of `member`'s life `incarnation_epoch`.
    pub fn of(member: &super::Member, incarnation_epoch: u64) -> Self {
        SwimId {
            node: member.id,
            addr: member.addr.clone(),
            name: member.name.clone(),
            joined_at: member.joined_at,
            incarnation_epoch,
        }
    }
}

impl Identity for SwimId {
    type Addr = uuid::Uuid;

    /// A member declared down rejoins as its next life.
    fn renew(&self) -> Option<Self> {
        Some(SwimId { incarnation_epoch: self.incarnation_epoch.saturating_add(1), ..self.clone() })
    }

    fn addr(&self) -> uuid::Uuid {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation_epoch > adversary.incarnation_epoch
    }
}

/// What the caller must do after feeding a [`Swim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Deliver `packet` to `to` (best effort: SWIM tolerates loss).
    Send { to: SwimId, packet: Vec<u8> },
    /// Call [`Swim::timer`] with `timer` after `after`.
    Schedule { after: Duration, timer: Timer<SwimId> },
    /// A member became active.
    Up(SwimId),
    /// A member was declared down (failed, or left).
    Down(SwimId),
    /// A direct and indirect probe of this member got no answer in time: it is suspect.
    ProbeFailed(SwimId),
}

/// How SWIM sees a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// Some member suspects it; it is still treated as alive until declared down.
    Suspect,
    Down,
}

#[derive(Debug, thiserror::Error)]
#[error("membership: {0}")]
pub struct SwimError(String);

type Core = Foca<SwimId, PostcardCodec, rand_pcg::Pcg64Mcg, foca::NoCustomBroadcast>;

/// One member's SWIM state.
pub struct Swim {
    foca: Core,
    runtime: AccumulatingRuntime<SwimId>,
    /// The cluster size the config was derived for.
    sized_for: u32,
    /// Local health: 0 when our probes succeed, up to [`MAX_HEALTH_SCORE`] when they
    /// keep failing; our suspicion lasts `1 + health` times the usual.
    health: u32,
}

/// The most a member's own failed probes stretch its suspicion timeout (Lifeguard's and
/// memberlist's maximum awareness score).
pub const MAX_HEALTH_SCORE: u32 = 8;

/// Packets are at most this large (a UDP-safe size; our transport is HTTP, but small
/// packets keep each message's cost flat whatever N is).
pub const MAX_PACKET_BYTES: usize = 1_400;

/// Suspicion lasts `SUSPICION_MULT × log10(N)` probe periods (at least 3 s), times
/// `1 + health` for a member whose own probes fail. Simulated at 1,000 members (5 %
/// loss, one starved member, three seeds): 1.0 declared a live member down, 1.3 none;
/// 2.0 took 10.6 s for a failure to be known to all.
pub const SUSPICION_MULT: f64 = 1.3;

/// The config for a cluster of `size` members, for a member in good local health:
/// memberlist's LAN settings (probe every second, 500 ms round trip, 3 indirect probes,
/// gossip updates every 200 ms to 3 members when there are any), suspicion
/// `SUSPICION_MULT × log10(N)` probe periods (at least 3 s), retransmissions
/// `6 × log10(N + 1)`, and the full-list exchange every `30 s × ⌈log2(N / 32)⌉` past 32
/// members (memberlist's push-pull scale).
pub fn config_for(size: u32) -> Config {
    let mut config = Config::new_lan(NonZeroU32::new(size.max(1)).expect("at least 1"));
    let log_n = f64::from(size.max(10)).log10();
    // Lifeguard's suspicion, without its confirmations: 1.3 × log10(N) probe periods, at
    // least 3 s (a starved member's refutation needs about that).
    config.suspect_to_down_after =
        config.probe_period.mul_f64(SUSPICION_MULT * log_n).max(Duration::from_secs(3));
    // More retransmissions than foca's 4 × log10(N + 1): with 5 % loss, a refutation
    // must reach every member that heard the suspicion before its timer fires.
    config.max_transmissions = std::num::NonZeroU8::new(
        (6.0 * f64::from(size + 1).log10()).ceil().clamp(1.0, 255.0) as u8,
    )
    .expect("at least 1");
    let scale = if size > 32 { (f64::from(size) / 32.0).log2().ceil().max(1.0) } else { 1.0 };
    if let Some(announce) = config.periodic_announce.as_mut() {
        announce.frequency = Duration::from_secs_f64(30.0 * scale);
    }
    config.max_packet_size = std::num::NonZeroUsize::new(MAX_PACKET_BYTES).expect("non-zero");
    config
}

impl Swim {
    /// A member that knows nobody yet; `seed` drives its random choices.
    pub fn new(me: SwimId, seed: u64) -> Self {
        let rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
        Swim {
            foca: Foca::new(me, config_for(1), rng, PostcardCodec),
            runtime: AccumulatingRuntime::new(),
            sized_for: 1,
            health: 0,
        }
    }

    pub fn me(&self) -> &SwimId {
        self.foca.identity()
    }

    /// Asks `seed` to let us in (its answer brings members).
    pub fn join(&mut self, seed: SwimId) -> Result<Vec<Output>, SwimError> {
        let result = self.foca.announce(seed, &mut self.runtime);
        self.finish(result)
    }

    /// Takes members known from elsewhere (a previous run, a full-state exchange) as
    /// alive, without broadcasting them.
    pub fn know(
        &mut self,
        members: impl IntoIterator<Item = SwimId>,
    ) -> Result<Vec<Output>, SwimError> {
        let updates = members.into_iter().map(foca::Member::alive);
        let result = self.foca.apply_many(updates, false, &mut self.runtime);
        self.finish(result)
    }

    /// A packet from the network.
    pub fn handle(&mut self, packet: &[u8]) -> Result<Vec<Output>, SwimError> {
        let result = self.foca.handle_data(packet, &mut self.runtime);
        self.finish(result)
    }

    /// A timer that came due. A probe round starts by judging the previous probe:
    /// failed (foca reports it) or not, which moves our local health.
    pub fn timer(&mut self, timer: Timer<SwimId>) -> Result<Vec<Output>, SwimError> {
        let probe_round = matches!(timer, Timer::ProbeRandomMember(_));
        let result = self.foca.handle_timer(timer, &mut self.runtime);
        let out = self.finish(result)?;
        if probe_round {
            let failed = out.iter().any(|output| matches!(output, Output::ProbeFailed(_)));
            let health = if failed {
                (self.health + 1).min(MAX_HEALTH_SCORE)
            } else {
                self.health.saturating_sub(1)
            };
            if health != self.health {
                self.health = health;
                self.apply_config();
            }
        }
        Ok(out)
    }

    /// 0 (healthy) to [`MAX_HEALTH_SCORE`] (our probes keep failing).
    pub fn health(&self) -> u32 {
        self.health
    }

    /// Says goodbye: the members learn we left instead of suspecting us.
    pub fn leave(mut self) -> Result<Vec<Output>, SwimError> {
        let result = self.foca.leave_cluster(&mut self.runtime);
        self.finish(result)
    }

    /// Active members other than us.
    pub fn members(&self) -> impl Iterator<Item = &SwimId> {
        self.foca.iter_members().map(foca::Member::id)
    }

    pub fn member_count(&self) -> usize {
        self.foca.num_members()
    }

    /// What SWIM holds of each node it knows, one entry per node: an active identity
    /// (alive or suspect) wins over identities of it declared down.
    pub fn view(&self) -> Vec<(SwimId, Liveness)> {
        let mut view: std::collections::HashMap<uuid::Uuid, (SwimId, Liveness)> =
            std::collections::HashMap::new();
        for member in self.foca.iter_membership_state() {
            let liveness = match member.state() {
                foca::State::Alive => Liveness::Alive,
                foca::State::Suspect => Liveness::Suspect,
                foca::State::Down => Liveness::Down,
            };
            let id = member.id();
            match view.get(&id.node) {
                Some((_, held)) if *held != Liveness::Down => {}
                Some((held, Liveness::Down))
                    if liveness == Liveness::Down
                        && held.incarnation_epoch >= id.incarnation_epoch => {}
                _ => {
                    view.insert(id.node, (id.clone(), liveness));
                }
            }
        }
        view.into_values().collect()
    }

    fn finish(&mut self, result: Result<(), foca::Error>) -> Result<Vec<Output>, SwimError> {
        let mut out = Vec::new();
        while let Some((to, packet)) = self.runtime.to_send() {
            out.push(Output::Send { to, packet: packet.to_vec() });
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            out.push(Output::Schedule { after, timer });
        }
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => out.push(Output::Up(id)),
                OwnedNotification::MemberDown(id) => out.push(Output::Down(id)),
                OwnedNotification::ProbeFailed(_, id) => out.push(Output::ProbeFailed(id)),
                _ => {}
            }
        }
        self.resize();
        result.map_err(|error| SwimError(error.to_string()))?;
        Ok(out)
    }

    /// Re-derives the config when the member count moved past a power of two (so
    /// suspicion and the exchange interval follow log N, not every join).
    fn resize(&mut self) {
        let size = u32::try_from(self.foca.num_members() + 1).unwrap_or(u32::MAX);
        let bucket = size.next_power_of_two();
        if bucket != self.sized_for {
            self.sized_for = bucket;
            self.apply_config();
        }
    }

    fn apply_config(&mut self) {
        let mut config = config_for(self.sized_for);
        config.suspect_to_down_after *= 1 + self.health;
        if let Err(error) = self.foca.set_config(config) {
            tracing::warn!(%error, "could not change the membership config");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> SwimId {
        SwimId {
            node: uuid::Uuid::from_u128(n),
            addr: format!("10.0.0.{n}:8080"),
            name: format!("n{n}"),
            joined_at: 1,
            incarnation_epoch: 100,
        }
    }

    #[test]
    fn a_restarted_node_wins_over_its_old_self_and_a_renewal_over_its_last_life() {
        let old = id(1);
        let restarted = SwimId { incarnation_epoch: 500, ..id(1) };
        assert!(restarted.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&restarted));
        let renewed = old.renew().unwrap();
        assert!(renewed.win_addr_conflict(&old));
        assert_eq!(renewed.addr(), old.addr());
    }

    #[test]
    fn suspicion_and_the_full_exchange_grow_with_log_n() {
        let small = config_for(8);
        let large = config_for(1024);
        assert!(large.suspect_to_down_after > small.suspect_to_down_after);
        assert!(large.max_transmissions > small.max_transmissions);
        let every = |config: &Config| config.periodic_announce.as_ref().unwrap().frequency;
        assert_eq!(every(&small), Duration::from_secs(30));
        assert_eq!(every(&large), Duration::from_secs(150)); // ⌈log2(1024 / 32)⌉ = 5
        assert_eq!(small.probe_period, large.probe_period);
    }

    /// A member that hears nothing back (as if its own network were failing) raises its
    /// local health score with each failed probe, and its suspicions last longer.
    #[test]
    fn a_member_whose_probes_keep_failing_waits_longer_to_declare_anyone_down() {
        let mut a = Swim::new(id(1), 1);
        // Timers due at a virtual instant; suspicion timers are only recorded.
        let mut due: Vec<(Duration, Timer<SwimId>)> = Vec::new();
        let mut suspicions: Vec<Duration> = Vec::new();
        let mut take = |now: Duration, out: Vec<Output>, due: &mut Vec<_>| {
            for output in out {
                if let Output::Schedule { after, timer } = output {
                    match timer {
                        Timer::ChangeSuspectToDown { .. } => suspicions.push(after),
                        timer => due.push((now + after, timer)),
                    }
                }
            }
        };
        take(Duration::ZERO, a.know((2..12).map(id)).unwrap(), &mut due);
        assert_eq!(a.health(), 0);
        for _ in 0..500 {
            due.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
            let Some((now, timer)) = due.pop() else { break };
            if matches!(timer, Timer::ProbeRandomMember(_) | Timer::SendIndirectProbe { .. }) {
                take(now, a.timer(timer).unwrap(), &mut due);
            }
        }
        assert_eq!(a.health(), MAX_HEALTH_SCORE);
        let healthy = config_for(16).suspect_to_down_after;
        assert_eq!(suspicions.first(), Some(&healthy));
        let longest = suspicions.iter().max().copied().unwrap_or_default();
        assert!(longest >= healthy * MAX_HEALTH_SCORE, "{suspicions:?}");
    }

    /// Two members meet through a join and each sees the other up.
    #[test]
    fn a_join_is_answered_and_both_see_each_other() {
        let mut a = Swim::new(id(1), 1);
        let mut b = Swim::new(id(2), 2);
        let mut inbox: Vec<(SwimId, Vec<u8>)> = Vec::new();
        let mut ups: Vec<(SwimId, SwimId)> = Vec::new();
        let mut collect = |who: SwimId, out: Vec<Output>, inbox: &mut Vec<_>| {
            for output in out {
                match output {
                    Output::Send { to, packet } => inbox.push((to, packet)),
                    Output::Up(member) => ups.push((who.clone(), member)),
                    _ => {}
                }
            }
        };
        collect(id(2), b.join(id(1)).unwrap(), &mut inbox);
        for _ in 0..4 {
            for (to, packet) in std::mem::take(&mut inbox) {
                let (who, swim) =
                    if to.node == id(1).node { (id(1), &mut a) } else { (id(2), &mut b) };
                collect(who, swim.handle(&packet).unwrap(), &mut inbox);
            }
        }
        assert!(ups.contains(&(id(1), id(2))), "{ups:?}");
        assert!(ups.contains(&(id(2), id(1))), "{ups:?}");
        assert_eq!((a.member_count(), b.member_count()), (1, 1));
    }

    /// The view has one entry per node: a live identity wins over a life declared down.
    #[test]
    fn the_view_prefers_a_live_identity_over_a_dead_life() {
        let mut a = Swim::new(id(1), 1);
        let old = id(2);
        let new = SwimId { incarnation_epoch: 200, ..id(2) };
        a.know([old.clone(), id(3)]).unwrap();
        let down = foca::Member::new(old.clone(), 0, foca::State::Down);
        a.foca.apply_many([down].into_iter(), false, &mut a.runtime).unwrap();
        let mut view = a.view();
        view.sort_by_key(|(member, _)| member.node);
        assert_eq!(view, [(old, Liveness::Down), (id(3), Liveness::Alive)]);
        a.know([new.clone()]).unwrap();
        let mut view = a.view();
        view.sort_by_key(|(member, _)| member.node);
        assert_eq!(view, [(new, Liveness::Alive), (id(3), Liveness::Alive)]);
    }
}
