//! Consumers other than an agent polling for itself: server components (their registry, keys
//! and polls) and relays, which claim orders for many agents and components at once and report
//! many results in one call (docs/delivery.md).

use std::time::Duration;

use cm_domain::{ComponentName, Consumer, Order, OrderId, Report};

use super::CommandManager;
use super::agents::Registered;
use super::delivery::{Claimer, ReportError};
use super::orders::MAX_PAGE_SIZE;
use crate::auth::{AgentKey, hash_key, verify_key};
use crate::metric::ResultOutcome;
use crate::store::{Consumers, Page, StoreError, Upserted};

/// Most agents one relay claim may name.
pub const MAX_RELAY_CONSUMERS: usize = 10_000;
/// Most server components one relay claim may name (on top of its agents).
pub const MAX_RELAY_SERVERS: usize = 1_000;
/// Most orders one relay claim may return.
pub const MAX_RELAY_LIMIT: usize = 1_000;
/// Most results one call of `POST /api/v1/results` may carry.
pub const MAX_RESULTS_PER_CALL: usize = 1_000;

/// Who reports a result, and so which orders it may report for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reporter {
    /// Anyone at all: authentication is off, or a manager.
    Anyone,
    /// A relay: it delivers for many consumers and may report for any order.
    Relay,
    /// An agent or a component, for its own orders only.
    Consumer(Consumer),
}

impl Reporter {
    /// Whether this reporter may report for `order`.
    #[must_use]
    pub fn may_report(&self, order: &Order) -> bool {
        match self {
            Self::Anyone | Self::Relay => true,
            Self::Consumer(c) => order.consumer().as_ref() == Some(c),
        }
    }
}

/// One result of a batch: the order it is for and the report.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultItem {
    pub order_id: OrderId,
    pub report: Report,
}

/// What became of one result of a batch, with a message for the outcomes that need one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemOutcome {
    pub outcome: ResultOutcome,
    pub message: Option<String>,
}

impl ItemOutcome {
    /// An item refused before it reached an order (malformed), counted like every outcome.
    #[must_use]
    pub fn invalid(message: String) -> Self {
        ResultOutcome::Invalid.count();
        Self {
            outcome: ResultOutcome::Invalid,
            message: Some(message),
        }
    }
}

impl CommandManager {
    /// Registers a server component. A new one gets a key, shown once (only its hash is
    /// stored); an existing one keeps its key and gets none.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails or there is no randomness (nothing is written then).
    pub async fn put_component(&self, name: &ComponentName) -> Result<Registered, StoreError> {
        let key = AgentKey::generate()?;
        let upserted = self.ports.components.register(name, &key.hash()).await?;
        Ok(Registered {
            upserted,
            key: (upserted == Upserted::Created).then_some(key),
        })
    }

    /// Issues a new key for a component, replacing the old one at once. `None` when the
    /// component is not registered.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails or there is no randomness.
    pub async fn rotate_component_key(
        &self,
        name: &ComponentName,
    ) -> Result<Option<AgentKey>, StoreError> {
        let key = AgentKey::generate()?;
        let stored = self
            .ports
            .components
            .set_key_hash(name, &key.hash())
            .await?;
        Ok(stored.then_some(key))
    }

    /// Whether `presented` is the component's key, compared in constant time; an unknown
    /// component costs the same hashing as a known one.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    pub async fn authenticate_component(
        &self,
        name: &ComponentName,
        presented: &str,
    ) -> Result<bool, StoreError> {
        match self.ports.components.key_hash(name).await? {
            Some(stored) => Ok(verify_key(presented, &stored)),
            None => {
                let _ = verify_key(presented, &hash_key(""));
                Ok(false)
            }
        }
    }

    /// One page of registered components, by name; the page size is capped at 1000.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    pub async fn components(
        &self,
        size: usize,
        after: Option<ComponentName>,
    ) -> Result<Page<ComponentName, ComponentName>, StoreError> {
        self.ports
            .components
            .list(after, size.clamp(1, MAX_PAGE_SIZE))
            .await
    }

    /// Removes a component and its key; its orders stay. `false` when it was not registered.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    pub async fn delete_component(&self, name: &ComponentName) -> Result<bool, StoreError> {
        self.ports.components.delete(name).await
    }

    /// A relay's claim: up to `limit` (at most [`MAX_RELAY_LIMIT`]) deliverable orders of any
    /// of `consumers`, oldest first, marked `sent` exactly as their own polls would. With none,
    /// waits like a poll (up to `wait`, bounded by `max_poll_wait`), woken by an order for any
    /// of them. The caller bounds `consumers` to [`MAX_RELAY_CONSUMERS`].
    ///
    /// # Errors
    /// [`StoreError`] when storage fails; no order was marked `sent` by the failed attempt.
    #[tracing::instrument(skip(self, consumers), fields(consumers = consumers.len()))]
    pub async fn relay_claim(
        &self,
        consumers: &Consumers,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Order>, StoreError> {
        if consumers.is_empty() {
            return Ok(Vec::new());
        }
        let limit = limit.clamp(1, MAX_RELAY_LIMIT);
        self.claim_waiting(consumers, limit, wait, Claimer::Relay)
            .await
    }

    /// Applies one result of a batch like `report` and says what became of it; one item's
    /// refusal is its outcome, never an error of the batch.
    ///
    /// # Errors
    /// [`StoreError`] only when storage fails (the batch stops there; the items before it
    /// stay applied, and repeating them answers `already_applied`).
    pub async fn report_item(
        &self,
        item: &ResultItem,
        reporter: &Reporter,
    ) -> Result<ItemOutcome, StoreError> {
        let (outcome, message) = match self
            .report_once(&item.order_id, &item.report, reporter)
            .await
        {
            Ok((_, true)) => (ResultOutcome::Applied, None),
            Ok((_, false)) => (ResultOutcome::AlreadyApplied, None),
            Err(ReportError::NotFound) => (ResultOutcome::NotFound, None),
            Err(e @ ReportError::NotYours) => (ResultOutcome::Forbidden, Some(e.to_string())),
            Err(e @ ReportError::Conflict(_)) => (ResultOutcome::Conflict, Some(e.to_string())),
            Err(ReportError::Unavailable(e)) => return Err(e),
        };
        Ok(ItemOutcome { outcome, message })
    }
}
