//! `/todos`: JSON in, JSON out, versions as ETags.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::extract::{if_match, ttl, JsonBody, PathParam, Query};
use super::problem::{ApiError, Problem};
use super::{conditional_get, page_limit, rfc3339, with_etag, AppState, VersionBody};
use crate::model::Timestamp;
use crate::service::watch::Scope;
use crate::service::{NewTodo, TodoPatch, TodoQuery, TodoView};

/// A todo as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TodoBody {
    pub id: Uuid,
    pub extern_id: String,
    pub todo: String,
    pub completed: bool,
    /// RFC 3339
    pub created_at: String,
    /// RFC 3339
    pub updated_at: String,
    /// RFC 3339: when the todo stops existing (on every node); null: never.
    pub expires_at: Option<String>,
    pub version: VersionBody,
}

impl From<&TodoView> for TodoBody {
    fn from(view: &TodoView) -> Self {
        TodoBody {
            id: view.id,
            extern_id: view.todo.extern_id.clone(),
            todo: view.todo.todo.clone(),
            completed: view.todo.completed,
            created_at: rfc3339(Timestamp::from_raw(view.todo.created_at).millis()),
            updated_at: rfc3339(Timestamp::from_raw(view.todo.updated_at).millis()),
            expires_at: view.expires_at.map(rfc3339),
            version: VersionBody::from(&view.version),
        }
    }
}

/// `POST /todos` body. `todo` is required; `extern_id` makes the id deterministic, so
/// creating the same `extern_id` on two nodes yields one todo.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"todo": "buy milk", "extern_id": "shop-1"}))]
pub struct CreateTodo {
    /// 1–80 characters; the todo's id is its UUIDv5. Absent or null: a random id.
    #[schema(min_length = 1, max_length = 80)]
    pub extern_id: Option<String>,
    /// 1–500 characters, no control characters but newline and tab (the pattern: no
    /// character of Unicode category Cc, U+0000–U+001F and U+007F–U+009F, but those two).
    #[schema(value_type = String, required = true, min_length = 1, max_length = 500, pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$")]
    pub todo: Option<String>,
    /// Absent or null: false.
    pub completed: Option<bool>,
    /// Expire this long after the write (`30s`, `15m`, `2h`, `7d`; units ms, s, m, h,
    /// d): from then on the todo is gone on every node. Absent or null: never.
    #[schema(pattern = "^[1-9][0-9]{0,5}(ms|s|m|h|d)$")]
    pub expires_in: Option<String>,
}

/// `PUT`/`PATCH /todos/{id}` body: the fields to change (both methods take a partial
/// body); absent or null leaves a field as it is. `extern_id` cannot change: it may only
/// be absent or null.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"completed": true}))]
pub struct UpdateTodo {
    /// 1–500 characters, no control characters but newline and tab.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$"
    )]
    pub todo: Option<String>,
    pub completed: Option<bool>,
    /// Refused with 422 unless null: the id is derived from it.
    #[schema(schema_with = super::null_only)]
    pub extern_id: Option<serde_json::Value>,
    /// Expire this long after this update (`30s`, `15m`, `2h`, `7d`); **null: never
    /// expire** (clears an expiry); absent: the expiry stays as it is.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, nullable, pattern = "^[1-9][0-9]{0,5}(ms|s|m|h|d)$")]
    pub expires_in: Option<Option<String>>,
}

/// Tells a field sent as null (`Some(None)`) from an absent one (`None`, by `default`).
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListTodos {
    /// Only todos with this completion state.
    pub completed: Option<bool>,
    /// Only the todo with this extern_id.
    pub extern_id: Option<String>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Opaque position from a previous page's `Link: rel="next"`.
    #[param(pattern = "^[0-9a-fA-F]{48}$")]
    pub cursor: Option<String>,
    /// `true`: instead of a page, a Server-Sent Events stream of every change to a todo
    /// from now on (or after the change named by `Last-Event-ID`); see the README.
    pub watch: Option<bool>,
}

fn parse_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(text)
        .map_err(|_| ApiError::BadRequest(format!("todo id {text:?} is not a UUID")))
}

/// Create a todo.
#[utoipa::path(post, path = "/todos", tag = "todos", operation_id = "createTodo",
    request_body = CreateTodo,
    responses(
        (status = 201, description = "Created", body = TodoBody,
            headers(("Location" = String, description = "/todos/{id}"), ("ETag" = String)),
            links(
                ("getTodo" = (operation_id = "getTodo", parameters(("id" = "$response.body#/id")))),
                ("updateTodo" = (operation_id = "updateTodo", parameters(("id" = "$response.body#/id")))),
                ("replaceTodo" = (operation_id = "replaceTodo", parameters(("id" = "$response.body#/id")))),
                ("deleteTodo" = (operation_id = "deleteTodo", parameters(("id" = "$response.body#/id")))),
            )),
        (status = 409, description = "A live todo has this extern_id", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field broke its rule (named in `errors`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateTodo>,
) -> Result<Response, ApiError> {
    let todo =
        body.todo.ok_or(ApiError::Validation { field: "todo", message: "is required".into() })?;
    let expires_in = body.expires_in.map(|text| ttl("expires_in", &text)).transpose()?;
    let new = NewTodo { extern_id: body.extern_id, todo, completed: body.completed, expires_in };
    let view = state.services.todos.create(new).await?;
    let location = format!("/todos/{}", view.id);
    let mut response = (StatusCode::CREATED, Json(TodoBody::from(&view))).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(with_etag(response, &view.version.etag()))
}

/// List todos, newest first.
#[utoipa::path(get, path = "/todos", tag = "todos", operation_id = "listTodos",
    params(ListTodos, super::LastEventId),
    responses(
        (status = 200, description = "A page of todos; with `watch=true`, an event stream (`event: put|delete`, `id:` the change number, `data:` {id, op, version, todo})",
            content(([TodoBody] = "application/json"), (String = "text/event-stream")),
            headers(("Link" = String, description = "`</todos?…&cursor=…>; rel=\"next\"` when there are more"))),
        (status = 410, description = "`Last-Event-ID` names a change this node no longer keeps: list again, then watch from now", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "limit out of range", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<ListTodos>,
) -> Result<Response, ApiError> {
    // Checked on every listing (not only a watch), as the document says.
    let after = super::watch::resume_point(&headers)?;
    if params.watch == Some(true) {
        return super::watch::respond(&state, Scope::Todos, after, |_| true);
    }
    let limit = page_limit(params.limit)?;
    let after = params.cursor.as_deref().map(parse_cursor).transpose()?;
    let query = TodoQuery {
        completed: params.completed,
        extern_id: params.extern_id.clone(),
        limit,
        after,
    };
    let page = state.services.todos.list(&query)?;
    let items: Vec<TodoBody> = page.items.iter().map(TodoBody::from).collect();
    let mut response = Json(items).into_response();
    if let Some(next) = page.next {
        let mut link = format!("</todos?limit={limit}&cursor={}", hex(&next));
        if let Some(completed) = params.completed {
            link.push_str(&format!("&completed={completed}"));
        }
        link.push_str(">; rel=\"next\"");
        if let Ok(value) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}

/// Get one todo.
#[utoipa::path(get, path = "/todos/{id}", tag = "todos", operation_id = "getTodo",
    params(("id" = Uuid, Path, description = "Todo id"), super::IfNoneMatch),
    responses(
        (status = 200, description = "The todo", body = TodoBody, headers(("ETag" = String))),
        (status = 304, description = "If-None-Match matched", headers(("ETag" = String))),
        (status = 404, description = "No such todo", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<AppState>,
    PathParam(id): PathParam,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let view = state.services.todos.get(id)?.ok_or_else(|| not_found(id))?;
    let etag = view.version.etag();
    Ok(conditional_get(&headers, &etag, || Json(TodoBody::from(&view)).into_response()))
}

/// Update fields of a todo.
#[utoipa::path(patch, path = "/todos/{id}", tag = "todos", operation_id = "updateTodo",
    request_body = UpdateTodo,
    params(("id" = Uuid, Path, description = "Todo id"), super::IfMatchHeader),
    responses(
        (status = 200, description = "The updated todo", body = TodoBody, headers(("ETag" = String))),
        (status = 404, description = "No such todo", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match did not match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field broke its rule (named in `errors`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn patch(
    state: State<AppState>,
    id: PathParam,
    headers: HeaderMap,
    body: JsonBody<UpdateTodo>,
) -> Result<Response, ApiError> {
    update(state, id, headers, body).await
}

/// Update fields of a todo: the same partial body as PATCH.
#[utoipa::path(put, path = "/todos/{id}", tag = "todos", operation_id = "replaceTodo",
    request_body = UpdateTodo,
    params(("id" = Uuid, Path, description = "Todo id"), super::IfMatchHeader),
    responses(
        (status = 200, description = "The updated todo", body = TodoBody, headers(("ETag" = String))),
        (status = 404, description = "No such todo", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match did not match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field broke its rule (named in `errors`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put(
    state: State<AppState>,
    id: PathParam,
    headers: HeaderMap,
    body: JsonBody<UpdateTodo>,
) -> Result<Response, ApiError> {
    update(state, id, headers, body).await
}

async fn update(
    State(state): State<AppState>,
    PathParam(id): PathParam,
    headers: HeaderMap,
    JsonBody(body): JsonBody<UpdateTodo>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    if body.extern_id.is_some() {
        return Err(ApiError::Validation {
            field: "extern_id",
            message: "is immutable; create a new todo instead".into(),
        });
    }
    let condition = if_match(&headers)?;
    let expires_in = match body.expires_in {
        None => None,
        Some(None) => Some(None),
        Some(Some(text)) => Some(Some(ttl("expires_in", &text)?)),
    };
    let patch = TodoPatch { todo: body.todo, completed: body.completed, expires_in };
    let view = state
        .services
        .todos
        .update(id, patch, condition.as_ref())
        .await
        .map_err(|e| ApiError::from_service(e, || not_found(id)))?;
    Ok(with_etag(Json(TodoBody::from(&view)).into_response(), &view.version.etag()))
}

/// Delete a todo (it leaves a replicated tombstone).
#[utoipa::path(delete, path = "/todos/{id}", tag = "todos", operation_id = "deleteTodo",
    params(("id" = Uuid, Path, description = "Todo id"), super::IfMatchHeader),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such todo", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match did not match", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    PathParam(id): PathParam,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let condition = if_match(&headers)?;
    state
        .services
        .todos
        .delete(id, condition.as_ref())
        .await
        .map_err(|e| ApiError::from_service(e, || not_found(id)))?;
    Ok(StatusCode::NO_CONTENT)
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no todo with id {id}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_cursor(text: &str) -> Result<[u8; 24], ApiError> {
    let bad = || ApiError::BadRequest(format!("cursor {text:?} is not one this server issued"));
    if text.len() != 48 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut cursor = [0u8; 24];
    for (i, byte) in cursor.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(cursor)
}
