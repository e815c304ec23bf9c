//! Push on write: committed local writes go to the alive peers along a tree over the
//! id ring (see [`push_loop`] and `spread`), each peer through its own pipeline. Best
//! effort: anti-entropy repairs whatever a push misses, and nothing is missed without
//! being counted ([`PushStats`]).
//!
//! A pipeline is a bounded queue and [`PUSHES_IN_FLIGHT`] tasks that send whatever has
//! gathered in it, one request each at a time: while the pushes are in flight the next
//! batch accumulates, so batches grow with load and the per-request costs (HTTP, zstd,
//! the receiver's fsync) are paid once per batch rather than once per write. Two in
//! flight rather than one, so that a write arriving just after a push left does not
//! wait for that push's round trip (which includes the receiver's fsync) before its
//! own can start: that wait was most of the write→visible time at half load. A slow or
//! dead peer only fills its own queue; what overflows it is counted as dropped, and a
//! failed push counts its records as failed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use uuid::Uuid;

use super::spread;
use crate::cluster::Cluster;
use crate::service::{Outgoing, PushStats};
use crate::transport::Peer;
use crate::wire::Pushed;

/// Records waiting for one peer at most (about 10 s of a heavy write load); past it,
/// new records for that peer are dropped and counted.
pub const PEER_QUEUE_RECORDS: usize = 100_000;

/// Records per push request at most (bytes are capped too, by `wire::batches`).
pub const PUSH_BATCH: usize = 8_192;

/// Push requests in flight to one peer at most (see the module doc).
pub const PUSHES_IN_FLIGHT: usize = 2;

/// Records taken from the outbox at once.
const OUTBOX_DRAIN: usize = 4_096;

/// One peer's pipeline: its queue, and the task that empties it.
struct Pipeline {
    addr: String,
    stats: Arc<PushStats>,
    queue: Arc<Mutex<VecDeque<Pushed>>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
    /// Whether this pipeline is dropping records (logged when that starts).
    dropping: bool,
}

impl Pipeline {
    fn start(
        addr: String,
        peer: Arc<dyn Peer>,
        stats: Arc<PushStats>,
        tasks: &mut tokio::task::JoinSet<()>,
        stop: CancellationToken,
    ) -> Pipeline {
        let queue = Arc::new(Mutex::new(VecDeque::new()));
        let wake = Arc::new(Notify::new());
        for _ in 0..PUSHES_IN_FLIGHT {
            let (a, q, w, st, s, peer) = (
                addr.clone(),
                queue.clone(),
                wake.clone(),
                stats.clone(),
                stop.clone(),
                peer.clone(),
            );
            tasks.spawn(async move { send_loop(&a, peer.as_ref(), &q, &w, &st, &s).await });
        }
        Pipeline { addr, stats, queue, wake, stop, dropping: false }
    }

    /// Queues `records`, counting what does not fit.
    fn offer(&mut self, records: impl ExactSizeIterator<Item = Pushed>) {
        let dropped = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let room = PEER_QUEUE_RECORDS.saturating_sub(queue.len());
            let offered = records.len();
            queue.extend(records.take(room));
            offered.saturating_sub(room)
        };
        if dropped > 0 {
            PushStats::add(&self.stats.dropped_records, dropped);
            if !self.dropping {
                tracing::warn!(peer = %self.addr, "push queue full: this peer is too slow or down; dropped writes are counted and left to anti-entropy");
            }
        }
        self.dropping = dropped > 0;
        self.wake.notify_one();
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Sends what gathers in `queue` to `addr`, one request at a time, until stopped (a
/// pipeline runs [`PUSHES_IN_FLIGHT`] of these on the same queue).
async fn send_loop(
    addr: &str,
    peer: &dyn Peer,
    queue: &Mutex<VecDeque<Pushed>>,
    wake: &Notify,
    stats: &PushStats,
    stop: &CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
        }
        loop {
            let batch: Vec<Pushed> = {
                let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
                let take = queue.len().min(PUSH_BATCH);
                queue.drain(..take).collect()
            };
            if batch.is_empty() {
                break;
            }
            let mut sent = 0;
            for part in crate::wire::pushed_batches(&batch) {
                let pushed = tokio::select! {
                    _ = stop.cancelled() => return,
                    pushed = peer.push_writes(addr, part) => pushed,
                };
                match pushed {
                    Ok(_) => {
                        sent += part.len();
                        PushStats::add(&stats.sent_requests, 1);
                    }
                    Err(error) => {
                        tracing::debug!(peer = %addr, %error, "push failed; anti-entropy will repair");
                        break;
                    }
                }
            }
            PushStats::add(&stats.sent_records, sent);
            PushStats::add(&stats.failed_records, batch.len() - sent);
        }
    }
}

/// Hands committed local writes, and writes peers pushed that were new here, to the
/// pipelines of their next hops until `stop`: a local write goes to the whole ring, a
/// pushed one to the span of it its sender named (`spread::hops`, at most `fanout`
/// peers each). In a cluster no larger than the fan-out, the origin reaches every peer
/// itself and nobody passes anything on. Pipelines are keyed by id and address, so a
/// member that moved gets a fresh one.
pub async fn push_loop(
    cluster: Cluster,
    peer: Arc<dyn Peer>,
    mut outbox: mpsc::Receiver<Outgoing>,
    fanout: usize,
    stats: Arc<PushStats>,
    stop: CancellationToken,
) {
    let me = cluster.me().id;
    let mut pipelines: HashMap<(Uuid, String), Pipeline> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut received = Vec::with_capacity(OUTBOX_DRAIN);
    loop {
        let count = tokio::select! {
            _ = stop.cancelled() => break,
            count = outbox.recv_many(&mut received, OUTBOX_DRAIN) => count,
        };
        if count == 0 {
            break;
        }
        while tasks.try_join_next().is_some() {}
        let peers = cluster.alive_peers();
        pipelines.retain(|(id, addr), _| peers.iter().any(|m| m.id == *id && m.addr == *addr));
        // One tree per span: our own writes share one, relayed ones one per sender's span.
        let mut by_span: HashMap<Option<Uuid>, Vec<Outgoing>> = HashMap::new();
        for outgoing in received.drain(..) {
            by_span.entry(outgoing.relay_until).or_default().push(outgoing);
        }
        for (relay_until, records) in by_span {
            let hops = spread::hops(me, relay_until.unwrap_or(me), &peers, fanout);
            if relay_until.is_some() && !hops.is_empty() {
                PushStats::add(&stats.relayed_records, records.len());
            }
            for hop in hops {
                let key = (hop.member.id, hop.member.addr.clone());
                let pipeline = pipelines.entry(key).or_insert_with(|| {
                    let stop = stop.child_token();
                    let addr = hop.member.addr.clone();
                    Pipeline::start(addr, peer.clone(), stats.clone(), &mut tasks, stop)
                });
                pipeline.offer(
                    records.iter().map(|out| (out.key.clone(), out.record.clone(), hop.until)),
                );
            }
        }
    }
    drop(pipelines);
    tasks.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Key, NodeId, Origin, Record, Timestamp, Value, Version};
    use crate::transport::PeerError;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn record(n: u64) -> Pushed {
        let version = Version {
            ts: Timestamp::from_parts(n + 1, 0),
            origin: Origin { node: NodeId(uuid::Uuid::from_u128(1)), joined_at: 1 },
            uuid: uuid::Uuid::from_u128(n.into()),
        };
        (
            Key::doc(&format!("k{n}")).unwrap(),
            Record { version, value: Value::Live(b"1".to_vec()), expires_at: None },
            None,
        )
    }

    /// A peer that holds each push until released, counting requests and records.
    struct SlowPeer {
        /// Pushes started (held or not).
        entered: AtomicUsize,
        requests: AtomicUsize,
        records: AtomicUsize,
        gate: tokio::sync::Semaphore,
        fail: bool,
    }

    fn only_pushes<T>(addr: &str) -> Result<T, PeerError> {
        Err(PeerError::Unreachable {
            addr: addr.into(),
            reason: "this test peer only takes pushes".into(),
        })
    }

    #[async_trait::async_trait]
    impl Peer for SlowPeer {
        async fn root(
            &self,
            addr: &str,
            _: &crate::wire::RootRequest,
        ) -> Result<crate::wire::RootReply, PeerError> {
            only_pushes(addr)
        }
        async fn descendants(
            &self,
            addr: &str,
            _: &crate::wire::NodesRequest,
        ) -> Result<Vec<crate::wire::Digest>, PeerError> {
            only_pushes(addr)
        }
        async fn reconcile(
            &self,
            addr: &str,
            _: &crate::wire::ReconcileRequest,
        ) -> Result<crate::wire::ReconcileReply, PeerError> {
            only_pushes(addr)
        }
        async fn gossip(
            &self,
            addr: &str,
            _: &[crate::cluster::Member],
        ) -> Result<Vec<crate::cluster::Member>, PeerError> {
            only_pushes(addr)
        }
        async fn push(&self, addr: &str, records: &[(Key, Record)]) -> Result<usize, PeerError> {
            self.entered.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.unwrap().forget();
            self.requests.fetch_add(1, Ordering::SeqCst);
            self.records.fetch_add(records.len(), Ordering::SeqCst);
            if self.fail {
                return Err(PeerError::Unreachable { addr: addr.into(), reason: "test".into() });
            }
            Ok(0)
        }
    }

    fn slow_peer(fail: bool) -> Arc<SlowPeer> {
        let gate = tokio::sync::Semaphore::new(0);
        Arc::new(SlowPeer { entered: 0.into(), requests: 0.into(), records: 0.into(), gate, fail })
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        for _ in 0..2_000 {
            if check() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// While the pushes in flight are held, the records that arrive gather into the next
    /// one: three requests carry 1 + 1 + 998 records, not 1,000 requests, and no more
    /// than [`PUSHES_IN_FLIGHT`] are ever in flight to the peer.
    #[tokio::test]
    async fn records_gather_while_pushes_are_in_flight() {
        let peer = slow_peer(false);
        let stats = Arc::new(PushStats::default());
        let mut tasks = tokio::task::JoinSet::new();
        let stop = CancellationToken::new();
        let dyn_peer: Arc<dyn Peer> = peer.clone();
        let mut pipeline = Pipeline::start("p:1".into(), dyn_peer, stats.clone(), &mut tasks, stop);
        for n in 0..PUSHES_IN_FLIGHT as u64 {
            pipeline.offer([record(n)].into_iter());
            let in_flight = n as usize + 1;
            until("a push to start", || peer.entered.load(Ordering::SeqCst) == in_flight).await;
        }
        for n in PUSHES_IN_FLIGHT as u64..1_000 {
            pipeline.offer([record(n)].into_iter());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(peer.entered.load(Ordering::SeqCst), PUSHES_IN_FLIGHT, "more in flight");
        assert_eq!(pipeline.queue.lock().unwrap().len(), 1_000 - PUSHES_IN_FLIGHT);
        peer.gate.add_permits(PUSHES_IN_FLIGHT + 1);
        until("every push", || PushStats::get(&stats.sent_records) == 1_000).await;
        assert_eq!(peer.requests.load(Ordering::SeqCst), PUSHES_IN_FLIGHT + 1);
        assert_eq!(PushStats::get(&stats.sent_requests), PUSHES_IN_FLIGHT as u64 + 1);
        assert_eq!(PushStats::get(&stats.dropped_records), 0);
    }

    /// A peer that never answers fills only its own queue; every record past it is
    /// counted as dropped, and failed pushes count their records as failed.
    #[tokio::test]
    async fn overflow_and_failures_are_counted_never_silent() {
        let peer = slow_peer(true);
        let stats = Arc::new(PushStats::default());
        let mut tasks = tokio::task::JoinSet::new();
        let dyn_peer: Arc<dyn Peer> = peer.clone();
        let mut pipeline = Pipeline::start(
            "p:1".into(),
            dyn_peer,
            stats.clone(),
            &mut tasks,
            CancellationToken::new(),
        );
        let records: Vec<_> = (0..1_000).map(record).collect();
        let offers = PEER_QUEUE_RECORDS / 1_000 + 20;
        for _ in 0..offers {
            pipeline.offer(records.iter().cloned());
        }
        let offered = offers * 1_000;
        let dropped = PushStats::get(&stats.dropped_records) as usize;
        assert!(dropped >= offered - PEER_QUEUE_RECORDS - PUSH_BATCH, "dropped {dropped}");
        assert!(dropped > 0);
        peer.gate.add_permits(1_000);
        until("every queued record accounted for", || {
            let failed = PushStats::get(&stats.failed_records) as usize;
            failed + dropped == offered
        })
        .await;
        assert_eq!(PushStats::get(&stats.sent_records), 0);
    }
}
