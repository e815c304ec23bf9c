use std::cmp::Ordering;
use std::fmt;
use uuid::Uuid;

use super::Origin;

/// A hybrid-logical-clock reading packed into one `u64`: physical milliseconds in the
/// high 48 bits, a logical counter in the low 16.
///
/// Packing makes the order a plain integer comparison, and a counter that overflows
/// carries into the millisecond part, so "strictly greater" is always one `+ 1` away.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    pub const LOGICAL_BITS: u32 = 16;
    const MAX_MILLIS: u64 = (1 << (64 - Self::LOGICAL_BITS)) - 1;

    /// Builds a timestamp; milliseconds beyond 48 bits (year 10889) saturate.
    pub fn from_parts(millis: u64, counter: u16) -> Self {
        Timestamp((millis.min(Self::MAX_MILLIS) << Self::LOGICAL_BITS) | u64::from(counter))
    }

    pub const fn from_raw(raw: u64) -> Self {
        Timestamp(raw)
    }

    pub const fn raw(self) -> u64 {
        self.0
    }

    pub const fn millis(self) -> u64 {
        self.0 >> Self::LOGICAL_BITS
    }

    pub const fn counter(self) -> u16 {
        (self.0 & 0xffff) as u16
    }

    /// The smallest timestamp greater than `self`.
    pub const fn next(self) -> Self {
        Timestamp(self.0.saturating_add(1))
    }

    /// Parses the `millis:counter` form written by `Display`.
    pub fn parse(text: &str) -> Option<Self> {
        let (millis, counter) = text.split_once(':')?;
        let millis: u64 = millis.parse().ok()?;
        if millis > Self::MAX_MILLIS {
            return None;
        }
        Some(Self::from_parts(millis, counter.parse().ok()?))
    }
}

/// `millis:counter`, e.g. `1763779211000:3`. A string rather than a JSON number because
/// the packed value does not fit a double exactly.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.millis(), self.counter())
    }
}

/// The identity of one write: when, by whom, and a fresh UUID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Version {
    pub ts: Timestamp,
    pub origin: Origin,
    pub uuid: Uuid,
}

/// Last writer wins, as a total order (SPEC §1):
/// 1. the higher `ts` wins;
/// 2. equal `ts`: the older writer (smaller `origin.joined_at`) wins;
/// 3. still equal: the greater `uuid` (16 bytes, big-endian) wins;
/// 4. still equal (only a forged or buggy write can get here): the greater node id.
///
/// `a > b` means `a` wins over `b`.
impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.ts
            .cmp(&other.ts)
            .then_with(|| other.origin.joined_at.cmp(&self.origin.joined_at))
            .then_with(|| self.uuid.as_bytes().cmp(other.uuid.as_bytes()))
            .then_with(|| self.origin.node.0.as_bytes().cmp(other.origin.node.0.as_bytes()))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Version {
    /// The HTTP entity tag of this version (quotes included).
    pub fn etag(&self) -> String {
        format!("\"{}/{}/{}\"", self.ts, self.origin.node, self.uuid.hyphenated())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeId;

    fn version(ts: u64, joined_at: u64, uuid: u128) -> Version {
        Version {
            ts: Timestamp::from_raw(ts),
            origin: Origin { node: NodeId(Uuid::from_u128(7)), joined_at },
            uuid: Uuid::from_u128(uuid),
        }
    }

    #[test]
    fn higher_ts_wins_whatever_the_rest() {
        assert!(version(2, 900, 0) > version(1, 1, u128::MAX));
    }

    #[test]
    fn equal_ts_older_node_wins() {
        assert!(version(5, 10, 0) > version(5, 20, u128::MAX));
    }

    #[test]
    fn equal_ts_and_age_greater_uuid_wins() {
        assert!(version(5, 10, 2) > version(5, 10, 1));
    }

    #[test]
    fn timestamp_text_round_trips() {
        let ts = Timestamp::from_parts(1_763_779_211_000, 3);
        assert_eq!(ts.to_string(), "1763779211000:3");
        assert_eq!(Timestamp::parse("1763779211000:3"), Some(ts));
        assert_eq!(Timestamp::parse("1763779211000"), None);
        assert_eq!(Timestamp::parse("x:1"), None);
    }

    #[test]
    fn counter_overflow_carries_into_millis() {
        let ts = Timestamp::from_parts(10, u16::MAX).next();
        assert_eq!((ts.millis(), ts.counter()), (11, 0));
    }
}
