//! The pages: one module per area, each handler calling use cases and rendering with
//! [`crate::view`].

pub(crate) mod fleet;
pub(crate) mod new;
pub(crate) mod requests;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cm_ports::StoreError;

use crate::view;

/// Why a page could not be shown.
#[derive(Debug)]
pub(crate) enum PageError {
    NotFound(&'static str),
    /// A parameter is malformed; the message says which and how.
    Bad(String),
    /// The request's state does not allow the step.
    Conflict(String),
    /// Storage failed (the cause is logged, never shown).
    Unavailable,
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "console page failed on storage");
        Self::Unavailable
    }
}

impl From<cm_domain::FieldError> for PageError {
    fn from(e: cm_domain::FieldError) -> Self {
        Self::Bad(e.to_string())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            Self::NotFound(what) => view::error_page(StatusCode::NOT_FOUND, what).into_response(),
            Self::Bad(m) => view::error_page(StatusCode::BAD_REQUEST, &m).into_response(),
            Self::Conflict(m) => view::error_page(StatusCode::CONFLICT, &m).into_response(),
            Self::Unavailable => view::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Storage is unavailable right now; try again in a moment.",
            )
            .into_response(),
        }
    }
}

/// A query value that is absent or empty reads as `None`.
pub(crate) fn given(v: Option<&String>) -> Option<&str> {
    v.map(|s| s.trim()).filter(|s| !s.is_empty())
}

/// A page size: `raw` when given, else `default`, within 1..=[`crate::MAX_LIST`].
pub(crate) fn size(raw: Option<&String>, default: usize) -> Result<usize, PageError> {
    match given(raw) {
        None => Ok(default),
        Some(s) => s
            .parse::<usize>()
            .map(|n| n.clamp(1, crate::MAX_LIST))
            .map_err(|_| PageError::Bad("size: must be a number".to_owned())),
    }
}
