//! The measured scenarios. Each run starts its own processes and returns its figures.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::procs::{self, Proc};
use crate::report::Figure;
use crate::Settings;

const READY: Duration = Duration::from_secs(300);

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[at].as_secs_f64() * 1000.0
}

fn latency_figures(prefix: &str, mut latencies: Vec<Duration>, elapsed: Duration) -> Vec<Figure> {
    latencies.sort();
    vec![
        Figure::new(
            &format!("{prefix} throughput"),
            "ops/s",
            latencies.len() as f64 / elapsed.as_secs_f64(),
        ),
        Figure::new(&format!("{prefix} p50"), "ms", percentile(&latencies, 0.50)),
        Figure::new(&format!("{prefix} p99"), "ms", percentile(&latencies, 0.99)),
        Figure::new(&format!("{prefix} p999"), "ms", percentile(&latencies, 0.999)),
    ]
}

fn todo_body(n: usize) -> Value {
    json!({"todo": format!("benchmark todo number {n}, of an ordinary length"), "extern_id": format!("bench-{n}")})
}

/// Creates `count` todos with `clients` concurrent clients; returns the payload bytes.
async fn load(http: &reqwest::Client, node: &Proc, count: usize, clients: usize) -> Result<u64> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, next) = (http.clone(), format!("{}/todos", node.base()), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut bytes = 0u64;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return Ok::<u64, anyhow::Error>(bytes);
                }
                let body = todo_body(n);
                bytes += body.to_string().len() as u64;
                let reply = http.post(&url).json(&body).send().await?;
                ensure!(reply.status().is_success(), "create answered {}", reply.status());
            }
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total)
}

/// Runs `clients` loops of `op` for `seconds`; returns each successful op's latency.
async fn drive<F, Fut>(clients: usize, seconds: f64, op: F) -> Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (op, stop) = (op.clone(), stop.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let begin = Instant::now();
                    op(client, n).await?;
                    latencies.push(begin.elapsed());
                    n += 1;
                }
                Ok::<_, anyhow::Error>(latencies)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok((all, started.elapsed()))
}

pub async fn write(settings: &Settings, http: &reqwest::Client) -> Result<Vec<Figure>> {
    let dir = tempfile::tempdir()?;
    let node = procs::start(&settings.kvs, "write", dir.path(), &[], &[])?;
    procs::wait_ready(http, &node, READY).await?;
    let (http2, url) = (http.clone(), format!("{}/todos", node.base()));
    let (latencies, elapsed) = drive(settings.clients, settings.seconds, move |client, n| {
        let (http, url) = (http2.clone(), url.clone());
        async move {
            let body = json!({"todo": format!("client {client} todo {n}")});
            let reply = http.post(url).json(&body).send().await?;
            ensure!(
                reply.status() == reqwest::StatusCode::CREATED,
                "create answered {}",
                reply.status()
            );
            Ok(())
        }
    })
    .await?;
    node.stop()?;
    Ok(latency_figures("durable creates", latencies, elapsed))
}

pub async fn read(settings: &Settings, http: &reqwest::Client) -> Result<Vec<Figure>> {
    let dir = tempfile::tempdir()?;
    let node = procs::start(&settings.kvs, "read", dir.path(), &[], &[])?;
    procs::wait_ready(http, &node, READY).await?;
    let preload = 1000;
    load(http, &node, preload, settings.clients).await?;
    let (http2, base) = (http.clone(), node.base());
    let (latencies, elapsed) = drive(settings.clients, settings.seconds, move |client, n| {
        let (http, base) = (http2.clone(), base.clone());
        async move {
            let extern_id = format!("bench-{}", (client * 7919 + n) % preload);
            let reply = http.get(format!("{base}/todos?extern_id={extern_id}")).send().await?;
            ensure!(reply.status().is_success(), "get answered {}", reply.status());
            let _ = reply.bytes().await?;
            Ok(())
        }
    })
    .await?;
    node.stop()?;
    Ok(latency_figures("gets", latencies, elapsed))
}

pub async fn propagation(settings: &Settings, http: &reqwest::Client) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for (label, push) in [("push on", "true"), ("push off", "false")] {
        let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
        let extra = ["--push-on-write", push, "--gossip-interval", "100ms"];
        let first = procs::start(&settings.kvs, "p1", dirs[0].path(), &[], &extra)?;
        procs::wait_ready(http, &first, READY).await?;
        let others = [
            procs::start(&settings.kvs, "p2", dirs[1].path(), &[first.port], &extra)?,
            procs::start(&settings.kvs, "p3", dirs[2].path(), &[first.port], &extra)?,
        ];
        for node in &others {
            procs::wait_ready(http, node, READY).await?;
        }
        wait_for_members(http, &first, 3).await?;
        let writes = settings.propagation_writes;
        let mut latencies = Vec::with_capacity(writes);
        for n in 0..writes {
            let started = Instant::now();
            let reply: Value = http
                .post(format!("{}/todos", first.base()))
                .json(&todo_body(n))
                .send()
                .await?
                .json()
                .await?;
            let id = reply["id"].as_str().context("create answered no id")?.to_owned();
            for node in &others {
                let url = format!("{}/todos/{id}", node.base());
                while !http.get(&url).send().await?.status().is_success() {
                    if started.elapsed() > Duration::from_secs(30) {
                        bail!("write {n} not visible on {} after 30 s", node.name);
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
            latencies.push(started.elapsed());
        }
        latencies.sort();
        figures.push(Figure::new(
            &format!("write→visible on all 3, {label}, p50"),
            "ms",
            percentile(&latencies, 0.5),
        ));
        figures.push(Figure::new(
            &format!("write→visible on all 3, {label}, p99"),
            "ms",
            percentile(&latencies, 0.99),
        ));
        for node in others {
            node.stop()?;
        }
        first.stop()?;
    }
    Ok(figures)
}

async fn wait_for_members(http: &reqwest::Client, node: &Proc, count: usize) -> Result<()> {
    let started = Instant::now();
    loop {
        let info: Value =
            http.get(format!("{}/health/info", node.base())).send().await?.json().await?;
        let alive = info["members"]
            .as_array()
            .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
        if alive >= count {
            return Ok(());
        }
        if started.elapsed() > READY {
            bail!("{} sees {alive} alive members, wanted {count}", node.name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Loads `records` todos, then measures disk and RSS per record, restart to ready, and
/// a new node's bootstrap from this one.
pub async fn data_at_scale(settings: &Settings, http: &reqwest::Client) -> Result<Vec<Figure>> {
    let dir = tempfile::tempdir()?;
    let node = procs::start(&settings.kvs, "scale", dir.path(), &[], &[])?;
    procs::wait_ready(http, &node, READY).await?;
    let records = settings.records;
    let payload = load(http, &node, records, settings.clients).await?;
    let rss = node.rss_bytes().unwrap_or(0);
    node.stop()?;
    let disk = procs::disk_bytes(dir.path());
    let mut figures = vec![
        Figure::new("disk per record", "bytes", disk as f64 / records as f64),
        Figure::new("disk / payload", "ratio", disk as f64 / payload as f64),
        Figure::new("RSS after load", "MiB", rss as f64 / (1 << 20) as f64),
    ];

    let node = procs::start(&settings.kvs, "scale", dir.path(), &[], &[])?;
    let restart = procs::wait_ready(http, &node, READY).await?;
    figures.push(Figure::new("restart to ready", "s", restart.as_secs_f64()));
    figures.push(Figure::new(
        "RSS after restart",
        "MiB",
        node.rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64,
    ));

    let joiner_dir = tempfile::tempdir()?;
    let joiner = procs::start(&settings.kvs, "joiner", joiner_dir.path(), &[node.port], &[])?;
    let started = Instant::now();
    let mut peak_rss = 0u64;
    let url = format!("{}/health/ready", joiner.base());
    loop {
        peak_rss = peak_rss.max(joiner.rss_bytes().unwrap_or(0));
        if http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if started.elapsed() > READY {
            bail!("the joiner did not bootstrap within {READY:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    figures.push(Figure::new("bootstrap to ready", "s", started.elapsed().as_secs_f64()));
    figures.push(Figure::new("bootstrap peak RSS", "MiB", peak_rss as f64 / (1 << 20) as f64));
    let info: Value =
        http.get(format!("{}/health/info", joiner.base())).send().await?.json().await?;
    ensure!(
        info["todo_count"] == json!(records),
        "the joiner holds {} todos, not {records}",
        info["todo_count"]
    );
    joiner.stop()?;
    node.stop()?;
    Ok(figures)
}
