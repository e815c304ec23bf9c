//! `membership-sim`: the SWIM membership core (`kvs::cluster::swim`) simulated at 50 and
//! 1,000 members on a virtual clock, with 5 % packet loss and one member whose packets
//! are all delayed by 800 ms (one deterministic run per size and seed; a smoke run with
//! `--seconds` under 1 simulates 50 members briefly). Figures: the time until every
//! member knows of a join, the time until a killed member is declared down (per observer
//! p50/p99/max, and by the last observer), false suspicions and false deaths per
//! member-hour, and membership payload bytes per second per member.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kvs::cluster::swim_sim::{self, SimConfig, SimReport};
use serde_json::{json, Value};

use crate::procs::{self, Proc};
use crate::report::Figure;
use crate::scenarios::{self, READY};
use crate::Settings;

pub async fn membership_sim(settings: &Settings, run: usize) -> Result<Vec<Figure>> {
    let sizes: &[usize] = if settings.seconds < 1.0 { &[50] } else { &[50, 1_000] };
    let smoke = settings.seconds < 1.0;
    let mut figures = Vec::new();
    for &members in sizes {
        let config = SimConfig {
            members,
            seed: SimConfig::full().seed + run as u64,
            ..if smoke { SimConfig::smoke() } else { SimConfig::full() }
        };
        let report = tokio::task::spawn_blocking(move || swim_sim::run(config)).await?;
        figures.extend(figures_of(&report));
    }
    Ok(figures)
}

fn figures_of(report: &SimReport) -> Vec<Figure> {
    let n = report.members;
    let secs = |duration: Option<Duration>| duration.map_or(f64::NAN, |d| d.as_secs_f64());
    let by_all = report.detected_by_all.iter().map(|d| secs(*d)).fold(0.0, f64::max);
    vec![
        Figure::new(
            &format!("{n} members: join known, p50 of members"),
            "s",
            secs(swim_sim::quantile(&report.join_known, 0.50)),
        ),
        Figure::new(
            &format!("{n} members: join known, p99 of members"),
            "s",
            secs(swim_sim::quantile(&report.join_known, 0.99)),
        ),
        Figure::new(
            &format!("{n} members: join known by all"),
            "s",
            secs(report.join_known_by_all),
        ),
        Figure::new(
            &format!("{n} members: kill detected, p50 of observers"),
            "s",
            secs(swim_sim::quantile(&report.detections, 0.50)),
        ),
        Figure::new(
            &format!("{n} members: kill detected, p99 of observers"),
            "s",
            secs(swim_sim::quantile(&report.detections, 0.99)),
        ),
        Figure::new(
            &format!("{n} members: kill detected, max of observers"),
            "s",
            secs(swim_sim::quantile(&report.detections, 1.0)),
        ),
        Figure::new(
            &format!("{n} members: kill detected by all but the starved member (worst kill)"),
            "s",
            by_all,
        ),
        Figure::new(
            &format!("{n} members: kills the starved member never declared down"),
            "kills",
            report.kills_missed_by_starved as f64,
        ),
        Figure::new(
            &format!("{n} members: the starved member learned of the join"),
            "yes=1",
            f64::from(u8::from(report.starved_knew_join)),
        ),
        Figure::new(
            &format!("{n} members: members the joiner lacked after its join"),
            "members",
            report.joiner_lacked as f64,
        ),
        Figure::new(
            &format!("{n} members: false suspicions"),
            "/member-hour",
            report.false_suspicions_per_member_hour,
        ),
        Figure::new(
            &format!("{n} members: false deaths"),
            "/member-hour",
            report.false_deaths_per_member_hour,
        ),
        Figure::new(
            &format!("{n} members: false deaths declared by the starved member"),
            "declarations",
            report.false_deaths_by_starved as f64,
        ),
        Figure::new(
            &format!("{n} members: false deaths of the starved member"),
            "declarations",
            report.false_deaths_of_starved as f64,
        ),
        Figure::new(
            &format!("{n} members: live members declared down"),
            "members",
            report.falsely_declared_down as f64,
        ),
        Figure::new(
            &format!("{n} members: membership payload per member"),
            "bytes/s",
            report.bytes_per_member_per_s,
        ),
        Figure::new(
            &format!("{n} members: members missing a live member at the end"),
            "members",
            report.members_missing_someone as f64,
        ),
    ]
}

/// `membership`: 10, 20 and 50 real `kvs` processes on loopback (5 in a smoke run,
/// `--seconds` under 1), joined through one seed. Per size: the time until every node
/// lists every other alive; an idle spell of `--seconds` (300 for the "5 minutes idle"
/// target) with every node's member list read each second, counting live members shown
/// suspect or dead; membership bytes per second per node, from every node's
/// `kvs_membership_bytes_total` (an exchange is counted once, by the node that answers
/// it, so the cluster's sum over N is what each node sends on average); a light write
/// load (one `PUT /kv` every 50 ms, each on the next node) with a watch stream on every
/// node, reporting write→visible-on-all; and the time until the survivors declare a
/// `kill -9`-ed node dead (p50 and max of observers).
pub async fn membership(settings: &Settings, http: &reqwest::Client) -> Result<Vec<Figure>> {
    let smoke = settings.seconds < 1.0;
    let sizes: &[usize] = match (&settings.nodes[..], smoke) {
        ([], true) => &[5],
        ([], false) => &[10, 20, 50],
        (chosen, _) => chosen,
    };
    let mut figures = Vec::new();
    for &n in sizes {
        let run = one_size(settings, http, n, smoke).await;
        figures.extend(run.with_context(|| format!("{n} nodes"))?);
    }
    Ok(figures)
}

async fn one_size(
    settings: &Settings,
    http: &reqwest::Client,
    n: usize,
    smoke: bool,
) -> Result<Vec<Figure>> {
    let dirs: Vec<tempfile::TempDir> =
        (0..n).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let seed = procs::start(&settings.kvs, "m0", dirs[0].path(), &[], &[])?;
    procs::wait_ready(http, &seed, READY).await?;
    let seed_port = seed.port;
    let mut nodes = vec![seed];
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        nodes.push(procs::start(&settings.kvs, &format!("m{i}"), dir.path(), &[seed_port], &[])?);
    }
    let started = Instant::now();
    for node in &nodes {
        procs::wait_ready(http, node, READY).await?;
    }
    for node in &nodes {
        scenarios::wait_for_members(http, node, n).await?;
    }
    let all_alive = started.elapsed();

    // Idle: who shows a live member as anything but alive?
    let idle = Duration::from_secs_f64(settings.seconds.max(0.5));
    let bytes_before = membership_bytes(http, &nodes).await?;
    let idle_started = Instant::now();
    let (mut suspicions, mut deaths) = (0u64, 0u64);
    let mut shown: HashMap<(usize, String), String> = HashMap::new();
    while idle_started.elapsed() < idle {
        for (i, node) in nodes.iter().enumerate() {
            for (addr, state) in member_states(http, node).await? {
                let before = shown.insert((i, addr), state.clone());
                if before.as_deref() == Some(state.as_str()) || state == "alive" {
                    continue;
                }
                match state.as_str() {
                    "dead" => deaths += 1,
                    _ => suspicions += 1,
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1).min(idle)).await;
    }
    let bytes_after = membership_bytes(http, &nodes).await?;
    let idle_secs = idle_started.elapsed().as_secs_f64();
    let per_node = (bytes_after - bytes_before) as f64 / n as f64 / idle_secs;

    // A light write load, watched on every node.
    let writes = if smoke { 20 } else { 100 };
    let requests_before = peer_requests(http, &nodes).await?;
    let visible = visibility(http, &nodes, writes).await?;
    let requests_per_write =
        (peer_requests(http, &nodes).await? - requests_before) as f64 / writes as f64;

    // kill -9 the last node; each survivor's first sight of it dead.
    let victim = nodes.pop().expect("at least two nodes");
    let victim_addr = format!("127.0.0.1:{}", victim.port);
    victim.kill9()?;
    let killed = Instant::now();
    let mut detected: Vec<Option<Duration>> = vec![None; nodes.len()];
    while detected.iter().any(Option::is_none) && killed.elapsed() < Duration::from_secs(60) {
        for (i, node) in nodes.iter().enumerate() {
            if detected[i].is_some() {
                continue;
            }
            let states = member_states(http, node).await?;
            if states.iter().any(|(addr, state)| *addr == victim_addr && state == "dead") {
                detected[i] = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missed = detected.iter().filter(|d| d.is_none()).count();
    let mut detected: Vec<Duration> = detected.into_iter().flatten().collect();
    detected.sort();
    for node in nodes {
        node.stop()?;
    }
    Ok(vec![
        Figure::new(
            &format!("{n} nodes: every node lists all alive"),
            "s",
            all_alive.as_secs_f64(),
        ),
        Figure::new(&format!("{n} nodes: membership bytes sent per node"), "bytes/s", per_node),
        Figure::new(
            &format!("{n} nodes: live members shown suspect, {idle_secs:.0} s idle"),
            "times",
            suspicions as f64,
        ),
        Figure::new(
            &format!("{n} nodes: live members shown dead, {idle_secs:.0} s idle"),
            "times",
            deaths as f64,
        ),
        Figure::new(
            &format!("{n} nodes: write visible on all, p50"),
            "ms",
            scenarios::percentile(&visible, 0.50),
        ),
        Figure::new(
            &format!("{n} nodes: write visible on all, p99"),
            "ms",
            scenarios::percentile(&visible, 0.99),
        ),
        Figure::new(
            &format!("{n} nodes: peer requests per write (pushes, anti-entropy, gossip)"),
            "requests",
            requests_per_write,
        ),
        Figure::new(
            &format!("{n} nodes: kill -9 declared dead, p50 of observers"),
            "s",
            scenarios::percentile(&detected, 0.50) / 1000.0,
        ),
        Figure::new(
            &format!("{n} nodes: kill -9 declared dead by all"),
            "s",
            detected.last().map_or(f64::NAN, Duration::as_secs_f64),
        ),
        Figure::new(
            &format!("{n} nodes: observers that never declared it dead (60 s)"),
            "nodes",
            missed as f64,
        ),
    ])
}

/// Every member a node lists, by address, with its state.
async fn member_states(http: &reqwest::Client, node: &Proc) -> Result<Vec<(String, String)>> {
    let info: Value = http.get(format!("{}/health/info", node.base())).send().await?.json().await?;
    let members = info["members"].as_array().context("no members in /health/info")?;
    Ok(members
        .iter()
        .filter_map(|m| Some((m["addr"].as_str()?.to_owned(), m["state"].as_str()?.to_owned())))
        .collect())
}

/// The sum over `nodes` of `kvs_membership_bytes_total` (both directions).
async fn membership_bytes(http: &reqwest::Client, nodes: &[Proc]) -> Result<u64> {
    metric_sum(http, nodes, |line| line.starts_with("kvs_membership_bytes_total")).await
}

/// Peer requests the nodes answered, SWIM packets aside (pushes, anti-entropy, gossip).
async fn peer_requests(http: &reqwest::Client, nodes: &[Proc]) -> Result<u64> {
    metric_sum(http, nodes, |line| {
        line.starts_with("kvs_http_requests_total{")
            && line.contains("route=\"/internal/")
            && !line.contains("/swim\"")
    })
    .await
}

/// The sum over `nodes` of the metric lines `pick` selects.
async fn metric_sum(
    http: &reqwest::Client,
    nodes: &[Proc],
    pick: impl Fn(&str) -> bool,
) -> Result<u64> {
    let mut total = 0.0;
    for node in nodes {
        let text = http.get(format!("{}/metrics", node.base())).send().await?.text().await?;
        total += text
            .lines()
            .filter(|line| pick(line))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(total as u64)
}

/// `writes` documents, one every 50 ms, each on the next node, with a watch stream open
/// on every node: for each write, from the request to its event on the last node (the
/// first event each node sent for the key).
async fn visibility(
    http: &reqwest::Client,
    nodes: &[Proc],
    writes: usize,
) -> Result<Vec<Duration>> {
    let seen: Arc<Mutex<HashMap<String, HashMap<usize, Instant>>>> = Arc::default();
    let streams = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let mut watchers = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let mut response = streams
            .get(format!("{}/kv?prefix=membership-bench/&watch=true", node.base()))
            .send()
            .await?;
        ensure!(response.status().is_success(), "watch answered {}", response.status());
        let seen = seen.clone();
        watchers.push(tokio::spawn(async move {
            let mut pending = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                let at = Instant::now();
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    let Some(data) = line.strip_prefix("data: ") else { continue };
                    let Ok(event) = serde_json::from_str::<Value>(data) else { continue };
                    if let Some(key) = event["key"].as_str() {
                        let mut seen = seen.lock().unwrap();
                        seen.entry(key.to_owned()).or_default().entry(index).or_insert(at);
                    }
                }
            }
        }));
    }
    let mut sent = Vec::with_capacity(writes);
    for i in 0..writes {
        let node = &nodes[i % nodes.len()];
        let key = format!("membership-bench/{i}");
        let at = Instant::now();
        let reply =
            http.put(format!("{}/kv/{key}", node.base())).json(&json!({"n": i})).send().await?;
        ensure!(reply.status().is_success(), "PUT {key} answered {}", reply.status());
        sent.push((key, at));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let complete = |seen: &HashMap<String, HashMap<usize, Instant>>| {
        sent.iter().all(|(key, _)| seen.get(key).is_some_and(|at| at.len() >= nodes.len()))
    };
    while !complete(&seen.lock().unwrap()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for watcher in watchers {
        watcher.abort();
    }
    let seen = seen.lock().unwrap();
    let mut visible = Vec::with_capacity(writes);
    for (key, at) in &sent {
        let Some(arrivals) = seen.get(key) else { bail!("{key} reached no node") };
        ensure!(
            arrivals.len() >= nodes.len(),
            "{key} reached {} of {} nodes",
            arrivals.len(),
            nodes.len()
        );
        let last = arrivals.values().max().expect("at least one arrival");
        visible.push(last.saturating_duration_since(*at));
    }
    visible.sort();
    Ok(visible)
}
