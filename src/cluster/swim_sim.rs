//! A deterministic simulation of SWIM membership ([`super::swim`]) at scale: N members
//! exchanging packets through an in-memory network with latency and loss, one member
//! starved (every packet to or from it delayed), on a virtual clock. One seed, one run:
//! the same seed gives the same figures.
//!
//! The run: N − 1 members start knowing each other (a settled cluster), warm up, then
//! the N-th joins through one of them (how long until every member knows it); members are
//! killed one at a time (how long until each alive member, and the last of them, declares
//! it down); all along, probes that fail against a live member (false suspicions) and live
//! members declared down (false deaths) are counted, and every packet's bytes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use super::swim::{Output, Swim, SwimId, Timer};

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub members: usize,
    /// Probability that a packet is lost.
    pub loss: f64,
    /// Extra delay of every packet to or from the starved member (member 1).
    pub starved_delay: Duration,
    /// Settling time before the join.
    pub warm_up: Duration,
    /// Members killed, one after another, after the join.
    pub kills: usize,
    /// Time between two kills (and after the last one).
    pub kill_every: Duration,
    pub seed: u64,
}

impl SimConfig {
    /// The run: 1,000 members, 5 % loss, one member's packets delayed by 800 ms.
    pub fn full() -> Self {
        SimConfig {
            members: 1_000,
            loss: 0.05,
            starved_delay: Duration::from_millis(800),
            warm_up: Duration::from_secs(30),
            kills: 5,
            kill_every: Duration::from_secs(40),
            seed: 20261124,
        }
    }

    /// A seconds-long version for CI.
    pub fn smoke() -> Self {
        SimConfig {
            members: 60,
            warm_up: Duration::from_secs(10),
            kills: 2,
            kill_every: Duration::from_secs(25),
            ..SimConfig::full()
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimReport {
    pub members: usize,
    /// Simulated time after the warm-up.
    pub observed: Duration,
    /// From the join until each member learned of it, sorted.
    pub join_known: Vec<Duration>,
    /// From the join until the last member but the starved one learned of it (`None`:
    /// some never did).
    pub join_known_by_all: Option<Duration>,
    /// Whether the starved member learned of the join before the first kill.
    pub starved_knew_join: bool,
    /// Members the joiner did not know right after its join was answered.
    pub joiner_lacked: usize,
    /// Per kill and per alive observer: kill → that observer declared it down.
    pub detections: Vec<Duration>,
    /// Per kill: kill → the last alive member but the starved one declared it down
    /// (`None`: some never did).
    pub detected_by_all: Vec<Option<Duration>>,
    /// Kills the starved member had not declared down when the next one came.
    pub kills_missed_by_starved: usize,
    /// Failed probes of members that were alive, per member-hour (the starved one's and
    /// everyone else's).
    pub false_suspicions_per_member_hour: f64,
    pub false_suspicions_of_starved: u64,
    /// Alive members declared down, per member-hour.
    pub false_deaths_per_member_hour: f64,
    pub false_deaths: u64,
    /// Members declared down while alive, by at least one member.
    pub falsely_declared_down: usize,
    /// Of the declarations: by the starved member, and of the starved member.
    pub false_deaths_by_starved: u64,
    pub false_deaths_of_starved: u64,
    /// Membership payload sent per alive member per second, after the warm-up.
    pub bytes_per_member_per_s: f64,
    /// Members that, at the end, do not know every alive member as alive.
    pub members_missing_someone: usize,
}

/// A deterministic generator (splitmix64): the simulation's only randomness.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

enum Event {
    Deliver { to: usize, packet: Vec<u8> },
    Timer { member: usize, timer: Timer<SwimId> },
}

/// The event queue: (due µs, insertion number) orders events; payloads live beside.
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Event>,
    next: u64,
}

impl Queue {
    fn push(&mut self, at_us: u64, event: Event) {
        self.next += 1;
        self.heap.push(Reverse((at_us, self.next)));
        self.events.insert(self.next, event);
    }

    fn pop_until(&mut self, end_us: u64) -> Option<(u64, Event)> {
        let Reverse((at, n)) = *self.heap.peek()?;
        if at > end_us {
            return None;
        }
        self.heap.pop();
        Some((at, self.events.remove(&n).expect("every key has its event")))
    }
}

struct Sim {
    config: SimConfig,
    members: Vec<Swim>,
    ids: Vec<SwimId>,
    index: HashMap<uuid::Uuid, usize>,
    alive: Vec<bool>,
    queue: Queue,
    dice: Dice,
    now_us: u64,
    /// Counting starts after the warm-up.
    counting: bool,
    bytes: u64,
    false_suspicions: u64,
    false_suspicions_of_starved: u64,
    false_deaths: u64,
    false_deaths_by_starved: u64,
    false_deaths_of_starved: u64,
    falsely_down: std::collections::BTreeSet<usize>,
    /// (subject, observer) → µs it was declared down (only while tracked).
    downs: HashMap<(usize, usize), u64>,
    /// Observers that declared the joiner up, with when.
    ups_of_joiner: HashMap<usize, u64>,
    joiner: usize,
}

const STARVED: usize = 1;

fn id(n: usize) -> SwimId {
    SwimId {
        node: uuid::Uuid::from_u128(n as u128 + 1),
        addr: format!("10.{}.{}.{}:8080", n >> 16, (n >> 8) & 255, n & 255),
        name: format!("node-{n}"),
        joined_at: n as u64,
        incarnation_epoch: 1,
    }
}

fn us(duration: Duration) -> u64 {
    duration.as_micros() as u64
}

impl Sim {
    fn new(config: SimConfig) -> Self {
        let n = config.members.max(3);
        let ids: Vec<SwimId> = (0..n).map(id).collect();
        let members = ids
            .iter()
            .enumerate()
            .map(|(i, id)| Swim::new(id.clone(), config.seed ^ i as u64))
            .collect();
        Sim {
            index: ids.iter().enumerate().map(|(i, id)| (id.node, i)).collect(),
            alive: vec![true; n],
            members,
            ids,
            queue: Queue::default(),
            dice: Dice(config.seed),
            now_us: 0,
            counting: false,
            bytes: 0,
            false_suspicions: 0,
            false_suspicions_of_starved: 0,
            false_deaths: 0,
            false_deaths_by_starved: 0,
            false_deaths_of_starved: 0,
            falsely_down: Default::default(),
            downs: HashMap::new(),
            ups_of_joiner: HashMap::new(),
            joiner: n - 1,
            config,
        }
    }

    fn apply(&mut self, from: usize, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send { to, packet } => {
                    let Some(&to) = self.index.get(&to.node) else { continue };
                    if self.counting {
                        self.bytes += packet.len() as u64;
                    }
                    if self.dice.chance(self.config.loss) {
                        continue;
                    }
                    let mut delay = 1_000 + self.dice.below(4_000);
                    if from == STARVED || to == STARVED {
                        delay += us(self.config.starved_delay);
                    }
                    self.queue.push(self.now_us + delay, Event::Deliver { to, packet });
                }
                Output::Schedule { after, timer } => {
                    self.queue.push(self.now_us + us(after), Event::Timer { member: from, timer });
                }
                Output::Up(member) => {
                    if self.index.get(&member.node) == Some(&self.joiner) {
                        self.ups_of_joiner.entry(from).or_insert(self.now_us);
                    }
                }
                Output::Down(member) => {
                    let Some(&subject) = self.index.get(&member.node) else { continue };
                    if self.alive[subject] {
                        if self.counting {
                            self.false_deaths += 1;
                            self.false_deaths_by_starved += u64::from(from == STARVED);
                            self.false_deaths_of_starved += u64::from(subject == STARVED);
                            self.falsely_down.insert(subject);
                        }
                    } else {
                        self.downs.entry((subject, from)).or_insert(self.now_us);
                    }
                }
                Output::ProbeFailed(member) => {
                    let Some(&subject) = self.index.get(&member.node) else { continue };
                    if self.counting && self.alive[subject] {
                        self.false_suspicions += 1;
                        if subject == STARVED {
                            self.false_suspicions_of_starved += 1;
                        }
                    }
                }
            }
        }
    }

    fn run_until(&mut self, end_us: u64) {
        while let Some((at, event)) = self.queue.pop_until(end_us) {
            self.now_us = at;
            let (member, result) = match event {
                Event::Deliver { to, packet } => {
                    if !self.alive[to] {
                        continue;
                    }
                    (to, self.members[to].handle(&packet))
                }
                Event::Timer { member, timer } => {
                    if !self.alive[member] {
                        continue;
                    }
                    (member, self.members[member].timer(timer))
                }
            };
            match result {
                Ok(outputs) => self.apply(member, outputs),
                Err(error) => tracing::trace!(%error, member, "simulated member refused input"),
            }
        }
        self.now_us = end_us;
    }

    /// Everyone alive but `subject` (and the starved member, reported apart) declared it
    /// down at this µs, if all did.
    fn all_declared_down(&self, subject: usize) -> Option<u64> {
        let mut last = 0;
        let observers = (0..self.members.len()).filter(|&o| o != subject && o != STARVED);
        for observer in observers.filter(|&o| self.alive[o]) {
            last = last.max(*self.downs.get(&(subject, observer))?);
        }
        Some(last)
    }
}

/// Runs the simulation of `config` and reports its figures.
pub fn run(config: SimConfig) -> SimReport {
    let mut sim = Sim::new(config.clone());
    let n = sim.members.len();
    let joiner = sim.joiner;
    // A settled cluster of everyone but the joiner.
    let settled: Vec<SwimId> = sim.ids[..joiner].to_vec();
    for member in 0..joiner {
        let others = settled.iter().filter(|other| **other != sim.ids[member]).cloned();
        let outputs = sim.members[member].know(others).unwrap_or_default();
        sim.apply(member, outputs);
    }
    sim.alive[joiner] = false;
    sim.run_until(us(config.warm_up));
    sim.counting = true;
    let counting_from = sim.now_us;

    // The join.
    sim.alive[joiner] = true;
    let join_at = sim.now_us;
    sim.ups_of_joiner.clear();
    // Ask a random member again each second until someone answered (the announce itself
    // may be lost). Its answer holds one packet of members (about twenty), so, as the
    // daemon will over HTTP, the joiner then takes that member's full list in one
    // exchange; without it, a joiner of a 1,000-member cluster learns the rest one probe
    // at a time.
    for attempt in 0u64.. {
        if sim.members[joiner].member_count() > 0 || attempt == 30 {
            break;
        }
        let through = sim.dice.below(joiner as u64) as usize;
        if let Ok(outputs) = sim.members[joiner].join(sim.ids[through].clone()) {
            sim.apply(joiner, outputs);
        }
        sim.run_until(join_at + (attempt + 1) * 1_000_000);
        if sim.members[joiner].member_count() > 0 {
            let list: Vec<SwimId> = sim.members[through].members().cloned().collect();
            if let Ok(outputs) = sim.members[joiner].know(list) {
                sim.apply(joiner, outputs);
            }
        }
    }
    let joiner_lacked = joiner.saturating_sub(sim.members[joiner].member_count());
    sim.run_until(join_at + us(config.kill_every));
    let mut join_known: Vec<Duration> =
        sim.ups_of_joiner.values().map(|at| Duration::from_micros(at - join_at)).collect();
    join_known.sort();
    let starved_knew_join = sim.ups_of_joiner.contains_key(&STARVED);
    let join_known_by_all = (0..joiner)
        .filter(|&o| sim.alive[o] && o != STARVED)
        .map(|o| sim.ups_of_joiner.get(&o).copied())
        .collect::<Option<Vec<u64>>>()
        .map(|ats| Duration::from_micros(ats.into_iter().max().unwrap_or(join_at) - join_at));

    // Kills: never the starved member, the joiner or member 0.
    let mut detections = Vec::new();
    let mut detected_by_all = Vec::new();
    let mut kills_missed_by_starved = 0;
    for kill in 0..config.kills {
        let subject = 2 + (kill * 7919) % (n - 3);
        sim.alive[subject] = false;
        let killed_at = sim.now_us;
        sim.run_until(killed_at + us(config.kill_every));
        for observer in (0..n).filter(|&o| o != subject && sim.alive[o]) {
            if let Some(at) = sim.downs.get(&(subject, observer)) {
                detections.push(Duration::from_micros(at - killed_at));
            }
        }
        detected_by_all
            .push(sim.all_declared_down(subject).map(|at| Duration::from_micros(at - killed_at)));
        kills_missed_by_starved += usize::from(!sim.downs.contains_key(&(subject, STARVED)));
    }

    let observed = Duration::from_micros(sim.now_us - counting_from);
    let alive = sim.alive.iter().filter(|a| **a).count();
    let member_hours = alive as f64 * observed.as_secs_f64() / 3_600.0;
    let members_missing_someone = (0..n)
        .filter(|&m| sim.alive[m])
        .filter(|&m| {
            let known: std::collections::HashSet<uuid::Uuid> =
                sim.members[m].members().map(|id| id.node).collect();
            (0..n).any(|o| o != m && sim.alive[o] && !known.contains(&sim.ids[o].node))
        })
        .count();
    detections.sort();
    SimReport {
        members: n,
        observed,
        join_known,
        join_known_by_all,
        starved_knew_join,
        joiner_lacked,
        detections,
        detected_by_all,
        kills_missed_by_starved,
        false_suspicions_per_member_hour: sim.false_suspicions as f64 / member_hours,
        false_suspicions_of_starved: sim.false_suspicions_of_starved,
        false_deaths_per_member_hour: sim.false_deaths as f64 / member_hours,
        false_deaths: sim.false_deaths,
        false_deaths_by_starved: sim.false_deaths_by_starved,
        false_deaths_of_starved: sim.false_deaths_of_starved,
        falsely_declared_down: sim.falsely_down.len(),
        bytes_per_member_per_s: sim.bytes as f64 / alive as f64 / observed.as_secs_f64(),
        members_missing_someone,
    }
}

/// The `q` quantile of sorted `durations`.
pub fn quantile(durations: &[Duration], q: f64) -> Option<Duration> {
    let last = durations.len().checked_sub(1)?;
    Some(durations[((last as f64) * q).round() as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CI-sized run: the join reaches everyone, every kill is detected by every
    /// alive member, no live member is declared down despite the loss and the starved
    /// member, and at the end everyone knows everyone alive.
    #[test]
    fn a_small_cluster_under_loss_detects_kills_and_never_kills_the_living() {
        let report = run(SimConfig::smoke());
        eprintln!("{report:#?}");
        assert!(report.join_known_by_all.is_some(), "the join did not reach everyone");
        assert_eq!(report.joiner_lacked, 0, "the joiner did not take the full list");
        assert_eq!(report.detected_by_all.len(), 2);
        assert!(report.detected_by_all.iter().all(Option::is_some), "{:?}", report.detected_by_all);
        assert_eq!(report.false_deaths, 0);
        assert_eq!(report.members_missing_someone, 0);
        assert!(report.bytes_per_member_per_s > 0.0);
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let config = SimConfig { members: 20, kills: 1, ..SimConfig::smoke() };
        let (a, b) = (run(config.clone()), run(config));
        assert_eq!(a.detections, b.detections);
        assert_eq!(a.bytes_per_member_per_s, b.bytes_per_member_per_s);
    }
}
