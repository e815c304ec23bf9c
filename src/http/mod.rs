//! The HTTP API (the only user of axum): router, extractors, the error table, handlers,
//! OpenAPI and the offline `/docs` page.

mod access;
mod admin;
mod docs;
mod extract;
mod health;
mod internal;
mod limit;
mod metrics;
mod problem;
mod serve;
mod todos;
mod ui;
mod watch;

use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use tower::ServiceExt;
use tower_http::trace::TraceLayer;
use utoipa::{OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::PeerAuth;
use crate::cluster::Cluster;
use crate::model::{NodeId, Version};
use crate::service::Services;
use crate::sync::Driver;
use crate::telemetry::Throttle;
pub use access::Access;
pub use problem::ApiError;
pub use serve::{serve, Limits};

/// Who this node is, as the API reports it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: NodeId,
    pub name: String,
    pub addr: String,
    pub joined_at: u64,
}

/// What every handler and middleware reads. Axum clones the state for each middleware
/// and extractor of each request, so it is one shared reference: a clone is one count,
/// not one per service (a profile of the cluster write path showed those counts).
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct AppParts {
    pub services: Services,
    pub node: Arc<NodeInfo>,
    pub cluster: Cluster,
    /// For the operator's `POST /internal/v1/sync` (one anti-entropy round now).
    pub driver: Driver,
    /// Answer reads while not ready (`cluster.serve_stale`).
    pub serve_stale: bool,
    /// Who may call `/internal/` (signed requests with a cluster key).
    pub peer_auth: Arc<PeerAuth>,
    /// Peer requests in progress at once (see [`PEER_REQUESTS_AT_ONCE`]).
    pub peer_slots: Arc<tokio::sync::Semaphore>,
    /// Repeated warnings (refused peers, say) are logged at most every few seconds.
    pub warnings: Arc<Throttle>,
    /// Client tokens, rate limits and the mutual-TLS rule for peers.
    pub access: Arc<Access>,
    /// Whether this port serves TLS (for `/health/info`).
    pub tls: bool,
    /// Request counts and latencies, flushes (`/metrics`).
    pub metrics: crate::metrics::SharedMetrics,
    /// Cancelled when the node stops: long-lived responses (watch streams) end with it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Recent changes as watch events, rendered once for all watchers.
    pub renders: Arc<watch::Renders>,
}

/// The `If-Match` request header (documentation only: `extract::if_match` reads it).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct IfMatchHeader {
    /// `*` or a comma-separated list of entity tags from `ETag`: the write happens only
    /// while the current version is one of them, else 412. A value that is neither
    /// matches no version, so it is a 412 too (the detail says why); empty is a 400.
    #[param(rename = "If-Match", nullable = false, min_length = 1)]
    if_match: Option<String>,
}

/// The `If-None-Match` request header (documentation only).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct IfNoneMatch {
    /// Entity tags from `ETag` (or `*`): 304 without a body while the version is one of them.
    #[param(rename = "If-None-Match", nullable = false)]
    if_none_match: Option<String>,
}

/// The `Last-Event-ID` request header of a watch (documentation only).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct LastEventId {
    /// With `watch=true`: resume after this change (the `id:` of the last event taken);
    /// every change after it is sent first. 410 when the node no longer keeps it.
    #[param(rename = "Last-Event-ID", nullable = false, pattern = "^[0-9]{1,19}$")]
    last_event_id: Option<String>,
}

/// A schema only `null` satisfies: a field that may be sent as null and nothing else.
fn null_only() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::Null).build()
}

/// A version as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionBody {
    /// Hybrid logical clock, `millis:counter`.
    pub ts: String,
    /// Id of the node that wrote this version.
    pub node: String,
    /// When that node first joined (ms since the epoch): the tie-breaker.
    pub node_joined_at: u64,
    pub uuid: String,
}

impl From<&Version> for VersionBody {
    fn from(version: &Version) -> Self {
        VersionBody {
            ts: version.ts.to_string(),
            node: version.origin.node.to_string(),
            node_joined_at: version.origin.joined_at,
            uuid: version.uuid.hyphenated().to_string(),
        }
    }
}

/// Page size of a listing when the client names none, and the most it may ask for.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// Validates a `limit` query parameter (absent → [`DEFAULT_LIMIT`]).
fn page_limit(limit: Option<i64>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(limit) if (1..=MAX_LIMIT as i64).contains(&limit) => Ok(limit as usize),
        Some(limit) => Err(ApiError::Validation {
            field: "limit",
            message: format!("must be 1 to {MAX_LIMIT}, got {limit}"),
        }),
    }
}

/// Adds the `ETag` header.
fn with_etag(mut response: Response, etag: &str) -> Response {
    if let Ok(value) = axum::http::HeaderValue::from_str(etag) {
        response.headers_mut().insert(axum::http::header::ETAG, value);
    }
    response
}

/// A GET that honours `If-None-Match`: 304 when the tag matches, else `body()`; the
/// `ETag` header either way.
fn conditional_get(
    headers: &axum::http::HeaderMap,
    etag: &str,
    body: impl FnOnce() -> Response,
) -> Response {
    let response = if extract::if_none_match_hits(headers, etag) {
        axum::http::StatusCode::NOT_MODIFIED.into_response()
    } else {
        body()
    };
    with_etag(response, etag)
}

/// Milliseconds since the epoch as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "kvs", description = "A replicated key-value daemon. Errors are RFC 9457 problem documents."),
    paths(
        todos::create, todos::list, todos::get, todos::patch, todos::put, todos::delete,
        docs::put, docs::get, docs::delete, docs::list,
        health::live, health::ready, health::info, metrics::metrics,
        admin::revoke, admin::backup, admin::sync, admin::cluster,
    ),
    components(schemas(problem::Problem, problem::FieldProblem, VersionBody)),
    modifiers(&Contract),
    tags(
        (name = "todos", description = "The todo collection"),
        (name = "kv", description = "Raw JSON documents"),
        (name = "health", description = "Liveness, readiness, node information"),
        (name = "admin", description = "Cluster administration (admin:*)"),
    )
)]
struct ApiDoc;

/// What the shared layers answer, added to the operations they guard, so each handler's
/// annotation lists only what it decides itself:
/// - the access layer (every operation but the two health probes, which are always
///   open and never limited): the optional bearer token (tokens are on when the node has
///   `auth.public_key`), 401, 403 and 429;
/// - the extractors: 400 for a parameter that does not parse; with a JSON body, 400
///   (malformed, wrong types, unknown fields), 413 and 415;
/// - the data routes' layers (`/todos`, `/kv`): 408 (`time_limit`), 503 (`require_ready`,
///   or the store failing), and 507 on writes (disk full);
/// - 500 on everything but the probes.
struct Contract;

impl utoipa::Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .description(Some("An EdDSA token from `kvs token issue`"))
                        .build(),
                ),
            );
        }
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path == "/health/live" || path == "/health/ready" {
                continue;
            }
            let data = path.starts_with("/todos") || path.starts_with("/kv");
            let operations = [
                ("get", &mut item.get),
                ("put", &mut item.put),
                ("post", &mut item.post),
                ("delete", &mut item.delete),
                ("patch", &mut item.patch),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                operation.security = Some(vec![
                    SecurityRequirement::default(),
                    SecurityRequirement::new("bearer", Vec::<String>::new()),
                ]);
                let has_body = operation.request_body.is_some();
                let has_parameters = operation.parameters.as_ref().is_some_and(|p| {
                    p.iter().any(|p| match p {
                        RefOr::T(p) => !matches!(p.parameter_in, ParameterIn::Header),
                        RefOr::Ref(_) => true,
                    })
                });
                let is_write = method != "get";
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| problem(description).into());
                };
                add("401", "No valid token (missing, expired, revoked or malformed)");
                add("403", "The token does not permit this");
                add("429", "Over the client's rate limit (see Retry-After)");
                if has_parameters {
                    add("400", "A parameter does not parse (not a UUID, not a number, not UTF-8)");
                }
                if has_body {
                    add("400", "The body is not one JSON document of the documented shape (malformed, wrong types, unknown fields)");
                    add("413", "The body is over the node's size limit (max_body_bytes)");
                    add("415", "The body was not sent as JSON (Content-Type: application/json)");
                }
                if data {
                    add("408", "The request took longer than the node's request time limit");
                    add("503", "The node is not ready (joining, rebasing) or its storage is failing (see Retry-After)");
                    if is_write {
                        add("507", "The disk is full: nothing was written");
                    }
                }
                add("500", "An unexpected fault (the node's log has the detail)");
            }
        }
    }
}

/// The OpenAPI document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Peer batches are compressed and capped again when inflated (see `wire.rs`); a
/// sender splits batches at 16 MiB of values, so 24 MiB leaves room for overhead.
const INTERNAL_BODY_LIMIT: usize = 24 * 1024 * 1024;

/// Peer requests in progress at once; more wait. With [`INTERNAL_BODY_LIMIT`] this
/// bounds what unauthenticated senders can make a node buffer to ~200 MiB.
pub const PEER_REQUESTS_AT_ONCE: usize = 8;

/// Every route. A plain function of the state, so tests can call it without a socket.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let todo_routes = Router::new()
        .route("/todos", get(todos::list).post(todos::create))
        .route(
            "/todos/{id}",
            get(todos::get).put(todos::put).patch(todos::patch).delete(todos::delete),
        )
        .route_layer(middleware::from_fn(access::guard_todos));
    let data = Router::new()
        .merge(todo_routes)
        .route("/kv", get(docs::list))
        .route("/kv/{*key}", get(docs::get).put(docs::put).delete(docs::delete))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_ready))
        .route_layer(middleware::from_fn(time_limit));
    let internal = Router::new()
        .route("/internal/v1/root", post(internal::root))
        .route("/internal/v1/nodes", post(internal::nodes))
        .route("/internal/v1/reconcile", post(internal::reconcile))
        .route("/internal/v1/records", post(internal::records))
        // From nodes older than the spread: their pushes, merged and not passed on.
        .route("/internal/v1/push", post(internal::records))
        .route("/internal/v1/spread", post(internal::spread))
        .route("/internal/v1/gossip", post(internal::gossip))
        .route("/internal/v1/swim", post(internal::swim))
        .route("/internal/v1/sync", post(internal::sync_now))
        .route("/internal/v1/status", post(internal::status))
        .route_layer(middleware::from_fn_with_state(state.clone(), internal::authenticate))
        .layer(DefaultBodyLimit::max(INTERNAL_BODY_LIMIT));
    let swagger: Router<AppState> = SwaggerUi::new("/docs")
        .url("/openapi.json", openapi())
        .config(utoipa_swagger_ui::Config::default().validator_url("none"))
        .into();
    let swagger = swagger.route_layer(middleware::from_fn(access::guard_docs));
    let node = Router::new()
        .route("/health/info", get(health::info))
        .route("/metrics", get(metrics::metrics))
        .route_layer(middleware::from_fn(access::guard_metrics));
    let admin = Router::new()
        .route("/admin/v1/revoke", post(admin::revoke))
        .route("/admin/v1/backup", get(admin::backup))
        .route("/admin/v1/sync", post(admin::sync))
        .route("/admin/v1/cluster", get(admin::cluster))
        .route_layer(middleware::from_fn(access::guard_admin));
    Router::new()
        .merge(data)
        .merge(internal)
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .merge(node)
        .merge(admin)
        .route("/ui", get(ui::redirect))
        .route("/ui/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/style.css", get(ui::style))
        .merge(swagger)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), access::identify))
        .layer(middleware::from_fn_with_state(state.clone(), metrics::count))
        // Failures are logged where they are understood (ApiError, the store's fault
        // state), once; tower's per-response ERROR would repeat them for every request.
        .layer(
            TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ),
        )
        .with_state(state)
}

/// What the listener serves from the moment it is bound: the full router once `slot`
/// holds it (after the store has opened, ~2 s at 1M records); until then `/health/live`
/// answers 200 and everything else 503 with `Retry-After`, so a supervisor probing
/// liveness does not kill a node that is only opening a large data directory.
pub fn late_bound(slot: Arc<OnceLock<Router>>) -> Router {
    let starting = Router::new()
        .route("/health/live", get(health::live))
        .fallback(|| async { ApiError::Starting });
    Router::new().fallback_service(tower::service_fn(move |request: Request| {
        let router = slot.get().cloned().unwrap_or_else(|| starting.clone());
        router.oneshot(request)
    }))
}

/// How long a data request may take, body upload included.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Answers 408 to a data request that takes longer than [`REQUEST_TIMEOUT`] (a client
/// trickling its body holds a connection no longer than that).
async fn time_limit(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout.into_response(),
    }
}

/// Data routes answer 503 with `Retry-After` until the node is ready (reads do not,
/// with `serve_stale`).
async fn require_ready(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let read = matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    if state.services.readiness.current().ready || (state.serve_stale && read) {
        next.run(request).await
    } else {
        ApiError::NotReady.into_response()
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!("no route for {}", request.uri().path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod contract_tests;
#[cfg(test)]
mod tests;
