//! Quick cluster measurements with in-process nodes on loopback.
//!
//! ```sh
//! cargo run --release --example cluster_figures -- propagation 300
//! cargo run --release --example cluster_figures -- repair 1000000
//! cargo run --release --example cluster_figures -- bootstrap 1000000
//! ```
//! `repair` counts bytes at the socket through a proxy between the two nodes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvs::config::Config;
use kvs::daemon::{self, Node, Options};
use kvs::model::todo::StoredTodo;
use kvs::model::{Key, NodeId, Origin, Record, Timestamp, Value, Version};
use kvs::peer::{Faults, PeerClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn config(dir: &std::path::Path, seeds: Vec<String>, push: bool) -> Config {
    let mut config = Config::from_yaml("").unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.to_owned();
    config.seeds = seeds;
    config.push_on_write = push;
    config.join_timeout = Duration::from_secs(60);
    config
}

async fn node(seeds: Vec<String>, push: bool) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let node = daemon::start(config(dir.path(), seeds, push), Options::default()).await.unwrap();
    (node, dir)
}

fn todo_record(n: u64, generation: u64) -> (Key, Record) {
    let extern_id = format!("todo-{n}");
    let todo = StoredTodo {
        extern_id: extern_id.clone(),
        todo: format!("a todo of ordinary length, number {n}, generation {generation}"),
        completed: n.is_multiple_of(3),
        created_at: Timestamp::from_parts(1_700_000_000_000 + n, 0).raw(),
        updated_at: Timestamp::from_parts(1_700_000_000_000 + n + generation, 0).raw(),
    };
    let record = Record {
        version: Version {
            ts: Timestamp::from_parts(1_700_000_000_000 + n + generation, 0),
            origin: Origin { node: NodeId(uuid::Uuid::from_u128(1)), joined_at: 1 },
            uuid: uuid::Uuid::from_u128(u128::from(n) << 8 | u128::from(generation)),
        },
        value: Value::Live(todo.encode()),
    };
    (Key::Todo(kvs::model::todo::todo_id(&extern_id)), record)
}

async fn load(node: &Node, count: u64) {
    let replica = &node.services().replica;
    let mut n = 0;
    while n < count {
        let end = (n + 10_000).min(count);
        replica.merge((n..end).map(|i| todo_record(i, 0)).collect()).await.unwrap();
        n = end;
    }
}

/// A TCP proxy to `target` that counts bytes each way.
async fn counting_proxy(target: std::net::SocketAddr) -> (String, Arc<AtomicU64>, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (up2, down2) = (up.clone(), down.clone());
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { return };
            let server = TcpStream::connect(target).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let up = up2.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(n) = client_read.read(&mut buffer).await {
                    if n == 0 || server_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                    up.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
            let down = down2.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(n) = server_read.read(&mut buffer).await {
                    if n == 0 || client_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                    down.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (addr, up, down)
}

async fn propagation(writes: usize) {
    for push in [true, false] {
        let (a, _da) = node(vec![], push).await;
        let seed = vec![a.addr().to_string()];
        let (b, _db) = node(seed.clone(), push).await;
        let (c, _dc) = node(seed, push).await;
        let http = reqwest::Client::new();
        for member in [&b, &c] {
            while !member.services().readiness.current().ready {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        while a.cluster().alive_peers().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut latencies = Vec::new();
        for n in 0..writes {
            let started = Instant::now();
            let reply: serde_json::Value = http
                .post(format!("http://{}/todos", a.addr()))
                .json(&serde_json::json!({"todo": format!("propagate {n}")}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let id = reply["id"].as_str().unwrap().to_owned();
            for member in [&b, &c] {
                loop {
                    let url = format!("http://{}/todos/{id}", member.addr());
                    if http.get(url).send().await.unwrap().status().is_success() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
            latencies.push(started.elapsed());
        }
        latencies.sort();
        let at =
            |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        println!(
            "propagation, 3 nodes, push {}: {writes} writes, write→visible-on-all p50 {:.2?} p99 {:.2?} (includes the write)",
            if push { "on" } else { "off" },
            at(0.5),
            at(0.99)
        );
        for member in [a, b, c] {
            member.shutdown().await.unwrap();
        }
    }
}

async fn repair(count: u64) {
    let (a, _da) = node(vec![], false).await;
    let (b, _db) = node(vec![], false).await;
    let started = Instant::now();
    load(&a, count).await;
    load(&b, count).await;
    println!("loaded {count} records on two nodes in {:.1?}", started.elapsed());
    let peer = PeerClient::new(None, Faults::default());
    let mut changed = 0u64;
    for d in [0u64, 1, 100, 10_000] {
        // a gets newer versions of d keys that b still holds old.
        let fresh: Vec<_> = (changed..changed + d).map(|n| todo_record(n, 1)).collect();
        changed += d;
        if !fresh.is_empty() {
            a.services().replica.merge(fresh).await.unwrap();
        }
        let (proxy, up, down) = counting_proxy(a.addr()).await;
        let started = Instant::now();
        let report = kvs::sync::sync_round(&peer, &b.services().replica, &proxy).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(a.services().status().merkle_root, b.services().status().merkle_root);
        let (up, down) = (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
        println!(
            "repair d={d} of N={count}: {} requests, {up} bytes b→a, {down} bytes a→b, {} segments, {} records pulled, {:.1?}",
            report.requests, report.differing_segments, report.pulled, elapsed
        );
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn bootstrap(count: u64) {
    let (a, _da) = node(vec![], false).await;
    let started = Instant::now();
    load(&a, count).await;
    println!("loaded {count} todos in {:.1?}", started.elapsed());
    let started = Instant::now();
    let (b, _db) = node(vec![a.addr().to_string()], false).await;
    while !b.services().readiness.current().ready {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    assert_eq!(a.services().status().merkle_root, b.services().status().merkle_root);
    println!("bootstrap of {count} todos: ready after {elapsed:.1?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let number = |default: u64| args.get(2).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.get(1).map(String::as_str) {
        Some("propagation") => propagation(number(300) as usize).await,
        Some("repair") => repair(number(1_000_000)).await,
        Some("bootstrap") => bootstrap(number(1_000_000)).await,
        _ => eprintln!("usage: cluster_figures propagation [WRITES] | repair [N] | bootstrap [N]"),
    }
}
