//! The composition root: opens the store, builds the services and the router, and owns
//! every long-lived task. Nothing else spawns tasks that outlive a request.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tokio::sync::mpsc;

use crate::auth::{ClusterKey, PeerAuth};
use crate::clock::{Hlc, Observation, PhysicalClock, SystemClock};
use crate::cluster::{Cluster, Member, MemberState, Timeouts};
use crate::config::Config;
use crate::http::{self, Access, AppParts, AppState, NodeInfo};
use crate::model::Origin;
use crate::peer::PeerClient;
use crate::service::{Phase, Readiness, Services, TtlRules};
use crate::store::{Store, StoreError};
use crate::sync::faults::{Faults, FaultyPeer};
use crate::sync::Driver;
use crate::telemetry::Throttle;
use crate::tls::{Certificate, Tls};
use crate::transport::Peer;
use crate::{gc, gossip, sync};

/// How long shutdown waits for in-flight requests before it stops waiting.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot open the data directory {dir}: {source}")]
    Open { dir: String, source: StoreError },
    #[error("closing the store failed: {0}")]
    Close(StoreError),
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("auth.public_key: {0}")]
    Token(#[from] crate::token::TokenError),
}

/// What a test may swap out.
#[derive(Clone)]
pub struct Options {
    pub physical_clock: Arc<dyn PhysicalClock>,
    /// Faults a test injects into the peer transport (None in production: the real
    /// client is used as it is).
    pub faults: Option<Faults>,
}

impl Default for Options {
    fn default() -> Self {
        Options { physical_clock: Arc::new(SystemClock), faults: None }
    }
}

/// Push queue length: writes beyond it are left to anti-entropy.
const OUTBOX: usize = 16_384;

/// A running node. Dropping it without [`Node::shutdown`] leaves its tasks running.
pub struct Node {
    addr: SocketAddr,
    identity: Origin,
    services: Services,
    store: Store,
    cluster: Cluster,
    peer: Arc<dyn Peer>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Runs a node until `shutdown` resolves, then drains and flushes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let node = start(config, Options::default()).await?;
    shutdown.await;
    tracing::info!("shutting down");
    node.shutdown().await
}

/// Binds, opens the store and starts serving; returns once the node accepts requests.
pub async fn start(config: Config, options: Options) -> Result<Node, DaemonError> {
    let tls = config.tls.as_ref().map(Tls::new).transpose()?;
    let access = Access::from_config(&config)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| DaemonError::Bind { addr: config.listen, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| DaemonError::Bind { addr: config.listen, source })?;

    // Serve at once: until the full router is in the slot, only /health/live answers.
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let slot = Arc::new(OnceLock::new());
    let app = http::late_bound(slot.clone());
    let stop = shutdown.clone();
    let limits = http::Limits {
        max_connections: config.max_connections,
        header_read_timeout: config.header_read_timeout,
    };
    tasks.spawn(http::serve(listener, app, stop, limits, tls.clone()));
    if let Some(tls) = &tls {
        tasks.spawn(reload_certificate(tls.certificate.clone(), shutdown.clone()));
    }
    // If starting fails below, the listener must not outlive the attempt.
    let stop_on_error = shutdown.clone().drop_guard();

    let dir = config.data_dir.clone();
    let now_ms = options.physical_clock.now_ms();
    let open_options = crate::store::OpenOptions {
        merkle_upkeep: config.merkle_upkeep,
        reserve_bytes: config.reserve_bytes,
    };
    let open = move || Store::open_with(&dir, now_ms, open_options);
    let store = tokio::task::spawn_blocking(open).await?.map_err(|source| DaemonError::Open {
        dir: config.data_dir.display().to_string(),
        source,
    })?;
    let identity = store.identity();
    let metrics = Arc::new(crate::metrics::Metrics::default());
    store.observe_flushes(metrics.clone());

    let clock = Arc::new(Hlc::new(
        options.physical_clock.clone(),
        config.max_clock_skew.as_millis() as u64,
    ));
    if let Observation::Refused { ahead_ms } = clock.observe(store.highest_ts_at_open()) {
        tracing::warn!(ahead_ms, "the data directory holds a version stamped further ahead of this clock than max_clock_skew; writes to that key fail until the clocks agree");
    }

    let standalone = config.seeds.is_empty();
    let readiness = Readiness::new(Phase::Starting);
    let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
    let outbox = config.push_on_write.then_some(outbox);
    let ttl =
        TtlRules { tombstone_ttl_ms: config.tombstone_ttl.as_millis() as u64, seeded: !standalone };
    let services = Services::new(store.clone(), clock, readiness.clone(), outbox, ttl);
    let rebase_pending = store.rebasing().map_err(|source| DaemonError::Open {
        dir: config.data_dir.display().to_string(),
        source,
    })?;
    let first_phase = match (standalone, rebase_pending) {
        (true, _) => Phase::Standalone,
        (false, true) => {
            tracing::warn!("a rebase was under way when the node stopped: not serving until a round with a peer completes");
            Phase::Rebasing
        }
        (false, false) => Phase::Joining,
    };
    readiness.advance(first_phase).expect("Starting may become Joining, Standalone or Rebasing");
    let name = config
        .node_name
        .clone()
        .unwrap_or_else(|| format!("node-{}", &identity.node.to_string()[..8]));
    let advertised = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let me = Member {
        id: identity.node.0,
        name: name.clone(),
        addr: advertised.clone(),
        joined_at: identity.joined_at,
        heartbeat: 0,
        state: MemberState::Alive,
    };
    let suspect_after_ms = (config.gossip_interval.as_millis() as u64 * 5).max(1_000);
    let timeouts = Timeouts {
        suspect_after_ms,
        dead_after_ms: suspect_after_ms * 3,
        forget_after_ms: suspect_after_ms * 60,
    };
    let cluster = Cluster::new(me, timeouts, options.physical_clock.clone());
    let key = config.cluster_key.as_ref().map(|secret| ClusterKey::new(&secret.0));
    let client: Arc<dyn Peer> = Arc::new(PeerClient::new(
        key.clone(),
        identity.node.0,
        options.physical_clock.clone(),
        tls.as_ref().map(|tls| tls.peer_client.clone()),
    ));
    let peer: Arc<dyn Peer> = match options.faults.clone() {
        Some(faults) => Arc::new(FaultyPeer { inner: client, faults }),
        None => client,
    };
    let driver = Driver::new(peer.clone(), services.replica.clone(), cluster.clone());
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let peer_auth = match key {
        Some(key) => PeerAuth::signed(key),
        None if config.insecure => {
            tracing::warn!("cluster.insecure is set and there is no cluster key: anyone who can reach {addr} can read, write and delete everything through the peer routes");
            PeerAuth::Open
        }
        None if addr.ip().is_loopback() => {
            if !standalone {
                tracing::warn!("no cluster key: any local user can call this node's peer routes (fine for a test cluster on one machine)");
            }
            PeerAuth::Open
        }
        None => {
            tracing::warn!("no cluster key and listening beyond loopback: peer routes are closed, so this node cannot form a cluster (set cluster.key_file)");
            PeerAuth::Closed
        }
    };
    let node_info = NodeInfo {
        id: identity.node,
        name: name.clone(),
        addr: advertised,
        joined_at: identity.joined_at,
    };
    let state = AppState::new(AppParts {
        services: services.clone(),
        node: Arc::new(node_info),
        cluster: cluster.clone(),
        driver: driver.clone(),
        serve_stale: config.serve_stale,
        peer_auth: Arc::new(peer_auth),
        peer_slots: Arc::new(tokio::sync::Semaphore::new(http::PEER_REQUESTS_AT_ONCE)),
        warnings: Arc::new(Throttle::default()),
        access: Arc::new(access),
        tls: tls.is_some(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        renders: Default::default(),
    });
    let filled = slot.set(http::router(state, config.max_body_bytes)).is_ok();
    assert!(filled, "the router slot is filled once, here");
    tasks.spawn(gossip::gossip_loop(
        cluster.clone(),
        peer.clone(),
        config.seeds.clone(),
        readiness.clone(),
        config.gossip_interval,
        shutdown.clone(),
    ));
    tasks.spawn(gossip::swim_loop(
        cluster.clone(),
        peer.clone(),
        options.physical_clock.now_ms(),
        shutdown.clone(),
    ));
    tasks.spawn(sync::anti_entropy_loop(driver.clone(), config.sync_interval, shutdown.clone()));
    tasks.spawn(sync::push_loop(
        cluster.clone(),
        peer.clone(),
        outbox_rx,
        config.push_fanout,
        services.pushes.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(gc::purge_loop(services.replica.clone(), config.tombstone_ttl, shutdown.clone()));
    tasks.spawn(gc::expire_loop(services.replica.clone(), shutdown.clone()));
    store.set_change_limits(crate::store::ChangeLimits {
        max_entries: config.watch_log_entries,
        max_age_ms: config.watch_log_age.as_millis() as u64,
    });
    tasks.spawn(gc::change_log_loop(store.clone(), shutdown.clone()));
    if standalone {
        tracing::info!("no seeds configured: running standalone");
    } else {
        tasks.spawn(gossip::join(
            driver,
            config.seeds.clone(),
            readiness,
            config.join_timeout,
            shutdown.clone(),
        ));
    }
    tasks.close();
    stop_on_error.disarm();
    tracing::info!(%addr, node_id = %identity.node, node_name = %name, data_dir = %config.data_dir.display(), "kvs node listening");
    Ok(Node { addr, identity, services, store, cluster, peer, shutdown, tasks })
}

impl Node {
    /// The address the node actually listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn identity(&self) -> Origin {
        self.identity
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Stops every task without a farewell: what a crash looks like to peers (the
    /// store still closes cleanly so a test can reopen it).
    pub async fn crash(self) -> Result<(), DaemonError> {
        self.stop_and_close().await
    }

    /// Stops accepting, lets in-flight requests finish (up to [`SHUTDOWN_GRACE`]),
    /// then flushes and closes the store.
    pub async fn shutdown(self) -> Result<(), DaemonError> {
        gossip::farewell(&self.cluster, &self.peer, Duration::from_secs(1)).await;
        self.stop_and_close().await?;
        tracing::info!("store flushed; bye");
        Ok(())
    }

    /// Cancels every task, waits for them (up to [`SHUTDOWN_GRACE`]), then closes the
    /// store once nothing else holds it.
    async fn stop_and_close(self) -> Result<(), DaemonError> {
        self.shutdown.cancel();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait()).await.is_err() {
            tracing::warn!(
                "in-flight requests did not finish within {SHUTDOWN_GRACE:?}; closing anyway"
            );
        }
        drop(self.services);
        drop(self.cluster);
        let store = self.store;
        // Connection tasks drop their router (and its store handles) just after the
        // server reports done; wait for them so the database lock is free on return.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while store.handle_count() > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if store.handle_count() > 1 {
            tracing::warn!(handles = store.handle_count(), "store still in use at shutdown");
        }
        let close = tokio::task::spawn_blocking(move || store.close());
        match tokio::time::timeout(SHUTDOWN_GRACE, close).await {
            Ok(closed) => closed?.map_err(DaemonError::Close),
            Err(_) => {
                tracing::error!(
                    "the store did not close within {SHUTDOWN_GRACE:?}; exiting anyway"
                );
                Ok(())
            }
        }
    }
}

/// How often the certificate files are checked for a change.
const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Reloads the TLS certificate when its files change and on SIGHUP, until `stop`.
async fn reload_certificate(certificate: Arc<Certificate>, stop: CancellationToken) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let forced = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CERT_CHECK_INTERVAL) => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        #[cfg(not(unix))]
        let forced = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CERT_CHECK_INTERVAL) => false,
        };
        match certificate.reload(forced) {
            Ok(true) => tracing::info!("TLS certificate reloaded"),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "TLS certificate not reloaded; the previous one stays in use")
            }
        }
    }
}
