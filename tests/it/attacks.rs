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
        expires_at: None,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_and_todos_that_lax_parsers_store_are_refused() {
    let http = client();
    let node = start_node().await;
    let very_deep = "[".repeat(400_000) + &"]".repeat(400_000);
    let bodies: Vec<Vec<u8>> = vec![
        b"\"\xff\xfe\"".to_vec(),
        br#"{"s":"\ud800"}"#.to_vec(),
        b"[1e999]".to_vec(),
        br#"{"a":1,"a":2}"#.to_vec(),
        very_deep.into_bytes(),
    ];
    for body in bodies {
        let reply = http
            .put(format!("{}/kv/lax", node.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    }
    for text in ["nul\u{0}byte", "clear \u{1b}[2J screen"] {
        let reply =
            http.post(format!("{}/todos", node.base)).json(&json!({"todo": text})).send().await;
        assert_eq!(reply.unwrap().status(), StatusCode::UNPROCESSABLE_ENTITY, "{text:?}");
    }
    let ok = http.post(format!("{}/todos", node.base)).json(&json!({"todo": "two\n\tlines"}));
    assert_eq!(ok.send().await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(info(&http, &node).await["key_count"], json!(1));
    node.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_plant_what_a_client_could_not_write() {
    use kvs::model::todo::StoredTodo;
    let http = client();
    let node = start_node().await;
    let todo = |extern_id: &str, text: &str| StoredTodo {
        extern_id: extern_id.into(),
        todo: text.into(),
        completed: false,
        created_at: 1,
        updated_at: 1,
    };
    let planted = [
        // An id that is not UUIDv5(extern_id): a second live todo for "shared".
        (Key::Todo(uuid::Uuid::from_u128(5)), todo("shared", "impostor").encode()),
        (Key::Todo(kvs::model::todo::todo_id("x")), todo("x", "esc \u{1b}[2J").encode()),
        (Key::doc("dup").unwrap(), br#"{"a":1,"a":2}"#.to_vec()),
    ];
    for (key, value) in planted {
        let record = Record { value: Value::Live(value), ..record_at(now_ms(), b"") };
        let batch = kvs::wire::compress_batch(&[(key, record)]);
        let reply = internal_post(&http, &node, "records", batch).await;
        assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(info(&http, &node).await["key_count"], json!(0));
    node.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_hand_gossip_cannot_move_a_member_or_flood_the_list() {
    let http = client();
    let node = start_node().await;
    let real = uuid::Uuid::from_u128(0x2ea1);
    let member = |id: uuid::Uuid, addr: &str, heartbeat: u64| json!({"id": id, "name": "m", "addr": addr, "joined_at": 1, "heartbeat": heartbeat, "state": "alive"});
    let gossip = |from: uuid::Uuid, members: Vec<Json>| {
        http.post(format!("{}/internal/v1/gossip", node.base))
            .header(kvs::auth::FROM_HEADER, from.to_string())
            .body(serde_json::to_vec(&members).unwrap())
            .send()
    };
    // The member announces itself...
    let reply = gossip(real, vec![member(real, "127.0.0.1:7001", 1)]).await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    // ...and someone else claims it moved, with the largest heartbeat there is.
    let liar = uuid::Uuid::from_u128(0x11a2);
    let forged = vec![member(real, "127.0.0.1:6666", u64::MAX)];
    assert_eq!(gossip(liar, forged).await.unwrap().status(), StatusCode::OK);
    let addr_of = |members: &[kvs::cluster::Member]| {
        members.iter().find(|m| m.id == real).map(|m| m.addr.clone())
    };
    assert_eq!(addr_of(&node.node.cluster().members()).as_deref(), Some("127.0.0.1:7001"));
    // A flood past the cap is refused whole; one below it is held to the cap.
    let flood: Vec<Json> = (0..10_000u128)
        .map(|n| member(uuid::Uuid::from_u128(n + 1_000_000), "10.0.0.1:1", 1))
        .collect();
    assert_eq!(gossip(liar, flood).await.unwrap().status(), StatusCode::BAD_REQUEST);
    let just_under: Vec<Json> = (0..kvs::cluster::MAX_MEMBERS as u128)
        .map(|n| member(uuid::Uuid::from_u128(n + 2_000_000), "10.0.0.1:1", 1))
        .collect();
    assert_eq!(gossip(liar, just_under).await.unwrap().status(), StatusCode::OK);
    assert_eq!(node.node.cluster().members().len(), kvs::cluster::MAX_MEMBERS);
    // Honest clients are still served.
    assert_eq!(put_doc(&http, &node, "still", &json!(1)).await, StatusCode::CREATED);
    node.node.shutdown().await.unwrap();
}

/// A node with a cluster key and a signer holding the same key.
async fn keyed_node() -> (TestNode, kvs::auth::ClusterKey) {
    let secret = [9u8; 32];
    let dir = tempfile::tempdir().unwrap();
    let mut config = kvs::config::Config::from_yaml("").unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().to_owned();
    config.cluster_key = Some(kvs::auth::Secret(secret));
    let node = kvs::daemon::start(config, kvs::daemon::Options::default()).await.unwrap();
    let base = format!("http://{}", node.addr());
    (TestNode { node, base, dir }, kvs::auth::ClusterKey::new(&secret))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_key_only_fresh_signed_requests_get_in() {
    let http = client();
    let (node, key) = keyed_node().await;
    let path = "/internal/v1/records";
    let batch = kvs::wire::compress_batch(&[(
        Key::doc("signed").unwrap(),
        record_at(now_ms(), b"{\"v\":1}"),
    )]);
    let send = |header: Option<String>, body: Vec<u8>| {
        let mut request = http.post(format!("{}{path}", node.base)).body(body);
        if let Some(header) = header {
            request = request.header(kvs::auth::SIGNATURE_HEADER, header);
        }
        request.send()
    };
    let me = uuid::Uuid::from_u128(77);
    // Unsigned, signed with another key, signed for another body, signed too long ago.
    assert_eq!(send(None, batch.clone()).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let stranger = kvs::auth::ClusterKey::new(&[8u8; 32]);
    let (other_key, _) = stranger.sign_request("POST", path, &batch, me, now_ms());
    assert_eq!(
        send(Some(other_key), batch.clone()).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let (for_other_body, _) = key.sign_request("POST", path, b"other", me, now_ms());
    assert_eq!(
        send(Some(for_other_body), batch.clone()).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let (stale, _) = key.sign_request("POST", path, &batch, me, now_ms() - 120_000);
    assert_eq!(send(Some(stale), batch.clone()).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(info(&http, &node).await["key_count"], json!(0));
    // A good one gets in, with a signed reply; the same request again does not.
    let (good, mac) = key.sign_request("POST", path, &batch, me, now_ms());
    let reply = send(Some(good.clone()), batch.clone()).await.unwrap();
    assert_eq!(reply.status(), StatusCode::NO_CONTENT);
    let signature = reply.headers()[kvs::auth::REPLY_SIGNATURE_HEADER].to_str().unwrap().to_owned();
    assert_eq!(key.verify_reply(&mac, 204, Some(&signature), b""), Ok(()));
    assert_eq!(info(&http, &node).await["key_count"], json!(1));
    assert_eq!(send(Some(good), batch).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let shown = info(&http, &node).await;
    assert_eq!(shown["security"]["peer_auth"], json!("signed"));
    assert!(!shown.to_string().contains("CQkJCQkJ"), "the key's base64 leaked: {shown}");
    // The sync route names members only, even signed.
    let sync = "/internal/v1/sync?peer=127.0.0.1:22";
    let (header, _) = key.sign_request("POST", sync, b"", me, now_ms());
    let reply = http
        .post(format!("{}{sync}", node.base))
        .header(kvs::auth::SIGNATURE_HEADER, header)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::UNPROCESSABLE_ENTITY);
    node.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_beyond_loopback_the_peer_routes_are_closed() {
    let http = client();
    let dir = tempfile::tempdir().unwrap();
    let mut config = kvs::config::Config::from_yaml("").unwrap();
    config.listen = "0.0.0.0:0".parse().unwrap();
    config.data_dir = dir.path().to_owned();
    let node = kvs::daemon::start(config, kvs::daemon::Options::default()).await.unwrap();
    let base = format!("http://127.0.0.1:{}", node.addr().port());
    let batch = kvs::wire::compress_batch(&[(Key::doc("x").unwrap(), record_at(now_ms(), b"1"))]);
    let reply = http.post(format!("{base}/internal/v1/records")).body(batch).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::FORBIDDEN);
    let problem: Json = reply.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("cluster.key_file"), "{problem}");
    let shown: Json =
        http.get(format!("{base}/health/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(shown["security"]["peer_auth"], json!("closed"));
    let put = http.put(format!("{base}/kv/y")).json(&json!(1)).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::CREATED, "clients are still served");
    node.shutdown().await.unwrap();
}

/// Idle and slow connections are closed after `header_read_timeout`, and a node at its
/// connection cap still serves an honest client once they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_cut_and_honest_clients_served() {
    use tokio::io::AsyncWriteExt;
    // No pooled connections: the node closes an idle keep-alive connection after the
    // 500 ms header timeout, and a request sent on it as it closes fails (IncompleteMessage).
    let http =
        reqwest::Client::builder().timeout(CONVERGE).pool_max_idle_per_host(0).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = kvs::config::Config::from_yaml("").unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().to_owned();
    config.max_connections = 32;
    config.header_read_timeout = Duration::from_millis(500);
    let node = kvs::daemon::start(config, kvs::daemon::Options::default()).await.unwrap();
    let addr = node.addr();
    // More idle sockets than the cap, and one sending its headers a byte at a time.
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health/live HTTP/1.1\r\nHo").await.unwrap();

    let live = format!("http://{addr}/health/live");
    // This request waits its turn in the backlog behind the 64 idle sockets (two rounds
    // of the header timeout): the client's deadline is the convergence one, not 10 s.
    let reply = http.get(&live).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    // Every socket that got in is closed by the node (read returns end of file); the
    // ones still waiting in the backlog are accepted, then closed in turn.
    let mut buffer = [0u8; 64];
    for socket in idle.iter_mut().chain(std::iter::once(&mut slow)) {
        let closed = tokio::time::timeout(CONVERGE, socket.read(&mut buffer)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "a socket was held open: {closed:?}");
    }
    assert_eq!(http.get(&live).send().await.unwrap().status(), StatusCode::OK);
    node.shutdown().await.unwrap();
}

/// A small body that would inflate to 512 MiB is refused after at most
/// `MAX_BATCH_BYTES`, and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compression_bomb_is_refused_and_the_node_keeps_serving() {
    let http = client();
    let node = start_node().await;
    let bomb = tokio::task::spawn_blocking(|| {
        use std::io::Write;
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..512 {
            encoder.write_all(&zeros).unwrap();
        }
        encoder.finish().unwrap()
    })
    .await
    .unwrap();
    assert!(bomb.len() < 256 * 1024, "the bomb is {} bytes", bomb.len());
    let reply = internal_post(&http, &node, "records", bomb).await;
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    assert_eq!(put_doc(&http, &node, "after", &json!(1)).await, StatusCode::CREATED);
    assert_eq!(info(&http, &node).await["key_count"], json!(1));
    node.node.shutdown().await.unwrap();
}

/// Fifty strangers each announcing a 20 MiB body (within the peer body limit) to a keyed
/// node are answered 401 after sending only their headers and 64 KiB: the body of an
/// unsigned request is never read, nor does it wait for a peer slot (50 concurrent
/// 60 MiB bodies once took RSS from 246 MiB to 2.6 GiB). Whatever the key, a body
/// announced over the limit is refused with 413, unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_bodies_from_strangers_are_refused_unread() {
    use tokio::io::AsyncWriteExt;
    async fn announce(addr: SocketAddr, mib: usize) -> String {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /internal/v1/records HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
            mib * 1024 * 1024
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(&vec![7u8; 64 * 1024]).await.unwrap();
        let mut reply = vec![0u8; 512];
        let read = tokio::time::timeout(CONVERGE, socket.read(&mut reply))
            .await
            .expect("the node waited for the rest of the body")
            .unwrap();
        String::from_utf8_lossy(&reply[..read]).into_owned()
    }
    let http = client();
    let (keyed, _) = keyed_node().await;
    let open = start_node().await;
    for (node, mib, status) in [(&keyed, 20, "401"), (&keyed, 60, "413"), (&open, 60, "413")] {
        let addr: SocketAddr = node.base.trim_start_matches("http://").parse().unwrap();
        let strangers: Vec<_> = (0..50).map(|_| tokio::spawn(announce(addr, mib))).collect();
        for stranger in strangers {
            let reply = stranger.await.unwrap();
            assert!(reply.starts_with(&format!("HTTP/1.1 {status}")), "{status}: {reply}");
        }
        let live = http.get(format!("{}/health/live", node.base)).send().await.unwrap();
        assert_eq!(live.status(), StatusCode::OK);
        assert_eq!(info(&http, node).await["key_count"], json!(0));
    }
    keyed.node.shutdown().await.unwrap();
    open.node.shutdown().await.unwrap();
}
