//! The use cases: what the drivers (HTTP API, scheduler) call. Each orchestrates domain rules
//! over the ports and has its own error type with the variants its callers act on.

mod agents;
mod cas;
mod consumers;
mod delivery;
mod group;
mod maintenance;
mod orders;
mod records;
mod requests;
mod submit;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use cm_domain::DeliveryPolicy;

pub use self::agents::{BulkRegistered, MAX_BULK_AGENTS, Registered};
pub use self::consumers::{
    ItemOutcome, MAX_RELAY_CONSUMERS, MAX_RELAY_LIMIT, MAX_RELAY_SERVERS, MAX_RESULTS_PER_CALL,
    Reporter, ResultItem,
};
pub use self::delivery::ReportError;
pub use self::orders::{CancelError, MAX_PAGE_SIZE};
pub use self::records::{RequestError, RequestView};
pub use self::requests::RetryError;
pub use self::submit::{DryRunPlan, Idempotency, SubmitError, SubmitRequest, SubmittedRequest};
use crate::clock::Clock;
use crate::notify::Notifier;
use crate::store::{AgentRegistry, ComponentRegistry, OrderStore, RequestStore, RetentionMode};

/// The limits and policies the use cases apply. Every field has a safe default, and
/// [`Settings::default`] is the one place those defaults are written: the service's
/// configuration derives its own from it (docs/configuration.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Most commands one submit may carry.
    pub max_commands: usize,
    /// Most orders one submit may expand into, over all its commands.
    pub max_orders_per_request: u64,
    /// How far ahead of now a command's `schedule.start_at` may lie (docs/rollout.md).
    pub max_schedule_ahead: Duration,
    /// Orders written to storage per insert call while expanding.
    pub write_batch: usize,
    /// Agents read from the registry per page while expanding a group.
    pub expansion_page: usize,
    /// Redelivery and result timeout.
    pub delivery: DeliveryPolicy,
    /// Longest a poll may wait for orders; the HTTP API refuses a longer `wait` (docs/api.md).
    pub max_poll_wait: Duration,
    /// Most orders one poll may return; the HTTP API refuses a larger `limit`.
    pub max_poll_limit: usize,
    /// Orders changed per storage call by the maintenance jobs.
    pub maintenance_batch: usize,
    /// Finished orders older than this are deleted or archived; `None` keeps them forever.
    pub retention: Option<Duration>,
    pub retention_mode: RetentionMode,
    /// A request held (paused, or waiting for a concurrency slot) longer than this is stopped
    /// (`held too long`).
    pub max_hold: Duration,
    /// A submit whose request record is still `writing` this long after its last change is
    /// taken for dead: its orders are removed and the request ends `aborted`.
    pub writing_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_commands: 100,
            max_orders_per_request: 200_000,
            max_schedule_ahead: Duration::from_secs(30 * 24 * 3600),
            write_batch: 2_000,
            expansion_page: 1_000,
            delivery: DeliveryPolicy::default(),
            max_poll_wait: Duration::from_secs(60),
            max_poll_limit: 100,
            maintenance_batch: 1_000,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_mode: RetentionMode::Delete,
            max_hold: Duration::from_secs(7 * 24 * 3600),
            writing_grace: Duration::from_secs(600),
        }
    }
}

/// The ports one service instance works with.
#[derive(Clone)]
pub struct Ports {
    pub orders: Arc<dyn OrderStore>,
    pub agents: Arc<dyn AgentRegistry>,
    pub components: Arc<dyn ComponentRegistry>,
    /// The request records; the same backend as `orders` (its claims consult them).
    pub requests: Arc<dyn RequestStore>,
    pub notifier: Arc<dyn Notifier>,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports").finish_non_exhaustive()
    }
}

/// The command manager's use cases, over one set of ports. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CommandManager {
    ports: Ports,
    settings: Arc<Settings>,
    advancing: records::Advancing,
    /// Where the scheduler's next pass over unsettled requests starts.
    requests_cursor: Arc<std::sync::Mutex<Option<crate::store::RequestCursor>>>,
    /// Concurrent submits written together.
    group: Arc<group::GroupCommit>,
}

impl CommandManager {
    #[must_use]
    pub fn new(ports: Ports, settings: Settings) -> Self {
        Self {
            ports,
            settings: Arc::new(settings),
            advancing: records::Advancing::default(),
            requests_cursor: Arc::default(),
            group: Arc::default(),
        }
    }

    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Succeeds when storage is reachable (`/readyz`).
    ///
    /// # Errors
    /// The [`crate::StoreError`] of the failed check.
    pub async fn ready(&self) -> Result<(), crate::StoreError> {
        self.ports.orders.ping().await
    }
}
