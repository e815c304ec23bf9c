//! Push on write: committed local writes go to every alive peer at once, in batches.
//! Best effort: anti-entropy repairs whatever a push misses.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::model::{Key, Record};
use crate::transport::Peer;

/// Pushes under way at once to one peer. Each peer has its own allowance, so a peer
/// that hangs (its pushes end at their deadline) cannot take the slots of healthy ones.
pub const PUSHES_IN_FLIGHT_PER_PEER: usize = 64;

/// Records per push batch at most.
pub const PUSH_BATCH: usize = 256;

/// Sends committed local writes to every alive peer at once, in small batches. Past a
/// peer's allowance a batch is left to anti-entropy for that peer (logged).
pub async fn push_loop(
    cluster: Cluster,
    peer: Arc<dyn Peer>,
    mut outbox: mpsc::Receiver<(Key, Record)>,
    stop: CancellationToken,
) {
    let mut allowances: HashMap<uuid::Uuid, Arc<Semaphore>> = HashMap::new();
    let mut pushes = tokio::task::JoinSet::new();
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            next = outbox.recv() => match next { Some(item) => item, None => break },
        };
        while pushes.try_join_next().is_some() {}
        let mut batch = vec![first];
        while batch.len() < PUSH_BATCH {
            match outbox.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let batch = Arc::new(batch);
        let peers = cluster.alive_peers();
        allowances.retain(|id, _| peers.iter().any(|member| member.id == *id));
        for member in peers {
            let allowance = allowances
                .entry(member.id)
                .or_insert_with(|| Arc::new(Semaphore::new(PUSHES_IN_FLIGHT_PER_PEER)));
            let Ok(permit) = allowance.clone().try_acquire_owned() else {
                tracing::debug!(peer = %member.addr, records = batch.len(), "too many pushes in flight to this peer; anti-entropy will carry this batch");
                continue;
            };
            let (peer, batch) = (peer.clone(), batch.clone());
            pushes.spawn(async move {
                let _permit = permit;
                for part in crate::wire::batches(&batch) {
                    if let Err(error) = peer.push(&member.addr, part).await {
                        tracing::debug!(peer = %member.addr, %error, "push failed; anti-entropy will repair");
                        break;
                    }
                }
            });
        }
    }
    pushes.shutdown().await;
}
