//! The rules that keep deletes deleted and let no peer's word destroy data. Pure
//! functions of what the two sides say, unit- and property-tested.
//!
//! **Purge horizon.** A node purges a tombstone only once it is older than
//! `tombstone_ttl`, and before it does it raises its purge horizon `H` past it (durably):
//! every tombstone a node ever purged (or refused as expired) has `ts < H`. A record a
//! tombstone superseded has `ts ≤` the tombstone's, so:
//!
//! 1. a record of ours that the peer lacks entirely and with `ts ≥ H(peer)` cannot have
//!    been deleted by anything the peer purged: it is pushed as usual;
//! 2. one with `ts < H(peer)` may have been: we drop it (if it is still that version),
//!    and never push it;
//! 3. symmetrically, a node never takes a live record for a key it lacks with
//!    `ts < H(own)` ([`crate::service::ReplicaService::merge`]).
//!
//! So no replica can bring back what another purged, whichever of them was cut off,
//! for how long, or with whom (two nodes cut off together each still hold what the other
//! lacks, and rule 2 applies when they meet anyone who purged). Nothing is discarded
//! wholesale: records at or above the horizon always survive.
//!
//! **What a peer may claim.** An honest node's horizon is at most `now − TTL` of its
//! clock. A horizon past `now − TTL + max_clock_skew` of *our* clock, or a last contact
//! in our future, is a protocol error and changes nothing ([`check_claims`]). Hence no
//! peer, honest or not, can make us drop a record younger than `TTL − skew`: no write
//! acknowledged within the last `tombstone_ttl` is ever lost. (All nodes must run with
//! the same `tombstone_ttl`.)
//!
//! **Rebasing** is only about readiness: when a peer's horizon is past our last contact
//! ([`must_rebase`]), our copy may hold data deleted meanwhile, so we stop serving until
//! a round with such a peer has applied rule 2.

use crate::model::{Record, Timestamp};
use crate::service::SyncState;

/// Our side of the checks: our clock, TTL and allowed skew (ms).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub now_ms: u64,
    pub tombstone_ttl_ms: u64,
    pub max_skew_ms: u64,
}

/// Refuses claims our own clock proves impossible (see the module doc).
pub fn check_claims(theirs: &SyncState, bounds: Bounds) -> Result<(), String> {
    let latest_horizon =
        (bounds.now_ms + bounds.max_skew_ms).saturating_sub(bounds.tombstone_ttl_ms);
    if theirs.purge_horizon > latest_horizon {
        return Err(format!(
            "purge horizon {} ms is {} ms later than now − tombstone_ttl + max_clock_skew \
             allows (is its tombstone_ttl shorter than ours, or its clock far ahead?)",
            theirs.purge_horizon,
            theirs.purge_horizon - latest_horizon
        ));
    }
    if let Some(contact) = theirs.last_contact {
        if contact > bounds.now_ms + bounds.max_skew_ms {
            return Err(format!(
                "last contact {contact} ms is {} ms in our future",
                contact - bounds.now_ms
            ));
        }
    }
    Ok(())
}

/// True when the peer purged tombstones written after our last contact: our copy may
/// hold data deleted meanwhile. A node that never completed a round is not serving yet
/// anyway, so it has nothing to rebase.
pub fn must_rebase(ours: &SyncState, theirs: &SyncState) -> bool {
    ours.last_contact.is_some_and(|contact| theirs.purge_horizon > contact)
}

/// Rule 2: a record of ours that a peer with horizon `peer_horizon_ms` lacks entirely
/// may have been deleted there, and must go.
pub fn may_be_purged_delete(record: &Record, peer_horizon_ms: u64) -> bool {
    record.version.ts < Timestamp::from_parts(peer_horizon_ms, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeId, Origin, Value, Version};
    use proptest::prelude::*;

    fn record(ts: u64, joined_at: u64, uuid: u128, live: bool) -> Record {
        Record {
            version: Version {
                ts: Timestamp::from_raw(ts),
                origin: Origin { node: NodeId(uuid::Uuid::from_u128(1)), joined_at },
                uuid: uuid::Uuid::from_u128(uuid),
            },
            value: if live { Value::Live(b"{}".to_vec()) } else { Value::Tombstone },
            expires_at: None,
        }
    }

    const BOUNDS: Bounds = Bounds { now_ms: 100_000, tombstone_ttl_ms: 10_000, max_skew_ms: 1_000 };

    #[test]
    fn claims_past_our_clock_are_refused() {
        let claim = |purge_horizon, last_contact| SyncState { purge_horizon, last_contact };
        assert!(check_claims(&claim(0, None), BOUNDS).is_ok());
        assert!(check_claims(&claim(91_000, Some(101_000)), BOUNDS).is_ok());
        assert!(check_claims(&claim(91_001, Some(100_000)), BOUNDS).is_err());
        assert!(check_claims(&claim(u64::MAX, None), BOUNDS).is_err());
        assert!(check_claims(&claim(0, Some(101_001)), BOUNDS).is_err());
        assert!(check_claims(&claim(0, Some(u64::MAX)), BOUNDS).is_err());
    }

    #[test]
    fn rebase_follows_the_peer_horizon_and_our_last_contact() {
        let state = |purge_horizon, last_contact| SyncState { purge_horizon, last_contact };
        assert!(must_rebase(&state(0, Some(100)), &state(150, Some(400))));
        assert!(!must_rebase(&state(150, Some(400)), &state(0, Some(100))));
        assert!(!must_rebase(&state(0, None), &state(150, Some(400))));
    }

    proptest! {
        /// Soundness of rule 2: whatever a purged tombstone superseded is droppable
        /// against the purger's horizon.
        #[test]
        fn what_a_purged_tombstone_superseded_is_always_dropped(
            ts_r in 0u64..1 << 40, ts_t in 0u64..1 << 40, horizon_ms in 0u64..1 << 24,
            ja in 0u64..4, jb in 0u64..4, ua in 0u128..4, ub in 0u128..4,
        ) {
            let deleted = record(ts_r, ja, ua, true);
            let tombstone = record(ts_t, jb, ub, false);
            let purged = tombstone.version.ts < Timestamp::from_parts(horizon_ms, 0);
            if tombstone.supersedes(&deleted) && purged {
                prop_assert!(may_be_purged_delete(&deleted, horizon_ms));
            }
        }

        /// No claim that passes the checks can make us drop a record younger than
        /// TTL − skew by our clock.
        #[test]
        fn accepted_claims_never_drop_recent_writes(
            horizon in 0u64..200_000, age_ms in 0u64..9_000, counter in 0u16..10,
        ) {
            let claim = SyncState { purge_horizon: horizon, last_contact: None };
            let written = Timestamp::from_parts(BOUNDS.now_ms - age_ms, counter);
            let recent = record(written.raw(), 1, 1, true);
            if check_claims(&claim, BOUNDS).is_ok() {
                prop_assert!(!may_be_purged_delete(&recent, horizon));
            }
        }
    }
}
