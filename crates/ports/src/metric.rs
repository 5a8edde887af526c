//! The metrics of the use cases and of the storage decorator ([`crate::instrumented`]): each
//! metric's name, kind, unit and HELP text declared together, and every label value as an enum
//! rendered by its one `as_str`, so the exporter, the dashboards and the code agree.
//!
//! [`describe`] registers the HELP texts with the installed recorder; the binary calls it at
//! start-up (see docs/operations.md), next to the other crates' `describe`.

use metrics::Unit;

/// The Prometheus type of a [`Metric`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: its name, kind, unit and HELP text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub help: &'static str,
}

impl Metric {
    /// A counter of things (`Unit::Count`).
    #[must_use]
    pub const fn counter(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Counter,
            unit: Unit::Count,
            help,
        }
    }

    #[must_use]
    pub const fn gauge(name: &'static str, unit: Unit, help: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Gauge,
            unit,
            help,
        }
    }

    #[must_use]
    pub const fn histogram(name: &'static str, unit: Unit, help: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Histogram,
            unit,
            help,
        }
    }

    /// Registers the metric's unit and HELP text with the installed recorder.
    pub fn describe(&self) {
        match self.kind {
            Kind::Counter => metrics::describe_counter!(self.name, self.unit, self.help),
            Kind::Gauge => metrics::describe_gauge!(self.name, self.unit, self.help),
            Kind::Histogram => metrics::describe_histogram!(self.name, self.unit, self.help),
        }
    }
}

/// Counter: orders written to the stream by submits and retries.
pub const ORDERS_CREATED: Metric = Metric::counter(
    "cm_orders_created_total",
    "Orders written to the orders stream by submits and retries (an idempotent replay creates none).",
);

/// Counter with labels `to` (the new status, `Status::as_str`) and `via` ([`Via`]).
pub const ORDER_TRANSITIONS: Metric = Metric::counter(
    "cm_order_transitions_total",
    "Orders moved to a new status, by the status they moved to (to) and what moved them (via).",
);

/// Gauge: long-polls currently waiting.
pub const OPEN_LONG_POLLS: Metric = Metric::gauge(
    "cm_long_polls_open",
    Unit::Count,
    "Agents' long-polls currently open on this instance.",
);

/// Counter with label `mode` (`RetentionMode::as_str`).
pub const ORDERS_PURGED: Metric = Metric::counter(
    "cm_orders_purged_total",
    "Finished orders removed from the orders stream by retention, by mode (delete or archive).",
);

/// Histogram with labels `op` ([`StoreOp`]), `backend` (the name the binary gives the backend:
/// memory, sqlite, postgres, opensearch) and `outcome` ([`Outcome`]).
pub const STORE_OPERATION: Metric = Metric::histogram(
    "cm_store_operation_seconds",
    Unit::Seconds,
    "Duration of one storage operation, by operation (op), backend and outcome (ok or error).",
);

/// Gauge: relay claims currently waiting.
pub const OPEN_RELAY_CLAIMS: Metric = Metric::gauge(
    "cm_relay_claims_open",
    Unit::Count,
    "Relays' claims currently open (waiting for orders) on this instance.",
);

/// Counter: orders handed out by relay claims.
pub const ORDERS_CLAIMED_BY_RELAYS: Metric = Metric::counter(
    "cm_relay_orders_claimed_total",
    "Orders handed out (marked sent) by relays' claims, on behalf of their agents and components.",
);

/// Counter with label `outcome` ([`ResultOutcome`]).
pub const RESULTS: Metric = Metric::counter(
    "cm_results_total",
    "Results reported, one per order, by outcome (applied, already_applied, conflict, not_found, forbidden, invalid).",
);

/// Counter with label `to` (`RequestState::as_str`): request records entering a state.
pub const REQUEST_TRANSITIONS: Metric = Metric::counter(
    "cm_request_transitions_total",
    "Requests that entered a state (to): writing, scheduled, running, paused, completed, cancelled, stopped, aborted.",
);

/// Counter: held orders released by rate control.
pub const ORDERS_RELEASED: Metric = Metric::counter(
    "cm_orders_released_total",
    "Held orders of rate-controlled requests released as concurrency slots freed up (or on resume).",
);

/// Counter with label `reason` (the request's `state_reason`).
pub const REQUEST_STOPS: Metric = Metric::counter(
    "cm_request_stops_total",
    "Requests that stopped by themselves, by reason (error budget exhausted, held too long).",
);

/// Every metric of this crate.
pub const ALL: [Metric; 11] = [
    ORDERS_CREATED,
    ORDER_TRANSITIONS,
    OPEN_LONG_POLLS,
    ORDERS_PURGED,
    STORE_OPERATION,
    OPEN_RELAY_CLAIMS,
    ORDERS_CLAIMED_BY_RELAYS,
    RESULTS,
    REQUEST_TRANSITIONS,
    ORDERS_RELEASED,
    REQUEST_STOPS,
];

/// Registers the HELP text of every metric of this crate with the installed recorder.
pub fn describe() {
    for metric in ALL {
        metric.describe();
    }
}

/// The `via` label of [`ORDER_TRANSITIONS`]: what moved the orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// Handed to their agent by a poll for the first time (to `sent`).
    Delivered,
    /// Handed to their agent again after the redelivery delay (to `sent`).
    Redelivered,
    /// The agent reported it is working on the order (to `in_progress`).
    Progress,
    /// The agent reported the result (to `success` or `failure`).
    Reported,
    /// Never delivered before their deadline (to `failure`).
    Expired,
    /// The request stopped (error budget, held too long) before the order was handed out.
    Stopped,
    /// Cancelled while pending, one by one or with their whole request (to `failure`).
    Cancelled,
    /// Delivered, but their agent reported nothing before the result deadline (to `failure`).
    NoResult,
}

impl Via {
    pub const ALL: [Self; 8] = [
        Self::Delivered,
        Self::Redelivered,
        Self::Progress,
        Self::Reported,
        Self::Expired,
        Self::Stopped,
        Self::Cancelled,
        Self::NoResult,
    ];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Redelivered => "redelivered",
            Self::Progress => "progress",
            Self::Reported => "reported",
            Self::Expired => "expired",
            Self::Stopped => "stopped",
            Self::Cancelled => "cancelled",
            Self::NoResult => "no_result",
        }
    }
}

/// What became of one reported result (the `outcome` label of [`RESULTS`] and the `outcome` of
/// each item of `POST /api/v1/results`, docs/api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultOutcome {
    /// The order took the result.
    Applied,
    /// The order already carried this very result; nothing changed.
    AlreadyApplied,
    /// The order is in a state that does not take this result.
    Conflict,
    NotFound,
    /// The reporter may not report for this order.
    Forbidden,
    /// The item itself is malformed.
    Invalid,
}

impl ResultOutcome {
    pub const ALL: [Self; 6] = [
        Self::Applied,
        Self::AlreadyApplied,
        Self::Conflict,
        Self::NotFound,
        Self::Forbidden,
        Self::Invalid,
    ];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::AlreadyApplied => "already_applied",
            Self::Conflict => "conflict",
            Self::NotFound => "not_found",
            Self::Forbidden => "forbidden",
            Self::Invalid => "invalid",
        }
    }

    /// Counts one result with this outcome.
    pub fn count(self) {
        metrics::counter!(RESULTS.name, "outcome" => self.as_str()).increment(1);
    }
}

/// The `outcome` label: whether the work succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    Error,
}

impl Outcome {
    /// `Ok` for an `Ok`, `Error` for an `Err`.
    #[must_use]
    pub const fn of<T, E>(result: &Result<T, E>) -> Self {
        match result {
            Ok(_) => Self::Ok,
            Err(_) => Self::Error,
        }
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
        }
    }
}

/// The `op` label of [`STORE_OPERATION`]: one method of `OrderStore`, `AgentRegistry` or
/// `ComponentRegistry` or `RequestStore`. The registries' methods are prefixed `agent_` /
/// `component_`, the request store's `request_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreOp {
    Insert,
    Get,
    Query,
    Claim,
    Replace,
    NextDue,
    EndPending,
    ReleaseHeld,
    ResultGroups,
    ExpireDue,
    GiveUpUnreported,
    PurgeFinished,
    GetArchived,
    Progress,
    DeleteRequest,
    Ping,
    AgentUpsert,
    AgentUpsertMany,
    AgentSetKeyHash,
    AgentKeyHash,
    AgentGet,
    AgentDelete,
    AgentList,
    AgentCount,
    ComponentRegister,
    ComponentSetKeyHash,
    ComponentKeyHash,
    ComponentList,
    ComponentDelete,
    RequestCreate,
    RequestGet,
    RequestReplace,
    RequestList,
    RequestUnsettled,
    RequestPurgeSettled,
    RequestWriteWhole,
}

impl StoreOp {
    pub const ALL: [Self; 36] = [
        Self::Insert,
        Self::Get,
        Self::Query,
        Self::Claim,
        Self::Replace,
        Self::NextDue,
        Self::EndPending,
        Self::ReleaseHeld,
        Self::ResultGroups,
        Self::ExpireDue,
        Self::GiveUpUnreported,
        Self::PurgeFinished,
        Self::GetArchived,
        Self::Progress,
        Self::DeleteRequest,
        Self::Ping,
        Self::AgentUpsert,
        Self::AgentUpsertMany,
        Self::AgentSetKeyHash,
        Self::AgentKeyHash,
        Self::AgentGet,
        Self::AgentDelete,
        Self::AgentList,
        Self::AgentCount,
        Self::ComponentRegister,
        Self::ComponentSetKeyHash,
        Self::ComponentKeyHash,
        Self::ComponentList,
        Self::ComponentDelete,
        Self::RequestCreate,
        Self::RequestGet,
        Self::RequestReplace,
        Self::RequestList,
        Self::RequestUnsettled,
        Self::RequestPurgeSettled,
        Self::RequestWriteWhole,
    ];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Insert => "insert",
            Self::Get => "get",
            Self::Query => "query",
            Self::Claim => "claim",
            Self::Replace => "replace",
            Self::NextDue => "next_due",
            Self::EndPending => "end_pending",
            Self::ReleaseHeld => "release_held",
            Self::ResultGroups => "result_groups",
            Self::ExpireDue => "expire_due",
            Self::GiveUpUnreported => "give_up_unreported",
            Self::PurgeFinished => "purge_finished",
            Self::GetArchived => "get_archived",
            Self::Progress => "progress",
            Self::DeleteRequest => "delete_request",
            Self::Ping => "ping",
            Self::AgentUpsert => "agent_upsert",
            Self::AgentUpsertMany => "agent_upsert_many",
            Self::AgentSetKeyHash => "agent_set_key_hash",
            Self::AgentKeyHash => "agent_key_hash",
            Self::AgentGet => "agent_get",
            Self::AgentDelete => "agent_delete",
            Self::AgentList => "agent_list",
            Self::AgentCount => "agent_count",
            Self::ComponentRegister => "component_register",
            Self::ComponentSetKeyHash => "component_set_key_hash",
            Self::ComponentKeyHash => "component_key_hash",
            Self::ComponentList => "component_list",
            Self::ComponentDelete => "component_delete",
            Self::RequestCreate => "request_create",
            Self::RequestGet => "request_get",
            Self::RequestReplace => "request_replace",
            Self::RequestList => "request_list",
            Self::RequestUnsettled => "request_unsettled",
            Self::RequestPurgeSettled => "request_purge_settled",
            Self::RequestWriteWhole => "request_write_whole",
        }
    }
}

/// Counts `n` orders moved to `to` by `via` (nothing when `n` is 0, so no empty series).
pub(crate) fn count_transition(to: cm_domain::Status, via: Via, n: u64) {
    if n > 0 {
        metrics::counter!(
            ORDER_TRANSITIONS.name,
            "to" => to.as_str(),
            "via" => via.as_str(),
        )
        .increment(n);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn metric_names_are_unique_prefixed_and_described() {
        let names: HashSet<_> = ALL.iter().map(|m| m.name).collect();
        assert_eq!(names.len(), ALL.len());
        for m in ALL {
            assert!(m.name.starts_with("cm_"), "{}", m.name);
            assert!(!m.help.is_empty(), "{}", m.name);
            if m.kind == Kind::Counter {
                assert!(m.name.ends_with("_total"), "{}", m.name);
            }
        }
    }

    #[test]
    fn label_values_are_distinct_snake_case() {
        let ops: HashSet<_> = StoreOp::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(ops.len(), StoreOp::ALL.len());
        let vias: HashSet<_> = Via::ALL.iter().map(|v| v.as_str()).collect();
        assert_eq!(vias.len(), Via::ALL.len());
        for label in ops.iter().chain(&vias) {
            assert!(
                label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{label}"
            );
        }
    }
}
