//! Submitting command requests: `POST /api/v1/commands` and its Wazuh-compatible twin.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cm_domain::{FieldError, IdempotencyKey, OrderId, RequestId};
use cm_ports::{Idempotency, SubmitRequest, SubmittedRequest};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::dto;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, QueryParams};
use crate::openapi::schema;

/// The header that makes a submit safe to retry.
pub(crate) const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The ids one command of a submit produced.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SubmittedBody {
    /// Shared by every order expanded from the command.
    #[schema(value_type = String, format = "uuid")]
    pub(crate) request_id: RequestId,
    /// One per order, in expansion order.
    #[schema(value_type = Vec<String>)]
    pub(crate) order_ids: Vec<OrderId>,
}

/// The answer of `POST /api/v1/commands`: one entry per command, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SubmitResponse {
    pub(crate) requests: Vec<SubmittedBody>,
}

/// One order written, in the Wazuh plugin's answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WazuhOrderRef {
    #[serde(rename = "_id")]
    #[schema(value_type = String, format = "uuid")]
    id: OrderId,
}

/// The Wazuh Command Manager plugin's answer: one entry per order, over all commands.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WazuhSubmitResponse {
    #[serde(rename = "_index")]
    #[schema(example = "wazuh-commands")]
    index: &'static str,
    orders: Vec<WazuhOrderRef>,
    #[schema(example = "OK")]
    result: &'static str,
}

/// Submits command requests; each command expands into one order per concrete target. With
/// `dry_run=true` the request is validated and planned exactly as a submit would, and nothing
/// is written: the answer says how many orders each command would expand to, with a sample of
/// their targets.
#[utoipa::path(
    post,
    path = "/api/v1/commands",
    operation_id = "submit_commands",
    tag = "commands",
    params(
        ("Idempotency-Key" = Option<String>, Header, format = "name",
            description = "Makes the submit safe to retry: the same key and body never create a second set of orders"),
        ("dry_run" = Option<bool>, Query, description = "Plan the request and write nothing (default false)"),
    ),
    request_body(content = schema::SubmitBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Every order was written", body = SubmitResponse),
        (status = 200, description = "A dry run: what each command would expand to; nothing was written", body = schema::DryRunBody),
        (status = 400, description = "Malformed JSON, a field or header out of its rule, or a query parameter", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "The body follows every rule of this document, but a command expands to no order (unknown agent, empty group) or too many, or its `schedule.start_at` lies beyond `limits.max_schedule_ahead_secs` from now; nothing was written", body = ErrorBody),
        (status = 503, description = "Storage unavailable; nothing is acknowledged", body = ErrorBody),
    )
)]
pub(crate) async fn submit(
    State(state): State<AppState>,
    query: QueryParams,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let q = query.only(&["dry_run"])?;
    let dry_run = q
        .parse("dry_run", |r| match r {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(FieldError::new("dry_run", "must be true or false")),
        })?
        .unwrap_or(false);
    if dry_run {
        let commands = dto::commands(&body, state.manager().settings().max_commands)?;
        let idempotency = idempotency(&headers, &body)?;
        let plans = state
            .manager()
            .dry_run(&SubmitRequest {
                commands,
                idempotency,
            })
            .await?;
        let plans: Vec<Value> = plans
            .into_iter()
            .map(|p| serde_json::json!({"targets": p.targets, "sample": p.sample}))
            .collect();
        return Ok(Json(serde_json::json!({ "plans": plans })).into_response());
    }
    let submitted = run(&state, &headers, &body).await?;
    let requests = submitted
        .into_iter()
        .map(|r| SubmittedBody {
            request_id: r.request_id,
            order_ids: r.order_ids,
        })
        .collect();
    Ok((StatusCode::CREATED, Json(SubmitResponse { requests })).into_response())
}

/// The Wazuh Command Manager plugin's route: same body, the plugin's answer.
#[utoipa::path(
    post,
    path = "/_plugins/_command_manager/commands",
    operation_id = "submit_commands_wazuh",
    tag = "commands",
    params(("Idempotency-Key" = Option<String>, Header, format = "name",
        description = "Makes the submit safe to retry")),
    request_body(content = schema::SubmitBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Every order was written", body = WazuhSubmitResponse),
        (status = 400, description = "Malformed JSON, or a field or header out of its rule", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "A command expands to no order or too many, or starts beyond the horizon; nothing was written", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn submit_wazuh(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Json<WazuhSubmitResponse>, ApiError> {
    let submitted = run(&state, &headers, &body).await?;
    let orders = submitted
        .into_iter()
        .flat_map(|r| r.order_ids)
        .map(|id| WazuhOrderRef { id })
        .collect();
    Ok(Json(WazuhSubmitResponse {
        index: "wazuh-commands",
        orders,
        result: "OK",
    }))
}

async fn run(
    state: &AppState,
    headers: &HeaderMap,
    body: &Value,
) -> Result<Vec<SubmittedRequest>, ApiError> {
    let commands = dto::commands(body, state.manager().settings().max_commands)?;
    let idempotency = idempotency(headers, body)?;
    let manager = state.manager().clone();
    // Detached, so a submit that has started writing completes (or undoes its writes) even
    // when the client goes away or the request times out.
    tokio::spawn(async move {
        manager
            .submit(SubmitRequest {
                commands,
                idempotency,
            })
            .await
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .map_err(ApiError::from)
}

fn idempotency(headers: &HeaderMap, body: &Value) -> Result<Option<Idempotency>, FieldError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(FieldError::new(IDEMPOTENCY_KEY, "must be given once"));
    }
    let raw = first.to_str().map_err(|_| {
        FieldError::new(
            IDEMPOTENCY_KEY,
            "may contain only letters, digits and - _ . : @",
        )
    })?;
    Ok(Some(Idempotency {
        key: IdempotencyKey::parse(raw, IDEMPOTENCY_KEY)?,
        fingerprint: dto::fingerprint(body),
    }))
}
