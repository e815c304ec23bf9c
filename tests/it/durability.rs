//! An acknowledged write survives `kill -9` of the real binary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{client, eventually, Process};

/// Three rounds of: start the real binary, 64 writers create todos as fast as they are
/// acknowledged, SIGKILL mid-stream, restart, and check every acknowledged write (by its
/// exact version) is there. Several rounds because a lost write hides in the last
/// unflushed buffer, which one kill may or may not catch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let http = client();
    let mut acked_total = Vec::new();
    for round in 0..3 {
        let process = Process::start(dir.path());
        let acked = write_until_killed(&http, process, round).await;
        acked_total.extend(acked);

        let again = Process::start(dir.path());
        let mut lost = Vec::new();
        for (extern_id, etag) in &acked_total {
            let id = kvs::model::todo::todo_id(extern_id);
            let reply = http.get(format!("{}/todos/{id}", again.base)).send().await.unwrap();
            let found = reply.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
            if found.as_deref() != Some(etag.as_str()) {
                lost.push(extern_id.clone());
            }
        }
        assert!(
            lost.is_empty(),
            "round {round}: {} of {} acknowledged writes lost: {:?}",
            lost.len(),
            acked_total.len(),
            &lost[..lost.len().min(10)]
        );
        assert_eq!(again.terminate().code(), Some(0));
    }
}

/// Runs 64 writers against `process` and SIGKILLs it once 1,000 writes were
/// acknowledged, while the writers are still going. Returns (extern_id, ETag) of every
/// acknowledged write.
async fn write_until_killed(
    http: &reqwest::Client,
    process: Process,
    round: usize,
) -> Vec<(String, String)> {
    let base = process.base.clone();
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..64)
        .map(|writer| {
            let (http, base, acked, stop) =
                (http.clone(), base.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let extern_id = format!("r{round}-w{writer}-{n}");
                    n += 1;
                    let body = json!({"todo": "durable", "extern_id": extern_id});
                    match http.post(format!("{base}/todos")).json(&body).send().await {
                        Ok(reply) if reply.status() == StatusCode::CREATED => {
                            let etag = reply.headers()["etag"].to_str().unwrap().to_owned();
                            acked.lock().unwrap().push((extern_id, etag));
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    eventually("1000 acknowledged writes", Duration::from_secs(60), || async {
        (acked.lock().unwrap().len() >= 1000).then_some(())
    })
    .await;
    process.kill_9();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    acked
}

#[tokio::test]
async fn sigterm_drains_flushes_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let process = Process::start(dir.path());
    let http = client();
    let reply = http
        .put(format!("{}/kv/before-shutdown", process.base))
        .header("content-type", "application/json")
        .body("{\"kept\":true}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED);
    let logs = process.logs.clone();
    let status = process.terminate();
    assert_eq!(status.code(), Some(0), "logs: {:?}", logs.lock().unwrap());
    assert!(logs.lock().unwrap().iter().any(|line| line.contains("store flushed")));

    let again = Process::start(dir.path());
    let body = http.get(format!("{}/kv/before-shutdown", again.base)).send().await.unwrap();
    assert_eq!(body.text().await.unwrap(), "{\"kept\":true}");
}
