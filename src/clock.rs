//! The hybrid logical clock that stamps every local write.
//!
//! Why our own and not `uhlc`: we need the clock to (a) never refuse a remote timestamp
//! (convergence comes first; far-ahead ones are only counted), (b) start past the highest
//! timestamp already on disk, and (c) run on a per-node manual clock in tests. The
//! algorithm is a dozen lines; owning it keeps those three properties visible.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::Timestamp;

/// Physical time in milliseconds since the Unix epoch.
pub trait PhysicalClock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The machine's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to: for tests (skew, ties, time travel).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(ms: u64) -> Self {
        ManualClock(AtomicU64::new(ms))
    }

    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl PhysicalClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The wall clock shifted by a fixed offset: a node whose clock is wrong (tests).
#[derive(Debug, Clone, Copy)]
pub struct SkewedClock {
    pub offset_ms: i64,
}

impl PhysicalClock for SkewedClock {
    fn now_ms(&self) -> u64 {
        SystemClock.now_ms().saturating_add_signed(self.offset_ms)
    }
}

impl<C: PhysicalClock + ?Sized> PhysicalClock for Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

/// What [`Hlc::observe`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    InBounds,
    /// The remote timestamp was this many ms ahead of our physical clock, more than the
    /// allowed skew. It is still observed (convergence first), but worth a log line.
    AheadBy(u64),
}

/// Hybrid logical clock: never goes backwards, and moves past every timestamp it observes,
/// so a write made after seeing another write always wins over it.
pub struct Hlc {
    last: AtomicU64,
    physical: Box<dyn PhysicalClock>,
    max_skew_ms: u64,
    skewed_observations: AtomicU64,
}

impl Hlc {
    pub fn new(physical: impl PhysicalClock, max_skew_ms: u64) -> Self {
        Hlc {
            last: AtomicU64::new(0),
            physical: Box::new(physical),
            max_skew_ms,
            skewed_observations: AtomicU64::new(0),
        }
    }

    /// A fresh timestamp, greater than every one handed out or observed before.
    pub fn now(&self) -> Timestamp {
        let physical = Timestamp::from_parts(self.physical.now_ms(), 0).raw();
        let previous = self
            .last
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(physical.max(last.saturating_add(1)))
            })
            .expect("the update closure always returns Some");
        Timestamp::from_raw(physical.max(previous.saturating_add(1)))
    }

    /// Moves the clock past `remote`, so the next local write wins over it.
    pub fn observe(&self, remote: Timestamp) -> Observation {
        self.last.fetch_max(remote.raw(), Ordering::SeqCst);
        let physical_ms = self.physical.now_ms();
        let ahead = remote.millis().saturating_sub(physical_ms);
        if ahead > self.max_skew_ms {
            self.skewed_observations.fetch_add(1, Ordering::Relaxed);
            Observation::AheadBy(ahead)
        } else {
            Observation::InBounds
        }
    }

    /// How many observed timestamps were further ahead than the allowed skew.
    pub fn skewed_observations(&self) -> u64 {
        self.skewed_observations.load(Ordering::Relaxed)
    }

    /// Milliseconds of the physical clock (for `created_at`-style wall times).
    pub fn physical_ms(&self) -> u64 {
        self.physical.now_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Now,
        Observe(u64),
        MovePhysical(u64),
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Now),
            (0u64..1 << 40).prop_map(Step::Observe),
            (0u64..10_000).prop_map(Step::MovePhysical),
        ]
    }

    proptest! {
        /// Timestamps handed out strictly increase, and each one is past everything
        /// observed before it, whatever the physical clock does (including going back).
        #[test]
        fn never_backwards_and_past_every_observation(steps in prop::collection::vec(arb_step(), 1..64)) {
            let physical = Arc::new(ManualClock::new(1_000_000));
            let hlc = Hlc::new(physical.clone(), 1_000);
            let mut highest_seen = Timestamp::default();
            let mut last_issued: Option<Timestamp> = None;
            for step in steps {
                match step {
                    Step::Now => {
                        let ts = hlc.now();
                        prop_assert!(ts > highest_seen);
                        if let Some(last) = last_issued {
                            prop_assert!(ts > last);
                        }
                        last_issued = Some(ts);
                        highest_seen = ts;
                    }
                    Step::Observe(raw) => {
                        let ts = Timestamp::from_raw(raw);
                        hlc.observe(ts);
                        highest_seen = highest_seen.max(ts);
                    }
                    Step::MovePhysical(ms) => physical.set(ms),
                }
            }
        }
    }

    #[test]
    fn follows_physical_time_when_it_is_ahead() {
        let physical = Arc::new(ManualClock::new(5_000));
        let hlc = Hlc::new(physical.clone(), 1_000);
        assert_eq!(hlc.now(), Timestamp::from_parts(5_000, 0));
        assert_eq!(hlc.now(), Timestamp::from_parts(5_000, 1));
        physical.set(6_000);
        assert_eq!(hlc.now(), Timestamp::from_parts(6_000, 0));
    }

    #[test]
    fn counts_far_ahead_observations_but_still_moves() {
        let hlc = Hlc::new(ManualClock::new(5_000), 1_000);
        assert_eq!(hlc.observe(Timestamp::from_parts(5_500, 0)), Observation::InBounds);
        assert_eq!(hlc.observe(Timestamp::from_parts(9_000, 0)), Observation::AheadBy(4_000));
        assert_eq!(hlc.skewed_observations(), 1);
        assert!(hlc.now() > Timestamp::from_parts(9_000, 0));
    }
}
