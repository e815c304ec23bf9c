//! `watchers`: what watch streams cost writers. One node, a create load, and three
//! settings in interleaved sixths (none, every, other, other, every, none) so drift in the
//! machine's speed falls on all alike:
//! - no watcher;
//! - 1,000 watchers of every write (`GET /todos?watch=true`): each create becomes 1,000
//!   events on the wire, so this one is bounded by the bytes the node and the bench's own
//!   readers move through loopback on the same two cores;
//! - 1,000 watchers of other keys (`GET /kv?prefix=watchers/N/&watch=true`, nothing
//!   written there): what being watched costs a writer when the watchers are not the ones
//!   reading every write.
//!
//! 20 watchers in a smoke run (`--seconds` under 1). Figures: creates/s and p99 of each,
//! the ratios to no watcher, whether every watcher of every write got every change made
//! while it was open, and the cores the node and the bench (load and readers) used in
//! each setting: they share the machine, so a writer slowed by watchers shows here as
//! cores taken by the bench's readers or by the node's sending.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::procs;
use crate::report::Figure;
use crate::scenarios::{self, READY};
use crate::Settings;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Watching {
    Nobody,
    Every,
    Other,
}

#[derive(Default)]
struct Tally {
    creates: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// CPU time the node used under the load.
    node_cpu: Duration,
    /// CPU time the bench used under the load (creates, and the watchers' reading).
    bench_cpu: Duration,
}

impl Tally {
    fn rate(&self) -> f64 {
        self.creates as f64 / self.elapsed.as_secs_f64()
    }

    /// Cores the node and the bench used on average.
    fn cores(&self) -> (f64, f64) {
        let per = |cpu: Duration| cpu.as_secs_f64() / self.elapsed.as_secs_f64();
        (per(self.node_cpu), per(self.bench_cpu))
    }

    fn p99(&mut self) -> f64 {
        self.latencies.sort();
        scenarios::percentile(&self.latencies, 0.99)
    }
}

pub async fn watchers(settings: &Settings, http: &reqwest::Client) -> Result<Vec<Figure>> {
    let watchers = if settings.seconds < 1.0 { 20 } else { 1_000 };
    let dir = tempfile::tempdir()?;
    let node = procs::start(&settings.kvs, "watched", dir.path(), &[], &[])?;
    let base = node.base();
    procs::wait_ready(http, &node, READY).await?;

    use Watching::{Every, Nobody, Other};
    let sixth = settings.seconds / 6.0;
    let (mut plain, mut every, mut other) = (Tally::default(), Tally::default(), Tally::default());
    let (mut delivered, mut expected) = (0u64, 0u64);
    for watching in [Nobody, Every, Other, Other, Every, Nobody] {
        let open = match watching {
            Nobody => None,
            Every => Some(open_watchers(&base, watchers, |_| "todos?watch=true".into()).await?),
            Other => Some(
                open_watchers(&base, watchers, |n| format!("kv?prefix=watchers/{n}/&watch=true"))
                    .await?,
            ),
        };
        let node_before = procs::cpu_times(std::slice::from_ref(&node))?;
        let bench_before = procs::own_cpu_time()?;
        let (latencies, elapsed) = scenarios::create_load(settings, http, &node, sixth).await?;
        let node_cpu = procs::cpu_spent(std::slice::from_ref(&node), &node_before)?[0];
        let bench_cpu = procs::own_cpu_time()?.saturating_sub(bench_before);
        let tally = match watching {
            Nobody => &mut plain,
            Every => &mut every,
            Other => &mut other,
        };
        tally.creates += latencies.len();
        tally.elapsed += elapsed;
        tally.node_cpu += node_cpu;
        tally.bench_cpu += bench_cpu;
        if watching == Every {
            // Every create of this sixth must reach every watcher.
            let counts = &open.as_ref().expect("watchers are open").1;
            let want = latencies.len() as u64;
            let deadline = Instant::now() + Duration::from_secs(30);
            while counts.iter().any(|c| c.load(Ordering::Relaxed) < want)
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            delivered += counts.iter().map(|c| c.load(Ordering::Relaxed).min(want)).sum::<u64>();
            expected += want * counts.len() as u64;
        }
        tally.latencies.extend(latencies);
        for stream in open.iter().flat_map(|(streams, _)| streams) {
            stream.abort();
        }
    }
    node.stop()?;
    let mut cores = Vec::new();
    for (setting, tally) in [
        ("no watcher".to_owned(), &plain),
        (format!("{watchers} watchers of every write"), &every),
        (format!("{watchers} watchers of other keys"), &other),
    ] {
        let (node, bench) = tally.cores();
        let per_create = procs::per_write(tally.node_cpu, &tally.latencies);
        cores.push(Figure::new(&format!("node CPU per create, {setting}"), "µs", per_create));
        cores.push(Figure::new(&format!("cores used by the node, {setting}"), "cores", node));
        cores.push(Figure::new(&format!("cores used by the bench, {setting}"), "cores", bench));
    }
    let mut figures = vec![
        Figure::new("creates/s, no watcher", "ops/s", plain.rate()),
        Figure::new(
            &format!("creates/s, {watchers} watchers of every write"),
            "ops/s",
            every.rate(),
        ),
        Figure::new(
            "creates/s, watchers of every write ÷ none",
            "ratio",
            every.rate() / plain.rate(),
        ),
        Figure::new(
            &format!("creates/s, {watchers} watchers of other keys"),
            "ops/s",
            other.rate(),
        ),
        Figure::new(
            "creates/s, watchers of other keys ÷ none",
            "ratio",
            other.rate() / plain.rate(),
        ),
        Figure::new("create p99, no watcher", "ms", plain.p99()),
        Figure::new(&format!("create p99, {watchers} watchers of every write"), "ms", every.p99()),
        Figure::new(&format!("create p99, {watchers} watchers of other keys"), "ms", other.p99()),
        Figure::new(
            "changes delivered to watchers of every write",
            "ratio",
            delivered as f64 / expected.max(1) as f64,
        ),
    ];
    figures.extend(cores);
    Ok(figures)
}

/// `count` open watch streams (each its own connection, `path(n)` after the base), with
/// how many `put` events each has read; returns once every stream has answered 200.
async fn open_watchers(
    base: &str,
    count: usize,
    path: impl Fn(usize) -> String,
) -> Result<(Vec<tokio::task::JoinHandle<()>>, Vec<Arc<AtomicU64>>)> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let mut streams = Vec::with_capacity(count);
    let mut counts = Vec::with_capacity(count);
    for n in 0..count {
        let mut response = client.get(format!("{base}/{}", path(n))).send().await?;
        ensure!(response.status().is_success(), "watch answered {}", response.status());
        let seen = Arc::new(AtomicU64::new(0));
        counts.push(seen.clone());
        streams.push(tokio::spawn(async move {
            const MARKER: &[u8] = b"\nevent: put\n";
            // Counted on the bytes as they come, with a SIMD search and no copy of the
            // stream (profiles showed the bench's own parsing, then its byte-window scan,
            // taking more of the two cores than the node): only the few bytes around a
            // chunk boundary are copied, so a marker split across chunks is found once.
            let finder = memchr::memmem::Finder::new(MARKER);
            let mut tail: Vec<u8> = Vec::with_capacity(2 * MARKER.len());
            while let Ok(Some(chunk)) = response.chunk().await {
                let head = &chunk[..chunk.len().min(MARKER.len() - 1)];
                tail.extend_from_slice(head);
                let found = finder.find_iter(&tail).count() + finder.find_iter(&chunk).count();
                seen.fetch_add(found as u64, Ordering::Relaxed);
                // The last bytes seen (tail + head already holds a tiny chunk whole).
                let keep = MARKER.len() - 1;
                if chunk.len() >= keep {
                    tail.clear();
                    tail.extend_from_slice(&chunk[chunk.len() - keep..]);
                } else {
                    tail.drain(..tail.len().saturating_sub(keep));
                }
            }
        }));
    }
    Ok((streams, counts))
}
