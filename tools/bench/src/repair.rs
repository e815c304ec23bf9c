//! `repair`: two real nodes holding the same N records except d; one anti-entropy round
//! through a counting proxy: time to equal roots, bytes each way, requests.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::{json, Value};

use crate::procs::{self, Proc};
use crate::proxy;
use crate::report::Figure;
use crate::scenarios::{load, READY};
use crate::Settings;

/// The differing-record counts measured (those above N / 2 are skipped).
pub const DIFFERENCES: [usize; 4] = [0, 1, 100, 10_000];

/// No background rounds and no pushes: only the round the harness asks for moves data.
const QUIET: [&str; 4] = ["--sync-interval", "1h", "--push-on-write", "false"];

pub async fn repair(settings: &Settings, http: &reqwest::Client) -> Result<Vec<Figure>> {
    let records = settings.records;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    // a advertises the proxy's address, so b knows a (and may sync with it: only
    // members can be named in `sync?peer=`) by the address whose traffic is counted.
    let a_port = procs::free_port()?;
    let proxy = proxy::start(a_port).await?;
    let advertise = format!("127.0.0.1:{}", proxy.port);
    let a_flags = [&QUIET[..], &["--advertise", &advertise]].concat();
    let a = procs::start_on(&settings.kvs, "repair-a", dirs[0].path(), a_port, &[], &a_flags)?;
    procs::wait_ready(http, &a, READY).await?;
    load(http, &a, records, settings.clients).await?;
    // b bootstraps from a before it is ready: both then hold the same N records.
    let b = procs::start(&settings.kvs, "repair-b", dirs[1].path(), &[proxy.port], &QUIET)?;
    procs::wait_ready(http, &b, READY).await?;
    ensure!(root(http, &a).await? == root(http, &b).await?, "b did not bootstrap to a's root");
    let mut figures = Vec::new();
    let mut changed = 0;
    for d in DIFFERENCES.into_iter().filter(|d| *d <= records / 2) {
        // d todos get a newer version on a only (no push, no background sync).
        for n in changed..changed + d {
            complete(http, &a, n).await?;
        }
        changed += d;
        proxy.counters.reset();
        let started = Instant::now();
        let url = format!("{}/internal/v1/sync?peer=127.0.0.1:{}", b.base(), proxy.port);
        let reply = http.post(url).send().await?;
        let elapsed = started.elapsed();
        ensure!(reply.status().is_success(), "sync answered {}", reply.status());
        let report: Value = reply.json().await?;
        ensure!(
            root(http, &a).await? == root(http, &b).await?,
            "roots differ after one round with d = {d}: {report}"
        );
        ensure!(report["pulled"] == json!(d), "d = {d} but the round pulled {}", report["pulled"]);
        let (up, down, requests) = proxy.counters.read();
        let label = format!("d = {d}");
        figures.push(Figure::new(&format!("{label}: time to equal roots"), "ms", ms(elapsed)));
        figures.push(Figure::new(&format!("{label}: requests"), "count", requests as f64));
        figures.push(Figure::new(&format!("{label}: bytes b→a"), "bytes", up as f64));
        figures.push(Figure::new(&format!("{label}: bytes a→b"), "bytes", down as f64));
        if d > 0 {
            // Everything on the socket but the record batches themselves (as the round
            // reports them): digests, fingerprints, positions, HTTP heads.
            let records = report["record_bytes"].as_u64().unwrap_or(0);
            let metadata = (up + down).saturating_sub(records) as f64 / d as f64;
            let name = format!("{label}: metadata per differing record");
            figures.push(Figure::new(&name, "bytes", metadata));
        }
    }
    b.stop()?;
    a.stop()?;
    Ok(figures)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

async fn root(http: &reqwest::Client, node: &Proc) -> Result<Value> {
    let info: Value = http.get(format!("{}/health/info", node.base())).send().await?.json().await?;
    Ok(info["merkle_root"].clone())
}

/// Marks the todo `load` created as number `n` completed (a newer version).
async fn complete(http: &reqwest::Client, node: &Proc, n: usize) -> Result<()> {
    let id = kvs::model::todo::todo_id(&format!("bench-{n}"));
    let url = format!("{}/todos/{id}", node.base());
    let reply = http.patch(url).json(&json!({"completed": true})).send().await?;
    ensure!(reply.status().is_success(), "updating bench-{n} answered {}", reply.status());
    Ok(())
}
