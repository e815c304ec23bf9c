//! The measured scenarios. Each run starts its own processes and returns its figures.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::procs::{self, Proc};
use crate::report::Figure;
use crate::Settings;

pub const READY: Duration = Duration::from_secs(300);

pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[at].as_secs_f64() * 1000.0
}

pub fn latency_figures(
    prefix: &str,
    mut latencies: Vec<Duration>,
    elapsed: Duration,
) -> Vec<Figure> {
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
pub async fn load(
    http: &reqwest::Client,
    node: &Proc,
    count: usize,
    clients: usize,
) -> Result<u64> {
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
pub async fn drive<F, Fut>(clients: usize, seconds: f64, op: F) -> Result<(Vec<Duration>, Duration)>
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

/// Durable creates on `node` from `clients` loops for `seconds`.
pub async fn create_load(
    settings: &Settings,
    http: &reqwest::Client,
    node: &Proc,
    seconds: f64,
) -> Result<(Vec<Duration>, Duration)> {
    let (http, url) = (http.clone(), format!("{}/todos", node.base()));
    drive(settings.clients, seconds, move |client, n| {
        let (http, url) = (http.clone(), url.clone());
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
    .await
}

pub async fn write(settings: &Settings, http: &reqwest::Client) -> Result<Vec<Figure>> {
    let dir = tempfile::tempdir()?;
    let node = procs::start(&settings.kvs, "write", dir.path(), &[], &[])?;
    procs::wait_ready(http, &node, READY).await?;
    let (latencies, elapsed) = create_load(settings, http, &node, settings.seconds).await?;
    node.stop()?;
    Ok(latency_figures("durable creates", latencies, elapsed))
}

/// The write load on a node with Merkle upkeep and on one started with
/// `--bench-skip-merkle`, in four interleaved quarters (on, off, off, on) so drift in
/// the machine's speed falls on both sides alike.
pub async fn merkle_cost(settings: &Settings, http: &reqwest::Client) -> Result<Vec<Figure>> {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let with = procs::start(&settings.kvs, "merkle-on", dirs[0].path(), &[], &[])?;
    let without =
        procs::start(&settings.kvs, "merkle-off", dirs[1].path(), &[], &["--bench-skip-merkle"])?;
    procs::wait_ready(http, &with, READY).await?;
    procs::wait_ready(http, &without, READY).await?;
    let warm_up = (settings.seconds / 10.0).min(1.0);
    for node in [&with, &without] {
        create_load(settings, http, node, warm_up).await?;
    }
    let quarter = settings.seconds / 4.0;
    let (mut ops, mut time) = ([0usize; 2], [Duration::ZERO; 2]);
    for side in [0, 1, 1, 0] {
        let node = if side == 0 { &with } else { &without };
        let (latencies, elapsed) = create_load(settings, http, node, quarter).await?;
        ops[side] += latencies.len();
        time[side] += elapsed;
    }
    with.stop()?;
    without.stop()?;
    let rate = |side: usize| ops[side] as f64 / time[side].as_secs_f64();
    Ok(vec![
        Figure::new("creates/s with Merkle upkeep", "ops/s", rate(0)),
        Figure::new("creates/s without Merkle upkeep", "ops/s", rate(1)),
        Figure::new("throughput lost to Merkle upkeep", "%", (1.0 - rate(0) / rate(1)) * 100.0),
    ])
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
    for nodes in [3, 5] {
        for (label, push) in [("push on", true), ("push off", false)] {
            let latencies = visibility(settings, http, nodes, push).await?;
            for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
                figures.push(Figure::new(
                    &format!("write→visible on all {nodes}, {label}, {name}"),
                    "ms",
                    percentile(&latencies, p),
                ));
            }
        }
    }
    Ok(figures)
}

/// Starts `nodes` nodes, writes on the first and polls every other until the write is
/// visible on all; returns the sorted write→visible-on-all latencies.
async fn visibility(
    settings: &Settings,
    http: &reqwest::Client,
    nodes: usize,
    push: bool,
) -> Result<Vec<Duration>> {
    let dirs = (0..nodes).map(|_| tempfile::tempdir()).collect::<Result<Vec<_>, _>>()?;
    let extra =
        ["--push-on-write", if push { "true" } else { "false" }, "--gossip-interval", "100ms"];
    let first = procs::start(&settings.kvs, "p1", dirs[0].path(), &[], &extra)?;
    procs::wait_ready(http, &first, READY).await?;
    let mut others = Vec::new();
    for (n, dir) in dirs.iter().enumerate().skip(1) {
        let name = format!("p{}", n + 1);
        others.push(procs::start(&settings.kvs, &name, dir.path(), &[first.port], &extra)?);
    }
    for node in &others {
        procs::wait_ready(http, node, READY).await?;
    }
    wait_for_members(http, &first, nodes).await?;
    // With push, writes go one after another and are polled every 200 µs. Without push,
    // visibility takes about a sync interval, so writes start every 20 ms, overlapping,
    // each polled every 5 ms: enough samples for a p99 in seconds, not minutes.
    let (spacing, poll) = if push {
        (Duration::ZERO, Duration::from_micros(200))
    } else {
        (Duration::from_millis(20), Duration::from_millis(5))
    };
    let urls: Vec<(String, String)> =
        others.iter().map(|node| (node.name.clone(), node.base())).collect();
    let (mut latencies, mut pending) = (Vec::new(), Vec::new());
    for n in 0..settings.propagation_writes {
        let (http, first, urls) = (http.clone(), first.base(), urls.clone());
        let task =
            tokio::spawn(async move { write_then_poll(&http, &first, &urls, n, poll).await });
        if push {
            latencies.push(task.await??);
        } else {
            pending.push(task);
            tokio::time::sleep(spacing).await;
        }
    }
    for task in pending {
        latencies.push(task.await??);
    }
    latencies.sort();
    for node in others {
        node.stop()?;
    }
    first.stop()?;
    Ok(latencies)
}

/// Creates todo `n` on `first`, then polls every node of `others` until it serves it;
/// returns the time from the write's start.
pub async fn write_then_poll(
    http: &reqwest::Client,
    first: &str,
    others: &[(String, String)],
    n: usize,
    poll: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let reply: Value =
        http.post(format!("{first}/todos")).json(&todo_body(n)).send().await?.json().await?;
    let id = reply["id"].as_str().context("create answered no id")?.to_owned();
    for (name, base) in others {
        let url = format!("{base}/todos/{id}");
        while !http.get(&url).send().await?.status().is_success() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("write {n} not visible on {name} after 30 s");
            }
            tokio::time::sleep(poll).await;
        }
    }
    Ok(started.elapsed())
}

pub async fn wait_for_members(http: &reqwest::Client, node: &Proc, count: usize) -> Result<()> {
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
