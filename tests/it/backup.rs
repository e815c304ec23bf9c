//! `kvs backup` and `kvs restore` (the real binary) against a node on a real socket.

use std::process::Command;

use serde_json::{json, Value};

use crate::support::{client, kvs_binary, start_node};

/// Runs the binary off the runtime's thread (the node under test shares the runtime).
async fn kvs(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(kvs_binary()).args(&args).output().unwrap()
    })
    .await
    .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

async fn info(http: &reqwest::Client, base: &str) -> Value {
    http.get(format!("{base}/health/info")).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn a_backup_restores_to_the_same_records_under_a_new_identity() {
    let source = start_node().await;
    let http = client();
    for n in 0..300 {
        let body = json!({"todo": format!("todo {n}"), "extern_id": format!("b{n}")});
        let response = http.post(format!("{}/todos", source.base)).json(&body).send().await;
        assert_eq!(response.unwrap().status(), 201);
    }
    let doc = http.put(format!("{}/kv/a/doc", source.base)).json(&json!({"x": 1})).send().await;
    assert_eq!(doc.unwrap().status(), 201);
    let gone = kvs::model::todo::todo_id("b7");
    let deleted = http.delete(format!("{}/todos/{gone}", source.base)).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let before = info(&http, &source.base).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kvs.backup");
    let file_arg = file.to_str().unwrap();
    let (code, out, err) = kvs(&["backup", "--url", &source.base, "--out", file_arg]).await;
    assert_eq!(code, 0, "{err}");
    // 300 todos and one document, the deleted todo as a tombstone.
    assert!(out.contains("301 records"), "{out}");
    assert!(out.contains(before["merkle_root"].as_str().unwrap()), "{out} vs {before}");
    let (code, _, err) = kvs(&["backup", "--url", &source.base, "--out", file_arg]).await;
    assert_eq!(code, 2, "an existing file is not overwritten: {err}");

    let data = dir.path().join("restored");
    let data_arg = data.to_str().unwrap();
    let (code, out, err) = kvs(&["restore", file_arg, "--data-dir", data_arg]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restored 301 records"), "{out}");
    let (code, _, err) = kvs(&["restore", file_arg, "--data-dir", data_arg]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");

    let mut config = kvs::config::Config::from_yaml("").unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = data.clone();
    let restored = kvs::daemon::start(config, kvs::daemon::Options::default()).await.unwrap();
    let base = format!("http://{}", restored.addr());
    let after = info(&http, &base).await;
    assert_eq!(after["merkle_root"], before["merkle_root"]);
    assert_eq!(after["todo_count"], 299);
    assert_eq!(after["key_count"], 300);
    assert_ne!(after["node_id"], before["node_id"], "a restored node gets a new identity");
    let todo = http.get(format!("{base}/todos/{}", kvs::model::todo::todo_id("b42"))).send().await;
    assert_eq!(todo.unwrap().status(), 200);
    let deleted = http.get(format!("{base}/todos/{gone}")).send().await.unwrap();
    assert_eq!(deleted.status(), 404);
    restored.shutdown().await.unwrap();

    // A damaged file is refused, and nothing half-restored is left behind.
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    let damaged = dir.path().join("damaged.backup");
    std::fs::write(&damaged, bytes).unwrap();
    let target = dir.path().join("from-damaged");
    let (code, _, err) =
        kvs(&["restore", damaged.to_str().unwrap(), "--data-dir", target.to_str().unwrap()]).await;
    assert_eq!(code, 1);
    assert!(err.contains("damaged"), "{err}");
    assert!(!target.exists());
    source.node.shutdown().await.unwrap();
}
