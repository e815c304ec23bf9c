//! Extractors that answer bad input in our problem shape instead of axum's plain text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::problem::ApiError;
use crate::service::IfMatch;

/// The one TTL syntax of the API: `^[1-9][0-9]{0,5}(ms|s|m|h|d)$` (`30s`, `15m`, `7d`),
/// so that every string the schema allows is a TTL the server takes. The schema
/// attributes repeat it as a literal (they take no constants); the tests hold the two
/// together.
#[cfg(test)]
pub const TTL_PATTERN: &str = "^[1-9][0-9]{0,5}(ms|s|m|h|d)$";

/// Parses a TTL written as [`TTL_PATTERN`] says; 422 naming `field` otherwise.
pub fn ttl(field: &'static str, text: &str) -> Result<std::time::Duration, ApiError> {
    let invalid = || ApiError::Validation {
        field,
        message: format!(
            "{text:?} is not a duration: write a number of 1 to 6 digits and a unit, \
             ms, s, m, h or d (e.g. 30s)"
        ),
    };
    let digits = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
    let (number, unit) = text.split_at(digits);
    if number.is_empty() || number.len() > 6 || number.starts_with('0') {
        return Err(invalid());
    }
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    Ok(std::time::Duration::from_millis(number * unit_ms))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ttl_takes_a_number_and_a_unit_only() {
        assert_eq!(ttl("t", "30s").unwrap(), std::time::Duration::from_secs(30));
        assert_eq!(ttl("t", "250ms").unwrap(), std::time::Duration::from_millis(250));
        assert_eq!(ttl("t", "999999d").unwrap(), std::time::Duration::from_secs(999_999 * 86_400));
        for bad in
            ["", "0s", "01s", "1", "s", "1.5s", "1sec", "1 s", " 1s", "+1s", "1000000s", "1S"]
        {
            assert!(ttl("t", bad).is_err(), "{bad:?} was taken");
        }
    }

    proptest! {
        /// Whatever the documented pattern allows, the server takes (schemathesis relies
        /// on it), and the largest is within the service's limit.
        #[test]
        fn every_ttl_the_pattern_allows_is_taken(
            text in TTL_PATTERN.trim_start_matches('^').trim_end_matches('$')
        ) {
            let parsed = ttl("t", &text);
            prop_assert!(parsed.is_ok(), "{:?} refused", text);
            prop_assert!(crate::service::check_ttl("t", parsed.unwrap()).is_ok());
        }
    }
}
