//! The order: one document of the orders stream, and its state machine.
//!
//! ```text
//! pending --deliver--> sent --report--> success | failure
//!                      sent --report in_progress--> in_progress --report--> success | failure
//! pending --expire (deadline passed)--> failure (expired)
//! pending --cancel--> failure (cancelled)
//! sent | in_progress --give_up (result_timeout passed)--> failure (no result)
//! sent --deliver again (redeliver_after passed)--> sent
//! pending (held) --release--> pending
//! pending --stop (request stopped)--> failure (stopped | expired)
//! ```
//! An order of a request with a concurrency cap (docs/rollout.md) carries its `position` in the
//! request and starts `held` unless its position is among the first slots: a held order is
//! neither deliverable nor expirable, and its delivery deadline counts from its release.
//! Every transition is a function of the current order and `now` that returns the next order or
//! a [`TransitionError`]; storage applies the result only if the stored order is still the one
//! the transition started from (compare-and-set).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::command::{Action, Source, Target, TargetType, Timeout, check_text};
use crate::consumer::Consumer;
use crate::error::{FieldError, TransitionError};
use crate::ids::{AgentId, ComponentName, GroupName, OrderId, RequestId};
use crate::policy::DeliveryPolicy;
use crate::time::{millis, opt_millis};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Sent,
    InProgress,
    Success,
    Failure,
}

impl Status {
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Sent,
        Self::InProgress,
        Self::Success,
        Self::Failure,
    ];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::InProgress => "in_progress",
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }

    /// # Errors
    /// A [`FieldError`] on `field` naming the accepted values.
    pub fn parse(raw: &str, field: &str) -> Result<Self, FieldError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| {
                FieldError::new(
                    field,
                    "must be one of pending, sent, in_progress, success, failure",
                )
            })
    }

    /// `success` and `failure` are final: no transition leaves them.
    #[must_use]
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Success | Self::Failure)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome recorded on an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    code: i16,
    #[serde(default)]
    message: String,
    #[serde(default)]
    data: String,
}

/// Result code the service records when it, not the agent, ends an order.
pub const SERVICE_RESULT_CODE: i16 = -1;
/// Result message of an order whose delivery deadline passed.
pub const EXPIRED: &str = "expired";
/// Result message of an order a manager cancelled.
pub const CANCELLED: &str = "cancelled";
/// Result message of a delivered order whose agent never reported a final result.
pub const NO_RESULT: &str = "no result";
/// Result message of an order not yet handed out when its request stopped.
pub const STOPPED: &str = "stopped";

/// How the service ends a `pending` order (held or not) on behalf of its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PendingEnd {
    /// The request was cancelled: `failure`, `cancelled`.
    Cancelled,
    /// The request stopped when its error budget ran out: `failure`, `stopped`.
    Stopped,
    /// The request was held too long: `failure`, `expired`.
    Expired,
}

impl PendingEnd {
    /// The result message the ended orders carry.
    #[must_use]
    pub const fn message(self) -> &'static str {
        match self {
            Self::Cancelled => CANCELLED,
            Self::Stopped => STOPPED,
            Self::Expired => EXPIRED,
        }
    }
}
/// Longest `data` of a report, in characters (Unicode scalar values, as JSON Schema's
/// `maxLength` counts them).
pub const MAX_RESULT_DATA: usize = 64 * 1024;

impl CommandResult {
    fn service(message: &str) -> Self {
        Self {
            code: SERVICE_RESULT_CODE,
            message: message.to_owned(),
            data: String::new(),
        }
    }

    #[must_use]
    pub const fn code(&self) -> i16 {
        self.code
    }

    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    #[must_use]
    pub fn data(&self) -> &str {
        &self.data
    }
}

/// What an agent may report about one of its orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReportStatus {
    Success,
    Failure,
    InProgress,
}

impl ReportStatus {
    /// # Errors
    /// A [`FieldError`] on `status` naming the accepted values.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        match raw {
            "success" => Ok(Self::Success),
            "failure" => Ok(Self::Failure),
            "in_progress" => Ok(Self::InProgress),
            _ => Err(FieldError::new(
                "status",
                "must be one of success, failure, in_progress",
            )),
        }
    }

    const fn status(self) -> Status {
        match self {
            Self::Success => Status::Success,
            Self::Failure => Status::Failure,
            Self::InProgress => Status::InProgress,
        }
    }
}

/// A validated result report from an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    status: ReportStatus,
    result: CommandResult,
}

impl Report {
    /// # Errors
    /// A [`FieldError`] on `code`, `message` or `data`.
    pub fn new(
        status: ReportStatus,
        code: i64,
        message: &str,
        data: &str,
    ) -> Result<Self, FieldError> {
        let code = i16::try_from(code)
            .map_err(|_| FieldError::new("code", "must be an integer from -32768 to 32767"))?;
        check_text(message, "message", false)?;
        if data.chars().count() > MAX_RESULT_DATA {
            return Err(FieldError::new(
                "data",
                format!("must be at most {MAX_RESULT_DATA} characters"),
            ));
        }
        Ok(Self {
            status,
            result: CommandResult {
                code,
                message: message.to_owned(),
                data: data.to_owned(),
            },
        })
    }

    #[must_use]
    pub const fn status(&self) -> ReportStatus {
        self.status
    }

    #[must_use]
    pub const fn result(&self) -> &CommandResult {
        &self.result
    }
}

/// What a report did to an order.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // short-lived; boxing would only add an allocation
pub enum ReportOutcome {
    /// The order moved on; store this new version.
    Applied(Order),
    /// The order already says exactly this (a repeated report): nothing to store.
    AlreadyApplied,
}

/// The agent an order is delivered to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRef {
    id: AgentId,
    #[serde(default)]
    groups: Vec<GroupName>,
}

impl AgentRef {
    #[must_use]
    pub const fn id(&self) -> &AgentId {
        &self.id
    }

    #[must_use]
    pub fn groups(&self) -> &[GroupName] {
        &self.groups
    }
}

/// The `command` part of an order document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderCommand {
    source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    target: Target,
    action: Action,
    timeout: Timeout,
    status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<CommandResult>,
    request_id: RequestId,
    order_id: OrderId,
    // Fields beyond the Wazuh layout (docs/orders.md: additions, never renames).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_millis")]
    not_before: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_millis")]
    sent_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "is_zero")]
    deliveries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_millis")]
    redeliver_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_millis")]
    result_deadline: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_millis")]
    finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_of: Option<RequestId>,
    /// Rate control: the order's position in its request (0-based, expansion order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
    /// Rate control: not released yet (neither deliverable nor expirable).
    #[serde(default, skip_serializing_if = "is_false")]
    held: bool,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
const fn is_false(b: &bool) -> bool {
    !*b
}

#[allow(clippy::trivially_copy_pass_by_ref)]
const fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One order: a command for one concrete target. Its serde form is the document layout of the
/// orders stream (docs/orders.md), shared by the HTTP API and every storage adapter.
/// The change [`Order::expire`] makes, in the document's own encoding: serialised, it is the
/// JSON merge patch (RFC 7396) of the order's `command` object, `null` removing a key. Merged
/// into the stored document of an order that [`Order::is_expired`] at its `finished_at`, it
/// gives exactly the document of [`Order::expire`] (the domain's tests check it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiryPatch {
    status: Status,
    result: CommandResult,
    #[serde(with = "millis")]
    finished_at: DateTime<Utc>,
    /// Removed (`null`).
    redeliver_at: (),
    /// Removed (`null`).
    result_deadline: (),
}

impl ExpiryPatch {
    #[must_use]
    pub const fn status(&self) -> Status {
        self.status
    }

    #[must_use]
    pub const fn finished_at(&self) -> DateTime<Utc> {
        self.finished_at
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    #[serde(rename = "@timestamp", with = "millis")]
    created_at: DateTime<Utc>,
    #[serde(with = "millis")]
    delivery_timestamp: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent: Option<AgentRef>,
    command: OrderCommand,
}

/// What [`Order::new`] needs: the parts of a command that every one of its orders shares.
#[derive(Debug, Clone)]
pub struct NewOrder<'a> {
    pub order_id: OrderId,
    pub request_id: RequestId,
    pub source: Source,
    pub user: Option<&'a str>,
    pub target: Target,
    pub agent: Option<(&'a AgentId, &'a [GroupName])>,
    pub action: &'a Action,
    pub timeout: Timeout,
    /// When the order is created (already truncated to milliseconds by the clock).
    pub now: DateTime<Utc>,
    /// When the order may first be handed out; `None` is `now`.
    pub not_before: Option<DateTime<Utc>>,
    pub retry_of: Option<RequestId>,
    /// Rate control: the order's position in its request, and whether it starts held.
    pub position: Option<(u64, bool)>,
}

impl Order {
    /// A new `pending` order. Its delivery deadline is `not_before` (or `now`) plus the timeout.
    #[must_use]
    pub fn new(new: NewOrder<'_>) -> Self {
        let start = new.not_before.map_or(new.now, |nb| nb.max(new.now));
        Self {
            created_at: new.now,
            delivery_timestamp: start + new.timeout.duration(),
            agent: new.agent.map(|(id, groups)| AgentRef {
                id: id.clone(),
                groups: groups.to_vec(),
            }),
            command: OrderCommand {
                source: new.source,
                user: new.user.map(str::to_owned),
                target: new.target,
                action: new.action.clone(),
                timeout: new.timeout,
                status: Status::Pending,
                result: None,
                request_id: new.request_id,
                order_id: new.order_id,
                not_before: new.not_before.filter(|nb| *nb > new.now),
                sent_at: None,
                deliveries: 0,
                redeliver_at: None,
                result_deadline: None,
                finished_at: None,
                retry_of: new.retry_of,
                position: new.position.map(|(p, _)| p),
                held: new.position.is_some_and(|(_, held)| held),
            },
        }
    }

    #[must_use]
    pub const fn order_id(&self) -> &OrderId {
        &self.command.order_id
    }

    #[must_use]
    pub const fn request_id(&self) -> &RequestId {
        &self.command.request_id
    }

    #[must_use]
    pub const fn status(&self) -> Status {
        self.command.status
    }

    /// `@timestamp`: when the order was created.
    #[must_use]
    pub const fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    /// `delivery_timestamp`: the deadline for delivery.
    #[must_use]
    pub const fn delivery_deadline(&self) -> DateTime<Utc> {
        self.delivery_timestamp
    }

    /// The earliest time the order may be handed out.
    #[must_use]
    pub fn available_from(&self) -> DateTime<Utc> {
        self.command.not_before.unwrap_or(self.created_at)
    }

    #[must_use]
    pub const fn not_before(&self) -> Option<DateTime<Utc>> {
        self.command.not_before
    }

    #[must_use]
    pub const fn agent(&self) -> Option<&AgentRef> {
        self.agent.as_ref()
    }

    /// The agent this order is for (`None` for a server target).
    #[must_use]
    pub fn agent_id(&self) -> Option<&AgentId> {
        self.agent.as_ref().map(|a| &a.id)
    }

    /// Who takes this order out of the stream: its agent, or the server component it targets.
    /// `None` only for a server order stored before component names were validated whose
    /// target id is not a valid [`ComponentName`]: no one can claim it, and it expires.
    #[must_use]
    pub fn consumer(&self) -> Option<Consumer> {
        match (&self.agent, self.command.target.kind()) {
            (Some(a), _) => Some(Consumer::Agent(a.id.clone())),
            (None, TargetType::Server) => ComponentName::parse(self.command.target.id(), "")
                .ok()
                .map(Consumer::Component),
            (None, _) => None,
        }
    }

    #[must_use]
    pub const fn source(&self) -> Source {
        self.command.source
    }

    #[must_use]
    pub fn user(&self) -> Option<&str> {
        self.command.user.as_deref()
    }

    #[must_use]
    pub const fn target(&self) -> &Target {
        &self.command.target
    }

    #[must_use]
    pub const fn action(&self) -> &Action {
        &self.command.action
    }

    #[must_use]
    pub const fn timeout(&self) -> Timeout {
        self.command.timeout
    }

    #[must_use]
    pub const fn result(&self) -> Option<&CommandResult> {
        self.command.result.as_ref()
    }

    /// When the order was last handed to its agent.
    #[must_use]
    pub const fn sent_at(&self) -> Option<DateTime<Utc>> {
        self.command.sent_at
    }

    /// How many times the order has been handed out.
    #[must_use]
    pub const fn deliveries(&self) -> u32 {
        self.command.deliveries
    }

    /// When a `sent` order becomes eligible for redelivery.
    #[must_use]
    pub const fn redeliver_at(&self) -> Option<DateTime<Utc>> {
        self.command.redeliver_at
    }

    /// When a `sent` / `in_progress` order without a final result gives up.
    #[must_use]
    pub const fn result_deadline(&self) -> Option<DateTime<Utc>> {
        self.command.result_deadline
    }

    /// When the order reached `success` or `failure`.
    #[must_use]
    pub const fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.command.finished_at
    }

    #[must_use]
    pub const fn retry_of(&self) -> Option<&RequestId> {
        self.command.retry_of.as_ref()
    }

    /// Rate control: the order's position in its request; `None` when its request has no cap.
    #[must_use]
    pub const fn position(&self) -> Option<u64> {
        self.command.position
    }

    /// Rate control: held back until a slot frees up (or the request is resumed).
    #[must_use]
    pub const fn is_held(&self) -> bool {
        self.command.held
    }

    /// A failure of the action: ended `failure` by a report or by `no result`, not expired
    /// undelivered, cancelled or stopped by the service (what an error budget counts).
    #[must_use]
    pub fn is_action_failure(&self) -> bool {
        self.status() == Status::Failure
            && !self.command.result.as_ref().is_some_and(|r| {
                r.code == SERVICE_RESULT_CODE
                    && matches!(r.message.as_str(), EXPIRED | CANCELLED | STOPPED)
            })
    }

    // ---- predicates: which transition is due at `now` -------------------------------------

    /// A `pending` order whose delivery deadline has passed.
    #[must_use]
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.status() == Status::Pending && !self.command.held && now >= self.delivery_timestamp
    }

    /// May this order be handed to its consumer at `now`? A `pending` order from its
    /// `not_before` until (excluding) its deadline; a `sent` order once its redelivery is due.
    #[must_use]
    pub fn is_deliverable(&self, now: DateTime<Utc>) -> bool {
        if self.consumer().is_none() || self.command.held {
            return false;
        }
        match self.status() {
            Status::Pending => self.available_from() <= now && now < self.delivery_timestamp,
            Status::Sent => self.command.redeliver_at.is_some_and(|t| t <= now),
            _ => false,
        }
    }

    /// The instant strictly after `now` at which this order becomes deliverable by itself, i.e.
    /// with nothing else happening to it meanwhile: a `pending` order's start (`not_before`, or
    /// its creation) or a `sent` order's redelivery. It is the first instant after `now` at
    /// which [`Self::is_deliverable`] holds. `None` when there is no such instant: the order is
    /// deliverable already, or only another transition could make it deliverable (`in_progress`,
    /// finished, redelivery disabled, an order without a consumer). A long-poll sleeps until the earliest of
    /// these among its agent's orders.
    #[must_use]
    pub fn becomes_deliverable_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let at = match self.status() {
            Status::Pending => Some(self.available_from()),
            Status::Sent => self.command.redeliver_at,
            Status::InProgress | Status::Success | Status::Failure => None,
        }?;
        (at > now && self.is_deliverable(at)).then_some(at)
    }

    /// A delivered order whose agent has not reported a final result in time.
    #[must_use]
    pub fn is_unreported(&self, now: DateTime<Utc>) -> bool {
        matches!(self.status(), Status::Sent | Status::InProgress)
            && self.command.result_deadline.is_some_and(|t| t <= now)
    }

    /// A finished order that finished at or before `cutoff` (retention).
    #[must_use]
    pub fn finished_by(&self, cutoff: DateTime<Utc>) -> bool {
        self.status().is_terminal() && self.command.finished_at.is_some_and(|t| t <= cutoff)
    }

    // ---- transitions ----------------------------------------------------------------------

    fn refuse(&self, attempted: &'static str) -> TransitionError {
        TransitionError {
            order_id: self.command.order_id,
            status: self.status(),
            attempted,
        }
    }

    /// Hands the order to its agent: `pending -> sent`, or `sent -> sent` when a redelivery is due.
    ///
    /// # Errors
    /// A [`TransitionError`] unless [`Self::is_deliverable`] holds at `now`.
    pub fn deliver(
        &self,
        now: DateTime<Utc>,
        policy: &DeliveryPolicy,
    ) -> Result<Self, TransitionError> {
        if !self.is_deliverable(now) {
            return Err(self.refuse("delivered"));
        }
        let mut next = self.clone();
        let c = &mut next.command;
        c.status = Status::Sent;
        c.sent_at = Some(now);
        c.deliveries = c.deliveries.saturating_add(1);
        c.redeliver_at = policy.redeliver_after.map(|d| now + d);
        c.result_deadline = policy.result_timeout.map(|d| now + d);
        Ok(next)
    }

    fn finish(&self, now: DateTime<Utc>, status: Status, result: CommandResult) -> Self {
        let mut next = self.clone();
        let c = &mut next.command;
        c.status = status;
        c.result = Some(result);
        c.finished_at = Some(now);
        c.redeliver_at = None;
        c.result_deadline = None;
        next
    }

    /// `pending -> failure (expired)` once the delivery deadline has passed.
    ///
    /// # Errors
    /// A [`TransitionError`] unless [`Self::is_expired`] holds at `now`.
    pub fn expire(&self, now: DateTime<Utc>) -> Result<Self, TransitionError> {
        if !self.is_expired(now) {
            return Err(self.refuse("expired"));
        }
        let ExpiryPatch {
            status,
            result,
            finished_at,
            ..
        } = Self::expiry_patch(now);
        Ok(self.finish(finished_at, status, result))
    }

    /// What [`Self::expire`] changes in every order it expires at `now`: the same for all of
    /// them, so a store can expire a whole batch of [`Self::is_expired`] orders in one
    /// conditional statement instead of reading, transitioning and writing back each one.
    #[must_use]
    pub fn expiry_patch(now: DateTime<Utc>) -> ExpiryPatch {
        ExpiryPatch {
            status: Status::Failure,
            result: CommandResult::service(EXPIRED),
            finished_at: now,
            redeliver_at: (),
            result_deadline: (),
        }
    }

    /// `pending -> failure (cancelled)`.
    ///
    /// # Errors
    /// A [`TransitionError`] unless the order is `pending`.
    pub fn cancel(&self, now: DateTime<Utc>) -> Result<Self, TransitionError> {
        self.end_pending(now, PendingEnd::Cancelled)
    }

    /// `pending (held or not) -> failure` with the message of `end`.
    ///
    /// # Errors
    /// A [`TransitionError`] unless the order is `pending`.
    pub fn end_pending(
        &self,
        now: DateTime<Utc>,
        end: PendingEnd,
    ) -> Result<Self, TransitionError> {
        if self.status() != Status::Pending {
            return Err(self.refuse("ended"));
        }
        let mut next = self.finish(now, Status::Failure, CommandResult::service(end.message()));
        next.command.held = false;
        Ok(next)
    }

    /// Rate control: a held order may go out: `pending (held) -> pending`. Its delivery deadline
    /// counts from now (or from its `not_before`, when that is later).
    ///
    /// # Errors
    /// A [`TransitionError`] unless the order is `pending` and held.
    pub fn release(&self, now: DateTime<Utc>) -> Result<Self, TransitionError> {
        if self.status() != Status::Pending || !self.command.held {
            return Err(self.refuse("released"));
        }
        let mut next = self.clone();
        next.command.held = false;
        let start = self.command.not_before.map_or(now, |nb| nb.max(now));
        next.delivery_timestamp = start + self.command.timeout.duration();
        Ok(next)
    }

    /// `sent | in_progress -> failure (no result)` once the result deadline has passed.
    ///
    /// # Errors
    /// A [`TransitionError`] unless [`Self::is_unreported`] holds at `now`.
    pub fn give_up(&self, now: DateTime<Utc>) -> Result<Self, TransitionError> {
        if !self.is_unreported(now) {
            return Err(self.refuse("given up"));
        }
        Ok(self.finish(now, Status::Failure, CommandResult::service(NO_RESULT)))
    }

    /// Records an agent's report. A delivered order (`sent` / `in_progress`) takes any report;
    /// repeating the report the order already carries is accepted and changes nothing.
    ///
    /// # Errors
    /// A [`TransitionError`] when the order was never delivered (`pending`) or already ended
    /// with a different result.
    pub fn report(
        &self,
        report: &Report,
        now: DateTime<Utc>,
    ) -> Result<ReportOutcome, TransitionError> {
        let wanted = report.status.status();
        let same = self.status() == wanted && self.command.result.as_ref() == Some(&report.result);
        match self.status() {
            _ if same => Ok(ReportOutcome::AlreadyApplied),
            Status::Sent | Status::InProgress if wanted == Status::InProgress => {
                let mut next = self.clone();
                next.command.status = Status::InProgress;
                next.command.result = Some(report.result.clone());
                next.command.redeliver_at = None;
                Ok(ReportOutcome::Applied(next))
            }
            Status::Sent | Status::InProgress => Ok(ReportOutcome::Applied(self.finish(
                now,
                wanted,
                report.result.clone(),
            ))),
            Status::Pending | Status::Success | Status::Failure => Err(self.refuse("reported")),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::command::TargetType;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap()
    }

    fn order_with(timeout: i64, not_before: Option<DateTime<Utc>>) -> Order {
        let agent = AgentId::parse("a1", "id").unwrap();
        let groups = vec![GroupName::parse("Test", "g").unwrap()];
        let action = Action::new("restart", json!({}), "v5").unwrap();
        Order::new(NewOrder {
            order_id: OrderId::from_uuid(Uuid::from_u128(1)),
            request_id: RequestId::from_uuid(Uuid::from_u128(2)),
            source: Source::UsersServices,
            user: Some("admin"),
            target: Target::agent(&agent),
            agent: Some((&agent, &groups)),
            action: &action,
            timeout: Timeout::new(timeout).unwrap(),
            now: t0(),
            not_before,
            retry_of: None,
            position: None,
        })
    }

    fn order() -> Order {
        order_with(100, None)
    }

    fn policy() -> DeliveryPolicy {
        DeliveryPolicy {
            redeliver_after: Some(Duration::seconds(60)),
            result_timeout: Some(Duration::seconds(600)),
        }
    }

    fn report(status: ReportStatus, code: i64, message: &str) -> Report {
        Report::new(status, code, message, "").unwrap()
    }

    #[test]
    fn document_has_the_wazuh_layout() {
        let doc = serde_json::to_value(order()).unwrap();
        assert_eq!(
            doc,
            json!({
                "@timestamp": "2026-11-27T10:00:00.000Z",
                "delivery_timestamp": "2026-11-27T10:01:40.000Z",
                "agent": {"id": "a1", "groups": ["Test"]},
                "command": {
                    "source": "Users/Services", "user": "admin",
                    "target": {"type": "agent", "id": "a1"},
                    "action": {"name": "restart", "args": {}, "version": "v5"},
                    "timeout": 100, "status": "pending",
                    "request_id": "00000000-0000-0000-0000-000000000002",
                    "order_id": "00000000-0000-0000-0000-000000000001"
                }
            })
        );
    }

    #[test]
    fn document_round_trips_through_serde_in_every_state() {
        let now = t0() + Duration::seconds(5);
        let sent = order().deliver(now, &policy()).unwrap();
        let ReportOutcome::Applied(done) = sent
            .report(&report(ReportStatus::Success, 0, "ok"), now)
            .unwrap()
        else {
            panic!("report not applied");
        };
        for o in [order(), sent, done] {
            let back: Order = serde_json::from_value(serde_json::to_value(&o).unwrap()).unwrap();
            assert_eq!(back, o);
        }
    }

    /// RFC 7396 merge of `patch` into `target`.
    fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
        let (Some(t), Some(p)) = (target.as_object_mut(), patch.as_object()) else {
            *target = patch.clone();
            return;
        };
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(json!({})), v);
            }
        }
    }

    #[test]
    fn expiry_patch_merged_into_the_command_gives_the_expired_document() {
        let now = t0() + Duration::seconds(100);
        let scheduled = order_with(100, Some(t0() + Duration::seconds(1)));
        let later = t0() + Duration::seconds(101);
        for (o, at) in [(order(), now), (scheduled, later)] {
            let mut doc = serde_json::to_value(&o).unwrap();
            let patch = serde_json::to_value(Order::expiry_patch(at)).unwrap();
            merge_patch(&mut doc["command"], &patch);
            let expired = o.expire(at).unwrap();
            assert_eq!(doc, serde_json::to_value(&expired).unwrap());
            assert_eq!(serde_json::from_value::<Order>(doc).unwrap(), expired);
        }
        let patch = Order::expiry_patch(now);
        assert_eq!(patch.status(), Status::Failure);
        assert_eq!(patch.finished_at(), now);
    }

    #[test]
    fn deadline_is_creation_plus_timeout() {
        assert_eq!(order().delivery_deadline(), t0() + Duration::seconds(100));
    }

    #[test]
    fn deadline_counts_from_not_before_when_scheduled() {
        let o = order_with(100, Some(t0() + Duration::seconds(30)));
        assert_eq!(o.delivery_deadline(), t0() + Duration::seconds(130));
        assert!(!o.is_deliverable(t0() + Duration::seconds(29)));
        assert!(o.is_deliverable(t0() + Duration::seconds(30)));
    }

    #[test]
    fn pending_order_is_delivered_before_its_deadline_only() {
        let o = order();
        let sent = o.deliver(t0() + Duration::seconds(99), &policy()).unwrap();
        assert_eq!(sent.status(), Status::Sent);
        assert_eq!(sent.deliveries(), 1);
        assert_eq!(sent.redeliver_at(), Some(t0() + Duration::seconds(159)));
        assert_eq!(sent.result_deadline(), Some(t0() + Duration::seconds(699)));
        assert!(o.deliver(t0() + Duration::seconds(100), &policy()).is_err());
    }

    #[test]
    fn expiry_is_a_pure_function_of_now() {
        let o = order();
        assert!(!o.is_expired(t0() + Duration::milliseconds(99_999)));
        assert!(o.is_expired(t0() + Duration::seconds(100)));
        let expired = o.expire(t0() + Duration::seconds(100)).unwrap();
        assert_eq!(expired.status(), Status::Failure);
        assert_eq!(expired.result().unwrap().message(), EXPIRED);
        assert_eq!(expired.finished_at(), Some(t0() + Duration::seconds(100)));
        assert!(o.expire(t0() + Duration::seconds(50)).is_err());
    }

    #[test]
    fn an_order_is_never_both_deliverable_and_expired() {
        let o = order();
        for s in 0..200 {
            let now = t0() + Duration::seconds(s);
            assert!(!(o.is_deliverable(now) && o.is_expired(now)), "at +{s}s");
        }
    }

    #[test]
    fn sent_order_cannot_expire_or_be_cancelled() {
        let sent = order().deliver(t0(), &policy()).unwrap();
        assert!(sent.expire(t0() + Duration::seconds(1000)).is_err());
        let err = sent.cancel(t0()).unwrap_err();
        assert_eq!(err.status, Status::Sent);
    }

    #[test]
    fn cancelling_a_pending_order_fails_it_with_cancelled() {
        let c = order().cancel(t0()).unwrap();
        assert_eq!(c.status(), Status::Failure);
        assert_eq!(c.result().unwrap().message(), CANCELLED);
        assert!(c.cancel(t0()).is_err());
    }

    #[test]
    fn terminal_orders_accept_no_transition() {
        let done = order().cancel(t0()).unwrap();
        let later = t0() + Duration::seconds(10_000);
        assert!(done.deliver(later, &policy()).is_err());
        assert!(done.expire(later).is_err());
        assert!(done.give_up(later).is_err());
        assert!(
            done.report(&report(ReportStatus::Success, 0, ""), later)
                .is_err()
        );
    }

    #[test]
    fn report_on_pending_order_is_refused() {
        assert!(
            order()
                .report(&report(ReportStatus::Success, 0, ""), t0())
                .is_err()
        );
    }

    #[test]
    fn identical_repeated_report_is_accepted_and_changes_nothing() {
        let sent = order().deliver(t0(), &policy()).unwrap();
        let r = report(ReportStatus::Failure, 2, "disk full");
        let ReportOutcome::Applied(done) = sent.report(&r, t0()).unwrap() else {
            panic!()
        };
        assert_eq!(
            done.report(&r, t0()).unwrap(),
            ReportOutcome::AlreadyApplied
        );
        assert!(
            done.report(&report(ReportStatus::Success, 0, ""), t0())
                .is_err()
        );
    }

    #[test]
    fn in_progress_stops_redelivery_but_not_the_result_deadline() {
        let sent = order().deliver(t0(), &policy()).unwrap();
        let ReportOutcome::Applied(busy) = sent
            .report(&report(ReportStatus::InProgress, 0, "50%"), t0())
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(busy.status(), Status::InProgress);
        assert!(!busy.is_deliverable(t0() + Duration::seconds(3600)));
        assert!(busy.is_unreported(t0() + Duration::seconds(600)));
        let ReportOutcome::Applied(done) = busy
            .report(&report(ReportStatus::Success, 0, "ok"), t0())
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(done.status(), Status::Success);
    }

    #[test]
    fn sent_order_is_redelivered_after_redeliver_after() {
        let sent = order().deliver(t0(), &policy()).unwrap();
        assert!(!sent.is_deliverable(t0() + Duration::seconds(59)));
        let again = sent
            .deliver(t0() + Duration::seconds(60), &policy())
            .unwrap();
        assert_eq!(again.deliveries(), 2);
        assert_eq!(again.sent_at(), Some(t0() + Duration::seconds(60)));
    }

    #[test]
    fn no_redelivery_when_disabled() {
        let p = DeliveryPolicy {
            redeliver_after: None,
            result_timeout: None,
        };
        let sent = order().deliver(t0(), &p).unwrap();
        assert!(!sent.is_deliverable(t0() + Duration::days(365)));
        assert!(!sent.is_unreported(t0() + Duration::days(365)));
    }

    #[test]
    fn a_scheduled_order_becomes_deliverable_at_its_start() {
        let start = t0() + Duration::seconds(30);
        let o = order_with(100, Some(start));
        assert_eq!(o.becomes_deliverable_after(t0()), Some(start));
        assert_eq!(
            o.becomes_deliverable_after(start - Duration::milliseconds(1)),
            Some(start)
        );
        // Strictly after `now`: at its start it is deliverable already.
        assert_eq!(o.becomes_deliverable_after(start), None);
        assert_eq!(
            o.becomes_deliverable_after(start + Duration::seconds(1)),
            None
        );
        // An unscheduled order starts when it is created.
        assert_eq!(
            order().becomes_deliverable_after(t0() - Duration::seconds(1)),
            Some(t0())
        );
        assert_eq!(order().becomes_deliverable_after(t0()), None);
    }

    #[test]
    fn a_sent_order_becomes_deliverable_again_at_its_redelivery() {
        let sent = order().deliver(t0(), &policy()).unwrap();
        let redelivery = t0() + Duration::seconds(60);
        assert_eq!(sent.becomes_deliverable_after(t0()), Some(redelivery));
        assert_eq!(sent.becomes_deliverable_after(redelivery), None);
        let p = DeliveryPolicy {
            redeliver_after: None,
            result_timeout: Some(Duration::seconds(600)),
        };
        let never = order().deliver(t0(), &p).unwrap();
        assert_eq!(never.becomes_deliverable_after(t0()), None);
    }

    #[test]
    fn orders_past_delivery_never_become_deliverable_by_themselves() {
        let sent = order().deliver(t0(), &policy()).unwrap();
        let ReportOutcome::Applied(busy) = sent
            .report(&report(ReportStatus::InProgress, 0, "50%"), t0())
            .unwrap()
        else {
            panic!()
        };
        let done = order().cancel(t0()).unwrap();
        for o in [busy, done] {
            assert_eq!(
                o.becomes_deliverable_after(t0() - Duration::seconds(1)),
                None
            );
        }
        let action = Action::new("update", json!({}), "v5").unwrap();
        let server = Order::new(NewOrder {
            order_id: OrderId::from_uuid(Uuid::from_u128(1)),
            request_id: RequestId::from_uuid(Uuid::from_u128(2)),
            source: Source::ContentManager,
            user: None,
            target: Target::new(TargetType::Server, "indexer").unwrap(),
            agent: None,
            action: &action,
            timeout: Timeout::new(10).unwrap(),
            now: t0(),
            not_before: Some(t0() + Duration::seconds(5)),
            retry_of: None,
            position: None,
        });
        assert_eq!(
            server.becomes_deliverable_after(t0()),
            Some(t0() + Duration::seconds(5))
        );
    }

    #[test]
    fn becoming_deliverable_agrees_with_is_deliverable() {
        let sent = order().deliver(t0(), &policy()).unwrap();
        let scheduled = order_with(100, Some(t0() + Duration::seconds(30)));
        for o in [order(), scheduled, sent] {
            for s in -5..200 {
                let now = t0() + Duration::seconds(s);
                match o.becomes_deliverable_after(now) {
                    Some(at) => {
                        assert!(at > now && o.is_deliverable(at), "+{s}s: {at}");
                        assert!(
                            !o.is_deliverable(at - Duration::milliseconds(1)),
                            "+{s}s: deliverable before {at}"
                        );
                    }
                    None => assert!(
                        o.is_deliverable(now)
                            || (1..=300).all(|d| !o.is_deliverable(now + Duration::seconds(d))),
                        "+{s}s: becomes deliverable later"
                    ),
                }
            }
        }
    }

    #[test]
    fn unreported_order_gives_up_with_no_result() {
        let sent = order().deliver(t0(), &policy()).unwrap();
        assert!(sent.give_up(t0() + Duration::seconds(599)).is_err());
        let failed = sent.give_up(t0() + Duration::seconds(600)).unwrap();
        assert_eq!(failed.status(), Status::Failure);
        assert_eq!(failed.result().unwrap().message(), NO_RESULT);
    }

    #[test]
    fn server_orders_are_consumed_by_their_component_only() {
        let action = Action::new("update", json!({"index": "x", "offset": 1}), "v5").unwrap();
        let o = Order::new(NewOrder {
            order_id: OrderId::from_uuid(Uuid::from_u128(1)),
            request_id: RequestId::from_uuid(Uuid::from_u128(2)),
            source: Source::ContentManager,
            user: None,
            target: Target::new(TargetType::Server, "indexer").unwrap(),
            agent: None,
            action: &action,
            timeout: Timeout::new(10).unwrap(),
            now: t0(),
            not_before: None,
            retry_of: None,
            position: None,
        });
        assert!(o.is_deliverable(t0()));
        assert_eq!(
            o.consumer(),
            Some(Consumer::Component(
                ComponentName::parse("indexer", "id").unwrap()
            ))
        );
        assert_eq!(o.agent_id(), None);
        assert!(serde_json::to_value(&o).unwrap().get("agent").is_none());
        // A server order stored before component names were validated has no consumer.
        let mut doc = serde_json::to_value(&o).unwrap();
        doc["command"]["target"]["id"] = json!("not a component");
        let legacy: Order = serde_json::from_value(doc).unwrap();
        assert_eq!(legacy.consumer(), None);
        assert!(!legacy.is_deliverable(t0()));
    }

    #[test]
    fn report_fields_are_validated() {
        assert_eq!(
            Report::new(ReportStatus::Success, 40_000, "", "")
                .unwrap_err()
                .field(),
            "code"
        );
        assert_eq!(ReportStatus::parse("done").unwrap_err().field(), "status");
        let big = "x".repeat(MAX_RESULT_DATA + 1);
        assert_eq!(
            Report::new(ReportStatus::Success, 0, "", &big)
                .unwrap_err()
                .field(),
            "data"
        );
        // Counted in characters, as the document's `maxLength` counts them.
        let wide = "é".repeat(MAX_RESULT_DATA);
        assert!(Report::new(ReportStatus::Success, 0, "", &wide).is_ok());
    }

    #[test]
    fn retention_applies_to_finished_orders_only() {
        let cutoff = t0() + Duration::seconds(10);
        assert!(!order().finished_by(cutoff));
        assert!(order().cancel(t0()).unwrap().finished_by(cutoff));
        assert!(
            !order()
                .cancel(t0() + Duration::seconds(11))
                .unwrap()
                .finished_by(cutoff)
        );
    }
}
