//! TLS, mutual TLS between peers, client tokens and rate limits, over real sockets with
//! in-process nodes. Every wait polls with a deadline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kvs::config::{AuthConfig, Config, RateLimit};
use kvs::daemon::{self, Node, Options};
use kvs::tls::{PeerTls, TlsFiles};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::eventually;

const CONVERGE: Duration = Duration::from_secs(30);

struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new(names: &[&str]) -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        kvs::keys::write_certs(dir.path(), &names, &[]).unwrap();
        Certs { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn files(&self, name: &str, peer_auth: PeerTls) -> TlsFiles {
        TlsFiles {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}-key.pem")),
            ca: Some(self.path("ca.pem")),
            peer_auth,
        }
    }

    /// An HTTPS client trusting this CA only, optionally presenting `name`'s certificate.
    fn client(&self, identity: Option<&str>) -> reqwest::Client {
        let ca = std::fs::read(self.path("ca.pem")).unwrap();
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()]);
        if let Some(name) = identity {
            let mut pem = std::fs::read(self.path(&format!("{name}.pem"))).unwrap();
            pem.extend(std::fs::read(self.path(&format!("{name}-key.pem"))).unwrap());
            builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        builder.build().unwrap()
    }
}

fn base_config(dir: &Path) -> Config {
    let mut config = Config::from_yaml("").unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.to_owned();
    config.sync_interval = Duration::from_millis(200);
    config.gossip_interval = Duration::from_millis(50);
    config.join_timeout = Duration::from_secs(3);
    config
}

struct Running {
    node: Node,
    base: String,
    _dir: tempfile::TempDir,
}

async fn start(config_of: impl FnOnce(&Path) -> Config, scheme: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = config_of(dir.path());
    let node = daemon::start(config, Options::default()).await.unwrap();
    let base = format!("{scheme}://{}", node.addr());
    Running { node, base, _dir: dir }
}

/// Replaces `to` with `from` in one rename (a reload never sees half a file).
fn replace(from: &Path, to: &Path) {
    let staging = to.with_extension("new");
    std::fs::copy(from, &staging).unwrap();
    std::fs::rename(&staging, to).unwrap();
}

#[tokio::test]
async fn tls_is_served_and_a_new_certificate_is_picked_up_without_a_restart() {
    let first = Certs::new(&["n1"]);
    let second = Certs::new(&["n1"]);
    let files = first.files("n1", PeerTls::None);
    let node = start(|dir| Config { tls: Some(files.clone()), ..base_config(dir) }, "https").await;
    let url = format!("{}/health/live", node.base);
    let trusts_first = first.client(None);
    let trusts_second = second.client(None);
    assert_eq!(trusts_first.get(&url).send().await.unwrap().status(), StatusCode::OK);
    assert!(trusts_second.get(&url).send().await.is_err(), "a client trusting another CA");
    let plain = format!("http://{}/health/live", node.node.addr());
    let plain = reqwest::Client::new().get(&plain).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "plain HTTP is not served");

    // A broken file is refused and the old certificate stays in use.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(trusts_first.get(&url).send().await.unwrap().status(), StatusCode::OK);

    // The new pair is picked up by the next handshake, without a restart.
    replace(&second.path("n1-key.pem"), &files.key);
    replace(&second.path("n1.pem"), &files.cert);
    eventually("the new certificate is served", CONVERGE, || async {
        let fresh = second.client(None);
        fresh.get(&url).send().await.ok().filter(|r| r.status() == StatusCode::OK)
    })
    .await;
    assert!(first.client(None).get(&url).send().await.is_err(), "the old CA no longer fits");
    // A connection opened before the reload keeps the certificate it started with.
    assert_eq!(trusts_first.get(&url).send().await.unwrap().status(), StatusCode::OK);
    node.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn under_mtls_a_peer_needs_a_ca_signed_certificate_but_public_clients_do_not() {
    let certs = Certs::new(&["n1", "n2"]);
    let strangers = Certs::new(&["n2"]);
    let files = certs.files("n1", PeerTls::Mtls);
    let node = start(|dir| Config { tls: Some(files), ..base_config(dir) }, "https").await;
    let gossip = format!("{}/internal/v1/gossip", node.base);
    let public = certs.client(None);
    assert_eq!(
        public.get(format!("{}/health/ready", node.base)).send().await.unwrap().status(),
        StatusCode::OK
    );
    let created = public
        .post(format!("{}/todos", node.base))
        .json(&json!({"todo": "served without a client certificate"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let refused = public.post(&gossip).body("[]").send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let body: Value = refused.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("client certificate"), "{body}");

    // A certificate from another CA fails the handshake.
    let mut pem = std::fs::read(strangers.path("n2.pem")).unwrap();
    pem.extend(std::fs::read(strangers.path("n2-key.pem")).unwrap());
    let stranger = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(
            &std::fs::read(certs.path("ca.pem")).unwrap(),
        )
        .unwrap()])
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    assert!(stranger.post(&gossip).body("[]").send().await.is_err());

    // A peer with a CA-signed certificate gets past the certificate check.
    let peer = certs.client(Some("n2"));
    let reply = peer.post(&gossip).body("[]").send().await.unwrap();
    assert_ne!(reply.status(), StatusCode::FORBIDDEN, "{:?}", reply.text().await);
    node.node.shutdown().await.unwrap();
}

/// A free loopback port (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn the_three_node_tls_cluster_in_configs_converges() {
    let certs = Certs::new(&["node-1", "node-2", "node-3"]);
    let data = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (mut nodes, mut running) = (Vec::new(), Vec::new());
    for n in 1..=3 {
        let mut yaml =
            std::fs::read_to_string(root.join(format!("configs/tls/node{n}.yaml"))).unwrap();
        yaml = yaml
            .replace("./configs/tls/certs/", &format!("{}/", certs.dir.path().display()))
            .replace("./data/", &format!("{}/", data.path().display()));
        for (i, port) in ports.iter().enumerate() {
            yaml = yaml.replace(&format!("127.0.0.1:809{}", i + 1), &format!("127.0.0.1:{port}"));
        }
        let mut config = Config::from_yaml(&yaml).unwrap();
        assert_eq!(config.tls.as_ref().unwrap().peer_auth, PeerTls::Mtls);
        config.sync_interval = Duration::from_millis(200);
        config.gossip_interval = Duration::from_millis(50);
        let node = daemon::start(config, Options::default()).await.unwrap();
        nodes.push(format!("https://{}", node.addr()));
        running.push(node);
    }
    let http = certs.client(None);
    let created = eventually("node 1 takes a write over TLS", CONVERGE, || async {
        let response = http
            .post(format!("{}/todos", nodes[0]))
            .json(&json!({"todo": "over TLS"}))
            .send()
            .await;
        response.ok().filter(|r| r.status() == StatusCode::CREATED)
    })
    .await;
    let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    for base in &nodes[1..] {
        let url = format!("{base}/todos/{id}");
        eventually("the todo reaches every node over TLS", CONVERGE, || async {
            let response = http.get(&url).send().await.ok()?;
            (response.status() == StatusCode::OK).then_some(())
        })
        .await;
    }
    for node in running {
        node.shutdown().await.unwrap();
    }
}

fn rand_key() -> [u8; 32] {
    rand::random()
}

/// A token key pair and a way to issue tokens with it.
struct Tokens {
    private: String,
    public: String,
}

impl Tokens {
    fn new() -> Tokens {
        let (private, public) = kvs::keys::token_keypair().unwrap();
        Tokens { private, public }
    }

    fn issue(
        &self,
        subject: &str,
        allow: &[&str],
        ttl: Duration,
        age: Duration,
    ) -> (String, String) {
        let allow: Vec<_> = allow.iter().map(|p| p.parse().unwrap()).collect();
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
                - age.as_secs();
        kvs::token::issue(self.private.as_bytes(), subject, &allow, ttl, now).unwrap()
    }

    fn token(&self, subject: &str, allow: &[&str]) -> String {
        self.issue(subject, allow, Duration::from_secs(3600), Duration::ZERO).0
    }

    fn auth(&self, anonymous: &[&str]) -> AuthConfig {
        AuthConfig {
            public_key_pem: self.public.as_bytes().to_vec(),
            anonymous: anonymous.iter().map(|p| p.parse().unwrap()).collect(),
        }
    }
}

async fn status(request: reqwest::RequestBuilder) -> StatusCode {
    request.send().await.unwrap().status()
}

async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn every_permission_boundary_answers_as_specified() {
    let tokens = Tokens::new();
    let auth = tokens.auth(&[]);
    let node = start(|dir| Config { auth: Some(auth), ..base_config(dir) }, "http").await;
    let base = &node.base;
    let http = reqwest::Client::new();
    let alice =
        tokens.token("alice", &["read:todos", "write:kv/users/alice/", "read:kv/users/alice/"]);
    let root = tokens.token("root", &["read:*", "write:*", "delete:*"]);
    let ops = tokens.token("ops", &["metrics:*"]);

    // Without a token: only the health probes.
    let missing = http.get(format!("{base}/todos")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    assert_eq!(missing.headers()["content-type"], "application/problem+json");
    assert_eq!(status(http.get(format!("{base}/health/live"))).await, StatusCode::OK);
    assert_eq!(status(http.get(format!("{base}/health/ready"))).await, StatusCode::OK);
    for path in ["/health/info", "/openapi.json", "/kv?prefix=users/"] {
        assert_eq!(
            status(http.get(format!("{base}{path}"))).await,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    let basic = http.get(format!("{base}/todos")).header("authorization", "Basic YTpi");
    assert_eq!(status(basic).await, StatusCode::UNAUTHORIZED);
    let forged = format!("{}x", &alice[..alice.len() - 1]);
    assert_eq!(
        status(http.get(format!("{base}/todos")).bearer_auth(&forged)).await,
        StatusCode::UNAUTHORIZED
    );

    // Node-wide routes; /health/info says tokens are on and never shows the key.
    let info = http.get(format!("{base}/health/info")).bearer_auth(&ops).send().await.unwrap();
    let info_text = info.text().await.unwrap();
    let info: Value = serde_json::from_str(&info_text).unwrap();
    assert_eq!(info["security"]["client_auth"], true);
    assert_eq!(info["security"]["tls"], false);
    let key_body: String = tokens.public.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!info_text.contains(&key_body));
    assert_eq!(
        status(http.get(format!("{base}/health/info")).bearer_auth(&ops)).await,
        StatusCode::OK
    );
    assert_eq!(
        status(http.get(format!("{base}/health/info")).bearer_auth(&alice)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(http.get(format!("{base}/openapi.json")).bearer_auth(&alice)).await,
        StatusCode::OK
    );
    assert_eq!(
        status(http.get(format!("{base}/openapi.json")).bearer_auth(&ops)).await,
        StatusCode::FORBIDDEN
    );

    // Operations and prefixes.
    assert_eq!(status(http.get(format!("{base}/todos")).bearer_auth(&alice)).await, StatusCode::OK);
    let create = http.post(format!("{base}/todos")).bearer_auth(&alice).json(&json!({"todo": "x"}));
    assert_eq!(status(create).await, StatusCode::FORBIDDEN);
    let own = http
        .put(format!("{base}/kv/users/alice/profile"))
        .bearer_auth(&alice)
        .json(&json!({"a": 1}));
    assert_eq!(status(own).await, StatusCode::CREATED);
    let other =
        http.put(format!("{base}/kv/users/bob/profile")).bearer_auth(&alice).json(&json!({"b": 1}));
    assert_eq!(status(other).await, StatusCode::FORBIDDEN);
    let by_root =
        http.put(format!("{base}/kv/users/bob/profile")).bearer_auth(&root).json(&json!({"b": 1}));
    assert_eq!(status(by_root).await, StatusCode::CREATED);
    // A refusal does not tell whether the key exists.
    for key in ["users/bob/profile", "users/bob/nothing-here"] {
        let read = http.get(format!("{base}/kv/{key}")).bearer_auth(&alice);
        assert_eq!(status(read).await, StatusCode::FORBIDDEN, "{key}");
    }
    let delete = http.delete(format!("{base}/kv/users/alice/profile")).bearer_auth(&alice);
    assert_eq!(status(delete).await, StatusCode::FORBIDDEN, "alice may write, not delete");
    // A listing shows only what the token may read.
    let listing = json_of(http.get(format!("{base}/kv?prefix=users/")).bearer_auth(&alice)).await;
    let keys: Vec<&str> =
        listing["keys"].as_array().unwrap().iter().map(|k| k["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["users/alice/profile"]);
    let everything = json_of(http.get(format!("{base}/kv")).bearer_auth(&root)).await;
    assert_eq!(everything["keys"].as_array().unwrap().len(), 2);
    // kvs's own keys are not writable by clients, whatever their token.
    let reserved =
        http.put(format!("{base}/kv/_kvs/revoked/x")).bearer_auth(&root).json(&json!({}));
    assert_eq!(status(reserved).await, StatusCode::FORBIDDEN);

    // An expired token.
    let (expired, _) =
        tokens.issue("alice", &["read:todos"], Duration::from_secs(60), Duration::from_secs(3600));
    let response = http.get(format!("{base}/todos")).bearer_auth(&expired).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("expired"), "{body}");
    // A token signed with another key.
    let stranger = Tokens::new().token("alice", &["read:*"]);
    assert_eq!(
        status(http.get(format!("{base}/todos")).bearer_auth(&stranger)).await,
        StatusCode::UNAUTHORIZED
    );
    node.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn anonymous_permissions_are_what_a_request_without_a_token_may_do() {
    let tokens = Tokens::new();
    let auth = tokens.auth(&["read:todos"]);
    let node = start(|dir| Config { auth: Some(auth), ..base_config(dir) }, "http").await;
    let http = reqwest::Client::new();
    assert_eq!(status(http.get(format!("{}/todos", node.base))).await, StatusCode::OK);
    let write = http.post(format!("{}/todos", node.base)).json(&json!({"todo": "x"}));
    assert_eq!(status(write).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(http.get(format!("{}/kv/a", node.base))).await, StatusCode::UNAUTHORIZED);
    node.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_token_revoked_on_one_node_is_refused_by_another() {
    let tokens = Tokens::new();
    let key = rand_key();
    let auth = tokens.auth(&[]);
    let configure = |seeds: Vec<String>| {
        let auth = auth.clone();
        move |dir: &Path| Config {
            auth: Some(auth),
            seeds,
            cluster_key: Some(kvs::auth::Secret(key)),
            ..base_config(dir)
        }
    };
    let first = start(configure(vec![]), "http").await;
    let second = start(configure(vec![first.node.addr().to_string()]), "http").await;
    let http = reqwest::Client::new();
    let (alice, alice_id) =
        tokens.issue("alice", &["read:todos"], Duration::from_secs(3600), Duration::ZERO);
    let admin = tokens.token("admin", &["admin:*"]);
    let read = |base: &str| http.get(format!("{base}/todos")).bearer_auth(&alice);
    eventually("the second node serves alice", CONVERGE, || async {
        (read(&second.base).send().await.ok()?.status() == StatusCode::OK).then_some(())
    })
    .await;
    let by_alice = http
        .post(format!("{}/admin/v1/revoke", first.base))
        .bearer_auth(&alice)
        .json(&json!({"token_id": alice_id}));
    assert_eq!(status(by_alice).await, StatusCode::FORBIDDEN);
    let revoke = http
        .post(format!("{}/admin/v1/revoke", first.base))
        .bearer_auth(&admin)
        .json(&json!({"token_id": alice_id}));
    assert_eq!(status(revoke).await, StatusCode::OK);
    assert_eq!(status(read(&first.base)).await, StatusCode::UNAUTHORIZED);
    eventually("the second node refuses the revoked token", CONVERGE, || async {
        (read(&second.base).send().await.ok()?.status() == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    let body: Value = read(&second.base).send().await.unwrap().json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("revoked"), "{body}");
    for node in [first, second] {
        node.node.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_burst_over_the_limit_gets_429_and_the_next_window_is_served() {
    let limit = RateLimit { per_second: 2, burst: 3 };
    let node = start(|dir| Config { rate_limit: Some(limit), ..base_config(dir) }, "http").await;
    let http = reqwest::Client::new();
    let url = format!("{}/todos", node.base);
    for _ in 0..3 {
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["ratelimit-limit"], "3");
    }
    let refused = http.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.headers()["ratelimit-remaining"], "0");
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    // Health probes and peers are not counted.
    assert_eq!(status(http.get(format!("{}/health/live", node.base))).await, StatusCode::OK);
    let peer =
        http.post(format!("{}/internal/v1/gossip", node.base)).body("[]").send().await.unwrap();
    assert_ne!(peer.status(), StatusCode::TOO_MANY_REQUESTS);
    eventually("the next window is served", Duration::from_secs(5), || async {
        (http.get(&url).send().await.ok()?.status() == StatusCode::OK).then_some(())
    })
    .await;
    node.node.shutdown().await.unwrap();
}
