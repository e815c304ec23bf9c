//! `GET /todos?watch=true` and `GET /kv?prefix=P&watch=true`: the change feed as
//! Server-Sent Events. Each event is one change (`event: put` or `event: delete`) with its
//! change number as `id`; a client that reconnects with `Last-Event-ID` gets every change
//! after it. A stream ends with `event: closed` and a reason when the client fell behind
//! what the node keeps (list again, then watch from now) or the node shuts down.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::problem::ApiError;
use super::todos::TodoBody;
use super::{AppState, VersionBody};
use crate::model::Key;
use crate::service::watch::{self, Item, Scope, WatchError, WatchEvent};
use crate::store::Change;

/// Comment lines this often keep proxies from cutting an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events a stream buffers for its client.
const BUFFER: usize = 64;
/// A client that takes no event for this long is disconnected (the log keeps what it
/// missed; it can resume with `Last-Event-ID`).
const STALLED: Duration = Duration::from_secs(30);

/// The `Last-Event-ID` request header: 400 when it is not a change number.
pub(super) fn resume_point(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else { return Ok(None) };
    let text = value.to_str().unwrap_or_default().trim();
    text.parse().map(Some).map_err(|_| {
        ApiError::BadRequest(format!("Last-Event-ID {text:?} is not an event id from this node"))
    })
}

/// Answers the stream from after `after` (from `resume_point`); `visible` filters
/// documents by the caller's permissions.
pub fn respond(
    state: &AppState,
    scope: Scope,
    after: Option<u64>,
    visible: impl Fn(&str) -> bool + Send + Sync + 'static,
) -> Result<Response, ApiError> {
    let mut watch = state.services.changes.watch(scope, after).map_err(|error| match error {
        WatchError::Store(error) => ApiError::from(crate::service::ServiceError::Store(error)),
        error => ApiError::Gone(error.to_string()),
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(BUFFER);
    let stop = state.shutdown.clone();
    tokio::spawn(async move {
        loop {
            let events = tokio::select! {
                events = watch.next() => events,
                () = tx.closed() => return,
                () = stop.cancelled() => {
                    let _ = tx.try_send(Ok(closed("the node is shutting down")));
                    return;
                }
            };
            let events = match events {
                Ok(events) => events,
                Err(end) => {
                    tracing::debug!(reason = %end, "watch ended");
                    let _ = tx.try_send(Ok(closed(&end.to_string())));
                    return;
                }
            };
            for change in events.iter().filter(|change| match &change.key {
                Key::Doc(path) => visible(path),
                Key::Todo(_) => true,
            }) {
                match tokio::time::timeout(STALLED, tx.send(Ok(sse_event(change)))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return, // the client went away
                    Err(_) => {
                        tracing::debug!("a watcher took nothing for 30 s: disconnected");
                        return;
                    }
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response())
}

fn closed(reason: &str) -> Event {
    Event::default().event("closed").data(json!({ "reason": reason }).to_string())
}

/// The event for a change.
fn sse_event(change: &Change) -> Event {
    let (op, data) = render(&watch::event(change));
    Event::default().id(change.id.to_string()).event(op).data(data)
}

/// The event name and data of a change.
fn render(event: &WatchEvent) -> (&'static str, String) {
    let version = VersionBody::from(&event.version);
    let (op, data) = match &event.item {
        Item::Todo { id, todo } => {
            let body = todo.as_ref().map(TodoBody::from);
            let op = if body.is_some() { "put" } else { "delete" };
            (op, json!({ "id": id, "op": op, "version": version, "todo": body }))
        }
        Item::Doc { path, value } => {
            let value: Option<serde_json::Value> =
                value.as_deref().and_then(|bytes| serde_json::from_slice(bytes).ok());
            let op = if value.is_some() { "put" } else { "delete" };
            let expires_at = value.as_ref().and(event.expires_at).map(super::rfc3339);
            let data = json!({
                "key": path, "op": op, "version": version, "value": value, "expires_at": expires_at
            });
            (op, data)
        }
    };
    (op, data.to_string())
}
