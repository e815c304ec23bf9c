//! `tail`: write latency at light and moderate load. For one node and for three (writes
//! on the first), measure the unpaced maximum, then run a paced load at 10 %, 50 % and
//! 80 % of it for `--seconds` each and report p50, p99, p99.9, the maximum and how many
//! writes took over 50 ms, with a histogram of those (50–100, 100–250, 250–1000 ms and
//! over a second). Pacing is spread over `--clients` loops, so a slow write
//! delays only its own loop's next one.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::cluster::post_load;
use crate::procs::{self, Proc};
use crate::report::Figure;
use crate::scenarios::{self, READY};
use crate::Settings;

/// The histogram of slow writes: (over, up to] in ms.
const SLOW_BUCKETS_MS: [(u64, u64); 4] = [(50, 100), (100, 250), (250, 1000), (1000, u64::MAX)];

pub async fn tail(settings: &Settings, http: &reqwest::Client) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for nodes in [1, 3] {
        let dirs = (0..nodes).map(|_| tempfile::tempdir()).collect::<Result<Vec<_>, _>>()?;
        let first = procs::start(&settings.kvs, "t1", dirs[0].path(), &[], &[])?;
        procs::wait_ready(http, &first, READY).await?;
        let mut running: Vec<Proc> = vec![first];
        for (n, dir) in dirs.iter().enumerate().skip(1) {
            let seeds = [running[0].port];
            let name = format!("t{}", n + 1);
            running.push(procs::start(&settings.kvs, &name, dir.path(), &seeds, &[])?);
        }
        for node in &running {
            procs::wait_ready(http, node, READY).await?;
        }
        scenarios::wait_for_members(http, &running[0], nodes).await?;
        let url = format!("{}/todos", running[0].base());
        let request = move |client: usize, n: usize| {
            (url.clone(), json!({"todo": format!("client {client} todo {n}")}))
        };
        let (max, elapsed) =
            post_load(settings.clients, settings.seconds, http, None, request.clone()).await?;
        let max_rate = max.len() as f64 / elapsed.as_secs_f64();
        figures.push(Figure::new(&format!("{nodes} node(s), maximum"), "ops/s", max_rate));
        for percent in [10.0, 50.0, 80.0] {
            let pace = Some((max_rate * percent / 100.0, Arc::new(AtomicBool::new(false))));
            let (mut latencies, elapsed) =
                post_load(settings.clients, settings.seconds, http, pace, request.clone()).await?;
            latencies.sort();
            let label = format!("{nodes} node(s) at {percent} %");
            let rate = latencies.len() as f64 / elapsed.as_secs_f64();
            figures.push(Figure::new(&format!("{label}, rate"), "ops/s", rate));
            for (name, p) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
                let value = scenarios::percentile(&latencies, p);
                figures.push(Figure::new(&format!("{label}, {name}"), "ms", value));
            }
            let max = latencies.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
            figures.push(Figure::new(&format!("{label}, max"), "ms", max));
            let slow = latencies.iter().filter(|d| **d > Duration::from_millis(50)).count();
            figures.push(Figure::new(&format!("{label}, writes over 50 ms"), "count", slow as f64));
            for (low, high) in SLOW_BUCKETS_MS {
                let within = |d: &&Duration| {
                    *d > &Duration::from_millis(low) && *d <= &Duration::from_millis(high)
                };
                let count = latencies.iter().filter(within).count();
                let name = match high {
                    u64::MAX => format!("{label}, writes over {low} ms"),
                    _ => format!("{label}, writes {low}-{high} ms"),
                };
                figures.push(Figure::new(&name, "count", count as f64));
            }
        }
        for node in running {
            node.stop()?;
        }
    }
    Ok(figures)
}
