//! [`ApiError`]: every way a request can fail, and the one error body they all answer with.

use axum::Json;
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cm_domain::{ExpansionError, FieldError};
use cm_ports::{CancelError, ReportError, RequestError, RetryError, StoreError, SubmitError};
use serde::Serialize;
use utoipa::ToSchema;

/// Why a request failed. Answers `{"error": {"code", "message", "field"?}}` with its status.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 400: a field, parameter or header broke its rule.
    Invalid(FieldError),
    /// 400: the body is not JSON.
    MalformedJson(String),
    /// 401: no, unknown or malformed credentials.
    Unauthorized(String),
    /// 403: valid credentials of the wrong role, or an agent acting for another agent.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 405.
    MethodNotAllowed,
    /// 409: the order is not in a state that allows the change.
    Conflict(String),
    /// 413.
    PayloadTooLarge(usize),
    /// 415.
    UnsupportedMediaType,
    /// 422: a command did not expand into orders.
    Unprocessable(ExpansionError),
    /// 422: a request that follows every rule of the document but that the service's state or
    /// clock refuses, naming the field: a retry's `status` that selects nothing, a
    /// `schedule.start_at` beyond the horizon.
    Refused(FieldError),
    /// 503: storage failed, kept losing a compare-and-set to concurrent writers, or the
    /// request ran out of time; the cause was logged when this value was made.
    Unavailable,
    /// 503: too many long-polls are open.
    Overloaded,
    /// 500: a bug; the cause was logged when this value was made.
    Internal,
}

impl ApiError {
    /// Logs `cause` and answers 503 without echoing it.
    pub(crate) fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "storage unavailable");
        Self::Unavailable
    }

    /// Logs `cause` as contention (concurrent writers, not an outage) and answers 503 without
    /// echoing it: retrying later may succeed.
    pub(crate) fn contention(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "storage contention: retry later");
        Self::Unavailable
    }

    /// Logs `cause` and answers 500 without echoing it.
    pub(crate) fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::Internal
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) | Self::MalformedJson(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable(_) | Self::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn detail(self) -> ErrorDetail {
        let (code, message, field) = match self {
            Self::Invalid(e) => (
                "invalid_field",
                format!("{}: {}", e.field(), e.message()),
                Some(e.field().to_owned()),
            ),
            Self::MalformedJson(why) => (
                "malformed_json",
                format!("body: not valid JSON: {why}"),
                Some("body".to_owned()),
            ),
            Self::Unauthorized(m) => ("unauthorized", m, None),
            Self::Forbidden(m) => ("forbidden", m, None),
            Self::NotFound(m) => ("not_found", m, None),
            Self::MethodNotAllowed => (
                "method_not_allowed",
                "this route does not take this method".to_owned(),
                None,
            ),
            Self::Conflict(m) => ("conflict", m, None),
            Self::PayloadTooLarge(limit) => (
                "payload_too_large",
                format!("the body is larger than {limit} bytes"),
                Some("body".to_owned()),
            ),
            Self::UnsupportedMediaType => (
                "unsupported_media_type",
                "the body must be JSON (Content-Type: application/json)".to_owned(),
                Some("Content-Type".to_owned()),
            ),
            Self::Unprocessable(e) => (
                "unprocessable",
                e.to_string(),
                Some(format!("commands[{}]", e.index())),
            ),
            Self::Refused(e) => (
                "unprocessable",
                format!("{}: {}", e.field(), e.message()),
                Some(e.field().to_owned()),
            ),
            Self::Unavailable => (
                "unavailable",
                "the service cannot reach its storage right now; retry later".to_owned(),
                None,
            ),
            Self::Overloaded => (
                "overloaded",
                "too many long-polls are open; retry later".to_owned(),
                None,
            ),
            Self::Internal => ("internal", "internal error".to_owned(), None),
        };
        ErrorDetail {
            code,
            message,
            field,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let challenge = matches!(self, Self::Unauthorized(_));
        let body = ErrorBody {
            error: self.detail(),
        };
        let mut response = (status, Json(body)).into_response();
        if challenge {
            for scheme in [
                r#"Bearer realm="command-manager""#,
                r#"Basic realm="command-manager", charset="UTF-8""#,
            ] {
                response
                    .headers_mut()
                    .append(WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
            }
        }
        response
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": {
    "code": "invalid_field",
    "message": "commands[1].target.type: must be one of agent, group, server",
    "field": "commands[1].target.type"
}}))]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Machine-readable: `invalid_field`, `malformed_json`, `unauthorized`, `forbidden`,
    /// `not_found`, `method_not_allowed`, `conflict`, `payload_too_large`,
    /// `unsupported_media_type`, `unprocessable`, `unavailable`, `overloaded`, `internal`.
    pub(crate) code: &'static str,
    /// For people; names the field when one is at fault.
    pub(crate) message: String,
    /// The path of the field, parameter or header at fault (`commands[1].timeout`), when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) field: Option<String>,
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        Self::Invalid(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // The input does not fit the backend's schema: the caller's fault, not storage's.
            StoreError::Rejected { field, message, .. } => {
                Self::Invalid(FieldError::new(field, message))
            }
            e @ StoreError::Contention(_) => Self::contention(&e),
            e @ (StoreError::Unavailable(_) | StoreError::Corrupt(_)) => Self::unavailable(&e),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Invalid(e) => Self::Invalid(e),
            SubmitError::TooFarAhead(e) => Self::Refused(e),
            SubmitError::Expansion(e) => Self::Unprocessable(e),
            SubmitError::Unavailable(e) => e.into(),
        }
    }
}

impl From<CancelError> for ApiError {
    fn from(e: CancelError) -> Self {
        match e {
            CancelError::NotFound => Self::NotFound("no such order".to_owned()),
            e @ CancelError::NotPending(_) => Self::Conflict(e.to_string()),
            CancelError::Unavailable(e) => e.into(),
        }
    }
}

impl From<RetryError> for ApiError {
    fn from(e: RetryError) -> Self {
        match e {
            RetryError::Invalid(e) => Self::Invalid(e),
            RetryError::NotFound => Self::NotFound("no such request".to_owned()),
            RetryError::NothingToRetry(status) => Self::Refused(FieldError::new(
                "status",
                format!("no order of the request ended in {status}: nothing to retry"),
            )),
            RetryError::Unavailable(e) => e.into(),
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::NotFound => Self::NotFound("no such request".to_owned()),
            RequestError::State(e) => Self::Conflict(e.to_string()),
            RequestError::Unavailable(e) => e.into(),
        }
    }
}

impl From<ReportError> for ApiError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::NotFound => Self::NotFound("no such order".to_owned()),
            e @ ReportError::NotYours => Self::Forbidden(e.to_string()),
            e @ ReportError::Conflict(_) => Self::Conflict(e.to_string()),
            ReportError::Unavailable(e) => e.into(),
        }
    }
}
