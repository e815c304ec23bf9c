//! Who is calling, and what they may do: client tokens, rate limits and mutual TLS on
//! the one port.
//!
//! [`identify`] runs first on every request except `/health/live`, `/health/ready`
//! and `/internal/` (peers have their own checks in `internal.rs`): it verifies the
//! bearer token (401 on a missing, expired, revoked or bad one — unless the anonymous
//! permissions are enough, which the handler decides), counts the request against the
//! client's rate limit (429) and leaves a [`Caller`] for the handler. Handlers then ask
//! [`Caller::require`] for the permission their operation needs (403), before touching
//! the store, so a refusal never says whether a key exists.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::limit::{Decision, Limiter};
use super::problem::ApiError;
use super::AppState;
use crate::service::docs::REVOKED_PREFIX;
use crate::token::{Action, Client, Grants, Resource, Verifier};

/// Verified tokens kept at most: a signature check costs more than serving a read, so a
/// client's token is checked once, then found here until it expires.
const VERIFIED_CACHE: usize = 4_096;

/// The node's access rules, built once from the config.
#[derive(Debug, Default)]
pub struct Access {
    /// `None`: tokens are off and every client may do everything.
    pub verifier: Option<Verifier>,
    /// Tokens whose signature verified, by token text (revocation is still checked on
    /// every request).
    verified: Mutex<HashMap<String, Arc<Client>>>,
    /// What a request without a token may do (with tokens on).
    pub anonymous: Grants,
    pub limiter: Option<Limiter>,
    /// `/internal/` needs a client certificate signed by `tls.ca` (`tls.peer_auth: mtls`).
    pub peer_cert_required: bool,
}

impl Access {
    /// The rules `config` asks for.
    pub fn from_config(config: &crate::config::Config) -> Result<Access, crate::token::TokenError> {
        let (verifier, anonymous) = match &config.auth {
            Some(auth) => {
                (Some(Verifier::new(&auth.public_key_pem)?), Grants(auth.anonymous.clone()))
            }
            None => (None, Grants::default()),
        };
        Ok(Access {
            verifier,
            verified: Mutex::default(),
            anonymous,
            limiter: config.rate_limit.map(Limiter::new),
            peer_cert_required: config
                .tls
                .as_ref()
                .is_some_and(|tls| tls.peer_auth == crate::tls::PeerTls::Mtls),
        })
    }
}

/// Who made a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Tokens are off.
    Anyone,
    /// No token; the anonymous permissions apply.
    Anonymous(Grants),
    Token(Arc<Client>),
}

impl Caller {
    fn grants(&self) -> Option<&Grants> {
        match self {
            Caller::Anyone => None,
            Caller::Anonymous(grants) => Some(grants),
            Caller::Token(client) => Some(&client.grants),
        }
    }

    /// Ok when the caller may do `action` on `resource`; else 401 for a caller without
    /// a token (a token might permit it) and 403 for one whose token does not.
    pub fn require(&self, action: Action, resource: Resource<'_>) -> Result<(), ApiError> {
        match self.grants() {
            None => Ok(()),
            Some(grants) if grants.allows(action, resource) => Ok(()),
            Some(_) => Err(self.refusal(describe(action, resource))),
        }
    }

    /// Whether a listing may include the document at `key`.
    pub fn may_read_doc(&self, key: &str) -> bool {
        self.grants().is_none_or(|grants| grants.allows(Action::Read, Resource::Kv(key)))
    }

    /// Ok when a listing under `prefix` could show anything.
    pub fn require_listing(&self, prefix: &str) -> Result<(), ApiError> {
        match self.grants() {
            Some(grants) if !grants.may_read_under(prefix) => {
                Err(self.refusal(format!("read:kv/{prefix}")))
            }
            _ => Ok(()),
        }
    }

    /// Ok for a caller who may read anything (the API documentation is for them).
    pub fn require_reader(&self) -> Result<(), ApiError> {
        match self.grants() {
            Some(grants) if !grants.reads_anything() => {
                Err(self.refusal("a read permission".into()))
            }
            _ => Ok(()),
        }
    }

    fn refusal(&self, needed: String) -> ApiError {
        match self {
            Caller::Token(_) => {
                ApiError::Forbidden(format!("the token does not permit this (needs {needed})"))
            }
            _ => ApiError::NoToken(format!(
                "this request needs a token permitting {needed} (Authorization: Bearer …)"
            )),
        }
    }
}

fn describe(action: Action, resource: Resource<'_>) -> String {
    let action = action.as_str();
    match resource {
        Resource::Todos => format!("{action}:todos"),
        Resource::Kv(key) => format!("{action}:kv/{key}"),
        Resource::Node => format!("{action}:*"),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Caller, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("route served without the access layer".into()))
    }
}

/// Paths every client may reach (load balancers and supervisors probe them).
fn is_open(path: &str) -> bool {
    matches!(path, "/health/live" | "/health/ready") || path.starts_with("/internal/")
}

/// The access layer (see the module doc).
pub async fn identify(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if is_open(request.uri().path()) {
        return next.run(request).await;
    }
    let access = &state.access;
    let caller = match &access.verifier {
        None => Caller::Anyone,
        Some(verifier) => match bearer(&request) {
            Err(error) => return error.into_response(),
            Ok(None) => Caller::Anonymous(access.anonymous.clone()),
            Ok(Some(token)) => match verify(&state, verifier, token) {
                Ok(client) => Caller::Token(client),
                Err(error) => return error.into_response(),
            },
        },
    };
    let mut remaining = None;
    if let Some(limiter) = &access.limiter {
        let client = match &caller {
            Caller::Token(client) => format!("sub:{}", client.subject),
            _ => {
                let ip = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
                format!("ip:{}", ip.map_or_else(|| "unknown".into(), |ip| ip.to_string()))
            }
        };
        match limiter.check(&client) {
            Decision::Allowed { remaining: left } => remaining = Some((limiter.burst, left)),
            Decision::Refused { retry_after_secs } => {
                return ApiError::TooManyRequests { retry_after_secs, limit: limiter.burst }
                    .into_response()
            }
        }
    }
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    if let Some((limit, left)) = remaining {
        let headers = response.headers_mut();
        headers.insert("ratelimit-limit", HeaderValue::from(limit));
        headers.insert("ratelimit-remaining", HeaderValue::from(left));
    }
    response
}

/// The bearer token, if the request carries one.
fn bearer(request: &Request) -> Result<Option<&str>, ApiError> {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else { return Ok(None) };
    let text = value.to_str().unwrap_or_default();
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::NoToken("the Authorization header is not `Bearer <token>`".into())),
    }
}

/// The token's client if its signature verifies, it has not expired and it has not
/// been revoked.
fn verify(state: &AppState, verifier: &Verifier, token: &str) -> Result<Arc<Client>, ApiError> {
    let now = state.cluster.now_ms() / 1000;
    let cache = &state.access.verified;
    let cached = cache.lock().unwrap_or_else(PoisonError::into_inner).get(token).cloned();
    let client = match cached {
        Some(client) if client.expires_at > now => client,
        _ => {
            let client =
                verifier.verify(token).map_err(|error| ApiError::NoToken(error.to_string()))?;
            let client = Arc::new(client);
            let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.len() >= VERIFIED_CACHE {
                cache.retain(|_, client| client.expires_at > now);
                if cache.len() >= VERIFIED_CACHE {
                    cache.clear();
                }
            }
            cache.insert(token.to_owned(), client.clone());
            client
        }
    };
    let revoked = state
        .services
        .docs
        .get(&format!("{REVOKED_PREFIX}{}", client.token_id))
        .map_err(ApiError::from)?;
    if revoked.is_some() {
        return Err(ApiError::NoToken("the token has been revoked".into()));
    }
    Ok(client)
}

/// The permission each todo operation needs, checked before the body is read.
pub async fn guard_todos(caller: Caller, request: Request, next: Next) -> Response {
    let action = match *request.method() {
        axum::http::Method::GET | axum::http::Method::HEAD => Action::Read,
        axum::http::Method::DELETE => Action::Delete,
        _ => Action::Write,
    };
    match caller.require(action, Resource::Todos) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// Node-wide information (`/health/info`, `/metrics`) needs `metrics:*`.
pub async fn guard_metrics(caller: Caller, request: Request, next: Next) -> Response {
    match caller.require(Action::Metrics, Resource::Node) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// `/admin/` needs `admin:*`.
pub async fn guard_admin(caller: Caller, request: Request, next: Next) -> Response {
    match caller.require(Action::Admin, Resource::Node) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// The API documentation (`/docs`, `/openapi.json`) is for callers who may read.
pub async fn guard_docs(caller: Caller, request: Request, next: Next) -> Response {
    match caller.require_reader() {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}
