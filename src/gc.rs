//! The purge tasks: expired tombstones, records whose expiry came, and the change log
//! past its limits.
//!
//! A tombstone is purged once it is older than `tombstone_ttl`, and each pass also
//! moves this node's purge horizon to now − TTL while it is in contact. Why that is safe,
//! and how a replica that still holds deleted data is cleaned, is `sync::rules`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::service::ReplicaService;

/// At most this many tombstones per pass, so one pass never holds the store for long.
const PER_PASS: usize = 10_000;

/// Runs a purge pass every tenth of the TTL (between 100 ms and a minute).
pub async fn purge_loop(replica: ReplicaService, ttl: Duration, stop: CancellationToken) {
    let every = (ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let replica = replica.clone();
        match tokio::task::spawn_blocking(move || replica.purge_expired(PER_PASS)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(purged)) => tracing::info!(purged, "purged expired tombstones"),
            Ok(Err(error)) => tracing::warn!(%error, "tombstone purge failed"),
            Err(error) => tracing::warn!(%error, "tombstone purge task failed"),
        }
    }
}

/// Rewrites records whose expiry came to their expired form, four times a second.
/// Readers never wait for this (a due record already reads as absent); it is what turns
/// the expiry into a delete watchers see, and lets the purge reclaim the value's space.
pub async fn expire_loop(replica: ReplicaService, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let replica = replica.clone();
        match tokio::task::spawn_blocking(move || replica.expire_due(PER_PASS)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(expired)) => tracing::debug!(expired, "rewrote expired records"),
            Ok(Err(error)) => tracing::warn!(%error, "expiring records failed"),
            Err(error) => tracing::warn!(%error, "expiry task failed"),
        }
    }
}

/// Trims the change log to its limits (entries and age) once a second.
pub async fn change_log_loop(store: crate::store::Store, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let store = store.clone();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        match tokio::task::spawn_blocking(move || store.trim_changes(now_ms, PER_PASS)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(trimmed)) => tracing::debug!(trimmed, "trimmed the change log"),
            Ok(Err(error)) => tracing::warn!(%error, "trimming the change log failed"),
            Err(error) => tracing::warn!(%error, "change log trim task failed"),
        }
    }
}
