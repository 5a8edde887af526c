//! Agents: long-polling their orders and reporting results.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use cm_domain::{AgentId, Order, OrderId};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::dto;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, NoQuery, Param, QueryParams};
use crate::openapi::schema;

/// How long a poll waits when it does not say (at most the service's `max_poll_wait`).
pub(crate) const DEFAULT_WAIT_SECS: u64 = 30;
/// How many orders a poll takes when it does not say (at most the service's `max_poll_limit`).
pub(crate) const DEFAULT_LIMIT: u64 = 10;

/// The bounds of a poll's `wait` and `limit`: the ones the use case applies
/// ([`cm_ports::Settings::max_poll_wait`], [`cm_ports::Settings::max_poll_limit`]), so that a
/// value beyond them is refused rather than silently lowered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PollBounds {
    /// The longest `wait`, in seconds.
    pub(crate) max_wait_secs: u64,
    /// The largest `limit`, at least 1.
    pub(crate) max_limit: u64,
}

impl PollBounds {
    pub(crate) fn of(settings: &cm_ports::Settings) -> Self {
        Self {
            max_wait_secs: settings.max_poll_wait.as_secs(),
            max_limit: u64::try_from(settings.max_poll_limit)
                .unwrap_or(u64::MAX)
                .max(1),
        }
    }

    /// The `wait` of a poll that does not say.
    pub(crate) fn default_wait_secs(self) -> u64 {
        DEFAULT_WAIT_SECS.min(self.max_wait_secs)
    }

    /// The `limit` of a poll that does not say.
    pub(crate) fn default_limit(self) -> u64 {
        DEFAULT_LIMIT.min(self.max_limit)
    }
}

/// A poll's `wait` (seconds) and `limit` from its query string, within the service's bounds
/// (the defaults when absent); any other parameter is refused.
pub(crate) fn poll_params(state: &AppState, query: QueryParams) -> Result<(u64, usize), ApiError> {
    let q = query.only(&["wait", "limit"])?;
    let bounds = PollBounds::of(state.manager().settings());
    let wait = q
        .int("wait", 0, bounds.max_wait_secs)?
        .unwrap_or(bounds.default_wait_secs());
    let limit = q
        .int("limit", 1, bounds.max_limit)?
        .unwrap_or(bounds.default_limit());
    Ok((wait, usize::try_from(limit).unwrap_or(usize::MAX)))
}

/// Runs `claim` as a long-poll holding one of the open-poll slots
/// ([`crate::HttpSettings::max_open_polls`]; none free: 503 at once): it waits up to `wait`
/// seconds, and ends with an empty answer as soon as shutdown begins.
pub(crate) async fn long_poll<F>(
    state: &AppState,
    wait: u64,
    claim: impl Fn(Duration) -> F,
) -> Result<Vec<Order>, ApiError>
where
    F: Future<Output = Result<Vec<Order>, cm_ports::StoreError>>,
{
    // Held until the answer is built: the slot of this poll among the open ones.
    let _slot = state.open_polls().try_acquire().map_err(|_| {
        tracing::debug!("too many open long-polls: refused a poll");
        ApiError::Overloaded
    })?;
    if wait == 0 || state.is_shutting_down() {
        return Ok(claim(Duration::ZERO).await?);
    }
    let stopping = state.shutting_down();
    Ok(tokio::select! {
        biased;
        claimed = claim(Duration::from_secs(wait)) => claimed?,
        () = stopping => Vec::new(),
    })
}

/// The orders handed to the polling agent, now `sent`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Polled {
    #[schema(value_type = Vec<schema::Order>)]
    orders: Vec<Order>,
}

/// Hands the agent up to `limit` of its deliverable orders, marking them `sent`. When there are
/// none, waits up to `wait` seconds for one to arrive, and answers an empty list if none does
/// (or the server is shutting down). Only the agent itself may poll; when the service's cap of
/// open long-polls is reached a poll answers 503 at once.
#[utoipa::path(
    post,
    path = "/api/v1/agents/{agent_id}/poll",
    operation_id = "poll_orders",
    tag = "delivery",
    params(
        ("agent_id" = String, Path, format = "name", description = "The polling agent's id"),
        // The maximums are the service's `limits.max_poll_wait_secs` and
        // `limits.max_poll_limit`, filled in by `openapi::document`.
        ("wait" = Option<u64>, Query, minimum = 0,
            description = "Seconds to wait for an order when none is waiting; default 30 (or the maximum when it is lower); at most the service's longest wait (`limits.max_poll_wait_secs`)"),
        ("limit" = Option<u64>, Query, minimum = 1,
            description = "Most orders to take; default 10 (or the maximum when it is lower); at most the service's largest batch (`limits.max_poll_limit`)"),
    ),
    responses(
        (status = 200, description = "The orders handed out (empty when the wait ended)", body = Polled),
        (status = 400, description = "A parameter out of its rule (beyond the service's bounds), or an unknown parameter", body = ErrorBody),
        (status = 403, description = "The credentials are another agent's", body = ErrorBody),
        (status = 503, description = "Storage unavailable, or too many long-polls are open; no order was handed out", body = ErrorBody),
    )
)]
pub(crate) async fn poll(
    State(state): State<AppState>,
    caller: Caller,
    Param(agent): Param<AgentId>,
    query: QueryParams,
) -> Result<Json<Polled>, ApiError> {
    caller.must_be(&agent)?;
    let (wait, limit) = poll_params(&state, query)?;
    let manager = state.manager();
    let orders = long_poll(&state, wait, |w| manager.poll(&agent, limit, w)).await?;
    Ok(Json(Polled { orders }))
}

/// Records the result of one delivered order: an agent or a component for its own orders, a
/// relay for any.
/// Repeating the report the order already carries answers 200 and changes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/orders/{order_id}/result",
    operation_id = "report_result",
    tag = "delivery",
    params(("order_id" = String, Path, format = "uuid", description = "The order's id")),
    request_body(content = schema::ReportBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The order with its result", body = schema::Order),
        (status = 400, description = "Malformed JSON, a field out of its rule, or a query parameter", body = ErrorBody),
        (status = 403, description = "The order belongs to another agent or component", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "The order was not delivered, or already ended with another result", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn report(
    State(state): State<AppState>,
    caller: Caller,
    Param(id): Param<OrderId>,
    _: NoQuery,
    JsonBody(body): JsonBody,
) -> Result<Json<Order>, ApiError> {
    let report = dto::report(&body)?;
    let reporter = caller.reporter();
    Ok(Json(state.manager().report(&id, &report, &reporter).await?))
}
