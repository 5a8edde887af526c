//! Requests as records (docs/requests.md, docs/rollout.md): list them, read one with its counts,
//! the orders of one request and the breakdown of their results, pause, resume, cancel what has
//! not been handed out yet, re-run the orders that ended in a status.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cm_domain::time::format_millis;
use cm_domain::{
    FieldError, RateControl, RecordedSchedule, RequestId, RequestState, Source, Status, TargetType,
};
use cm_ports::{OrderCursor, RequestCursor, RequestFilter, RequestView, ResultGroup, StatusCounts};
use serde::Serialize;
use utoipa::ToSchema;

use super::commands::{SubmitResponse, SubmittedBody};
use super::orders::{OrderPage, text, time};
use super::page_size;
use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{NoQuery, Param, QueryParams};
use crate::openapi::schema;

/// A request: its record (what was asked, by whom, with which rollout, and where it stands) and
/// the counts of its orders. A request submitted before records existed has only the counts.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RequestBody {
    #[schema(value_type = String, format = "uuid")]
    request_id: RequestId,
    /// When it was submitted (absent for a request without a record).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    created_at: Option<String>,
    /// When its record last changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    updated_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    source: Option<Source>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    /// The target as submitted: the group, not its members.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<schema::Target>)]
    target: Option<cm_domain::Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<schema::RequestAction>)]
    action: Option<cm_domain::RequestAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<schema::ScheduleBody>)]
    schedule: Option<RecordedSchedule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<schema::RateControlBody>)]
    rate_control: Option<RateControl>,
    /// The request this one re-runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = "uuid")]
    retry_of: Option<RequestId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<schema::RequestStateName>)]
    state: Option<RequestState>,
    /// Why it stopped (`error budget exhausted`, `held too long`) or was aborted.
    #[serde(skip_serializing_if = "Option::is_none")]
    state_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    finished_at: Option<String>,
    total: u64,
    pending: u64,
    sent: u64,
    in_progress: u64,
    success: u64,
    failure: u64,
    /// Failures of the action (by a report or `no result`); what `max_errors` counts.
    errors: u64,
}

impl From<RequestView> for RequestBody {
    fn from(v: RequestView) -> Self {
        let c = v.counts;
        let r = v.record;
        let r = r.as_ref();
        #[allow(clippy::cast_possible_truncation)]
        Self {
            request_id: v.request_id,
            created_at: r.map(|r| format_millis(&r.created_at())),
            updated_at: r.map(|r| format_millis(&r.updated_at())),
            source: r.map(cm_domain::RequestRecord::source),
            user: r.and_then(|r| r.user().map(str::to_owned)),
            target: r.map(|r| r.target().clone()),
            action: r.map(|r| r.action().clone()),
            timeout: r.map(|r| r.timeout().duration().num_seconds() as u16),
            schedule: r.and_then(|r| r.schedule().copied()),
            rate_control: r.and_then(|r| r.rate_control().copied()),
            retry_of: r.and_then(|r| r.retry_of().copied()),
            state: r.map(cm_domain::RequestRecord::state),
            state_reason: r.and_then(|r| r.state_reason().map(str::to_owned)),
            finished_at: r.and_then(|r| r.finished_at().map(|t| format_millis(&t))),
            total: c.total(),
            pending: c.pending,
            sent: c.sent,
            in_progress: c.in_progress,
            success: c.success,
            failure: c.failure,
            errors: c.errors,
        }
    }
}

/// One page of requests, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RequestPage {
    requests: Vec<RequestBody>,
    /// Pass as `after` to read the next page; `null` on the last page.
    #[schema(required = true, format = "order-cursor")]
    next: Option<String>,
}

/// The finished orders of a request that ended alike.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ResultGroupBody {
    #[schema(value_type = schema::Status)]
    status: Status,
    code: i16,
    message: String,
    count: u64,
    /// Up to 10 target ids of the group's orders, in ascending order.
    sample: Vec<String>,
}

/// What went wrong (and right): the finished orders grouped by status, result code and message,
/// largest group first, at most 100 groups.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ResultGroupsBody {
    groups: Vec<ResultGroupBody>,
}

impl From<ResultGroup> for ResultGroupBody {
    fn from(g: ResultGroup) -> Self {
        Self {
            status: g.status,
            code: g.code,
            message: g.message,
            count: g.count,
            sample: g.sample,
        }
    }
}

const LIST_PARAMS: &[&str] = &[
    "state",
    "action",
    "user",
    "source",
    "target_type",
    "target_id",
    "since",
    "until",
    "size",
    "after",
];

/// Requests matching every filter given, newest first (`created_at`, then `request_id`), each
/// with the counts of its orders, paged.
#[utoipa::path(
    get,
    path = "/api/v1/requests",
    operation_id = "list_requests",
    tag = "requests",
    params(
        ("state" = Option<schema::RequestStateName>, Query, description = "Only requests in this state"),
        ("action" = Option<String>, Query, format = "required-keyword", description = "Only requests of this action name"),
        ("user" = Option<String>, Query, format = "required-keyword", description = "Only requests submitted by this user"),
        ("source" = Option<String>, Query, format = "source", description = "Only requests from this source, in any case"),
        ("target_type" = Option<String>, Query, format = "target-type", description = "Only requests with this target type as submitted (agent, group, server), in any case"),
        ("target_id" = Option<String>, Query, format = "required-keyword", description = "Only requests with this target id as submitted (a group's name, not its members)"),
        ("since" = Option<String>, Query, format = DateTime, description = "Only requests submitted at or after this time (RFC 3339)"),
        ("until" = Option<String>, Query, format = DateTime, description = "Only requests submitted before this time (RFC 3339)"),
        ("size" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "Page size, default 100"),
        ("after" = Option<String>, Query, format = "order-cursor", description = "The `next` cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "One page of requests", body = RequestPage),
        (status = 400, description = "A parameter out of its rule, or an unknown parameter", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<RequestPage>, ApiError> {
    let q = query.only(LIST_PARAMS)?;
    let filter = RequestFilter {
        state: q.parse("state", |r| RequestState::parse(r, "state"))?,
        action: q.parse("action", |r| text(r, "action"))?,
        user: q.parse("user", |r| text(r, "user"))?,
        source: q.parse("source", |r| {
            Source::parse(r).map_err(|e| FieldError::new("source", e.message()))
        })?,
        target_type: q.parse("target_type", |r| {
            TargetType::parse(r).map_err(|e| FieldError::new("target_type", e.message()))
        })?,
        target_id: q.parse("target_id", |r| text(r, "target_id"))?,
        since: q.parse("since", |r| time(r, "since"))?,
        until: q.parse("until", |r| time(r, "until"))?,
    };
    let size = page_size(&q)?;
    let after = q.parse("after", |r| RequestCursor::decode(r, "after"))?;
    let page = state.manager().requests(&filter, size, after).await?;
    Ok(Json(RequestPage {
        requests: page.items.into_iter().map(RequestBody::from).collect(),
        next: page.next.map(|c| c.encode()),
    }))
}

/// Holds every order of the request not handed out yet; orders already out finish normally.
#[utoipa::path(
    post,
    path = "/api/v1/requests/{request_id}/pause",
    operation_id = "pause_request",
    tag = "requests",
    params(("request_id" = String, Path, format = "uuid", description = "The request's id")),
    responses(
        (status = 200, description = "The request, paused", body = RequestBody),
        (status = 400, description = "`request_id` is not a UUID, or a query parameter was given", body = ErrorBody),
        (status = 404, description = "No request record has this id (requests submitted before records existed cannot be paused)", body = ErrorBody),
        (status = 409, description = "The request is finished (or still being written)", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn pause(
    State(state): State<AppState>,
    Param(id): Param<RequestId>,
    _: NoQuery,
) -> Result<Json<RequestBody>, ApiError> {
    let view = state.manager().pause_request(&id).await?;
    Ok(Json(view.into()))
}

/// Lets a paused request's orders go out again, under its rate control.
#[utoipa::path(
    post,
    path = "/api/v1/requests/{request_id}/resume",
    operation_id = "resume_request",
    tag = "requests",
    params(("request_id" = String, Path, format = "uuid", description = "The request's id")),
    responses(
        (status = 200, description = "The request, running (or scheduled) again", body = RequestBody),
        (status = 400, description = "`request_id` is not a UUID, or a query parameter was given", body = ErrorBody),
        (status = 404, description = "No request record has this id", body = ErrorBody),
        (status = 409, description = "The request is finished (or still being written)", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn resume(
    State(state): State<AppState>,
    Param(id): Param<RequestId>,
    _: NoQuery,
) -> Result<Json<RequestBody>, ApiError> {
    let manager = state.manager().clone();
    // Detached: a resume wakes the request's agents page by page.
    let view = tokio::spawn(async move { manager.resume_request(&id).await })
        .await
        .map_err(|e| ApiError::internal(&e))??;
    Ok(Json(view.into()))
}

/// The finished orders of a request grouped by how they ended: "9 failed with code 7 disk
/// full: a17, a93, …", largest group first.
#[utoipa::path(
    get,
    path = "/api/v1/requests/{request_id}/results",
    operation_id = "request_results",
    tag = "requests",
    params(("request_id" = String, Path, format = "uuid", description = "The request's id")),
    responses(
        (status = 200, description = "The result groups", body = ResultGroupsBody),
        (status = 400, description = "`request_id` is not a UUID, or a query parameter was given", body = ErrorBody),
        (status = 404, description = "No request has this id", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn results(
    State(state): State<AppState>,
    Param(id): Param<RequestId>,
    _: NoQuery,
) -> Result<Json<ResultGroupsBody>, ApiError> {
    let groups = state
        .manager()
        .request_results(&id)
        .await?
        .ok_or_else(|| unknown(&id))?;
    Ok(Json(ResultGroupsBody {
        groups: groups.into_iter().map(ResultGroupBody::from).collect(),
    }))
}

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

/// One request: its record and how many of its orders are in each status (a request
/// submitted before records existed answers its counts only).
#[utoipa::path(
    get,
    path = "/api/v1/requests/{request_id}",
    operation_id = "get_request",
    tag = "requests",
    params(("request_id" = String, Path, format = "uuid", description = "The request's id")),
    responses(
        (status = 200, description = "The request and its per-status counts", body = RequestBody),
        (status = 400, description = "`request_id` is not a UUID, or a query parameter was given", body = ErrorBody),
        (status = 404, description = "No request has this id", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn one(
    State(state): State<AppState>,
    Param(id): Param<RequestId>,
    _: NoQuery,
) -> Result<Json<RequestBody>, ApiError> {
    let view = state
        .manager()
        .request(&id)
        .await?
        .ok_or_else(|| unknown(&id))?;
    Ok(Json(view.into()))
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
        (status = 404, description = "No request has this id (no record and no order)", body = ErrorBody),
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
        (status = 409, description = "The request is still being written", body = ErrorBody),
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
