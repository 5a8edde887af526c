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
        handlers::requests::list,
        handlers::requests::one,
        handlers::requests::results,
        handlers::requests::orders,
        handlers::requests::pause,
        handlers::requests::resume,
        handlers::requests::cancel,
        handlers::requests::retry,
        handlers::agents::put,
        handlers::agents::put_many,
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
    components(schemas(ErrorBody, ErrorDetail, schema::RetryStatus, schema::ResultItemBody)),
    tags(
        (name = "commands", description = "Submitting command requests"),
        (name = "orders", description = "Reading and cancelling orders"),
        (name = "requests", description = "Requests as records: list them, follow and steer one: its counts, its orders, what went wrong, pause, resume, cancel, retry"),
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

/// The document as JSON text, stating the rules this service applies: the domain's rules in
/// place of the `format` markers ([`rules`]), the bounds of its settings (`wait`, `limit`, the
/// number of commands), and the security requirements of each route when `auth` is on (none
/// at all when it is off).
pub(crate) fn document(settings: &cm_ports::Settings, auth: bool) -> String {
    let mut api = ApiDoc::openapi();
    if auth {
        Security.modify(&mut api);
    }
    let mut doc = match serde_json::to_value(api) {
        Ok(doc) => doc,
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize the OpenAPI document");
            return String::from("{}");
        }
    };
    rules::apply(&mut doc);
    if !auth {
        without_credentials(&mut doc);
    }
    let poll = PollBounds::of(settings);
    for poll_path in [
        "/paths/~1api~1v1~1agents~1{agent_id}~1poll/post/parameters",
        "/paths/~1api~1v1~1servers~1{component}~1poll/post/parameters",
    ] {
        let params = doc.pointer_mut(poll_path).and_then(Value::as_array_mut);
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
    }
    if let Some(claim) = doc
        .pointer_mut("/components/schemas/RelayClaimBody")
        .and_then(Value::as_object_mut)
    {
        if let Some(wait) = claim
            .get_mut("properties")
            .and_then(|p| p.get_mut("wait"))
            .and_then(Value::as_object_mut)
        {
            wait.insert("maximum".to_owned(), json!(poll.max_wait_secs));
        }
        // At least one consumer, in either list (`dto::relay_claim`).
        let some = |list: &str| json!({"required": [list], "properties": {list: {"type": "array", "minItems": 1}}});
        claim.insert("anyOf".to_owned(), json!([some("agents"), some("servers")]));
    }
    if let Some(commands) = doc
        .pointer_mut("/components/schemas/SubmitBody/properties/commands")
        .and_then(Value::as_object_mut)
    {
        commands.insert("maxItems".to_owned(), json!(settings.max_commands));
    }
    doc.to_string()
}

/// With authentication off nothing answers 401 or 403: no operation lists them.
fn without_credentials(doc: &mut Value) {
    for item in doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|p| p.values_mut())
    {
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
                responses.remove("401");
                responses.remove("403");
            }
        }
    }
}

/// The domain's rules as JSON Schema, put where the annotations name them with a `format`
/// marker: one place per rule, read from the constants next to the parsers that apply it, so
/// the document cannot drift from them. A marker on a nullable schema keeps it nullable; a
/// parameter's schema is never nullable (a query string has no `null`).
pub(crate) mod rules {
    use cm_domain::{
        KEYWORD_PATTERN, Limit, MAX_KEYWORD_LEN, MAX_NAME_LEN, NAME_PATTERN,
        REQUIRED_KEYWORD_PATTERN, Source, TargetType,
    };
    use cm_ports::OrderCursor;
    use serde_json::{Map, Value, json};

    /// The schema a `format` marker stands for, when it is one.
    pub(crate) fn rule(marker: &str) -> Option<Value> {
        Some(match marker {
            // `AgentId`, `GroupName`, `IdempotencyKey`.
            "name" => json!({
                "type": "string", "minLength": 1, "maxLength": MAX_NAME_LEN,
                "pattern": NAME_PATTERN, "example": "web-01",
            }),
            // `check_text(.., required: true)`.
            "required-keyword" => json!({
                "type": "string", "minLength": 1, "maxLength": MAX_KEYWORD_LEN,
                "pattern": REQUIRED_KEYWORD_PATTERN,
            }),
            // `check_text(.., required: false)`.
            "keyword" => json!({
                "type": "string", "maxLength": MAX_KEYWORD_LEN, "pattern": KEYWORD_PATTERN,
            }),
            "order-cursor" => json!({"type": "string", "pattern": OrderCursor::PATTERN}),
            "source" => json!({
                "type": "string",
                "pattern": any_case(Source::ALL.map(Source::as_str)),
                "examples": Source::ALL.map(Source::as_str),
            }),
            "target-type" => json!({
                "type": "string",
                "pattern": any_case(TargetType::ALL.map(TargetType::as_str)),
                "examples": TargetType::ALL.map(TargetType::as_str),
            }),
            // `Action::new`'s `args`.
            "json-container" => json!({"type": ["object", "array"]}),
            // A rate-control limit (`dto`'s `opt_limit`): a count, or a percentage.
            "rate-limit" => json!({
                "oneOf": [
                    {"type": "integer", "minimum": 0},
                    {"type": "string", "pattern": Limit::PERCENT_PATTERN, "example": "10%"},
                ],
            }),
            _ => return None,
        })
    }

    /// A pattern matching exactly `words`, each in any mix of ASCII cases (as
    /// `eq_ignore_ascii_case` compares).
    pub(crate) fn any_case<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
        let alternatives: Vec<String> = words
            .into_iter()
            .map(|w| {
                w.chars()
                    .map(|c| {
                        if c.is_ascii_alphabetic() {
                            format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase())
                        } else if c.is_ascii_alphanumeric() || matches!(c, ' ' | '/' | '_' | '-') {
                            c.to_string()
                        } else {
                            format!("\\{c}")
                        }
                    })
                    .collect()
            })
            .collect();
        format!("^(?:{})$", alternatives.join("|"))
    }

    /// Replaces every marker of `doc` by its rule, and the `Target` schema by the rule that ties
    /// its `id` to its `type`.
    pub(crate) fn apply(doc: &mut Value) {
        walk(doc);
        for item in doc["paths"]
            .as_object_mut()
            .into_iter()
            .flat_map(|p| p.values_mut())
        {
            for op in item
                .as_object_mut()
                .into_iter()
                .flat_map(|o| o.values_mut())
            {
                let params = op.get_mut("parameters").and_then(Value::as_array_mut);
                for param in params.into_iter().flatten() {
                    if let Some(schema) = param.get_mut("schema") {
                        not_null(schema);
                    }
                }
            }
        }
        if let Some(target) = doc.pointer_mut("/components/schemas/Target") {
            *target = self::target(target);
        }
    }

    fn walk(node: &mut Value) {
        match node {
            Value::Object(map) => {
                let marker = map.get("format").and_then(Value::as_str).map(str::to_owned);
                if let Some(rule) = marker.as_deref().and_then(rule) {
                    replace(map, rule);
                }
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }

    /// `map` becomes `rule`, keeping its description and example, and `null` when it allowed it.
    fn replace(map: &mut Map<String, Value>, rule: Value) {
        let nullable = map
            .get("type")
            .and_then(Value::as_array)
            .is_some_and(|types| types.contains(&json!("null")));
        let Value::Object(mut rule) = rule else {
            return;
        };
        for kept in ["description", "example", "default"] {
            if let Some(v) = map.remove(kept) {
                rule.insert(kept.to_owned(), v);
            }
        }
        if nullable {
            let mut types = match rule.remove("type") {
                Some(Value::Array(types)) => types,
                Some(t) => vec![t],
                None => Vec::new(),
            };
            types.push(json!("null"));
            rule.insert("type".to_owned(), Value::Array(types));
        }
        *map = rule;
    }

    fn not_null(schema: &mut Value) {
        if let Some(types) = schema.get_mut("type").and_then(Value::as_array_mut) {
            types.retain(|t| t != "null");
            if types.len() == 1 {
                let only = types.remove(0);
                schema["type"] = only;
            }
        }
    }

    /// A target: an agent id or group name for `agent` and `group`, a component name for
    /// `server` (`Target::new`; the same rule as an agent id).
    fn target(annotated: &Value) -> Value {
        let variant = |kinds: &[TargetType], id: Value, title: &str| {
            json!({
                "title": title,
                "type": "object",
                "required": ["type", "id"],
                "additionalProperties": false,
                "properties": {
                    "type": {
                        "type": "string",
                        "pattern": any_case(kinds.iter().map(|k| k.as_str())),
                    },
                    "id": id,
                },
            })
        };
        let mut name = rule("name").unwrap_or_default();
        name["description"] = json!("The agent's id or the group's name");
        let mut component = rule("name").unwrap_or_default();
        component["description"] = json!("The server component's name");
        json!({
            "description": annotated.get("description").cloned().unwrap_or_default(),
            "oneOf": [
                variant(&[TargetType::Agent, TargetType::Group], name, "An agent or a group"),
                variant(&[TargetType::Server], component, "A server component"),
            ],
        })
    }
}

/// Schema-only descriptions of the bodies: requests are walked as JSON values by
/// [`crate::dto`] and orders are serialized from the domain's `Order`, so these types are never
/// built. Tests keep them in step with the DTOs' field lists and with real documents.
///
/// A field whose rule is the domain's names it with a `format` that [`rules`] replaces by the
/// rule itself (`format = "name"`: an agent id, group name or idempotency key). Request bodies
/// refuse unknown fields (`deny_unknown_fields` gives `additionalProperties: false`); optional
/// fields are nullable, as `null` counts as absent.
#[allow(dead_code)]
pub(crate) mod schema {
    use serde::Serialize;
    use serde_json::Value;
    use utoipa::ToSchema;

    /// A command request.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"commands": [{
        "source": "Users/Services",
        "user": "admin",
        "target": {"type": "server", "id": "indexer-connector"},
        "action": {"name": "refresh", "args": {"index": ["wazuh-states"]}, "version": "v5"},
        "timeout": 100
    }]}))]
    pub(crate) struct SubmitBody {
        /// 1 to `limits.max_commands` (default 100) commands.
        #[schema(min_items = 1)]
        commands: Vec<CommandBody>,
    }

    /// One command of a request.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct CommandBody {
        /// `Users/Services`, `Engine` or `Content manager`, matched case-insensitively and
        /// stored in this spelling.
        #[schema(value_type = String, format = "source")]
        source: String,
        /// Who originated the request.
        #[schema(format = "keyword")]
        user: Option<String>,
        target: Target,
        action: ActionBody,
        /// The window, in seconds, in which the order must be delivered, counted from its
        /// `not_before`.
        #[schema(minimum = 1, maximum = 32767)]
        timeout: u16,
        /// When the orders may first be handed out; without it, at once.
        schedule: Option<ScheduleBody>,
        /// How many orders may be out at once, and how many failures stop the request
        /// (docs/rollout.md); without it, no cap and no budget.
        rate_control: Option<RateControlBody>,
    }

    /// Rate control of a command (docs/rollout.md). Each limit is a number of orders or a
    /// percentage (`"10%"`) of the command's order count, rounded up.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RateControlBody {
        /// At most this many orders handed out and unfinished at once (at least 1); the rest
        /// are held and released as orders finish.
        #[schema(value_type = Option<String>, format = "rate-limit")]
        max_concurrency: Option<Value>,
        /// When more orders than this failed (by a report or `no result`), the request stops:
        /// every order not handed out yet ends `failure`, `stopped`.
        #[schema(value_type = Option<String>, format = "rate-limit")]
        max_errors: Option<Value>,
    }

    /// A request's action as recorded.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct RequestAction {
        name: String,
        version: String,
    }

    /// The states of a request (docs/requests.md).
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub(crate) enum RequestStateName {
        Writing,
        Scheduled,
        Running,
        Paused,
        Completed,
        Cancelled,
        Stopped,
        Aborted,
    }

    /// The answer of a dry run: one plan per command, in request order.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct DryRunBody {
        plans: Vec<DryRunPlanBody>,
    }

    /// What one command would expand to.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct DryRunPlanBody {
        /// How many orders it would write.
        targets: u64,
        /// Up to 10 of their target ids (a group's first members by id).
        sample: Vec<String>,
    }

    /// A command's start time and rollout window (docs/rollout.md): order `i` of `n` is not handed
    /// out before `start_at + rollout_secs * i / n`.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct ScheduleBody {
        /// RFC 3339; default (and any time in the past) now; at most
        /// `limits.max_schedule_ahead_secs` (default 30 days) ahead, or the submit answers 422.
        #[schema(format = DateTime, example = "2026-11-27T22:00:00Z")]
        start_at: Option<String>,
        /// The window the orders are spread evenly over, in seconds; default 0 (all at the
        /// start), at most 604800 (7 days).
        #[schema(minimum = 0, maximum = 604_800)]
        rollout_secs: Option<u32>,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub(crate) enum TargetType {
        Agent,
        Group,
        Server,
    }

    /// What a command is aimed at: an agent by id or a group by name (`type` agent or group,
    /// in any case), or a server component by name (`type` server).
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Target {
        #[serde(rename = "type")]
        #[schema(value_type = String, format = "target-type")]
        kind: String,
        /// Agent id, group name or server component name.
        id: String,
    }

    /// The action of a command, as submitted.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct ActionBody {
        #[schema(format = "required-keyword")]
        name: String,
        /// A JSON object or array, stored and delivered verbatim; `{}` when absent.
        // The `String` only carries the marker: utoipa drops a `format` on `Object`.
        #[schema(value_type = Option<String>, format = "json-container")]
        args: Option<Value>,
        /// Schema version of the action.
        #[schema(format = "keyword")]
        version: String,
    }

    /// The action of an order.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct Action {
        #[schema(format = "required-keyword")]
        name: String,
        /// A JSON object or array, verbatim as submitted.
        #[schema(value_type = String, format = "json-container")]
        args: Value,
        #[schema(format = "keyword")]
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

    /// The statuses an order ends in.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub(crate) enum RetryStatus {
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
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"status": "success", "code": 0, "message": "restarted"}))]
    pub(crate) struct ReportBody {
        status: ReportStatus,
        #[schema(minimum = -32768, maximum = 32767)]
        code: i16,
        /// Default "".
        #[schema(format = "keyword")]
        message: Option<String>,
        /// Default "", at most 65536 characters.
        #[schema(max_length = 65536)]
        data: Option<String>,
    }

    /// A relay's claim.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"agents": ["web-01", "web-02"], "servers": ["vulnerability-detector"], "limit": 100, "wait": 0}))]
    pub(crate) struct RelayClaimBody {
        /// Agent ids, at most 10,000; with `servers`, at least one consumer.
        #[schema(max_items = 10_000)]
        agents: Option<Vec<Name>>,
        /// Server component names, at most 1,000.
        #[schema(max_items = 1_000)]
        servers: Option<Vec<Name>>,
        /// Most orders to take; default 10.
        #[schema(minimum = 1, maximum = 1000)]
        limit: Option<u16>,
        /// Seconds to wait for an order when none is waiting; default 0; at most the
        /// service's longest wait (`limits.max_poll_wait_secs`).
        #[schema(minimum = 0)]
        wait: Option<u32>,
    }

    /// Results reported in one call. Each item is applied on its own: an item that is not a
    /// valid result (the shape of `ResultItemBody`) gets the outcome `invalid`, and never fails
    /// the others.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"results": [{"order_id": "0193a3f0-0000-7000-8000-000000000001", "status": "success", "code": 0, "message": "done"}]}))]
    pub(crate) struct ResultsBody {
        /// 1 to 1,000 results, each ideally a `ResultItemBody`; any JSON value is answered.
        #[schema(min_items = 1, max_items = 1000, value_type = Vec<Value>)]
        results: Vec<Value>,
    }

    /// One result of a batch: a result report with the order it is for.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct ResultItemBody {
        /// The order's id (a UUID).
        #[schema(format = "uuid")]
        order_id: String,
        status: ReportStatus,
        #[schema(minimum = -32768, maximum = 32767)]
        code: i16,
        /// Default "".
        #[schema(format = "keyword")]
        message: Option<String>,
        /// Default "", at most 65536 characters.
        #[schema(max_length = 65536)]
        data: Option<String>,
    }

    /// An agent id or a group name.
    #[derive(Serialize, ToSchema)]
    #[schema(format = "name")]
    pub(crate) struct Name(String);

    /// An agent registration.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"groups": ["web", "linux"]}))]
    pub(crate) struct AgentBody {
        /// The agent's groups (repeats are kept once).
        groups: Vec<Name>,
    }

    /// One agent of a bulk registration.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"id": "a1", "groups": ["web"]}))]
    pub(crate) struct BulkAgentBody {
        #[schema(format = "name")]
        id: String,
        /// The agent's groups (repeats are kept once).
        groups: Vec<Name>,
    }

    /// A bulk registration: 1 to 10,000 agents. An id given twice is registered once, with
    /// the groups of its last item.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct AgentsBody {
        #[schema(min_items = 1, max_items = 10_000)]
        agents: Vec<BulkAgentBody>,
    }

    /// A registered agent.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct Agent {
        #[schema(format = "name")]
        id: String,
        groups: Vec<Name>,
    }

    /// The agent an order is delivered to.
    #[derive(Serialize, ToSchema)]
    pub(crate) struct AgentRef {
        #[schema(format = "name")]
        id: String,
        groups: Vec<Name>,
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
        /// In its canonical spelling.
        #[schema(value_type = String, format = "source")]
        source: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(format = "keyword")]
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
            serde_json::from_str(&document(&cm_ports::Settings::default(), true)).unwrap();
        assert_eq!(properties(&doc, "SubmitBody"), sorted(dto::SUBMIT_FIELDS));
        assert_eq!(properties(&doc, "CommandBody"), sorted(dto::COMMAND_FIELDS));
        for variant in doc["components"]["schemas"]["Target"]["oneOf"]
            .as_array()
            .unwrap()
        {
            let mut keys: Vec<String> = variant["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            keys.sort();
            assert_eq!(keys, sorted(dto::TARGET_FIELDS));
            assert_eq!(variant["additionalProperties"], json!(false));
        }
        for schema in [
            "SubmitBody",
            "CommandBody",
            "ActionBody",
            "ScheduleBody",
            "RateControlBody",
            "ReportBody",
            "AgentBody",
            "AgentsBody",
            "BulkAgentBody",
        ] {
            assert_eq!(
                doc["components"]["schemas"][schema]["additionalProperties"],
                json!(false),
                "{schema}"
            );
        }
        assert_eq!(properties(&doc, "ActionBody"), sorted(dto::ACTION_FIELDS));
        assert_eq!(
            properties(&doc, "ScheduleBody"),
            sorted(dto::SCHEDULE_FIELDS)
        );
        assert_eq!(properties(&doc, "ReportBody"), sorted(dto::REPORT_FIELDS));
        assert_eq!(
            properties(&doc, "RateControlBody"),
            sorted(dto::RATE_CONTROL_FIELDS)
        );
        assert_eq!(properties(&doc, "AgentBody"), sorted(dto::AGENT_FIELDS));
        assert_eq!(
            properties(&doc, "BulkAgentBody"),
            sorted(dto::BULK_AGENT_FIELDS)
        );
    }

    #[test]
    fn every_size_parameter_states_the_page_size_the_use_cases_apply() {
        let doc: Value =
            serde_json::from_str(&document(&cm_ports::Settings::default(), true)).unwrap();
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

    fn doc(auth: bool) -> Value {
        serde_json::from_str(&document(&cm_ports::Settings::default(), auth)).unwrap()
    }

    fn operations(doc: &Value) -> Vec<(String, &Value)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                ops.push((format!("{method} {path}"), op));
            }
        }
        ops
    }

    #[test]
    fn with_auth_off_no_operation_asks_for_credentials() {
        let doc = doc(false);
        assert!(doc["components"].get("securitySchemes").is_none());
        for (name, op) in operations(&doc) {
            assert!(op.get("security").is_none(), "{name}");
            for status in ["401", "403"] {
                assert!(op["responses"].get(status).is_none(), "{name} {status}");
            }
        }
    }

    #[test]
    fn with_auth_on_every_operation_asks_for_the_credentials_of_its_role() {
        let doc = doc(true);
        let mut schemes = 0;
        for (name, op) in operations(&doc) {
            let path = name.split_once(' ').unwrap().1;
            let expected = match role_of(path) {
                Role::Open => json!([]),
                Role::Manager => json!([{MANAGER_TOKEN: []}]),
                Role::Agent | Role::Component => json!([{AGENT_KEY: []}]),
                Role::Reporter => json!([{AGENT_KEY: []}, {RELAY_TOKEN: []}]),
                Role::Relay => json!([{RELAY_TOKEN: []}]),
            };
            assert_eq!(op["security"], expected, "{name}");
            if role_of(path) != Role::Open {
                schemes += 1;
                assert!(op["responses"].get("401").is_some(), "{name}");
            }
        }
        assert!(schemes > 10);
    }

    #[test]
    fn no_rule_marker_is_left_in_the_document() {
        fn formats(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(f) = m.get("format").and_then(Value::as_str) {
                        out.push(f.to_owned());
                    }
                    m.values().for_each(|v| formats(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| formats(v, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        formats(&doc(true), &mut found);
        for f in found {
            assert!(
                ["uuid", "date-time", "int32", "int64"].contains(&f.as_str()),
                "an unknown format (a misspelt rule marker?): {f}"
            );
        }
    }

    #[test]
    fn the_submit_example_is_a_body_the_dtos_accept() {
        let doc = doc(false);
        let example = &doc["components"]["schemas"]["SubmitBody"]["example"];
        assert!(dto::commands(example, 100).is_ok(), "{example}");
        let report = &doc["components"]["schemas"]["ReportBody"]["example"];
        assert!(dto::report(report).is_ok(), "{report}");
        let id = cm_domain::AgentId::parse("a1", "agent_id").unwrap();
        let agent = &doc["components"]["schemas"]["AgentBody"]["example"];
        assert!(dto::agent(id, agent).is_ok(), "{agent}");
    }

    #[test]
    fn enums_list_exactly_what_the_parsers_accept() {
        let doc = doc(false);
        let statuses: Vec<&str> = cm_domain::Status::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            doc["components"]["schemas"]["Status"]["enum"],
            json!(statuses)
        );
        let ended: Vec<&str> = cm_domain::Status::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(
            doc["components"]["schemas"]["RetryStatus"]["enum"],
            json!(ended)
        );
        let states: Vec<&str> = cm_domain::RequestState::ALL
            .iter()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(
            doc["components"]["schemas"]["RequestStateName"]["enum"],
            json!(states)
        );
        for s in doc["components"]["schemas"]["ReportStatus"]["enum"]
            .as_array()
            .unwrap()
        {
            assert!(
                cm_domain::ReportStatus::parse(s.as_str().unwrap()).is_ok(),
                "{s}"
            );
        }
    }

    /// Each pattern against its parser, on strings on both sides of every rule.
    mod patterns {
        use cm_domain::{
            AgentId, KEYWORD_PATTERN, NAME_PATTERN, REQUIRED_KEYWORD_PATTERN, Source, TargetType,
            check_text,
        };
        use cm_ports::OrderCursor;
        use regex::Regex;

        use super::super::rules::any_case;

        const SAMPLES: &[&str] = &[
            "",
            " ",
            ".",
            "..",
            "...",
            ".a",
            "a.",
            "a..b",
            "001",
            "web-01.example:x",
            "a@b_c",
            "ä",
            "a b",
            "a/b",
            "a\u{0}b",
            "\t",
            "x\n",
            "\u{7f}",
            "\u{85}",
            "\u{a0}",
            "\u{3000}",
            "\u{feff}",
            "é",
            "Users/Services",
            "users/SERVICES",
            "engine",
            "Content manager",
            "content  manager",
            "AGENT",
            "Group",
            "server",
            "servers",
            "clusters",
            "18f2a1b3c4d_0193a5e0000070008000000000000000",
            "18F2A1B3C4D_0193a5e0000070008000000000000000",
            "+1_0193a5e0000070008000000000000000",
            "1_0193a5e0-0000-7000-8000-000000000000",
        ];

        fn agrees(pattern: &str, accepts: impl Fn(&str) -> bool) {
            let re = Regex::new(pattern).unwrap();
            for s in SAMPLES {
                assert_eq!(re.is_match(s), accepts(s), "{pattern} on {s:?}");
            }
        }

        #[test]
        fn name_pattern_is_the_agent_id_rule() {
            let long = "a".repeat(255);
            agrees(NAME_PATTERN, |s| AgentId::parse(s, "x").is_ok());
            assert!(AgentId::parse(&long, "x").is_ok());
            assert!(Regex::new(NAME_PATTERN).unwrap().is_match(&long));
        }

        #[test]
        fn keyword_patterns_are_the_text_rule() {
            agrees(KEYWORD_PATTERN, |s| check_text(s, "x", false).is_ok());
            agrees(REQUIRED_KEYWORD_PATTERN, |s| {
                check_text(s, "x", true).is_ok()
            });
            let re = Regex::new(REQUIRED_KEYWORD_PATTERN).unwrap();
            for c in (0..=0x3000u32).filter_map(char::from_u32) {
                let s = c.to_string();
                assert_eq!(re.is_match(&s), check_text(&s, "x", true).is_ok(), "{c:?}");
            }
        }

        #[test]
        fn source_and_target_type_patterns_match_in_any_case() {
            agrees(&any_case(Source::ALL.map(Source::as_str)), |s| {
                Source::parse(s).is_ok()
            });
            agrees(&any_case(TargetType::ALL.map(TargetType::as_str)), |s| {
                TargetType::parse(s).is_ok()
            });
        }

        #[test]
        fn cursor_pattern_is_what_decode_accepts() {
            agrees(OrderCursor::PATTERN, |s| {
                OrderCursor::decode(s, "after").is_ok()
            });
        }
    }
}
