//! The request record (docs/requests.md): what one command of a submit asked for, by whom, with
//! which rollout, and where it stands; and its state machine.
//!
//! ```text
//! writing --commit--> scheduled (start ahead) | running
//! writing --abandon (grace passed, or the submit failed)--> aborted
//! scheduled --start passed--> running
//! scheduled | running --pause--> paused --resume--> scheduled | running
//! scheduled | running | paused --cancel--> cancelled
//! scheduled | running | paused --error budget exhausted / held too long--> stopped
//! running | paused --no order left pending, sent or in_progress--> completed
//! ```
//! Orders are handed out only while their request is `scheduled` or `running` (or has no
//! record: a request submitted before records existed); that one rule is the gate every
//! adapter's claim applies. A request is *settled* once its final counts are frozen on the
//! record: nothing more happens to it.
//!
//! Like orders, every step is a function of the current record, the live counts of its orders
//! and `now`, and storage applies it only if the stored record is still the one the step started
//! from (compare-and-set on [`RequestRecord::revision`]).

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::command::{Command, Source, Target, Timeout};
use crate::error::FieldError;
use crate::ids::RequestId;
use crate::order::{Order, PendingEnd, Status};
use crate::time::{millis, opt_millis};

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// The submit is still writing its orders; none may be handed out.
    Writing,
    /// Committed, with a start in the future.
    Scheduled,
    Running,
    Paused,
    /// No order is left `pending`, `sent` or `in_progress`.
    Completed,
    Cancelled,
    /// Stopped by itself: its error budget was exhausted, or it was held too long.
    Stopped,
    /// A submit that never completed: its orders were removed.
    Aborted,
}

impl RequestState {
    pub const ALL: [Self; 8] = [
        Self::Writing,
        Self::Scheduled,
        Self::Running,
        Self::Paused,
        Self::Completed,
        Self::Cancelled,
        Self::Stopped,
        Self::Aborted,
    ];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Writing => "writing",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Stopped => "stopped",
            Self::Aborted => "aborted",
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
                    "must be one of writing, scheduled, running, paused, completed, cancelled, stopped, aborted",
                )
            })
    }

    /// `completed`, `cancelled`, `stopped` and `aborted` are final: no step leaves them.
    #[must_use]
    pub const fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Cancelled | Self::Stopped | Self::Aborted
        )
    }

    /// May orders of a request in this state be handed out? The claim gate.
    #[must_use]
    pub const fn delivers(self) -> bool {
        matches!(self, Self::Scheduled | Self::Running)
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A limit of rate control: a number of orders, or a percentage of the command's order count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Count(u64),
    /// 0 to 100.
    Percent(u8),
}

impl Limit {
    /// The text form of a percentage, exactly what [`Self::parse`] accepts as one: 0 to 100
    /// without a leading zero, then `%`.
    pub const PERCENT_PATTERN: &'static str = "^(100|[1-9]?[0-9])%$";

    /// A limit from its JSON form: a non-negative integer, or a string `"P%"` with P from 0 to 100.
    ///
    /// # Errors
    /// A [`FieldError`] on `field`.
    pub fn from_json(raw: &serde_json::Value, field: &str) -> Result<Self, FieldError> {
        let bad = || {
            FieldError::new(
                field,
                "must be a non-negative integer or a percentage such as \"10%\" (0% to 100%)",
            )
        };
        match raw {
            serde_json::Value::Number(n) => n.as_u64().map(Self::Count).ok_or_else(bad),
            serde_json::Value::String(s) => Self::parse(s).ok_or_else(bad),
            _ => Err(bad()),
        }
    }

    /// `"P%"` with P from 0 to 100, or a plain integer.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        if let Some(p) = raw.strip_suffix('%') {
            if p.is_empty()
                || p.len() > 3
                || !p.bytes().all(|b| b.is_ascii_digit())
                || (p.len() > 1 && p.starts_with('0'))
            {
                return None;
            }
            let p: u8 = p.parse().ok()?;
            (p <= 100).then_some(Self::Percent(p))
        } else if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
            raw.parse().ok().map(Self::Count)
        } else {
            None
        }
    }

    /// The number of orders this limit allows among `total`: a percentage rounded up.
    #[must_use]
    pub const fn of(self, total: u64) -> u64 {
        match self {
            Self::Count(n) => n,
            Self::Percent(p) => (total * p as u64).div_ceil(100),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Count(n) => s.serialize_u64(*n),
            Self::Percent(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = serde_json::Value::deserialize(d)?;
        Self::from_json(&raw, "limit").map_err(|e| serde::de::Error::custom(e.message()))
    }
}

/// How fast a command's orders may go out and how many failures it tolerates
/// (docs/rollout.md): at most `max_concurrency` orders handed out and unfinished at once, and a
/// stop once more than `max_errors` of them failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateControl {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<Limit>,
}

impl RateControl {
    /// How many orders of `total` may be out at once; `None` without a cap. At least 1.
    #[must_use]
    pub fn concurrency(&self, total: u64) -> Option<u64> {
        self.max_concurrency.map(|l| l.of(total).max(1))
    }

    /// How many failed orders of `total` are tolerated; `None` without a budget.
    #[must_use]
    pub fn errors_allowed(&self, total: u64) -> Option<u64> {
        self.max_errors.map(|l| l.of(total))
    }

    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.max_concurrency.is_none() && self.max_errors.is_none()
    }
}

/// How many orders of one request are in each status, and how many of the failures are
/// failures of the action (`errors`: ended `failure` by a report or by `no result`; not those
/// that expired undelivered, were cancelled or were stopped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StatusCounts {
    pub pending: u64,
    pub sent: u64,
    pub in_progress: u64,
    pub success: u64,
    pub failure: u64,
    #[serde(default)]
    pub errors: u64,
}

impl StatusCounts {
    #[must_use]
    pub const fn total(&self) -> u64 {
        self.pending + self.sent + self.in_progress + self.success + self.failure
    }

    /// Orders not finished yet: `pending`, `sent`, `in_progress`.
    #[must_use]
    pub const fn open(&self) -> u64 {
        self.pending + self.sent + self.in_progress
    }

    /// Orders finished: `success` and `failure`.
    #[must_use]
    pub const fn finished(&self) -> u64 {
        self.success + self.failure
    }

    /// Counts `n` more orders in `status`.
    pub fn add(&mut self, status: Status, n: u64) {
        match status {
            Status::Pending => self.pending += n,
            Status::Sent => self.sent += n,
            Status::InProgress => self.in_progress += n,
            Status::Success => self.success += n,
            Status::Failure => self.failure += n,
        }
    }

    /// Counts `order`: its status, and whether it is an error of the action.
    pub fn count(&mut self, order: &Order) {
        self.add(order.status(), 1);
        if order.is_action_failure() {
            self.errors += 1;
        }
    }

    #[must_use]
    pub const fn get(&self, status: Status) -> u64 {
        match status {
            Status::Pending => self.pending,
            Status::Sent => self.sent,
            Status::InProgress => self.in_progress,
            Status::Success => self.success,
            Status::Failure => self.failure,
        }
    }
}

/// The action of a request as recorded: its name and version (the args stay on the orders).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestAction {
    pub name: String,
    pub version: String,
}

/// A command's schedule as submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecordedSchedule {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_millis")]
    pub start_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_secs: Option<u32>,
}

/// Why a request stopped by itself.
pub const ERROR_BUDGET_EXHAUSTED: &str = "error budget exhausted";
/// Why a request held longer than `limits.max_hold_secs` stopped.
pub const HELD_TOO_LONG: &str = "held too long";
/// Why a submit that never completed was aborted.
pub const SUBMIT_NEVER_COMPLETED: &str = "the submit never completed";

/// One request: what one command of a submit asked for, and where it stands. Its serde form is
/// the stored document (docs/requests.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    request_id: RequestId,
    #[serde(with = "millis")]
    created_at: DateTime<Utc>,
    source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    target: Target,
    action: RequestAction,
    timeout: Timeout,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule: Option<RecordedSchedule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_control: Option<RateControl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_of: Option<RequestId>,
    state: RequestState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_millis")]
    finished_at: Option<DateTime<Utc>>,
    /// How many orders the request has (set when the submit commits; until then, how many were
    /// planned).
    total: u64,
    /// Rate control: orders in positions below this may be handed out.
    #[serde(default)]
    released: u64,
    /// Since when the request has been held: paused, or waiting for a concurrency slot.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_millis")]
    held_since: Option<DateTime<Utc>>,
    /// The counts of its orders, frozen once the request is settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    counts: Option<StatusCounts>,
    #[serde(with = "millis")]
    updated_at: DateTime<Utc>,
    /// Grows by one on every change: storage writes are conditional on it.
    #[serde(default)]
    revision: u64,
}

/// What [`RequestRecord::step`] wants done, in this order: store `record` (compare-and-set),
/// then end the request's pending orders with `end_pending`, then release its held orders in
/// positions below `release_below`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The next version of the record, when it changes.
    pub record: Option<RequestRecord>,
    pub end_pending: Option<PendingEnd>,
    pub release_below: Option<u64>,
}

/// A step refused: the request is already in a state that does not allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request {request_id} is {state}: it cannot be {attempted}")]
pub struct RequestStateError {
    pub request_id: RequestId,
    pub state: RequestState,
    pub attempted: &'static str,
}

impl RequestRecord {
    /// The record of `command`, written before its orders in state `writing`. `planned` is how
    /// many orders the plan expects; rate control's first slots are released at once.
    #[must_use]
    pub fn new(
        request_id: RequestId,
        command: &Command,
        retry_of: Option<RequestId>,
        planned: u64,
        now: DateTime<Utc>,
    ) -> Self {
        let schedule = command.schedule();
        let schedule =
            (schedule.start_at().is_some() || schedule.rollout_secs().is_some()).then(|| {
                RecordedSchedule {
                    start_at: schedule.start_at(),
                    rollout_secs: schedule.rollout_secs(),
                }
            });
        let rate_control = command.rate_control().filter(|r| !r.is_empty());
        Self {
            request_id,
            created_at: now,
            source: command.source(),
            user: command.user().map(str::to_owned),
            target: command.target().clone(),
            action: RequestAction {
                name: command.action().name().to_owned(),
                version: command.action().version().to_owned(),
            },
            timeout: command.timeout(),
            schedule,
            rate_control,
            retry_of,
            state: RequestState::Writing,
            state_reason: None,
            finished_at: None,
            total: planned,
            released: rate_control
                .and_then(|r| r.concurrency(planned))
                .unwrap_or(planned),
            held_since: None,
            counts: None,
            updated_at: now,
            revision: 0,
        }
    }

    #[must_use]
    pub const fn request_id(&self) -> &RequestId {
        &self.request_id
    }

    #[must_use]
    pub const fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    #[must_use]
    pub const fn source(&self) -> Source {
        self.source
    }

    #[must_use]
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    #[must_use]
    pub const fn target(&self) -> &Target {
        &self.target
    }

    #[must_use]
    pub const fn action(&self) -> &RequestAction {
        &self.action
    }

    #[must_use]
    pub const fn timeout(&self) -> Timeout {
        self.timeout
    }

    #[must_use]
    pub const fn schedule(&self) -> Option<&RecordedSchedule> {
        self.schedule.as_ref()
    }

    #[must_use]
    pub const fn rate_control(&self) -> Option<&RateControl> {
        self.rate_control.as_ref()
    }

    #[must_use]
    pub const fn retry_of(&self) -> Option<&RequestId> {
        self.retry_of.as_ref()
    }

    #[must_use]
    pub const fn state(&self) -> RequestState {
        self.state
    }

    #[must_use]
    pub fn state_reason(&self) -> Option<&str> {
        self.state_reason.as_deref()
    }

    #[must_use]
    pub const fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.finished_at
    }

    #[must_use]
    pub const fn total(&self) -> u64 {
        self.total
    }

    #[must_use]
    pub const fn released(&self) -> u64 {
        self.released
    }

    #[must_use]
    pub const fn held_since(&self) -> Option<DateTime<Utc>> {
        self.held_since
    }

    /// The frozen counts of a settled request.
    #[must_use]
    pub const fn counts(&self) -> Option<&StatusCounts> {
        self.counts.as_ref()
    }

    #[must_use]
    pub const fn updated_at(&self) -> DateTime<Utc> {
        self.updated_at
    }

    #[must_use]
    pub const fn revision(&self) -> u64 {
        self.revision
    }

    /// Nothing more happens to a settled request: it is finished and its counts are frozen.
    #[must_use]
    pub const fn is_settled(&self) -> bool {
        self.counts.is_some()
    }

    /// The concurrency cap resolved against the request's order count.
    #[must_use]
    pub fn concurrency(&self) -> Option<u64> {
        self.rate_control.and_then(|r| r.concurrency(self.total))
    }

    /// The error budget resolved against the request's order count.
    #[must_use]
    pub fn errors_allowed(&self) -> Option<u64> {
        self.rate_control.and_then(|r| r.errors_allowed(self.total))
    }

    /// The position an order of this request gets when its rate control holds orders back
    /// (`Some`), so that releases go by position; `None` when every order goes out at once.
    #[must_use]
    pub fn position_of(&self, slot: u64) -> Option<u64> {
        self.concurrency().map(|_| slot)
    }

    fn refuse(&self, attempted: &'static str) -> RequestStateError {
        RequestStateError {
            request_id: self.request_id,
            state: self.state,
            attempted,
        }
    }

    fn next(&self, now: DateTime<Utc>) -> Self {
        let mut next = self.clone();
        next.updated_at = now.max(self.updated_at);
        next.revision += 1;
        next
    }

    fn started(&self, now: DateTime<Utc>) -> RequestState {
        match self.schedule.and_then(|s| s.start_at) {
            Some(start) if start > now => RequestState::Scheduled,
            _ => RequestState::Running,
        }
    }

    fn finish(mut self, state: RequestState, reason: Option<&str>, now: DateTime<Utc>) -> Self {
        self.state = state;
        self.state_reason = reason.map(str::to_owned);
        self.finished_at = Some(now);
        self.held_since = None;
        self
    }

    /// The submit wrote every order (`total` of them): `writing -> scheduled | running`. A
    /// record already past `writing` (a retried submit with the same idempotency key) is kept.
    ///
    /// # Errors
    /// A [`RequestStateError`] when the request was aborted meanwhile.
    pub fn commit(
        &self,
        total: u64,
        now: DateTime<Utc>,
    ) -> Result<Option<Self>, RequestStateError> {
        match self.state {
            RequestState::Writing => {
                let mut next = self.next(now);
                next.total = total;
                next.released = self.concurrency_for(total).unwrap_or(total);
                next.state = self.started(now);
                if next.released < total {
                    next.held_since = Some(now);
                }
                Ok(Some(next))
            }
            RequestState::Aborted => Err(self.refuse("committed")),
            _ => Ok(None),
        }
    }

    fn concurrency_for(&self, total: u64) -> Option<u64> {
        self.rate_control.and_then(|r| r.concurrency(total))
    }

    /// A retried submit (same idempotency key) of an aborted request writes it again:
    /// `aborted -> writing`. Any other state is kept as it is.
    #[must_use]
    pub fn rewrite(&self, now: DateTime<Utc>) -> Option<Self> {
        (self.state == RequestState::Aborted).then(|| {
            let mut next = self.next(now);
            next.state = RequestState::Writing;
            next.state_reason = None;
            next.finished_at = None;
            next.counts = None;
            next
        })
    }

    /// `writing -> aborted`: the submit failed, or never completed within its grace period. Its
    /// orders are to be removed; the record is settled once they are
    /// ([`Self::settle`] with zero counts).
    ///
    /// # Errors
    /// A [`RequestStateError`] unless the request is `writing`.
    pub fn abort(&self, now: DateTime<Utc>) -> Result<Self, RequestStateError> {
        if self.state != RequestState::Writing {
            return Err(self.refuse("aborted"));
        }
        Ok(self
            .next(now)
            .finish(RequestState::Aborted, Some(SUBMIT_NEVER_COMPLETED), now))
    }

    /// `scheduled | running -> paused`; a paused request stays as it is (`None`).
    ///
    /// # Errors
    /// A [`RequestStateError`] for a request that is finished or still being written.
    pub fn pause(&self, now: DateTime<Utc>) -> Result<Option<Self>, RequestStateError> {
        match self.state {
            RequestState::Paused => Ok(None),
            RequestState::Scheduled | RequestState::Running => {
                let mut next = self.next(now);
                next.state = RequestState::Paused;
                next.held_since = Some(now);
                Ok(Some(next))
            }
            _ => Err(self.refuse("paused")),
        }
    }

    /// `paused -> scheduled | running`; a running or scheduled request stays as it is.
    ///
    /// # Errors
    /// A [`RequestStateError`] for a request that is finished or still being written.
    pub fn resume(&self, now: DateTime<Utc>) -> Result<Option<Self>, RequestStateError> {
        match self.state {
            RequestState::Scheduled | RequestState::Running => Ok(None),
            RequestState::Paused => {
                let mut next = self.next(now);
                next.state = self.started(now);
                next.held_since = (next.released < next.total).then_some(now);
                Ok(Some(next))
            }
            _ => Err(self.refuse("resumed")),
        }
    }

    /// `scheduled | running | paused -> cancelled`; its pending orders are then ended
    /// `cancelled`. A cancelled request stays as it is.
    ///
    /// # Errors
    /// A [`RequestStateError`] for a request that finished otherwise or is still being written.
    pub fn cancel(&self, now: DateTime<Utc>) -> Result<Option<Self>, RequestStateError> {
        match self.state {
            RequestState::Cancelled => Ok(None),
            RequestState::Scheduled | RequestState::Running | RequestState::Paused => Ok(Some(
                self.next(now).finish(RequestState::Cancelled, None, now),
            )),
            _ => Err(self.refuse("cancelled")),
        }
    }

    /// Freezes `counts` on a finished request: it is settled.
    #[must_use]
    pub fn settle(&self, counts: StatusCounts, now: DateTime<Utc>) -> Self {
        let mut next = self.next(now);
        next.counts = Some(counts);
        next
    }

    /// What is due for this request given the live `counts` of its orders at `now`, with
    /// requests held longer than `max_hold` stopped. Called after anything that may have
    /// changed the counts (a report, a maintenance pass, a read).
    #[must_use]
    pub fn step(&self, counts: &StatusCounts, now: DateTime<Utc>, max_hold: Duration) -> Step {
        let none = Step {
            record: None,
            end_pending: None,
            release_below: None,
        };
        match self.state {
            // A submit in flight, or settled already: the submit or the grace period decides.
            RequestState::Writing => none,
            _ if self.is_settled() => none,
            // An aborted request is settled by whoever removes its orders (its counts are then
            // zero), never with counts read while they are being removed.
            RequestState::Aborted => none,
            RequestState::Completed => Step {
                record: Some(self.settle(*counts, now)),
                ..none
            },
            RequestState::Cancelled | RequestState::Stopped => {
                if counts.open() == 0 {
                    // Nothing left to end or to report: the counts are final.
                    Step {
                        record: Some(self.settle(*counts, now)),
                        ..none
                    }
                } else if counts.pending > 0 {
                    // Orders not handed out yet end as the finish decided; settle after.
                    let end = match (self.state, self.state_reason()) {
                        (RequestState::Cancelled, _) => PendingEnd::Cancelled,
                        (_, Some(HELD_TOO_LONG)) => PendingEnd::Expired,
                        _ => PendingEnd::Stopped,
                    };
                    Step {
                        end_pending: Some(end),
                        ..none
                    }
                } else {
                    // Orders already out finish normally (a report, or `no result`); the
                    // counts are frozen once they have.
                    none
                }
            }
            RequestState::Scheduled | RequestState::Running | RequestState::Paused => {
                if counts.total() >= self.total && counts.open() == 0 {
                    let done = self.next(now).finish(RequestState::Completed, None, now);
                    return Step {
                        record: Some(done.settle(*counts, now)),
                        ..none
                    };
                }
                if self
                    .errors_allowed()
                    .is_some_and(|allowed| counts.errors > allowed)
                {
                    let stopped = self.next(now).finish(
                        RequestState::Stopped,
                        Some(ERROR_BUDGET_EXHAUSTED),
                        now,
                    );
                    return Step {
                        record: Some(stopped),
                        end_pending: Some(PendingEnd::Stopped),
                        ..none
                    };
                }
                let held_too_long = self.held_since.is_some_and(|since| since + max_hold <= now)
                    && (self.state == RequestState::Paused || counts.pending > 0);
                if held_too_long {
                    let stopped =
                        self.next(now)
                            .finish(RequestState::Stopped, Some(HELD_TOO_LONG), now);
                    return Step {
                        record: Some(stopped),
                        end_pending: Some(PendingEnd::Expired),
                        ..none
                    };
                }
                let mut record = None;
                if self.state == RequestState::Scheduled
                    && self.started(now) == RequestState::Running
                {
                    let mut next = self.next(now);
                    next.state = RequestState::Running;
                    record = Some(next);
                }
                let base = record.as_ref().unwrap_or(self);
                let mut release_below = None;
                if base.state != RequestState::Paused
                    && let Some(cap) = base.concurrency()
                {
                    // Finished orders were all released (held ones end only when the request
                    // stops or is cancelled), so `finished + cap` keeps the cap.
                    let target = (counts.finished() + cap).min(base.total);
                    if target > base.released {
                        let mut next = base.next(now);
                        if record.is_some() {
                            next.revision = base.revision;
                        }
                        next.released = target;
                        next.held_since = (target < next.total).then_some(now);
                        record = Some(next);
                    }
                    let released = record.as_ref().unwrap_or(self).released;
                    if counts.pending > 0 {
                        release_below = Some(released);
                    }
                }
                Step {
                    record,
                    end_pending: None,
                    release_below,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::command::{Action, TargetType};
    use crate::schedule::Schedule;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 30, 10, 0, 0).unwrap()
    }

    fn command(rate: Option<RateControl>, start_in: Option<i64>) -> Command {
        let start = start_in.map(|s| (t0() + Duration::seconds(s)).to_rfc3339());
        let c = Command::new(
            Source::UsersServices,
            Some("alice".to_owned()),
            Target::new(TargetType::Group, "Test").unwrap(),
            Action::new("restart", json!({}), "v5").unwrap(),
            Timeout::new(100).unwrap(),
        )
        .unwrap()
        .with_schedule(Schedule::parse(start.as_deref(), None).unwrap());
        match rate {
            Some(r) => c.with_rate_control(r),
            None => c,
        }
    }

    fn rate(concurrency: Option<Limit>, errors: Option<Limit>) -> RateControl {
        RateControl {
            max_concurrency: concurrency,
            max_errors: errors,
        }
    }

    fn record(rate_control: Option<RateControl>, total: u64) -> RequestRecord {
        RequestRecord::new(
            RequestId::from_uuid(Uuid::from_u128(7)),
            &command(rate_control, None),
            None,
            total,
            t0(),
        )
        .commit(total, t0())
        .unwrap()
        .unwrap()
    }

    fn counts(pending: u64, sent: u64, success: u64, failure: u64, errors: u64) -> StatusCounts {
        StatusCounts {
            pending,
            sent,
            in_progress: 0,
            success,
            failure,
            errors,
        }
    }

    const HOLD: Duration = Duration::days(7);

    #[test]
    fn limits_parse_counts_and_percentages_and_round_up() {
        assert_eq!(Limit::parse("3"), Some(Limit::Count(3)));
        assert_eq!(Limit::parse("10%"), Some(Limit::Percent(10)));
        for bad in ["", "%", "101%", "-1", "1.5", "x%", "1000%", "05%"] {
            assert_eq!(Limit::parse(bad), None, "{bad}");
        }
        assert_eq!(Limit::Percent(10).of(15), 2);
        assert_eq!(Limit::Percent(0).of(15), 0);
        assert_eq!(rate(Some(Limit::Percent(0)), None).concurrency(15), Some(1));
        assert_eq!(
            Limit::from_json(&json!("5%"), "f").unwrap(),
            Limit::Percent(5)
        );
        assert_eq!(
            Limit::from_json(&json!(-1), "rate_control.max_errors")
                .unwrap_err()
                .field(),
            "rate_control.max_errors"
        );
        assert_eq!(
            serde_json::to_value(Limit::Percent(5)).unwrap(),
            json!("5%")
        );
        assert_eq!(serde_json::to_value(Limit::Count(5)).unwrap(), json!(5));
    }

    #[test]
    fn a_record_is_written_first_and_committed_to_running_or_scheduled() {
        let r = RequestRecord::new(
            RequestId::from_uuid(Uuid::from_u128(1)),
            &command(None, None),
            None,
            20,
            t0(),
        );
        assert_eq!(r.state(), RequestState::Writing);
        assert!(!r.state().delivers());
        let running = r.commit(20, t0()).unwrap().unwrap();
        assert_eq!(running.state(), RequestState::Running);
        assert_eq!(running.revision(), 1);
        assert!(
            running.commit(20, t0()).unwrap().is_none(),
            "a retry keeps it"
        );
        let later = RequestRecord::new(
            RequestId::from_uuid(Uuid::from_u128(1)),
            &command(None, Some(60)),
            None,
            20,
            t0(),
        )
        .commit(20, t0())
        .unwrap()
        .unwrap();
        assert_eq!(later.state(), RequestState::Scheduled);
        let started = later.step(&counts(20, 0, 0, 0, 0), t0() + Duration::seconds(60), HOLD);
        assert_eq!(started.record.unwrap().state(), RequestState::Running);
    }

    #[test]
    fn an_aborted_submit_cannot_commit_and_a_keyed_retry_rewrites_it() {
        let r = RequestRecord::new(
            RequestId::from_uuid(Uuid::from_u128(1)),
            &command(None, None),
            None,
            20,
            t0(),
        );
        let aborted = r.abort(t0()).unwrap();
        assert_eq!(aborted.state(), RequestState::Aborted);
        assert!(aborted.commit(20, t0()).is_err());
        assert_eq!(
            aborted.rewrite(t0()).unwrap().state(),
            RequestState::Writing
        );
        assert!(record(None, 1).abort(t0()).is_err());
    }

    #[test]
    fn completes_when_no_order_is_open_and_freezes_the_counts() {
        let r = record(None, 3);
        assert_eq!(r.step(&counts(1, 0, 2, 0, 0), t0(), HOLD).record, None);
        let c = counts(0, 0, 2, 1, 1);
        let done = r.step(&c, t0(), HOLD).record.unwrap();
        assert_eq!(done.state(), RequestState::Completed);
        assert_eq!(done.counts(), Some(&c));
        assert!(done.is_settled());
        assert_eq!(done.step(&c, t0(), HOLD).record, None);
    }

    #[test]
    fn releases_keep_the_cap_and_go_by_position() {
        let r = record(Some(rate(Some(Limit::Count(3)), None)), 20);
        assert_eq!(r.released(), 3);
        assert!(r.held_since().is_some());
        // Three out, none finished: nothing to release beyond the first three.
        let s = r.step(&counts(17, 3, 0, 0, 0), t0(), HOLD);
        assert_eq!(s.record, None);
        assert_eq!(s.release_below, Some(3));
        // Two finished: two more slots.
        let s = r.step(&counts(17, 1, 2, 0, 0), t0(), HOLD);
        let next = s.record.unwrap();
        assert_eq!(next.released(), 5);
        assert_eq!(s.release_below, Some(5));
        // Never beyond the total.
        let s = next.step(&counts(1, 1, 18, 0, 0), t0(), HOLD);
        assert_eq!(s.record.unwrap().released(), 20);
    }

    #[test]
    fn percent_caps_resolve_against_the_order_count() {
        let r = record(
            Some(rate(Some(Limit::Percent(10)), Some(Limit::Percent(5)))),
            15,
        );
        assert_eq!(r.concurrency(), Some(2));
        assert_eq!(r.errors_allowed(), Some(1));
    }

    #[test]
    fn more_errors_than_the_budget_stop_the_request() {
        let r = record(Some(rate(Some(Limit::Count(3)), Some(Limit::Count(1)))), 20);
        // One error is within the budget.
        let s = r.step(&counts(17, 2, 0, 1, 1), t0(), HOLD);
        assert_ne!(
            s.record.as_ref().map(RequestRecord::state),
            Some(RequestState::Stopped)
        );
        // Failures that are not errors of the action (expired, cancelled) do not count.
        let s = r.step(&counts(15, 2, 0, 3, 1), t0(), HOLD);
        assert_ne!(
            s.record.as_ref().map(RequestRecord::state),
            Some(RequestState::Stopped)
        );
        let s = r.step(&counts(16, 2, 0, 2, 2), t0(), HOLD);
        let stopped = s.record.unwrap();
        assert_eq!(stopped.state(), RequestState::Stopped);
        assert_eq!(stopped.state_reason(), Some(ERROR_BUDGET_EXHAUSTED));
        assert_eq!(s.end_pending, Some(PendingEnd::Stopped));
        // Afterwards: end what is still pending, then settle.
        let s = stopped.step(&counts(1, 2, 0, 17, 2), t0(), HOLD);
        assert_eq!(s.end_pending, Some(PendingEnd::Stopped));
        assert_eq!(s.record, None);
        // Orders already out finish normally before the counts are frozen.
        let s = stopped.step(&counts(0, 2, 0, 18, 2), t0(), HOLD);
        assert_eq!((s.record, s.end_pending), (None, None));
        let s = stopped.step(&counts(0, 0, 0, 20, 4), t0(), HOLD);
        assert!(s.record.unwrap().is_settled());
    }

    #[test]
    fn pause_and_resume_hold_and_release() {
        let r = record(Some(rate(Some(Limit::Count(3)), None)), 20);
        let paused = r.pause(t0()).unwrap().unwrap();
        assert_eq!(paused.state(), RequestState::Paused);
        assert!(!paused.state().delivers());
        assert!(paused.pause(t0()).unwrap().is_none());
        // Paused: no release even when slots free up.
        let s = paused.step(&counts(17, 0, 3, 0, 0), t0(), HOLD);
        assert_eq!(s.release_below, None);
        assert_eq!(s.record, None);
        let resumed = paused.resume(t0()).unwrap().unwrap();
        assert_eq!(resumed.state(), RequestState::Running);
        assert_eq!(
            resumed
                .step(&counts(17, 0, 3, 0, 0), t0(), HOLD)
                .release_below,
            Some(6)
        );
        let done = resumed.cancel(t0()).unwrap().unwrap();
        assert!(done.pause(t0()).is_err());
        assert!(done.resume(t0()).is_err());
    }

    #[test]
    fn a_request_held_too_long_stops_and_its_held_orders_expire() {
        let paused = record(None, 20).pause(t0()).unwrap().unwrap();
        assert_eq!(
            paused
                .step(
                    &counts(20, 0, 0, 0, 0),
                    t0() + HOLD - Duration::seconds(1),
                    HOLD
                )
                .record,
            None
        );
        let s = paused.step(&counts(20, 0, 0, 0, 0), t0() + HOLD, HOLD);
        let stopped = s.record.unwrap();
        assert_eq!(stopped.state(), RequestState::Stopped);
        assert_eq!(stopped.state_reason(), Some(HELD_TOO_LONG));
        assert_eq!(s.end_pending, Some(PendingEnd::Expired));
        // A capped request waiting for a slot that never frees up stops too.
        let capped = record(Some(rate(Some(Limit::Count(1)), None)), 2);
        let s = capped.step(&counts(1, 1, 0, 0, 0), t0() + HOLD, HOLD);
        assert_eq!(s.end_pending, Some(PendingEnd::Expired));
    }

    #[test]
    fn cancel_ends_pending_orders_then_settles() {
        let cancelled = record(None, 5).cancel(t0()).unwrap().unwrap();
        assert_eq!(cancelled.state(), RequestState::Cancelled);
        let s = cancelled.step(&counts(3, 2, 0, 0, 0), t0(), HOLD);
        assert_eq!(s.end_pending, Some(PendingEnd::Cancelled));
        let s = cancelled.step(&counts(0, 2, 0, 3, 0), t0(), HOLD);
        assert_eq!(s.record, None, "not settled while orders are out");
        let s = cancelled.step(&counts(0, 0, 2, 3, 0), t0(), HOLD);
        assert!(s.record.unwrap().is_settled());
    }

    #[test]
    fn the_record_round_trips_through_serde() {
        let r = record(
            Some(rate(Some(Limit::Percent(10)), Some(Limit::Count(2)))),
            20,
        );
        let doc = serde_json::to_value(&r).unwrap();
        assert_eq!(
            doc["rate_control"],
            json!({"max_concurrency": "10%", "max_errors": 2})
        );
        assert_eq!(doc["target"], json!({"type": "group", "id": "Test"}));
        assert_eq!(doc["state"], json!("running"));
        let back: RequestRecord = serde_json::from_value(doc).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            RequestState::parse("paused", "state").unwrap(),
            RequestState::Paused
        );
        assert!(RequestState::parse("Paused", "state").is_err());
    }
}
