//! The command-line client (`kvs todo`, `kvs kv`, `kvs cluster`): the public HTTP API
//! only, as any other client would use it. People get tables, scripts get `--json`
//! (the API's own JSON); a refusal is one line made of the problem document's status
//! and detail.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Where and how to reach a node.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub token: Option<String>,
    /// A PEM CA to trust (a cluster made with `kvs certs`) instead of the system's roots.
    pub cacert: Option<PathBuf>,
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node answered with an error (the line says its status and detail).
    #[error("{0}")]
    Refused(String),
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Usage(String),
    /// The command ran but part of it failed: `output` still goes to stdout.
    #[error("{reason}")]
    Partly { output: String, reason: String },
}

impl ClientError {
    /// The process exit code: 2 for usage, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// One command of the client.
#[derive(Debug, Clone)]
pub enum Request {
    TodoAdd {
        text: String,
        extern_id: Option<String>,
        expires_in: Option<String>,
    },
    TodoList {
        completed: Option<bool>,
        limit: Option<u32>,
    },
    TodoGet {
        id: String,
    },
    TodoDone {
        id: String,
        done: bool,
    },
    TodoEdit {
        id: String,
        text: String,
    },
    /// Sets (`Some`) or clears (`None`) a todo's expiry.
    TodoExpire {
        id: String,
        expires_in: Option<String>,
    },
    TodoRemove {
        id: String,
    },
    KvGet {
        key: String,
    },
    KvPut {
        key: String,
        json: String,
        ttl: Option<String>,
    },
    KvRemove {
        key: String,
    },
    KvList {
        prefix: Option<String>,
        limit: Option<u32>,
    },
    ClusterStatus,
    ClusterMembers,
    ClusterOverview,
    /// A watch of the todos (`prefix` None) or of the documents under `prefix`.
    Watch {
        prefix: Option<String>,
        after: Option<u64>,
    },
    ClusterSync {
        peer: Option<String>,
    },
}

/// Runs `request` against `target` and returns what to print on stdout.
pub async fn run(target: &Target, request: Request) -> Result<String, ClientError> {
    let client = Client::new(target)?;
    let json = target.json;
    match request {
        Request::TodoAdd { text, extern_id, expires_in } => {
            let mut body = json!({ "todo": text });
            if let Some(extern_id) = extern_id {
                body["extern_id"] = json!(extern_id);
            }
            if let Some(expires_in) = expires_in {
                body["expires_in"] = json!(expires_in);
            }
            let todo = client.call(Method::POST, "/todos", Some(body)).await?;
            Ok(if json { pretty(&todo) } else { todo_table(&[todo]) })
        }
        Request::TodoList { completed, limit } => {
            let mut query = Vec::new();
            if let Some(completed) = completed {
                query.push(format!("completed={completed}"));
            }
            if let Some(limit) = limit {
                query.push(format!("limit={limit}"));
            }
            let path = match query.is_empty() {
                true => "/todos".to_owned(),
                false => format!("/todos?{}", query.join("&")),
            };
            let todos = client.call(Method::GET, &path, None).await?;
            let rows = todos.as_array().cloned().unwrap_or_default();
            Ok(if json { pretty(&todos) } else { todo_table(&rows) })
        }
        Request::TodoGet { id } => {
            let todo = client.call(Method::GET, &format!("/todos/{}", segment(&id)), None).await?;
            Ok(if json { pretty(&todo) } else { todo_table(&[todo]) })
        }
        Request::TodoDone { id, done } => {
            let path = format!("/todos/{}", segment(&id));
            let todo =
                client.call(Method::PATCH, &path, Some(json!({ "completed": done }))).await?;
            Ok(if json { pretty(&todo) } else { todo_table(&[todo]) })
        }
        Request::TodoEdit { id, text } => {
            let path = format!("/todos/{}", segment(&id));
            let todo = client.call(Method::PATCH, &path, Some(json!({ "todo": text }))).await?;
            Ok(if json { pretty(&todo) } else { todo_table(&[todo]) })
        }
        Request::TodoExpire { id, expires_in } => {
            let path = format!("/todos/{}", segment(&id));
            let body = json!({ "expires_in": expires_in });
            let todo = client.call(Method::PATCH, &path, Some(body)).await?;
            Ok(if json { pretty(&todo) } else { todo_table(&[todo]) })
        }
        Request::TodoRemove { id } => {
            client.call(Method::DELETE, &format!("/todos/{}", segment(&id)), None).await?;
            Ok(if json { pretty(&json!({ "deleted": id })) } else { format!("deleted {id}") })
        }
        Request::KvGet { key } => {
            let document = client.call(Method::GET, &format!("/kv/{}", path(&key)), None).await?;
            Ok(pretty(&document))
        }
        Request::KvPut { key, json: text, ttl } => {
            let document: Value = serde_json::from_str(&text)
                .map_err(|error| ClientError::Usage(format!("the value is not JSON: {error}")))?;
            let mut url = format!("/kv/{}", path(&key));
            if let Some(ttl) = ttl {
                url.push_str(&format!("?ttl={}", path(&ttl)));
            }
            let put = client.call(Method::PUT, &url, Some(document)).await?;
            let version = put["version"]["ts"].as_str().unwrap_or("?");
            Ok(match (json, put["expires_at"].as_str()) {
                (true, _) => pretty(&put),
                (false, Some(at)) => format!("stored {key} (version {version}, expires {at})"),
                (false, None) => format!("stored {key} (version {version})"),
            })
        }
        Request::KvRemove { key } => {
            client.call(Method::DELETE, &format!("/kv/{}", path(&key)), None).await?;
            Ok(if json { pretty(&json!({ "deleted": key })) } else { format!("deleted {key}") })
        }
        Request::KvList { prefix, limit } => {
            let mut query = Vec::new();
            if let Some(prefix) = prefix {
                query.push(format!("prefix={}", path(&prefix)));
            }
            if let Some(limit) = limit {
                query.push(format!("limit={limit}"));
            }
            let list = client.call(Method::GET, &format!("/kv?{}", query.join("&")), None).await?;
            if json {
                return Ok(pretty(&list));
            }
            let rows: Vec<Vec<String>> = list["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|entry| vec![text(&entry["key"]), text(&entry["version"]["ts"])])
                .collect();
            Ok(table(&["KEY", "VERSION"], &rows))
        }
        Request::ClusterStatus => {
            let info = client.call(Method::GET, "/health/info", None).await?;
            if json {
                return Ok(pretty(&info));
            }
            let alive = info["members"]
                .as_array()
                .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
            let members = info["members"].as_array().map_or(0, Vec::len);
            let rows = vec![
                vec![
                    "node".into(),
                    format!("{} ({})", text(&info["node_name"]), text(&info["node_id"])),
                ],
                vec!["ready".into(), text(&info["ready"])],
                vec!["mode".into(), text(&info["cluster_mode"])],
                vec!["members".into(), format!("{alive} alive of {members}")],
                vec!["todos".into(), text(&info["todo_count"])],
                vec!["keys".into(), text(&info["key_count"])],
                vec!["merkle root".into(), text(&info["merkle_root"])],
                vec!["storage writable".into(), text(&info["storage"]["writable"])],
            ];
            Ok(table(&["", ""], &rows).lines().skip(1).collect::<Vec<_>>().join("\n"))
        }
        Request::ClusterMembers => {
            let info = client.call(Method::GET, "/health/info", None).await?;
            let members = info["members"].clone();
            if json {
                return Ok(pretty(&members));
            }
            let rows: Vec<Vec<String>> = members
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    let id = text(&m["id"]);
                    let last = info["last_sync"].get(&id).map(text).unwrap_or_else(|| "-".into());
                    vec![text(&m["name"]), text(&m["addr"]), text(&m["state"]), last, id]
                })
                .collect();
            Ok(table(&["NAME", "ADDRESS", "STATE", "LAST SYNC", "ID"], &rows))
        }
        Request::Watch { prefix, after } => watch(target, prefix, after).await,
        Request::ClusterOverview => {
            let view = client.call(Method::GET, "/admin/v1/cluster", None).await?;
            if json {
                return Ok(pretty(&view));
            }
            let rows: Vec<Vec<String>> = view["members"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    let root = m["merkle_root"]
                        .as_str()
                        .map_or("-".to_owned(), |root| root.get(..16).unwrap_or(root).to_owned());
                    let figure = |field: &str| m.get(field).map_or("-".to_owned(), text);
                    let note = m["error"].as_str().unwrap_or_default().to_owned();
                    vec![
                        text(&m["name"]),
                        text(&m["addr"]),
                        text(&m["state"]),
                        figure("records"),
                        root,
                        figure("writes_total"),
                        note,
                    ]
                })
                .collect();
            let agree = match view["roots_agree"].as_bool() {
                Some(true) => "all Merkle roots agree",
                _ => "Merkle roots differ (or a member did not answer)",
            };
            let headers = ["NAME", "ADDRESS", "STATE", "RECORDS", "ROOT", "WRITES", "ERROR"];
            Ok(format!("{}\n{agree}", table(&headers, &rows)))
        }
        Request::ClusterSync { peer } => {
            let path = match &peer {
                Some(peer) => format!("/admin/v1/sync?peer={}", path(peer)),
                None => "/admin/v1/sync".to_owned(),
            };
            let report = client.call(Method::POST, &path, None).await?;
            let rounds = report["rounds"].as_array().cloned().unwrap_or_default();
            let failed = rounds.iter().filter(|round| round["ok"] != true).count();
            let out = if json {
                pretty(&report)
            } else if rounds.is_empty() {
                "no alive peer to sync with".to_owned()
            } else {
                let rows: Vec<Vec<String>> = rounds
                    .iter()
                    .map(|r| {
                        let outcome = match r["error"].as_str() {
                            Some(error) => format!("failed: {error}"),
                            None => "ok".to_owned(),
                        };
                        vec![
                            text(&r["peer_name"]),
                            text(&r["peer_addr"]),
                            text(&r["differing_segments"]),
                            text(&r["pulled"]),
                            text(&r["pushed"]),
                            outcome,
                        ]
                    })
                    .collect();
                table(&["PEER", "ADDRESS", "DIFFERING", "PULLED", "PUSHED", "OUTCOME"], &rows)
            };
            match failed {
                0 => Ok(out),
                _ => Err(ClientError::Partly {
                    output: out,
                    reason: format!("{failed} of {} sync rounds failed", rounds.len()),
                }),
            }
        }
    }
}

/// `kvs todo watch` / `kvs kv watch`: prints each change as it arrives (one line, or the
/// event's JSON with `--json`) until the stream ends or the user stops it.
async fn watch(
    target: &Target,
    prefix: Option<String>,
    after: Option<u64>,
) -> Result<String, ClientError> {
    let client = Client::with_timeout(target, None)?;
    let path = match &prefix {
        None => "/todos?watch=true".to_owned(),
        Some(prefix) => format!("/kv?watch=true&prefix={}", self::path(prefix)),
    };
    let mut request = client.http.get(format!("{}{path}", client.base));
    if let Some(token) = &client.token {
        request = request.bearer_auth(token);
    }
    if let Some(after) = after {
        request = request.header("last-event-id", after.to_string());
    }
    let unreachable = |error: reqwest::Error| ClientError::Unreachable {
        url: client.base.clone(),
        reason: root_cause(&error),
    };
    let mut response = request.send().await.map_err(unreachable)?;
    if !response.status().is_success() {
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        return Err(ClientError::Refused(refusal(status, &bytes)));
    }
    let mut pending = String::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .unwrap_or_default()
                    .to_owned()
            };
            let (id, event, data) = (field("id: "), field("event: "), field("data: "));
            if event.is_empty() {
                continue; // a keep-alive comment
            }
            let data: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            if event == "closed" {
                return Err(ClientError::Refused(format!(
                    "the watch ended: {}",
                    text(&data["reason"])
                )));
            }
            if target.json {
                println!(
                    "{}",
                    json!({ "id": id.parse::<u64>().ok(), "event": event, "data": data })
                );
                continue;
            }
            let line = match (&data["todo"], &data["key"]) {
                (Value::Object(todo), _) => {
                    let done = if todo["completed"] == true { "done" } else { "open" };
                    format!(
                        "{id}  {event:<6}  {}  {done}  {}",
                        text(&data["id"]),
                        text(&todo["todo"])
                    )
                }
                (_, Value::String(key)) => format!("{id}  {event:<6}  {key}  {}", data["value"]),
                _ => format!("{id}  {event:<6}  {}", text(&data["id"])),
            };
            println!(
                "{}",
                line.escape_debug().to_string().replace("\\'", "'").replace("\\\"", "\"")
            );
        }
    }
    Ok(String::new())
}

/// `kvs backup`: streams the node's backup into `out` (through `out.part`, renamed
/// once the whole stream has been checked against its trailer). Returns the summary.
pub async fn backup(target: &Target, out: &std::path::Path) -> Result<String, ClientError> {
    use std::io::Write;
    if out.exists() {
        return Err(ClientError::Usage(format!("{} exists; choose a new file", out.display())));
    }
    let client = Client::new(target)?;
    let mut request = client.http.get(format!("{}/admin/v1/backup", client.base));
    if let Some(token) = &client.token {
        request = request.bearer_auth(token);
    }
    let unreachable = |error: reqwest::Error| ClientError::Unreachable {
        url: client.base.clone(),
        reason: root_cause(&error),
    };
    let mut response = request.send().await.map_err(unreachable)?;
    let status = response.status();
    if !status.is_success() {
        let body = response.bytes().await.unwrap_or_default();
        return Err(ClientError::Refused(refusal(status, &body)));
    }
    let part = out.with_extension("part");
    let failed = |error: std::io::Error| {
        ClientError::Refused(format!("cannot write {}: {error}", part.display()))
    };
    let mut file = std::io::BufWriter::new(std::fs::File::create(&part).map_err(failed)?);
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {bytes} received ({bytes_per_sec})")
            .expect("a valid template"),
    );
    let mut received = 0u64;
    let streamed = async {
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            file.write_all(&chunk).map_err(failed)?;
            received += chunk.len() as u64;
            bar.set_position(received);
        }
        file.flush().map_err(failed)?;
        file.get_ref().sync_all().map_err(failed)
    };
    let outcome = streamed.await;
    bar.finish_and_clear();
    let checked = outcome.and_then(|()| {
        let input = std::io::BufReader::new(std::fs::File::open(&part).map_err(failed)?);
        let mut reader = crate::backup::Reader::new(input)
            .map_err(|error| ClientError::Refused(error.to_string()))?;
        while reader.next_batch().map_err(|e| ClientError::Refused(e.to_string()))?.is_some() {}
        Ok(reader.trailer().cloned().expect("read to the end"))
    });
    let trailer = match checked {
        Ok(trailer) => trailer,
        Err(error) => {
            let _ = std::fs::remove_file(&part);
            return Err(error);
        }
    };
    std::fs::rename(&part, out).map_err(failed)?;
    Ok(if target.json {
        pretty(&json!({
            "file": out.display().to_string(),
            "bytes": received,
            "records": trailer.records,
            "merkle_root": trailer.merkle_root,
        }))
    } else {
        format!(
            "{}: {} records, {} bytes, Merkle root {} (checked)",
            out.display(),
            trailer.records,
            received,
            trailer.merkle_root
        )
    })
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(target: &Target) -> Result<Client, ClientError> {
        Client::with_timeout(target, Some(Duration::from_secs(60)))
    }

    /// `timeout` bounds a whole request; `None` for a stream that stays open.
    fn with_timeout(target: &Target, timeout: Option<Duration>) -> Result<Client, ClientError> {
        let base = target.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Usage(format!(
                "--url {base:?} must start with http:// or https://"
            )));
        }
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(path) = &target.cacert {
            let pem = std::fs::read(path).map_err(|error| {
                ClientError::Usage(format!("--cacert {}: {error}", path.display()))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|error| {
                ClientError::Usage(format!(
                    "--cacert {}: not a PEM certificate: {error}",
                    path.display()
                ))
            })?;
            builder = builder.tls_certs_only([cert]);
        }
        let http = builder
            .build()
            .map_err(|error| ClientError::Usage(format!("cannot set up the client: {error}")))?;
        Ok(Client { http, base, token: target.token.clone().filter(|t| !t.trim().is_empty()) })
    }

    /// One request; the JSON answer (`null` for an empty one), or the refusal as a line.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|error| ClientError::Unreachable {
            url: self.base.clone(),
            reason: root_cause(&error),
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|error| ClientError::Unreachable {
            url: self.base.clone(),
            reason: root_cause(&error),
        })?;
        if !status.is_success() {
            return Err(ClientError::Refused(refusal(status, &bytes)));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|error| {
            ClientError::Refused(format!("{status}: the answer is not JSON ({error})"))
        })
    }
}

/// `404 Not Found: no todo with id …` from a problem document, or the status alone.
fn refusal(status: StatusCode, body: &[u8]) -> String {
    let detail = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|problem| problem["detail"].as_str().map(str::to_owned));
    match detail {
        Some(detail) => format!("{status}: {detail}"),
        None => status.to_string(),
    }
}

/// The innermost cause of a transport error (reqwest's outer message says little).
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The todos as a table; an EXPIRES column when any of them expires.
fn todo_table(todos: &[Value]) -> String {
    let expiring = todos.iter().any(|todo| todo["expires_at"].is_string());
    let rows: Vec<Vec<String>> = todos
        .iter()
        .map(|todo| {
            let done = if todo["completed"] == true { "x" } else { " " };
            let mut row = vec![
                text(&todo["id"]),
                done.to_owned(),
                text(&todo["todo"]),
                text(&todo["updated_at"]),
            ];
            if expiring {
                row.push(text(&todo["expires_at"]));
            }
            row
        })
        .collect();
    let header: &[&str] = match expiring {
        true => &["ID", "DONE", "TODO", "UPDATED", "EXPIRES"],
        false => &["ID", "DONE", "TODO", "UPDATED"],
    };
    table(header, &rows)
}

/// Left-aligned columns separated by two spaces, a header first; control characters
/// in values are shown escaped so a value cannot break the table (or the terminal).
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let clean =
        |cell: &str| cell.escape_debug().to_string().replace("\\'", "'").replace("\\\"", "\"");
    let rows: Vec<Vec<String>> =
        rows.iter().map(|row| row.iter().map(|c| clean(c)).collect()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(rows.iter().map(|row| line(row.iter().map(String::as_str).collect())));
    out.join("\n")
}

/// A path segment, percent-encoded (an id is one segment).
fn segment(text: &str) -> String {
    encode(text, false)
}

/// A key path: `/` kept, everything else outside the unreserved set encoded.
fn path(text: &str) -> String {
    encode(text, true)
}

fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) || (keep_slash && byte == b'/') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_escape() {
        let rows = vec![vec!["a".into(), "long value".into()], vec!["bb\n".into(), "x".into()]];
        let out = table(&["K", "V"], &rows);
        assert_eq!(out, "K     V\na     long value\nbb\\n  x");
    }

    #[test]
    fn a_problem_becomes_one_line() {
        let body = br#"{"type":"about:blank","title":"Not Found","status":404,"detail":"no todo"}"#;
        assert_eq!(refusal(StatusCode::NOT_FOUND, body), "404 Not Found: no todo");
        assert_eq!(refusal(StatusCode::BAD_GATEWAY, b"<html>"), "502 Bad Gateway");
    }

    #[test]
    fn keys_are_encoded_but_keep_their_slashes() {
        assert_eq!(path("users/a b?"), "users/a%20b%3F");
        assert_eq!(segment("a/b"), "a%2Fb");
    }
}
