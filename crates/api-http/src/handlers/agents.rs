//! The agents registry, as managers see it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cm_domain::{Agent, AgentId, GroupName};
use cm_ports::Upserted;
use serde::Serialize;
use utoipa::ToSchema;

use super::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::AppState;
use crate::dto;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, Param, QueryParams};
use crate::openapi::schema;

/// One page of agents.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AgentPage {
    #[schema(value_type = Vec<schema::Agent>)]
    agents: Vec<Agent>,
    /// Pass as `after` to read the next page; `null` on the last page.
    #[schema(value_type = Option<String>, required = true)]
    next: Option<AgentId>,
}

/// Registers an agent or replaces its groups.
#[utoipa::path(
    put,
    path = "/api/v1/agents/{agent_id}",
    operation_id = "put_agent",
    tag = "agents",
    params(("agent_id" = String, Path, description = "The agent's id")),
    request_body(content = schema::AgentBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered", body = schema::Agent),
        (status = 200, description = "Groups replaced", body = schema::Agent),
        (status = 400, description = "Malformed JSON or a field out of its rule", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn put(
    State(state): State<AppState>,
    Param(id): Param<AgentId>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Agent>), ApiError> {
    let agent = dto::agent(id, &body)?;
    let status = match state.manager().put_agent(&agent).await? {
        Upserted::Created => StatusCode::CREATED,
        Upserted::Updated => StatusCode::OK,
    };
    Ok((status, Json(agent)))
}

/// One agent.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}",
    operation_id = "get_agent",
    tag = "agents",
    params(("agent_id" = String, Path, description = "The agent's id")),
    responses(
        (status = 200, description = "The agent", body = schema::Agent),
        (status = 400, description = "`agent_id` out of its rule", body = ErrorBody),
        (status = 404, description = "Not registered", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn one(
    State(state): State<AppState>,
    Param(id): Param<AgentId>,
) -> Result<Json<Agent>, ApiError> {
    state
        .manager()
        .agent(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no agent {id}")))
}

/// Agents (members of `group` when given) in id order, paged.
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    operation_id = "list_agents",
    tag = "agents",
    params(
        ("group" = Option<String>, Query, description = "Only members of this group"),
        ("size" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "Page size, default 100"),
        ("after" = Option<String>, Query, description = "The `next` cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "One page of agents", body = AgentPage),
        (status = 400, description = "A parameter out of its rule, or an unknown parameter", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<AgentPage>, ApiError> {
    let q = query.only(&["group", "size", "after"])?;
    let group = q.parse("group", |r| GroupName::parse(r, "group"))?;
    let size = q
        .int("size", 1, MAX_PAGE_SIZE)?
        .unwrap_or(DEFAULT_PAGE_SIZE);
    let after = q.parse("after", |r| AgentId::parse(r, "after"))?;
    let page = state
        .manager()
        .agents(
            group.as_ref(),
            usize::try_from(size).unwrap_or(usize::MAX),
            after,
        )
        .await?;
    Ok(Json(AgentPage {
        agents: page.items,
        next: page.next,
    }))
}

/// Removes an agent from the registry; its orders stay.
#[utoipa::path(
    delete,
    path = "/api/v1/agents/{agent_id}",
    operation_id = "delete_agent",
    tag = "agents",
    params(("agent_id" = String, Path, description = "The agent's id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "`agent_id` out of its rule", body = ErrorBody),
        (status = 404, description = "Not registered", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Param(id): Param<AgentId>,
) -> Result<StatusCode, ApiError> {
    if state.manager().delete_agent(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no agent {id}")))
    }
}
