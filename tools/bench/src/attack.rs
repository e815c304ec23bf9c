//! The attack scenario: honest clients' latency on a node with a cluster key, alone and
//! while attackers hold idle sockets, send unsigned peer requests with large bodies and
//! forged gossip floods. Figures only; `tests/it/attacks.rs` checks the outcomes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::AsyncReadExt;

use crate::procs::{self, Proc};
use crate::report::Figure;
use crate::scenarios::{create_load, latency_figures, READY};
use crate::Settings;

/// Idle sockets the attacker keeps open (reopened as the node closes them).
const IDLE_SOCKETS: usize = 400;

pub async fn attack(settings: &Settings, http: &reqwest::Client) -> Result<Vec<Figure>> {
    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("kvs.key");
    std::fs::write(&key_file, kvs::config::generate_key())?;
    let data = dir.path().join("data");
    let key_path = key_file.to_string_lossy().into_owned();
    let node = procs::start(
        &settings.kvs,
        "attacked",
        &data,
        &[],
        &["--cluster-key-file", &key_path, "--header-read-timeout", "5s"],
    )?;
    procs::wait_ready(http, &node, READY).await?;

    let half = settings.seconds / 2.0;
    let quiet_live = probe_live(http, &node, half).await?;
    let (quiet_writes, quiet_elapsed) = create_load(settings, http, &node, half).await?;
    let rss_before = node.rss_bytes().unwrap_or(0) as f64 / (1024.0 * 1024.0);

    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    // The attackers' own connections (the node cuts them), apart from the honest pool.
    let hostile = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let attackers = vec![
        tokio::spawn(hold_idle_sockets(node.port, stop.clone())),
        tokio::spawn(unsigned_records(hostile.clone(), node.base(), stop.clone(), refused.clone())),
        tokio::spawn(forged_gossip(hostile, node.base(), stop.clone(), refused.clone())),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let attacked_live = probe_live(http, &node, half).await?;
    let (attacked_writes, attacked_elapsed) = create_load(settings, http, &node, half).await?;
    let rss_peak = node.rss_bytes().unwrap_or(0) as f64 / (1024.0 * 1024.0);
    stop.store(true, Ordering::Relaxed);
    for attacker in attackers {
        attacker.await.context("attacker task")??;
    }
    let info: serde_json::Value =
        http.get(format!("{}/health/info", node.base())).send().await?.json().await?;
    node.stop()?;

    let mut figures = Vec::new();
    figures.extend(latency_figures("health/live, quiet:", quiet_live.0, quiet_live.1));
    figures.extend(latency_figures("health/live, attacked:", attacked_live.0, attacked_live.1));
    figures.extend(latency_figures("creates, quiet:", quiet_writes, quiet_elapsed));
    figures.extend(latency_figures("creates, attacked:", attacked_writes, attacked_elapsed));
    figures.push(Figure::new(
        "attacker requests refused",
        "requests",
        refused.load(Ordering::Relaxed) as f64,
    ));
    figures.push(Figure::new(
        "members after forged gossip",
        "members",
        info["members"].as_array().map_or(0, Vec::len) as f64,
    ));
    figures.push(Figure::new("RSS before attack", "MiB", rss_before));
    figures.push(Figure::new("RSS under attack", "MiB", rss_peak));
    Ok(figures)
}

/// Sequential `GET /health/live` for `seconds`: each latency, and the time taken.
async fn probe_live(
    http: &reqwest::Client,
    node: &Proc,
    seconds: f64,
) -> Result<(Vec<Duration>, Duration)> {
    let url = format!("{}/health/live", node.base());
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed().as_secs_f64() < seconds {
        let begin = Instant::now();
        http.get(&url).send().await?.error_for_status()?;
        latencies.push(begin.elapsed());
    }
    Ok((latencies, started.elapsed()))
}

async fn hold_idle_sockets(port: u16, stop: Arc<AtomicBool>) -> Result<()> {
    let mut sockets = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        while sockets.len() < IDLE_SOCKETS {
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(socket) => sockets.push(socket),
                Err(_) => break,
            }
        }
        // Drop the ones the node has closed.
        let mut open = Vec::new();
        for mut socket in sockets.drain(..) {
            let mut byte = [0u8; 1];
            // Still open: nothing to read within a millisecond.
            let read = tokio::time::timeout(Duration::from_millis(1), socket.read(&mut byte)).await;
            if read.is_err() {
                open.push(socket);
            }
        }
        sockets = open;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// 1 MiB bodies to the record route with a well-formed but wrong signature.
async fn unsigned_records(
    http: reqwest::Client,
    base: String,
    stop: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
) -> Result<()> {
    let body = vec![0x28u8; 1024 * 1024];
    let forged = format!("v1 {} 0000000000000001 {} {}", now_ms(), "0".repeat(32), "0".repeat(64));
    while !stop.load(Ordering::Relaxed) {
        let reply = http
            .post(format!("{base}/internal/v1/records"))
            .header(kvs::auth::SIGNATURE_HEADER, &forged)
            .body(body.clone())
            .send()
            .await;
        count_refusal(reply, &refused);
    }
    Ok(())
}

/// Gossip with 4,000 invented members, unsigned.
async fn forged_gossip(
    http: reqwest::Client,
    base: String,
    stop: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
) -> Result<()> {
    let members: Vec<serde_json::Value> = (0..4_000u128)
        .map(|n| {
            serde_json::json!({"id": uuid_of(n), "name": "fake", "addr": "10.0.0.1:1",
                "joined_at": 1, "heartbeat": u64::MAX, "state": "alive"})
        })
        .collect();
    let body = serde_json::to_vec(&members)?;
    while !stop.load(Ordering::Relaxed) {
        let reply = http.post(format!("{base}/internal/v1/gossip")).body(body.clone()).send().await;
        count_refusal(reply, &refused);
    }
    Ok(())
}

/// A 401, or the connection cut while the body was still going out (the node refuses a
/// bad signature header before reading the body), counts as refused.
fn count_refusal(reply: reqwest::Result<reqwest::Response>, refused: &AtomicU64) {
    let cut_off = match &reply {
        Ok(reply) => reply.status() == reqwest::StatusCode::UNAUTHORIZED,
        Err(error) => error.is_request() || error.is_body() || error.is_connect(),
    };
    if cut_off {
        refused.fetch_add(1, Ordering::Relaxed);
    }
}

fn uuid_of(n: u128) -> String {
    format!("{:032x}", n + 1)
}

fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}
