//! `/kv/{*key}`: raw JSON documents, stored as sent.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::access::Caller;
use super::extract::{if_match, ttl, PathParam, Query, RawJson};
use super::problem::{ApiError, Problem};
use super::{conditional_get, page_limit, rfc3339, with_etag, AppState, VersionBody};
use crate::service::docs::RESERVED_PREFIX;
use crate::service::watch::Scope;
use crate::token::{Action, Resource};

#[derive(Debug, Serialize, ToSchema)]
pub struct DocVersion {
    pub key: String,
    pub version: VersionBody,
    /// RFC 3339: when the document stops existing (on every node); null: never.
    pub expires_at: Option<String>,
}

/// The header a document's expiry travels in, on `GET /kv/{key}` (RFC 3339).
pub const EXPIRES_AT: &str = "kvs-expires-at";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PutDoc {
    /// Expire this long after the write (`30s`, `15m`, `2h`, `7d`; units ms, s, m, h, d):
    /// from then on the document is gone on every node. Absent: never (a put without
    /// `ttl` clears an earlier one).
    #[param(pattern = "^[1-9][0-9]{0,5}(ms|s|m|h|d)$")]
    pub ttl: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DocList {
    pub keys: Vec<DocVersion>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A document's key as a path parameter: what `model::Key::doc` accepts, but for its
/// limit of 1024 bytes as UTF-8, which JSON Schema cannot state (`maxLength` counts
/// characters; a key of 1024 characters longer than 1024 bytes is refused with 422).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct DocKey {
    /// UTF-8 path, 1 to 1024 bytes, no control characters (Unicode category Cc), e.g.
    /// `users/john/profile`; `_kvs/` is reserved.
    #[param(min_length = 1, max_length = 1024, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")]
    key: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListDocs {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// The key the page starts after (`next_cursor` of the previous page).
    pub cursor: Option<String>,
    /// `true`: instead of a page, a Server-Sent Events stream of every change to a
    /// document under `prefix` from now on (or after the change named by `Last-Event-ID`).
    pub watch: Option<bool>,
}

/// Store a JSON document (any JSON value).
#[utoipa::path(put, path = "/kv/{key}", tag = "kv", operation_id = "putDocument",
    params(DocKey, PutDoc, super::IfMatchHeader),
    request_body(content = serde_json::Value, description = "Any JSON document", example = json!({"name": "Alice"})),
    responses(
        (status = 200, description = "Replaced", body = DocVersion, headers(("ETag" = String))),
        (status = 201, description = "Created", body = DocVersion,
            headers(("ETag" = String), ("Location" = String, description = "/kv/{key}")),
            links(
                ("getDocument" = (operation_id = "getDocument", parameters(("key" = "$request.path.key")))),
                ("deleteDocument" = (operation_id = "deleteDocument", parameters(("key" = "$request.path.key")))),
            )),
        (status = 403, description = "The key is under the reserved `_kvs/`, or the token may not write it", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match did not match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad key", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(key): PathParam,
    Query(params): Query<PutDoc>,
    headers: HeaderMap,
    RawJson(body): RawJson,
) -> Result<Response, ApiError> {
    caller.require(Action::Write, Resource::Kv(&key))?;
    refuse_reserved(&key)?;
    let condition = if_match(&headers)?;
    let ttl = params.ttl.map(|text| ttl("ttl", &text)).transpose()?;
    let (created, doc) =
        state.services.docs.put(&key, body.to_vec(), ttl, condition.as_ref()).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let version = doc.version;
    let body = DocVersion {
        key: key.clone(),
        version: VersionBody::from(&version),
        expires_at: doc.expires_at.map(rfc3339),
    };
    let mut response = (status, Json(body)).into_response();
    if created {
        if let Ok(location) = HeaderValue::from_str(&format!("/kv/{}", encode_path(&key))) {
            response.headers_mut().insert(header::LOCATION, location);
        }
    }
    Ok(with_etag(response, &version.etag()))
}

/// Get a JSON document, as it was stored.
#[utoipa::path(get, path = "/kv/{key}", tag = "kv", operation_id = "getDocument",
    params(DocKey, super::IfNoneMatch),
    responses(
        (status = 200, description = "The document, as it was stored", body = serde_json::Value,
            headers(("ETag" = String), ("Kvs-Expires-At" = String, description = "RFC 3339: when the document expires (absent: never)"))),
        (status = 304, description = "If-None-Match matched", headers(("ETag" = String))),
        (status = 404, description = "No such document", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad key", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(key): PathParam,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(Action::Read, Resource::Kv(&key))?;
    let doc = state
        .services
        .docs
        .get(&key)?
        .ok_or_else(|| ApiError::NotFound(format!("no document at {key:?}")))?;
    let etag = doc.version.etag();
    let mut response = conditional_get(&headers, &etag, || {
        ([(header::CONTENT_TYPE, "application/json")], doc.json).into_response()
    });
    if let Some(at) = doc.expires_at.and_then(|at| HeaderValue::from_str(&rfc3339(at)).ok()) {
        response.headers_mut().insert(EXPIRES_AT, at);
    }
    Ok(response)
}

/// Delete a document (it leaves a replicated tombstone).
#[utoipa::path(delete, path = "/kv/{key}", tag = "kv", operation_id = "deleteDocument",
    params(DocKey, super::IfMatchHeader),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The key is under the reserved `_kvs/`, or the token may not delete it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match did not match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad key", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(key): PathParam,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    caller.require(Action::Delete, Resource::Kv(&key))?;
    refuse_reserved(&key)?;
    let condition = if_match(&headers)?;
    state.services.docs.delete(&key, condition.as_ref()).await.map_err(|e| {
        ApiError::from_service(e, || ApiError::NotFound(format!("no document at {key:?}")))
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// List document keys with their versions, in key order.
#[utoipa::path(get, path = "/kv", tag = "kv", operation_id = "listDocuments",
    params(ListDocs, super::LastEventId),
    responses(
        (status = 200, description = "Keys and versions; with `watch=true`, an event stream (`event: put|delete`, `id:` the change number, `data:` {key, op, version, value})",
            content((DocList = "application/json"), (String = "text/event-stream")),
            headers(("Link" = String, description = "`</kv?…&cursor=…>; rel=\"next\"` when there are more"))),
        (status = 410, description = "`Last-Event-ID` names a change this node no longer keeps: list again, then watch from now", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "limit out of range", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(params): Query<ListDocs>,
) -> Result<Response, ApiError> {
    let limit = page_limit(params.limit)?;
    let prefix = params.prefix.unwrap_or_default();
    caller.require_listing(&prefix)?;
    let after = super::watch::resume_point(&headers)?;
    if params.watch == Some(true) {
        let scope = Scope::Docs { prefix };
        return super::watch::respond(&state, scope, after, move |path| caller.may_read_doc(path));
    }
    let page = state.services.docs.list(&prefix, limit, params.cursor.as_deref())?;
    // Only what the caller may read; a page can then hold fewer than `limit` keys.
    let keys = page
        .entries
        .iter()
        .filter(|entry| caller.may_read_doc(&entry.path))
        .map(|entry| DocVersion {
            key: entry.path.clone(),
            version: VersionBody::from(&entry.version),
            expires_at: entry.expires_at.map(rfc3339),
        })
        .collect();
    let mut response = Json(DocList { keys, next_cursor: page.next.clone() }).into_response();
    if let Some(next) = page.next {
        let link = format!(
            "</kv?prefix={}&limit={limit}&cursor={}>; rel=\"next\"",
            encode_path(&prefix),
            encode_path(&next)
        );
        if let Ok(value) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}

/// Clients never write under kvs's own prefix (revocations are made by the admin route).
fn refuse_reserved(key: &str) -> Result<(), ApiError> {
    if key.starts_with(RESERVED_PREFIX) {
        return Err(ApiError::Forbidden(format!(
            "keys under {RESERVED_PREFIX} are kvs's own and cannot be written by clients"
        )));
    }
    Ok(())
}

/// Percent-encodes everything but unreserved characters and `/`.
fn encode_path(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
