//! Waking long-polls: the [`Notifier`] port and [`WakeHub`], the in-process building block every
//! notifier uses to reach the polls waiting on its own instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use cm_domain::AgentId;
use tokio::sync::watch;

/// Tells long-polls that orders may be waiting for their agent.
///
/// A poll subscribes *before* it looks for orders, then waits on the subscription; a
/// notification sent after the subscription was taken is never lost.
#[cfg_attr(any(test, feature = "testkit"), mockall::automock)]
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// Wakes the polls of `agents` on this instance and, where the backend carries
    /// notifications, on every other instance.
    ///
    /// # Errors
    /// A [`crate::StoreError`] when other instances could not be told; local polls are woken
    /// regardless, and remote ones still find the orders at their next re-check.
    async fn notify(&self, agents: &[AgentId]) -> Result<(), crate::StoreError>;

    /// A subscription that fires when `agent` is notified.
    fn subscribe(&self, agent: &AgentId) -> Subscription;

    /// How often a waiting poll should look at storage by itself, for backends whose
    /// notifications can be missed or do not cross instances. `None`: never.
    fn recheck_interval(&self) -> Option<Duration>;

    /// How many polls of `agent` in this process are parked right now: waiting on their
    /// subscription for a wake-up (not subscribing, not looking in storage). A test waits until
    /// this is non-zero before it creates the order that must wake the poll, so that the test
    /// exercises the wake-up rather than the poll's first look.
    fn polls_waiting(&self, agent: &AgentId) -> usize;
}

/// One agent's wake-up channel, and how many of its subscriptions are parked in
/// [`Subscription::notified`].
#[derive(Debug)]
struct Channel {
    tx: watch::Sender<u64>,
    parked: Arc<AtomicUsize>,
}

type Senders = Arc<Mutex<HashMap<AgentId, Channel>>>;

/// Per-agent wake-up channels for the polls waiting in this process.
#[derive(Debug, Clone, Default)]
pub struct WakeHub {
    senders: Senders,
}

impl WakeHub {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes to wake-ups of `agent`.
    #[must_use]
    pub fn subscribe(&self, agent: &AgentId) -> Subscription {
        let mut map = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        let channel = map.entry(agent.clone()).or_insert_with(|| Channel {
            tx: watch::channel(0).0,
            parked: Arc::default(),
        });
        Subscription {
            rx: channel.tx.subscribe(),
            parked: Arc::clone(&channel.parked),
            owner: Some((Arc::clone(&self.senders), agent.clone())),
        }
    }

    /// Wakes every subscription of these agents.
    pub fn wake(&self, agents: &[AgentId]) {
        let map = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        if map.is_empty() {
            return;
        }
        for agent in agents {
            if let Some(channel) = map.get(agent) {
                channel.tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Wakes every subscription (after a notification channel was lost and may have dropped
    /// messages).
    pub fn wake_all(&self) {
        let map = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        for channel in map.values() {
            channel.tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The agents that have at least one waiting subscription, in no particular order. For
    /// notifiers that must look in storage on behalf of the waiting polls (one look for all of
    /// them, instead of one per poll) and then [`Self::wake`] the agents they found orders for.
    #[must_use]
    pub fn waiting_agents(&self) -> Vec<AgentId> {
        self.senders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// How many agents have at least one waiting subscription.
    #[must_use]
    pub fn agents_waiting(&self) -> usize {
        self.senders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// How many subscriptions of `agent` are parked in [`Subscription::notified`] right now
    /// ([`Notifier::polls_waiting`]).
    #[must_use]
    pub fn polls_waiting(&self, agent: &AgentId) -> usize {
        self.senders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(agent)
            .map_or(0, |channel| channel.parked.load(Ordering::SeqCst))
    }
}

/// One poll's interest in one agent's wake-ups. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    rx: watch::Receiver<u64>,
    /// Shared with the agent's channel: counts the subscriptions inside [`Self::notified`].
    parked: Arc<AtomicUsize>,
    owner: Option<(Senders, AgentId)>,
}

/// Counts one subscription as parked while it lives (however `notified` ends: woken, or
/// dropped by the caller's timeout).
struct Parked(Arc<AtomicUsize>);

impl Parked {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Subscription {
    /// Resolves at the first wake-up sent after this subscription was taken (or after the
    /// previous call returned).
    pub async fn notified(&mut self) {
        let _parked = Parked::enter(&self.parked);
        if self.rx.changed().await.is_err() {
            // The sender is gone: nothing will ever wake us; wait forever (the caller's timeout
            // ends the wait).
            std::future::pending::<()>().await;
        }
    }

    /// A subscription that never fires, for notifiers that have nothing to offer.
    #[must_use]
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(0);
        std::mem::forget(tx);
        Self {
            rx,
            parked: Arc::default(),
            owner: None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some((senders, agent)) = self.owner.take() {
            let mut map = senders.lock().unwrap_or_else(PoisonError::into_inner);
            // Our own receiver is still alive here, so 1 means "only us".
            if map
                .get(&agent)
                .is_some_and(|channel| channel.tx.receiver_count() <= 1)
            {
                map.remove(&agent);
            }
        }
    }
}

/// A [`Notifier`] for a single instance: wakes the polls of this process only. Right for the
/// in-memory and SQLite backends, whose orders are written through this process.
#[derive(Debug, Clone, Default)]
pub struct LocalNotifier {
    hub: WakeHub,
}

impl LocalNotifier {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Notifier for LocalNotifier {
    async fn notify(&self, agents: &[AgentId]) -> Result<(), crate::StoreError> {
        self.hub.wake(agents);
        Ok(())
    }

    fn subscribe(&self, agent: &AgentId) -> Subscription {
        self.hub.subscribe(agent)
    }

    fn recheck_interval(&self) -> Option<Duration> {
        None
    }

    fn polls_waiting(&self, agent: &AgentId) -> usize {
        self.hub.polls_waiting(agent)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn agent(id: &str) -> AgentId {
        AgentId::parse(id, "id").unwrap()
    }

    #[tokio::test]
    async fn a_wake_after_subscribing_is_not_lost_even_before_waiting() {
        let hub = WakeHub::new();
        let mut sub = hub.subscribe(&agent("a1"));
        hub.wake(&[agent("a1")]);
        tokio::time::timeout(Duration::from_secs(1), sub.notified())
            .await
            .expect("wake-up lost");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_for_another_agent_does_not_fire() {
        let hub = WakeHub::new();
        let mut sub = hub.subscribe(&agent("a1"));
        hub.wake(&[agent("a2")]);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), sub.notified())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn dropping_the_last_subscription_forgets_the_agent() {
        let hub = WakeHub::new();
        let a = hub.subscribe(&agent("a1"));
        let b = hub.subscribe(&agent("a1"));
        assert_eq!(hub.agents_waiting(), 1);
        drop(a);
        assert_eq!(hub.agents_waiting(), 1);
        drop(b);
        assert_eq!(hub.agents_waiting(), 0);
    }

    #[tokio::test]
    async fn waiting_agents_are_those_with_a_subscription() {
        let hub = WakeHub::new();
        assert!(hub.waiting_agents().is_empty());
        let a = hub.subscribe(&agent("a1"));
        let _b = hub.subscribe(&agent("a2"));
        let _c = hub.subscribe(&agent("a2"));
        let mut waiting = hub.waiting_agents();
        waiting.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        assert_eq!(waiting, vec![agent("a1"), agent("a2")]);
        drop(a);
        assert_eq!(hub.waiting_agents(), vec![agent("a2")]);
    }

    #[tokio::test]
    async fn a_subscription_counts_as_waiting_only_while_it_waits() {
        let hub = WakeHub::new();
        let mut sub = hub.subscribe(&agent("a1"));
        assert_eq!(
            hub.polls_waiting(&agent("a1")),
            0,
            "subscribed, not waiting yet"
        );
        let waiter = tokio::spawn(async move {
            sub.notified().await;
            sub
        });
        while hub.polls_waiting(&agent("a1")) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(hub.polls_waiting(&agent("a2")), 0);
        hub.wake(&[agent("a1")]);
        let sub = waiter.await.expect("waiter");
        assert_eq!(hub.polls_waiting(&agent("a1")), 0, "woken");
        drop(sub);
        assert_eq!(hub.polls_waiting(&agent("a1")), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ended_by_a_timeout_no_longer_counts() {
        let hub = WakeHub::new();
        let mut sub = hub.subscribe(&agent("a1"));
        let timed_out = tokio::time::timeout(Duration::from_secs(5), sub.notified()).await;
        assert!(timed_out.is_err());
        assert_eq!(hub.polls_waiting(&agent("a1")), 0);
    }

    #[tokio::test]
    async fn wake_all_reaches_every_agent() {
        let hub = WakeHub::new();
        let mut a = hub.subscribe(&agent("a1"));
        let mut b = hub.subscribe(&agent("a2"));
        hub.wake_all();
        tokio::time::timeout(Duration::from_secs(1), async {
            a.notified().await;
            b.notified().await;
        })
        .await
        .expect("wake_all missed a subscriber");
    }
}
