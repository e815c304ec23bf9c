//! `compare`: the same create load, from the same client and concurrency, in the same
//! run, against a 3-node kvs cluster (writes on one node, push on), a 3-node etcd
//! (raft, an fsync per commit) and Redis (a primary with two replicas,
//! `appendfsync always`), when those are installed (`apt-get install etcd-server
//! redis-server`); a peer that is not installed is skipped with a message.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::procs::{self, Proc};
use crate::report::Figure;
use crate::scenarios::{self, READY};
use crate::Settings;

pub async fn compare(settings: &Settings, http: &reqwest::Client) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let kvs = kvs_three(settings, http).await?;
    let kvs_rate = rate(&kvs);
    figures.extend(scenarios::latency_figures("kvs 3 nodes, creates", kvs.0, kvs.1));
    if installed("etcd") {
        let etcd = etcd_three(settings, http).await?;
        let etcd_rate = rate(&etcd);
        figures.extend(scenarios::latency_figures("etcd 3 nodes, puts", etcd.0, etcd.1));
        figures.push(Figure::new("kvs / etcd throughput", "ratio", kvs_rate / etcd_rate));
    } else {
        eprintln!("compare: etcd is not installed (apt-get install etcd-server); skipped");
    }
    if installed("redis-server") {
        let redis = redis_three(settings).await?;
        let redis_rate = rate(&redis);
        figures.extend(scenarios::latency_figures("redis 1+2, SET", redis.0, redis.1));
        figures.push(Figure::new("kvs / redis throughput", "ratio", kvs_rate / redis_rate));
    } else {
        eprintln!("compare: redis-server is not installed (apt-get install redis-server); skipped");
    }
    Ok(figures)
}

type Load = (Vec<Duration>, Duration);

fn rate(load: &Load) -> f64 {
    load.0.len() as f64 / load.1.as_secs_f64()
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

async fn kvs_three(settings: &Settings, http: &reqwest::Client) -> Result<Load> {
    let dirs = (0..3).map(|_| tempfile::tempdir()).collect::<Result<Vec<_>, _>>()?;
    let first = procs::start(&settings.kvs, "k1", dirs[0].path(), &[], &[])?;
    procs::wait_ready(http, &first, READY).await?;
    let mut nodes = vec![first];
    for (n, dir) in dirs.iter().enumerate().skip(1) {
        let seeds = [nodes[0].port];
        nodes.push(procs::start(&settings.kvs, &format!("k{}", n + 1), dir.path(), &seeds, &[])?);
    }
    for node in &nodes {
        procs::wait_ready(http, node, READY).await?;
    }
    scenarios::wait_for_members(http, &nodes[0], 3).await?;
    let url = format!("{}/todos", nodes[0].base());
    let load = http_load(settings, http, move |client, n| {
        (url.clone(), json!({"todo": format!("client {client} todo {n}")}))
    })
    .await?;
    for node in nodes {
        node.stop()?;
    }
    Ok(load)
}

async fn etcd_three(settings: &Settings, http: &reqwest::Client) -> Result<Load> {
    let dir = tempfile::tempdir()?;
    let ports: Vec<(u16, u16)> =
        (0..3).map(|_| Ok((procs::free_port()?, procs::free_port()?))).collect::<Result<_>>()?;
    let cluster: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(n, (_, peer))| format!("e{n}=http://127.0.0.1:{peer}"))
        .collect();
    let mut nodes = Vec::new();
    for (n, (client, peer)) in ports.iter().enumerate() {
        let child = Command::new("etcd")
            .args(["--name", &format!("e{n}")])
            .arg("--data-dir")
            .arg(dir.path().join(format!("e{n}")))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start etcd")?;
        nodes.push(Proc::adopt(&format!("e{n}"), *client, child));
    }
    let health = format!("{}/health", nodes[0].base());
    let started = Instant::now();
    loop {
        let reply = http.get(&health).send().await;
        if let Ok(reply) = reply {
            if reply.text().await.unwrap_or_default().contains("\"true\"") {
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("etcd did not become healthy within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("{}/v3/kv/put", nodes[0].base());
    let b64 = base64::engine::general_purpose::STANDARD;
    http_load(settings, http, move |client, n| {
        let key = b64.encode(format!("bench/{client}/{n}"));
        let value = b64.encode(format!("client {client} todo {n}"));
        (url.clone(), json!({"key": key, "value": value}))
    })
    .await
}

/// POSTs what `request` names from `settings.clients` loops for `settings.seconds`.
async fn http_load(
    settings: &Settings,
    http: &reqwest::Client,
    request: impl Fn(usize, usize) -> (String, serde_json::Value) + Send + Sync + 'static,
) -> Result<Load> {
    crate::cluster::post_load(settings.clients, settings.seconds, http, None, request).await
}

fn start_redis(dir: &Path, port: u16, primary: Option<u16>) -> Result<Proc> {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .arg("--dir")
        .arg(dir);
    if let Some(primary) = primary {
        command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start redis-server")?;
    Ok(Proc::adopt(&format!("redis-{port}"), port, child))
}

async fn redis_three(settings: &Settings) -> Result<Load> {
    let dirs = (0..3).map(|_| tempfile::tempdir()).collect::<Result<Vec<_>, _>>()?;
    let primary_port = procs::free_port()?;
    let mut nodes = vec![start_redis(dirs[0].path(), primary_port, None)?];
    for dir in &dirs[1..] {
        nodes.push(start_redis(dir.path(), procs::free_port()?, Some(primary_port))?);
    }
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", primary_port)).await.is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("redis did not start within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(settings.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..settings.clients)
        .map(|client| {
            tokio::spawn(async move {
                let socket = tokio::net::TcpStream::connect(("127.0.0.1", primary_port)).await?;
                socket.set_nodelay(true)?;
                let (read, mut write) = socket.into_split();
                let mut read = BufReader::new(read);
                let (mut latencies, mut line) = (Vec::new(), String::new());
                for n in 0.. {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let (key, value) =
                        (format!("bench/{client}/{n}"), format!("client {client} todo {n}"));
                    let command = format!(
                        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                        key.len(),
                        value.len()
                    );
                    let begin = Instant::now();
                    write.write_all(command.as_bytes()).await?;
                    line.clear();
                    read.read_line(&mut line).await?;
                    ensure!(line == "+OK\r\n", "SET answered {line:?}");
                    latencies.push(begin.elapsed());
                }
                Ok::<_, anyhow::Error>(latencies)
            })
        })
        .collect();
    let all = crate::cluster::join_latencies(tasks).await?;
    let elapsed = started.elapsed();
    drop(nodes);
    Ok((all, elapsed))
}
