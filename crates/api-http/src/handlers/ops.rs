//! Operations: health, readiness, metrics, the OpenAPI document, and the answers to unknown
//! routes and methods.

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::NoQuery;

/// A liveness or readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// The process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Alive", body = Health),
        (status = 400, description = "A query parameter was given", body = ErrorBody),
    )
)]
pub(crate) async fn healthz(_: NoQuery) -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Storage is reachable.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 400, description = "A query parameter was given", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn readyz(
    State(state): State<AppState>,
    _: NoQuery,
) -> Result<Json<Health>, ApiError> {
    state.manager().ready().await?;
    Ok(Json(Health { status: "ready" }))
}

/// The Prometheus text exposition of the service's metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 400, description = "A query parameter was given", body = ErrorBody),
        (status = 404, description = "Metrics are not enabled", body = ErrorBody),
    )
)]
pub(crate) async fn metrics(
    State(state): State<AppState>,
    _: NoQuery,
) -> Result<Response, ApiError> {
    let handle = state
        .metrics()
        .ok_or_else(|| ApiError::NotFound("metrics are not enabled".to_owned()))?;
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        handle.render(),
    )
        .into_response())
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI document of this API", content_type = "application/json"),
        (status = 400, description = "A query parameter was given", body = ErrorBody),
    )
)]
pub(crate) async fn openapi(State(state): State<AppState>, _: NoQuery) -> Response {
    let document = state.openapi_document().to_owned();
    ([(CONTENT_TYPE, "application/json")], document).into_response()
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".to_owned())
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
