//! Every error the HTTP layer sends, and the one table that maps them to statuses.
//! Bodies are RFC 9457 `application/problem+json`; 5xx details are logged, not sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::service::ServiceError;

#[derive(Debug)]
pub enum ApiError {
    /// Malformed JSON, wrong types, bad query or header syntax.
    BadRequest(String),
    /// Well-formed input that breaks a rule; names the field.
    Validation {
        field: &'static str,
        message: String,
    },
    NotFound(String),
    /// 410: a watch resume point this node no longer has (the client lists again).
    Gone(String),
    MethodNotAllowed,
    Conflict(String),
    /// 412: the detail says why (a version that changed, or an If-Match that names none).
    PreconditionFailed(String),
    PayloadTooLarge(String),
    UnsupportedMediaType(String),
    /// A peer request without the cluster key.
    Unauthorized,
    /// A client request without a valid token (the detail says what was wrong).
    NoToken(String),
    /// The client's token does not permit this (the detail names the permission).
    Forbidden(String),
    /// The client went over its rate limit; retry after this many seconds.
    TooManyRequests {
        retry_after_secs: u64,
        limit: u32,
    },
    /// The request (its body, say) took longer than the limit.
    RequestTimeout,
    /// No cluster key and listening beyond loopback: peer routes are closed.
    PeersClosed,
    /// The node has not joined and synced yet.
    NotReady,
    /// The node is still opening its data directory (only `/health/live` answers).
    Starting,
    /// The disk is full: the write was refused and nothing changed.
    StorageFull,
    /// The store cannot write (failing I/O) or is reopening after a fault.
    StorageUnavailable,
    /// A peer this node called on the client's behalf failed (the detail names it).
    BadGateway(String),
    /// Anything else; the detail goes to the log only.
    Internal(String),
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem this is.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// For validation failures: the fields at fault.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FieldProblem {
    pub field: &'static str,
    pub message: String,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthorized | ApiError::NoToken(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PeersClosed => StatusCode::FORBIDDEN,
            ApiError::NotReady | ApiError::Starting => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn detail(&self) -> String {
        match self {
            ApiError::BadRequest(detail)
            | ApiError::NotFound(detail)
            | ApiError::Conflict(detail)
            | ApiError::PayloadTooLarge(detail)
            | ApiError::UnsupportedMediaType(detail)
            | ApiError::NoToken(detail)
            | ApiError::Forbidden(detail)
            | ApiError::BadGateway(detail)
            | ApiError::PreconditionFailed(detail)
            | ApiError::Gone(detail) => detail.clone(),
            ApiError::TooManyRequests { retry_after_secs, limit } => format!(
                "over the rate limit of {limit} requests at once; retry in {retry_after_secs} s"
            ),
            ApiError::Validation { field, message } => format!("{field}: {message}"),
            ApiError::MethodNotAllowed => "this route does not take that method".into(),
            ApiError::Unauthorized => {
                "this route needs a request signed with the cluster key".into()
            }
            ApiError::RequestTimeout => format!(
                "the request took longer than {} s (a body sent too slowly?)",
                super::REQUEST_TIMEOUT.as_secs()
            ),
            ApiError::PeersClosed => "this node has no cluster key and listens beyond loopback, \
                 so its peer routes are closed (set cluster.key_file on every node)"
                .into(),
            ApiError::NotReady => {
                "the node has not finished joining and syncing; retry shortly".into()
            }
            ApiError::StorageFull => "the node's disk is full: this write was not kept; \
                 reads still work, and writes resume by themselves once there is room"
                .into(),
            ApiError::StorageUnavailable => "the node's storage is failing or reopening: \
                 this request was not carried out; retry shortly"
                .into(),
            ApiError::Starting => "the node is opening its data directory; retry shortly".into(),
            ApiError::Internal(_) => "internal error; see the node's log".into(),
        }
    }
}

impl ApiError {
    /// Converts a service error, naming the missing resource precisely on a 404.
    pub fn from_service(error: ServiceError, not_found: impl FnOnce() -> ApiError) -> ApiError {
        match error {
            ServiceError::NotFound => not_found(),
            other => ApiError::from(other),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::NotFound => ApiError::NotFound("no such resource".into()),
            ServiceError::Conflict(detail) => ApiError::Conflict(detail),
            ServiceError::ClockBehind(behind) => ApiError::Conflict(behind.to_string()),
            ServiceError::PreconditionFailed => ApiError::PreconditionFailed(
                "the resource's current version does not match If-Match".into(),
            ),
            ServiceError::Invalid(field) => {
                ApiError::Validation { field: field.field, message: field.message }
            }
            ServiceError::Store(error) if error.is_storage_full() => ApiError::StorageFull,
            ServiceError::Store(error) if error.fault().is_some() => ApiError::StorageUnavailable,
            ServiceError::Store(error) => ApiError::Internal(error.to_string()),
            ServiceError::Interrupted => ApiError::Internal("interrupted".into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "request failed");
        } else if status.is_server_error()
            && !matches!(self, ApiError::StorageFull | ApiError::StorageUnavailable)
        {
            // (a storage fault is logged once by the store, not once per refused request)
            tracing::warn!(detail = %self.detail(), "request refused");
        }
        let errors = match &self {
            ApiError::Validation { field, message } => {
                vec![FieldProblem { field, message: message.clone() }]
            }
            _ => Vec::new(),
        };
        let problem = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.detail(),
            errors,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if matches!(
            self,
            ApiError::NotReady
                | ApiError::Starting
                | ApiError::StorageUnavailable
                | ApiError::StorageFull
        ) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        match &self {
            ApiError::NoToken(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::TooManyRequests { retry_after_secs, limit } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
                headers.insert("ratelimit-limit", HeaderValue::from(*limit));
                headers.insert("ratelimit-remaining", HeaderValue::from_static("0"));
                headers.insert("ratelimit-reset", HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        response
    }
}
