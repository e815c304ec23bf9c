//! Heartbeat gossip membership with suspicion, as a pure state machine.
//!
//! Every member owns a heartbeat counter that only it increases (each gossip round).
//! Nodes exchange their whole member list; for each member the entry with the higher
//! heartbeat wins. A member whose heartbeat has not moved for `suspect_after` becomes
//! suspect, after `dead_after` dead, and after `forget_after` it is forgotten. A member
//! that hears itself called suspect or dead refutes it by bumping its heartbeat. A
//! graceful leave is a final heartbeat with state `left`.
//!
//! What gossip cannot do: a member's address, name and join time change only when that
//! member itself says so (first-hand: the sender of a signed gossip request, or the
//! peer we dialled); second-hand gossip moves heartbeats and states only. A forgotten
//! member is re-admitted only first-hand, so two nodes cannot hand a dead member (or
//! ten thousand fake ones) back and forth for ever. At most [`MAX_MEMBERS`] are held
//! and gossiped; entries with an over-long name or an address that is not `host:port`
//! are dropped. Heartbeat arithmetic saturates.
//!
//! SWIM (`cluster::swim`) is the failure detector: once SWIM knows a member (it is
//! *tracked*), SWIM's view alone moves it between alive, suspect and dead
//! ([`Membership::apply_swim`]), and heartbeats only carry its address, name and
//! leaving. The heartbeat timeouts judge only members SWIM has not reached yet. So the
//! whole-list exchange can run slowly (its interval grows with the cluster, see
//! `gossip::gossip_loop`) without stale heartbeats raising the dead or silence killing
//! the living. A member that left stays left whatever SWIM says, until its own newer
//! heartbeat says it is back.
//!
//! The clock (`now_ms`) and the randomness are passed in, so every rule is unit-tested.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::NodeId;

use super::swim::{Liveness, SwimId};

/// The most members a node holds (and so gossips).
pub const MAX_MEMBERS: usize = 4_096;
/// The longest member name accepted (the config allows 128 bytes).
pub const MAX_NAME_BYTES: usize = 128;
/// The longest `host:port` accepted (a 253-byte DNS name, a colon, a port).
pub const MAX_ADDR_BYTES: usize = 259;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Dead,
    Left,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }
}

/// One member as gossiped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: uuid::Uuid,
    pub name: String,
    pub addr: String,
    pub joined_at: u64,
    pub heartbeat: u64,
    pub state: MemberState,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub suspect_after_ms: u64,
    pub dead_after_ms: u64,
    pub forget_after_ms: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    member: Member,
    /// When this member's heartbeat last moved (our clock).
    heard_at_ms: u64,
    /// SWIM knows this member: its liveness is SWIM's, not the heartbeat timeouts'.
    tracked: bool,
}

#[derive(Debug, Clone)]
pub struct Membership {
    me: NodeId,
    timeouts: Timeouts,
    entries: BTreeMap<uuid::Uuid, Entry>,
    /// Members forgotten, and when (our clock): ignored when heard of second-hand for
    /// `forget_after` more.
    forgotten: BTreeMap<uuid::Uuid, u64>,
}

/// True when `member`'s fields are ones we could hold and gossip on.
fn well_formed(member: &Member) -> bool {
    let addr_ok = member.addr.len() <= MAX_ADDR_BYTES
        && member.addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|port| port > 0)
                && host.chars().all(|c| c.is_ascii_alphanumeric() || "-.[]:_".contains(c))
        });
    addr_ok && member.name.len() <= MAX_NAME_BYTES && !member.name.chars().any(char::is_control)
}

impl Membership {
    pub fn new(me: Member, timeouts: Timeouts, now_ms: u64) -> Self {
        let id = NodeId(me.id);
        let mut entries = BTreeMap::new();
        entries.insert(me.id, Entry { member: me, heard_at_ms: now_ms, tracked: false });
        Membership { me: id, timeouts, entries, forgotten: BTreeMap::new() }
    }

    pub fn me(&self) -> &Member {
        &self.entries[&self.me.0].member
    }

    /// One gossip round: our heartbeat moves, silent members SWIM does not track age.
    /// `scale` stretches the suspect and dead timeouts as the rounds slow down.
    pub fn tick(&mut self, now_ms: u64, scale: u64) {
        let me = self.me.0;
        let timeouts = self.timeouts;
        if let Some(entry) = self.entries.get_mut(&me) {
            if entry.member.state != MemberState::Left {
                entry.member.heartbeat = entry.member.heartbeat.saturating_add(1);
                entry.heard_at_ms = now_ms;
            }
        }
        let forgotten = &mut self.forgotten;
        forgotten.retain(|_, at| now_ms.saturating_sub(*at) <= timeouts.forget_after_ms);
        self.entries.retain(|id, entry| {
            if *id == me {
                return true;
            }
            let silent = now_ms.saturating_sub(entry.heard_at_ms);
            let member = &mut entry.member;
            let scale = scale.max(1);
            match member.state {
                _ if entry.tracked => {}
                MemberState::Alive if silent > timeouts.suspect_after_ms.saturating_mul(scale) => {
                    member.state = MemberState::Suspect
                }
                MemberState::Suspect if silent > timeouts.dead_after_ms.saturating_mul(scale) => {
                    member.state = MemberState::Dead
                }
                _ => {}
            }
            let gone = matches!(member.state, MemberState::Dead | MemberState::Left);
            let forget = gone && silent > timeouts.forget_after_ms;
            if forget && forgotten.len() < MAX_MEMBERS {
                forgotten.insert(*id, now_ms);
            }
            !forget
        });
    }

    /// Merges a peer's member list into ours. `first_hand` is the id of the member
    /// the list comes from (its own entry may change its address and name), when known.
    pub fn merge(&mut self, remote: Vec<Member>, first_hand: Option<uuid::Uuid>, now_ms: u64) {
        for member in remote {
            if member.id == self.me.0 {
                self.refute(&member);
                continue;
            }
            if !well_formed(&member) {
                continue;
            }
            let own_word = first_hand == Some(member.id);
            match self.entries.get_mut(&member.id) {
                Some(entry) if member.heartbeat <= entry.member.heartbeat => {
                    // Old news; but a peer that saw the member leave is believed.
                    if member.state == MemberState::Left
                        && member.heartbeat == entry.member.heartbeat
                    {
                        entry.member.state = MemberState::Left;
                    }
                }
                Some(entry) => {
                    // A newer heartbeat: the member is alive (or left) — unless SWIM
                    // tracks it, which alone decides alive, suspect and dead; a member
                    // back after leaving is alive again either way.
                    let state = match (member.state, entry.member.state) {
                        (MemberState::Left, _) => MemberState::Left,
                        (_, current) if entry.tracked && current != MemberState::Left => current,
                        _ => MemberState::Alive,
                    };
                    if own_word {
                        entry.member = Member { state, ..member };
                    } else {
                        entry.member.heartbeat = member.heartbeat;
                        entry.member.state = state;
                    }
                    entry.heard_at_ms = now_ms;
                }
                None => {
                    if self.entries.len() >= MAX_MEMBERS
                        || (!own_word && self.forgotten.contains_key(&member.id))
                    {
                        continue;
                    }
                    self.forgotten.remove(&member.id);
                    // A member first heard of second-hand starts alive unless it left or
                    // is dead; its own heartbeats will keep it so.
                    let state = match member.state {
                        MemberState::Left | MemberState::Dead => member.state,
                        _ => MemberState::Alive,
                    };
                    self.entries.insert(
                        member.id,
                        Entry {
                            member: Member { state, ..member },
                            heard_at_ms: now_ms,
                            tracked: false,
                        },
                    );
                }
            }
        }
    }

    /// Takes SWIM's view of the members it knows: each one becomes tracked, and its
    /// state follows SWIM's (alive, suspect, or dead once declared down) unless it left.
    /// A member SWIM met before gossip did is added (never changed: only a member's own
    /// word changes its address or name).
    pub fn apply_swim(&mut self, view: &[(SwimId, Liveness)], now_ms: u64) {
        for (id, liveness) in view {
            if id.node == self.me.0 {
                continue;
            }
            let state = match liveness {
                Liveness::Alive => MemberState::Alive,
                Liveness::Suspect => MemberState::Suspect,
                Liveness::Down => MemberState::Dead,
            };
            match self.entries.get_mut(&id.node) {
                Some(entry) => {
                    entry.tracked = true;
                    let member = &mut entry.member;
                    if member.state == MemberState::Left || member.state == state {
                        continue;
                    }
                    if state == MemberState::Dead {
                        // Forgotten a full `forget_after` after it was declared dead.
                        entry.heard_at_ms = now_ms;
                    }
                    member.state = state;
                }
                None => {
                    let member = Member {
                        id: id.node,
                        name: id.name.clone(),
                        addr: id.addr.clone(),
                        joined_at: id.joined_at,
                        heartbeat: 0,
                        state,
                    };
                    if state == MemberState::Dead
                        || self.entries.len() >= MAX_MEMBERS
                        || self.forgotten.contains_key(&id.node)
                        || !well_formed(&member)
                    {
                        continue;
                    }
                    self.entries
                        .insert(id.node, Entry { member, heard_at_ms: now_ms, tracked: true });
                }
            }
        }
    }

    fn refute(&mut self, rumour: &Member) {
        let entry = self.entries.get_mut(&self.me.0).expect("we are always a member");
        if entry.member.state != MemberState::Left && rumour.heartbeat >= entry.member.heartbeat {
            entry.member.heartbeat = rumour.heartbeat.saturating_add(1);
        }
    }

    /// Announces a graceful leave (gossip it before stopping).
    pub fn leave(&mut self) {
        let entry = self.entries.get_mut(&self.me.0).expect("we are always a member");
        entry.member.heartbeat = entry.member.heartbeat.saturating_add(1);
        entry.member.state = MemberState::Left;
    }

    /// Everyone we know, ourselves included (what we gossip and show).
    pub fn members(&self) -> Vec<Member> {
        self.entries.values().map(|entry| entry.member.clone()).collect()
    }

    /// How many members we list, ourselves included (never 0).
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// Peers we may sync with and push to.
    /// Alive members other than this node. A member at this node's own address is a
    /// former identity of this address (a node restored from a backup, or whose data
    /// directory was replaced, comes back with a new id): it is never a peer, or the
    /// node would sync with itself and call that joining.
    pub fn alive_peers(&self) -> Vec<Member> {
        let my_addr = self.entries.get(&self.me.0).map(|entry| entry.member.addr.as_str());
        self.entries
            .values()
            .filter(|entry| {
                entry.member.id != self.me.0
                    && entry.member.state == MemberState::Alive
                    && Some(entry.member.addr.as_str()) != my_addr
            })
            .map(|entry| entry.member.clone())
            .collect()
    }

    /// Picks one alive peer with `pick(n)` returning an index below `n`.
    pub fn random_alive_peer(&self, pick: impl FnOnce(usize) -> usize) -> Option<Member> {
        let peers = self.alive_peers();
        if peers.is_empty() {
            return None;
        }
        let index = pick(peers.len()).min(peers.len() - 1);
        peers.into_iter().nth(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts =
        Timeouts { suspect_after_ms: 1_000, dead_after_ms: 3_000, forget_after_ms: 10_000 };

    fn member(n: u128, heartbeat: u64) -> Member {
        Member {
            id: uuid::Uuid::from_u128(n),
            name: format!("n{n}"),
            addr: format!("127.0.0.1:{n}"),
            joined_at: n as u64,
            heartbeat,
            state: MemberState::Alive,
        }
    }

    #[test]
    fn a_former_identity_at_our_own_address_is_not_a_peer() {
        let mut ms = Membership::new(member(1, 0), T, 0);
        let mut ghost = member(9, 5);
        ghost.addr = member(1, 0).addr;
        ms.merge(vec![ghost, member(2, 5)], None, 0);
        let peers: Vec<_> = ms.alive_peers().into_iter().map(|m| m.id).collect();
        assert_eq!(peers, [uuid::Uuid::from_u128(2)]);
    }

    #[test]
    fn silent_members_become_suspect_then_dead_then_forgotten() {
        let mut ms = Membership::new(member(1, 0), T, 0);
        ms.merge(vec![member(2, 5)], None, 0);
        ms.tick(500, 1);
        assert_eq!(ms.alive_peers().len(), 1);
        ms.tick(1_500, 1);
        assert_eq!(ms.members()[1].state, MemberState::Suspect);
        assert!(ms.alive_peers().is_empty());
        // A fresh heartbeat clears the suspicion.
        ms.merge(vec![member(2, 6)], None, 1_600);
        assert_eq!(ms.members()[1].state, MemberState::Alive);
        ms.tick(3_000, 1);
        ms.tick(5_000, 1);
        assert_eq!(ms.members()[1].state, MemberState::Dead);
        ms.tick(12_000, 1);
        assert_eq!(ms.members().len(), 1);
    }

    #[test]
    fn only_a_member_itself_moves_its_address_and_old_news_is_ignored() {
        let me = Some(uuid::Uuid::from_u128(2));
        let mut ms = Membership::new(member(1, 0), T, 0);
        ms.merge(vec![member(2, 5)], None, 0);
        let mut moved = member(2, 4);
        moved.addr = "elsewhere:1".into();
        ms.merge(vec![moved.clone()], me, 10);
        assert_eq!(ms.members()[1].addr, "127.0.0.1:2", "old news");
        // Second-hand: the heartbeat moves, the address does not.
        moved.heartbeat = 7;
        moved.name = "impostor".into();
        ms.merge(vec![moved.clone()], None, 10);
        assert_eq!(ms.members()[1].heartbeat, 7);
        assert_eq!(
            (ms.members()[1].addr.as_str(), ms.members()[1].name.as_str()),
            ("127.0.0.1:2", "n2")
        );
        // First-hand: it moves.
        moved.heartbeat = 8;
        ms.merge(vec![moved], me, 10);
        assert_eq!(ms.members()[1].addr, "elsewhere:1");
    }

    #[test]
    fn a_forgotten_member_comes_back_only_on_its_own_word() {
        let mut ms = Membership::new(member(1, 0), T, 0);
        ms.merge(vec![member(2, 5)], None, 0);
        for now in [2_000, 4_000, 15_000] {
            ms.tick(now, 1);
        }
        assert_eq!(ms.members().len(), 1, "forgotten");
        ms.merge(vec![member(2, 5)], None, 15_100);
        ms.merge(vec![member(2, 6)], Some(uuid::Uuid::from_u128(3)), 15_100);
        assert_eq!(ms.members().len(), 1, "re-admitted second-hand");
        ms.merge(vec![member(2, 6)], Some(uuid::Uuid::from_u128(2)), 15_200);
        assert_eq!(ms.members().len(), 2);
        assert_eq!(ms.alive_peers().len(), 1);
    }

    #[test]
    fn floods_and_malformed_entries_are_bounded() {
        let mut ms = Membership::new(member(1, 0), T, 0);
        let flood: Vec<Member> = (2..(MAX_MEMBERS as u128 + 500)).map(|n| member(n, 1)).collect();
        ms.merge(flood, None, 0);
        assert_eq!(ms.members().len(), MAX_MEMBERS);
        let mut ms = Membership::new(member(1, 0), T, 0);
        let mut long_name = member(2, 1);
        long_name.name = "x".repeat(MAX_NAME_BYTES + 1);
        let mut url = member(3, 1);
        url.addr = "user:pw@host:80/path#".into();
        let mut no_port = member(4, 1);
        no_port.addr = "host".into();
        let mut escape = member(5, 1);
        escape.name = "\u{1b}[2J".into();
        ms.merge(vec![long_name, url, no_port, escape, member(6, 1)], None, 0);
        let ids: Vec<u128> = ms.members().iter().map(|m| m.id.as_u128()).collect();
        assert_eq!(ids, vec![1, 6]);
    }

    #[test]
    fn heartbeats_saturate() {
        let mut ms = Membership::new(member(1, 0), T, 0);
        ms.merge(vec![member(1, u64::MAX)], None, 0);
        assert_eq!(ms.me().heartbeat, u64::MAX);
        ms.tick(10, 1);
        ms.leave();
        assert_eq!(ms.me().heartbeat, u64::MAX);
    }

    #[test]
    fn a_rumour_of_our_death_is_refuted() {
        let mut ms = Membership::new(member(1, 3), T, 0);
        let mut rumour = member(1, 9);
        rumour.state = MemberState::Dead;
        ms.merge(vec![rumour], None, 0);
        assert_eq!(ms.me().heartbeat, 10);
        assert_eq!(ms.me().state, MemberState::Alive);
    }

    #[test]
    fn leaving_is_final_and_spreads() {
        let mut a = Membership::new(member(1, 0), T, 0);
        let mut b = Membership::new(member(2, 0), T, 0);
        b.merge(a.members(), None, 0);
        a.leave();
        b.merge(a.members(), None, 10);
        assert_eq!(b.members()[0].state, MemberState::Left);
        assert!(b.alive_peers().is_empty());
        a.tick(20, 1);
        assert_eq!(a.me().state, MemberState::Left);
    }

    #[test]
    fn random_peer_uses_the_given_pick() {
        let mut ms = Membership::new(member(1, 0), T, 0);
        assert!(ms.random_alive_peer(|_| 0).is_none());
        ms.merge(vec![member(2, 1), member(3, 1)], None, 0);
        assert_eq!(ms.random_alive_peer(|n| n - 1).unwrap().id, uuid::Uuid::from_u128(3));
    }

    fn swim_id(n: u128) -> SwimId {
        SwimId::of(&member(n, 0), 7)
    }

    fn state_of(ms: &Membership, n: u128) -> Option<MemberState> {
        let id = uuid::Uuid::from_u128(n);
        ms.members().into_iter().find(|m| m.id == id).map(|m| m.state)
    }

    /// Once SWIM tracks a member, only SWIM moves it between alive, suspect and dead:
    /// silence does not kill it, and a stale heartbeat does not raise it.
    #[test]
    fn a_member_swim_tracks_lives_and_dies_by_swim_alone() {
        let mut ms = Membership::new(member(1, 0), T, 0);
        ms.merge(vec![member(2, 5)], None, 0);
        ms.apply_swim(&[(swim_id(2), Liveness::Alive)], 0);
        ms.tick(100_000, 1);
        assert_eq!(state_of(&ms, 2), Some(MemberState::Alive), "silence alone does not kill");
        ms.apply_swim(&[(swim_id(2), Liveness::Suspect)], 100_000);
        assert_eq!(state_of(&ms, 2), Some(MemberState::Suspect));
        assert!(ms.alive_peers().is_empty());
        ms.apply_swim(&[(swim_id(2), Liveness::Down)], 101_000);
        assert_eq!(state_of(&ms, 2), Some(MemberState::Dead));
        // Its last heartbeats, still spreading second-hand, do not raise it.
        ms.merge(vec![member(2, 9)], None, 101_500);
        assert_eq!(state_of(&ms, 2), Some(MemberState::Dead));
        // Forgotten a full forget_after after the last news of it.
        ms.tick(101_500 + T.forget_after_ms, 1);
        assert_eq!(state_of(&ms, 2), Some(MemberState::Dead));
        ms.tick(101_501 + T.forget_after_ms, 1);
        assert_eq!(state_of(&ms, 2), None);
        // Forgotten: SWIM's word alone does not re-add it.
        ms.apply_swim(&[(swim_id(2), Liveness::Alive)], 111_002 + T.forget_after_ms);
        assert_eq!(state_of(&ms, 2), None);
    }

    /// A member that left stays left whatever SWIM says, until its own newer heartbeat
    /// says it is back; a member SWIM met first is added with SWIM's word for it.
    #[test]
    fn left_outranks_swim_and_swim_introduces_members() {
        let mut ms = Membership::new(member(1, 0), T, 0);
        ms.merge(vec![member(2, 5)], None, 0);
        ms.apply_swim(&[(swim_id(2), Liveness::Alive)], 0);
        ms.merge(vec![Member { state: MemberState::Left, ..member(2, 6) }], None, 10);
        ms.apply_swim(&[(swim_id(2), Liveness::Alive)], 20);
        assert_eq!(state_of(&ms, 2), Some(MemberState::Left));
        ms.apply_swim(&[(swim_id(2), Liveness::Down)], 30);
        assert_eq!(state_of(&ms, 2), Some(MemberState::Left));
        ms.merge(vec![member(2, 7)], Some(uuid::Uuid::from_u128(2)), 40);
        assert_eq!(state_of(&ms, 2), Some(MemberState::Alive), "back after leaving");

        ms.apply_swim(&[(swim_id(3), Liveness::Alive), (swim_id(4), Liveness::Down)], 50);
        assert_eq!(state_of(&ms, 3), Some(MemberState::Alive));
        assert_eq!(state_of(&ms, 4), None, "a member first heard of as down is not added");
        let three = ms.members().into_iter().find(|m| m.id == uuid::Uuid::from_u128(3)).unwrap();
        assert_eq!((three.addr.as_str(), three.name.as_str()), ("127.0.0.1:3", "n3"));
        // Our own entry is ours, whatever SWIM thinks of us.
        ms.apply_swim(&[(swim_id(1), Liveness::Down)], 60);
        assert_eq!(state_of(&ms, 1), Some(MemberState::Alive));
    }
}
