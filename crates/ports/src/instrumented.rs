//! Instrumentation as a layer over the storage ports: [`InstrumentedOrders`] and
//! [`InstrumentedAgents`] wrap any [`OrderStore`] / [`AgentRegistry`] and give every backend the
//! same telemetry, so adapters carry none of their own:
//!
//! * a DEBUG span `store` per operation with `op` ([`StoreOp`]), `backend` and the operation's
//!   key arguments (agent, order or request id, limit, …);
//! * the operation's latency in [`metric::STORE_OPERATION`] (`cm_store_operation_seconds{op,
//!   backend, outcome}`);
//! * a failure logged once, here, at the level its kind deserves: `Unavailable` at WARN,
//!   `Corrupt` at ERROR, `Rejected` (the caller's input is at fault) at DEBUG. A compare-and-set
//!   that lost (`ReplaceError::Conflict`) or found nothing is an answer, not a failure: its
//!   outcome is `ok` and it is not logged.
//!
//! Results and errors pass through unchanged. The binary wraps the stores of whichever backend
//! it opens ([`Ports::instrumented`]); an embedding service may do the same.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cm_domain::{
    Agent, AgentId, ComponentName, DeliveryPolicy, GroupName, KeyHash, Order, OrderId, PendingEnd,
    RequestId, RequestRecord,
};
use tracing::{Instrument, Span};

use crate::metric::{self, Outcome, StoreOp};
use crate::service::Ports;
use crate::store::{
    AgentPageRequest, AgentRegistry, Batch, ComponentRegistry, Consumers, OrderCursor, OrderFilter,
    OrderPageRequest, OrderStore, Page, ReplaceError, RequestCursor, RequestFilter,
    RequestPageRequest, RequestStore, ResultGroup, RetentionMode, StatusCounts, StoreError,
    Upserted, WholeOutcome, WholeRequest,
};

impl Ports {
    /// The same ports with the orders stream and the agents registry wrapped in
    /// [`InstrumentedOrders`] and [`InstrumentedAgents`], labelled `backend` (`memory`,
    /// `sqlite`, `postgres`, `opensearch`, or an embedder's own name).
    #[must_use]
    pub fn instrumented(self, backend: &'static str) -> Self {
        Self {
            orders: Arc::new(InstrumentedOrders::new(self.orders, backend)),
            agents: Arc::new(InstrumentedAgents::new(self.agents, backend)),
            components: Arc::new(InstrumentedComponents::new(self.components, backend)),
            requests: Arc::new(InstrumentedRequests::new(self.requests, backend)),
            ..self
        }
    }
}

/// The storage failure an operation's error carries, if any.
trait StoreFailure {
    fn store_error(&self) -> Option<&StoreError>;
}

impl StoreFailure for StoreError {
    fn store_error(&self) -> Option<&StoreError> {
        Some(self)
    }
}

impl StoreFailure for ReplaceError {
    fn store_error(&self) -> Option<&StoreError> {
        match self {
            Self::Store(e) => Some(e),
            Self::Conflict | Self::NotFound => None,
        }
    }
}

/// Runs `work` in `span`, records its duration and logs its failure.
async fn observe<T, E: StoreFailure>(
    op: StoreOp,
    backend: &'static str,
    span: Span,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let result = work.instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let failure = result.as_ref().err().and_then(StoreFailure::store_error);
    let outcome = if failure.is_some() {
        Outcome::Error
    } else {
        Outcome::Ok
    };
    metrics::histogram!(
        metric::STORE_OPERATION.name,
        "op" => op.as_str(),
        "backend" => backend,
        "outcome" => outcome.as_str(),
    )
    .record(elapsed.as_secs_f64());
    if let Some(error) = failure {
        span.in_scope(|| log_failure(op, backend, error));
    }
    result
}

/// The one place a storage failure is logged. `op` and `backend` are fields of the event too,
/// since the DEBUG span is usually filtered out.
fn log_failure(op: StoreOp, backend: &'static str, error: &StoreError) {
    let op = op.as_str();
    match error {
        StoreError::Unavailable(_) => {
            tracing::warn!(op, backend, %error, "storage operation failed");
        }
        StoreError::Contention(_) => {
            tracing::warn!(op, backend, %error, "storage operation lost to contention");
        }
        StoreError::Corrupt(_) => {
            tracing::error!(op, backend, %error, "storage returned unusable data");
        }
        StoreError::Rejected { .. } => {
            tracing::debug!(op, backend, %error, "storage refused the input");
        }
    }
}

/// Runs one call of the inner store under [`observe`], in a `store` span carrying `op`,
/// `backend` and the given fields.
macro_rules! observed {
    ($self:ident, $op:expr, $call:expr $(, $($field:tt)+)?) => {{
        let op: StoreOp = $op;
        let span = tracing::debug_span!(
            "store",
            op = op.as_str(),
            backend = $self.backend
            $(, $($field)+)?
        );
        observe(op, $self.backend, span, $call).await
    }};
}

/// An [`OrderStore`] that traces, times and logs every operation of the one it wraps.
#[derive(Clone)]
pub struct InstrumentedOrders {
    inner: Arc<dyn OrderStore>,
    backend: &'static str,
}

impl InstrumentedOrders {
    #[must_use]
    pub fn new(inner: Arc<dyn OrderStore>, backend: &'static str) -> Self {
        Self { inner, backend }
    }
}

impl std::fmt::Debug for InstrumentedOrders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrumentedOrders")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl OrderStore for InstrumentedOrders {
    async fn insert(&self, orders: &[Order]) -> Result<u64, StoreError> {
        observed!(
            self,
            StoreOp::Insert,
            self.inner.insert(orders),
            orders = orders.len()
        )
    }

    async fn insert_staged(&self, orders: &[Order]) -> Result<u64, StoreError> {
        observed!(
            self,
            StoreOp::Insert,
            self.inner.insert_staged(orders),
            orders = orders.len()
        )
    }

    async fn get(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        observed!(self, StoreOp::Get, self.inner.get(id), order_id = %id)
    }

    async fn query(
        &self,
        filter: &OrderFilter,
        page: &OrderPageRequest,
    ) -> Result<Page<Order, OrderCursor>, StoreError> {
        observed!(
            self,
            StoreOp::Query,
            self.inner.query(filter, page),
            ?filter,
            size = page.size
        )
    }

    async fn claim(
        &self,
        consumers: &Consumers,
        limit: usize,
        now: DateTime<Utc>,
        policy: &DeliveryPolicy,
    ) -> Result<Vec<Order>, StoreError> {
        observed!(
            self,
            StoreOp::Claim,
            self.inner.claim(consumers, limit, now, policy),
            consumer = consumers.iter().next().map(|c| c.key()),
            consumers = consumers.len(),
            limit
        )
    }

    async fn replace(&self, current: &Order, next: &Order) -> Result<(), ReplaceError> {
        observed!(
            self,
            StoreOp::Replace,
            self.inner.replace(current, next),
            order_id = %current.order_id(),
            to = next.status().as_str()
        )
    }

    async fn next_due(
        &self,
        consumers: &Consumers,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        observed!(
            self,
            StoreOp::NextDue,
            self.inner.next_due(consumers, now),
            consumer = consumers.iter().next().map(|c| c.key()),
            consumers = consumers.len()
        )
    }

    async fn end_pending(
        &self,
        request: &RequestId,
        end: PendingEnd,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        observed!(
            self,
            StoreOp::EndPending,
            self.inner.end_pending(request, end, now, limit),
            request_id = %request,
            end = end.message(),
            limit
        )
    }

    async fn release_held(
        &self,
        request: &RequestId,
        below: u64,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Order>, StoreError> {
        observed!(
            self,
            StoreOp::ReleaseHeld,
            self.inner.release_held(request, below, now, limit),
            request_id = %request,
            below,
            limit
        )
    }

    async fn result_groups(&self, request: &RequestId) -> Result<Vec<ResultGroup>, StoreError> {
        observed!(
            self,
            StoreOp::ResultGroups,
            self.inner.result_groups(request),
            request_id = %request
        )
    }

    async fn expire_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Batch, StoreError> {
        observed!(
            self,
            StoreOp::ExpireDue,
            self.inner.expire_due(now, limit),
            limit
        )
    }

    async fn give_up_unreported(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        observed!(
            self,
            StoreOp::GiveUpUnreported,
            self.inner.give_up_unreported(now, limit),
            limit
        )
    }

    async fn purge_finished(
        &self,
        cutoff: DateTime<Utc>,
        mode: RetentionMode,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        observed!(
            self,
            StoreOp::PurgeFinished,
            self.inner.purge_finished(cutoff, mode, limit),
            mode = mode.as_str(),
            limit
        )
    }

    async fn get_archived(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        observed!(
            self,
            StoreOp::GetArchived,
            self.inner.get_archived(id),
            order_id = %id
        )
    }

    async fn progress(&self, request: &RequestId) -> Result<StatusCounts, StoreError> {
        observed!(
            self,
            StoreOp::Progress,
            self.inner.progress(request),
            request_id = %request
        )
    }

    async fn delete_request(&self, request: &RequestId) -> Result<u64, StoreError> {
        observed!(
            self,
            StoreOp::DeleteRequest,
            self.inner.delete_request(request),
            request_id = %request
        )
    }

    async fn ping(&self) -> Result<(), StoreError> {
        observed!(self, StoreOp::Ping, self.inner.ping())
    }

    fn sweep_batch(&self, configured: usize) -> usize {
        self.inner.sweep_batch(configured)
    }

    async fn first_due(
        &self,
        agents: &[AgentId],
        now: DateTime<Utc>,
    ) -> Result<Vec<Option<DateTime<Utc>>>, StoreError> {
        observed!(
            self,
            StoreOp::FirstDue,
            self.inner.first_due(agents, now),
            agents = agents.len()
        )
    }
}

/// An [`AgentRegistry`] that traces, times and logs every operation of the one it wraps.
#[derive(Clone)]
pub struct InstrumentedAgents {
    inner: Arc<dyn AgentRegistry>,
    backend: &'static str,
}

impl InstrumentedAgents {
    #[must_use]
    pub fn new(inner: Arc<dyn AgentRegistry>, backend: &'static str) -> Self {
        Self { inner, backend }
    }
}

impl std::fmt::Debug for InstrumentedAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrumentedAgents")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl AgentRegistry for InstrumentedAgents {
    async fn upsert(&self, agent: &Agent) -> Result<Upserted, StoreError> {
        observed!(
            self,
            StoreOp::AgentUpsert,
            self.inner.upsert(agent),
            agent = %agent.id()
        )
    }

    async fn upsert_many(&self, agents: &[Agent]) -> Result<u64, StoreError> {
        observed!(
            self,
            StoreOp::AgentUpsertMany,
            self.inner.upsert_many(agents),
            agents = agents.len()
        )
    }

    async fn set_key_hash(&self, id: &AgentId, hash: &KeyHash) -> Result<bool, StoreError> {
        observed!(
            self,
            StoreOp::AgentSetKeyHash,
            self.inner.set_key_hash(id, hash),
            agent = %id
        )
    }

    async fn set_key_hashes(&self, hashes: &[(AgentId, KeyHash)]) -> Result<u64, StoreError> {
        observed!(
            self,
            StoreOp::AgentSetKeyHash,
            self.inner.set_key_hashes(hashes),
            agents = hashes.len()
        )
    }

    async fn key_hash(&self, id: &AgentId) -> Result<Option<KeyHash>, StoreError> {
        observed!(
            self,
            StoreOp::AgentKeyHash,
            self.inner.key_hash(id),
            agent = %id
        )
    }

    async fn get(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        observed!(self, StoreOp::AgentGet, self.inner.get(id), agent = %id)
    }

    async fn registered(&self, ids: &[AgentId]) -> Result<Vec<AgentId>, StoreError> {
        observed!(
            self,
            StoreOp::AgentGet,
            self.inner.registered(ids),
            agents = ids.len()
        )
    }

    async fn delete(&self, id: &AgentId) -> Result<bool, StoreError> {
        observed!(
            self,
            StoreOp::AgentDelete,
            self.inner.delete(id),
            agent = %id
        )
    }

    async fn list(&self, page: &AgentPageRequest) -> Result<Page<Agent, AgentId>, StoreError> {
        observed!(
            self,
            StoreOp::AgentList,
            self.inner.list(page),
            group = page.group.as_ref().map(GroupName::as_str),
            size = page.size
        )
    }

    async fn count(&self, group: Option<GroupName>) -> Result<u64, StoreError> {
        // The span records the group before the call takes it.
        observed!(
            self,
            StoreOp::AgentCount,
            self.inner.count(group),
            group = group.as_ref().map(GroupName::as_str)
        )
    }
}

/// A [`ComponentRegistry`] that traces, times and logs every operation of the one it wraps.
#[derive(Clone)]
pub struct InstrumentedComponents {
    inner: Arc<dyn ComponentRegistry>,
    backend: &'static str,
}

impl InstrumentedComponents {
    #[must_use]
    pub fn new(inner: Arc<dyn ComponentRegistry>, backend: &'static str) -> Self {
        Self { inner, backend }
    }
}

impl std::fmt::Debug for InstrumentedComponents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrumentedComponents")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ComponentRegistry for InstrumentedComponents {
    async fn register(&self, name: &ComponentName, hash: &KeyHash) -> Result<Upserted, StoreError> {
        observed!(
            self,
            StoreOp::ComponentRegister,
            self.inner.register(name, hash),
            component = %name
        )
    }

    async fn set_key_hash(&self, name: &ComponentName, hash: &KeyHash) -> Result<bool, StoreError> {
        observed!(
            self,
            StoreOp::ComponentSetKeyHash,
            self.inner.set_key_hash(name, hash),
            component = %name
        )
    }

    async fn key_hash(&self, name: &ComponentName) -> Result<Option<KeyHash>, StoreError> {
        observed!(
            self,
            StoreOp::ComponentKeyHash,
            self.inner.key_hash(name),
            component = %name
        )
    }

    async fn list(
        &self,
        after: Option<ComponentName>,
        size: usize,
    ) -> Result<Page<ComponentName, ComponentName>, StoreError> {
        observed!(
            self,
            StoreOp::ComponentList,
            self.inner.list(after, size),
            size
        )
    }

    async fn delete(&self, name: &ComponentName) -> Result<bool, StoreError> {
        observed!(
            self,
            StoreOp::ComponentDelete,
            self.inner.delete(name),
            component = %name
        )
    }
}

/// A [`RequestStore`] that traces, times and logs every operation of the one it wraps.
#[derive(Clone)]
pub struct InstrumentedRequests {
    inner: Arc<dyn RequestStore>,
    backend: &'static str,
}

impl InstrumentedRequests {
    #[must_use]
    pub fn new(inner: Arc<dyn RequestStore>, backend: &'static str) -> Self {
        Self { inner, backend }
    }
}

impl std::fmt::Debug for InstrumentedRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrumentedRequests")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl RequestStore for InstrumentedRequests {
    async fn create(&self, record: &RequestRecord) -> Result<bool, StoreError> {
        observed!(
            self,
            StoreOp::RequestCreate,
            self.inner.create(record),
            request_id = %record.request_id()
        )
    }

    async fn get(&self, id: &RequestId) -> Result<Option<RequestRecord>, StoreError> {
        observed!(
            self,
            StoreOp::RequestGet,
            self.inner.get(id),
            request_id = %id
        )
    }

    async fn replace(
        &self,
        current: &RequestRecord,
        next: &RequestRecord,
    ) -> Result<(), ReplaceError> {
        observed!(
            self,
            StoreOp::RequestReplace,
            self.inner.replace(current, next),
            request_id = %current.request_id(),
            state = next.state().as_str()
        )
    }

    async fn list(
        &self,
        filter: &RequestFilter,
        page: &RequestPageRequest,
    ) -> Result<Page<RequestRecord, RequestCursor>, StoreError> {
        observed!(
            self,
            StoreOp::RequestList,
            self.inner.list(filter, page),
            size = page.size
        )
    }

    async fn unsettled(
        &self,
        after: Option<RequestCursor>,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        observed!(
            self,
            StoreOp::RequestUnsettled,
            self.inner.unsettled(after, limit),
            limit
        )
    }

    async fn purge_settled(&self, cutoff: DateTime<Utc>, limit: usize) -> Result<u64, StoreError> {
        observed!(
            self,
            StoreOp::RequestPurgeSettled,
            self.inner.purge_settled(cutoff, limit),
            limit
        )
    }

    async fn write_whole(
        &self,
        requests: &[WholeRequest],
    ) -> Result<Option<Vec<WholeOutcome>>, StoreError> {
        observed!(
            self,
            StoreOp::RequestWriteWhole,
            self.inner.write_whole(requests),
            requests = requests.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, PoisonError};

    use chrono::TimeZone;
    use cm_domain::{Action, NewOrder, Source, Target, Timeout};
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
    use tracing::Level;
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use uuid::Uuid;

    use super::*;
    use crate::clock::MockClock;
    use crate::metric::Kind;
    use crate::notify::MockNotifier;
    use crate::store::{MockAgentRegistry, MockOrderStore};

    /// A recorder of this thread only, so tests running at once do not see each other's
    /// metrics; `#[tokio::test]` runs the whole test on its thread.
    struct LocalMetrics {
        recorder: PrometheusRecorder,
    }

    impl LocalMetrics {
        fn new() -> Self {
            Self {
                recorder: PrometheusBuilder::new().build_recorder(),
            }
        }

        fn handle(&self) -> PrometheusHandle {
            self.recorder.handle()
        }
    }

    /// The events logged on this thread: their level and `op` field.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<(Level, String)>>>);

    impl Logs {
        fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
            let logs = Self::default();
            let subscriber = tracing_subscriber::registry().with(logs.clone());
            let guard = tracing::subscriber::set_default(subscriber);
            // Callsites first hit by other tests' threads (without this subscriber) may have
            // cached an interest that leaves this one out: have every callsite ask again.
            tracing::callsite::rebuild_interest_cache();
            (logs, guard)
        }

        fn events(&self) -> Vec<(Level, String)> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }
    }

    struct OpField(Option<String>);

    impl Visit for OpField {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "op" {
                self.0 = Some(value.to_owned());
            }
        }

        fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logs {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut op = OpField(None);
            event.record(&mut op);
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((*event.metadata().level(), op.0.unwrap_or_default()));
        }
    }

    /// How many durations `cm_store_operation_seconds` holds for these labels.
    fn timed(text: &str, op: &str, backend: &str, outcome: &str) -> u64 {
        let wanted = [
            format!("op=\"{op}\""),
            format!("backend=\"{backend}\""),
            format!("outcome=\"{outcome}\""),
        ];
        text.lines()
            .filter_map(|l| l.strip_prefix("cm_store_operation_seconds_count{"))
            .filter_map(|l| l.split_once("} "))
            .filter(|(labels, _)| {
                let labels: Vec<&str> = labels.split(',').collect();
                labels.len() == wanted.len() && wanted.iter().all(|w| labels.contains(&w.as_str()))
            })
            .map(|(_, n)| n.trim().parse::<u64>().expect("a count"))
            .sum()
    }

    fn agent_id(id: &str) -> AgentId {
        AgentId::parse(id, "agent").unwrap()
    }

    fn pending(agent: &str) -> Order {
        let id = agent_id(agent);
        let groups = vec![GroupName::parse("Test", "group").unwrap()];
        let action = Action::new("restart", serde_json::json!({}), "v5").unwrap();
        Order::new(NewOrder {
            order_id: OrderId::from_uuid(Uuid::now_v7()),
            request_id: RequestId::from_uuid(Uuid::now_v7()),
            source: Source::UsersServices,
            user: Some("admin"),
            target: Target::agent(&id),
            agent: Some((&id, &groups)),
            action: &action,
            timeout: Timeout::new(100).unwrap(),
            now: t0(),
            not_before: None,
            retry_of: None,
            position: None,
        })
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    #[tokio::test]
    async fn each_operation_is_timed_under_its_op_and_backend_and_its_answer_passes_through() {
        let metrics = LocalMetrics::new();
        let _local = metrics::set_default_local_recorder(&metrics.recorder);
        let order = pending("a1");
        let delivered = order.deliver(t0(), &DeliveryPolicy::default()).unwrap();
        let mut inner = MockOrderStore::new();
        inner
            .expect_insert()
            .withf(|orders| orders.len() == 1)
            .times(2)
            .returning(|_| Ok(3));
        let answer = vec![delivered.clone()];
        inner
            .expect_claim()
            .withf(|set, limit, now, _| {
                *set == Consumers::agent(&agent_id("a1")) && *limit == 5 && *now == t0()
            })
            .times(1)
            .returning(move |_, _, _, _| Ok(answer.clone()));
        let store = InstrumentedOrders::new(Arc::new(inner), "sqlite");

        assert_eq!(store.insert(std::slice::from_ref(&order)).await, Ok(3));
        assert_eq!(store.insert(std::slice::from_ref(&order)).await, Ok(3));
        assert_eq!(
            store
                .claim(
                    &Consumers::agent(&agent_id("a1")),
                    5,
                    t0(),
                    &DeliveryPolicy::default(),
                )
                .await,
            Ok(vec![delivered])
        );

        let text = metrics.handle().render();
        assert_eq!(timed(&text, "insert", "sqlite", "ok"), 2, "{text}");
        assert_eq!(timed(&text, "claim", "sqlite", "ok"), 1, "{text}");
        assert_eq!(timed(&text, "insert", "sqlite", "error"), 0, "{text}");
        assert_eq!(timed(&text, "claim", "postgres", "ok"), 0, "{text}");
    }

    #[tokio::test]
    async fn storage_failures_pass_through_unchanged_and_are_timed_as_errors() {
        let metrics = LocalMetrics::new();
        let _local = metrics::set_default_local_recorder(&metrics.recorder);
        let order = pending("a1");
        let rejected = StoreError::Rejected {
            request_id: *order.request_id(),
            field: "action.args".to_owned(),
            message: "too deep".to_owned(),
        };
        let mut inner = MockOrderStore::new();
        inner
            .expect_get()
            .returning(|_| Err(StoreError::Unavailable("connection refused".to_owned())));
        inner
            .expect_next_due()
            .returning(|_, _| Err(StoreError::Corrupt("bad document".to_owned())));
        let refusal = rejected.clone();
        inner
            .expect_insert()
            .returning(move |_| Err(refusal.clone()));
        let store = InstrumentedOrders::new(Arc::new(inner), "postgres");

        assert_eq!(
            store.get(order.order_id()).await,
            Err(StoreError::Unavailable("connection refused".to_owned()))
        );
        assert_eq!(
            store
                .next_due(&Consumers::agent(&agent_id("a1")), t0())
                .await,
            Err(StoreError::Corrupt("bad document".to_owned()))
        );
        assert_eq!(
            store.insert(std::slice::from_ref(&order)).await,
            Err(rejected)
        );

        let text = metrics.handle().render();
        for op in ["get", "next_due", "insert"] {
            assert_eq!(timed(&text, op, "postgres", "error"), 1, "{op}: {text}");
            assert_eq!(timed(&text, op, "postgres", "ok"), 0, "{op}: {text}");
        }
    }

    #[tokio::test]
    async fn a_lost_compare_and_set_is_an_answer_and_a_storage_failure_is_an_error() {
        let metrics = LocalMetrics::new();
        let _local = metrics::set_default_local_recorder(&metrics.recorder);
        let current = pending("a1");
        let next = current.cancel(t0()).unwrap();
        let mut inner = MockOrderStore::new();
        let mut answers = vec![
            Err(ReplaceError::Store(StoreError::Unavailable(
                "timeout".to_owned(),
            ))),
            Err(ReplaceError::NotFound),
            Err(ReplaceError::Conflict),
        ];
        inner
            .expect_replace()
            .times(3)
            .returning(move |_, _| answers.pop().unwrap());
        let store = InstrumentedOrders::new(Arc::new(inner), "opensearch");

        assert_eq!(
            store.replace(&current, &next).await,
            Err(ReplaceError::Conflict)
        );
        assert_eq!(
            store.replace(&current, &next).await,
            Err(ReplaceError::NotFound)
        );
        assert_eq!(
            store.replace(&current, &next).await,
            Err(ReplaceError::Store(StoreError::Unavailable(
                "timeout".to_owned()
            )))
        );

        let text = metrics.handle().render();
        assert_eq!(timed(&text, "replace", "opensearch", "ok"), 2, "{text}");
        assert_eq!(timed(&text, "replace", "opensearch", "error"), 1, "{text}");
    }

    #[tokio::test]
    async fn registry_operations_are_timed_under_their_agent_op() {
        let metrics = LocalMetrics::new();
        let _local = metrics::set_default_local_recorder(&metrics.recorder);
        let test = GroupName::parse("Test", "group").unwrap();
        let mut inner = MockAgentRegistry::new();
        let expected = Some(test.clone());
        inner
            .expect_count()
            .withf(move |group| *group == expected)
            .returning(|_| Ok(7));
        inner
            .expect_get()
            .returning(|_| Err(StoreError::Unavailable("down".to_owned())));
        let agents = InstrumentedAgents::new(Arc::new(inner), "memory");

        assert_eq!(agents.count(Some(test)).await, Ok(7));
        assert_eq!(
            agents.get(&agent_id("a1")).await,
            Err(StoreError::Unavailable("down".to_owned()))
        );

        let text = metrics.handle().render();
        assert_eq!(timed(&text, "agent_count", "memory", "ok"), 1, "{text}");
        assert_eq!(timed(&text, "agent_get", "memory", "error"), 1, "{text}");
        assert_eq!(timed(&text, "get", "memory", "error"), 0, "{text}");
    }

    #[tokio::test]
    async fn instrumented_ports_label_both_stores_with_the_backend() {
        let metrics = LocalMetrics::new();
        let _local = metrics::set_default_local_recorder(&metrics.recorder);
        let mut orders = MockOrderStore::new();
        orders.expect_ping().times(1).returning(|| Ok(()));
        let mut agents = MockAgentRegistry::new();
        agents.expect_count().times(1).returning(|_| Ok(0));
        let ports = Ports {
            orders: Arc::new(orders),
            agents: Arc::new(agents),
            components: Arc::new(crate::store::MockComponentRegistry::new()),
            requests: Arc::new(crate::store::MockRequestStore::new()),
            notifier: Arc::new(MockNotifier::new()),
            clock: Arc::new(MockClock::new()),
        }
        .instrumented("sqlite");

        assert_eq!(ports.orders.ping().await, Ok(()));
        assert_eq!(ports.agents.count(None).await, Ok(0));

        let text = metrics.handle().render();
        assert_eq!(timed(&text, "ping", "sqlite", "ok"), 1, "{text}");
        assert_eq!(timed(&text, "agent_count", "sqlite", "ok"), 1, "{text}");
    }

    #[test]
    fn every_metric_of_the_crate_renders_with_its_help_text() {
        let metrics = LocalMetrics::new();
        let _local = metrics::set_default_local_recorder(&metrics.recorder);
        metric::describe();
        for m in metric::ALL {
            match m.kind {
                Kind::Counter => metrics::counter!(m.name).increment(1),
                Kind::Gauge => metrics::gauge!(m.name).set(1.0),
                Kind::Histogram => metrics::histogram!(m.name).record(0.5),
            }
        }
        let text = metrics.handle().render();
        for m in metric::ALL {
            assert!(
                text.lines()
                    .any(|l| l == format!("# HELP {} {}", m.name, m.help)),
                "{}: {text}",
                m.name
            );
        }
    }

    #[tokio::test]
    async fn each_failure_is_logged_once_at_the_level_of_its_kind_and_answers_are_not() {
        let (logs, _guard) = Logs::capture();
        let order = pending("a1");
        let next = order.cancel(t0()).unwrap();
        let request_id = *order.request_id();
        let mut inner = MockOrderStore::new();
        inner
            .expect_get()
            .returning(|_| Err(StoreError::Unavailable("connection refused".to_owned())));
        inner
            .expect_next_due()
            .returning(|_, _| Err(StoreError::Corrupt("bad document".to_owned())));
        inner.expect_insert().returning(move |_| {
            Err(StoreError::Rejected {
                request_id,
                field: "action.args".to_owned(),
                message: "too deep".to_owned(),
            })
        });
        inner
            .expect_replace()
            .returning(|_, _| Err(ReplaceError::Conflict));
        inner.expect_ping().returning(|| Ok(()));
        let store = InstrumentedOrders::new(Arc::new(inner), "sqlite");

        let _ = store.get(order.order_id()).await;
        let _ = store
            .next_due(&Consumers::agent(&agent_id("a1")), t0())
            .await;
        let _ = store.insert(std::slice::from_ref(&order)).await;
        let _ = store.replace(&order, &next).await;
        let _ = store.ping().await;

        assert_eq!(
            logs.events(),
            [
                (Level::WARN, "get".to_owned()),
                (Level::ERROR, "next_due".to_owned()),
                (Level::DEBUG, "insert".to_owned()),
            ]
        );
    }
}
