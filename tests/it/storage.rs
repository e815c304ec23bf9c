//! A real full filesystem under a real `kvs` process: a small tmpfs mounted by the test
//! (root only; skipped with a message otherwise — CI runs as root). Fill it, check what
//! clients, readiness and the log see, free it, check the node recovers by itself,
//! `kill -9`, restart, check every acknowledged write, fill again and check SIGTERM.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value as Json};

use crate::support::{client, eventually, Process};

const DEADLINE: Duration = Duration::from_secs(30);

/// A tmpfs of `mib` MiB, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        if !mounted.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&mounted.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Writes a file until the filesystem has no byte left.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    for chunk in [1024 * 1024, 4096, 1] {
        let bytes = vec![1u8; chunk];
        while file.write_all(&bytes).and_then(|()| file.sync_data()).is_ok() {}
    }
}

async fn put(http: &reqwest::Client, base: &str, key: &str) -> StatusCode {
    let body = json!({ "key": key, "pad": "x".repeat(1000) });
    http.put(format!("{base}/kv/{key}")).json(&body).send().await.unwrap().status()
}

async fn info(http: &reqwest::Client, base: &str) -> Json {
    http.get(format!("{base}/health/info")).send().await.unwrap().json().await.unwrap()
}

/// Every key in `keys` reads back with its own value.
async fn all_present(http: &reqwest::Client, base: &str, keys: &[String]) {
    for key in keys {
        let reply = http.get(format!("{base}/kv/{key}")).send().await.unwrap();
        assert_eq!(reply.status(), StatusCode::OK, "acknowledged {key} unreadable");
        let value: Json = reply.json().await.unwrap();
        assert_eq!(value["key"], json!(key));
    }
}

/// Writes fresh keys until one answers 507; returns the acknowledged ones and the
/// refused one.
async fn write_until_full(
    http: &reqwest::Client,
    base: &str,
    prefix: &str,
) -> (Vec<String>, String) {
    let started = Instant::now();
    let mut acked = Vec::new();
    for n in 0.. {
        let key = format!("{prefix}/{n}");
        match put(http, base, &key).await {
            StatusCode::CREATED => acked.push(key),
            StatusCode::INSUFFICIENT_STORAGE => return (acked, key),
            other => panic!("{key}: unexpected {other}"),
        }
        assert!(started.elapsed() < DEADLINE, "no write was refused on a full disk");
    }
    unreachable!()
}

fn log_lines(process: &Process, needle: &str) -> usize {
    process.logs.lock().unwrap().iter().filter(|line| line.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_survived_reported_and_recovered_from() {
    let Some(tmpfs) = Tmpfs::mount(48) else { return };
    let data: PathBuf = tmpfs.path().join("data");
    let filler = tmpfs.path().join("filler");
    let flags = ["--reserve-bytes", "8388608"];
    let http = client();
    let node = Process::start_with(&data, &flags);
    let base = node.base.clone();
    eventually("ready", DEADLINE, || async {
        let reply = http.get(format!("{base}/health/ready")).send().await.ok()?;
        (reply.status() == StatusCode::OK).then_some(())
    })
    .await;
    let mut acked = Vec::new();
    for n in 0..200 {
        let key = format!("before/{n}");
        assert_eq!(put(&http, &base, &key).await, StatusCode::CREATED);
        acked.push(key);
    }

    // Full: writes are refused with 507, and the refused one leaves no trace.
    fill(&filler);
    let (late, refused) = write_until_full(&http, &base, "late").await;
    acked.extend(late);
    let reply = http.get(format!("{base}/kv/{refused}")).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::NOT_FOUND, "a write answered 507 is visible");
    assert_eq!(put(&http, &base, "late/again").await, StatusCode::INSUFFICIENT_STORAGE);
    // Reads of acknowledged data and listings keep answering 200.
    all_present(&http, &base, &acked).await;
    let listed = http.get(format!("{base}/kv?prefix=before/&limit=1000")).send().await.unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    let todos = http.get(format!("{base}/todos")).send().await.unwrap();
    assert_eq!(todos.status(), StatusCode::OK);
    // Readiness and info say why.
    let ready = http.get(format!("{base}/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready: Json = ready.json().await.unwrap();
    assert!(ready["reason"].as_str().unwrap().contains("disk_full"), "{ready}");
    let shown = info(&http, &base).await;
    assert_eq!(shown["storage"]["writable"], json!(false), "{shown}");
    assert_eq!(shown["storage"]["fault"], json!("disk_full"), "{shown}");
    // Reported once, not once per retry: three quiet seconds add no log line.
    assert_eq!(log_lines(&node, "storage failed"), 1);
    let lines = node.logs.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let more = node.logs.lock().unwrap().len() - lines;
    assert!(more <= 2, "{more} log lines in 3 quiet seconds while full");
    let lines = node.logs.lock().unwrap().len();
    for n in 0..20 {
        assert_eq!(
            put(&http, &base, &format!("refused/{n}")).await,
            StatusCode::INSUFFICIENT_STORAGE
        );
    }
    let more = node.logs.lock().unwrap().len() - lines;
    assert!(more <= 2, "20 refused writes logged {more} lines");

    // Space comes back: the node recovers by itself, without a restart.
    std::fs::remove_file(&filler).unwrap();
    eventually("writes to resume", DEADLINE, || async {
        (put(&http, &base, "after/0").await == StatusCode::CREATED).then_some(())
    })
    .await;
    acked.push("after/0".into());
    let shown = info(&http, &base).await;
    assert_eq!(shown["storage"]["writable"], json!(true), "{shown}");
    assert_eq!(shown["storage"]["reserve_held"], json!(true), "{shown}");
    let ready = http.get(format!("{base}/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(log_lines(&node, "storage recovered"), 1);
    for n in 1..50 {
        let key = format!("after/{n}");
        assert_eq!(put(&http, &base, &key).await, StatusCode::CREATED);
        acked.push(key);
    }

    // kill -9 and restart: every acknowledged write is there, the refused one is not.
    node.kill_9();
    let node = Process::start_with(&data, &flags);
    let base = node.base.clone();
    all_present(&http, &base, &acked).await;
    let reply = http.get(format!("{base}/kv/{refused}")).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::NOT_FOUND);

    // Full again, then SIGTERM: the node still stops within its shutdown deadline.
    fill(&filler);
    write_until_full(&http, &base, "again").await;
    let asked = Instant::now();
    let status = node.terminate();
    assert!(asked.elapsed() < Duration::from_secs(15), "took {:?}", asked.elapsed());
    assert!(status.code().is_some(), "kvs was killed by a signal: {status:?}");
}
