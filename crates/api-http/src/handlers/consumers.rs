//! Consumers other than an agent polling for itself (docs/delivery.md): the registry of server
//! components and their polls, relays' claims, and results reported in batches.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CACHE_CONTROL;
use axum::response::{IntoResponse, Response};
use cm_domain::{ComponentName, Order};
use cm_ports::{
    MAX_RELAY_CONSUMERS, MAX_RELAY_SERVERS, MAX_RESULTS_PER_CALL, Upserted, metric::ResultOutcome,
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::delivery::{PollBounds, long_poll, poll_params};
use super::page_size;
use crate::AppState;
use crate::auth::Caller;
use crate::dto;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, NoQuery, Param, QueryParams};
use crate::openapi::schema;

/// One page of registered components.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ComponentPage {
    #[schema(value_type = Vec<String>)]
    servers: Vec<ComponentName>,
    /// Pass as `after` to read the next page; `null` on the last page.
    #[schema(value_type = Option<String>, required = true)]
    next: Option<ComponentName>,
}

/// A registered component, with its key when it was just created or its key rotated.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RegisteredComponent {
    #[schema(value_type = String)]
    component: ComponentName,
    /// The component's key, shown only here, once: the component authenticates with
    /// `Authorization: Basic base64(<component>:<key>)`. Absent when it already existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

/// The orders handed out, now `sent`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Claimed {
    #[schema(value_type = Vec<schema::Order>)]
    orders: Vec<Order>,
}

/// What became of each result of a batch, in the order they were sent.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ResultOutcomes {
    results: Vec<Outcome>,
}

/// What became of one result.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Outcome {
    /// The `order_id` as sent: any JSON value (`null` when the item had none).
    #[schema(value_type = Value)]
    order_id: Value,
    #[schema(value_type = OutcomeKind)]
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// What became of one result (the values of [`Outcome::outcome`]).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum OutcomeKind {
    Applied,
    AlreadyApplied,
    Conflict,
    NotFound,
    Forbidden,
    Invalid,
}

/// An answer that carries a key must not be stored by any cache.
fn uncached(status: StatusCode, body: impl Serialize) -> Response {
    (status, [(CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// Registers a server component. A new one gets its key in the answer, once; registering an
/// existing one changes nothing and shows no key. A command may target a component that is not
/// registered (yet): its orders wait for it.
#[utoipa::path(
    put,
    path = "/api/v1/servers/{component}",
    operation_id = "put_server",
    tag = "servers",
    params(("component" = String, Path, format = "name", description = "The component's name")),
    responses(
        (status = 201, description = "Registered; the answer holds the component's key, shown only this once", body = RegisteredComponent),
        (status = 200, description = "Already registered; the key is unchanged and not shown", body = RegisteredComponent),
        (status = 400, description = "`component` out of its rule, or a query parameter", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn put(
    State(state): State<AppState>,
    Param(component): Param<ComponentName>,
    _: NoQuery,
) -> Result<Response, ApiError> {
    let registered = state.manager().put_component(&component).await?;
    let status = match registered.upserted {
        Upserted::Created => StatusCode::CREATED,
        Upserted::Updated => StatusCode::OK,
    };
    let key = registered.key.as_ref().map(|k| k.expose().to_owned());
    Ok(uncached(status, RegisteredComponent { component, key }))
}

/// Issues a new key for a component; its previous key stops working at once.
#[utoipa::path(
    post,
    path = "/api/v1/servers/{component}/key",
    operation_id = "rotate_server_key",
    tag = "servers",
    params(("component" = String, Path, format = "name", description = "The component's name")),
    responses(
        (status = 200, description = "The new key, shown only this once", body = RegisteredComponent),
        (status = 400, description = "`component` out of its rule, or a query parameter", body = ErrorBody),
        (status = 404, description = "Not registered", body = ErrorBody),
        (status = 503, description = "Storage unavailable; the previous key still works", body = ErrorBody),
    )
)]
pub(crate) async fn rotate_key(
    State(state): State<AppState>,
    Param(component): Param<ComponentName>,
    _: NoQuery,
) -> Result<Response, ApiError> {
    let key = state
        .manager()
        .rotate_component_key(&component)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no component {component}")))?;
    Ok(uncached(
        StatusCode::OK,
        RegisteredComponent {
            component,
            key: Some(key.expose().to_owned()),
        },
    ))
}

/// Registered components, by name.
#[utoipa::path(
    get,
    path = "/api/v1/servers",
    operation_id = "list_servers",
    tag = "servers",
    params(
        ("size" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "Page size; default 100"),
        ("after" = Option<String>, Query, format = "name", description = "The `next` of the previous page: the last component name of that page"),
    ),
    responses(
        (status = 200, description = "One page of components", body = ComponentPage),
        (status = 400, description = "A parameter out of its rule, or an unknown parameter", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<ComponentPage>, ApiError> {
    let q = query.only(&["size", "after"])?;
    let size = page_size(&q)?;
    let after = q.parse("after", |r| ComponentName::parse(r, "after"))?;
    let page = state.manager().components(size, after).await?;
    Ok(Json(ComponentPage {
        servers: page.items,
        next: page.next,
    }))
}

/// Removes a component and its key; its orders stay.
#[utoipa::path(
    delete,
    path = "/api/v1/servers/{component}",
    operation_id = "delete_server",
    tag = "servers",
    params(("component" = String, Path, format = "name", description = "The component's name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "`component` out of its rule, or a query parameter", body = ErrorBody),
        (status = 404, description = "Not registered", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Param(component): Param<ComponentName>,
    _: NoQuery,
) -> Result<StatusCode, ApiError> {
    if state.manager().delete_component(&component).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no component {component}")))
    }
}

/// Hands the component up to `limit` of its deliverable orders (those of `server` targets
/// naming it), marking them `sent`, exactly like an agent's poll: when there are none, waits up
/// to `wait` seconds for one to arrive. Only the component itself may poll.
#[utoipa::path(
    post,
    path = "/api/v1/servers/{component}/poll",
    operation_id = "poll_server_orders",
    tag = "delivery",
    params(
        ("component" = String, Path, format = "name", description = "The polling component's name"),
        // The maximums are the service's, filled in by `openapi::document`.
        ("wait" = Option<u64>, Query, minimum = 0,
            description = "Seconds to wait for an order when none is waiting; default 30, bounded by the service's longest wait"),
        ("limit" = Option<u64>, Query, minimum = 1,
            description = "Most orders to take; default 10, bounded by the service's largest batch"),
    ),
    responses(
        (status = 200, description = "The orders handed out (empty when the wait ended)", body = Claimed),
        (status = 400, description = "A parameter out of its rule, or an unknown parameter", body = ErrorBody),
        (status = 503, description = "Storage unavailable, or too many long-polls are open; no order was handed out", body = ErrorBody),
    )
)]
pub(crate) async fn poll(
    State(state): State<AppState>,
    caller: Caller,
    Param(component): Param<ComponentName>,
    query: QueryParams,
) -> Result<Json<Claimed>, ApiError> {
    caller.must_be_component(&component)?;
    let (wait, limit) = poll_params(&state, query)?;
    let manager = state.manager();
    let orders = long_poll(&state, wait, |w| {
        manager.poll_component(&component, limit, w)
    })
    .await?;
    Ok(Json(Claimed { orders }))
}

/// A relay claims, atomically, up to `limit` deliverable orders of any of the named agents and
/// components (up to 10,000 together), marking them `sent` exactly as their own polls would;
/// with none, waits up to `wait` seconds and is woken at once by an order for any of them.
#[utoipa::path(
    post,
    path = "/api/v1/relay/claim",
    operation_id = "relay_claim",
    tag = "delivery",
    request_body(content = schema::RelayClaimBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The orders handed out (empty when the wait ended)", body = Claimed),
        (status = 400, description = "Malformed JSON, a field out of its rule, or a query parameter", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 503, description = "Storage unavailable, or too many long-polls are open; no order was handed out", body = ErrorBody),
    )
)]
pub(crate) async fn relay_claim(
    State(state): State<AppState>,
    _: NoQuery,
    JsonBody(body): JsonBody,
) -> Result<Json<Claimed>, ApiError> {
    let (consumers, limit, wait) = dto::relay_claim(&body, MAX_RELAY_CONSUMERS, MAX_RELAY_SERVERS)?;
    let bounds = PollBounds::of(state.manager().settings());
    let limit = match limit {
        None => bounds.default_limit(),
        Some(n) => u64::try_from(n)
            .ok()
            .filter(|n| (1..=cm_ports::MAX_RELAY_LIMIT as u64).contains(n))
            .ok_or_else(|| {
                cm_domain::FieldError::new(
                    "limit",
                    format!("must be 1 to {}", cm_ports::MAX_RELAY_LIMIT),
                )
            })?,
    };
    let wait = match wait {
        None => 0,
        Some(w) => u64::try_from(w)
            .ok()
            .filter(|w| *w <= bounds.max_wait_secs)
            .ok_or_else(|| {
                cm_domain::FieldError::new("wait", format!("must be 0 to {}", bounds.max_wait_secs))
            })?,
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let manager = state.manager();
    let orders = long_poll(&state, wait, |w| manager.relay_claim(&consumers, limit, w)).await?;
    Ok(Json(Claimed { orders }))
}

/// Records up to 1,000 results in one call, each like `POST /api/v1/orders/{order_id}/result`,
/// and answers what became of each, in order; one bad item never fails the others. A relay may
/// report for any order, an agent or a component for its own only (`forbidden` otherwise).
#[utoipa::path(
    post,
    path = "/api/v1/results",
    operation_id = "report_results",
    tag = "delivery",
    request_body(content = schema::ResultsBody, content_type = "application/json"),
    responses(
        (status = 200, description = "One outcome per result, in order", body = ResultOutcomes),
        (status = 400, description = "Malformed JSON, not a list of 1 to 1000 results, or a query parameter", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 503, description = "Storage unavailable; the results before the failure are applied, and sending them again answers already_applied", body = ErrorBody),
    )
)]
pub(crate) async fn results(
    State(state): State<AppState>,
    caller: Caller,
    _: NoQuery,
    JsonBody(body): JsonBody,
) -> Result<Json<ResultOutcomes>, ApiError> {
    let items = dto::results(&body, MAX_RESULTS_PER_CALL)?;
    let reporter = caller.reporter();
    let manager = state.manager();
    let mut results = Vec::with_capacity(items.len());
    for (order_id, item) in items {
        let outcome = match item {
            Ok(item) => manager.report_item(&item, &reporter).await?,
            Err(e) => cm_ports::ItemOutcome::invalid(format!("{}: {}", e.field(), e.message())),
        };
        results.push(Outcome {
            order_id,
            outcome: outcome_name(outcome.outcome),
            message: outcome.message,
        });
    }
    Ok(Json(ResultOutcomes { results }))
}

const fn outcome_name(o: ResultOutcome) -> &'static str {
    o.as_str()
}
