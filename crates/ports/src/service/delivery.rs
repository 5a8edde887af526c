//! Delivery: agents long-poll their orders and report results.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cm_domain::{
    AgentId, ComponentName, Order, OrderId, Report, ReportOutcome, ReportStatus, Status,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::CommandManager;
use super::cas::Changed;
use super::consumers::Reporter;
use crate::metric::{self, Metric, ResultOutcome, Via, count_transition};
use crate::notify::Subscription;
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

/// Most agents one coalesced first look asks storage about.
const LOOK_BATCH: usize = 1_000;
/// Most coalesced first looks in storage at once.
const LOOKS_IN_FLIGHT: usize = 2;

/// What a poll waiting in the queue of first looks is told.
#[derive(Debug)]
enum LookMessage {
    /// Its agent's `OrderStore::first_due`.
    Answer(Result<Option<DateTime<Utc>>, StoreError>),
    /// The look before ended with polls still queued: lead the next one. The lead travels as
    /// its guard, so a poll that goes away before reading it passes it on (see [`Leading`]).
    Lead(Leading),
}

/// The first looks of agents' opening long-polls, coalesced: a poll that opens while another
/// is making its first look joins a queue, and one storage query
/// ([`crate::OrderStore::first_due`]) answers up to [`LOOK_BATCH`] queued agents at once. An
/// agent with nothing deliverable then waits without a claim and a `next_due` of its own; the
/// others claim as usual. A reconnecting fleet thus costs storage a query per thousand polls
/// instead of two per poll.
///
/// No task of its own: the poll that finds fewer than [`LOOKS_IN_FLIGHT`] looks in flight
/// leads one (for itself and the queue); when it ends, however (its poll may be dropped by a
/// client going away), it hands the lead to the next queued poll. A queued poll whose look was
/// dropped unanswered claims on its own.
#[derive(Debug, Clone, Default)]
pub(crate) struct FirstLooks(Arc<Mutex<LookQueue>>);

#[derive(Debug, Default)]
struct LookQueue {
    /// Polls claiming on their own for their first look (nobody else was opening).
    alone: usize,
    /// Looks in flight (each led by one poll).
    in_flight: usize,
    queued: VecDeque<(AgentId, oneshot::Sender<LookMessage>)>,
}

impl FirstLooks {
    fn lock(&self) -> MutexGuard<'_, LookQueue> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How a poll's first look goes.
enum FirstLook {
    /// Claim now (and look for the next due order when there is none), as every later look
    /// does. Holds the count of polls opening alone, if this is one.
    Claim(Option<Alone>),
    /// Nothing of the agent's is deliverable: wait, until this instant at most when one
    /// becomes deliverable by itself.
    Wait(Option<DateTime<Utc>>),
}

/// A poll making its first look alone (counted in [`LookQueue::alone`] while it lives).
struct Alone(FirstLooks);

impl Drop for Alone {
    fn drop(&mut self) {
        self.0.lock().alone -= 1;
    }
}

/// A look in flight: when it ends, the lead passes to the next queued poll still waiting, or
/// the look is no longer counted. Handed over inside [`LookMessage::Lead`], it is dropped with
/// the message if that poll goes away unread, and passes the lead on again from there.
#[derive(Debug)]
struct Leading {
    looks: FirstLooks,
    /// False for a guard whose message found nobody to read it (its sender passes the lead on
    /// itself).
    armed: bool,
}

impl Leading {
    fn new(looks: &FirstLooks) -> Self {
        Self {
            looks: looks.clone(),
            armed: true,
        }
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut q = self.looks.lock();
        while let Some((_, next)) = q.queued.pop_front() {
            match next.send(LookMessage::Lead(Leading::new(&self.looks))) {
                Ok(()) => return,
                Err(LookMessage::Lead(mut unread)) => unread.armed = false,
                Err(LookMessage::Answer(_)) => {}
            }
        }
        q.in_flight -= 1;
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
        let (mut alone, mut waiting) = match consumers.agents() {
            [agent] if by == Claimer::Poll && consumers.components().is_empty() => {
                match self.first_look(agent).await? {
                    FirstLook::Claim(alone) => (alone, None),
                    FirstLook::Wait(due) => (None, Some(due)),
                }
            }
            _ => (None, None),
        };
        loop {
            // The first look found nothing deliverable: wait without a claim of our own.
            if let Some(due) = waiting.take() {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(Vec::new());
                }
                let until =
                    due.map(|due| (due - self.ports.clock.now()).to_std().unwrap_or_default());
                self.wait_for_orders(&mut subscription, &mut open, by, deadline, until)
                    .await;
                continue;
            }
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
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            // A scheduled order (or a redelivery) that becomes due during the wait wakes us
            // without any notification.
            let clock_now = self.ports.clock.now();
            let until = self
                .ports
                .orders
                .next_due(consumers, clock_now)
                .await?
                .map(|due| (due - clock_now).to_std().unwrap_or_default());
            drop(alone.take());
            self.wait_for_orders(&mut subscription, &mut open, by, deadline, until)
                .await;
        }
    }

    /// Waits (counted open) for a wake-up of `subscription`, until `deadline`, the notifier's
    /// re-check, or `until` from now (when one of the consumers' orders becomes due), whichever
    /// comes first.
    async fn wait_for_orders(
        &self,
        subscription: &mut Subscription,
        open: &mut Option<OpenPoll>,
        by: Claimer,
        deadline: Instant,
        until: Option<Duration>,
    ) {
        let now = Instant::now();
        let mut wake_at = self
            .ports
            .notifier
            .recheck_interval()
            .map_or(deadline, |every| deadline.min(now + every));
        if let Some(until) = until {
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

    /// The first look of an agent's opening poll (see [`FirstLooks`]): alone when no other poll
    /// is opening, else coalesced with the others into one storage query.
    async fn first_look(&self, agent: &AgentId) -> Result<FirstLook, StoreError> {
        let waiting = {
            let mut q = self.looks.lock();
            if q.alone == 0 && q.in_flight == 0 {
                q.alone += 1;
                return Ok(FirstLook::Claim(Some(Alone(self.looks.clone()))));
            }
            if q.in_flight < LOOKS_IN_FLIGHT {
                q.in_flight += 1;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                q.queued.push_back((agent.clone(), tx));
                Some(rx)
            }
        };
        let answer = match waiting {
            None => self.lead_look(agent, Leading::new(&self.looks)).await,
            Some(rx) => match rx.await {
                Ok(LookMessage::Answer(answer)) => answer,
                Ok(LookMessage::Lead(leading)) => self.lead_look(agent, leading).await,
                // The look that took us was dropped unanswered: claim on our own.
                Err(_) => return Ok(FirstLook::Claim(None)),
            },
        }?;
        Ok(match answer {
            Some(due) if due <= self.ports.clock.now() => FirstLook::Claim(None),
            due => FirstLook::Wait(due),
        })
    }

    /// Leads one coalesced look: for `agent` and up to [`LOOK_BATCH`] - 1 queued polls, whose
    /// answers it sends; answers `agent`'s.
    async fn lead_look(
        &self,
        agent: &AgentId,
        leading: Leading,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let _leading = leading;
        let batch: Vec<(AgentId, oneshot::Sender<LookMessage>)> = {
            let mut q = self.looks.lock();
            let n = q.queued.len().min(LOOK_BATCH - 1);
            q.queued.drain(..n).collect()
        };
        let mut agents = Vec::with_capacity(batch.len() + 1);
        agents.push(agent.clone());
        agents.extend(batch.iter().map(|(a, _)| a.clone()));
        let now = self.ports.clock.now();
        let answer = self.ports.orders.first_due(&agents, now).await;
        let mut answers: Vec<Result<Option<DateTime<Utc>>, StoreError>> = match answer {
            Ok(due) if due.len() == agents.len() => due.into_iter().map(Ok).collect(),
            // An answer of the wrong length tells nothing: every poll claims.
            Ok(_) => vec![Ok(Some(now)); agents.len()],
            Err(e) => vec![Err(e); agents.len()],
        };
        let others = answers.split_off(1);
        for ((_, tx), answer) in batch.into_iter().zip(others) {
            // A poll that went away meanwhile needs no answer.
            let _ = tx.send(LookMessage::Answer(answer));
        }
        answers.pop().unwrap_or(Ok(Some(now)))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str) -> AgentId {
        AgentId::parse(id, "agent").expect("agent id")
    }

    #[test]
    fn a_look_that_ends_hands_the_lead_to_the_next_poll_still_waiting() {
        let looks = FirstLooks::default();
        let (gone_tx, gone_rx) = oneshot::channel();
        let (next_tx, mut next_rx) = oneshot::channel();
        let (later_tx, mut later_rx) = oneshot::channel();
        {
            let mut q = looks.lock();
            q.in_flight = LOOKS_IN_FLIGHT;
            q.queued.push_back((agent("gone"), gone_tx));
            q.queued.push_back((agent("next"), next_tx));
            q.queued.push_back((agent("later"), later_tx));
        }
        // The first queued poll went away: the lead skips it.
        drop(gone_rx);
        drop(Leading::new(&looks));
        let lead = match next_rx.try_recv() {
            Ok(LookMessage::Lead(lead)) => lead,
            other => panic!("the next poll leads: {other:?}"),
        };
        assert!(later_rx.try_recv().is_err(), "only one poll leads");
        assert_eq!(
            looks.lock().in_flight,
            LOOKS_IN_FLIGHT,
            "the look passed on"
        );
        assert_eq!(looks.lock().queued.len(), 1);
        // With nobody left waiting, the look is no longer counted.
        looks.lock().queued.clear();
        drop(lead);
        assert_eq!(looks.lock().in_flight, LOOKS_IN_FLIGHT - 1);
    }

    #[test]
    fn a_lead_sent_to_a_poll_that_goes_away_unread_is_passed_on() {
        let looks = FirstLooks::default();
        let (gone_tx, gone_rx) = oneshot::channel();
        let (later_tx, mut later_rx) = oneshot::channel();
        {
            let mut q = looks.lock();
            q.in_flight = 1;
            q.queued.push_back((agent("gone"), gone_tx));
            q.queued.push_back((agent("later"), later_tx));
        }
        // The lead reaches a poll that is still there, which then goes away without reading
        // it (its client hung up): the lead goes on to the next poll.
        drop(Leading::new(&looks));
        drop(gone_rx);
        let lead = match later_rx.try_recv() {
            Ok(LookMessage::Lead(lead)) => lead,
            other => panic!("the lead went on to the next poll: {other:?}"),
        };
        assert_eq!(looks.lock().in_flight, 1, "still exactly one look");
        // Read and ended by the last poll, with nobody waiting: no look is counted.
        drop(lead);
        assert_eq!(looks.lock().in_flight, 0);
    }
}
