//! The API over a real socket.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{client, eventually, start_node};

#[tokio::test]
async fn crud_over_a_real_socket() {
    let node = start_node().await;
    let http = client();
    let base = &node.base;
    let created =
        http.post(format!("{base}/todos")).json(&json!({"todo": "walk"})).send().await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let todo: Value = created.json().await.unwrap();

    let got: Value =
        http.get(format!("{base}{location}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(got, todo);
    let patched = http
        .patch(format!("{base}{location}"))
        .json(&json!({"completed": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let deleted = http.delete(format!("{base}{location}")).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = http.get(format!("{base}{location}")).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    node.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_oversized_body_is_413_and_the_node_keeps_serving() {
    let node = start_node().await;
    let http = client();
    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(2 * 1024 * 1024));
    let reply = http
        .put(format!("{}/kv/big", node.base))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let live = http.get(format!("{}/health/live", node.base)).send().await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    assert_eq!(node.node.services().status().counts.docs, 0);
    node.node.shutdown().await.unwrap();
}

/// Read-modify-write is atomic: of many concurrent creates with one extern_id exactly
/// one succeeds, and of many updates carrying the same If-Match exactly one succeeds.
#[tokio::test]
async fn concurrent_read_modify_writes_are_atomic() {
    let node = start_node().await;
    let http = client();
    let creates = (0..32).map(|n| {
        let http = http.clone();
        let url = format!("{}/todos", node.base);
        tokio::spawn(async move {
            let body = json!({"todo": format!("attempt {n}"), "extern_id": "only-once"});
            http.post(url).json(&body).send().await.unwrap().status()
        })
    });
    let statuses: Vec<StatusCode> =
        futures_join(creates.collect()).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CREATED).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count(), 31);

    let id = kvs::model::todo::todo_id("only-once");
    let url = format!("{}/todos/{id}", node.base);
    let etag = http.get(&url).send().await.unwrap().headers()["etag"].to_str().unwrap().to_owned();
    let updates = (0..32).map(|n| {
        let (http, url, etag) = (http.clone(), url.clone(), etag.clone());
        tokio::spawn(async move {
            let body = json!({"todo": format!("update {n}")});
            http.patch(url).header("if-match", etag).json(&body).send().await.unwrap().status()
        })
    });
    let statuses: Vec<StatusCode> =
        futures_join(updates.collect()).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::PRECONDITION_FAILED).count(), 31);
    node.node.shutdown().await.unwrap();
}

async fn futures_join<T>(
    handles: Vec<tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await);
    }
    out
}

/// Graceful shutdown of an in-process node: data written before it is there after a
/// restart on the same directory.
#[tokio::test]
async fn restart_keeps_data_and_identity() {
    let node = start_node().await;
    let http = client();
    for n in 0..20 {
        let body = json!({"todo": format!("t{n}"), "extern_id": format!("r{n}")});
        http.post(format!("{}/todos", node.base)).json(&body).send().await.unwrap();
    }
    let identity = node.node.identity();
    let root = node.node.services().status().merkle_root;
    let dir = node.dir;
    node.node.shutdown().await.unwrap();

    let mut config = kvs::config::Config::from_yaml("").unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().to_owned();
    let again = kvs::daemon::start(config, kvs::daemon::Options::default()).await.unwrap();
    assert_eq!(again.identity(), identity);
    assert_eq!(again.services().status().merkle_root, root);
    let base = format!("http://{}", again.addr());
    let listed: Vec<Value> = eventually("the todo list", Duration::from_secs(5), || async {
        http.get(format!("{base}/todos")).send().await.ok()?.json().await.ok()
    })
    .await;
    assert_eq!(listed.len(), 20);
    // A new write after restart wins over the old ones (the clock starts past them).
    let id = kvs::model::todo::todo_id("r0");
    let updated: Value = http
        .patch(format!("{base}/todos/{id}"))
        .json(&json!({"todo": "after restart"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(updated["todo"], json!("after restart"));
    again.shutdown().await.unwrap();
}

/// A todo's expiry: set on create, shown in the body, extended by an update that names
/// one, kept by an update that does not, cleared by `"expires_in": null`; a todo whose
/// expiry came is gone (404, out of the listing, free for its extern_id again).
#[tokio::test]
async fn a_todo_expires_and_an_update_extends_or_clears_its_expiry() {
    let node = start_node().await;
    let http = client();
    let base = &node.base;
    let create = |body: Value| http.post(format!("{base}/todos")).json(&body).send();
    let created: Value = create(json!({"todo": "short", "extern_id": "short", "expires_in": "1s"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let short = created["id"].as_str().unwrap().to_owned();
    let first_expiry = created["expires_at"].as_str().unwrap().to_owned();
    let kept: Value =
        create(json!({"todo": "kept", "expires_in": "1s"})).await.unwrap().json().await.unwrap();
    let kept = kept["id"].as_str().unwrap().to_owned();
    let patch = |id: &str, body: Value| http.patch(format!("{base}/todos/{id}")).json(&body).send();

    // `kept`: extended to an hour, then an update without `expires_in` keeps that, then
    // null clears it.
    let extended: Value =
        patch(&kept, json!({"expires_in": "1h"})).await.unwrap().json().await.unwrap();
    let hour = extended["expires_at"].as_str().unwrap().to_owned();
    assert!(hour > first_expiry, "{hour} is not later than {first_expiry}");
    let untouched: Value =
        patch(&kept, json!({"completed": true})).await.unwrap().json().await.unwrap();
    assert_eq!(untouched["expires_at"], json!(hour));
    let cleared: Value =
        patch(&kept, json!({"expires_in": null})).await.unwrap().json().await.unwrap();
    assert_eq!(cleared["expires_at"], Value::Null);

    // Bad durations are 422 naming the field.
    for bad in ["0s", "1.5s", "soon", "1000000d"] {
        let reply = create(json!({"todo": "x", "expires_in": bad})).await.unwrap();
        assert_eq!(reply.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        let problem: Value = reply.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], "expires_in", "{problem}");
    }

    eventually("the short todo expires", Duration::from_secs(10), || async {
        let reply = http.get(format!("{base}/todos/{short}")).send().await.ok()?;
        (reply.status() == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let listed: Value =
        http.get(format!("{base}/todos")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> =
        listed.as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![kept.as_str()], "only the todo whose expiry was cleared is listed");
    let patched = patch(&short, json!({"completed": true})).await.unwrap();
    assert_eq!(patched.status(), StatusCode::NOT_FOUND, "an expired todo cannot be updated");
    // Its extern_id is free again.
    let again = create(json!({"todo": "again", "extern_id": "short"})).await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    node.node.shutdown().await.unwrap();
}
