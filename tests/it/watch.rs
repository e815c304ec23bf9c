//! Watch streams over real sockets: a watcher on one node sees writes made on another
//! (pushed, and pulled by anti-entropy), deletes, resumes with `Last-Event-ID` across a
//! restart without missing anything, and is told 410 for a point the node no longer has.

use std::time::Duration;

use kvs::config::Config;
use kvs::daemon::{self, Node, Options};
use kvs::sync::faults::Faults;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{client, eventually};

const DEADLINE: Duration = Duration::from_secs(20);

/// One parsed Server-Sent Event.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// An open event stream, read as it comes.
struct Stream {
    response: reqwest::Response,
    pending: String,
}

impl Stream {
    async fn open(url: &str, last_event_id: Option<u64>) -> Stream {
        let mut request = client().get(url);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        // Not the shared client: its 10 s timeout would end the stream.
        let response = reqwest::Client::new().execute(request.build().unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "watch {url}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Stream { response, pending: String::new() }
    }

    /// The next event (keep-alive comments skipped), or panics after `DEADLINE`.
    async fn next(&mut self) -> Sse {
        let read = async {
            loop {
                if let Some(end) = self.pending.find("\n\n") {
                    let block: String = self.pending.drain(..end + 2).collect();
                    let mut event = Sse { id: None, event: "message".into(), data: Value::Null };
                    for line in block.lines() {
                        if let Some(id) = line.strip_prefix("id: ") {
                            event.id = id.parse().ok();
                        } else if let Some(name) = line.strip_prefix("event: ") {
                            event.event = name.into();
                        } else if let Some(data) = line.strip_prefix("data: ") {
                            event.data = serde_json::from_str(data).unwrap();
                        }
                    }
                    if block.lines().all(|line| line.starts_with(':')) {
                        continue;
                    }
                    return event;
                }
                let chunk = self.response.chunk().await.unwrap().expect("the stream ended");
                self.pending.push_str(&String::from_utf8_lossy(&chunk));
            }
        };
        tokio::time::timeout(DEADLINE, read).await.expect("no event within the deadline")
    }
}

struct Member {
    node: Node,
    base: String,
    faults: Faults,
}

async fn start(dir: &std::path::Path, seeds: Vec<String>, log_entries: u64) -> Member {
    let mut config = Config::from_yaml("").unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.to_owned();
    config.seeds = seeds;
    config.gossip_interval = Duration::from_millis(50);
    config.sync_interval = Duration::from_millis(200);
    config.join_timeout = Duration::from_secs(3);
    config.watch_log_entries = log_entries;
    let faults = Faults::default();
    let options = Options { faults: Some(faults.clone()), ..Options::default() };
    let node = daemon::start(config, options).await.unwrap();
    let base = format!("http://{}", node.addr());
    Member { node, base, faults }
}

async fn ready(member: &Member) {
    eventually("ready", DEADLINE, || async {
        let reply = client().get(format!("{}/health/ready", member.base)).send().await.ok()?;
        (reply.status() == StatusCode::OK).then_some(())
    })
    .await;
}

async fn create(member: &Member, text: &str) -> String {
    let reply = client()
        .post(format!("{}/todos", member.base))
        .json(&json!({ "todo": text }))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED);
    reply.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_one_node_sees_pushed_deleted_and_anti_entropy_changes_from_another() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(dirs[0].path(), vec![], 100_000).await;
    let seed = a.node.addr().to_string();
    let b = start(dirs[1].path(), vec![seed.clone()], 100_000).await;
    let c = start(dirs[2].path(), vec![seed], 100_000).await;
    for member in [&a, &b, &c] {
        ready(member).await;
    }
    eventually("two alive peers each", DEADLINE, || async {
        [&a, &b, &c].iter().all(|m| m.node.cluster().alive_peers().len() == 2).then_some(())
    })
    .await;
    let mut todos = Stream::open(&format!("{}/todos?watch=true", c.base), None).await;
    let mut docs = Stream::open(&format!("{}/kv?prefix=users/&watch=true", c.base), None).await;

    // Pushed from a.
    let id = create(&a, "made on a").await;
    let put = todos.next().await;
    assert_eq!((put.event.as_str(), put.data["id"].as_str()), ("put", Some(id.as_str())));
    assert_eq!(put.data["todo"]["todo"], "made on a");
    let first = put.id.unwrap();

    // A delete, and a document under the prefix (one outside it is not shown).
    let http = client();
    let deleted = http.delete(format!("{}/todos/{id}", b.base)).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let delete = todos.next().await;
    assert_eq!((delete.event.as_str(), delete.data["todo"].clone()), ("delete", Value::Null));
    assert!(delete.id.unwrap() > first);
    for key in ["other/x", "users/ann"] {
        let put = http.put(format!("{}/kv/{key}", a.base)).json(&json!({ "k": key })).send();
        assert!(put.await.unwrap().status().is_success());
    }
    let doc = docs.next().await;
    assert_eq!(
        (doc.data["key"].clone(), doc.data["value"].clone()),
        (json!("users/ann"), json!({ "k": "users/ann" }))
    );

    // a cannot reach c (no push, no round from a): c's own anti-entropy round pulls it.
    a.faults.cut(&c.node.addr().to_string());
    let pulled = create(&a, "pulled by c").await;
    let arrived = todos.next().await;
    assert_eq!(arrived.data["id"], json!(pulled));
    assert_eq!(arrived.data["todo"]["todo"], "pulled by c");
    a.faults.heal();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resumes_after_a_restart_without_missing_a_change_and_too_old_is_410() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), vec![], 5).await;
    ready(&node).await;
    let mut stream = Stream::open(&format!("{}/todos?watch=true", node.base), None).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        create(&node, &format!("before {n}")).await;
        ids.push(stream.next().await.id.unwrap());
    }
    drop(stream);
    node.node.shutdown().await.unwrap();

    // Restarted on the same data: changes made since are sent after the resume point,
    // in order, then live ones.
    let node = start(dir.path(), vec![], 5).await;
    ready(&node).await;
    let since = create(&node, "after the restart").await;
    let mut resumed = Stream::open(&format!("{}/todos?watch=true", node.base), Some(ids[1])).await;
    let missed = resumed.next().await;
    assert_eq!(missed.id, Some(ids[2]));
    let next = resumed.next().await;
    assert_eq!((next.id, next.data["id"].clone()), (Some(ids[2] + 1), json!(since)));
    let live = create(&node, "live").await;
    let live_event = resumed.next().await;
    assert_eq!((live_event.id, live_event.data["id"].clone()), (Some(ids[2] + 2), json!(live)));

    // The log keeps 5 changes: after 10 more, the first ones are gone.
    for n in 0..10 {
        create(&node, &format!("more {n}")).await;
    }
    let http = client();
    let url = format!("{}/todos?watch=true", node.base);
    let gone = eventually("410 for a trimmed resume point", DEADLINE, || async {
        let reply = http.get(&url).header("last-event-id", ids[0].to_string()).send().await.ok()?;
        (reply.status() == StatusCode::GONE).then_some(reply)
    })
    .await;
    assert_eq!(gone.headers()["content-type"], "application/problem+json");
    let problem: Value = gone.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("list again"), "{problem}");
    let bad = http.get(&url).header("last-event-id", "yesterday").send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}
