//! Extractors whose rejection is [`ApiError`], so a bad body, path or query string gets our
//! error body naming what is wrong.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use cm_domain::{AgentId, ComponentName, FieldError, OrderId, RequestId};
use serde_json::Value;

use crate::AppState;
use crate::error::ApiError;

/// A JSON request body, parsed but not yet validated: DTO functions walk it and name the
/// field at fault. Requires a JSON content type (415) and honours the body limit (413).
#[derive(Debug)]
pub(crate) struct JsonBody(pub(crate) Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(state.settings().max_body_bytes)
            } else {
                ApiError::MalformedJson(rejection.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|e| ApiError::MalformedJson(e.to_string()))
    }
}

/// `application/json` or `application/<anything>+json`, with any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

/// A value taken from the one parameter of a route's path.
pub(crate) trait PathValue: Sized {
    /// The parameter's name in the route template, used as the field of errors.
    const NAME: &'static str;

    /// # Errors
    /// A [`FieldError`] on [`Self::NAME`].
    fn parse(raw: &str) -> Result<Self, FieldError>;
}

impl PathValue for OrderId {
    const NAME: &'static str = "order_id";

    fn parse(raw: &str) -> Result<Self, FieldError> {
        Self::parse(raw, Self::NAME)
    }
}

impl PathValue for RequestId {
    const NAME: &'static str = "request_id";

    fn parse(raw: &str) -> Result<Self, FieldError> {
        Self::parse(raw, Self::NAME)
    }
}

impl PathValue for ComponentName {
    const NAME: &'static str = "component";

    fn parse(raw: &str) -> Result<Self, FieldError> {
        Self::parse(raw, Self::NAME)
    }
}

impl PathValue for AgentId {
    const NAME: &'static str = "agent_id";

    fn parse(raw: &str) -> Result<Self, FieldError> {
        Self::parse(raw, Self::NAME)
    }
}

/// The route's single path parameter, validated (400 naming the parameter).
#[derive(Debug)]
pub(crate) struct Param<T>(pub(crate) T);

impl<S: Send + Sync, T: PathValue> FromRequestParts<S> for Param<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| FieldError::new(T::NAME, rejection.body_text()))?;
        Ok(Self(T::parse(&raw)?))
    }
}

/// The query string's parameters, checked against the names a route knows: an unknown or
/// repeated parameter answers 400 naming it.
#[derive(Debug)]
pub(crate) struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| FieldError::new("query", rejection.body_text()))?;
        Ok(Self(pairs))
    }
}

impl QueryParams {
    /// Refuses any parameter outside `known`, and any given twice.
    ///
    /// # Errors
    /// A [`FieldError`] on the first such parameter.
    pub(crate) fn only(self, known: &[&str]) -> Result<Params, FieldError> {
        for (i, (name, _)) in self.0.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                let message = if known.is_empty() {
                    "is not a known parameter (this route takes none)".to_owned()
                } else {
                    format!("is not a known parameter (known: {})", known.join(", "))
                };
                return Err(FieldError::new(name.clone(), message));
            }
            if self.0[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(FieldError::new(name.clone(), "must be given at most once"));
            }
        }
        Ok(Params(self.0))
    }
}

/// The query string of a route that takes no parameters: any parameter answers 400 naming it,
/// so a misspelt or misplaced one (`?status=` on a route that ignores it) is never silently
/// dropped.
#[derive(Debug)]
pub(crate) struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        QueryParams::from_request_parts(parts, state)
            .await?
            .only(&[])?;
        Ok(Self)
    }
}

/// Checked query parameters.
#[derive(Debug)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// The raw value of `name`, when given.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `name` parsed by `parse`, when given.
    ///
    /// # Errors
    /// Whatever `parse` refuses.
    pub(crate) fn parse<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, FieldError>,
    ) -> Result<Option<T>, FieldError> {
        self.get(name).map(parse).transpose()
    }

    /// `name` as an integer in `min..=max`, when given.
    ///
    /// # Errors
    /// A [`FieldError`] on `name` when it is not such an integer.
    pub(crate) fn int(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, FieldError> {
        self.parse(name, |raw| {
            // Decimal digits only: `u64::from_str` would also take a leading `+`.
            Some(raw)
                .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|r| r.parse::<u64>().ok())
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    FieldError::new(name, format!("must be an integer from {min} to {max}"))
                })
        })
    }
}
