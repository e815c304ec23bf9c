//! The dependency rule (STYLE.md): each external crate with a narrow job is named only in
//! the module that owns it, so replacing it touches one place.

use std::path::{Path, PathBuf};

/// Crate (as written in paths) → the files or folders under `src/` allowed to name it.
const OWNERS: &[(&str, &[&str])] = &[
    ("axum", &["http/"]),
    ("tower", &["http/"]),
    ("tower_http", &["http/"]),
    ("utoipa", &["http/"]),
    ("utoipa_swagger_ui", &["http/"]),
    ("reqwest", &["peer.rs", "client.rs"]),
    ("sled", &["store/"]),
    ("zstd", &["codec.rs"]),
    ("clap", &["cli.rs", "main.rs"]),
    ("rlimit", &["main.rs"]),
    // The process set-up (open files, huge pages) lives in main.rs; the disk in the store.
    ("rustix", &["store/fault.rs", "main.rs"]),
    ("hyper", &["http/"]),
    ("hyper_util", &["http/"]),
    ("tracing_subscriber", &["telemetry.rs"]),
    ("rustls", &["tls.rs"]),
    ("tokio_rustls", &["tls.rs"]),
    ("rustls_pki_types", &["tls.rs"]),
    ("rcgen", &["keys.rs"]),
    ("jsonwebtoken", &["token.rs"]),
    ("governor", &["http/limit.rs"]),
    ("prometheus_client", &["metrics.rs"]),
    ("indicatif", &["client.rs"]),
    ("foca", &["cluster/swim.rs"]),
    ("rand_pcg", &["cluster/swim.rs"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// True when `line` names `krate` as a path root (`krate::…` or `use krate…`).
fn names(line: &str, krate: &str) -> bool {
    let code = line.split("//").next().unwrap_or_default();
    code.match_indices(krate).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = &code[at + krate.len()..];
        let starts_word = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'));
        starts_word
            && (after.starts_with("::")
                || (after.starts_with([' ', ';', '{']) && code[..at].trim_end().ends_with("use")))
    })
}

#[test]
fn each_external_crate_stays_in_the_module_that_owns_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found only {} source files", files.len());
    let mut strays = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(file).unwrap();
        for (krate, owners) in OWNERS {
            if owners.iter().any(|owner| relative.starts_with(owner)) {
                continue;
            }
            for (number, line) in text.lines().enumerate() {
                if names(line, krate) {
                    strays.push(format!("src/{relative}:{}: {krate}: {}", number + 1, line.trim()));
                }
            }
        }
    }
    assert!(strays.is_empty(), "crates named outside their module:\n{}", strays.join("\n"));
}

#[test]
fn the_rule_sees_a_stray_use() {
    assert!(names("use sled::Db;", "sled"));
    assert!(names("    let db = sled::Config::new()", "sled"));
    assert!(names("use axum;", "axum"));
    assert!(!names("// sled::Db in a comment", "sled"));
    assert!(!names("let sledge = 1; my_sled::x()", "sled"));
    assert!(!names("crate::store::sled_free()", "sled"));
}
