//! The operators' cluster view: `POST /admin/v1/sync`, `GET /admin/v1/cluster`, the
//! `kvs cluster sync|overview` commands, and the `/ui/` dashboard in a real headless
//! Chromium (Debian's `chromium`; `.ci/run` installs it).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kvs::config::Config;
use kvs::daemon::{self, Node, Options};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{client, eventually, kvs_binary};

const CONVERGE: Duration = Duration::from_secs(20);

struct Member {
    node: Node,
    base: String,
    _dir: tempfile::TempDir,
}

/// A node that syncs only when asked (the loop's interval is an hour) when `push` is
/// false, and as usual otherwise.
async fn start(seeds: Vec<String>, push: bool) -> Member {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::from_yaml("").unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().to_owned();
    config.seeds = seeds;
    config.gossip_interval = Duration::from_millis(50);
    config.join_timeout = Duration::from_secs(3);
    config.push_on_write = push;
    config.sync_interval =
        if push { Duration::from_millis(200) } else { Duration::from_secs(3600) };
    let node = daemon::start(config, Options::default()).await.unwrap();
    let base = format!("http://{}", node.addr());
    Member { node, base, _dir: dir }
}

async fn three(push: bool) -> (Member, Member, Member) {
    let a = start(vec![], push).await;
    let seed = a.node.addr().to_string();
    let b = start(vec![seed.clone()], push).await;
    let c = start(vec![seed], push).await;
    eventually("everyone ready with two alive peers", CONVERGE, || async {
        let http = client();
        for member in [&a, &b, &c] {
            let ready = http.get(format!("{}/health/ready", member.base)).send().await.ok()?;
            if ready.status() != StatusCode::OK || member.node.cluster().alive_peers().len() != 2 {
                return None;
            }
        }
        Some(())
    })
    .await;
    (a, b, c)
}

async fn create_todos(member: &Member, count: usize) {
    let http = client();
    for i in 0..count {
        let reply = http
            .post(format!("{}/todos", member.base))
            .json(&json!({ "todo": format!("todo {i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::CREATED);
    }
}

async fn view(member: &Member) -> Value {
    let reply = client().get(format!("{}/admin/v1/cluster", member.base)).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    reply.json().await.unwrap()
}

fn row<'a>(view: &'a Value, member: &Member) -> &'a Value {
    let addr = member.node.addr().to_string();
    let rows = view["members"].as_array().unwrap();
    rows.iter()
        .find(|row| row["addr"] == addr.as_str())
        .unwrap_or_else(|| panic!("{addr} in {view}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_sync_rounds_and_see_every_members_figures() {
    let (a, b, c) = three(false).await;
    create_todos(&a, 25).await;

    // Push is off and the loop waits an hour: only a's view differs.
    let before = view(&a).await;
    assert_eq!(before["roots_agree"], false, "{before}");
    assert_eq!(row(&before, &a)["records"], 25);
    assert_eq!(row(&before, &b)["records"], 0);
    assert_eq!(row(&before, &a)["this_node"], true);
    assert_eq!(row(&before, &a)["writes_total"], 25);

    let http = client();
    let refused =
        http.post(format!("{}/admin/v1/sync?peer=127.0.0.1:1", b.base)).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    let problem: Value = refused.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("127.0.0.1:1"), "{problem}");

    // b with everyone: one round per alive peer, and it pulls a's 25 records.
    let rounds: Value =
        http.post(format!("{}/admin/v1/sync", b.base)).send().await.unwrap().json().await.unwrap();
    let rounds = rounds["rounds"].as_array().unwrap().clone();
    assert_eq!(rounds.len(), 2, "{rounds:?}");
    assert!(rounds.iter().all(|round| round["ok"] == true), "{rounds:?}");
    let from_a = rounds.iter().find(|r| r["peer_addr"] == a.node.addr().to_string()).unwrap();
    assert_eq!(from_a["pulled"], 25, "{from_a}");
    // The rounds run in parallel: the one with c may already pass on some of a's
    // records, and c pulls exactly the rest from a.
    let to_c = rounds.iter().find(|r| r["peer_addr"] == c.node.addr().to_string()).unwrap();
    let passed_to_c = to_c["pushed"].as_u64().unwrap();
    assert!(passed_to_c <= 25, "{to_c}");

    // c through the CLI, with one peer named.
    let (c_url, a_addr) = (c.base.clone(), a.node.addr().to_string());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(kvs_binary())
            .args(["cluster", "sync", "--json", "--url", &c_url, "--peer", &a_addr])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["rounds"][0]["pulled"], 25 - passed_to_c, "{report}");

    let after = view(&b).await;
    assert_eq!(after["roots_agree"], true, "{after}");
    for member in [&a, &b, &c] {
        assert_eq!(row(&after, member)["records"], 25, "{after}");
        assert_eq!(row(&after, member)["state"], "alive");
    }
    let c_url = c.base.clone();
    let table = tokio::task::spawn_blocking(move || {
        Command::new(kvs_binary()).args(["cluster", "overview", "--url", &c_url]).output().unwrap()
    })
    .await
    .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.contains("all Merkle roots agree"), "{table}");
    assert_eq!(table.lines().filter(|line| line.contains(" alive ")).count(), 3, "{table}");

    // A member that stops answering is shown with the reason until it is declared dead.
    let c_addr = c.node.addr().to_string();
    c.node.crash().await.unwrap();
    let shown = eventually("c shown as not alive", CONVERGE, || async {
        let view = view(&a).await;
        let row = view["members"].as_array()?.iter().find(|r| r["addr"] == c_addr.as_str())?;
        (row["state"] != "alive").then(|| view.clone())
    })
    .await;
    let c_row = shown["members"].as_array().unwrap().iter().find(|r| r["addr"] == c_addr.as_str());
    assert!(c_row.unwrap().get("merkle_root").is_none(), "{shown}");
}

/// Chromium from `KVS_CHROMIUM`, else the first of Debian's and others' names on PATH.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("KVS_CHROMIUM") {
        return path.into();
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(found) = Command::new("which").arg(name).output() {
            if found.status.success() {
                return String::from_utf8_lossy(&found.stdout).trim().into();
            }
        }
    }
    panic!(
        "this test renders /ui/ in a headless Chromium and none was found: \
         `apt-get install chromium` (or set KVS_CHROMIUM to the browser's path)"
    )
}

/// Loads `url` in a fresh headless Chromium, lets its scripts run for `budget` of
/// virtual time, and returns the rendered DOM (or writes a screenshot to `shot`).
fn render(url: &str, profile: &std::path::Path, shot: Option<&std::path::Path>) -> String {
    let mut command = Command::new(chromium());
    command
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=3000", "--window-size=1300,420"]);
    match shot {
        Some(path) => command.arg(format!("--screenshot={}", path.display())),
        None => command.arg("--dump-dom"),
    };
    let output = command.arg(url).output().expect("run chromium");
    assert!(output.status.success(), "chromium: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// The value of `attribute` on each element of the DOM whose opening tag has it.
fn attributes(dom: &str, attribute: &str) -> Vec<String> {
    let needle = format!(" {attribute}=\"");
    dom.match_indices(&needle)
        .map(|(at, _)| {
            let rest = &dom[at + needle.len()..];
            rest[..rest.find('"').unwrap()].to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_members_alive_then_one_dead_in_a_headless_browser() {
    let (a, b, c) = three(true).await;
    create_todos(&b, 10).await;
    let url = format!("{}/ui/", a.base);
    let profile = tempfile::tempdir().unwrap();
    let profile_path = profile.path().to_owned();

    let dom = eventually("the page shows three alive members with equal roots", CONVERGE, || {
        let (url, profile) = (url.clone(), profile_path.clone());
        async move {
            let dom =
                tokio::task::spawn_blocking(move || render(&url, &profile, None)).await.unwrap();
            let states = attributes(&dom, "data-state");
            let roots = attributes(&dom, "data-root");
            let agree = attributes(&dom, "data-agree") == ["true"];
            let equal = roots.len() == 3 && roots.windows(2).all(|pair| pair[0] == pair[1]);
            (states == ["alive"; 3] && agree && equal).then_some(dom)
        }
    })
    .await;
    assert!(dom.contains("3 members · 3 alive · all Merkle roots agree"), "{dom}");
    assert!(dom.contains("(this node)"), "{dom}");

    // The screenshot is kept where cargo keeps test artifacts (target/tmp).
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let (shot_url, shot_profile, shot_path) = (url.clone(), profile_path.clone(), shot.clone());
    tokio::task::spawn_blocking(move || render(&shot_url, &shot_profile, Some(&shot_path)))
        .await
        .unwrap();
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 5_000, "a real screenshot at {shot:?}");

    let c_id = c.node.identity().node.0.to_string();
    c.node.crash().await.unwrap();
    eventually("the page shows the killed member as suspect or dead", CONVERGE, || {
        let (url, profile, c_id) = (url.clone(), profile_path.clone(), c_id.clone());
        async move {
            let dom =
                tokio::task::spawn_blocking(move || render(&url, &profile, None)).await.unwrap();
            let ids = attributes(&dom, "data-id");
            let states = attributes(&dom, "data-state");
            let c_state = ids.iter().zip(&states).find(|(id, _)| **id == c_id)?.1.clone();
            let others_alive = states.iter().filter(|state| *state == "alive").count() == 2;
            (matches!(c_state.as_str(), "suspect" | "dead") && others_alive).then_some(())
        }
    })
    .await;
    drop(b);
}
