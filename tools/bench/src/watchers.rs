//! `watchers`: what watch streams cost writers. One node; creates/s without watchers and
//! with 1,000 `GET /todos?watch=true` streams open (20 in a smoke run, `--seconds` under
//! 1), in interleaved quarters (none, watched, watched, none) so drift in the machine's
//! speed falls on both alike; the with/without ratio; and whether every watcher got every
//! change made while it was open.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::procs;
use crate::report::Figure;
use crate::scenarios::{self, READY};
use crate::Settings;

pub async fn watchers(settings: &Settings, http: &reqwest::Client) -> Result<Vec<Figure>> {
    let watchers = if settings.seconds < 1.0 { 20 } else { 1_000 };
    let dir = tempfile::tempdir()?;
    let node = procs::start(&settings.kvs, "watched", dir.path(), &[], &[])?;
    let base = node.base();
    procs::wait_ready(http, &node, READY).await?;

    let quarter = settings.seconds / 4.0;
    let (mut plain, mut watched) = ((0usize, Duration::ZERO), (0usize, Duration::ZERO));
    let mut watched_latencies = Vec::new();
    let mut plain_latencies = Vec::new();
    let (mut delivered, mut expected) = (0u64, 0u64);
    for with_watchers in [false, true, true, false] {
        let open = if with_watchers { Some(open_watchers(&base, watchers).await?) } else { None };
        let (latencies, elapsed) = scenarios::create_load(settings, http, &node, quarter).await?;
        match &open {
            Some((streams, counts)) => {
                watched.0 += latencies.len();
                watched.1 += elapsed;
                watched_latencies.extend(latencies.iter().copied());
                // Every create of this quarter must reach every watcher.
                let want = latencies.len() as u64;
                let deadline = Instant::now() + Duration::from_secs(30);
                while counts.iter().any(|c| c.load(Ordering::Relaxed) < want)
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                delivered +=
                    counts.iter().map(|c| c.load(Ordering::Relaxed).min(want)).sum::<u64>();
                expected += want * counts.len() as u64;
                for stream in streams {
                    stream.abort();
                }
            }
            None => {
                plain.0 += latencies.len();
                plain.1 += elapsed;
                plain_latencies.extend(latencies);
            }
        }
    }
    node.stop()?;
    let rate = |(count, elapsed): (usize, Duration)| count as f64 / elapsed.as_secs_f64();
    plain_latencies.sort();
    watched_latencies.sort();
    Ok(vec![
        Figure::new("creates/s, no watcher", "ops/s", rate(plain)),
        Figure::new(&format!("creates/s, {watchers} watchers"), "ops/s", rate(watched)),
        Figure::new("creates/s, watched ÷ not", "ratio", rate(watched) / rate(plain)),
        Figure::new("create p99, no watcher", "ms", scenarios::percentile(&plain_latencies, 0.99)),
        Figure::new(
            &format!("create p99, {watchers} watchers"),
            "ms",
            scenarios::percentile(&watched_latencies, 0.99),
        ),
        Figure::new(
            "changes delivered to watchers",
            "ratio",
            delivered as f64 / expected.max(1) as f64,
        ),
    ])
}

/// `count` open watch streams (each its own connection), with how many `put` events
/// each has read; returns once every stream has answered 200.
async fn open_watchers(
    base: &str,
    count: usize,
) -> Result<(Vec<tokio::task::JoinHandle<()>>, Vec<Arc<AtomicU64>>)> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let mut streams = Vec::with_capacity(count);
    let mut counts = Vec::with_capacity(count);
    for _ in 0..count {
        let mut response = client.get(format!("{base}/todos?watch=true")).send().await?;
        ensure!(response.status().is_success(), "watch answered {}", response.status());
        let seen = Arc::new(AtomicU64::new(0));
        counts.push(seen.clone());
        streams.push(tokio::spawn(async move {
            // Counted on the bytes as they come (a profile showed the bench's own
            // parsing, not the node, dominating with a thousand streams): the carry keeps
            // one byte short of a marker, so a split one is found once and none twice.
            const MARKER: &[u8] = b"\nevent: put\n";
            let mut carry: Vec<u8> = Vec::with_capacity(4096);
            while let Ok(Some(chunk)) = response.chunk().await {
                carry.extend_from_slice(&chunk);
                let found = carry.windows(MARKER.len()).filter(|w| *w == MARKER).count();
                seen.fetch_add(found as u64, Ordering::Relaxed);
                let keep = carry.len().min(MARKER.len() - 1);
                carry.drain(..carry.len() - keep);
            }
        }));
    }
    Ok((streams, counts))
}
