//! The hybrid logical clock that stamps every local write.
//!
//! Why our own and not `uhlc`: we need the clock to (a) refuse a remote timestamp more
//! than `max_clock_skew` ahead of our physical clock without moving (one far-future
//! record must not drag every later write with it, SPEC §1), (b) start past the highest
//! plausible timestamp already on disk, (c) fail a local write it cannot stamp above
//! the version it replaces instead of saturating, and (d) run on a per-node manual clock
//! in tests. The algorithm is a few dozen lines; owning it keeps those visible.

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
    /// Within `max_clock_skew` of our physical clock: the clock moved past it.
    InBounds,
    /// The remote timestamp was this many ms ahead of our physical clock, more than the
    /// allowed skew: refused, and the clock did not move. The record it stamps must not
    /// be merged now (anti-entropy offers it again once our clock has caught up).
    Refused { ahead_ms: u64 },
}

/// A local write could not be stamped above the version it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the current version of this key is stamped {ahead_ms} ms ahead of this node's clock \
     (more than max_clock_skew): a write now would not take effect; retry once the clocks agree"
)]
pub struct ClockBehind {
    pub ahead_ms: u64,
}

/// Hybrid logical clock: never goes backwards, and moves past every timestamp it
/// observes within the allowed skew, so a write made after seeing another write always
/// wins over it.
pub struct Hlc {
    last: AtomicU64,
    physical: Box<dyn PhysicalClock>,
    max_skew_ms: u64,
    refused: AtomicU64,
    /// The furthest ahead (ms) a refused timestamp was, since start.
    furthest_refused_ms: AtomicU64,
}

impl Hlc {
    pub fn new(physical: impl PhysicalClock, max_skew_ms: u64) -> Self {
        Hlc {
            last: AtomicU64::new(0),
            physical: Box::new(physical),
            max_skew_ms,
            refused: AtomicU64::new(0),
            furthest_refused_ms: AtomicU64::new(0),
        }
    }

    /// A fresh timestamp, greater than every one handed out or observed before (it
    /// cannot saturate: observations are bounded by the physical clock plus the skew).
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

    /// Whether `remote` is within the allowed skew of our physical clock, without
    /// moving or counting anything.
    pub fn check(&self, remote: Timestamp) -> Observation {
        let ahead_ms = remote.millis().saturating_sub(self.physical.now_ms());
        if ahead_ms > self.max_skew_ms {
            Observation::Refused { ahead_ms }
        } else {
            Observation::InBounds
        }
    }

    /// Moves the clock past `remote`, so the next local write wins over it — unless
    /// `remote` is further ahead than the allowed skew: then the clock stays where it
    /// is and the refusal is counted.
    pub fn observe(&self, remote: Timestamp) -> Observation {
        let seen = self.check(remote);
        match seen {
            Observation::InBounds => {
                self.last.fetch_max(remote.raw(), Ordering::SeqCst);
            }
            Observation::Refused { ahead_ms } => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                self.furthest_refused_ms.fetch_max(ahead_ms, Ordering::Relaxed);
            }
        }
        seen
    }

    /// A timestamp for a local write replacing a version stamped `floor`: greater than
    /// `floor` and than every timestamp handed out before. Fails when `floor` is further
    /// ahead than the allowed skew (the write would not take effect).
    pub fn next_after(&self, floor: Timestamp) -> Result<Timestamp, ClockBehind> {
        if let Observation::Refused { ahead_ms } = self.check(floor) {
            return Err(ClockBehind { ahead_ms });
        }
        self.last.fetch_max(floor.raw(), Ordering::SeqCst);
        let ts = self.now();
        if ts > floor {
            Ok(ts)
        } else {
            Err(ClockBehind { ahead_ms: floor.millis().saturating_sub(self.physical_ms()) })
        }
    }

    /// How many remote timestamps were refused as too far ahead.
    pub fn refused_observations(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// How far ahead of our physical clock (ms) the furthest refused timestamp was: a
    /// large value means our clock is behind our peers', or a peer's is far ahead.
    pub fn furthest_refused_ms(&self) -> u64 {
        self.furthest_refused_ms.load(Ordering::Relaxed)
    }

    /// How far ahead of our physical clock (ms) a remote timestamp may be.
    pub fn max_skew_ms(&self) -> u64 {
        self.max_skew_ms
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
        /// observed (within the skew) before it, whatever the physical clock does
        /// (including going back).
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
                        if hlc.observe(ts) == Observation::InBounds {
                            highest_seen = highest_seen.max(ts);
                        }
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
    fn refuses_far_ahead_observations_without_moving() {
        let hlc = Hlc::new(ManualClock::new(5_000), 1_000);
        assert_eq!(hlc.observe(Timestamp::from_parts(5_500, 0)), Observation::InBounds);
        assert_eq!(
            hlc.observe(Timestamp::from_parts(9_000, 0)),
            Observation::Refused { ahead_ms: 4_000 }
        );
        assert!(matches!(hlc.observe(Timestamp::from_raw(u64::MAX)), Observation::Refused { .. }));
        assert_eq!(hlc.refused_observations(), 2);
        let next = hlc.now();
        assert!(next > Timestamp::from_parts(5_500, 0) && next < Timestamp::from_parts(5_501, 0));
    }

    #[test]
    fn a_write_over_a_far_future_version_fails_instead_of_losing() {
        let physical = Arc::new(ManualClock::new(5_000));
        let hlc = Hlc::new(physical.clone(), 1_000);
        let future = Timestamp::from_parts(60_000, 0);
        assert_eq!(hlc.next_after(future), Err(ClockBehind { ahead_ms: 55_000 }));
        assert!(hlc.next_after(Timestamp::from_raw(u64::MAX)).is_err());
        // Within the skew the write goes above it; once our clock catches up, too.
        let near = Timestamp::from_parts(5_900, 7);
        assert!(hlc.next_after(near).unwrap() > near);
        physical.set(60_000);
        assert!(hlc.next_after(future).unwrap() > future);
    }
}
