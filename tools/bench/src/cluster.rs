//! `cluster-write`: what replication costs a write. One node alone, then three nodes
//! with push on write (creates on one node, then spread over all three), in the same
//! run; then write→visible-on-all while a paced load of half the three-node rate runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::{json, Value};

use crate::procs::{self, Proc};
use crate::report::Figure;
use crate::scenarios::{self, READY};
use crate::Settings;

pub async fn cluster_write(settings: &Settings, http: &reqwest::Client) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let alone_dir = tempfile::tempdir()?;
    let alone = procs::start(&settings.kvs, "alone", alone_dir.path(), &[], &[])?;
    procs::wait_ready(http, &alone, READY).await?;
    let cpu_before = procs::cpu_times(std::slice::from_ref(&alone))?;
    let (latencies, elapsed) =
        spread_load(settings.clients, settings.seconds, http, &[alone.base()], None).await?;
    let alone_cpu = procs::cpu_spent(std::slice::from_ref(&alone), &cpu_before)?;
    alone.stop()?;
    let single = latencies.len() as f64 / elapsed.as_secs_f64();
    figures.push(Figure::new(
        "1 node, CPU per create",
        "µs",
        procs::per_write(alone_cpu[0], &latencies),
    ));
    figures.extend(scenarios::latency_figures("1 node, creates", latencies, elapsed));

    let dirs = (0..3).map(|_| tempfile::tempdir()).collect::<Result<Vec<_>, _>>()?;
    let extra = ["--gossip-interval", "100ms"];
    let first = procs::start(&settings.kvs, "c1", dirs[0].path(), &[], &extra)?;
    procs::wait_ready(http, &first, READY).await?;
    let mut nodes = vec![first];
    for (n, dir) in dirs.iter().enumerate().skip(1) {
        let seeds = [nodes[0].port];
        nodes.push(procs::start(
            &settings.kvs,
            &format!("c{}", n + 1),
            dir.path(),
            &seeds,
            &extra,
        )?);
    }
    for node in &nodes {
        procs::wait_ready(http, node, READY).await?;
    }
    scenarios::wait_for_members(http, &nodes[0], 3).await?;
    let bases: Vec<String> = nodes.iter().map(Proc::base).collect();

    let cpu_before = procs::cpu_times(&nodes)?;
    let (latencies, elapsed) =
        spread_load(settings.clients, settings.seconds, http, &bases[..1], None).await?;
    let spent = procs::cpu_spent(&nodes, &cpu_before)?;
    let on_one = latencies.len() as f64 / elapsed.as_secs_f64();
    // What replication costs in CPU, which the two cores shared here hide: on three
    // machines the writer's share is what bounds its rate.
    figures.push(Figure::new(
        "3 nodes on one, CPU per create on the writer",
        "µs",
        procs::per_write(spent[0], &latencies),
    ));
    figures.push(Figure::new(
        "3 nodes on one, CPU per create on each other node",
        "µs",
        procs::per_write(
            spent[1..].iter().sum::<Duration>() / (spent.len() as u32 - 1),
            &latencies,
        ),
    ));
    figures.extend(scenarios::latency_figures("3 nodes, creates on one", latencies, elapsed));
    figures.push(Figure::new("3 nodes on one / 1 node", "ratio", on_one / single));
    let (latencies, elapsed) =
        spread_load(settings.clients, settings.seconds, http, &bases, None).await?;
    let on_all = latencies.len() as f64 / elapsed.as_secs_f64();
    figures.extend(scenarios::latency_figures("3 nodes, creates on all", latencies, elapsed));
    figures.push(Figure::new("3 nodes on all / 1 node", "ratio", on_all / single));

    // Write→visible on the other two while half the measured rate loads the first.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (http, bases, stop) = (http.clone(), bases[..1].to_vec(), stop.clone());
        let clients = settings.clients;
        tokio::spawn(async move {
            spread_load(clients, f64::INFINITY, &http, &bases, Some((on_one / 2.0, stop))).await
        })
    };
    let others: Vec<(String, String)> =
        nodes.iter().skip(1).map(|node| (node.name.clone(), node.base())).collect();
    let mut visible = Vec::new();
    for n in 0..settings.propagation_writes.max(1) {
        visible.push(
            scenarios::write_then_poll(http, &bases[0], &others, n, Duration::from_micros(200))
                .await?,
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (paced, paced_elapsed) = background.await??;
    visible.sort();
    figures.push(Figure::new(
        "paced load while measuring visibility",
        "ops/s",
        paced.len() as f64 / paced_elapsed.as_secs_f64(),
    ));
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        figures.push(Figure::new(
            &format!("write→visible on all 3 at half load, {name}"),
            "ms",
            scenarios::percentile(&visible, p),
        ));
    }
    let info: Value = http.get(format!("{}/health/info", bases[0])).send().await?.json().await?;
    for counter in ["sent_requests", "sent_records", "failed_records", "dropped_records"] {
        figures.push(Figure::new(
            &format!("c1 push {counter}"),
            "count",
            info["push"][counter].as_f64().unwrap_or(f64::NAN),
        ));
    }
    for node in nodes {
        node.stop()?;
    }
    Ok(figures)
}

/// `clients` loops creating todos on `bases` (client i on node i mod n) for `seconds`,
/// or until `pace`'s flag is set, at most `pace`'s total rate per second if given.
async fn spread_load(
    clients: usize,
    seconds: f64,
    http: &reqwest::Client,
    bases: &[String],
    pace: Option<(f64, Arc<AtomicBool>)>,
) -> Result<(Vec<Duration>, Duration)> {
    let urls: Vec<String> = bases.iter().map(|base| format!("{base}/todos")).collect();
    let request = move |client: usize, n: usize| {
        let body = json!({"todo": format!("client {client} todo {n}")});
        (urls[client % urls.len()].clone(), body)
    };
    post_load(clients, seconds, http, pace, request).await
}

/// `clients` loops POSTing what `request(client, n)` names (each answer must be 2xx)
/// for `seconds`, or until `pace`'s flag is set, at most `pace`'s total rate per second
/// if given; returns each request's latency and the time taken.
pub async fn post_load(
    clients: usize,
    seconds: f64,
    http: &reqwest::Client,
    pace: Option<(f64, Arc<AtomicBool>)>,
    request: impl Fn(usize, usize) -> (String, Value) + Send + Sync + 'static,
) -> Result<(Vec<Duration>, Duration)> {
    let request = Arc::new(request);
    let started = Instant::now();
    let deadline = (seconds.is_finite()).then(|| started + Duration::from_secs_f64(seconds));
    let stop = pace.as_ref().map(|(_, stop)| stop.clone());
    let interval =
        pace.as_ref().map(|(rate, _)| Duration::from_secs_f64(clients as f64 / rate.max(1.0)));
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (http, stop, request) = (http.clone(), stop.clone(), request.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut next = Instant::now();
                for n in 0.. {
                    let done = deadline.is_some_and(|d| Instant::now() >= d)
                        || stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
                    if done {
                        break;
                    }
                    if let Some(interval) = interval {
                        tokio::time::sleep_until(next.into()).await;
                        next += interval;
                    }
                    let (url, body) = request(client, n);
                    let begin = Instant::now();
                    let reply = http.post(url).json(&body).send().await?;
                    ensure!(reply.status().is_success(), "answered {}", reply.status());
                    latencies.push(begin.elapsed());
                }
                Ok::<_, anyhow::Error>(latencies)
            })
        })
        .collect();
    Ok((join_latencies(tasks).await?, started.elapsed()))
}

/// Waits for every load task and gathers their latencies.
pub async fn join_latencies(
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<Duration>>>>,
) -> Result<Vec<Duration>> {
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}
