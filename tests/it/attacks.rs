//! What a hostile or broken peer tries, over real sockets against in-process nodes: each
//! test is a reproduction that once changed data or clocks, and now must not.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kvs::model::{Key, NodeId, Origin, Record, Timestamp, Value, Version};
use kvs::wire::RootReply;
use reqwest::StatusCode;
use serde_json::{json, Value as Json};
use tokio::io::AsyncReadExt;

use crate::support::{client, eventually, start_node, TestNode};

const CONVERGE: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn info(http: &reqwest::Client, node: &TestNode) -> Json {
    http.get(format!("{}/health/info", node.base)).send().await.unwrap().json().await.unwrap()
}

async fn put_doc(http: &reqwest::Client, node: &TestNode, path: &str, body: &Json) -> StatusCode {
    http.put(format!("{}/kv/{path}", node.base)).json(body).send().await.unwrap().status()
}

async fn get_doc(http: &reqwest::Client, node: &TestNode, path: &str) -> (Json, String) {
    let reply = http.get(format!("{}/kv/{path}", node.base)).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let etag = reply.headers()["etag"].to_str().unwrap().to_owned();
    (reply.json().await.unwrap(), etag)
}

/// The milliseconds of the timestamp inside an ETag (`"ms:counter/node/uuid"`).
fn etag_millis(etag: &str) -> u64 {
    etag.trim_matches('"').split(':').next().unwrap().parse().unwrap()
}

fn record_at(millis: u64, value: &[u8]) -> Record {
    Record {
        version: Version {
            ts: Timestamp::from_parts(millis, 0),
            origin: Origin { node: NodeId(uuid::Uuid::from_u128(0xbad)), joined_at: 1 },
            uuid: uuid::Uuid::from_u128(0xbad),
        },
        value: Value::Live(value.to_vec()),
    }
}

/// Posts to a peer route of `node` as a peer would.
async fn internal_post(
    http: &reqwest::Client,
    node: &TestNode,
    path_and_query: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    http.post(format!("{}/internal/v1/{path_and_query}", node.base))
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_record_pushed_to_a_node_changes_neither_data_nor_clock() {
    let http = client();
    let node = start_node().await;
    assert_eq!(put_doc(&http, &node, "pinned", &json!({"v": 1})).await, StatusCode::CREATED);
    let root = info(&http, &node).await["merkle_root"].clone();

    let year_ms = 365 * 24 * 3_600_000;
    let key = Key::doc("pinned").unwrap();
    for millis in [now_ms() + 10 * year_ms, u64::MAX] {
        let batch = kvs::wire::compress_batch(&[(key.clone(), record_at(millis, b"{\"v\":666}"))]);
        let reply = internal_post(&http, &node, "records", batch).await;
        assert!(reply.status().is_success(), "{}", reply.status());
    }

    let after = info(&http, &node).await;
    assert_eq!(after["merkle_root"], root, "a refused record changed the data");
    assert_eq!(after["skewed_timestamps"], json!(2));
    assert!(after["furthest_refused_ahead_ms"].as_u64().unwrap() > 9 * year_ms);
    // The key still takes writes, stamped by a clock that was not dragged ahead.
    let (body, _) = get_doc(&http, &node, "pinned").await;
    assert_eq!(body, json!({"v": 1}));
    assert_eq!(put_doc(&http, &node, "pinned", &json!({"v": 2})).await, StatusCode::OK);
    let (body, etag) = get_doc(&http, &node, "pinned").await;
    assert_eq!(body, json!({"v": 2}));
    assert!(etag_millis(&etag) < now_ms() + year_ms, "the clock moved ahead: {etag}");
    node.node.shutdown().await.unwrap();
}

/// A peer answering the peer protocol from a test server: its root reply claims a purge
/// horizon and a last contact a year in our future.
async fn lying_peer() -> SocketAddr {
    use axum::routing::post;
    let lie = || async {
        let year_ms = 365 * 24 * 3_600_000;
        RootReply {
            root: [7; 32],
            purge_horizon: now_ms() + year_ms,
            last_contact: Some(now_ms() + year_ms),
            top: Vec::new(),
        }
        .encode()
    };
    let app = axum::Router::new()
        .route("/internal/v1/root", post(lie))
        .route("/internal/v1/gossip", post(|| async { axum::Json(Json::Array(Vec::new())) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn gossip_about(id: u128, addr: SocketAddr) -> Vec<u8> {
    serde_json::to_vec(&json!([{
        "id": uuid::Uuid::from_u128(id),
        "name": "liar",
        "addr": addr.to_string(),
        "joined_at": 1,
        "heartbeat": 1,
        "state": "alive",
    }]))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_a_future_purge_horizon_wipes_nothing() {
    let http = client();
    let node = start_node().await;
    for n in 0..20 {
        let status = put_doc(&http, &node, &format!("keep/{n}"), &json!({"n": n})).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let before = info(&http, &node).await;
    let liar = lying_peer().await;
    let reply = internal_post(&http, &node, "gossip", gossip_about(0x11a2, liar)).await;
    assert_eq!(reply.status(), StatusCode::OK);

    let reply = internal_post(&http, &node, &format!("sync?peer={liar}"), Vec::new()).await;
    assert_eq!(reply.status(), StatusCode::BAD_GATEWAY, "a lying peer's round succeeded");
    let body = reply.text().await.unwrap();
    assert!(!body.contains("horizon"), "a peer's answer leaked into a client's error: {body}");

    let after = info(&http, &node).await;
    assert_eq!(after["merkle_root"], before["merkle_root"]);
    assert_eq!(after["key_count"], json!(20));
    let ready = http.get(format!("{}/health/ready", node.base)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "a lying peer changed readiness");
    node.node.shutdown().await.unwrap();
}

/// A member that accepts connections and never answers (packets dropped by a firewall
/// look the same to the caller) must not hold back rounds with healthy peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_member_does_not_stall_rounds_with_healthy_ones() {
    let http = client();
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    // Counts the sync rounds that reached the hole; every socket is held open, unanswered.
    let rounds_in_hole = Arc::new(AtomicUsize::new(0));
    let counter = rounds_in_hole.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = hole.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buffer = [0u8; 4096];
                while let Ok(read) = socket.read(&mut buffer).await {
                    if read == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buffer[..read]);
                    if seen.windows(17).any(|w| w == b"/internal/v1/root") {
                        counter.fetch_add(1, Ordering::SeqCst);
                        seen.clear();
                    }
                }
            });
        }
    });

    let dir_a = tempfile::tempdir().unwrap();
    let a = start_quiet(dir_a, vec![]).await;
    let dir_b = tempfile::tempdir().unwrap();
    let b = start_quiet(dir_b, vec![a.node.addr().to_string()]).await;
    eventually("a and b see each other", CONVERGE, || async {
        (a.node.cluster().alive_peers().len() == 1 && b.node.cluster().alive_peers().len() == 1)
            .then_some(())
    })
    .await;
    // Gossip the hole into both member lists, with a heartbeat high enough to stay alive
    // for a while without its own gossip.
    for node in [&a, &b] {
        let reply = internal_post(&http, node, "gossip", gossip_about(0x401e, hole_addr)).await;
        assert_eq!(reply.status(), StatusCode::OK);
    }

    eventually("both nodes have a round hanging in the hole", CONVERGE, || async {
        (rounds_in_hole.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    // Writes on b (push off) reach a only by anti-entropy rounds, which must keep
    // completing while rounds with the hole hang.
    for n in 0..30 {
        let status = put_doc(&http, &b, &format!("hole/{n}"), &json!({"n": n})).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    eventually("a has b's writes", CONVERGE, || async {
        {
            let i = info(&http, &a).await;
            (i["key_count"] == json!(30)).then_some(())
        }
    })
    .await;
    a.node.shutdown().await.unwrap();
    b.node.shutdown().await.unwrap();
}

/// A node with push on write off, so only anti-entropy moves data.
async fn start_quiet(dir: tempfile::TempDir, seeds: Vec<String>) -> TestNode {
    let mut config = kvs::config::Config::from_yaml("").unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().to_owned();
    config.seeds = seeds;
    config.push_on_write = false;
    config.sync_interval = Duration::from_millis(200);
    config.gossip_interval = Duration::from_millis(100);
    config.join_timeout = Duration::from_secs(3);
    let node = kvs::daemon::start(config, kvs::daemon::Options::default()).await.unwrap();
    let base = format!("http://{}", node.addr());
    TestNode { node, base, dir }
}
