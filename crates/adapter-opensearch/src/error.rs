//! Translation of OpenSearch failures into [`StoreError`]: no `opensearch` type crosses the
//! port.

use std::fmt;

use cm_ports::{ReplaceError, StoreError};
use serde_json::Value;

/// The error `type`s of OpenSearch this adapter tells apart.
pub(crate) mod kind {
    /// A conditional write lost (`if_seq_no`), or a `create` found the id taken (409).
    pub(crate) const VERSION_CONFLICT: &str = "version_conflict_engine_exception";
    /// A document did not fit the index mapping (400): retrying cannot help.
    pub(crate) const MAPPER_PARSING: &str = "mapper_parsing_exception";
    /// An `_update` without upsert on a document that does not exist (404).
    pub(crate) const DOCUMENT_MISSING: &str = "document_missing_exception";
    /// An index (or template) that should exist does not (404).
    pub(crate) const INDEX_NOT_FOUND: &str = "index_not_found_exception";
    /// Creating an index that another instance created meanwhile (400).
    pub(crate) const INDEX_EXISTS: &str = "resource_already_exists_exception";
}

/// What went wrong talking to OpenSearch, before it is translated at the port.
#[derive(Debug)]
pub(crate) enum OsError {
    /// No usable answer: connection refused or reset, DNS, TLS, a timeout.
    Transport(String),
    /// OpenSearch answered with an error status.
    Status {
        status: u16,
        kind: String,
        reason: String,
    },
    /// OpenSearch answered 2xx with something this adapter cannot read.
    Decode(String),
}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transport(e) => write!(f, "opensearch unreachable: {e}"),
            Self::Status {
                status,
                kind,
                reason,
            } => write!(f, "opensearch answered {status} {kind}: {reason}"),
            Self::Decode(e) => write!(f, "unexpected opensearch answer: {e}"),
        }
    }
}

impl OsError {
    /// From an error answer: `{"error": {"type", "reason"}, "status"}` (or any other body).
    pub(crate) fn from_answer(status: u16, body: &Value) -> Self {
        let (kind, reason) = error_of(body);
        Self::Status {
            status,
            kind,
            reason,
        }
    }

    pub(crate) fn is_kind(&self, wanted: &str) -> bool {
        matches!(self, Self::Status { kind, .. } if kind == wanted)
    }
}

/// The `type` and `reason` of an error object (a whole answer, or one bulk item's `error`).
pub(crate) fn error_of(body: &Value) -> (String, String) {
    let error = body.get("error").unwrap_or(body);
    match error {
        Value::String(s) => (String::new(), s.clone()),
        other => {
            let kind = other["type"].as_str().unwrap_or_default().to_owned();
            let mut reason = other["reason"].as_str().unwrap_or_default().to_owned();
            if let Some(cause) = other["caused_by"]["reason"].as_str() {
                reason = format!("{reason} (caused by: {cause})");
            }
            if kind.is_empty() && reason.is_empty() {
                reason = truncate(&other.to_string(), 300);
            }
            (kind, reason)
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Whether a failed status (of a request or one bulk item) may succeed when retried:
/// overload (429), a timeout (408) or a server-side failure (5xx).
pub(crate) const fn is_retryable(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

/// The one place an [`OsError`] becomes a [`StoreError`]: `Unavailable` for anything a retry
/// may cure (transport failures, timeouts, 429, 5xx, refused credentials), `Corrupt` for
/// answers, documents or index layouts this adapter cannot interpret or that refuse its
/// documents (other 4xx).
impl From<OsError> for StoreError {
    fn from(err: OsError) -> Self {
        match &err {
            OsError::Transport(_) => Self::Unavailable(err.to_string()),
            OsError::Status { status, .. }
                if is_retryable(*status) || *status == 401 || *status == 403 =>
            {
                Self::Unavailable(err.to_string())
            }
            OsError::Status { .. } | OsError::Decode(_) => Self::Corrupt(err.to_string()),
        }
    }
}

impl From<OsError> for ReplaceError {
    fn from(err: OsError) -> Self {
        Self::Store(err.into())
    }
}

/// A document this adapter cannot read as what it should be.
pub(crate) fn corrupt(what: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn overload_and_server_failures_are_unavailable() {
        for status in [408, 429, 500, 502, 503, 401, 403] {
            let err = OsError::from_answer(status, &json!({"error": {"type": "x", "reason": "y"}}));
            assert!(
                matches!(StoreError::from(err), StoreError::Unavailable(_)),
                "{status}"
            );
        }
        assert!(matches!(
            StoreError::from(OsError::Transport("connection refused".into())),
            StoreError::Unavailable(_)
        ));
    }

    #[test]
    fn refused_documents_and_odd_answers_are_corrupt() {
        let err = OsError::from_answer(
            400,
            &json!({"error": {"type": kind::MAPPER_PARSING, "reason": "failed to parse",
                              "caused_by": {"reason": "For input string"}}, "status": 400}),
        );
        assert!(err.is_kind(kind::MAPPER_PARSING));
        let StoreError::Corrupt(message) = StoreError::from(err) else {
            panic!("corrupt expected");
        };
        assert!(
            message.contains("failed to parse (caused by: For input string)"),
            "{message}"
        );
        assert!(matches!(
            StoreError::from(OsError::Decode("no hits".into())),
            StoreError::Corrupt(_)
        ));
    }
}
