//! What the scheduler tests share: a service over the in-memory adapter with a manual clock, a
//! store wrapper that counts and slows down maintenance calls, and recorders for logs and
//! metrics.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own part of this module

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cm_adapter_memory::{MemoryAgents, MemoryOrders};
use cm_domain::{DeliveryPolicy, Order, OrderId, RequestId};
use cm_ports::testkit::{ManualClock, t0};
use cm_ports::{
    Batch, CommandManager, LocalNotifier, OrderCursor, OrderFilter, OrderPageRequest, OrderStore,
    Page, Ports, ReplaceError, RetentionMode, Settings, StatusCounts, StoreError,
};
use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt as _};

/// A service over `orders` (and an in-memory agents registry) whose clock only moves when told.
pub fn service(
    orders: Arc<dyn OrderStore>,
    settings: Settings,
) -> (CommandManager, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let manager = CommandManager::new(
        Ports {
            orders,
            agents: Arc::new(MemoryAgents::new()),
            components: Arc::new(cm_adapter_memory::MemoryComponents::new()),
            requests: Arc::new(cm_adapter_memory::MemoryRequests::default()),
            notifier: Arc::new(LocalNotifier::new()),
            clock: Arc::clone(&clock) as _,
        },
        settings,
    );
    (manager, clock)
}

/// Lets spawned tasks run until they wait on something (the paused clock moves by 1 ms).
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// A shutdown signal for `Scheduler::run` and the switch that fires it.
pub fn shutdown_signal() -> (
    tokio::sync::oneshot::Sender<()>,
    impl Future<Output = ()> + Send,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

/// The in-memory orders stream, counting the maintenance calls and optionally taking `delay`
/// (tokio time) over each expiry batch, like a slow backend.
#[derive(Debug, Default)]
pub struct Instrumented {
    pub inner: MemoryOrders,
    pub expiry_delay: Option<Duration>,
    pub expire_calls: AtomicUsize,
    pub purge_calls: AtomicUsize,
}

impl Instrumented {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn slow(expiry_delay: Duration) -> Self {
        Self {
            expiry_delay: Some(expiry_delay),
            ..Self::default()
        }
    }

    pub fn expire_calls(&self) -> usize {
        self.expire_calls.load(Ordering::SeqCst)
    }

    pub fn purge_calls(&self) -> usize {
        self.purge_calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl OrderStore for Instrumented {
    async fn insert(&self, orders: &[Order]) -> Result<u64, StoreError> {
        self.inner.insert(orders).await
    }

    async fn get(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        self.inner.get(id).await
    }

    async fn query(
        &self,
        filter: &OrderFilter,
        page: &OrderPageRequest,
    ) -> Result<Page<Order, OrderCursor>, StoreError> {
        self.inner.query(filter, page).await
    }

    async fn claim(
        &self,
        agent: &cm_ports::Consumers,
        limit: usize,
        now: DateTime<Utc>,
        policy: &DeliveryPolicy,
    ) -> Result<Vec<Order>, StoreError> {
        self.inner.claim(agent, limit, now, policy).await
    }

    async fn replace(&self, current: &Order, next: &Order) -> Result<(), ReplaceError> {
        self.inner.replace(current, next).await
    }

    async fn next_due(
        &self,
        agent: &cm_ports::Consumers,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.inner.next_due(agent, now).await
    }

    async fn end_pending(
        &self,
        request: &RequestId,
        end: cm_domain::PendingEnd,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        self.inner.end_pending(request, end, now, limit).await
    }

    async fn release_held(
        &self,
        request: &RequestId,
        below: u64,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Order>, StoreError> {
        self.inner.release_held(request, below, now, limit).await
    }

    async fn result_groups(
        &self,
        request: &RequestId,
    ) -> Result<Vec<cm_ports::ResultGroup>, StoreError> {
        self.inner.result_groups(request).await
    }

    async fn expire_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Batch, StoreError> {
        self.expire_calls.fetch_add(1, Ordering::SeqCst);
        if let Some(delay) = self.expiry_delay {
            tokio::time::sleep(delay).await;
        }
        self.inner.expire_due(now, limit).await
    }

    async fn give_up_unreported(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        self.inner.give_up_unreported(now, limit).await
    }

    async fn purge_finished(
        &self,
        cutoff: DateTime<Utc>,
        mode: RetentionMode,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        self.purge_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.purge_finished(cutoff, mode, limit).await
    }

    async fn get_archived(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        self.inner.get_archived(id).await
    }

    async fn progress(&self, request: &RequestId) -> Result<StatusCounts, StoreError> {
        self.inner.progress(request).await
    }

    async fn delete_request(&self, request: &RequestId) -> Result<u64, StoreError> {
        self.inner.delete_request(request).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

// ---- logs ------------------------------------------------------------------------------------

/// One log event: its level and its fields (`message` included), rendered as text.
#[derive(Debug, Clone)]
pub struct LogEvent {
    pub level: tracing::Level,
    pub fields: BTreeMap<String, String>,
}

impl LogEvent {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Collects the events logged on this thread while its guard lives.
#[derive(Debug, Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<LogEvent>>>);

impl Logs {
    /// Starts collecting on this thread (a current-thread runtime runs every task here).
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let subscriber = tracing_subscriber::registry().with(logs.clone());
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub fn events(&self) -> Vec<LogEvent> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

struct FieldsVisitor<'a>(&'a mut BTreeMap<String, String>);

impl Visit for FieldsVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.0.insert(field.name().to_owned(), text);
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logs {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut FieldsVisitor(&mut fields));
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(LogEvent {
                level: *event.metadata().level(),
                fields,
            });
    }
}

// ---- metrics ---------------------------------------------------------------------------------

/// A metrics recorder that keeps counter totals and histogram sample counts by
/// `name{label=value,...}`.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Mutex<BTreeMap<String, f64>>>);

impl Metrics {
    /// The value of a counter, or the number of samples of a histogram (0 when never touched).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = render(name, labels.iter().map(|(k, v)| (*k, *v)));
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied()
            .unwrap_or(0.0)
    }

    fn handle(&self, key: &Key) -> Arc<Handle> {
        Arc::new(Handle {
            key: render(key.name(), key.labels().map(|l| (l.key(), l.value()))),
            values: Arc::clone(&self.0),
        })
    }
}

fn render<'a>(name: &str, labels: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut labels: Vec<String> = labels.map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

struct Handle {
    key: String,
    values: Arc<Mutex<BTreeMap<String, f64>>>,
}

impl Handle {
    fn add(&self, n: f64) {
        *self
            .values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(self.key.clone())
            .or_default() += n;
    }
}

impl CounterFn for Handle {
    #[allow(clippy::cast_precision_loss)]
    fn increment(&self, value: u64) {
        self.add(value as f64);
    }

    fn absolute(&self, _value: u64) {}
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.add(value);
    }

    fn decrement(&self, value: f64) {
        self.add(-value);
    }

    fn set(&self, _value: f64) {}
}

impl HistogramFn for Handle {
    fn record(&self, _value: f64) {
        self.add(1.0);
    }
}

impl metrics::Recorder for Metrics {
    fn describe_counter(&self, _: KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}

    fn describe_gauge(&self, _: KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}

    fn describe_histogram(&self, _: KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}

    fn register_counter(&self, key: &Key, _: &metrics::Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }

    fn register_gauge(&self, key: &Key, _: &metrics::Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }

    fn register_histogram(&self, key: &Key, _: &metrics::Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key))
    }
}
