//! The API's bodies where they are its own (docs/api.md). Orders and agents are the domain's
//! [`cm_domain::Order`] and [`cm_domain::Agent`]; a request is rendered with its counts, so it
//! has a struct here, [`RequestInfo`], that keeps the domain's [`RequestState`].

use cm_domain::{Agent, Order, RequestState, Status};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One page of a listing and the cursor of the next (`None` on the last page).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// One command of a submit (docs/orders.md, the command request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewCommand {
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub target: TargetRef,
    pub action: NewAction,
    pub timeout: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_control: Option<RateSpec>,
}

impl NewCommand {
    /// A command from `Users/Services` with an empty args object, version `v5` and a timeout of
    /// 300 s, to adjust.
    #[must_use]
    pub fn new(target: TargetRef, action: &str) -> Self {
        Self {
            source: "Users/Services".into(),
            user: None,
            target,
            action: NewAction {
                name: action.into(),
                args: Value::Object(serde_json::Map::new()),
                version: "v5".into(),
            },
            timeout: 300,
            schedule: None,
            rate_control: None,
        }
    }
}

/// A command's target as submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRef {
    /// `agent`, `group` or `server`.
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

impl TargetRef {
    #[must_use]
    pub fn agent(id: &str) -> Self {
        Self {
            kind: "agent".into(),
            id: id.into(),
        }
    }

    #[must_use]
    pub fn group(id: &str) -> Self {
        Self {
            kind: "group".into(),
            id: id.into(),
        }
    }

    #[must_use]
    pub fn server(id: &str) -> Self {
        Self {
            kind: "server".into(),
            id: id.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewAction {
    pub name: String,
    /// A JSON object or array.
    pub args: Value,
    pub version: String,
}

/// `schedule` of a command (docs/rollout.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ScheduleSpec {
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_secs: Option<u64>,
}

/// `rate_control` of a command: each limit a number or `"P%"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RateSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<Value>,
}

/// The answer of a submit or a retry: per command, its request and order ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    pub requests: Vec<SubmittedRequest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmittedRequest {
    pub request_id: String,
    pub order_ids: Vec<String>,
}

/// The answer of a dry run: one plan per command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRun {
    pub plans: Vec<Plan>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub targets: u64,
    pub sample: Vec<String>,
}

/// A request as the API renders it: its record (absent fields for a request from before
/// records) and the counts of its orders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestInfo {
    pub request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<RequestActionInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_control: Option<RateSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RequestState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub total: u64,
    pub pending: u64,
    pub sent: u64,
    pub in_progress: u64,
    pub success: u64,
    pub failure: u64,
    #[serde(default)]
    pub errors: u64,
}

impl RequestInfo {
    /// Whether the request will change no more: a final state, or (a request without a
    /// record) no order left pending, sent or in progress.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        match self.state {
            Some(s) => matches!(
                s,
                RequestState::Completed
                    | RequestState::Cancelled
                    | RequestState::Stopped
                    | RequestState::Aborted
            ),
            None => self.pending + self.sent + self.in_progress == 0,
        }
    }

    /// Finished orders.
    #[must_use]
    pub const fn finished(&self) -> u64 {
        self.success + self.failure
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestActionInfo {
    pub name: String,
    pub version: String,
}

/// Counts after a request's cancel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub request_id: String,
    pub total: u64,
    pub pending: u64,
    pub sent: u64,
    pub in_progress: u64,
    pub success: u64,
    pub failure: u64,
}

/// Finished orders of a request that ended alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultGroup {
    pub status: Status,
    pub code: i64,
    pub message: String,
    pub count: u64,
    pub sample: Vec<String>,
}

/// Filters of the requests listing; `None` = not filtered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFilter {
    pub state: Option<String>,
    pub action: Option<String>,
    pub user: Option<String>,
    pub source: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub size: Option<u32>,
    pub after: Option<String>,
}

/// Filters of the orders listing; `None` = not filtered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFilter {
    pub status: Option<String>,
    pub agent_id: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub request_id: Option<String>,
    pub action: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub size: Option<u32>,
    pub after: Option<String>,
}

/// The answer of `PUT /api/v1/agents/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredAgent {
    pub id: String,
    pub groups: Vec<String>,
    /// Only for a new agent, shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// One agent of a bulk registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAgent {
    pub id: String,
    pub groups: Vec<String>,
}

/// One agent of a bulk registration's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkRegistered {
    pub id: String,
    pub created: bool,
    /// Only for a new agent, shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A new key of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedKey {
    pub id: String,
    pub key: String,
}

/// The answer of `PUT /api/v1/servers/{name}` and of its key rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredServer {
    pub component: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A result report (docs/api.md, `POST /api/v1/orders/{id}/result`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// `in_progress`, `success` or `failure`.
    pub status: String,
    pub code: i16,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub data: String,
}

/// One report of `POST /api/v1/results`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReport {
    pub order_id: String,
    #[serde(flatten)]
    pub report: Report,
}

/// What became of one report of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    pub order_id: String,
    /// `applied`, `already_applied`, `conflict`, `not_found`, `forbidden`, `invalid`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A relay's claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RelayClaim {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<u64>,
}

// ---- wire shapes of listings, private to the client ------------------------------------------

#[derive(Debug, Deserialize)]
pub(crate) struct RequestPage {
    pub(crate) requests: Vec<RequestInfo>,
    pub(crate) next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct OrderPage {
    pub(crate) orders: Vec<Order>,
    pub(crate) next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Orders {
    pub(crate) orders: Vec<Order>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct AgentPage {
    pub(crate) agents: Vec<Agent>,
    pub(crate) next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ServerPage {
    pub(crate) servers: Vec<String>,
    pub(crate) next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Results {
    pub(crate) groups: Vec<ResultGroup>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct BulkAgents {
    pub(crate) agents: Vec<BulkRegistered>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct BatchOutcomes {
    pub(crate) results: Vec<BatchOutcome>,
}
