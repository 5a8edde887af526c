//! The agents registry, as managers see it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CACHE_CONTROL;
use axum::response::{IntoResponse, Response};
use cm_domain::{Agent, AgentId, GroupName};
use cm_ports::Upserted;
use serde::Serialize;
use utoipa::ToSchema;

use super::page_size;
use crate::AppState;
use crate::dto;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, NoQuery, Param, QueryParams};
use crate::openapi::schema;

/// One page of agents.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AgentPage {
    #[schema(value_type = Vec<schema::Agent>)]
    agents: Vec<Agent>,
    /// Pass as `after` to read the next page; `null` on the last page.
    #[schema(value_type = Option<String>, required = true, format = "name")]
    next: Option<AgentId>,
}

/// A registered agent, with its new key when it was just created.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RegisteredAgent {
    #[schema(value_type = String, format = "name")]
    id: AgentId,
    #[schema(value_type = Vec<schema::Name>)]
    groups: Vec<GroupName>,
    /// The agent's key, shown only here, once: the agent authenticates with
    /// `Authorization: Basic base64(<id>:<key>)`. Absent when the agent already existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

/// One agent of a bulk registration's answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BulkAgent {
    #[schema(value_type = String, format = "name")]
    id: AgentId,
    /// Whether the agent was new.
    created: bool,
    /// The new agent's key, shown only here, once. Absent when the agent already existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

/// The answer of a bulk registration: one entry per distinct id, in the order given.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BulkAgents {
    agents: Vec<BulkAgent>,
}

/// An agent's new key.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct IssuedKey {
    #[schema(value_type = String, format = "name")]
    id: AgentId,
    /// Shown only here, once; the agent's previous key no longer works.
    key: String,
}

/// An answer that carries a key must not be stored by any cache.
fn uncached(status: StatusCode, body: impl Serialize) -> Response {
    (status, [(CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// Registers an agent or replaces its groups. A new agent gets its key in the answer, once; an
/// existing one keeps its key.
#[utoipa::path(
    put,
    path = "/api/v1/agents/{agent_id}",
    operation_id = "put_agent",
    tag = "agents",
    params(("agent_id" = String, Path, format = "name", description = "The agent's id")),
    request_body(content = schema::AgentBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered; the answer holds the agent's key, shown only this once", body = RegisteredAgent),
        (status = 200, description = "Groups replaced; the key is unchanged and not shown", body = schema::Agent),
        (status = 400, description = "Malformed JSON, a field out of its rule, or a query parameter", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn put(
    State(state): State<AppState>,
    Param(id): Param<AgentId>,
    _: NoQuery,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let agent = dto::agent(id, &body)?;
    let registered = state.manager().put_agent(&agent).await?;
    let status = match registered.upserted {
        Upserted::Created => StatusCode::CREATED,
        Upserted::Updated => StatusCode::OK,
    };
    let body = RegisteredAgent {
        id: agent.id().clone(),
        groups: agent.groups().to_vec(),
        key: registered.key.as_ref().map(|k| k.expose().to_owned()),
    };
    Ok(uncached(status, body))
}

/// Registers up to 10,000 agents in one call, or replaces their groups. The body is checked as
/// a whole before anything is written; each new agent gets its key in the answer, once.
#[utoipa::path(
    put,
    path = "/api/v1/agents",
    operation_id = "put_agents",
    tag = "agents",
    request_body(content = schema::AgentsBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Registered; each new agent's key is shown only this once", body = BulkAgents),
        (status = 400, description = "Malformed JSON, an item out of its rule (`agents[17].id`), or a query parameter; nothing was written", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 503, description = "Storage unavailable; the agents written before it stay registered", body = ErrorBody),
    )
)]
pub(crate) async fn put_many(
    State(state): State<AppState>,
    _: NoQuery,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let agents = dto::agents_bulk(&body, cm_ports::MAX_BULK_AGENTS)?;
    let registered = state.manager().put_agents(&agents).await?;
    let body = BulkAgents {
        agents: registered
            .into_iter()
            .map(|r| BulkAgent {
                id: r.id,
                created: r.created,
                key: r.key.as_ref().map(|k| k.expose().to_owned()),
            })
            .collect(),
    };
    Ok(uncached(StatusCode::OK, body))
}

/// Issues a new key for an agent; its previous key stops working at once. Also gives a first
/// key to an agent registered without one (by Wazuh directly, say).
#[utoipa::path(
    post,
    path = "/api/v1/agents/{agent_id}/key",
    operation_id = "rotate_agent_key",
    tag = "agents",
    params(("agent_id" = String, Path, format = "name", description = "The agent's id")),
    responses(
        (status = 200, description = "The new key, shown only this once", body = IssuedKey),
        (status = 400, description = "`agent_id` out of its rule, or a query parameter was given", body = ErrorBody),
        (status = 404, description = "Not registered", body = ErrorBody),
        (status = 503, description = "Storage unavailable; the previous key still works", body = ErrorBody),
    )
)]
pub(crate) async fn rotate_key(
    State(state): State<AppState>,
    Param(id): Param<AgentId>,
    _: NoQuery,
) -> Result<Response, ApiError> {
    let key = state
        .manager()
        .rotate_agent_key(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no agent {id}")))?;
    Ok(uncached(
        StatusCode::OK,
        IssuedKey {
            id,
            key: key.expose().to_owned(),
        },
    ))
}

/// One agent.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}",
    operation_id = "get_agent",
    tag = "agents",
    params(("agent_id" = String, Path, format = "name", description = "The agent's id")),
    responses(
        (status = 200, description = "The agent", body = schema::Agent),
        (status = 400, description = "`agent_id` out of its rule, or a query parameter was given", body = ErrorBody),
        (status = 404, description = "Not registered", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn one(
    State(state): State<AppState>,
    Param(id): Param<AgentId>,
    _: NoQuery,
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
        ("group" = Option<String>, Query, format = "name", description = "Only members of this group"),
        ("size" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "Page size, default 100"),
        ("after" = Option<String>, Query, format = "name", description = "The `next` cursor of the previous page: the last agent id of that page"),
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
    let size = page_size(&q)?;
    let after = q.parse("after", |r| AgentId::parse(r, "after"))?;
    let page = state.manager().agents(group.as_ref(), size, after).await?;
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
    params(("agent_id" = String, Path, format = "name", description = "The agent's id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "`agent_id` out of its rule, or a query parameter was given", body = ErrorBody),
        (status = 404, description = "Not registered", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Param(id): Param<AgentId>,
    _: NoQuery,
) -> Result<StatusCode, ApiError> {
    if state.manager().delete_agent(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no agent {id}")))
    }
}
