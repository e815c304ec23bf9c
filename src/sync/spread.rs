//! Where a pushed write goes next: a tree over the id ring, so a write reaches every
//! member once, within about log_fanout(N) hops, and no node sends it to more than
//! `fanout` peers.
//!
//! Members are placed on a ring by id. A node that must cover the members between
//! itself and `until` (exclusive at both ends; `until` = its own id means the whole
//! ring: its own writes) splits those it knows of, in ring order, into at most `fanout`
//! contiguous spans and pushes the write to the first member of each span, telling it
//! where its span ends. That member does the same within its span, and so on: when every
//! node knows the same members, each one gets the write exactly once. When views differ,
//! a member the sender did not know of is missed (anti-entropy carries the write to it),
//! and one the receiver does not know of is skipped the same way.
//!
//! Compared with relaying at random (each node passing a new write on to `fanout`
//! random peers), which needs a fan-out near ln N + 5 for 99 % of writes to reach
//! everyone and then delivers each write about `fanout` times to every node, the tree
//! delivers it once: at 50 nodes and a fan-out of 8, 49 requests a write instead of 400.

use uuid::Uuid;

use crate::cluster::Member;

/// A peer to push to, and the end of the span it must pass the write on to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub member: Member,
    /// Exclusive end of the member's span on the ring: it passes the write on to the
    /// members strictly between itself and this id. `None` when the span holds only the
    /// member itself (it passes nothing on).
    pub until: Option<Uuid>,
}

/// The position of `id` on the ring as seen from `from` (0 for `from` itself).
fn distance(from: Uuid, id: Uuid) -> u128 {
    id.as_u128().wrapping_sub(from.as_u128())
}

/// Whether `id` lies strictly between `me` and `until` on the ring (`until == me`: every
/// id but `me`).
pub fn within(me: Uuid, until: Uuid, id: Uuid) -> bool {
    let (at, end) = (distance(me, id), distance(me, until));
    at != 0 && (end == 0 || at < end)
}

/// The next hops of a write that `me` must spread to the members strictly between
/// itself and `until`: the peers it knows in that span, in ring order, cut into at most
/// `fanout` contiguous spans of near-equal size; each span's first member, with the id
/// that ends its span (the next span's first member, or `until` for the last).
pub fn hops(me: Uuid, until: Uuid, peers: &[Member], fanout: usize) -> Vec<Hop> {
    let mut span: Vec<&Member> = peers.iter().filter(|m| within(me, until, m.id)).collect();
    span.sort_by_key(|m| distance(me, m.id));
    span.dedup_by_key(|m| m.id);
    let n = span.len();
    let parts = fanout.max(1).min(n);
    let starts: Vec<usize> = (0..parts).map(|part| part * n / parts).chain([n]).collect();
    starts
        .windows(2)
        .map(|bounds| {
            let (start, end) = (bounds[0], bounds[1]);
            let until = span.get(end).map_or(until, |next| next.id);
            Hop { member: span[start].clone(), until: (end - start > 1).then_some(until) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, VecDeque};

    fn member(id: u128) -> Member {
        Member {
            id: Uuid::from_u128(id),
            name: format!("n{id}"),
            addr: format!("10.0.0.1:{}", 1 + id % 60_000),
            joined_at: 1,
            heartbeat: 1,
            state: crate::cluster::MemberState::Alive,
        }
    }

    /// Spreads one write from `origin` through nodes that all know `members`: how many
    /// times each node got it, and the hop at which each first got it.
    fn spread(origin: u128, members: &[Member], fanout: usize) -> BTreeMap<Uuid, (usize, usize)> {
        let mut got: BTreeMap<Uuid, (usize, usize)> = BTreeMap::new();
        let me = Uuid::from_u128(origin);
        let mut queue = VecDeque::from([(me, me, 0usize)]);
        let mut sends = 0;
        while let Some((node, until, depth)) = queue.pop_front() {
            let peers: Vec<Member> = members.iter().filter(|m| m.id != node).cloned().collect();
            let next = hops(node, until, &peers, fanout);
            assert!(next.len() <= fanout, "{} hops from one node", next.len());
            for hop in next {
                sends += 1;
                assert!(sends <= members.len(), "more sends than members: a loop");
                let entry = got.entry(hop.member.id).or_insert((0, depth + 1));
                entry.0 += 1;
                if let Some(until) = hop.until {
                    queue.push_back((hop.member.id, until, depth + 1));
                }
            }
        }
        got
    }

    #[test]
    fn fifty_nodes_each_get_a_write_once_within_two_hops() {
        let members: Vec<Member> = (0..50).map(|i| member(i * 7_919 + 3)).collect();
        for origin in &members {
            let got = spread(origin.id.as_u128(), &members, 8);
            assert_eq!(got.len(), 49, "every peer reached");
            assert!(got.values().all(|&(times, _)| times == 1), "each once: {got:?}");
            assert_eq!(got.values().map(|&(_, depth)| depth).max(), Some(2));
            assert!(!got.contains_key(&origin.id), "never back to the origin");
        }
    }

    #[test]
    fn a_small_cluster_is_reached_directly_and_an_empty_span_has_no_hops() {
        let members: Vec<Member> = (1..=3).map(member).collect();
        let me = Uuid::from_u128(1);
        let direct = hops(me, me, &members[1..], 8);
        assert_eq!(direct.len(), 2);
        assert!(direct.iter().all(|hop| hop.until.is_none()), "each span is one member");
        assert!(hops(me, Uuid::from_u128(2), &members, 8).is_empty(), "(1, 2) holds no one");
        let chain = hops(me, me, &members[1..], 1);
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].until, Some(me), "one span: the whole ring back to the origin");
    }

    #[test]
    fn within_wraps_around_the_ring() {
        let (me, until) = (Uuid::from_u128(u128::MAX - 1), Uuid::from_u128(5));
        assert!(within(me, until, Uuid::from_u128(u128::MAX)));
        assert!(within(me, until, Uuid::from_u128(4)));
        assert!(!within(me, until, Uuid::from_u128(5)));
        assert!(!within(me, until, me));
        assert!(within(me, me, Uuid::from_u128(5)), "until = me is the whole ring");
    }

    proptest! {
        /// Whatever the ids, cluster size and fan-out: every member is reached exactly
        /// once, no node sends to more than the fan-out, and the depth stays within
        /// ⌈log_f N⌉ + 1.
        #[test]
        fn every_member_gets_a_write_exactly_once(
            ids in prop::collection::btree_set(any::<u128>(), 1..200),
            fanout in 1usize..12,
            pick in any::<prop::sample::Index>(),
        ) {
            let members: Vec<Member> = ids.iter().map(|&id| member(id)).collect();
            let origin = members[pick.index(members.len())].id;
            let got = spread(origin.as_u128(), &members, fanout);
            prop_assert_eq!(got.len(), members.len() - 1);
            prop_assert!(got.values().all(|&(times, _)| times == 1));
            if fanout >= 2 {
                let bound = (members.len() as f64).log(fanout as f64).ceil() as usize + 1;
                let depth = got.values().map(|&(_, d)| d).max().unwrap_or(0);
                prop_assert!(depth <= bound, "depth {} > {}", depth, bound);
            }
        }
    }
}
