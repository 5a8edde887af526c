//! Following and steering whole requests (docs/rollout.md): progress, the orders of one request,
//! cancel what has not been handed out yet, re-run the orders that ended in a status.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cm_domain::{RequestId, Status};
use cm_ports::{OrderCursor, StatusCounts};
use serde::Serialize;
use utoipa::ToSchema;

use super::commands::{SubmitResponse, SubmittedBody};
use super::orders::OrderPage;
use super::page_size;
use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{NoQuery, Param, QueryParams};
use crate::openapi::schema;

/// How many orders of one request are in each status.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Progress {
    #[schema(value_type = String, format = "uuid")]
    request_id: RequestId,
    total: u64,
    pending: u64,
    sent: u64,
    in_progress: u64,
    success: u64,
    failure: u64,
}

impl Progress {
    fn new(request_id: RequestId, counts: &StatusCounts) -> Self {
        Self {
            request_id,
            total: counts.total(),
            pending: counts.pending,
            sent: counts.sent,
            in_progress: counts.in_progress,
            success: counts.success,
            failure: counts.failure,
        }
    }
}

fn unknown(id: &RequestId) -> ApiError {
    ApiError::NotFound(format!("no request {id}"))
}

/// How many orders of one request are in each status.
#[utoipa::path(
    get,
    path = "/api/v1/requests/{request_id}",
    operation_id = "get_request_progress",
    tag = "requests",
    params(("request_id" = String, Path, format = "uuid", description = "The request's id")),
    responses(
        (status = 200, description = "Per-status counts", body = Progress),
        (status = 400, description = "`request_id` is not a UUID, or a query parameter was given", body = ErrorBody),
        (status = 404, description = "No order has this request id", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn progress(
    State(state): State<AppState>,
    Param(id): Param<RequestId>,
    _: NoQuery,
) -> Result<Json<Progress>, ApiError> {
    let counts = state
        .manager()
        .progress(&id)
        .await?
        .ok_or_else(|| unknown(&id))?;
    Ok(Json(Progress::new(id, &counts)))
}

/// The orders of one request (in one status when given), oldest first, paged: "which 9 of
/// 15,000 failed, and why".
#[utoipa::path(
    get,
    path = "/api/v1/requests/{request_id}/orders",
    operation_id = "list_request_orders",
    tag = "requests",
    params(
        ("request_id" = String, Path, format = "uuid", description = "The request's id"),
        ("status" = Option<schema::Status>, Query, description = "Only orders in this status"),
        ("size" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "Page size, default 100"),
        ("after" = Option<String>, Query, format = "order-cursor", description = "The `next` cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "One page of the request's orders", body = OrderPage),
        (status = 400, description = "A parameter out of its rule, or an unknown parameter", body = ErrorBody),
        (status = 404, description = "No order has this request id", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn orders(
    State(state): State<AppState>,
    Param(id): Param<RequestId>,
    query: QueryParams,
) -> Result<Json<OrderPage>, ApiError> {
    let q = query.only(&["status", "size", "after"])?;
    let status = q.parse("status", |r| Status::parse(r, "status"))?;
    let size = page_size(&q)?;
    let after = q.parse("after", |r| OrderCursor::decode(r, "after"))?;
    let page = state
        .manager()
        .request_orders(&id, status, size, after)
        .await?
        .ok_or_else(|| unknown(&id))?;
    Ok(Json(page.into()))
}

/// Cancels every still-pending order of a request (each ends as `failure` with the message
/// `cancelled`) and answers the per-status counts after the change. Orders already handed out
/// are not taken back.
#[utoipa::path(
    post,
    path = "/api/v1/requests/{request_id}/cancel",
    operation_id = "cancel_request",
    tag = "requests",
    params(("request_id" = String, Path, format = "uuid", description = "The request's id")),
    responses(
        (status = 200, description = "Per-status counts after the cancel", body = Progress),
        (status = 400, description = "`request_id` is not a UUID, or a query parameter was given", body = ErrorBody),
        (status = 404, description = "No order has this request id", body = ErrorBody),
        (status = 503, description = "Storage unavailable; orders cancelled before the failure stay cancelled, the cancel may be repeated", body = ErrorBody),
    )
)]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Param(id): Param<RequestId>,
    _: NoQuery,
) -> Result<Json<Progress>, ApiError> {
    let manager = state.manager().clone();
    // Detached, so a cancel that has started completes even when the client goes away.
    let counts = tokio::spawn(async move { manager.cancel_request(&id).await })
        .await
        .map_err(|e| ApiError::internal(&e))??
        .ok_or_else(|| unknown(&id))?;
    Ok(Json(Progress::new(id, &counts)))
}

/// Re-runs a request: a new request with one order for each target whose order ended in
/// `status` (default `failure`): same action, source, user and timeout, new ids, and
/// `command.retry_of` set to this request's id. Its orders may be handed out at once. Answers
/// like a submit.
#[utoipa::path(
    post,
    path = "/api/v1/requests/{request_id}/retry",
    operation_id = "retry_request",
    tag = "requests",
    params(
        ("request_id" = String, Path, format = "uuid", description = "The request to re-run"),
        ("status" = Option<schema::RetryStatus>, Query, description = "Re-run the targets whose order ended in this status: `failure` (default) or `success`"),
    ),
    responses(
        (status = 201, description = "The new request and its orders", body = SubmitResponse),
        (status = 400, description = "`request_id` is not a UUID, or `status` is not success or failure, or an unknown parameter", body = ErrorBody),
        (status = 404, description = "No order has this request id", body = ErrorBody),
        (status = 422, description = "No order of the request ended in `status`: nothing was written", body = ErrorBody),
        (status = 503, description = "Storage unavailable; nothing is acknowledged", body = ErrorBody),
    )
)]
pub(crate) async fn retry(
    State(state): State<AppState>,
    Param(id): Param<RequestId>,
    query: QueryParams,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    let q = query.only(&["status"])?;
    let status = q
        .parse("status", |r| Status::parse(r, "status"))?
        .unwrap_or(Status::Failure);
    let manager = state.manager().clone();
    // Detached like a submit: once it writes, it completes or undoes its writes.
    let retried = tokio::spawn(async move { manager.retry_request(&id, status).await })
        .await
        .map_err(|e| ApiError::internal(&e))??;
    Ok((
        StatusCode::CREATED,
        Json(SubmitResponse {
            requests: vec![SubmittedBody {
                request_id: retried.request_id,
                order_ids: retried.order_ids,
            }],
        }),
    ))
}
