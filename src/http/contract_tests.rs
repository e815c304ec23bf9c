//! The OpenAPI document is the contract: it must not drift unreviewed from the committed
//! `openapi.json`, and every example it documents must be accepted by the router and
//! answered with a documented status and a body its schema accepts.

use axum::http::Method;
use serde_json::Value;

use super::openapi;
use super::tests::harness;

const SNAPSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

fn served() -> Value {
    serde_json::to_value(openapi()).unwrap()
}

#[test]
fn the_served_document_matches_the_committed_snapshot() {
    let text = serde_json::to_string_pretty(&served()).unwrap() + "\n";
    if std::env::var_os("KVS_UPDATE_OPENAPI").is_some() {
        std::fs::write(SNAPSHOT, &text).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(SNAPSHOT).unwrap_or_default();
    if committed != text {
        let first = committed
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(text.lines().count()));
        panic!(
            "the OpenAPI document drifted from openapi.json (first difference at line {}: \
             committed {:?}, served {:?}). If the change is meant, review it and run \
             `KVS_UPDATE_OPENAPI=1 cargo test --lib the_served_document`",
            first + 1,
            committed.lines().nth(first).unwrap_or("<end>"),
            text.lines().nth(first).unwrap_or("<end>"),
        );
    }
}

/// A validator for `schema` (often a `$ref` into the document's components).
fn validator(document: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    if let Some(object) = root.as_object_mut() {
        object.insert("components".into(), document["components"].clone());
    }
    jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("schema {schema}: {e}"))
}

/// The schema a `$ref` names, else the schema itself.
fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
        Some(name) => &document["components"]["schemas"][name],
        None => schema,
    }
}

/// Every operation whose JSON request body has an example: (method, path, operation, example).
fn examples(document: &Value) -> Vec<(String, String, Value, Value)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let content = &operation["requestBody"]["content"]["application/json"];
            let example = match &content["example"] {
                Value::Null => resolve(document, &content["schema"])["example"].clone(),
                example => example.clone(),
            };
            if !example.is_null() {
                found.push((method.clone(), path.clone(), operation.clone(), example));
            }
        }
    }
    // Creating a todo first gives the `{id}` the other examples act on.
    found.sort_by_key(|(method, path, _, _)| (path.contains('{'), method != "post", path.clone()));
    found
}

#[tokio::test]
async fn every_documented_example_is_accepted_and_answered_as_documented() {
    let document = served();
    let h = harness();
    let mut todo_id: Option<String> = None;
    let mut ran = Vec::new();
    for (method, path, operation, example) in examples(&document) {
        let what = format!("{} {path}", method.to_uppercase());
        let request_schema = &operation["requestBody"]["content"]["application/json"]["schema"];
        let errors: Vec<String> = validator(&document, request_schema)
            .iter_errors(&example)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{what}: its example {example} breaks its schema: {errors:?}");
        let uri = path
            .replace("{key}", "examples/document")
            .replace("{id}", todo_id.as_deref().unwrap_or("{id} before any todo was created"));
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let reply = h.json(method, &uri, &example.to_string()).await;
        let status = reply.status.as_u16().to_string();
        let documented = &operation["responses"][&status];
        assert!(
            reply.status.is_success() && documented.is_object(),
            "{what}: the example {example} got {status}, not a documented success: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let body = reply.json();
        if let Some(schema) = documented["content"]["application/json"].get("schema") {
            let errors: Vec<String> =
                validator(&document, schema).iter_errors(&body).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{what}: the answer {body} breaks its schema: {errors:?}");
        }
        if path == "/todos" {
            todo_id = body["id"].as_str().map(str::to_owned);
        }
        ran.push(what);
    }
    // Creating and updating todos (PATCH and PUT), storing a document, revoking a token.
    for expected in ["POST /todos", "PATCH /todos/{id}", "PUT /todos/{id}", "PUT /kv/{key}"] {
        assert!(ran.iter().any(|r| r == expected), "no example ran for {expected}: {ran:?}");
    }
    assert!(ran.iter().any(|r| r == "POST /admin/v1/revoke"), "{ran:?}");
}
