//! Extractors that answer bad input in our problem shape instead of axum's plain text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::problem::ApiError;
use crate::service::IfMatch;

/// A JSON request body: 415 without a JSON content type, 413 over the body limit,
/// 400 when it does not parse into `T`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let RawJson(bytes) = RawJson::from_request(request, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|error| ApiError::BadRequest(format!("invalid JSON body: {error}")))
    }
}

/// A request body that must be one JSON document, kept as the bytes sent.
pub struct RawJson(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawJson {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "the body must be JSON, sent with Content-Type: application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("the request body is over the size limit".into())
            } else {
                ApiError::BadRequest(rejection.body_text())
            }
        })?;
        crate::model::json::check_document(&bytes)
            .map_err(|error| ApiError::BadRequest(format!("invalid JSON body: {error}")))?;
        Ok(RawJson(bytes))
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Query parameters: 400 naming the parameter when they do not parse.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded_from_str(query)
            .map(Query)
            .map_err(|error| ApiError::BadRequest(format!("invalid query string: {error}")))
    }
}

fn serde_urlencoded_from_str<T: DeserializeOwned>(query: &str) -> Result<T, String> {
    axum::extract::Query::<T>::try_from_uri(&format!("/?{query}").parse().map_err(|_| "bad uri")?)
        .map(|axum::extract::Query(value)| value)
        .map_err(|rejection| rejection.body_text())
}

/// A path segment or wildcard, percent-decoded: 400 when it is not UTF-8.
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PathParam(value))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}

/// Parses `If-Match`: `*` or a comma-separated list of entity tags.
pub fn if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(None) };
    // A value that is neither `*` nor a list of entity tags matches no version: the
    // condition is false (RFC 9110 §13.1.1), so 412, with a detail that says why.
    let unmet = |why: String| {
        ApiError::PreconditionFailed(format!("If-Match {why}: it matches no version"))
    };
    let text = value.to_str().map_err(|_| unmet("is not visible ASCII".into()))?.trim();
    if text.is_empty() {
        return Err(ApiError::BadRequest("If-Match is empty; send `*` or entity tags".into()));
    }
    if text == "*" {
        return Ok(Some(IfMatch::Any));
    }
    let tags =
        entity_tags(text).ok_or_else(|| unmet(format!("{text:?} is not a list of entity tags")))?;
    Ok(Some(IfMatch::OneOf(tags)))
}

/// Does `If-None-Match` match the current tag (weak comparison, RFC 9110 §13.1.2)?
pub fn if_none_match_hits(headers: &HeaderMap, current: &str) -> bool {
    let Some(text) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let text = text.trim();
    text == "*"
        || entity_tags(text)
            .unwrap_or_default()
            .iter()
            .any(|tag| tag.trim_start_matches("W/") == current)
}

fn entity_tags(text: &str) -> Option<Vec<String>> {
    let tags: Vec<String> = text.split(',').map(|tag| tag.trim().to_owned()).collect();
    let well_formed = tags.iter().all(|tag| {
        let opaque = tag.strip_prefix("W/").unwrap_or(tag);
        opaque.len() >= 2 && opaque.starts_with('"') && opaque.ends_with('"')
    });
    well_formed.then_some(tags)
}
