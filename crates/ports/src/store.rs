//! The storage ports: the orders stream and the agents registry.
//!
//! Adapters implement these traits over a real backend and pass the conformance suite
//! (`testkit`). They take and return domain types only; backend errors are translated into
//! [`StoreError`] before they cross the port.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
pub use cm_domain::StatusCounts;
use cm_domain::{
    Agent, AgentId, ComponentName, Consumer, DeliveryPolicy, FieldError, GroupName, KeyHash, Order,
    OrderId, PendingEnd, RequestId, RequestRecord, RequestState, Source, Status, TargetType,
};

/// Storage could not do what was asked. `Unavailable`, `Contention` and `Corrupt` are answered
/// 503 by the HTTP API, `Rejected` 400; nothing that returned an error may be reported to a
/// caller as done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend is unreachable, timed out or refused the work; retrying later may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A compare-and-set kept losing to concurrent writers: the storage works, but what was
    /// asked changed under every attempt. Retrying later may succeed.
    #[error("storage contention: {0}")]
    Contention(String),
    /// The backend answered with something this adapter cannot interpret (a corrupt document,
    /// an unexpected schema).
    #[error("storage returned unusable data: {0}")]
    Corrupt(String),
    /// The backend cannot store an order of `request_id` as it is, whatever the retries: its
    /// `field` (a path inside the command, e.g. `action.args`) does not fit the backend's schema.
    /// The caller's input is at fault, not the backend.
    #[error("storage refuses {field} of an order of request {request_id}: {message}")]
    Rejected {
        request_id: RequestId,
        field: String,
        message: String,
    },
}

/// Why a compare-and-set replacement of an order did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplaceError {
    /// The stored order is no longer the one the change started from.
    #[error("the order changed concurrently")]
    Conflict,
    #[error("no such order")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The filter of an orders query (`GET /api/v1/orders`, docs/api.md). Every field that is set must
/// match; `since` is inclusive and `until` exclusive, both on `@timestamp`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFilter {
    pub status: Option<Status>,
    pub agent_id: Option<AgentId>,
    pub target_type: Option<TargetType>,
    pub target_id: Option<String>,
    pub request_id: Option<RequestId>,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl OrderFilter {
    /// The rule every adapter's query must agree with.
    #[must_use]
    pub fn matches(&self, o: &Order) -> bool {
        self.status.is_none_or(|s| o.status() == s)
            && self
                .agent_id
                .as_ref()
                .is_none_or(|a| o.agent_id() == Some(a))
            && self.target_type.is_none_or(|t| o.target().kind() == t)
            && self
                .target_id
                .as_deref()
                .is_none_or(|t| o.target().id() == t)
            && self.request_id.is_none_or(|r| *o.request_id() == r)
            && self
                .action
                .as_deref()
                .is_none_or(|a| o.action().name() == a)
            && self.since.is_none_or(|t| o.created_at() >= t)
            && self.until.is_none_or(|t| o.created_at() < t)
    }
}

/// A position in the orders stream's query order: `@timestamp`, then `order_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderCursor {
    pub created_at: DateTime<Utc>,
    pub order_id: OrderId,
}

impl OrderCursor {
    /// The cursor just past `order`.
    #[must_use]
    pub fn after(order: &Order) -> Self {
        Self {
            created_at: order.created_at(),
            order_id: *order.order_id(),
        }
    }

    /// The opaque text form handed to clients.
    #[must_use]
    pub fn encode(&self) -> String {
        format!(
            "{:x}_{}",
            self.created_at.timestamp_millis(),
            self.order_id.as_uuid().simple()
        )
    }

    /// The text form of every cursor [`Self::encode`] gives (the ECMA-262 subset JSON Schema
    /// uses), and exactly what [`Self::decode`] accepts: the creation time in milliseconds as
    /// 1 to 13 lowercase hex digits, `_`, the order id as 32 lowercase hex digits.
    pub const PATTERN: &'static str = "^[0-9a-f]{1,13}_[0-9a-f]{32}$";

    /// # Errors
    /// A [`FieldError`] on `field` when `raw` does not match [`Self::PATTERN`].
    pub fn decode(raw: &str, field: &str) -> Result<Self, FieldError> {
        let bad = || FieldError::new(field, "is not a cursor returned by this service");
        let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let (millis, id) = raw.split_once('_').ok_or_else(bad)?;
        if !(1..=13).contains(&millis.len()) || !hex(millis) || id.len() != 32 || !hex(id) {
            return Err(bad());
        }
        // 13 hex digits stay below 2^52 ms, well inside chrono's range.
        let millis = i64::from_str_radix(millis, 16).map_err(|_| bad())?;
        let created_at = Utc.timestamp_millis_opt(millis).single().ok_or_else(bad)?;
        let order_id = OrderId::parse(id, field).map_err(|_| bad())?;
        Ok(Self {
            created_at,
            order_id,
        })
    }
}

impl fmt::Display for OrderCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// A position in the requests listing's order: newest first by `created_at`, then by
/// `request_id` descending. Its text form is that of [`OrderCursor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestCursor {
    pub created_at: DateTime<Utc>,
    pub request_id: RequestId,
}

impl RequestCursor {
    /// The cursor just past `record`.
    #[must_use]
    pub fn after(record: &RequestRecord) -> Self {
        Self {
            created_at: record.created_at(),
            request_id: *record.request_id(),
        }
    }

    /// The opaque text form handed to clients.
    #[must_use]
    pub fn encode(&self) -> String {
        OrderCursor {
            created_at: self.created_at,
            order_id: OrderId::from_uuid(*self.request_id.as_uuid()),
        }
        .encode()
    }

    /// # Errors
    /// A [`FieldError`] on `field` when `raw` does not match [`OrderCursor::PATTERN`].
    pub fn decode(raw: &str, field: &str) -> Result<Self, FieldError> {
        let c = OrderCursor::decode(raw, field)?;
        Ok(Self {
            created_at: c.created_at,
            request_id: RequestId::from_uuid(*c.order_id.as_uuid()),
        })
    }

    /// Whether `record` lies strictly after this cursor in the listing's order (is older).
    #[must_use]
    pub fn precedes(&self, record: &RequestRecord) -> bool {
        (record.created_at(), *record.request_id()) < (self.created_at, self.request_id)
    }
}

/// The filter of a requests listing (`GET /api/v1/requests`, docs/api.md). Every field that is set
/// must match; `since` is inclusive and `until` exclusive, both on `created_at`; `target_type`
/// and `target_id` are the target as submitted (a group, not its members).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFilter {
    pub state: Option<RequestState>,
    pub action: Option<String>,
    pub user: Option<String>,
    pub source: Option<Source>,
    pub target_type: Option<TargetType>,
    pub target_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl RequestFilter {
    /// The rule every adapter's query must agree with.
    #[must_use]
    pub fn matches(&self, r: &RequestRecord) -> bool {
        let Self {
            state,
            action,
            user,
            source,
            target_type,
            target_id,
            since,
            until,
        } = self;
        state.is_none_or(|s| r.state() == s)
            && action.as_deref().is_none_or(|a| r.action().name == a)
            && user.as_deref().is_none_or(|u| r.user() == Some(u))
            && source.is_none_or(|s| r.source() == s)
            && target_type.is_none_or(|t| r.target().kind() == t)
            && target_id.as_deref().is_none_or(|t| r.target().id() == t)
            && since.is_none_or(|t| r.created_at() >= t)
            && until.is_none_or(|t| r.created_at() < t)
    }
}

/// Which page of requests to read: at most `size` records strictly after `after` (older).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPageRequest {
    pub size: usize,
    pub after: Option<RequestCursor>,
}

/// The finished orders of one request that ended alike: same status, result code and message
/// (`GET /api/v1/requests/{id}/results`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultGroup {
    pub status: Status,
    pub code: i16,
    pub message: String,
    pub count: u64,
    /// Up to [`ResultGroup::SAMPLE`] target ids of the group's orders (agent ids, component
    /// names), in ascending order.
    pub sample: Vec<String>,
}

impl ResultGroup {
    /// Most target ids a group's sample holds.
    pub const SAMPLE: usize = 10;
    /// Most groups one breakdown answers (the largest ones).
    pub const MAX_GROUPS: usize = 100;

    /// The breakdown's order: largest group first, then status, code and message ascending.
    pub fn sort(groups: &mut [Self]) {
        groups.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(a.status.cmp(&b.status))
                .then(a.code.cmp(&b.code))
                .then(a.message.cmp(&b.message))
        });
    }
}

/// One page of a listing, and the cursor of the next page (`None` on the last page).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T, C> {
    pub items: Vec<T>,
    pub next: Option<C>,
}

impl<T, C> Page<T, C> {
    /// The page of `items` read with a limit of `size`: a full page may have more after it,
    /// from the cursor `key` gives its last item; a shorter one is the last page.
    pub fn read(items: Vec<T>, size: usize, key: impl FnOnce(&T) -> C) -> Self {
        let next = if items.len() == size {
            items.last().map(key)
        } else {
            None
        };
        Self { items, next }
    }
}

/// Which page of orders to read: at most `size` orders strictly after `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderPageRequest {
    pub size: usize,
    pub after: Option<OrderCursor>,
}

/// Which page of agents to read: at most `size` agents (members of `group` when given) with an
/// id greater than `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPageRequest {
    pub group: Option<GroupName>,
    pub size: usize,
    pub after: Option<AgentId>,
}

/// The consumers one claim takes orders for: one agent (an agent's poll), one component (a
/// component's poll), or many of both (a relay's claim). Each list is sorted and without
/// duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consumers {
    agents: Vec<AgentId>,
    components: Vec<ComponentName>,
}

impl Consumers {
    #[must_use]
    pub fn new(mut agents: Vec<AgentId>, mut components: Vec<ComponentName>) -> Self {
        agents.sort_unstable();
        agents.dedup();
        components.sort_unstable();
        components.dedup();
        Self { agents, components }
    }

    /// One agent's poll.
    #[must_use]
    pub fn agent(agent: &AgentId) -> Self {
        Self {
            agents: vec![agent.clone()],
            components: Vec::new(),
        }
    }

    /// One component's poll.
    #[must_use]
    pub fn component(component: &ComponentName) -> Self {
        Self {
            agents: Vec::new(),
            components: vec![component.clone()],
        }
    }

    #[must_use]
    pub fn agents(&self) -> &[AgentId] {
        &self.agents
    }

    #[must_use]
    pub fn components(&self) -> &[ComponentName] {
        &self.components
    }

    /// How many consumers, agents and components together.
    #[must_use]
    pub fn len(&self) -> usize {
        self.agents.len() + self.components.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `consumer` is one of these.
    #[must_use]
    pub fn contains(&self, consumer: &Consumer) -> bool {
        match consumer {
            Consumer::Agent(a) => self.agents.binary_search(a).is_ok(),
            Consumer::Component(c) => self.components.binary_search(c).is_ok(),
        }
    }

    /// Whether `order` is for one of these consumers: the rule every adapter's claim query
    /// must agree with (together with `Order::is_deliverable`).
    #[must_use]
    pub fn takes(&self, order: &Order) -> bool {
        order.consumer().is_some_and(|c| self.contains(&c))
    }

    /// Every consumer, agents first.
    pub fn iter(&self) -> impl Iterator<Item = Consumer> + '_ {
        self.agents
            .iter()
            .cloned()
            .map(Consumer::Agent)
            .chain(self.components.iter().cloned().map(Consumer::Component))
    }
}

/// What one maintenance batch did: how many candidates it looked at, how many it changed
/// (the rest were changed by someone else meanwhile).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Batch {
    pub examined: usize,
    pub changed: usize,
}

/// What retention does with a finished order that is old enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionMode {
    Delete,
    /// Move it to the archive (`wazuh-commands-archive` index / archive table).
    Archive,
}

impl RetentionMode {
    /// The mode's name in logs and in the `mode` metric label.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Archive => "archive",
        }
    }
}

/// Whether an upsert created the agent or replaced an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    Created,
    Updated,
}

/// The durable orders stream.
///
/// Every `now` passed in is truncated to milliseconds (what [`crate::Clock`] returns), the
/// precision of the stored documents, so an order an adapter returns equals the stored one.
///
/// Every state change an adapter makes is conditional on the stored order still being in the
/// state the change was computed from, so concurrent polls, schedulers and service instances
/// never apply two transitions to one order. State changes are computed by the domain's
/// transition functions (`Order::deliver`, `Order::expire`, …); adapters select candidates with
/// queries that agree with the domain's predicates (`Order::is_deliverable`, …).
#[cfg_attr(any(test, feature = "testkit"), mockall::automock)]
#[async_trait]
pub trait OrderStore: Send + Sync + 'static {
    /// Writes new orders. An order whose `order_id` is already stored is left as it is and not
    /// counted, so inserting the same orders twice creates them once. Returns how many were
    /// created.
    ///
    /// # Errors
    /// [`StoreError`] when any order of the batch may not be durable. Some may have been
    /// written; the batch may be retried as a whole.
    async fn insert(&self, orders: &[Order]) -> Result<u64, StoreError>;

    /// [`Self::insert`] for orders that nobody can claim before a later write of this backend
    /// commits (the orders of a request whose record is `writing`): their durability may wait
    /// for that later write, which the caller makes before anything is acknowledged. A backend
    /// whose log is written strictly in order (SQLite's and PostgreSQL's write-ahead logs)
    /// skips the flush of each staged batch, since the flush of the later commit covers every
    /// record before it; after a crash, a staged batch is there only if every write before it
    /// is. The default is [`Self::insert`].
    ///
    /// # Errors
    /// As [`Self::insert`].
    async fn insert_staged(&self, orders: &[Order]) -> Result<u64, StoreError> {
        self.insert(orders).await
    }

    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn get(&self, id: &OrderId) -> Result<Option<Order>, StoreError>;

    /// Orders matching `filter`, in (`@timestamp`, `order_id`) order, after `page.after`.
    /// `next` is set whenever the page is full, and paging with it visits every matching order
    /// exactly once.
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn query(
        &self,
        filter: &OrderFilter,
        page: &OrderPageRequest,
    ) -> Result<Page<Order, OrderCursor>, StoreError>;

    /// Atomically hands out up to `limit` of the deliverable orders of `consumers` (oldest
    /// first over all of them; `Consumers::takes`): each is moved with
    /// `Order::deliver(now, policy)` and returned in its new state. An order is returned to at
    /// most one concurrent caller, whether that is an agent's poll, a component's poll or a
    /// relay's claim for many consumers (up to 10,000).
    ///
    /// The request gate: an order whose request has a record (see [`RequestStore`]) is handed
    /// out only while that record's state delivers (`RequestState::delivers`: `scheduled` or
    /// `running`), as read in the same statement or after the candidates were found, so that no
    /// order of a submit still `writing`, or of a paused, cancelled, stopped or aborted request,
    /// ever goes out. Held orders (`Order::is_held`) are never deliverable.
    ///
    /// # Errors
    /// [`StoreError`]; then no order was marked `sent` by this call.
    async fn claim(
        &self,
        consumers: &Consumers,
        limit: usize,
        now: DateTime<Utc>,
        policy: &DeliveryPolicy,
    ) -> Result<Vec<Order>, StoreError>;

    /// Replaces `current` by `next` only if the stored order is still `current` (and `next`
    /// has the same `order_id`; otherwise it is a [`ReplaceError::Conflict`]).
    ///
    /// # Errors
    /// [`ReplaceError::Conflict`] when the stored order changed, [`ReplaceError::NotFound`]
    /// when it does not exist, [`ReplaceError::Store`] otherwise.
    async fn replace(&self, current: &Order, next: &Order) -> Result<(), ReplaceError>;

    /// The earliest instant strictly after `now` at which one of the orders of `consumers`
    /// becomes deliverable without anything else happening: a pending order's `not_before`, or
    /// a sent order's redelivery time. `None` when no such instant exists. A long-poll sleeps
    /// until then so that it never misses a scheduled order.
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn next_due(
        &self,
        consumers: &Consumers,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Ends up to `limit` of the still-pending orders of `request`, held or not
    /// (`Order::end_pending(now, end)`).
    ///
    /// # Errors
    /// [`StoreError`]; orders already changed stay changed.
    async fn end_pending(
        &self,
        request: &RequestId,
        end: PendingEnd,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Batch, StoreError>;

    /// Rate control: releases up to `limit` of the held orders of `request` whose position is
    /// below `below` (`Order::release(now)`), lowest position first, and returns them released.
    /// Releasing what is already released changes nothing, so the call is idempotent.
    ///
    /// # Errors
    /// [`StoreError`]; orders already released stay released.
    async fn release_held(
        &self,
        request: &RequestId,
        below: u64,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Order>, StoreError>;

    /// The finished orders of `request` grouped by (status, result code, result message),
    /// largest group first ([`ResultGroup::sort`]), at most [`ResultGroup::MAX_GROUPS`] groups,
    /// each with a sample of up to [`ResultGroup::SAMPLE`] target ids in ascending order.
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn result_groups(&self, request: &RequestId) -> Result<Vec<ResultGroup>, StoreError>;

    /// The batch the scheduler's sweeps ([`Self::expire_due`], [`Self::give_up_unreported`],
    /// [`Self::purge_finished`]) ask this backend for, given the configured one
    /// (`limits.maintenance_batch`). A backend whose every call has a large fixed cost next to
    /// the rows it changes may answer more (OpenSearch: a refresh and a by-query request per
    /// batch, whatever its size). The default is `configured`.
    fn sweep_batch(&self, configured: usize) -> usize {
        configured
    }

    /// Expires up to `limit` pending orders whose deadline passed at `now`
    /// (`Order::expire`; never a held order).
    ///
    /// # Errors
    /// [`StoreError`]; orders already changed stay changed.
    async fn expire_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Batch, StoreError>;

    /// Fails up to `limit` delivered orders whose result deadline passed (`Order::give_up`).
    ///
    /// # Errors
    /// [`StoreError`]; orders already changed stay changed.
    async fn give_up_unreported(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Batch, StoreError>;

    /// Deletes or archives up to `limit` finished orders that finished at or before `cutoff`.
    ///
    /// # Errors
    /// [`StoreError`]; an archived order is removed from the stream only once it is in the
    /// archive.
    async fn purge_finished(
        &self,
        cutoff: DateTime<Utc>,
        mode: RetentionMode,
        limit: usize,
    ) -> Result<Batch, StoreError>;

    /// An order moved to the archive by retention.
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn get_archived(&self, id: &OrderId) -> Result<Option<Order>, StoreError>;

    /// How many orders of `request` are in each status, and how many failed as errors of the
    /// action (`StatusCounts::count`; all zero for an unknown request).
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn progress(&self, request: &RequestId) -> Result<StatusCounts, StoreError>;

    /// Removes every order of `request` (undoing a submit that could not be completed).
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn delete_request(&self, request: &RequestId) -> Result<u64, StoreError>;

    /// Succeeds when the backend is reachable and usable.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] otherwise.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The first look of many agents' opening long-polls in one query, changing nothing: for
    /// each of `agents` (answered in the same order, one entry each), `Some(t)` with `t <= now`
    /// when one of its orders may be deliverable at `now` (its poll then claims), `Some(t)` with
    /// `t` after `now` when none is but one becomes deliverable by itself at `t` (as
    /// [`Self::next_due`]), `None` when neither.
    ///
    /// An answer may be earlier than the truth but never later, so a poll that waits on it
    /// misses nothing: it sees every order [`Self::claim`] would at `now`, and may leave out the
    /// request gate and the delivery deadline (a poll that claims and finds nothing, or wakes
    /// early, only costs a query). Held and finished orders are nobody's due. The default
    /// answers `Some(now)` for every agent (each poll claims on its own, as if there were no
    /// coalescing); the conformance suite holds an adapter to exact answers where no gate or
    /// deadline is involved.
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn first_due(
        &self,
        agents: &[AgentId],
        now: DateTime<Utc>,
    ) -> Result<Vec<Option<DateTime<Utc>>>, StoreError> {
        Ok(vec![Some(now); agents.len()])
    }
}

/// The request records (docs/requests.md): one per command of a submit, written before its orders
/// (`wazuh-commands-requests` in OpenSearch). It lives in the same backend as the orders, whose
/// claims consult it (the request gate of [`OrderStore::claim`]).
#[cfg_attr(any(test, feature = "testkit"), mockall::automock)]
#[async_trait]
pub trait RequestStore: Send + Sync + 'static {
    /// Writes a new record; `false` (and nothing written) when one with its id exists.
    ///
    /// # Errors
    /// [`StoreError`] when the write may not be durable.
    async fn create(&self, record: &RequestRecord) -> Result<bool, StoreError>;

    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn get(&self, id: &RequestId) -> Result<Option<RequestRecord>, StoreError>;

    /// Replaces `current` by `next` only if the stored record's revision is still
    /// `current.revision()`.
    ///
    /// # Errors
    /// [`ReplaceError::Conflict`] when the stored record changed, [`ReplaceError::NotFound`]
    /// when it does not exist, [`ReplaceError::Store`] otherwise.
    async fn replace(
        &self,
        current: &RequestRecord,
        next: &RequestRecord,
    ) -> Result<(), ReplaceError>;

    /// Records matching `filter`, newest first (`created_at`, then `request_id`, both
    /// descending), after `page.after`. `next` is set whenever the page is full, and paging with
    /// it visits every matching record exactly once.
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn list(
        &self,
        filter: &RequestFilter,
        page: &RequestPageRequest,
    ) -> Result<Page<RequestRecord, RequestCursor>, StoreError>;

    /// Records not settled yet (`RequestRecord::is_settled` false), oldest first (`created_at`,
    /// then `request_id`, ascending), strictly after `after`, at most `limit`: the requests
    /// the scheduler still has work for.
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn unsettled(
        &self,
        after: Option<RequestCursor>,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, StoreError>;

    /// Retention: removes up to `limit` settled records that finished at or before `cutoff`,
    /// and answers how many it removed.
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn purge_settled(&self, cutoff: DateTime<Utc>, limit: usize) -> Result<u64, StoreError>;

    /// Writes whole requests at once: each record (committed already, never `writing`) with
    /// every one of its orders, the submits of several callers in one go (the group commit of
    /// docs/requests.md). A request whose record id is stored already is left as it is
    /// ([`WholeOutcome::Exists`]: nothing of it is written); orders already stored are left as
    /// they are and not counted, as [`OrderStore::insert`] does.
    ///
    /// The guarantee is the one the `writing` state gives the step-by-step protocol: no order of
    /// a request is ever delivered unless all of its orders and its record are durable. A
    /// transactional backend writes everything in one transaction (one commit, one fsync).
    ///
    /// `Ok(None)`, the default, says the backend cannot: the caller writes each request step
    /// by step ([`Self::create`] `writing`, the orders, [`Self::replace`] committed).
    ///
    /// # Errors
    /// [`StoreError`] when the write may not be durable. Then none of these requests delivers
    /// anything: a transactional backend wrote nothing, another left records `writing` (the
    /// gate keeps their orders back until a keyed retry completes them or the scheduler aborts
    /// them). [`StoreError::Rejected`] names the request whose order storage refused.
    async fn write_whole(
        &self,
        requests: &[WholeRequest],
    ) -> Result<Option<Vec<WholeOutcome>>, StoreError> {
        let _ = requests;
        Ok(None)
    }
}

/// One request for [`RequestStore::write_whole`]: its committed record and all its orders.
#[derive(Debug, Clone, PartialEq)]
pub struct WholeRequest {
    /// The record to store: committed (`running` or `scheduled`).
    pub record: RequestRecord,
    /// The same record as the submit opened it (`writing`), for a backend without transactions
    /// that writes it before the orders and replaces it by `record` after them.
    pub opened: RequestRecord,
    pub orders: Vec<Order>,
}

/// What [`RequestStore::write_whole`] did with one request, in the order they were given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WholeOutcome {
    /// The record and its orders are durable; `created` orders were new.
    Written { created: u64 },
    /// A record with this id was stored already; nothing of this request was written.
    Exists,
}

/// The agents registry that group expansion reads (`wazuh-agents` in OpenSearch).
#[cfg_attr(any(test, feature = "testkit"), mockall::automock)]
#[async_trait]
pub trait AgentRegistry: Send + Sync + 'static {
    /// Registers `agent` or replaces its groups. An existing key hash is kept.
    ///
    /// # Errors
    /// [`StoreError`] when the change may not be durable.
    async fn upsert(&self, agent: &Agent) -> Result<Upserted, StoreError>;

    /// Registers or updates many agents at once; returns how many were new.
    ///
    /// # Errors
    /// [`StoreError`] when any change may not be durable.
    async fn upsert_many(&self, agents: &[Agent]) -> Result<u64, StoreError>;

    /// Stores the hash of `id`'s key, replacing any earlier one; `false` (and nothing stored)
    /// when the agent is not registered.
    ///
    /// # Errors
    /// [`StoreError`] when the change may not be durable.
    async fn set_key_hash(&self, id: &AgentId, hash: &KeyHash) -> Result<bool, StoreError>;

    /// Stores many agents' key hashes at once, each as [`Self::set_key_hash`] would (an agent
    /// that is not registered is skipped); returns how many were stored. What a bulk
    /// registration uses, so that it costs one write rather than one per agent: the default
    /// stores them one by one; a backend with transactions stores them in one.
    ///
    /// # Errors
    /// [`StoreError`] when any change may not be durable (those before it may be).
    async fn set_key_hashes(&self, hashes: &[(AgentId, KeyHash)]) -> Result<u64, StoreError> {
        let mut stored = 0;
        for (id, hash) in hashes {
            if self.set_key_hash(id, hash).await? {
                stored += 1;
            }
        }
        Ok(stored)
    }

    /// The hash of `id`'s key; `None` when the agent is unknown or has no key. Deleting an agent
    /// deletes its key.
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn key_hash(&self, id: &AgentId) -> Result<Option<KeyHash>, StoreError>;

    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn get(&self, id: &AgentId) -> Result<Option<Agent>, StoreError>;

    /// Which of `ids` are registered, in any order, each once. What a bulk registration reads
    /// to tell new agents from existing ones in one query: the default asks for each in turn; a
    /// backend with queries over sets answers them together.
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn registered(&self, ids: &[AgentId]) -> Result<Vec<AgentId>, StoreError> {
        let mut found = Vec::new();
        for id in ids {
            if self.get(id).await?.is_some() && !found.contains(id) {
                found.push(id.clone());
            }
        }
        Ok(found)
    }

    /// Removes an agent; `false` when it was not registered. Its orders stay.
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn delete(&self, id: &AgentId) -> Result<bool, StoreError>;

    /// Agents (members of `page.group` when given) in ascending id order after `page.after`; `next`
    /// is set whenever the page is full. Paging visits every member exactly once, so a group of
    /// any size can be expanded without holding it in one response.
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn list(&self, page: &AgentPageRequest) -> Result<Page<Agent, AgentId>, StoreError>;

    /// How many agents (of `group` when given) are registered.
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn count(&self, group: Option<GroupName>) -> Result<u64, StoreError>;
}

/// The registry of server components that consume orders (`wazuh-commands-servers` in
/// OpenSearch). A component needs no registration to be the target of a command; it needs one to
/// authenticate its polls.
#[cfg_attr(any(test, feature = "testkit"), mockall::automock)]
#[async_trait]
pub trait ComponentRegistry: Send + Sync + 'static {
    /// Registers `name` with the hash of its first key; an already registered component is
    /// left as it is (its key too) and [`Upserted::Updated`] returned.
    ///
    /// # Errors
    /// [`StoreError`] when the change may not be durable.
    async fn register(&self, name: &ComponentName, hash: &KeyHash) -> Result<Upserted, StoreError>;

    /// Replaces the hash of `name`'s key; `false` (and nothing stored) when it is not
    /// registered.
    ///
    /// # Errors
    /// [`StoreError`] when the change may not be durable.
    async fn set_key_hash(&self, name: &ComponentName, hash: &KeyHash) -> Result<bool, StoreError>;

    /// The hash of `name`'s key; `None` when the component is not registered.
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn key_hash(&self, name: &ComponentName) -> Result<Option<KeyHash>, StoreError>;

    /// Registered components in ascending name order after `after`, at most `size`; `next` is
    /// set whenever the page is full.
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn list(
        &self,
        after: Option<ComponentName>,
        size: usize,
    ) -> Result<Page<ComponentName, ComponentName>, StoreError>;

    /// Removes a component and its key; `false` when it was not registered. Its orders stay.
    ///
    /// # Errors
    /// [`StoreError`] when the backend cannot answer.
    async fn delete(&self, name: &ComponentName) -> Result<bool, StoreError>;
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn cursor_round_trips_through_its_text_form() {
        let c = OrderCursor {
            created_at: Utc.timestamp_millis_opt(1_764_237_600_123).unwrap(),
            order_id: OrderId::from_uuid(Uuid::from_u128(42)),
        };
        assert_eq!(OrderCursor::decode(&c.encode(), "after").unwrap(), c);
    }

    #[test]
    fn foreign_cursor_text_names_the_field() {
        let id = "0".repeat(32);
        for bad in [
            "",
            "x",
            "zz_00",
            "1_notauuid",
            "../../etc",
            // Only the form `encode` gives: lowercase, no sign, no hyphens, at most 13 digits.
            &format!("1A_{id}"),
            &format!("+1_{id}"),
            &format!("1_{}", "0A".repeat(16)),
            "1_00000000-0000-0000-0000-000000000000",
            &format!("{}_{id}", "1".repeat(14)),
        ] {
            assert_eq!(
                OrderCursor::decode(bad, "after").unwrap_err().field(),
                "after"
            );
        }
    }
}
