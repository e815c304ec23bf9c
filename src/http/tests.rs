//! Router-level tests: requests go through `router()` with `oneshot`, no socket.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::clock::{Hlc, SystemClock};
use crate::service::{Phase, Readiness, TtlRules};
use crate::store::Store;

pub(super) struct Harness {
    app: Router,
    services: Services,
    cluster: crate::cluster::Cluster,
    _dir: tempfile::TempDir,
}

pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Vec<u8>,
}

impl Reply {
    pub(super) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: header::HeaderName) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

fn harness_with(max_body: usize) -> Harness {
    harness_configured(max_body, false)
}

fn harness_configured(max_body: usize, serve_stale: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1).unwrap();
    let readiness = Readiness::new(Phase::Standalone);
    let ttl = TtlRules { tombstone_ttl_ms: 3_600_000, seeded: false };
    let clock = Arc::new(Hlc::new(SystemClock, 1000));
    let services = Services::new(store.clone(), clock, readiness, None, ttl);
    let node = NodeInfo {
        id: store.identity().node,
        name: "test".into(),
        addr: "127.0.0.1:1".into(),
        joined_at: 1,
    };
    let me = crate::cluster::Member {
        id: node.id.0,
        name: node.name.clone(),
        addr: node.addr.clone(),
        joined_at: 1,
        heartbeat: 0,
        state: crate::cluster::MemberState::Alive,
    };
    let timeouts = crate::cluster::Timeouts {
        suspect_after_ms: 1_000,
        dead_after_ms: 3_000,
        forget_after_ms: 60_000,
    };
    let cluster = crate::cluster::Cluster::new(me, timeouts, Arc::new(SystemClock));
    let peer: Arc<dyn crate::transport::Peer> = Arc::new(crate::peer::PeerClient::new(
        None,
        uuid::Uuid::nil(),
        Arc::new(SystemClock),
        None,
    ));
    let driver = crate::sync::Driver::new(peer, services.replica.clone(), cluster.clone());
    let node = Arc::new(node);
    let state = AppState::new(AppParts {
        services: services.clone(),
        node,
        cluster: cluster.clone(),
        driver,
        serve_stale,
        peer_auth: Arc::new(crate::auth::PeerAuth::Open),
        peer_slots: Arc::new(tokio::sync::Semaphore::new(super::PEER_REQUESTS_AT_ONCE)),
        warnings: Arc::default(),
        access: Arc::default(),
        tls: false,
        metrics: Arc::default(),
        shutdown: Default::default(),
        renders: Default::default(),
    });
    let app = router(state, max_body);
    Harness { app, services, cluster, _dir: dir }
}

pub(super) fn harness() -> Harness {
    harness_with(1024 * 1024)
}

impl Harness {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = body.map_or(Body::empty(), |b| Body::from(b.to_owned()));
        let response = self.app.clone().oneshot(request.body(body).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec();
        Reply { status, headers, body }
    }

    pub(super) async fn json(&self, method: Method, uri: &str, body: &str) -> Reply {
        self.call(method, uri, &[("content-type", "application/json")], Some(body)).await
    }

    async fn create(&self, body: Value) -> Reply {
        self.json(Method::POST, "/todos", &body.to_string()).await
    }

    /// Marks the node as not ready (rebasing).
    fn joining(&self) {
        self.services.readiness.advance(Phase::Rebasing).unwrap();
    }

    fn root(&self) -> String {
        merkle::hex(&self.services.status().merkle_root)
    }
}

use crate::merkle;

/// method, uri, headers, body, expected status, expected field.
type BadCase = (
    Method,
    String,
    Vec<(&'static str, &'static str)>,
    Option<String>,
    StatusCode,
    Option<&'static str>,
);

#[tokio::test]
async fn create_get_and_conditional_get() {
    let h = harness();
    let created = h.create(json!({"todo": "buy milk", "extern_id": "milk"})).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let todo = created.json();
    let id = todo["id"].as_str().unwrap().to_owned();
    assert_eq!(id, crate::model::todo::todo_id("milk").to_string());
    assert_eq!(created.header(header::LOCATION), format!("/todos/{id}"));
    assert_eq!(todo["completed"], json!(false));
    assert!(todo["created_at"].as_str().unwrap().ends_with('Z'));
    let etag = created.header(header::ETAG).to_owned();
    assert!(etag.starts_with('"'));

    let got = h.call(Method::GET, &format!("/todos/{id}"), &[], None).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json(), todo);
    assert_eq!(got.header(header::ETAG), etag);

    let cached =
        h.call(Method::GET, &format!("/todos/{id}"), &[("if-none-match", &etag)], None).await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
    let stale =
        h.call(Method::GET, &format!("/todos/{id}"), &[("if-none-match", "\"x\"")], None).await;
    assert_eq!(stale.status, StatusCode::OK);
}

#[tokio::test]
async fn same_extern_id_conflicts_and_without_one_ids_are_generated() {
    let h = harness();
    assert_eq!(h.create(json!({"todo": "a", "extern_id": "e"})).await.status, StatusCode::CREATED);
    let again = h.create(json!({"todo": "b", "extern_id": "e"})).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.header(header::CONTENT_TYPE), "application/problem+json");
    let one = h.create(json!({"todo": "x"})).await.json();
    let two = h.create(json!({"todo": "x"})).await.json();
    assert_ne!(one["id"], two["id"]);
    assert_eq!(one["extern_id"].as_str().unwrap().len(), 36);
}

#[tokio::test]
async fn bad_input_gets_the_documented_status_and_changes_nothing() {
    let h = harness_with(256);
    h.create(json!({"todo": "keep me", "extern_id": "k"})).await;
    let id = crate::model::todo::todo_id("k");
    let before = h.root();
    let cases: Vec<BadCase> = vec![
        (
            Method::POST,
            "/todos".into(),
            vec![("content-type", "application/json")],
            Some("{\"todo\":".into()),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            Method::POST,
            "/todos".into(),
            vec![("content-type", "application/json")],
            Some("{\"todo\":5}".into()),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            Method::POST,
            "/todos".into(),
            vec![("content-type", "application/json")],
            Some("{\"todo\":\"x\",\"owner\":1}".into()),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            Method::POST,
            "/todos".into(),
            vec![("content-type", "application/json")],
            Some("{}".into()),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("todo"),
        ),
        (
            Method::POST,
            "/todos".into(),
            vec![("content-type", "application/json")],
            Some(json!({"todo": "x".repeat(501)}).to_string()),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        (
            Method::POST,
            "/todos".into(),
            vec![("content-type", "application/json")],
            Some(json!({"todo": ""}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("todo"),
        ),
        (
            Method::POST,
            "/todos".into(),
            vec![("content-type", "application/json")],
            Some(json!({"todo": "x", "extern_id": "e".repeat(81)}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("extern_id"),
        ),
        (
            Method::POST,
            "/todos".into(),
            vec![("content-type", "text/plain")],
            Some("{\"todo\":\"x\"}".into()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
        ),
        (
            Method::POST,
            "/todos".into(),
            vec![],
            Some("{\"todo\":\"x\"}".into()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
        ),
        (
            Method::PATCH,
            format!("/todos/{id}"),
            vec![("content-type", "application/json")],
            Some("{\"extern_id\":\"new\"}".into()),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("extern_id"),
        ),
        (
            Method::PATCH,
            format!("/todos/{id}"),
            vec![("content-type", "application/json")],
            Some("{\"completed\":\"yes\"}".into()),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            Method::PATCH,
            format!("/todos/{id}"),
            vec![("content-type", "application/json")],
            Some("{\"todo\":\"\"}".into()),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("todo"),
        ),
        (
            Method::PATCH,
            format!("/todos/{id}"),
            vec![("content-type", "application/json"), ("if-match", "\"stale\"")],
            Some("{\"todo\":\"y\"}".into()),
            StatusCode::PRECONDITION_FAILED,
            None,
        ),
        (
            Method::PATCH,
            format!("/todos/{id}"),
            vec![("content-type", "application/json"), ("if-match", "garbage")],
            Some("{\"todo\":\"y\"}".into()),
            // Not an entity tag, so it matches no version (RFC 9110 §13.1.1).
            StatusCode::PRECONDITION_FAILED,
            None,
        ),
        (
            Method::PATCH,
            format!("/todos/{id}"),
            vec![("content-type", "application/json"), ("if-match", "")],
            Some("{\"todo\":\"y\"}".into()),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            Method::DELETE,
            format!("/todos/{id}"),
            vec![("if-match", "\"stale\"")],
            None,
            StatusCode::PRECONDITION_FAILED,
            None,
        ),
        (Method::GET, "/todos/not-a-uuid".into(), vec![], None, StatusCode::BAD_REQUEST, None),
        (
            Method::GET,
            "/todos?limit=0".into(),
            vec![],
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("limit"),
        ),
        (Method::GET, "/todos?limit=many".into(), vec![], None, StatusCode::BAD_REQUEST, None),
        (Method::GET, "/todos?completed=maybe".into(), vec![], None, StatusCode::BAD_REQUEST, None),
        (Method::GET, "/todos?cursor=zz".into(), vec![], None, StatusCode::BAD_REQUEST, None),
        (
            Method::PUT,
            "/kv/a".into(),
            vec![("content-type", "application/json")],
            Some("not json".into()),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            Method::PUT,
            "/kv/a".into(),
            vec![("content-type", "application/json")],
            Some("{} {}".into()),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            Method::PUT,
            format!("/kv/{}", "k".repeat(1025)),
            vec![("content-type", "application/json")],
            Some("1".into()),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("key"),
        ),
        (
            Method::PUT,
            "/kv/a%0Ab".into(),
            vec![("content-type", "application/json")],
            Some("1".into()),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("key"),
        ),
        (
            Method::PUT,
            "/kv/a%FF".into(),
            vec![("content-type", "application/json")],
            Some("1".into()),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (Method::GET, "/nowhere".into(), vec![], None, StatusCode::NOT_FOUND, None),
        (Method::DELETE, "/todos".into(), vec![], None, StatusCode::METHOD_NOT_ALLOWED, None),
        (Method::POST, "/health/info".into(), vec![], None, StatusCode::METHOD_NOT_ALLOWED, None),
    ];
    for (method, uri, headers, body, status, field) in cases {
        let reply = h.call(method.clone(), &uri, &headers, body.as_deref()).await;
        let what = format!("{method} {uri} {body:?}");
        assert_eq!(reply.status, status, "{what}: {}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.header(header::CONTENT_TYPE), "application/problem+json", "{what}");
        let problem = reply.json();
        assert_eq!(problem["status"], json!(status.as_u16()), "{what}");
        assert!(!problem["detail"].as_str().unwrap_or("").is_empty(), "{what}");
        if let Some(field) = field {
            assert_eq!(problem["errors"][0]["field"], json!(field), "{what}");
        }
    }
    assert_eq!(h.root(), before, "bad input changed data");
    let kept = h.call(Method::GET, &format!("/todos/{id}"), &[], None).await.json();
    assert_eq!(kept["todo"], json!("keep me"));
}

#[tokio::test]
async fn update_with_put_and_patch_and_if_match() {
    let h = harness();
    let created = h.create(json!({"todo": "a", "extern_id": "u"})).await;
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let etag = created.header(header::ETAG).to_owned();
    let uri = format!("/todos/{id}");
    let body = json!({"completed": true}).to_string();
    let headers = [("content-type", "application/json"), ("if-match", etag.as_str())];
    let patched = h.call(Method::PATCH, &uri, &headers, Some(&body)).await;
    assert_eq!(patched.status, StatusCode::OK);
    let patched_json = patched.json();
    assert_eq!(patched_json["completed"], json!(true));
    assert_eq!(patched_json["todo"], json!("a"));
    assert_eq!(patched_json["created_at"], created.json()["created_at"]);
    assert_ne!(patched.header(header::ETAG), etag);
    // The old tag is stale now.
    let again = h.call(Method::PATCH, &uri, &headers, Some(&body)).await;
    assert_eq!(again.status, StatusCode::PRECONDITION_FAILED);
    let put = h.json(Method::PUT, &uri, &json!({"todo": "b"}).to_string()).await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(put.json()["todo"], json!("b"));
    assert_eq!(put.json()["completed"], json!(true));
    let missing = h.json(Method::PUT, &format!("/todos/{}", uuid::Uuid::nil()), "{}").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn delete_leaves_nothing_visible_and_frees_the_extern_id() {
    let h = harness();
    let id = h.create(json!({"todo": "a", "extern_id": "d"})).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let uri = format!("/todos/{id}");
    assert_eq!(h.call(Method::DELETE, &uri, &[], None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(h.call(Method::GET, &uri, &[], None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(h.call(Method::DELETE, &uri, &[], None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(h.call(Method::GET, "/todos", &[], None).await.json(), json!([]));
    assert_eq!(h.services.status().counts.todos, 0);
    let recreated = h.create(json!({"todo": "again", "extern_id": "d"})).await;
    assert_eq!(recreated.status, StatusCode::CREATED);
    assert_eq!(recreated.json()["id"], json!(id));
}

#[tokio::test]
async fn list_is_newest_first_with_filters_and_cursor_pages() {
    let h = harness();
    for n in 0..5 {
        let body =
            json!({"todo": format!("t{n}"), "extern_id": format!("e{n}"), "completed": n % 2 == 0});
        assert_eq!(h.create(body).await.status, StatusCode::CREATED);
    }
    let all = h.call(Method::GET, "/todos", &[], None).await.json();
    let texts: Vec<&str> =
        all.as_array().unwrap().iter().map(|t| t["todo"].as_str().unwrap()).collect();
    assert_eq!(texts, vec!["t4", "t3", "t2", "t1", "t0"]);

    let mut uri = "/todos?limit=2&completed=true".to_owned();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let page = h.call(Method::GET, &uri, &[], None).await;
        assert_eq!(page.status, StatusCode::OK);
        seen.extend(
            page.json().as_array().unwrap().iter().map(|t| t["todo"].as_str().unwrap().to_owned()),
        );
        let link = page.header(header::LINK).to_owned();
        if link.is_empty() {
            break;
        }
        assert!(link.ends_with("rel=\"next\""), "{link}");
        uri = link[1..link.find('>').unwrap()].to_owned();
    }
    assert_eq!(seen, vec!["t4", "t2", "t0"]);

    let by_extern = h.call(Method::GET, "/todos?extern_id=e3", &[], None).await.json();
    assert_eq!(by_extern.as_array().unwrap().len(), 1);
    assert_eq!(by_extern[0]["todo"], json!("t3"));
    let none = h.call(Method::GET, "/todos?extern_id=e3&completed=true", &[], None).await.json();
    assert_eq!(none, json!([]));
}

#[tokio::test]
async fn documents_put_get_list_delete() {
    let h = harness();
    let put = h.json(Method::PUT, "/kv/users/john/profile", "{\"name\": \"John\"}").await;
    assert_eq!(put.status, StatusCode::CREATED);
    assert_eq!(put.header(header::LOCATION), "/kv/users/john/profile");
    let replaced = h.json(Method::PUT, "/kv/users/john/profile", "[1,2]").await;
    assert_eq!(replaced.status, StatusCode::OK);
    h.json(Method::PUT, "/kv/users/jane", "null").await;
    h.json(Method::PUT, "/kv/other", "1").await;

    let got = h.call(Method::GET, "/kv/users/john/profile", &[], None).await;
    assert_eq!((got.status, got.body.as_slice()), (StatusCode::OK, &b"[1,2]"[..]));
    assert_eq!(got.header(header::CONTENT_TYPE), "application/json");

    let listed = h.call(Method::GET, "/kv?prefix=users/&limit=1", &[], None).await;
    assert_eq!(listed.json()["keys"][0]["key"], json!("users/jane"));
    assert_eq!(listed.json()["next_cursor"], json!("users/jane"));
    let rest = h.call(Method::GET, "/kv?prefix=users/&cursor=users/jane", &[], None).await.json();
    assert_eq!(rest["keys"].as_array().unwrap().len(), 1);
    assert_eq!(rest["keys"][0]["key"], json!("users/john/profile"));
    assert!(rest.get("next_cursor").is_none());

    assert_eq!(
        h.call(Method::DELETE, "/kv/users/jane", &[], None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.call(Method::GET, "/kv/users/jane", &[], None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.call(Method::DELETE, "/kv/users/jane", &[], None).await.status,
        StatusCode::NOT_FOUND
    );
    let counts = h.services.status().counts;
    assert_eq!((counts.docs, counts.todos), (2, 0));
}

#[tokio::test]
async fn not_ready_means_503_with_retry_after_on_data_routes_only() {
    let h = harness();
    h.joining();
    let todos = h.call(Method::GET, "/todos", &[], None).await;
    assert_eq!(todos.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(todos.header(header::RETRY_AFTER), "1");
    let put = h.json(Method::PUT, "/kv/a", "1").await;
    assert_eq!(put.status, StatusCode::SERVICE_UNAVAILABLE);
    let ready = h.call(Method::GET, "/health/ready", &[], None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["ready"], json!(false));
    assert_eq!(h.call(Method::GET, "/health/live", &[], None).await.status, StatusCode::OK);
    assert_eq!(h.call(Method::GET, "/health/info", &[], None).await.json()["ready"], json!(false));
}

#[tokio::test]
async fn serve_stale_answers_reads_but_not_writes_while_not_ready() {
    let h = harness_configured(1024 * 1024, true);
    let created = h.create(json!({"todo": "before the join"})).await;
    assert_eq!(created.status, StatusCode::CREATED);
    h.joining();
    let list = h.call(Method::GET, "/todos", &[], None).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.json().as_array().map(Vec::len), Some(1));
    let put = h.json(Method::PUT, "/kv/a", "1").await;
    assert_eq!(put.status, StatusCode::SERVICE_UNAVAILABLE);
    let delete = h.call(Method::DELETE, "/kv/a", &[], None).await;
    assert_eq!(delete.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn info_reports_counts_root_and_self() {
    let h = harness();
    let empty_root =
        h.call(Method::GET, "/health/info", &[], None).await.json()["merkle_root"].clone();
    h.create(json!({"todo": "a"})).await;
    h.json(Method::PUT, "/kv/x", "1").await;
    let info = h.call(Method::GET, "/health/info", &[], None).await.json();
    assert_eq!(info["todo_count"], json!(1));
    assert_eq!(info["key_count"], json!(2));
    assert_eq!(info["cluster_mode"], json!("standalone"));
    assert_eq!(info["members"][0]["state"], json!("alive"));
    assert_ne!(info["merkle_root"], empty_root);
    assert_eq!(info["merkle_root"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn openapi_and_offline_docs() {
    let h = harness();
    let spec = h.call(Method::GET, "/openapi.json", &[], None).await.json();
    for path in ["/todos", "/todos/{id}", "/kv/{key}", "/kv", "/health/info"] {
        assert!(spec["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    // The access layer's statuses are on every operation but the open health probes.
    assert_eq!(spec["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    for (path, method) in [("/todos", "post"), ("/kv/{key}", "get"), ("/admin/v1/revoke", "post")] {
        let operation = &spec["paths"][path][method];
        for status in ["401", "403", "429"] {
            assert!(operation["responses"].get(status).is_some(), "{method} {path}: no {status}");
        }
        assert_eq!(operation["security"][1]["bearer"], serde_json::json!([]), "{path}");
    }
    assert!(spec["paths"]["/health/live"]["get"]["responses"].get("401").is_none());
    let page = h.call(Method::GET, "/docs/", &[], None).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = String::from_utf8(page.body).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "docs page loads remote assets"
    );
    let init = h.call(Method::GET, "/docs/swagger-initializer.js", &[], None).await;
    let init = String::from_utf8(init.body).unwrap();
    assert!(init.contains("/openapi.json"), "{init}");
    assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
    let bundle = h.call(Method::GET, "/docs/swagger-ui-bundle.js", &[], None).await;
    assert_eq!(bundle.status, StatusCode::OK);
    assert!(bundle.body.len() > 100_000);
}

#[tokio::test]
async fn internal_routes_refuse_garbage_and_merge_good_batches() {
    let h = harness();
    let before = h.root();
    let octets = [("content-type", "application/octet-stream")];
    for (path, body) in [
        ("/internal/v1/records", &b"\x28\xb5\x2f\xfd garbage"[..]),
        ("/internal/v1/records", &b"not zstd at all"[..]),
        ("/internal/v1/push", &b"\x28\xb5\x2f\xfd garbage"[..]),
        ("/internal/v1/nodes", &b"\x01\x09\x01\x00\x00\x00\x01\x00\x00\x00\x00"[..]),
        ("/internal/v1/nodes", &b"\x01\x00\x05\x00\x00\x00\x01\x00\x00\x00\x00"[..]),
        ("/internal/v1/reconcile", &b"\x02\x00"[..]),
        ("/internal/v1/reconcile", &b"\x01\x00\x00\x00\x01\x00\x07\x00\x00\x00\x09"[..]),
        ("/internal/v1/gossip", &b"[{\"id\":1}]"[..]),
    ] {
        let body = String::from_utf8_lossy(body).into_owned();
        let reply = h.call(Method::POST, path, &octets, Some(&body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
    }
    // A batch with one invalid todo is refused whole.
    let version = |n: u128| crate::model::Version {
        ts: crate::model::Timestamp::from_raw(1 << 30),
        origin: crate::model::Origin {
            node: crate::model::NodeId(uuid::Uuid::from_u128(9)),
            joined_at: 1,
        },
        uuid: uuid::Uuid::from_u128(n),
    };
    let good = (
        crate::model::Key::doc("from/peer").unwrap(),
        crate::model::Record {
            version: version(1),
            value: crate::model::Value::Live(b"{}".to_vec()),
            expires_at: None,
        },
    );
    let bad = (
        crate::model::Key::Todo(uuid::Uuid::from_u128(5)),
        crate::model::Record {
            version: version(2),
            value: crate::model::Value::Live(b"{}".to_vec()),
            expires_at: None,
        },
    );
    let batch = crate::wire::compress_batch(&[good.clone(), bad]);
    let request = Request::builder()
        .method(Method::POST)
        .uri("/internal/v1/records")
        .body(Body::from(batch))
        .unwrap();
    let reply = h.app.clone().oneshot(request).await.unwrap();
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    assert_eq!(h.root(), before, "a refused batch changed data");

    let request = Request::builder()
        .method(Method::POST)
        .uri("/internal/v1/records")
        .body(Body::from(crate::wire::compress_batch(&[good])))
        .unwrap();
    let reply = h.app.clone().oneshot(request).await.unwrap();
    assert_eq!(reply.status(), StatusCode::NO_CONTENT);
    let got = h.call(Method::GET, "/kv/from/peer", &[], None).await;
    assert_eq!((got.status, got.body.as_slice()), (StatusCode::OK, &b"{}"[..]));
}

/// SWIM packets go to the membership task's inbox as sent; one over the packet size is
/// refused with a problem; past the inbox's room they are refused with 429, not queued.
#[tokio::test]
async fn swim_packets_reach_the_inbox_and_floods_are_refused() {
    let h = harness();
    let mut inbox = h.cluster.take_swim_inbox().expect("the inbox is there to take");
    let octets = [("content-type", "application/octet-stream")];
    let reply = h.call(Method::POST, "/internal/v1/swim", &octets, Some("a packet")).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(inbox.try_recv().unwrap(), b"a packet");
    let huge = "x".repeat(crate::cluster::swim::MAX_PACKET_BYTES + 1);
    let reply = h.call(Method::POST, "/internal/v1/swim", &octets, Some(&huge)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["detail"].as_str().unwrap().contains("membership packet"));
    assert!(inbox.try_recv().is_err(), "a refused packet was queued");
    for _ in 0..crate::cluster::SWIM_INBOX {
        let reply = h.call(Method::POST, "/internal/v1/swim", &octets, Some("p")).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
    }
    let reply = h.call(Method::POST, "/internal/v1/swim", &octets, Some("p")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    let (received, _) = h.cluster.answered_bytes();
    assert_eq!(received, 8 + crate::cluster::SWIM_INBOX as u64 + 1);
}

#[tokio::test]
async fn before_the_store_opens_only_liveness_answers_then_every_route_does() {
    let mut h = harness();
    let slot = Arc::new(std::sync::OnceLock::new());
    let full = std::mem::replace(&mut h.app, super::late_bound(slot.clone()));
    let live = h.call(Method::GET, "/health/live", &[], None).await;
    assert_eq!(live.status, StatusCode::OK);
    for uri in ["/health/ready", "/todos", "/kv/a", "/internal/v1/root"] {
        let reply = h.call(Method::GET, uri, &[], None).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert_eq!(reply.header(header::RETRY_AFTER), "1", "{uri}");
        assert!(reply.json()["detail"].as_str().unwrap().contains("opening"), "{uri}");
    }
    assert!(slot.set(full).is_ok());
    let created = h.create(json!({"todo": "after the open"})).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(h.call(Method::GET, "/health/live", &[], None).await.status, StatusCode::OK);
}
