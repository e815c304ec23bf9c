//! A quick load generator for one node: N concurrent clients creating or reading todos
//! for a fixed time; prints throughput and latency percentiles.
//!
//! ```sh
//! cargo run --release --example load -- write http://127.0.0.1:8080 64 10
//! cargo run --release --example load -- read  http://127.0.0.1:8080 64 10
//! ```
//! (mode, base URL, clients, seconds). `read` first creates 1,000 todos to read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: load write|read BASE_URL CLIENTS SECONDS";
    let mode = args.get(1).expect(usage).clone();
    let base = args.get(2).expect(usage).clone();
    let clients: usize = args.get(3).and_then(|a| a.parse().ok()).expect(usage);
    let seconds: u64 = args.get(4).and_then(|a| a.parse().ok()).expect(usage);
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build().unwrap();

    let mut ids = Vec::new();
    if mode == "read" {
        for n in 0..1000 {
            let body = json!({"todo": format!("read me {n}")});
            let reply = http.post(format!("{base}/todos")).json(&body).send().await.unwrap();
            let todo: serde_json::Value = reply.json().await.unwrap();
            ids.push(todo["id"].as_str().unwrap().to_owned());
        }
    }
    let ids = Arc::new(ids);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (http, base, ids, stop, errors, mode) =
                (http.clone(), base.clone(), ids.clone(), stop.clone(), errors.clone(), mode.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let begin = Instant::now();
                    let result = if mode == "write" {
                        let body = json!({"todo": format!("client {client} todo {n}"), "completed": false});
                        http.post(format!("{base}/todos")).json(&body).send().await
                    } else {
                        let id = &ids[(client * 7919 + n) % ids.len()];
                        http.get(format!("{base}/todos/{id}")).send().await
                    };
                    match result {
                        Ok(reply) if reply.status().is_success() => {
                            let _ = reply.bytes().await;
                            latencies.push(begin.elapsed());
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    n += 1;
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{mode}: {clients} clients, {:.1}s: {} ok ({:.0}/s), {} errors, p50 {:.2?}, p99 {:.2?}, p999 {:.2?}",
        elapsed,
        latencies.len(),
        latencies.len() as f64 / elapsed,
        errors.load(Ordering::Relaxed),
        pct(0.50),
        pct(0.99),
        pct(0.999),
    );
}
