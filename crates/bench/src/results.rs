//! What one `cm-bench run` measured on one backend: written as JSON, read back by
//! `cm-bench render` to build `BENCHMARKS.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::stats::Latency;

/// Every measurement of one backend.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct BackendRun {
    pub(crate) backend: String,
    pub(crate) quick: bool,
    /// RFC 3339, when the run started.
    pub(crate) started_at: String,
    pub(crate) duration_secs: f64,
    /// `/proc/loadavg` (1, 5, 15 minutes) before and after the run.
    pub(crate) load_before: String,
    pub(crate) load_after: String,
    /// The backend server's version (`SELECT version()`, OpenSearch's `version.number`).
    pub(crate) version: Option<String>,
    /// Why the backend could not be measured at all.
    pub(crate) unavailable: Option<String>,
    /// The `CM_` settings the benchmark gave the service beyond the backend's own.
    pub(crate) settings: Vec<String>,
    pub(crate) registration: Option<Registration>,
    pub(crate) fanout: Vec<FanOut>,
    pub(crate) throughput: Option<Throughput>,
    pub(crate) delivery: Vec<Delivery>,
    pub(crate) open_polls: Option<OpenPolls>,
    pub(crate) expiry: Option<Expiry>,
    pub(crate) relay: Option<Relay>,
    pub(crate) requests: Option<Requests>,
    /// Scenario name → why it has no numbers.
    pub(crate) errors: BTreeMap<String, String>,
}

/// Agents registered through `PUT /api/v1/agents` before the scenarios.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Registration {
    pub(crate) agents: u64,
    /// How they were registered.
    pub(crate) method: String,
    pub(crate) secs: f64,
}

/// One request to a group, until every order is durable, beside the raw write of the same
/// documents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FanOut {
    pub(crate) agents: u64,
    /// Seconds of each repetition: submit until the 201.
    pub(crate) ours_secs: Vec<f64>,
    /// Seconds of each repetition of the raw write.
    pub(crate) raw_secs: Vec<f64>,
    /// How the raw write was done.
    pub(crate) raw_method: String,
    /// Seconds to page through the group with `GET /api/v1/agents?group=` (1,000 a page, as
    /// the expansion reads the registry): the registry-reading share of a fan-out.
    #[serde(default)]
    pub(crate) group_read_secs: Option<f64>,
}

/// Single-agent submits from concurrent clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Throughput {
    pub(crate) clients: usize,
    pub(crate) secs: f64,
    pub(crate) orders: u64,
    pub(crate) errors: u64,
    pub(crate) latency: Latency,
}

/// Submit → received by the agent's open long-poll.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Delivery {
    /// `one instance` or `two instances`.
    pub(crate) topology: String,
    /// From sending the submit until the poll's answer with the order is received.
    pub(crate) latency: Latency,
    /// From the submit's `201` until the poll's answer is received (0 when the answer came
    /// first): what the agent waits once the manager has been told the order exists.
    #[serde(default)]
    pub(crate) after_ack: Option<Latency>,
    /// The submit's own latency: sent → `201` received.
    #[serde(default)]
    pub(crate) submit: Option<Latency>,
    /// Orders pending in the stream (for other agents) while measured.
    #[serde(default)]
    pub(crate) pending: Option<u64>,
    /// Deliveries that did not come on the poll open when the submit was made.
    pub(crate) late: u64,
    /// The slowest rounds, slowest first, with the wall-clock instant each submit was sent: to
    /// find what else the service or the backend was doing then (its logs, autovacuum).
    #[serde(default)]
    pub(crate) slowest: Vec<Round>,
}

/// One measured delivery round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Round {
    /// When the submit was sent (UTC).
    pub(crate) sent_at: chrono::DateTime<chrono::Utc>,
    /// Sent → the poll's answer received.
    pub(crate) latency_ms: f64,
    /// Sent → the submit's `201` received.
    pub(crate) submit_ms: f64,
}

/// Idle long-polls held at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OpenPolls {
    pub(crate) polls: u64,
    pub(crate) source_addresses: usize,
    /// From the first poll sent until the service counted every one as open.
    pub(crate) established_secs: f64,
    pub(crate) hold_secs: f64,
    pub(crate) rss_before_bytes: u64,
    /// Highest resident memory sampled while holding them.
    pub(crate) rss_holding_bytes: u64,
    /// CPU of the service while holding them (100 = one core busy).
    pub(crate) cpu_percent: f64,
    /// Submit → received, for single agents among the held ones.
    pub(crate) wake: Latency,
    /// How long the service took to let go of the polls once their clients hung up.
    pub(crate) released_secs: Option<f64>,
    /// The fewest polls the service counted open during the hold.
    #[serde(default)]
    pub(crate) fewest_open: u64,
    /// Polls refused with 503 while opening (each retried after a second).
    #[serde(default)]
    pub(crate) refused: u64,
}

/// Overdue pending orders expired by one scheduler run, beside the raw bulk update.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Expiry {
    /// The request whose orders expired (the requests scenario reads its results breakdown).
    #[serde(default)]
    pub(crate) request_id: String,
    pub(crate) orders: u64,
    /// The expiry job's own duration (`elapsed_ms` of its log line).
    pub(crate) ours_secs: f64,
    pub(crate) raw_secs: f64,
    pub(crate) raw_method: String,
}

/// One relay claiming for every agent of a group while a fan-out to that group is written, and
/// the relay's wake-up by a single agent's order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Relay {
    /// Agent ids in each claim.
    pub(crate) agents: u64,
    /// The claims' `limit`.
    pub(crate) limit: u32,
    /// The claims' `wait`, in seconds.
    pub(crate) wait_secs: u64,
    /// The fan-out to those agents, written while the relay claims: submit until the 201.
    pub(crate) fanout_secs: f64,
    /// From the submit being sent until the relay has claimed every order of it.
    pub(crate) claimed_secs: f64,
    /// Claims that answered orders of the fan-out.
    pub(crate) claims: u64,
    /// Reporting every order's result through `POST /api/v1/results`, 1,000 a call, once all
    /// were claimed.
    pub(crate) reported_secs: f64,
    /// Submit of a single-agent order → received by the relay's waiting claim.
    pub(crate) wake: Latency,
    /// Orders that did not come on the claim waiting when the submit was made.
    pub(crate) late: u64,
}

/// Requests as records: the listing an operator opens first, and the breakdown of one large
/// request's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Requests {
    /// Orders in the stream while the listing was read (the sum of every request's `total`).
    pub(crate) stream_orders: u64,
    /// Requests in the stream.
    pub(crate) requests: u64,
    /// `GET /api/v1/requests?size=50`: 50 records, each with its counts.
    pub(crate) list: Latency,
    /// Orders of the request whose results were grouped.
    pub(crate) breakdown_orders: u64,
    /// `GET /api/v1/requests/{id}/results` of that request.
    pub(crate) breakdown: Latency,
}
