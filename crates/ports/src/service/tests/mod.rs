//! Unit tests of the use cases over mockall doubles of every port: each test states which port
//! calls a use case must make (and must not make) and what it answers to each port's failure.

mod agents;
mod delivery;
mod maintenance;
mod orders;
mod requests;
mod submit;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use cm_domain::{
    Action, Agent, AgentId, Command, DeliveryPolicy, GroupName, NewOrder, Order, OrderId,
    RequestId, RequestRecord, Source, Target, TargetType, Timeout,
};
use serde_json::json;
use uuid::Uuid;

use crate::clock::MockClock;
use crate::notify::MockNotifier;
use crate::store::{
    MockAgentRegistry, MockOrderStore, Page, ReplaceError, RequestCursor, RequestFilter,
    RequestPageRequest, RequestStore, StoreError,
};
use crate::{CommandManager, Ports, Reporter, Settings};

/// One double per port. `new` gives a clock fixed at [`t0`] and nothing else: any call a test
/// did not expect fails it.
struct Doubles {
    orders: MockOrderStore,
    agents: MockAgentRegistry,
    requests: FakeRequests,
    notifier: MockNotifier,
    clock: MockClock,
}

/// The request records as a plain map: the use cases' own bookkeeping, which these tests do
/// not constrain call by call (the conformance suite covers the records).
#[derive(Debug, Default, Clone)]
struct FakeRequests(Arc<Mutex<std::collections::HashMap<RequestId, RequestRecord>>>);

impl FakeRequests {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<RequestId, RequestRecord>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl RequestStore for FakeRequests {
    async fn create(&self, record: &RequestRecord) -> Result<bool, StoreError> {
        let mut m = self.lock();
        if m.contains_key(record.request_id()) {
            return Ok(false);
        }
        m.insert(*record.request_id(), record.clone());
        Ok(true)
    }

    async fn get(&self, id: &RequestId) -> Result<Option<RequestRecord>, StoreError> {
        Ok(self.lock().get(id).cloned())
    }

    async fn replace(
        &self,
        current: &RequestRecord,
        next: &RequestRecord,
    ) -> Result<(), ReplaceError> {
        let mut m = self.lock();
        match m.get(current.request_id()) {
            None => Err(ReplaceError::NotFound),
            Some(s) if s.revision() != current.revision() => Err(ReplaceError::Conflict),
            Some(_) => {
                m.insert(*next.request_id(), next.clone());
                Ok(())
            }
        }
    }

    async fn list(
        &self,
        _: &RequestFilter,
        _: &RequestPageRequest,
    ) -> Result<Page<RequestRecord, RequestCursor>, StoreError> {
        Ok(Page {
            items: Vec::new(),
            next: None,
        })
    }

    async fn unsettled(
        &self,
        _: Option<RequestCursor>,
        _: usize,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        Ok(Vec::new())
    }

    async fn purge_settled(&self, _: DateTime<Utc>, _: usize) -> Result<u64, StoreError> {
        Ok(0)
    }
}

impl Doubles {
    fn new() -> Self {
        let mut clock = MockClock::new();
        clock.expect_now().return_const(t0());
        let mut orders = MockOrderStore::new();
        // The configured batch, as every backend but OpenSearch answers.
        orders
            .expect_sweep_batch()
            .returning(|configured| configured);
        Self {
            orders,
            agents: MockAgentRegistry::new(),
            requests: FakeRequests::default(),
            notifier: MockNotifier::new(),
            clock,
        }
    }

    fn manager(self, settings: Settings) -> CommandManager {
        CommandManager::new(
            Ports {
                orders: Arc::new(self.orders),
                agents: Arc::new(self.agents),
                components: Arc::new(crate::store::MockComponentRegistry::new()),
                requests: Arc::new(self.requests),
                notifier: Arc::new(self.notifier),
                clock: Arc::new(self.clock),
            },
            settings,
        )
    }
}

/// Arguments a double was called with, in call order.
#[derive(Debug)]
struct Calls<T>(Arc<Mutex<Vec<T>>>);

impl<T> Clone for Calls<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: Clone> Calls<T> {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(Vec::new())))
    }

    fn push(&self, call: T) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
    }

    fn all(&self) -> Vec<T> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(secs)
}

fn agent_id(id: &str) -> AgentId {
    AgentId::parse(id, "agent").unwrap()
}

fn group(name: &str) -> GroupName {
    GroupName::parse(name, "group").unwrap()
}

fn agent(id: &str, groups: &[&str]) -> Agent {
    Agent::new(agent_id(id), groups.iter().map(|g| group(g)).collect())
}

fn policy() -> DeliveryPolicy {
    DeliveryPolicy {
        redeliver_after: Some(chrono::Duration::seconds(60)),
        result_timeout: Some(chrono::Duration::seconds(600)),
    }
}

/// A pending order for `agent`, created at [`t0`], timeout 100 s.
fn pending(agent: &str) -> Order {
    let id = agent_id(agent);
    let groups = vec![group("Test")];
    let action = Action::new("restart", json!({}), "v5").unwrap();
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

/// `order` as delivered to its agent at `secs`.
fn delivered(order: &Order, secs: i64) -> Order {
    order.deliver(at(secs), &policy()).unwrap()
}

fn command(kind: TargetType, id: &str) -> Command {
    Command::new(
        Source::UsersServices,
        Some("admin".to_owned()),
        Target::new(kind, id).unwrap(),
        Action::new("restart", json!({}), "v5").unwrap(),
        Timeout::new(100).unwrap(),
    )
    .unwrap()
}

const SECOND: Duration = Duration::from_secs(1);

/// The drivers spawn the use cases on a multi-threaded runtime (axum handlers, the scheduler),
/// so every use case's future must be `Send`. A non-`Send` future fails this at compile time.
#[test]
fn every_use_case_future_can_be_spawned_on_a_multi_threaded_runtime() {
    fn spawnable<F: Future + Send + 'static>(_: F) {}
    let m = Doubles::new().manager(Settings::default());
    let agent = agent_id("a1");
    let id = OrderId::from_uuid(Uuid::now_v7());
    let report = cm_domain::Report::new(cm_domain::ReportStatus::Success, 0, "", "").unwrap();
    let request = crate::SubmitRequest {
        commands: vec![command(TargetType::Server, "indexer")],
        idempotency: None,
    };
    // The futures are only built, never polled: no port is called.
    {
        let m = m.clone();
        spawnable(async move { m.submit(request).await });
    }
    {
        let m = m.clone();
        spawnable(async move { m.poll(&agent, 1, Duration::ZERO).await });
    }
    {
        let m = m.clone();
        spawnable(async move { m.report(&id, &report, &Reporter::Anyone).await });
    }
    {
        let m = m.clone();
        spawnable(async move { m.cancel(&id).await });
    }
    {
        let m = m.clone();
        spawnable(async move { m.progress(&RequestId::from_uuid(Uuid::nil())).await });
    }
    {
        let m = m.clone();
        spawnable(async move { m.cancel_request(&RequestId::from_uuid(Uuid::nil())).await });
    }
    {
        let m = m.clone();
        spawnable(async move {
            m.retry_request(
                &RequestId::from_uuid(Uuid::nil()),
                cm_domain::Status::Failure,
            )
            .await
        });
    }
    {
        let m = m.clone();
        spawnable(async move {
            m.request_orders(&RequestId::from_uuid(Uuid::nil()), None, 10, None)
                .await
        });
    }
    {
        let m = m.clone();
        spawnable(async move { m.expire_overdue().await });
    }
    {
        let m = m.clone();
        spawnable(async move { m.give_up_unreported().await });
    }
    {
        let m = m.clone();
        spawnable(async move { m.apply_retention().await });
    }
    {
        let m = m.clone();
        spawnable(async move { m.put_agent(&self::agent("a1", &[])).await });
    }
    {
        let m = m.clone();
        spawnable(async move { m.rotate_agent_key(&agent_id("a1")).await });
    }
    spawnable(async move { m.authenticate_agent(&agent_id("a1"), "key").await });
}
