//! `GET /todos?watch=true` and `GET /kv?prefix=P&watch=true`: the change feed as
//! Server-Sent Events. Each event is one change (`event: put` or `event: delete`) with its
//! change number as `id`; a client that reconnects with `Last-Event-ID` gets every change
//! after it. A stream ends with `event: closed` and a reason when the client fell behind
//! what the node keeps (list again, then watch from now) or the node shuts down.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue};
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
/// Chunks (each one batch of events) a stream buffers for its client.
const BUFFER: usize = 16;
/// A client that takes no event for this long is disconnected (the log keeps what it
/// missed; it can resume with `Last-Event-ID`).
const STALLED: Duration = Duration::from_secs(30);

/// How many recent renders a node keeps (slots of a ring indexed by change number).
const RENDERS_KEPT: usize = 4_096;

/// The SSE text of recent changes, rendered once and shared by every watcher: with a
/// thousand streams open, rendering each change per watcher was most of the node's CPU
/// (perf: JSON building and escaping, RFC 3339 and UUID formatting). Change numbers are
/// per node, so each node has its own ([`AppState::renders`]). A ring of slots, each its
/// own lock, so watchers on both workers rarely meet (a shared hash map under one lock
/// was the next hot spot: hashing and a contended mutex, per change per watcher).
pub struct Renders {
    slots: Box<[std::sync::Mutex<Slot>]>,
    /// The text of the last complete run of changes joined (first and last number): the
    /// watchers that take a whole paced batch all send these same bytes.
    run: std::sync::Mutex<Option<(u64, u64, Bytes)>>,
}

/// A change number and its event text.
type Slot = Option<(u64, Bytes)>;

impl Default for Renders {
    fn default() -> Self {
        let slots = (0..RENDERS_KEPT).map(|_| std::sync::Mutex::new(None)).collect();
        Renders { slots, run: std::sync::Mutex::new(None) }
    }
}

impl Renders {
    /// The text of `changes` (in order) as one chunk; `None` when there are none. A
    /// complete run of numbers (every change from the first to the last) has the same
    /// text for every watcher that takes it, so the last one is joined once and shared.
    fn chunk(&self, changes: &[&Change]) -> Option<Bytes> {
        let (first, last) = (changes.first()?.id, changes.last()?.id);
        if changes.len() == 1 {
            return Some(self.event(changes[0]));
        }
        let complete = last - first + 1 == changes.len() as u64;
        if complete {
            if let Some((a, b, text)) = &*lock(&self.run) {
                if (*a, *b) == (first, last) {
                    return Some(text.clone());
                }
            }
        }
        let mut joined = Vec::new();
        for change in changes {
            joined.extend_from_slice(&self.event(change));
        }
        let joined = Bytes::from(joined);
        if complete {
            *lock(&self.run) = Some((first, last, joined.clone()));
        }
        Some(joined)
    }

    /// The event text of `change`, rendered now if no watcher rendered it before.
    fn event(&self, change: &Change) -> Bytes {
        let slot = &self.slots[(change.id % RENDERS_KEPT as u64) as usize];
        if let Some((id, text)) = &*lock(slot) {
            if *id == change.id {
                return text.clone();
            }
        }
        // Rendered outside the lock; two watchers racing both render, the last one stays.
        let (op, data) = render(&watch::event(change));
        let text = Bytes::from(format!("id: {}\nevent: {op}\ndata: {data}\n\n", change.id));
        *lock(slot) = Some((change.id, text.clone()));
        text
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

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
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(BUFFER);
    let stop = state.shutdown.clone();
    let renders = state.renders.clone();
    tokio::spawn(async move {
        // One timer for the stream's life, moved on by each write (not one per wake-up).
        let keep_alive = tokio::time::sleep(KEEP_ALIVE);
        tokio::pin!(keep_alive);
        loop {
            // Wakes once per paced batch of its scope (`service::watch::PACE`), and once a
            // second when none comes.
            let events = tokio::select! {
                events = watch.next() => events,
                () = tx.closed() => return,
                () = stop.cancelled() => {
                    let _ = tx.try_send(Ok(closed("the node is shutting down")));
                    return;
                }
                () = &mut keep_alive => {
                    if tx.try_send(Ok(Bytes::from_static(b":\n\n"))).is_err() && tx.is_closed() {
                        return;
                    }
                    keep_alive.as_mut().reset(tokio::time::Instant::now() + KEEP_ALIVE);
                    continue;
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
            let shown: Vec<&Change> = events
                .iter()
                .map(|change| &**change)
                .filter(|change| match &change.key {
                    Key::Doc(path) => visible(path),
                    Key::Todo(_) => true,
                })
                .collect();
            // Everything this wake-up took goes out as one chunk: one write for the
            // connection however many changes the batch held.
            let Some(chunk) = renders.chunk(&shown) else { continue };
            match tokio::time::timeout(STALLED, tx.send(Ok(chunk))).await {
                Ok(Ok(())) => {
                    keep_alive.as_mut().reset(tokio::time::Instant::now() + KEEP_ALIVE);
                }
                Ok(Err(_)) => return, // the client went away
                Err(_) => {
                    tracing::debug!("a watcher took nothing for 30 s: disconnected");
                    return;
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies that buffer responses (nginx) pass this one through as it comes.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn closed(reason: &str) -> Bytes {
    let data = json!({ "reason": reason });
    Bytes::from(format!("event: closed\ndata: {data}\n\n"))
}

/// The event name and data of a change (the data is one line of JSON: serde escapes
/// every newline inside strings, as SSE needs).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeId, Origin, Record, Timestamp, Value, Version};

    fn change(id: u64, value: Option<&str>) -> Change {
        let version = Version {
            ts: Timestamp::from_parts(1_000 + id, 0),
            origin: Origin { node: NodeId(uuid::Uuid::from_u128(1)), joined_at: 1 },
            uuid: uuid::Uuid::from_u128(id.into()),
        };
        let value = value.map_or(Value::Tombstone, |v| Value::Live(v.as_bytes().to_vec()));
        let record = Record { expires_at: Some(5_000), ..Record::new(version, value) };
        Change { id, key: Key::doc("a/b").unwrap(), record }
    }

    #[test]
    fn a_change_is_rendered_once_as_one_sse_event_until_a_later_one_takes_its_slot() {
        let renders = Renders::default();
        let first = renders.event(&change(7, Some(r#"{"n":1}"#)));
        let text = std::str::from_utf8(&first).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(&lines[..2], ["id: 7", "event: put"], "{text}");
        let data: serde_json::Value =
            serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["value"], json!({"n": 1}));
        assert_eq!(data["expires_at"], json!("1970-01-01T00:00:05Z"));
        assert_eq!(&lines[3..], ["", ""], "one event, ended by a blank line");
        // The second watcher gets the same bytes, not a new render.
        let again = renders.event(&change(7, Some(r#"{"n":1}"#)));
        assert_eq!(again.as_ptr(), first.as_ptr());
        let delete = renders.event(&change(8, None));
        assert!(delete.starts_with(b"id: 8\nevent: delete\n"));
        // A change RENDERS_KEPT later takes the slot: the old one is rendered anew.
        let later = renders.event(&change(7 + RENDERS_KEPT as u64, Some("1")));
        assert!(later.starts_with(format!("id: {}\n", 7 + RENDERS_KEPT).as_bytes()));
        let seven = renders.event(&change(7, Some(r#"{"n":1}"#)));
        assert_eq!(seven, first, "the same text");
        assert_ne!(seven.as_ptr(), first.as_ptr(), "rendered again: its slot was taken");
    }

    #[test]
    fn a_complete_run_of_changes_is_joined_once_and_a_run_with_holes_is_not_shared() {
        let renders = Renders::default();
        assert!(renders.chunk(&[]).is_none());
        let run: Vec<Change> = (10..14).map(|id| change(id, Some("1"))).collect();
        let refs: Vec<&Change> = run.iter().collect();
        let first = renders.chunk(&refs).unwrap();
        let text = std::str::from_utf8(&first).unwrap();
        let ids: Vec<&str> = text.lines().filter(|l| l.starts_with("id: ")).collect();
        assert_eq!(ids, ["id: 10", "id: 11", "id: 12", "id: 13"]);
        let again = renders.chunk(&refs).unwrap();
        assert_eq!(again.as_ptr(), first.as_ptr(), "the second watcher shares the bytes");
        // A watcher whose scope skipped 11 gets its own text, and the shared run stays.
        let holes = [refs[0], refs[2], refs[3]];
        let own = renders.chunk(&holes).unwrap();
        assert!(!std::str::from_utf8(&own).unwrap().contains("id: 11\n"));
        assert_eq!(renders.chunk(&refs).unwrap().as_ptr(), first.as_ptr());
    }
}
