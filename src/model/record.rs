use std::cmp::Ordering;

use super::Version;

/// What a record holds: JSON bytes, or a tombstone left by a delete.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Value {
    Live(Vec<u8>),
    Tombstone,
}

/// One write of one key: its version, its value, and when it stops being readable.
/// Records replicate as a whole.
///
/// **Expiry.** `expires_at` (ms since the epoch) is set by the writer (its HLC plus the
/// TTL) and travels with the record, so every node reads the write as absent from the
/// same instant on ([`Record::is_visible`]) without asking anyone. Once due, each node
/// rewrites its copy to the *expired form* ([`Record::expired`]): the same version, the
/// value dropped. Both forms hash alike in the Merkle tree (it covers key and version),
/// and the expired form supersedes the live one of the same version, so replicas that
/// rewrite at slightly different instants neither churn nor resurrect anything; the
/// expired form is then purged like a tombstone, under the same rules.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Record {
    pub version: Version,
    pub value: Value,
    pub expires_at: Option<u64>,
}

impl Record {
    /// A record that never expires.
    pub fn new(version: Version, value: Value) -> Record {
        Record { version, value, expires_at: None }
    }

    /// Whether the stored form holds a value (an expired-but-not-yet-rewritten write
    /// does; see [`Record::is_visible`] for what a reader may see).
    pub fn is_live(&self) -> bool {
        matches!(self.value, Value::Live(_))
    }

    /// Whether the expiry instant has come at `now_ms`.
    pub fn is_due(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now_ms)
    }

    /// Whether a reader at `now_ms` sees a value: live and not due.
    pub fn is_visible(&self, now_ms: u64) -> bool {
        self.is_live() && !self.is_due(now_ms)
    }

    /// The expired form of an expiring write: same version and expiry, no value. A
    /// record without expiry is returned as it is.
    pub fn expired(self) -> Record {
        match self.expires_at {
            Some(_) => Record { value: Value::Tombstone, ..self },
            None => self,
        }
    }

    pub fn live_bytes(&self) -> Option<&[u8]> {
        match &self.value {
            Value::Live(bytes) => Some(bytes),
            Value::Tombstone => None,
        }
    }

    /// The one conflict rule: does `self` replace `current`?
    ///
    /// Versions decide (see [`Version`]'s order). Two records with equal versions are the
    /// same write, in its live or expired form (the expired form wins), or a peer is
    /// buggy or forged one; then the expiry, the form and the value bytes decide (a
    /// delete's tombstone loses to any live value), so the order stays total and every
    /// replica that saw the same writes ends with the same bytes. The expiry comes
    /// before the form because rewriting to the expired form keeps version and expiry:
    /// then a replica that rewrote a record before a merge ends where one that rewrote
    /// after it does, even when a forged record shares the version with another expiry.
    pub fn supersedes(&self, current: &Record) -> bool {
        self.precedence(current) == Ordering::Greater
    }

    fn precedence(&self, other: &Record) -> Ordering {
        self.version
            .cmp(&other.version)
            .then_with(|| self.expires_at.cmp(&other.expires_at))
            .then_with(|| self.form().cmp(&other.form()))
            .then_with(|| self.live_bytes().cmp(&other.live_bytes()))
    }

    /// Ranks the forms one write can take: a delete's tombstone, a value, an expired value.
    fn form(&self) -> u8 {
        match (&self.value, self.expires_at) {
            (Value::Tombstone, None) => 0,
            (Value::Live(_), _) => 1,
            (Value::Tombstone, Some(_)) => 2,
        }
    }

    /// Merge of two records of one key: the winner. Commutative, associative, idempotent.
    pub fn merge(a: Record, b: Record) -> Record {
        if b.supersedes(&a) {
            b
        } else {
            a
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeId, Origin, Timestamp};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use uuid::Uuid;

    /// Small domains so that ties on ts, age and uuid actually happen.
    fn arb_record() -> impl Strategy<Value = Record> {
        (
            (0u64..4, 0u64..3, 0u128..3, 0u128..2),
            prop::option::of(0u8..3),
            prop::option::of(0u64..3),
            any::<bool>(),
        )
            .prop_map(|((ts, joined_at, uuid, node), value, expires_at, expired)| {
                let record = Record {
                    version: Version {
                        ts: Timestamp::from_raw(ts),
                        origin: Origin { node: NodeId(Uuid::from_u128(node)), joined_at },
                        uuid: Uuid::from_u128(uuid),
                    },
                    value: match value {
                        Some(byte) => Value::Live(vec![byte]),
                        None => Value::Tombstone,
                    },
                    expires_at,
                };
                // Some writes reach a replica already in their expired form.
                if expired {
                    record.expired()
                } else {
                    record
                }
            })
    }

    /// A replica's state: key → record, fed writes one at a time through merge.
    fn replay(writes: &[(u8, Record)]) -> BTreeMap<u8, Record> {
        let mut state: BTreeMap<u8, Record> = BTreeMap::new();
        for (key, record) in writes {
            let merged = match state.remove(key) {
                Some(current) => Record::merge(current, record.clone()),
                None => record.clone(),
            };
            state.insert(*key, merged);
        }
        state
    }

    fn write(ts: u64, value: Value, expires_at: Option<u64>) -> Record {
        let id = Uuid::from_u128(1);
        let origin = Origin { node: NodeId(id), joined_at: 0 };
        Record {
            version: Version { ts: Timestamp::from_raw(ts), origin, uuid: id },
            value,
            expires_at,
        }
    }

    /// Found by CI: a forged record sharing a version with a live expiring write, with
    /// another expiry, in its expired form. Rewriting the live one before the merge
    /// must end where rewriting after it does.
    #[test]
    fn a_forged_twin_with_another_expiry_merges_the_same_before_and_after_a_rewrite() {
        let live = write(3, Value::Live(vec![1]), Some(1));
        let twin = write(3, Value::Tombstone, Some(0));
        let after = Record::merge(live.clone(), twin.clone()).expired();
        let before = Record::merge(live.expired(), twin).expired();
        assert_eq!(before, after);
        assert_eq!(after.expires_at, Some(1));
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_record(), b in arb_record()) {
            prop_assert_eq!(Record::merge(a.clone(), b.clone()), Record::merge(b, a));
        }

        #[test]
        fn merge_is_associative(a in arb_record(), b in arb_record(), c in arb_record()) {
            let left = Record::merge(Record::merge(a.clone(), b.clone()), c.clone());
            let right = Record::merge(a, Record::merge(b, c));
            prop_assert_eq!(left, right);
        }

        #[test]
        fn merge_is_idempotent(a in arb_record()) {
            prop_assert_eq!(Record::merge(a.clone(), a.clone()), a);
        }

        #[test]
        fn any_permutation_yields_identical_state(
            writes in prop::collection::vec((0u8..4, arb_record()), 0..24),
            seed in any::<u64>(),
        ) {
            let mut shuffled = writes.clone();
            // A deterministic Fisher-Yates driven by the seed.
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(replay(&writes), replay(&shuffled));
        }

        /// A replica that rewrote a due write to its expired form, at any point, ends
        /// in the same state as one that saw the expired form only: rewriting commutes
        /// with every merge.
        #[test]
        fn expiring_in_between_merges_changes_nothing(
            writes in prop::collection::vec((0u8..4, arb_record()), 0..16),
            at in 0usize..16,
        ) {
            let expire_all = |state: BTreeMap<u8, Record>| -> BTreeMap<u8, Record> {
                state.into_iter().map(|(key, record)| (key, record.expired())).collect()
            };
            let at = at.min(writes.len());
            let mut midway = expire_all(replay(&writes[..at]));
            for (key, record) in &writes[at..] {
                let merged = match midway.remove(key) {
                    Some(current) => Record::merge(current, record.clone()),
                    None => record.clone(),
                };
                midway.insert(*key, merged);
            }
            prop_assert_eq!(expire_all(midway), expire_all(replay(&writes)));
        }

        /// The expired form of a write wins over its live form, so a peer still
        /// holding the live form can never bring the value back.
        #[test]
        fn the_expired_form_supersedes_the_live_one(a in arb_record()) {
            let expired = a.clone().expired();
            prop_assert!(!a.supersedes(&expired));
            if a.expires_at.is_some() && a.is_live() {
                prop_assert!(expired.supersedes(&a));
                prop_assert!(!expired.is_visible(0));
            }
        }

        #[test]
        fn winner_is_never_beaten_by_an_input(writes in prop::collection::vec(arb_record(), 1..10)) {
            let winner = writes.iter().cloned().reduce(Record::merge).unwrap();
            for write in &writes {
                prop_assert!(!write.supersedes(&winner));
            }
        }
    }
}
