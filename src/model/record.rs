use std::cmp::Ordering;

use super::Version;

/// What a record holds: JSON bytes, or a tombstone left by a delete.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Value {
    Live(Vec<u8>),
    Tombstone,
}

/// One write of one key: its version and its value. Records replicate as a whole.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Record {
    pub version: Version,
    pub value: Value,
}

impl Record {
    pub fn is_live(&self) -> bool {
        matches!(self.value, Value::Live(_))
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
    /// same write, unless a peer is buggy or forged one; then the value bytes decide
    /// (a tombstone loses to any live value), so the order stays total and every replica
    /// that saw the same writes keeps the same bytes.
    pub fn supersedes(&self, current: &Record) -> bool {
        self.precedence(current) == Ordering::Greater
    }

    fn precedence(&self, other: &Record) -> Ordering {
        self.version.cmp(&other.version).then_with(|| match (&self.value, &other.value) {
            (Value::Tombstone, Value::Tombstone) => Ordering::Equal,
            (Value::Tombstone, Value::Live(_)) => Ordering::Less,
            (Value::Live(_), Value::Tombstone) => Ordering::Greater,
            (Value::Live(a), Value::Live(b)) => a.cmp(b),
        })
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
        (0u64..4, 0u64..3, 0u128..3, 0u128..2, prop::option::of(0u8..3)).prop_map(
            |(ts, joined_at, uuid, node, value)| Record {
                version: Version {
                    ts: Timestamp::from_raw(ts),
                    origin: Origin { node: NodeId(Uuid::from_u128(node)), joined_at },
                    uuid: Uuid::from_u128(uuid),
                },
                value: match value {
                    Some(byte) => Value::Live(vec![byte]),
                    None => Value::Tombstone,
                },
            },
        )
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

        #[test]
        fn winner_is_never_beaten_by_an_input(writes in prop::collection::vec(arb_record(), 1..10)) {
            let winner = writes.iter().cloned().reduce(Record::merge).unwrap();
            for write in &writes {
                prop_assert!(!write.supersedes(&winner));
            }
        }
    }
}
