//! Delivery: agents long-poll their orders and report results.

use std::time::Duration;

use cm_domain::{
    AgentId, ComponentName, Order, OrderId, Report, ReportOutcome, ReportStatus, Status,
};
use tokio::time::Instant;

use super::CommandManager;
use super::cas::Changed;
use super::consumers::Reporter;
use crate::metric::{self, Metric, ResultOutcome, Via, count_transition};
use crate::store::{Consumers, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("no such order")]
    NotFound,
    /// The reporting agent or component is not the order's consumer (403).
    #[error("the order belongs to another consumer")]
    NotYours,
    /// The order is not in a state that takes this report (409).
    #[error("order is {0}: it does not take this report")]
    Conflict(Status),
    #[error(transparent)]
    Unavailable(#[from] StoreError),
}

/// Decrements an open-waits gauge ([`metric::OPEN_LONG_POLLS`], [`metric::OPEN_RELAY_CLAIMS`])
/// however the wait ends (including when the client goes away and the future is dropped).
struct OpenPoll(&'static Metric);

impl OpenPoll {
    fn start(gauge: &'static Metric) -> Self {
        metrics::gauge!(gauge.name).increment(1.0);
        Self(gauge)
    }
}

impl Drop for OpenPoll {
    fn drop(&mut self) {
        metrics::gauge!(self.0.name).decrement(1.0);
    }
}

/// Who is claiming: a consumer for itself, or a relay for many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claimer {
    Poll,
    Relay,
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
        self.claim_waiting(&Consumers::agent(agent), limit, wait, Claimer::Poll)
            .await
    }

    /// [`Self::poll`] for a server component: the orders of `server` targets naming it.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails; no order was marked `sent` by the failed attempt.
    #[tracing::instrument(skip(self), fields(component = %component))]
    pub async fn poll_component(
        &self,
        component: &ComponentName,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Order>, StoreError> {
        let limit = limit.clamp(1, self.settings.max_poll_limit.max(1));
        self.claim_waiting(&Consumers::component(component), limit, wait, Claimer::Poll)
            .await
    }

    /// Subscribes to the wake-ups of `consumers`, then claims up to `limit` of their orders;
    /// with none, waits (up to `wait`, bounded by `max_poll_wait`) for a notification, for one
    /// of their orders to become due by itself, or for the notifier's re-check, and claims
    /// again.
    pub(super) async fn claim_waiting(
        &self,
        consumers: &Consumers,
        limit: usize,
        wait: Duration,
        by: Claimer,
    ) -> Result<Vec<Order>, StoreError> {
        let deadline = Instant::now() + wait.min(self.settings.max_poll_wait);
        // Subscribe before looking, so an order created between the look and the wait still
        // wakes us.
        let mut subscription = self.ports.notifier.subscribe(consumers);
        let mut open = None;
        loop {
            let orders = self
                .ports
                .orders
                .claim(
                    consumers,
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
                if by == Claimer::Relay {
                    metrics::counter!(metric::ORDERS_CLAIMED_BY_RELAYS.name)
                        .increment(orders.len() as u64);
                }
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
            if let Some(due) = self.ports.orders.next_due(consumers, clock_now).await? {
                let until = (due - clock_now).to_std().unwrap_or_default();
                wake_at = wake_at.min(now + until);
            }
            open.get_or_insert_with(|| {
                OpenPoll::start(match by {
                    Claimer::Poll => &metric::OPEN_LONG_POLLS,
                    Claimer::Relay => &metric::OPEN_RELAY_CLAIMS,
                })
            });
            tokio::select! {
                () = subscription.notified() => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    /// Records a report on one order. The `reporter` must be allowed to report for the order
    /// (`Reporter::may_report`: a consumer for its own orders only). Repeating the report the
    /// order already carries succeeds and changes nothing.
    ///
    /// # Errors
    /// [`ReportError`].
    pub async fn report(
        &self,
        id: &OrderId,
        report: &Report,
        reporter: &Reporter,
    ) -> Result<Order, ReportError> {
        self.report_once(id, report, reporter)
            .await
            .map(|(order, _)| order)
    }

    /// [`Self::report`], also saying whether the report changed the order (`false`: it already
    /// carried it); counts the result in [`metric::RESULTS`].
    pub(super) async fn report_once(
        &self,
        id: &OrderId,
        report: &Report,
        reporter: &Reporter,
    ) -> Result<(Order, bool), ReportError> {
        let result = self.apply_report(id, report, reporter).await;
        let outcome = match &result {
            Ok((_, true)) => Some(ResultOutcome::Applied),
            Ok((_, false)) => Some(ResultOutcome::AlreadyApplied),
            Err(ReportError::NotFound) => Some(ResultOutcome::NotFound),
            Err(ReportError::NotYours) => Some(ResultOutcome::Forbidden),
            Err(ReportError::Conflict(_)) => Some(ResultOutcome::Conflict),
            Err(ReportError::Unavailable(_)) => None,
        };
        if let Some(o) = outcome {
            o.count();
        }
        result
    }

    #[tracing::instrument(skip(self, report), fields(order = %id))]
    async fn apply_report(
        &self,
        id: &OrderId,
        report: &Report,
        reporter: &Reporter,
    ) -> Result<(Order, bool), ReportError> {
        let changed = self
            .change_order(id, |current| {
                if !reporter.may_report(current) {
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
                if next.status().is_terminal() && next.position().is_some() {
                    // Rate control: a slot freed up, or the error budget moved; act promptly
                    // rather than at the scheduler's next pass (which would, too).
                    if let Err(e) = self.advance_request(next.request_id()).await {
                        tracing::warn!(request = %next.request_id(), error = %e, "could not move the request along after a result; the scheduler will");
                    }
                }
                Ok((next, true))
            }
            Changed::Unchanged(current) => Ok((current, false)),
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
