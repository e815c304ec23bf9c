//! Who is in the cluster: the membership state machine (pure) and a shared handle to it.

mod membership;
pub mod swim;
pub mod swim_sim;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

pub use membership::{Member, MemberState, Membership, Timeouts, MAX_MEMBERS};

use crate::clock::PhysicalClock;

/// A cheap-clone handle to this node's view of the cluster. The lock is a std mutex:
/// it is held only for in-memory updates, never across `.await`.
#[derive(Clone)]
pub struct Cluster {
    state: Arc<Mutex<State>>,
    physical: Arc<dyn PhysicalClock>,
    traffic: Arc<Traffic>,
    /// SWIM packets from peers, for the membership task (`gossip::swim_loop`).
    packets: tokio::sync::mpsc::Sender<Vec<u8>>,
    inbox: Arc<Mutex<Option<tokio::sync::mpsc::Receiver<Vec<u8>>>>>,
}

/// SWIM packets waiting for the membership task at most; past it they are dropped
/// (SWIM tolerates loss, and a node this far behind has worse problems).
pub const SWIM_INBOX: usize = 1_024;

/// Bytes of the membership exchanges this node answered (each exchange is answered by
/// exactly one node, so the sum over a cluster is all of its membership traffic).
#[derive(Debug, Default)]
struct Traffic {
    /// Request bodies received.
    received: AtomicU64,
    /// Reply bodies sent.
    sent: AtomicU64,
}

struct State {
    membership: Membership,
    /// Peer id → ms of the last successful anti-entropy round with it.
    last_sync: BTreeMap<uuid::Uuid, u64>,
}

impl Cluster {
    pub fn new(me: Member, timeouts: Timeouts, physical: Arc<dyn PhysicalClock>) -> Self {
        let membership = Membership::new(me, timeouts, physical.now_ms());
        let (packets, inbox) = tokio::sync::mpsc::channel(SWIM_INBOX);
        Cluster {
            state: Arc::new(Mutex::new(State { membership, last_sync: BTreeMap::new() })),
            physical,
            traffic: Arc::default(),
            packets,
            inbox: Arc::new(Mutex::new(Some(inbox))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn now_ms(&self) -> u64 {
        self.physical.now_ms()
    }

    /// Merges a peer's list and answers with ours. `first_hand`: the member the list
    /// comes from, when known (only its own entry may change its address or name).
    pub fn on_gossip(&self, remote: Vec<Member>, first_hand: Option<uuid::Uuid>) -> Vec<Member> {
        let now = self.now_ms();
        let mut state = self.lock();
        state.membership.merge(remote, first_hand, now);
        state.membership.members()
    }

    /// Counts an exchange this node answered: `received` request bytes, `sent` reply bytes.
    pub fn count_answered(&self, received: usize, sent: usize) {
        self.traffic.received.fetch_add(received as u64, Ordering::Relaxed);
        self.traffic.sent.fetch_add(sent as u64, Ordering::Relaxed);
    }

    /// (received, sent) bytes of the membership exchanges this node answered.
    pub fn answered_bytes(&self) -> (u64, u64) {
        (self.traffic.received.load(Ordering::Relaxed), self.traffic.sent.load(Ordering::Relaxed))
    }

    /// Ages the members SWIM does not track; `scale` stretches the heartbeat timeouts.
    pub fn tick(&self, scale: u64) {
        let now = self.now_ms();
        self.lock().membership.tick(now, scale);
    }

    /// Takes SWIM's view of the members (see [`Membership::apply_swim`]).
    pub fn apply_swim(&self, view: &[(swim::SwimId, swim::Liveness)]) {
        let now = self.now_ms();
        self.lock().membership.apply_swim(view, now);
    }

    /// Hands a peer's SWIM packet to the membership task; false when it is dropped
    /// (the task is behind or stopped).
    pub fn swim_packet(&self, packet: Vec<u8>) -> bool {
        self.packets.try_send(packet).is_ok()
    }

    /// The packets [`Cluster::swim_packet`] accepted: taken once, by the membership task.
    pub fn take_swim_inbox(&self) -> Option<tokio::sync::mpsc::Receiver<Vec<u8>>> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// How many members we list, ourselves included.
    pub fn member_count(&self) -> usize {
        self.lock().membership.count()
    }

    pub fn leave(&self) {
        self.lock().membership.leave();
    }

    pub fn me(&self) -> Member {
        self.lock().membership.me().clone()
    }

    pub fn members(&self) -> Vec<Member> {
        self.lock().membership.members()
    }

    pub fn alive_peers(&self) -> Vec<Member> {
        self.lock().membership.alive_peers()
    }

    pub fn random_alive_peer(&self) -> Option<Member> {
        self.lock().membership.random_alive_peer(|n| rand::random_range(0..n))
    }

    pub fn record_sync(&self, peer: uuid::Uuid) {
        let now = self.now_ms();
        self.lock().last_sync.insert(peer, now);
    }

    pub fn last_sync(&self) -> BTreeMap<uuid::Uuid, u64> {
        self.lock().last_sync.clone()
    }
}
