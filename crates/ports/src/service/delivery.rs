//! Delivery: agents long-poll their orders and report results.

use std::time::Duration;

use cm_domain::{AgentId, Order, OrderId, Report, ReportOutcome, ReportStatus, Status};
use tokio::time::Instant;

use super::CommandManager;
use super::cas::Changed;
use crate::metric::{self, Via, count_transition};
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("no such order")]
    NotFound,
    /// The reporting agent is not the order's agent (403).
    #[error("the order belongs to another agent")]
    NotYours,
    /// The order is not in a state that takes this report (409).
    #[error("order is {0}: it does not take this report")]
    Conflict(Status),
    #[error(transparent)]
    Unavailable(#[from] StoreError),
}

/// Decrements the open long-polls gauge however the poll ends (including when the client
/// goes away and the future is dropped).
struct OpenPoll;

impl OpenPoll {
    fn start() -> Self {
        metrics::gauge!(metric::OPEN_LONG_POLLS.name).increment(1.0);
        Self
    }
}

impl Drop for OpenPoll {
    fn drop(&mut self) {
        metrics::gauge!(metric::OPEN_LONG_POLLS.name).decrement(1.0);
    }
}

impl CommandManager {
    /// Hands `agent` up to `limit` of its deliverable orders, marking them `sent`. When there
    /// are none, waits up to `wait` (bounded by `max_poll_wait`) and returns as soon as a
    /// notification for the agent brings some, or one of its orders becomes due by itself (a
    /// scheduled start, a redelivery); returns empty when the wait ends.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails; no order was marked `sent` by the failed attempt.
    #[tracing::instrument(skip(self), fields(agent = %agent))]
    pub async fn poll(
        &self,
        agent: &AgentId,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Order>, StoreError> {
        // `.max(1)`: a `max_poll_limit` of 0 would make `clamp` panic.
        let limit = limit.clamp(1, self.settings.max_poll_limit.max(1));
        let deadline = Instant::now() + wait.min(self.settings.max_poll_wait);
        // Subscribe before looking, so an order created between the look and the wait still
        // wakes us.
        let mut subscription = self.ports.notifier.subscribe(agent);
        let mut open = None;
        loop {
            let orders = self
                .ports
                .orders
                .claim(
                    agent,
                    limit,
                    self.ports.clock.now(),
                    &self.settings.delivery,
                )
                .await?;
            if !orders.is_empty() {
                let redelivered = orders.iter().filter(|o| o.deliveries() > 1).count() as u64;
                count_transition(
                    Status::Sent,
                    Via::Delivered,
                    orders.len() as u64 - redelivered,
                );
                count_transition(Status::Sent, Via::Redelivered, redelivered);
                return Ok(orders);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut wake_at = self
                .ports
                .notifier
                .recheck_interval()
                .map_or(deadline, |every| deadline.min(now + every));
            // A scheduled order (or a redelivery) that becomes due during the wait wakes us
            // without any notification.
            let clock_now = self.ports.clock.now();
            if let Some(due) = self.ports.orders.next_due(agent, clock_now).await? {
                let until = (due - clock_now).to_std().unwrap_or_default();
                wake_at = wake_at.min(now + until);
            }
            open.get_or_insert_with(OpenPoll::start);
            tokio::select! {
                () = subscription.notified() => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    /// Records an agent's report on one of its orders. `reporter`, when given, must be the
    /// order's agent. Repeating the report the order already carries succeeds and changes
    /// nothing.
    ///
    /// # Errors
    /// [`ReportError`].
    #[tracing::instrument(skip(self, report), fields(order = %id))]
    pub async fn report(
        &self,
        id: &OrderId,
        report: &Report,
        reporter: Option<&AgentId>,
    ) -> Result<Order, ReportError> {
        let changed = self
            .change_order(id, |current| {
                if reporter.is_some_and(|r| current.agent_id() != Some(r)) {
                    return Err(ReportError::NotYours);
                }
                match current.report(report, self.ports.clock.now()) {
                    Ok(ReportOutcome::AlreadyApplied) => Ok(None),
                    Ok(ReportOutcome::Applied(next)) => Ok(Some(next)),
                    Err(e) => Err(ReportError::Conflict(e.status)),
                }
            })
            .await?;
        match changed {
            Changed::Written(next) => {
                let via = match report.status() {
                    ReportStatus::InProgress => Via::Progress,
                    ReportStatus::Success | ReportStatus::Failure => Via::Reported,
                };
                count_transition(next.status(), via, 1);
                Ok(next)
            }
            Changed::Unchanged(current) => Ok(current),
            Changed::NotFound => Err(ReportError::NotFound),
            Changed::Contended => {
                // The order kept changing under us; report what it is now.
                let current = self
                    .ports
                    .orders
                    .get(id)
                    .await?
                    .ok_or(ReportError::NotFound)?;
                Err(ReportError::Conflict(current.status()))
            }
        }
    }
}
