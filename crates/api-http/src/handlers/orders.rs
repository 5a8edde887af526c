//! Reading the orders stream and cancelling orders.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use cm_domain::{AgentId, FieldError, Order, OrderId, RequestId, Status, TargetType, check_text};
use cm_ports::{OrderCursor, OrderFilter, Page};
use serde::Serialize;
use utoipa::ToSchema;

use super::page_size;
use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{NoQuery, Param, QueryParams};
use crate::openapi::schema;

/// One page of orders.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OrderPage {
    #[schema(value_type = Vec<schema::Order>)]
    pub(crate) orders: Vec<Order>,
    /// Pass as `after` to read the next page; `null` on the last page.
    #[schema(required = true, format = "order-cursor")]
    pub(crate) next: Option<String>,
}

impl From<Page<Order, OrderCursor>> for OrderPage {
    fn from(page: Page<Order, OrderCursor>) -> Self {
        Self {
            orders: page.items,
            next: page.next.map(|c| c.encode()),
        }
    }
}

const LIST_PARAMS: &[&str] = &[
    "status",
    "agent_id",
    "target_type",
    "target_id",
    "request_id",
    "action",
    "since",
    "until",
    "size",
    "after",
];

pub(crate) fn time(raw: &str, field: &str) -> Result<DateTime<Utc>, FieldError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            FieldError::new(
                field,
                "must be an RFC 3339 time such as 2026-11-27T10:00:00Z (write + as %2B)",
            )
        })
}

pub(crate) fn text(raw: &str, field: &str) -> Result<String, FieldError> {
    check_text(raw, field, true)?;
    Ok(raw.to_owned())
}

/// Orders matching every filter given, oldest first (`@timestamp`, then `order_id`), paged.
#[utoipa::path(
    get,
    path = "/api/v1/orders",
    operation_id = "list_orders",
    tag = "orders",
    params(
        ("status" = Option<schema::Status>, Query, description = "Only orders in this status"),
        ("agent_id" = Option<String>, Query, format = "name", description = "Only orders delivered to this agent"),
        ("target_type" = Option<String>, Query, format = "target-type", description = "Only orders with this target type: agent, group or server, in any case"),
        ("target_id" = Option<String>, Query, format = "required-keyword", description = "Only orders with this target id"),
        ("request_id" = Option<String>, Query, format = "uuid", description = "Only orders of this request"),
        ("action" = Option<String>, Query, format = "required-keyword", description = "Only orders of this action name"),
        ("since" = Option<String>, Query, format = DateTime, description = "Only orders created at or after this time (RFC 3339)"),
        ("until" = Option<String>, Query, format = DateTime, description = "Only orders created before this time (RFC 3339)"),
        ("size" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "Page size, default 100"),
        ("after" = Option<String>, Query, format = "order-cursor", description = "The `next` cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "One page of orders", body = OrderPage),
        (status = 400, description = "A parameter out of its rule, or an unknown parameter", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<OrderPage>, ApiError> {
    let q = query.only(LIST_PARAMS)?;
    let filter = OrderFilter {
        status: q.parse("status", |r| Status::parse(r, "status"))?,
        agent_id: q.parse("agent_id", |r| AgentId::parse(r, "agent_id"))?,
        target_type: q.parse("target_type", |r| {
            TargetType::parse(r).map_err(|e| FieldError::new("target_type", e.message()))
        })?,
        target_id: q.parse("target_id", |r| text(r, "target_id"))?,
        request_id: q.parse("request_id", |r| RequestId::parse(r, "request_id"))?,
        action: q.parse("action", |r| text(r, "action"))?,
        since: q.parse("since", |r| time(r, "since"))?,
        until: q.parse("until", |r| time(r, "until"))?,
    };
    let size = page_size(&q)?;
    let after = q.parse("after", |r| OrderCursor::decode(r, "after"))?;
    let page = state.manager().orders(&filter, size, after).await?;
    Ok(Json(page.into()))
}

/// One order.
#[utoipa::path(
    get,
    path = "/api/v1/orders/{order_id}",
    operation_id = "get_order",
    tag = "orders",
    params(("order_id" = String, Path, format = "uuid", description = "The order's id")),
    responses(
        (status = 200, description = "The order", body = schema::Order),
        (status = 400, description = "`order_id` is not a UUID, or a query parameter was given", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn one(
    State(state): State<AppState>,
    Param(id): Param<OrderId>,
    _: NoQuery,
) -> Result<Json<Order>, ApiError> {
    state
        .manager()
        .order(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no order {id}")))
}

/// Cancels a pending order: it ends as `failure` with the message `cancelled`.
#[utoipa::path(
    post,
    path = "/api/v1/orders/{order_id}/cancel",
    operation_id = "cancel_order",
    tag = "orders",
    params(("order_id" = String, Path, format = "uuid", description = "The order's id")),
    responses(
        (status = 200, description = "The cancelled order", body = schema::Order),
        (status = 400, description = "`order_id` is not a UUID, or a query parameter was given", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "The order is not pending", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Param(id): Param<OrderId>,
    _: NoQuery,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(state.manager().cancel(&id).await?))
}
