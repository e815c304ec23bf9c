//! Cluster scenarios with in-process nodes on real sockets (port 0, temp dirs).
//! Every wait polls with a deadline.

use std::time::Duration;

use kvs::config::Config;
use kvs::daemon::{self, Node, Options};
use kvs::sync::faults::Faults;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{client, eventually};

const CONVERGE: Duration = Duration::from_secs(30);

struct Member {
    node: Node,
    base: String,
    faults: Faults,
    dir: tempfile::TempDir,
}

fn config(dir: &std::path::Path, seeds: Vec<String>, key: Option<[u8; 32]>) -> Config {
    let mut config = Config::from_yaml("").unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.to_owned();
    config.seeds = seeds;
    config.cluster_key = key.map(kvs::auth::Secret);
    config.sync_interval = Duration::from_millis(200);
    config.gossip_interval = Duration::from_millis(50);
    config.join_timeout = Duration::from_secs(3);
    config
}

async fn start(seeds: Vec<String>, key: Option<[u8; 32]>) -> Member {
    let dir = tempfile::tempdir().unwrap();
    start_in(dir, seeds, key).await
}

async fn start_in(dir: tempfile::TempDir, seeds: Vec<String>, key: Option<[u8; 32]>) -> Member {
    start_with(dir, seeds, key, Options::default()).await
}

async fn start_with(
    dir: tempfile::TempDir,
    seeds: Vec<String>,
    key: Option<[u8; 32]>,
    options: Options,
) -> Member {
    let config = config(dir.path(), seeds, key);
    start_configured(dir, config, options).await
}

async fn start_configured(dir: tempfile::TempDir, config: Config, options: Options) -> Member {
    let faults = Faults::default();
    let options = Options { faults: Some(faults.clone()), ..options };
    let node = daemon::start(config, options).await.unwrap();
    let base = format!("http://{}", node.addr());
    Member { node, base, faults, dir }
}

async fn ready(http: &reqwest::Client, member: &Member) {
    let url = format!("{}/health/ready", member.base);
    eventually("node ready", CONVERGE, || async {
        let reply = http.get(&url).send().await.ok()?;
        (reply.status() == StatusCode::OK).then_some(())
    })
    .await;
}

async fn info(http: &reqwest::Client, member: &Member) -> Value {
    http.get(format!("{}/health/info", member.base)).send().await.unwrap().json().await.unwrap()
}

async fn converged(http: &reqwest::Client, members: &[&Member]) {
    eventually("equal Merkle roots", CONVERGE, || async {
        let mut roots = Vec::new();
        for member in members {
            roots.push(info(http, member).await["merkle_root"].clone());
        }
        roots.windows(2).all(|pair| pair[0] == pair[1]).then_some(())
    })
    .await;
}

/// Sends a JSON body and returns the JSON answer.
async fn send_json(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: impl reqwest::IntoUrl,
    body: &Value,
) -> Value {
    http.request(method, url).json(body).send().await.unwrap().json().await.unwrap()
}

/// Creates a todo on `member` (asserting 201); returns the answer and the new id.
async fn create_todo(http: &reqwest::Client, member: &Member, body: &Value) -> (Value, String) {
    let reply = http.post(format!("{}/todos", member.base)).json(body).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED, "creating {body}");
    let created: Value = reply.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    (created, id)
}

async fn todo_on(http: &reqwest::Client, member: &Member, id: &str) -> Option<Value> {
    let reply = http.get(format!("{}/todos/{id}", member.base)).send().await.ok()?;
    if reply.status() == StatusCode::OK {
        reply.json().await.ok()
    } else {
        None
    }
}

async fn three_nodes() -> (reqwest::Client, Member, Member, Member) {
    let http = client();
    let a = start(vec![], None).await;
    let seed = a.node.addr().to_string();
    let b = start(vec![seed.clone()], None).await;
    let c = start(vec![seed], None).await;
    for member in [&a, &b, &c] {
        ready(&http, member).await;
    }
    eventually("everyone sees two alive peers", CONVERGE, || async {
        for member in [&a, &b, &c] {
            if member.node.cluster().alive_peers().len() != 2 {
                return None;
            }
        }
        Some(())
    })
    .await;
    (http, a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_delete_replicate_across_three_nodes() {
    let (http, a, b, c) = three_nodes().await;
    let (created, id) =
        create_todo(&http, &a, &json!({"todo": "replicate me", "extern_id": "rep"})).await;
    for member in [&b, &c] {
        let seen = eventually("the create", CONVERGE, || todo_on(&http, member, &id)).await;
        assert_eq!(seen, created);
    }
    let updated: Value = send_json(
        &http,
        reqwest::Method::PATCH,
        format!("{}/todos/{id}", b.base),
        &json!({"completed": true}),
    )
    .await;
    for member in [&a, &c] {
        eventually("the update", CONVERGE, || async {
            todo_on(&http, member, &id).await.filter(|t| *t == updated)
        })
        .await;
    }
    let deleted = http.delete(format!("{}/todos/{id}", c.base)).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    for member in [&a, &b] {
        eventually("the delete", CONVERGE, || async {
            todo_on(&http, member, &id).await.is_none().then_some(())
        })
        .await;
    }
    converged(&http, &[&a, &b, &c]).await;
    // The seed started alone; it leaves standalone mode when a joiner's gossip reaches
    // it or on its own next round, either of which may come after the writes converged.
    let info_a = eventually("the seed in cluster mode", CONVERGE, || async {
        let info_a = info(&http, &a).await;
        (info_a["cluster_mode"] == json!("cluster")).then_some(info_a)
    })
    .await;
    assert_eq!(info_a["members"].as_array().unwrap().len(), 3);
    for member in [a, b, c] {
        member.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_with_writes_on_both_sides_heals_to_equal_roots() {
    let (http, a, b, c) = three_nodes().await;
    let (addr_a, addr_b, addr_c) =
        (a.node.addr().to_string(), b.node.addr().to_string(), c.node.addr().to_string());
    a.faults.cut(&addr_b);
    a.faults.cut(&addr_c);
    b.faults.cut(&addr_a);
    c.faults.cut(&addr_a);
    for n in 0..20 {
        for (member, side) in [(&a, "left"), (&b, "right")] {
            let body = json!({"todo": format!("{side} {n}"), "extern_id": format!("{side}-{n}")});
            create_todo(&http, member, &body).await;
        }
    }
    // The same document written on both sides: the later write must win everywhere.
    // "Later" by the clock: two writes within one millisecond on different nodes are
    // ordered by their HLC counters, so wait for the clock to pass the first one's.
    for (member, value) in [(&a, "1"), (&c, "2")] {
        let reply = http
            .put(format!("{}/kv/contested", member.base))
            .header("content-type", "application/json")
            .body(value)
            .send()
            .await
            .unwrap();
        assert!(reply.status().is_success());
        let etag = reply.headers()["etag"].to_str().unwrap().to_owned();
        let millis: u64 = etag.trim_matches('"').split(':').next().unwrap().parse().unwrap();
        eventually("the clock to pass the write", CONVERGE, || async {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            (now > millis).then_some(())
        })
        .await;
    }
    assert_ne!(info(&http, &a).await["merkle_root"], info(&http, &b).await["merkle_root"]);
    for member in [&a, &b, &c] {
        member.faults.heal();
    }
    converged(&http, &[&a, &b, &c]).await;
    for member in [&a, &b, &c] {
        assert_eq!(info(&http, member).await["todo_count"], json!(40));
        let body = http
            .get(format!("{}/kv/contested", member.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "2");
    }
    for member in [a, b, c] {
        member.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_bootstraps_over_10000_records_before_it_is_ready() {
    let http = client();
    let a = start(vec![], None).await;
    let docs = &a.node.services().docs;
    for n in 0..10_500 {
        docs.put(&format!("bulk/{n:05}"), format!("{{\"n\":{n}}}").into_bytes(), None, None)
            .await
            .unwrap();
    }
    let late = start(vec![a.node.addr().to_string()], None).await;
    // Not ready (and data routes refused) until the first sync finished; then complete.
    ready(&http, &late).await;
    let info_late = info(&http, &late).await;
    assert_eq!(info_late["key_count"], json!(10_500));
    assert_eq!(info_late["merkle_root"], info(&http, &a).await["merkle_root"]);
    let doc = http.get(format!("{}/kv/bulk/04242", late.base)).send().await.unwrap();
    assert_eq!(doc.text().await.unwrap(), "{\"n\":4242}");
    for member in [a, late] {
        member.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_restarted_catches_up_and_deletes_stay_deleted() {
    let (http, a, b, c) = three_nodes().await;
    let (_, id) = create_todo(&http, &a, &json!({"todo": "doomed", "extern_id": "doomed"})).await;
    converged(&http, &[&a, &b, &c]).await;

    let dir = c.dir;
    c.node.crash().await.unwrap();
    assert_eq!(
        http.delete(format!("{}/todos/{id}", a.base)).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    for n in 0..50 {
        create_todo(&http, &b, &json!({"todo": format!("while away {n}")})).await;
    }
    let c = start_in(dir, vec![a.node.addr().to_string()], None).await;
    ready(&http, &c).await;
    converged(&http, &[&a, &b, &c]).await;
    assert!(todo_on(&http, &c, &id).await.is_none(), "the delete made while c was down came back");
    assert_eq!(info(&http, &c).await["todo_count"], json!(50));
    let d = start(vec![b.node.addr().to_string()], None).await;
    ready(&http, &d).await;
    converged(&http, &[&a, &b, &c, &d]).await;
    assert!(todo_on(&http, &d, &id).await.is_none(), "a later joiner sees the deleted todo");
    for member in [a, b, c, d] {
        member.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_cluster_key_is_refused() {
    let http = client();
    let key = [7u8; 32];
    let a = start(vec![], Some(key)).await;
    let stranger = start(vec![a.node.addr().to_string()], Some([8u8; 32])).await;
    let keyless = start(vec![a.node.addr().to_string()], None).await;
    for member in [&stranger, &keyless] {
        ready(&http, member).await; // standalone after join_timeout
        assert_eq!(info(&http, member).await["cluster_mode"], json!("standalone"));
    }
    assert!(a.node.cluster().alive_peers().is_empty());
    let ask = kvs::wire::RootRequest { window: 0, root: [0; 32] }.encode();
    let raw = http.post(format!("{}/internal/v1/root", a.base)).body(ask).send().await.unwrap();
    assert_eq!(raw.status(), StatusCode::UNAUTHORIZED);
    let friend = start(vec![a.node.addr().to_string()], Some(key)).await;
    ready(&http, &friend).await;
    assert_eq!(info(&http, &friend).await["cluster_mode"], json!("cluster"));
    for member in [a, stranger, keyless, friend] {
        member.node.shutdown().await.unwrap();
    }
}

/// The rule's order over versions as the API shows them: ts, then the older node, then
/// the greater uuid.
fn order_key(version: &Value) -> (u64, u16, std::cmp::Reverse<u64>, uuid::Uuid) {
    let (ms, counter) = version["ts"].as_str().unwrap().split_once(':').unwrap();
    (
        ms.parse().unwrap(),
        counter.parse().unwrap(),
        std::cmp::Reverse(version["node_joined_at"].as_u64().unwrap()),
        uuid::Uuid::parse_str(version["uuid"].as_str().unwrap()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_on_skewed_nodes_converge_to_the_winner_the_order_names() {
    let http = client();
    let skewed = |offset_ms| Options {
        physical_clock: std::sync::Arc::new(kvs::clock::SkewedClock { offset_ms }),
        ..Options::default()
    };
    let a = start_with(tempfile::tempdir().unwrap(), vec![], None, skewed(500)).await;
    let seed = vec![a.node.addr().to_string()];
    let b = start_with(tempfile::tempdir().unwrap(), seed, None, skewed(-500)).await;
    ready(&http, &b).await;
    let body = json!({"todo": "contested", "extern_id": "contested"});
    let (_, id) = create_todo(&http, &a, &body).await;
    eventually("the create on b", CONVERGE, || todo_on(&http, &b, &id)).await;

    for round in 0..5 {
        a.faults.cut(&b.node.addr().to_string());
        b.faults.cut(&a.node.addr().to_string());
        let mut versions = Vec::new();
        for (member, text) in [(&a, format!("a{round}")), (&b, format!("b{round}"))] {
            let reply: Value = send_json(
                &http,
                reqwest::Method::PATCH,
                format!("{}/todos/{id}", member.base),
                &json!({"todo": text}),
            )
            .await;
            versions.push(reply);
        }
        let winner =
            versions.iter().max_by_key(|todo| order_key(&todo["version"])).unwrap().clone();
        a.faults.heal();
        b.faults.heal();
        converged(&http, &[&a, &b]).await;
        for member in [&a, &b] {
            assert_eq!(todo_on(&http, member, &id).await.unwrap(), winner, "round {round}");
        }
    }
    for member in [a, b] {
        member.node.shutdown().await.unwrap();
    }
}

fn with_ttl(dir: &tempfile::TempDir, seeds: Vec<String>, ttl: Duration) -> Config {
    let mut config = config(dir.path(), seeds, None);
    config.tombstone_ttl = ttl;
    config
}

/// Three nodes purging tombstones after `ttl`, b and c seeded with a, all ready; and b's
/// config (to restart it after taking it away).
async fn three_nodes_with_tombstone_ttl(
    ttl: Duration,
) -> (reqwest::Client, Member, Member, Member, Config) {
    let http = client();
    let dir_a = tempfile::tempdir().unwrap();
    let config_a = with_ttl(&dir_a, vec![], ttl);
    let a = start_configured(dir_a, config_a, Options::default()).await;
    let seed = vec![a.node.addr().to_string()];
    let (dir_b, dir_c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config_b = with_ttl(&dir_b, seed.clone(), ttl);
    let config_c = with_ttl(&dir_c, seed, ttl);
    let b = start_configured(dir_b, config_b.clone(), Options::default()).await;
    let c = start_configured(dir_c, config_c, Options::default()).await;
    ready(&http, &b).await;
    ready(&http, &c).await;
    (http, a, b, c, config_b)
}

/// b is away while a deletes a todo and a and c purge the tombstone; when b returns it
/// must not bring the todo back: it finds a peer that purged tombstones written after
/// its last contact, discards its copy and bootstraps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_away_longer_than_the_tombstone_ttl_does_not_bring_deletes_back() {
    let ttl = Duration::from_secs(1);
    let (http, a, b, c, config_b) = three_nodes_with_tombstone_ttl(ttl).await;
    let body = json!({"todo": "deleted while b is away", "extern_id": "ghost"});
    let (_, id) = create_todo(&http, &a, &body).await;
    eventually("the todo on b", CONVERGE, || todo_on(&http, &b, &id)).await;

    let dir_b = b.dir;
    b.node.crash().await.unwrap();
    let away_since = std::time::Instant::now();
    assert_eq!(
        http.delete(format!("{}/todos/{id}", a.base)).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    for member in [&a, &c] {
        eventually("the expired tombstone purged", CONVERGE, || async {
            let root = info(&http, member).await["merkle_root"].as_str()?.to_owned();
            root.bytes().all(|b| b == b'0').then_some(())
        })
        .await;
    }
    while away_since.elapsed() < ttl + Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let b = start_configured(dir_b, config_b, Options::default()).await;
    ready(&http, &b).await;
    converged(&http, &[&a, &b, &c]).await;
    for member in [&a, &b, &c] {
        assert!(todo_on(&http, member, &id).await.is_none(), "the deleted todo came back");
        assert_eq!(info(&http, member).await["todo_count"], json!(0));
    }
    for member in [a, b, c] {
        member.node.shutdown().await.unwrap();
    }
}

/// A whole cluster down for longer than the tombstone TTL keeps its data: neither node
/// is stale against the other, so nothing is discarded — including a write only b held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_down_longer_than_the_tombstone_ttl_loses_nothing() {
    // The nodes' logs, shown if this fails (it failed once under the full suite's load).
    let _ = tracing_subscriber::fmt().with_env_filter("kvs=info").with_test_writer().try_init();
    let http = client();
    let ttl = Duration::from_secs(1);
    let boot = |dir: tempfile::TempDir, seeds: Vec<String>| async move {
        let config = with_ttl(&dir, seeds, ttl);
        start_configured(dir, config, Options::default()).await
    };
    let a = boot(tempfile::tempdir().unwrap(), vec![]).await;
    let b = boot(tempfile::tempdir().unwrap(), vec![a.node.addr().to_string()]).await;
    ready(&http, &b).await;
    let (_, both) = create_todo(&http, &a, &json!({"todo": "on both"})).await;
    eventually("the todo on b", CONVERGE, || todo_on(&http, &b, &both)).await;

    let dir_a = a.dir;
    a.node.shutdown().await.unwrap();
    let (_, only_b) = create_todo(&http, &b, &json!({"todo": "written while a was down"})).await;
    let dir_b = b.dir;
    b.node.shutdown().await.unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;

    let a = boot(dir_a, vec![]).await;
    let b = boot(dir_b, vec![a.node.addr().to_string()]).await;
    ready(&http, &b).await;
    converged(&http, &[&a, &b]).await;
    // a was away longer than the TTL, so its first round with b may be a rebase (503
    // while it runs): wait for both to serve before looking.
    for member in [&a, &b] {
        ready(&http, member).await;
        for id in [&both, &only_b] {
            let what = format!("{id} on {} after the outage", member.base);
            eventually(&what, CONVERGE, || todo_on(&http, member, id)).await;
        }
    }
    for member in [a, b] {
        member.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_left_is_shown_left_and_is_alive_again_after_it_returns() {
    let (http, a, b, c) = three_nodes().await;
    let b_id = b.node.identity().node.0.hyphenated().to_string();
    let state_of = |info: &Value, id: &str| -> Option<String> {
        info["members"].as_array()?.iter().find(|m| m["id"] == json!(id))?["state"]
            .as_str()
            .map(str::to_owned)
    };
    let dir = b.dir;
    b.node.shutdown().await.unwrap();
    eventually("a sees b as left", CONVERGE, || async {
        (state_of(&info(&http, &a).await, &b_id)? == "left").then_some(())
    })
    .await;
    assert!(a.node.cluster().alive_peers().iter().all(|m| m.id.hyphenated().to_string() != b_id));

    let b = start_in(dir, vec![a.node.addr().to_string()], None).await;
    ready(&http, &b).await;
    for member in [&a, &c] {
        eventually("b alive again", CONVERGE, || async {
            (state_of(&info(&http, member).await, &b_id)? == "alive").then_some(())
        })
        .await;
    }
    for member in [a, b, c] {
        member.node.shutdown().await.unwrap();
    }
}

async fn sync_now(http: &reqwest::Client, from: &Member, peer: &Member) -> Value {
    let url = format!("{}/internal/v1/sync?peer={}", from.base, peer.node.addr());
    let reply = http.post(url).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    reply.json().await.unwrap()
}

async fn create_todos(http: &reqwest::Client, member: &Member, prefix: &str, count: usize) {
    for n in 0..count {
        let body = json!({"todo": format!("{prefix} {n}"), "extern_id": format!("{prefix}-{n}")});
        create_todo(http, member, &body).await;
    }
}

/// One round moves exactly the records one side holds and the other does not (by key
/// and version), and leaves equal roots (no pushes and no background rounds: only the
/// rounds the test asks for). A key changed on both sides crosses both ways once; a key
/// changed on one side only is not sent back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_moves_exactly_the_differing_records() {
    let http = client();
    let quiet = |dir: &tempfile::TempDir, seeds| {
        let mut config = config(dir.path(), seeds, None);
        config.sync_interval = Duration::from_secs(3600);
        config.push_on_write = false;
        config
    };
    let dir_a = tempfile::tempdir().unwrap();
    let config_a = quiet(&dir_a, vec![]);
    let a = start_configured(dir_a, config_a, Options::default()).await;
    let dir_b = tempfile::tempdir().unwrap();
    let config_b = quiet(&dir_b, vec![a.node.addr().to_string()]);
    let b = start_configured(dir_b, config_b, Options::default()).await;
    ready(&http, &a).await;
    ready(&http, &b).await;
    let root = |m: &Member| m.node.services().status().merkle_root;

    create_todos(&http, &a, "shared", 600).await;
    let report = sync_now(&http, &b, &a).await;
    assert_eq!((report["pulled"].as_u64(), report["pushed"].as_u64()), (Some(600), Some(0)));
    assert_eq!(root(&a), root(&b));
    let idle = sync_now(&http, &b, &a).await;
    assert_eq!((idle["requests"].as_u64(), idle["pulled"].as_u64()), (Some(1), Some(0)));

    // Five newer versions on a, three new todos and one newer version on b.
    for n in 0..5 {
        let url = format!("{}/todos/{}", a.base, kvs::model::todo::todo_id(&format!("shared-{n}")));
        let reply = http.patch(url).json(&json!({"completed": true})).send().await.unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
    }
    create_todos(&http, &b, "only-b", 3).await;
    let url = format!("{}/todos/{}", b.base, kvs::model::todo::todo_id("shared-599"));
    let reply = http.patch(url).json(&json!({"todo": "edited on b"})).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);

    let report = sync_now(&http, &b, &a).await;
    // Pulled: a's 5 newer versions and a's older shared-599 (b cannot tell it apart by
    // fingerprint). Pushed: b's 3 new todos and its newer shared-599.
    assert_eq!(report["pulled"].as_u64(), Some(6), "{report}");
    assert_eq!(report["pushed"].as_u64(), Some(4), "{report}");
    assert_eq!(root(&a), root(&b));
    let edited = todo_on(&http, &a, &kvs::model::todo::todo_id("shared-599").to_string()).await;
    assert_eq!(edited.unwrap()["todo"], "edited on b");

    // An address that is not a member's is refused without being called (no SSRF),
    // and changes nothing.
    let before = root(&b);
    for peer in ["127.0.0.1:1", "user:pw%40127.0.0.1:1%2Fany%2Fpath%23"] {
        let url = format!("{}/internal/v1/sync?peer={peer}", b.base);
        let reply = http.post(url).send().await.unwrap();
        assert_eq!(reply.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(reply.text().await.unwrap().contains("not an alive member"));
    }
    assert_eq!(root(&b), before);
}

async fn doc_status(http: &reqwest::Client, member: &Member, key: &str) -> Option<StatusCode> {
    Some(http.get(format!("{}/kv/{key}", member.base)).send().await.ok()?.status())
}

/// A key written with `ttl=2s` on node 1 reaches all three nodes with its expiry, is
/// gone on all three once that instant comes (each node decides alone, from the record),
/// the nodes' roots stay equal while each rewrites it to its expired form, and rounds
/// of anti-entropy between every pair never bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_ttl_is_gone_on_every_node_and_stays_gone() {
    let (http, a, b, c) = three_nodes().await;
    let written = std::time::Instant::now();
    let reply = http
        .put(format!("{}/kv/session/ann?ttl=2s", a.base))
        .json(&json!({"user": "ann"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED);
    let body: Value = reply.json().await.unwrap();
    let expires_at = body["expires_at"].as_str().unwrap().to_owned();
    let reply = http.put(format!("{}/kv/keep", a.base)).json(&json!(1)).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED);

    for member in [&b, &c] {
        eventually("the expiring key reaches every node with its expiry", CONVERGE, || async {
            let reply = http.get(format!("{}/kv/session/ann", member.base)).send().await.ok()?;
            let header = reply.headers().get("kvs-expires-at")?.to_str().ok()?.to_owned();
            (reply.status() == StatusCode::OK && header == expires_at).then_some(())
        })
        .await;
    }
    eventually("the key is gone on every node", CONVERGE, || async {
        for member in [&a, &b, &c] {
            if doc_status(&http, member, "session/ann").await? != StatusCode::NOT_FOUND {
                return None;
            }
        }
        Some(())
    })
    .await;
    eprintln!("gone on all three {:?} after the write (ttl 2s)", written.elapsed());
    converged(&http, &[&a, &b, &c]).await;
    for round in 0..3 {
        for (from, peer) in [(&a, &b), (&b, &c), (&c, &a), (&b, &a), (&c, &b), (&a, &c)] {
            sync_now(&http, from, peer).await;
        }
        for member in [&a, &b, &c] {
            let status = doc_status(&http, member, "session/ann").await;
            assert_eq!(status, Some(StatusCode::NOT_FOUND), "back after round {round}");
            assert_eq!(doc_status(&http, member, "keep").await, Some(StatusCode::OK));
            let listed: Value = http
                .get(format!("{}/kv?prefix=session/", member.base))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(listed["keys"], json!([]), "listed after round {round}");
        }
    }
    converged(&http, &[&a, &b, &c]).await;
    for member in [a, b, c] {
        member.node.shutdown().await.unwrap();
    }
}

/// b is away while a todo expires and a and c purge it; b returns still holding the
/// value (it never rewrote it): the expired write must not come back to a and c through
/// anti-entropy, and b ends without it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_does_not_come_back_from_a_node_that_has_not_purged_it() {
    let ttl = Duration::from_secs(1);
    let (http, a, b, c, config_b) = three_nodes_with_tombstone_ttl(ttl).await;
    let body =
        json!({"todo": "expires while b is away", "extern_id": "brief", "expires_in": "1500ms"});
    let (_, id) = create_todo(&http, &a, &body).await;
    eventually("the todo on b", CONVERGE, || todo_on(&http, &b, &id)).await;
    let dir_b = b.dir;
    b.node.crash().await.unwrap();

    for member in [&a, &c] {
        eventually("the expired todo purged", CONVERGE, || async {
            let root = info(&http, member).await["merkle_root"].as_str()?.to_owned();
            root.bytes().all(|b| b == b'0').then_some(())
        })
        .await;
    }
    let b = start_configured(dir_b, config_b, Options::default()).await;
    ready(&http, &b).await;
    converged(&http, &[&a, &b, &c]).await;
    for member in [&a, &b, &c] {
        assert!(todo_on(&http, member, &id).await.is_none(), "the expired todo came back");
        let root = info(&http, member).await["merkle_root"].as_str().unwrap().to_owned();
        assert!(root.bytes().all(|b| b == b'0'), "a record came back: root {root}");
    }
    for member in [a, b, c] {
        member.node.shutdown().await.unwrap();
    }
}

/// In a cluster larger than the push fan-out, a write goes to `push_fanout` peers, not
/// to all of them; those peers pass it on within their span of the ring, every peer gets
/// it at most once, and everything converges. In a cluster no larger than the fan-out
/// nobody relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_go_to_a_bounded_fan_out_and_receivers_pass_them_on() {
    const FANOUT: usize = 2;
    const WRITES: u64 = 40;
    let http = client();
    let with_fanout = |dir: &tempfile::TempDir, seeds| {
        let mut config = config(dir.path(), seeds, None);
        config.push_fanout = FANOUT;
        config
    };
    let dir = tempfile::tempdir().unwrap();
    let first = with_fanout(&dir, vec![]);
    let a = start_configured(dir, first, Options::default()).await;
    let seed = a.node.addr().to_string();
    let mut members = vec![a];
    for _ in 0..4 {
        let dir = tempfile::tempdir().unwrap();
        let config = with_fanout(&dir, vec![seed.clone()]);
        members.push(start_configured(dir, config, Options::default()).await);
    }
    for member in &members {
        ready(&http, member).await;
    }
    eventually("everyone sees four alive peers", CONVERGE, || async {
        members.iter().all(|m| m.node.cluster().alive_peers().len() == 4).then_some(())
    })
    .await;

    for n in 0..WRITES {
        let body = json!({"todo": format!("fan-out {n}")});
        create_todo(&http, &members[0], &body).await;
    }
    let all: Vec<&Member> = members.iter().collect();
    converged(&http, &all).await;
    let push = |info: &Value, field: &str| info["push"][field].as_u64().unwrap();
    let origin = eventually("the origin's pushes accounted for", CONVERGE, || async {
        let info = info(&http, &members[0]).await;
        let done = push(&info, "sent_records") + push(&info, "failed_records");
        (done >= FANOUT as u64 * WRITES).then_some(info)
    })
    .await;
    assert_eq!(
        push(&origin, "sent_records") + push(&origin, "failed_records"),
        FANOUT as u64 * WRITES,
        "each write went to exactly {FANOUT} of the 4 peers: {origin}"
    );
    assert_eq!(push(&origin, "relayed_records"), 0, "the origin's own writes are not relayed");
    let (mut relayed, mut pushed) = (0, 0);
    for member in &members {
        let info = info(&http, member).await;
        relayed += push(&info, "relayed_records");
        pushed += push(&info, "sent_records") + push(&info, "failed_records");
    }
    assert!(relayed > 0, "no receiver passed a write on");
    // Random relaying sends a write about fan-out times to each peer; the tree once.
    assert!(pushed <= 4 * WRITES, "{pushed} records pushed for {WRITES} writes to 4 peers");
    for member in members {
        member.node.shutdown().await.unwrap();
    }

    // Three nodes and the default fan-out (8): every peer gets every write from its
    // origin, and nobody relays.
    let (http, a, b, c) = three_nodes().await;
    for n in 0..10 {
        create_todo(&http, &a, &json!({"todo": format!("small {n}")})).await;
    }
    converged(&http, &[&a, &b, &c]).await;
    eventually("the origin pushed each write to both peers", CONVERGE, || async {
        let info = info(&http, &a).await;
        (push(&info, "sent_records") + push(&info, "failed_records") == 20).then_some(())
    })
    .await;
    for member in [a, b, c] {
        assert_eq!(push(&info(&http, &member).await, "relayed_records"), 0);
        member.node.shutdown().await.unwrap();
    }
}

/// Membership with the whole-list exchange slowed to every 10 s (heartbeat suspicion
/// would take 50 s, death 150 s): SWIM alone lets b and c meet, finds a crashed node
/// dead, and after a partition heals brings both sides back alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swim_finds_members_and_failures_without_waiting_for_heartbeats() {
    let http = client();
    let slow = |dir: &std::path::Path, seeds: Vec<String>| Config {
        gossip_interval: Duration::from_secs(10),
        ..config(dir, seeds, None)
    };
    let dir_a = tempfile::tempdir().unwrap();
    let config_a = slow(dir_a.path(), vec![]);
    let a = start_configured(dir_a, config_a, Options::default()).await;
    let seed = vec![a.node.addr().to_string()];
    let mut members = vec![a];
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let config = slow(dir.path(), seed.clone());
        members.push(start_configured(dir, config, Options::default()).await);
    }
    for member in &members {
        ready(&http, member).await;
    }
    // Each joiner's list exchange was with a only: the joiners meet through SWIM.
    eventually("everyone sees three alive peers", CONVERGE, || async {
        members.iter().all(|m| m.node.cluster().alive_peers().len() == 3).then_some(())
    })
    .await;
    let id_of = |member: &Member| member.node.identity().node.0;
    let state = |observer: &Member, of: uuid::Uuid| {
        let members = observer.node.cluster().members();
        members.iter().find(|m| m.id == of).map(|m| m.state.as_str())
    };

    // A partition: d on one side, a, b and c on the other.
    let d = members.pop().unwrap();
    let d_addr = d.node.addr().to_string();
    for member in &members {
        member.faults.cut(&d_addr);
        d.faults.cut(&member.node.addr().to_string());
    }
    eventually("each side holds the other dead", CONVERGE, || async {
        let ok = members
            .iter()
            .all(|m| state(m, id_of(&d)) == Some("dead") && state(&d, id_of(m)) == Some("dead"));
        ok.then_some(())
    })
    .await;
    d.faults.heal();
    for member in &members {
        member.faults.heal();
    }
    eventually("both sides alive again after the heal", CONVERGE, || async {
        let ok = members
            .iter()
            .all(|m| state(m, id_of(&d)) == Some("alive") && state(&d, id_of(m)) == Some("alive"));
        ok.then_some(())
    })
    .await;

    // A crash: no farewell, and no heartbeat timeout near.
    let c = members.pop().unwrap();
    let c_id = id_of(&c);
    c.node.crash().await.unwrap();
    eventually("the crashed node is declared dead", CONVERGE, || async {
        members.iter().chain([&d]).all(|m| state(m, c_id) == Some("dead")).then_some(())
    })
    .await;
    for member in members.into_iter().chain([d]) {
        member.node.shutdown().await.unwrap();
    }
}
