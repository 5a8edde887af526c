//! The OpenAPI document, generated from the handlers' annotations.

use serde_json::{Value, json};

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::auth::{Role, role_of};
use crate::error::{ErrorBody, ErrorDetail};
use crate::handlers;
use crate::handlers::delivery::PollBounds;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Command Manager",
        description = "Accepts command requests for a fleet of agents, expands each into one order per target, delivers orders to agents by long-poll and records their results. Errors answer `{\"error\": {\"code\", \"message\", \"field\"?}}`; 503 answers carry `Retry-After`.\n\nSecurity: when authentication is enabled (`auth.enabled`), managers send `Authorization: Bearer <token>` with one of the configured `auth.manager_tokens`, and agents send `Authorization: Basic base64(<agent id>:<key>)` with the key issued once when the agent was registered (`PUT /api/v1/agents/{agent_id}` answering 201) or its key was rotated (`POST /api/v1/agents/{agent_id}/key`). Management routes and `/metrics` need a manager; polling needs the polling agent itself and reporting the order's agent; `/healthz`, `/readyz` and `/openapi.json` are open. Missing, unknown or malformed credentials answer 401 with `WWW-Authenticate`; valid credentials of the wrong role, or of another agent, answer 403. With authentication off (allowed only on a loopback address) every route is open."
    ),
    paths(
        handlers::commands::submit,
        handlers::commands::submit_wazuh,
        handlers::orders::list,
        handlers::orders::one,
        handlers::orders::cancel,
        handlers::requests::progress,
        handlers::requests::orders,
        handlers::requests::cancel,
        handlers::requests::retry,
        handlers::agents::put,
        handlers::agents::one,
        handlers::agents::list,
        handlers::agents::delete,
        handlers::agents::rotate_key,
        handlers::delivery::poll,
        handlers::delivery::report,
        handlers::consumers::put,
        handlers::consumers::rotate_key,
        handlers::consumers::list,
        handlers::consumers::delete,
        handlers::consumers::poll,
        handlers::consumers::relay_claim,
        handlers::consumers::results,
        handlers::ops::healthz,
        handlers::ops::readyz,
        handlers::ops::metrics,
        handlers::ops::openapi,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Security),
    tags(
        (name = "commands", description = "Submitting command requests"),
        (name = "orders", description = "Reading and cancelling orders"),
        (name = "requests", description = "Following and steering whole requests: progress, their orders, cancel, retry"),
        (name = "agents", description = "The agents registry"),
        (name = "servers", description = "The registry of server components that consume orders"),
        (name = "delivery", description = "Agents, server components and relays receiving orders and reporting results"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
struct ApiDoc;

/// The security scheme of managers' bearer tokens.
pub(crate) const MANAGER_TOKEN: &str = "manager_token";
/// The security scheme of agents' and components' keys.
pub(crate) const AGENT_KEY: &str = "agent_key";
/// The security scheme of relays' bearer tokens.
pub(crate) const RELAY_TOKEN: &str = "relay_token";

/// Declares the two security schemes and gives every operation the requirement of its route's
/// [`Role`] (the same table the middleware enforces), with its 401 and 403 answers.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            MANAGER_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "One of the manager tokens of the configuration (`auth.manager_tokens`)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            AGENT_KEY,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "The agent's id (or the server component's name) as user name and its \
                         key (issued at registration or rotation) as password",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            RELAY_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "One of the relay tokens of the configuration (`auth.relay_tokens`)",
                    ))
                    .build(),
            ),
        );
        let error = || RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody"));
        for (path, item) in &mut openapi.paths.paths {
            let role = role_of(path);
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                let (schemes, forbidden): (&[&str], _) = match role {
                    Role::Open => {
                        op.security = Some(Vec::new());
                        continue;
                    }
                    Role::Manager => (&[MANAGER_TOKEN], "Valid credentials, but not a manager's"),
                    Role::Agent => (
                        &[AGENT_KEY],
                        "Valid credentials, but not the agent's this request is about",
                    ),
                    Role::Component => (
                        &[AGENT_KEY],
                        "Valid credentials, but not the component's this request is about",
                    ),
                    Role::Reporter => (
                        &[AGENT_KEY, RELAY_TOKEN],
                        "Valid credentials, but a manager's, or not the order's agent or component",
                    ),
                    Role::Relay => (&[RELAY_TOKEN], "Valid credentials, but not a relay's"),
                };
                op.security = Some(
                    schemes
                        .iter()
                        .map(|s| SecurityRequirement::new(*s, Vec::<String>::new()))
                        .collect(),
                );
                let responses = &mut op.responses.responses;
                for (status, description) in [
                    (
                        "401",
                        "No, unknown or malformed credentials (with `WWW-Authenticate`)",
                    ),
                    ("403", forbidden),
                ] {
                    responses.entry(status.to_owned()).or_insert_with(|| {
                        RefOr::T(
                            ResponseBuilder::new()
                                .description(description)
                                .content(
                                    "application/json",
                                    utoipa::openapi::ContentBuilder::new()
                                        .schema(Some(error()))
                                        .build(),
                                )
                                .build(),
                        )
                    });
                }
            }
        }
    }
}

/// The document as JSON text, with the bounds of the poll parameters this service applies
/// (they follow its configuration).
pub(crate) fn document(poll: PollBounds) -> String {
    let mut doc = match serde_json::to_value(ApiDoc::openapi()) {
        Ok(doc) => doc,
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize the OpenAPI document");
            return String::from("{}");
        }
    };
    let params = doc
        .pointer_mut("/paths/~1api~1v1~1agents~1{agent_id}~1poll/post/parameters")
        .and_then(Value::as_array_mut);
    for param in params.into_iter().flatten() {
        let maximum = match param["name"].as_str() {
            Some("wait") => poll.max_wait_secs,
            Some("limit") => poll.max_limit,
            _ => continue,
        };
        if let Some(schema) = param.get_mut("schema").and_then(Value::as_object_mut) {
            schema.insert("maximum".to_owned(), json!(maximum));
        }
    }
    doc.to_string()
}

/// Schema-only descriptions of the bodies: requests are walked as JSON values by
/// [`crate::dto`] and orders are serialized from the domain's `Order`, so these types are never
/// built. Tests keep them in step with the DTOs' field lists and with real documents.
#[allow(dead_code)]
pub(crate) mod schema {
    use serde::Serialize;
    use serde_json::Value;
    use utoipa::ToSchema;

    /// A command request.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct SubmitBody {
        /// 1 to `max_commands` (default 100) commands.
        #[schema(min_items = 1)]
        commands: Vec<CommandBody>,
    }

    /// One command of a request.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct CommandBody {
        /// Matched case-insensitively, stored in this spelling.
        source: Source,
        /// Who originated the request.
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        target: Target,
        action: ActionBody,
        /// The window, in seconds, in which the order must be delivered, counted from its
        /// `not_before`.
        #[schema(minimum = 1, maximum = 32767)]
        timeout: u16,
        /// When the orders may first be handed out; without it, at once.
        #[serde(skip_serializing_if = "Option::is_none")]
        schedule: Option<ScheduleBody>,
    }

    /// A command's start time and rollout window (docs/rollout.md): order `i` of `n` is not handed
    /// out before `start_at + rollout_secs * i / n`.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct ScheduleBody {
        /// RFC 3339; default (and any time in the past) now; at most
        /// `limits.max_schedule_ahead_secs` (default 30 days) ahead.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(format = DateTime, example = "2026-11-27T22:00:00Z")]
        start_at: Option<String>,
        /// The window the orders are spread evenly over, in seconds; default 0 (all at the
        /// start), at most 604800 (7 days).
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 0, maximum = 604_800)]
        rollout_secs: Option<u32>,
    }

    #[derive(Serialize, ToSchema)]
    pub(crate) enum Source {
        #[serde(rename = "Users/Services")]
        UsersServices,
        Engine,
        #[serde(rename = "Content manager")]
        ContentManager,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub(crate) enum TargetType {
        Agent,
        Group,
        Server,
    }

    /// What a command is aimed at.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct Target {
        #[serde(rename = "type")]
        kind: TargetType,
        /// Agent id, group name or server component name.
        id: String,
    }

    /// The action of a command, as submitted.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct ActionBody {
        name: String,
        /// A JSON object or array, stored and delivered verbatim; `{}` when absent.
        #[serde(skip_serializing_if = "Option::is_none")]
        args: Option<Value>,
        /// Schema version of the action.
        version: String,
    }

    /// The action of an order.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct Action {
        name: String,
        /// A JSON object or array, verbatim as submitted.
        args: Value,
        version: String,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub(crate) enum Status {
        Pending,
        Sent,
        InProgress,
        Success,
        Failure,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub(crate) enum ReportStatus {
        Success,
        Failure,
        InProgress,
    }

    /// An agent's result report.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct ReportBody {
        status: ReportStatus,
        #[schema(minimum = -32768, maximum = 32767)]
        code: i16,
        /// Default "".
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// Default "", at most 64 KiB.
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<String>,
    }

    /// A relay's claim.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct RelayClaimBody {
        /// Agent ids; with `servers`, 1 to 10,000 consumers together.
        #[serde(skip_serializing_if = "Option::is_none")]
        agents: Option<Vec<String>>,
        /// Server component names.
        #[serde(skip_serializing_if = "Option::is_none")]
        servers: Option<Vec<String>>,
        /// Most orders to take; default 10.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 1, maximum = 1000)]
        limit: Option<u16>,
        /// Seconds to wait for an order when none is waiting; default 0, bounded by the
        /// service's longest wait.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 0, maximum = 3600)]
        wait: Option<u16>,
    }

    /// Results reported in one call.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct ResultsBody {
        /// 1 to 1,000 results.
        #[schema(min_items = 1, max_items = 1000)]
        results: Vec<ResultItemBody>,
    }

    /// One result of a batch: a result report with the order it is for.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct ResultItemBody {
        /// The order's id (a UUID).
        order_id: String,
        status: ReportStatus,
        #[schema(minimum = -32768, maximum = 32767)]
        code: i16,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<String>,
    }

    /// An agent registration.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct AgentBody {
        groups: Vec<String>,
    }

    /// A registered agent.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct Agent {
        id: String,
        groups: Vec<String>,
    }

    /// The agent an order is delivered to.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct AgentRef {
        id: String,
        groups: Vec<String>,
    }

    /// The result recorded on an order.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct CommandResult {
        code: i16,
        message: String,
        data: String,
    }

    /// One order: the document layout of the Wazuh `wazuh-commands` index.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct Order {
        /// When the order was created.
        #[serde(rename = "@timestamp")]
        #[schema(format = DateTime, example = "2026-11-27T10:00:00.000Z")]
        timestamp: String,
        /// The deadline for delivery: creation (or `not_before`) plus `timeout`.
        #[schema(format = DateTime, example = "2026-11-27T10:01:40.000Z")]
        delivery_timestamp: String,
        /// Absent for server targets.
        #[serde(skip_serializing_if = "Option::is_none")]
        agent: Option<AgentRef>,
        command: OrderCommand,
    }

    /// The `command` part of an order.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct OrderCommand {
        source: Source,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        target: Target,
        action: Action,
        #[schema(minimum = 1, maximum = 32767)]
        timeout: u16,
        status: Status,
        /// Absent until there is one.
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<CommandResult>,
        #[schema(format = "uuid")]
        request_id: String,
        #[schema(format = "uuid")]
        order_id: String,
        /// Not handed out before this time.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(format = DateTime)]
        not_before: Option<String>,
        /// When it was (last) handed out.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(format = DateTime)]
        sent_at: Option<String>,
        /// How many times it was handed out.
        #[serde(skip_serializing_if = "Option::is_none")]
        deliveries: Option<u32>,
        /// When it is handed out again if no report arrives.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(format = DateTime)]
        redeliver_at: Option<String>,
        /// When it fails with `no result` if no final report arrives.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(format = DateTime)]
        result_deadline: Option<String>,
        /// When it reached `success` or `failure`.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(format = DateTime)]
        finished_at: Option<String>,
        /// The request this one retries.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(format = "uuid")]
        retry_of: Option<String>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dto;

    fn properties(doc: &Value, schema: &str) -> Vec<String> {
        let mut keys: Vec<String> = doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {schema} has properties"))
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    fn sorted(fields: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = fields.iter().map(|f| (*f).to_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn request_schemas_list_exactly_the_fields_the_dtos_accept() {
        let doc: Value =
            serde_json::from_str(&document(PollBounds::of(&cm_ports::Settings::default())))
                .unwrap();
        assert_eq!(properties(&doc, "SubmitBody"), sorted(dto::SUBMIT_FIELDS));
        assert_eq!(properties(&doc, "CommandBody"), sorted(dto::COMMAND_FIELDS));
        assert_eq!(properties(&doc, "Target"), sorted(dto::TARGET_FIELDS));
        assert_eq!(properties(&doc, "ActionBody"), sorted(dto::ACTION_FIELDS));
        assert_eq!(
            properties(&doc, "ScheduleBody"),
            sorted(dto::SCHEDULE_FIELDS)
        );
        assert_eq!(properties(&doc, "ReportBody"), sorted(dto::REPORT_FIELDS));
        assert_eq!(properties(&doc, "AgentBody"), sorted(dto::AGENT_FIELDS));
    }

    #[test]
    fn every_size_parameter_states_the_page_size_the_use_cases_apply() {
        let doc: Value =
            serde_json::from_str(&document(PollBounds::of(&cm_ports::Settings::default())))
                .unwrap();
        let mut sizes = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for op in item.as_object().unwrap().values() {
                for p in op["parameters"].as_array().into_iter().flatten() {
                    if p["name"] == json!("size") {
                        sizes += 1;
                        assert_eq!(
                            p["schema"]["maximum"],
                            json!(cm_ports::MAX_PAGE_SIZE),
                            "{path}"
                        );
                        assert_eq!(p["schema"]["minimum"], json!(1), "{path}");
                    }
                }
            }
        }
        assert!(sizes >= 3, "{sizes} size parameters");
    }
}
