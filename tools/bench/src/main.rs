//! `kvs-bench`: starts real `kvs` processes on loopback in temporary directories, drives
//! them over HTTP, and prints a markdown table of median (min, max) figures over runs.
//!
//! ```sh
//! cargo build --release --workspace
//! ./target/release/kvs-bench all                       # every scenario, 3 runs
//! ./target/release/kvs-bench --runs 5 write read --json out.json
//! ./target/release/kvs-bench --records 1000000 scale   # footprint, restart, bootstrap
//! ```

mod attack;
mod cluster;
mod compare;
mod membership;
mod procs;
mod proxy;
mod repair;
mod report;
mod scenarios;
mod secure;
mod tail;
mod watchers;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Durable creates on one node: throughput, p50/p99/p999
    Write,
    /// Gets on one node: throughput, p50/p99/p999
    Read,
    /// The write load with and without Merkle upkeep, interleaved: the throughput lost
    MerkleCost,
    /// 3 and 5 nodes: write on one, poll the others; push on and off
    Propagation,
    /// 1 node, then 3 with push on write (creates on one, then on all three): creates/s,
    /// p50/p99, ratios to one node, write→visible-on-all at half the 3-node rate
    ClusterWrite,
    /// The same create load against 3-node kvs, 3-node etcd and Redis (primary + 2
    /// replicas, appendfsync always) when installed: throughput, latency, ratios
    Compare,
    /// Write latency on 1 and 3 nodes at 10 %, 50 % and 80 % of the measured maximum,
    /// --seconds each: p50, p99, p99.9, max, writes over 50 ms
    Tail,
    /// Two nodes with --records todos, d of them newer on one: one sync round through a
    /// counting proxy (time, bytes each way, requests)
    Repair,
    /// Load --records todos: disk and RSS per record (footprint), restart to ready, bootstrap
    /// of a new node (one load serves the three)
    #[value(alias = "footprint", alias = "restart", alias = "bootstrap")]
    Scale,
    /// One node with a cluster key: honest latency alone and while attackers hold idle
    /// sockets and send unsigned peer requests and forged gossip
    Attack,
    /// One plain node and one with TLS and tokens required, same run: creates/s and
    /// gets/s on each (interleaved quarters), p99, and the secure/plain ratios
    Secure,
    /// One node: creates/s with no watcher, 1,000 watchers of every write and 1,000 of
    /// other keys (interleaved sixths), the ratios, whether every watcher got every
    /// change, and the node's CPU per create and the cores the node and the bench used
    Watchers,
    /// 10, 20 and 50 real nodes (5 in a smoke run): all alive, membership bytes/s per
    /// node, false suspicions and deaths while idle (--seconds), write→visible-on-all
    /// with a watch stream on every node, time to declare a kill -9-ed node dead
    Membership,
    /// The SWIM membership core simulated at 50 and 1,000 members (5 % loss, one starved
    /// member): join and failure detection times, false suspicions and deaths, bytes/s
    MembershipSim,
    /// All of the above
    All,
}

#[derive(Debug, Parser)]
#[command(name = "kvs-bench", version, about)]
struct Args {
    /// Scenarios to run
    #[arg(required = true, value_enum)]
    scenarios: Vec<Scenario>,
    /// Runs per scenario (figures are the median, with min and max)
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Concurrent clients for write, read and loading
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds each write/read run lasts
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Sequential writes per propagation run
    #[arg(long, default_value_t = 300)]
    propagation_writes: usize,
    /// Todos loaded for the scale scenario
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Cluster sizes for the membership scenario [default: 10, 20 and 50; 5 in a smoke]
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<usize>,
    /// Also write the rows as JSON to this file
    #[arg(long)]
    json: Option<PathBuf>,
    /// The kvs binary [default: `kvs` beside this program]
    #[arg(long)]
    kvs: Option<PathBuf>,
}

pub struct Settings {
    pub kvs: PathBuf,
    pub clients: usize,
    pub seconds: f64,
    pub propagation_writes: usize,
    pub records: usize,
    /// Cluster sizes for `membership` (empty: its defaults).
    pub nodes: Vec<usize>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kvs-bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    if args.runs == 0 || args.clients == 0 || args.records == 0 || args.propagation_writes == 0 {
        bail!("--runs, --clients, --records and --propagation-writes must be at least 1");
    }
    if args.nodes.iter().any(|&n| n < 2) {
        bail!("--nodes takes cluster sizes of at least 2 (e.g. --nodes 10,50)");
    }
    let kvs = match args.kvs {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("kvs"),
    };
    if !kvs.exists() {
        bail!("no kvs binary at {} (build it: cargo build --release --workspace)", kvs.display());
    }
    let settings = Settings {
        kvs,
        clients: args.clients,
        seconds: args.seconds,
        propagation_writes: args.propagation_writes,
        records: args.records,
        nodes: args.nodes,
    };
    let mut scenarios = args.scenarios.clone();
    if scenarios.contains(&Scenario::All) {
        scenarios = vec![
            Scenario::Write,
            Scenario::Read,
            Scenario::MerkleCost,
            Scenario::Propagation,
            Scenario::ClusterWrite,
            Scenario::Compare,
            Scenario::Tail,
            Scenario::Scale,
            Scenario::Attack,
            Scenario::Secure,
            Scenario::Watchers,
            Scenario::Membership,
            Scenario::MembershipSim,
        ];
    }
    scenarios.dedup();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(settings.clients)
        .timeout(Duration::from_secs(60))
        .build()?;
    let progress = ProgressBar::new((scenarios.len() * args.runs) as u64);
    progress
        .set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").context("template")?);
    let mut rows = Vec::new();
    for scenario in scenarios {
        let name = scenario.to_possible_value().context("every scenario has a name")?;
        let name = name.get_name().to_owned();
        let mut runs = Vec::new();
        for run in 1..=args.runs {
            progress.set_message(format!("{name} run {run}"));
            let figures = match scenario {
                Scenario::Write => scenarios::write(&settings, &http).await,
                Scenario::Read => scenarios::read(&settings, &http).await,
                Scenario::MerkleCost => scenarios::merkle_cost(&settings, &http).await,
                Scenario::Propagation => scenarios::propagation(&settings, &http).await,
                Scenario::Repair => repair::repair(&settings, &http).await,
                Scenario::ClusterWrite => cluster::cluster_write(&settings, &http).await,
                Scenario::Compare => compare::compare(&settings, &http).await,
                Scenario::Tail => tail::tail(&settings, &http).await,
                Scenario::Scale => scenarios::data_at_scale(&settings, &http).await,
                Scenario::Attack => attack::attack(&settings, &http).await,
                Scenario::Secure => secure::secure(&settings, &http).await,
                Scenario::Watchers => watchers::watchers(&settings, &http).await,
                Scenario::Membership => membership::membership(&settings, &http).await,
                Scenario::MembershipSim => membership::membership_sim(&settings, run).await,
                Scenario::All => unreachable!("expanded above"),
            }
            .with_context(|| format!("{name}, run {run}"))?;
            runs.push(figures);
            progress.inc(1);
        }
        rows.extend(report::summarize(&name, &runs));
    }
    progress.finish_and_clear();
    print!("{}", report::markdown(&rows));
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&rows)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
