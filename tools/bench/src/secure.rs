//! `secure`: what TLS and client tokens cost. One plain node and one serving TLS with
//! tokens required, side by side in the same run: creates/s and gets/s on each, in
//! interleaved quarters (plain, secure, secure, plain) so drift in the machine's speed
//! falls on both alike, and the secure/plain ratios. Each client keeps its connections
//! (the handshake is paid once per connection, as a real client pools them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::procs::{self, Proc};
use crate::report::Figure;
use crate::scenarios::{self, READY};
use crate::Settings;

/// A node and how to reach it.
struct Target {
    proc: Proc,
    base: String,
    http: reqwest::Client,
}

pub async fn secure(settings: &Settings, http: &reqwest::Client) -> Result<Vec<Figure>> {
    let certs = tempfile::tempdir()?;
    kvs::keys::write_certs(certs.path(), &["bench".to_owned()], &[])?;
    let (private, public) = kvs::keys::token_keypair()?;
    let public_path = certs.path().join("token-public.pem");
    std::fs::write(&public_path, public)?;
    let allow = ["read:*".parse(), "write:*".parse()]
        .into_iter()
        .collect::<Result<Vec<kvs::token::Permission>, _>>()
        .map_err(anyhow::Error::msg)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let (token, _) = kvs::token::issue(
        private.as_bytes(),
        "bench",
        &allow,
        Duration::from_secs(24 * 3600),
        now,
    )?;

    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let plain = procs::start(&settings.kvs, "plain", dirs[0].path(), &[], &[])?;
    let path = |file: &str| certs.path().join(file).display().to_string();
    let flags = [
        "--tls-cert".to_owned(),
        path("bench.pem"),
        "--tls-key".to_owned(),
        path("bench-key.pem"),
        "--auth-public-key".to_owned(),
        public_path.display().to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let secure = procs::start(&settings.kvs, "secure", dirs[1].path(), &[], &flags)?;
    let ca = std::fs::read(certs.path().join("ca.pem"))?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
    let tls_http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca)?])
        .default_headers(headers)
        .pool_max_idle_per_host(settings.clients)
        .timeout(Duration::from_secs(60))
        .build()?;
    let targets = [
        Target { base: plain.base(), proc: plain, http: http.clone() },
        Target { base: format!("https://127.0.0.1:{}", secure.port), proc: secure, http: tls_http },
    ];
    for target in &targets {
        wait_ready(target).await?;
    }

    let quarter = settings.seconds / 4.0;
    let mut creates = [(0usize, Duration::ZERO, Vec::new()), (0, Duration::ZERO, Vec::new())];
    for side in [0, 1, 1, 0] {
        let (latencies, elapsed) = creates_for(settings, &targets[side], quarter).await?;
        creates[side].0 += latencies.len();
        creates[side].1 += elapsed;
        creates[side].2.extend(latencies);
    }
    let mut ids = Vec::new();
    for target in &targets {
        ids.push(Arc::new(preload(target, 200).await?));
    }
    let mut gets = [(0usize, Duration::ZERO, Vec::new()), (0, Duration::ZERO, Vec::new())];
    for side in [0, 1, 1, 0] {
        let (latencies, elapsed) =
            gets_for(settings, &targets[side], ids[side].clone(), quarter).await?;
        gets[side].0 += latencies.len();
        gets[side].1 += elapsed;
        gets[side].2.extend(latencies);
    }

    let mut figures = Vec::new();
    for (what, runs) in [("creates", &mut creates), ("gets", &mut gets)] {
        let rate = |side: usize| runs[side].0 as f64 / runs[side].1.as_secs_f64();
        let (plain_rate, secure_rate) = (rate(0), rate(1));
        figures.push(Figure::new(&format!("{what}/s, plain HTTP"), "ops/s", plain_rate));
        figures.push(Figure::new(&format!("{what}/s, TLS + token"), "ops/s", secure_rate));
        figures.push(Figure::new(
            &format!("{what}/s, TLS + token ÷ plain"),
            "ratio",
            secure_rate / plain_rate,
        ));
        for (side, label) in [(0, "plain HTTP"), (1, "TLS + token")] {
            runs[side].2.sort();
            let p99 = scenarios::percentile(&runs[side].2, 0.99);
            figures.push(Figure::new(&format!("{what} p99, {label}"), "ms", p99));
        }
    }
    for target in targets {
        target.proc.stop()?;
    }
    Ok(figures)
}

async fn wait_ready(target: &Target) -> Result<()> {
    let started = Instant::now();
    let url = format!("{}/health/ready", target.base);
    loop {
        if let Ok(reply) = target.http.get(&url).send().await {
            if reply.status().is_success() {
                return Ok(());
            }
        }
        if started.elapsed() > READY {
            bail!("{} not ready after {READY:?}", target.proc.name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn creates_for(
    settings: &Settings,
    target: &Target,
    seconds: f64,
) -> Result<(Vec<Duration>, Duration)> {
    let (http, url) = (target.http.clone(), format!("{}/todos", target.base));
    scenarios::drive(settings.clients, seconds, move |client, n| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let body = json!({"todo": format!("client {client} todo {n}")});
            let reply = http.post(url).json(&body).send().await?;
            ensure!(reply.status().is_success(), "create answered {}", reply.status());
            Ok(())
        }
    })
    .await
}

async fn preload(target: &Target, count: usize) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let reply: Value = target
            .http
            .post(format!("{}/todos", target.base))
            .json(&json!({"todo": format!("preloaded {n}")}))
            .send()
            .await?
            .json()
            .await?;
        ids.push(reply["id"].as_str().context("create answered no id")?.to_owned());
    }
    Ok(ids)
}

async fn gets_for(
    settings: &Settings,
    target: &Target,
    ids: Arc<Vec<String>>,
    seconds: f64,
) -> Result<(Vec<Duration>, Duration)> {
    let (http, base) = (target.http.clone(), target.base.clone());
    scenarios::drive(settings.clients, seconds, move |client, n| {
        let (http, base, ids) = (http.clone(), base.clone(), ids.clone());
        async move {
            let id = &ids[(client * 7919 + n) % ids.len()];
            let reply = http.get(format!("{base}/todos/{id}")).send().await?;
            ensure!(reply.status().is_success(), "get answered {}", reply.status());
            let _ = reply.bytes().await?;
            Ok(())
        }
    })
    .await
}
