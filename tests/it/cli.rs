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
