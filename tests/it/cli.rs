//! The command line of the real binary.

use std::process::Command;

use crate::support::kvs_binary;

fn kvs(args: &[&str]) -> std::process::Output {
    Command::new(kvs_binary()).args(args).output().unwrap()
}

#[test]
fn help_lists_every_flag() {
    let output = kvs(&["-h"]);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--config",
        "--listen",
        "--advertise",
        "--port",
        "--data-dir",
        "--db",
        "--node-name",
        "--seeds",
        "--log-level",
        "--log-format",
        "keygen",
        "serve",
    ] {
        assert!(help.contains(flag), "{flag} missing from -h:\n{help}");
    }
}

#[test]
fn keygen_prints_a_256_bit_key() {
    let output = kvs(&["keygen"]);
    assert!(output.status.success());
    let key = String::from_utf8(output.stdout).unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(key.trim()).unwrap();
    assert_eq!(bytes.len(), 32);
    assert!(String::from_utf8(output.stderr).unwrap().contains("--cluster-key-file"));
}

#[test]
fn a_bad_config_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "node:\n  listen: 127.0.0.1:0\n  colour: blue\n").unwrap();
    let output = kvs(&["--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("colour"), "{stderr}");

    let output = kvs(&["serve", "--listen", "127.0.0.1:0", "--sync-interval", "soon"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("cluster.sync_interval"), "{stderr}");

    let output = Command::new(kvs_binary())
        .args(["--listen", "127.0.0.1:0"])
        .env("KVS_LOG_LEVEL", "loud!!")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8(output.stderr).unwrap().contains("log_level"));
}

/// `kvs ARGS` against the node at `url`: (exit code, stdout, stderr).
fn client(url: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(kvs_binary())
        .args(args)
        .env("KVS_URL", url)
        .env_remove("KVS_TOKEN")
        .output()
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

#[test]
fn the_client_commands_read_and_write_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = crate::support::Process::start(dir.path());
    let url = node.base.as_str();
    let (code, out, _) = client(url, &["todo", "add", "buy milk", "--extern-id", "milk"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ID") && out.contains("buy milk"), "{out}");
    let id = kvs::model::todo::todo_id("milk").to_string();
    assert!(out.contains(&id), "{out}");
    assert_eq!(client(url, &["todo", "done", &id]).0, 0);
    let (_, json, _) = client(url, &["todo", "ls", "--json"]);
    let todos: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(todos[0]["completed"], true);
    assert_eq!(client(url, &["todo", "edit", &id, "buy oat milk"]).0, 0);
    let (_, out, _) = client(url, &["todo", "get", &id]);
    assert!(out.contains("buy oat milk"), "{out}");
    assert_eq!(client(url, &["todo", "rm", &id]).0, 0);
    let (code, out, err) = client(url, &["todo", "get", &id]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("kvs: 404 Not Found: "), "{err}");

    assert_eq!(client(url, &["kv", "put", "users/alice", r#"{"name":"Alice"}"#]).0, 0);
    let (_, out, _) = client(url, &["kv", "get", "users/alice"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["name"], "Alice");
    let (_, out, _) = client(url, &["kv", "ls", "--prefix", "users/"]);
    assert!(out.lines().nth(1).unwrap().starts_with("users/alice "), "{out}");
    let (code, _, err) = client(url, &["kv", "put", "x", "not json"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(client(url, &["kv", "rm", "users/alice"]).0, 0);

    // Expiry: set on create and put, shown in the table, cleared with --never; a bad
    // duration is the server's 422, named.
    let (code, out, _) =
        client(url, &["todo", "add", "call", "--extern-id", "c", "--expires-in", "1h"]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().ends_with("EXPIRES"), "{out}");
    let id = kvs::model::todo::todo_id("c").to_string();
    let (code, out, _) = client(url, &["todo", "expire", &id, "--never"]);
    assert_eq!(code, 0);
    assert!(!out.contains("EXPIRES"), "{out}");
    let (code, _, err) = client(url, &["todo", "expire", &id, "soon"]);
    assert_eq!(code, 1);
    assert!(err.contains("expires_in"), "{err}");
    let (code, out, _) = client(url, &["kv", "put", "session/1", "{}", "--ttl", "30s"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("stored session/1 (version ") && out.contains(", expires 20"), "{out}");

    let (_, out, _) = client(url, &["cluster", "status"]);
    assert!(out.contains("1 alive of 1"), "{out}");
    let (_, out, _) = client(url, &["cluster", "members", "--json"]);
    let members: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(members[0]["state"], "alive");
    assert_eq!(client(url, &["todo"]).0, 2, "a missing subcommand is a usage error");
    let (code, _, err) = client("http://127.0.0.1:1", &["todo", "ls"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach http://127.0.0.1:1"), "{err}");
}

#[test]
fn the_client_sends_its_token_and_trusts_the_given_ca() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    kvs::keys::write_certs(&certs, &["n1".to_owned()], &[]).unwrap();
    let (private, public) = kvs::keys::token_keypair().unwrap();
    std::fs::write(certs.join("token-public.pem"), public).unwrap();
    let allow = ["read:todos".parse().unwrap()];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let (token, _) = kvs::token::issue(
        private.as_bytes(),
        "cli",
        &allow,
        std::time::Duration::from_secs(600),
        now.as_secs(),
    )
    .unwrap();
    let path = |file: &str| certs.join(file).display().to_string();
    let node = crate::support::Process::start_with(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            &path("n1.pem"),
            "--tls-key",
            &path("n1-key.pem"),
            "--auth-public-key",
            &path("token-public.pem"),
        ],
    );
    let url = node.base.replace("http://", "https://");
    let ca = path("ca.pem");
    let (code, _, err) = client(&url, &["todo", "ls", "--cacert", &ca]);
    assert_eq!(code, 1);
    assert!(err.starts_with("kvs: 401 Unauthorized"), "{err}");
    let (code, out, err) = client(&url, &["todo", "ls", "--cacert", &ca, "--token", &token]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ID"), "{out}");
    let (code, _, err) = client(&url, &["todo", "add", "x", "--cacert", &ca, "--token", &token]);
    assert_eq!(code, 1);
    assert!(err.starts_with("kvs: 403 Forbidden"), "{err}");
    let (code, _, err) = client(&url, &["todo", "ls", "--token", &token]);
    assert_eq!(code, 1, "the system's roots do not know this CA: {err}");
}
