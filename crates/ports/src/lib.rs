//! The ports of the command manager and the use cases over them.
//!
//! * [`store`]: [`OrderStore`] (the durable orders stream), [`RequestStore`] (the request
//!   records), [`AgentRegistry`] and [`ComponentRegistry`];
//! * [`notify`]: [`Notifier`], which wakes long-polls, and [`WakeHub`], its in-process half;
//! * [`clock`]: [`Clock`] and the id sources;
//! * [`auth`]: agents' keys ([`AgentKey`]) and constant-time comparison of secrets;
//! * [`service`]: [`CommandManager`], the use cases the drivers call;
//! * [`instrumented`]: the decorators that give every backend the same spans and latency
//!   histogram ([`Ports::instrumented`]);
//! * [`metric`]: the names, HELP texts and label values of this crate's metrics;
//! * `testkit` (feature): the conformance suite every adapter runs, and test doubles.

pub mod auth;
pub mod clock;
pub mod instrumented;
pub mod metric;
pub mod notify;
pub mod service;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use auth::{AgentKey, NoRandomness};
pub use clock::{Clock, FreshIds, SystemClock};
pub use instrumented::{
    InstrumentedAgents, InstrumentedComponents, InstrumentedOrders, InstrumentedRequests,
};
pub use notify::{LocalNotifier, Notifier, Subscription, WakeHub};
pub use service::{
    BulkRegistered, CancelError, CommandManager, DryRunPlan, Idempotency, ItemOutcome,
    MAX_BULK_AGENTS, MAX_PAGE_SIZE, MAX_RELAY_CONSUMERS, MAX_RELAY_LIMIT, MAX_RELAY_SERVERS,
    MAX_RESULTS_PER_CALL, Ports, Registered, ReportError, Reporter, RequestError, RequestView,
    ResultItem, RetryError, Settings, SubmitError, SubmitRequest, SubmittedRequest,
};
pub use store::{
    AgentPageRequest, AgentRegistry, Batch, ComponentRegistry, Consumers, OrderCursor, OrderFilter,
    OrderPageRequest, OrderStore, Page, ReplaceError, RequestCursor, RequestFilter,
    RequestPageRequest, RequestStore, ResultGroup, RetentionMode, StatusCounts, StoreError,
    Upserted, WholeOutcome, WholeRequest,
};
