//! Per-client rate limits (the only user of governor): a GCRA bucket per client — its
//! token subject, else its IP — allowing `burst` requests at once and refilling at
//! `per_second`. Peers (`/internal/`) are not counted.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::RateLimit;

/// Forget idle clients every this many checks, so the table does not grow without end.
const PRUNE_EVERY: u64 = 4_096;

/// What a check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Served; this many more requests would be served right now.
    Allowed { remaining: u32 },
    /// Refused; retry after this many whole seconds (at least 1).
    Refused { retry_after_secs: u64 },
}

pub struct Limiter {
    limiter: RateLimiter<
        String,
        DefaultKeyedStateStore<String>,
        DefaultClock,
        StateInformationMiddleware,
    >,
    clock: DefaultClock,
    pub burst: u32,
    pub per_second: u32,
    checks: AtomicU64,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("burst", &self.burst).finish_non_exhaustive()
    }
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Limiter {
        let per_second = NonZeroU32::new(limit.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limit.burst).unwrap_or(per_second);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        let limiter = RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>();
        Limiter {
            limiter,
            clock: DefaultClock::default(),
            burst: burst.get(),
            per_second: per_second.get(),
            checks: AtomicU64::new(0),
        }
    }

    /// Counts one request of `client`.
    pub fn check(&self, client: &str) -> Decision {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        match self.limiter.check_key(&client.to_owned()) {
            Ok(snapshot) => Decision::Allowed { remaining: snapshot.remaining_burst_capacity() },
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision::Refused { retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64 }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_served_then_refused_per_client() {
        let limiter = Limiter::new(RateLimit { per_second: 1, burst: 3 });
        for remaining in [2, 1, 0] {
            assert_eq!(limiter.check("alice"), Decision::Allowed { remaining });
        }
        assert_eq!(limiter.check("alice"), Decision::Refused { retry_after_secs: 1 });
        // Another client has its own bucket.
        assert!(matches!(limiter.check("bob"), Decision::Allowed { .. }));
    }
}
