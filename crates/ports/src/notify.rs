//! Waking long-polls: the [`Notifier`] port and [`WakeHub`], the in-process building block every
//! notifier uses to reach the polls waiting on its own instance. Wake-ups are keyed by
//! [`Consumer`] (an agent or a server component); one subscription may cover many consumers (a
//! relay's claim), and any of them wakes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use cm_domain::Consumer;
use tokio::sync::Notify;

use crate::store::Consumers;

/// Tells long-polls that orders may be waiting for their consumers.
///
/// A poll subscribes *before* it looks for orders, then waits on the subscription; a
/// notification sent after the subscription was taken is never lost.
#[cfg_attr(any(test, feature = "testkit"), mockall::automock)]
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// Wakes the polls of `consumers` on this instance and, where the backend carries
    /// notifications, on every other instance.
    ///
    /// # Errors
    /// A [`crate::StoreError`] when other instances could not be told; local polls are woken
    /// regardless, and remote ones still find the orders at their next re-check.
    async fn notify(&self, consumers: &[Consumer]) -> Result<(), crate::StoreError>;

    /// A subscription that fires when any of `consumers` is notified.
    fn subscribe(&self, consumers: &Consumers) -> Subscription;

    /// How often a waiting poll should look at storage by itself, for backends whose
    /// notifications can be missed or do not cross instances. `None`: never.
    fn recheck_interval(&self) -> Option<Duration>;

    /// How many polls of `consumer` in this process are parked right now: waiting on their
    /// subscription for a wake-up (not subscribing, not looking in storage). A test waits until
    /// this is non-zero before it creates the order that must wake the poll, so that the test
    /// exercises the wake-up rather than the poll's first look.
    fn polls_waiting(&self, consumer: &Consumer) -> usize;
}

/// One subscription's wake-up, and whether it is parked in [`Subscription::notified`].
#[derive(Debug, Default)]
struct Waiter {
    notify: Notify,
    parked: AtomicUsize,
}

#[derive(Debug, Default)]
struct Waiters {
    next_id: u64,
    /// Per consumer, the subscriptions waiting for it, by subscription id.
    by_consumer: HashMap<Consumer, HashMap<u64, Arc<Waiter>>>,
}

type Shared = Arc<Mutex<Waiters>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Waiters> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Per-consumer wake-up channels for the polls waiting in this process.
#[derive(Debug, Clone, Default)]
pub struct WakeHub {
    waiters: Shared,
}

impl WakeHub {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes to wake-ups of any of `consumers`.
    #[must_use]
    pub fn subscribe(&self, consumers: &Consumers) -> Subscription {
        let waiter = Arc::new(Waiter::default());
        let keys: Vec<Consumer> = consumers.iter().collect();
        let mut w = lock(&self.waiters);
        let id = w.next_id;
        w.next_id = w.next_id.wrapping_add(1);
        for k in &keys {
            w.by_consumer
                .entry(k.clone())
                .or_default()
                .insert(id, Arc::clone(&waiter));
        }
        Subscription {
            waiter,
            owner: Some((Arc::clone(&self.waiters), keys, id)),
        }
    }

    /// Wakes every subscription of these consumers.
    pub fn wake(&self, consumers: &[Consumer]) {
        let w = lock(&self.waiters);
        if w.by_consumer.is_empty() {
            return;
        }
        for c in consumers {
            for n in w.by_consumer.get(c).into_iter().flat_map(HashMap::values) {
                n.notify.notify_one();
            }
        }
    }

    /// Wakes every subscription (after a notification channel was lost and may have dropped
    /// messages).
    pub fn wake_all(&self) {
        let w = lock(&self.waiters);
        for n in w.by_consumer.values().flat_map(HashMap::values) {
            n.notify.notify_one();
        }
    }

    /// The consumers that have at least one waiting subscription, in no particular order. For
    /// notifiers that must look in storage on behalf of the waiting polls (one look for all of
    /// them, instead of one per poll) and then [`Self::wake`] the consumers they found orders
    /// for.
    #[must_use]
    pub fn waiting_consumers(&self) -> Vec<Consumer> {
        lock(&self.waiters).by_consumer.keys().cloned().collect()
    }

    /// How many consumers (agents and components) have at least one waiting subscription.
    #[must_use]
    pub fn agents_waiting(&self) -> usize {
        lock(&self.waiters).by_consumer.len()
    }

    /// How many subscriptions covering `consumer` are parked in [`Subscription::notified`]
    /// right now ([`Notifier::polls_waiting`]).
    #[must_use]
    pub fn polls_waiting(&self, consumer: &Consumer) -> usize {
        lock(&self.waiters)
            .by_consumer
            .get(consumer)
            .into_iter()
            .flat_map(HashMap::values)
            .map(|w| w.parked.load(Ordering::SeqCst))
            .sum()
    }
}

/// Counts one subscription as parked while it lives (however `notified` ends: woken, or
/// dropped by the caller's timeout).
struct Parked<'a>(&'a AtomicUsize);

impl<'a> Parked<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One poll's interest in the wake-ups of its consumers. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    waiter: Arc<Waiter>,
    owner: Option<(Shared, Vec<Consumer>, u64)>,
}

impl Subscription {
    /// Resolves at the first wake-up sent after this subscription was taken (or after the
    /// previous call returned). Wake-ups sent meanwhile are coalesced into one.
    pub async fn notified(&mut self) {
        let _parked = Parked::enter(&self.waiter.parked);
        self.waiter.notify.notified().await;
    }

    /// A subscription that never fires, for notifiers that have nothing to offer.
    #[must_use]
    pub fn never() -> Self {
        Self {
            waiter: Arc::default(),
            owner: None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some((shared, keys, id)) = self.owner.take() {
            let mut w = lock(&shared);
            for k in keys {
                if let Some(subs) = w.by_consumer.get_mut(&k) {
                    subs.remove(&id);
                    if subs.is_empty() {
                        w.by_consumer.remove(&k);
                    }
                }
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
    async fn notify(&self, consumers: &[Consumer]) -> Result<(), crate::StoreError> {
        self.hub.wake(consumers);
        Ok(())
    }

    fn subscribe(&self, consumers: &Consumers) -> Subscription {
        self.hub.subscribe(consumers)
    }

    fn recheck_interval(&self) -> Option<Duration> {
        None
    }

    fn polls_waiting(&self, consumer: &Consumer) -> usize {
        self.hub.polls_waiting(consumer)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cm_domain::{AgentId, ComponentName};

    use super::*;

    fn agent(id: &str) -> Consumer {
        Consumer::Agent(AgentId::parse(id, "id").unwrap())
    }

    fn one(c: &Consumer) -> Consumers {
        match c {
            Consumer::Agent(a) => Consumers::agent(a),
            Consumer::Component(c) => Consumers::component(c),
        }
    }

    #[tokio::test]
    async fn a_wake_after_subscribing_is_not_lost_even_before_waiting() {
        let hub = WakeHub::new();
        let mut sub = hub.subscribe(&one(&agent("a1")));
        hub.wake(&[agent("a1")]);
        tokio::time::timeout(Duration::from_secs(1), sub.notified())
            .await
            .expect("wake-up lost");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_for_another_consumer_does_not_fire() {
        let hub = WakeHub::new();
        let mut sub = hub.subscribe(&one(&agent("a1")));
        // The same name as a component is another consumer.
        let component = Consumer::Component(ComponentName::parse("a1", "id").unwrap());
        hub.wake(&[agent("a2"), component]);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), sub.notified())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_subscription_for_many_consumers_wakes_for_any_of_them() {
        let hub = WakeHub::new();
        let agents: Vec<AgentId> = (0..10_000)
            .map(|i| AgentId::parse(&format!("a{i}"), "id").unwrap())
            .collect();
        let component = ComponentName::parse("vd", "id").unwrap();
        let set = Consumers::new(agents, vec![component.clone()]);
        let mut sub = hub.subscribe(&set);
        assert_eq!(hub.agents_waiting(), 10_001);
        for c in [agent("a9999"), Consumer::Component(component)] {
            hub.wake(&[c]);
            tokio::time::timeout(Duration::from_secs(1), sub.notified())
                .await
                .expect("wake-up lost");
        }
        drop(sub);
        assert_eq!(hub.agents_waiting(), 0);
    }

    #[tokio::test]
    async fn dropping_the_last_subscription_forgets_the_consumer() {
        let hub = WakeHub::new();
        let a = hub.subscribe(&one(&agent("a1")));
        let b = hub.subscribe(&one(&agent("a1")));
        assert_eq!(hub.agents_waiting(), 1);
        drop(a);
        assert_eq!(hub.agents_waiting(), 1);
        drop(b);
        assert_eq!(hub.agents_waiting(), 0);
    }

    #[tokio::test]
    async fn waiting_consumers_are_those_with_a_subscription() {
        let hub = WakeHub::new();
        assert!(hub.waiting_consumers().is_empty());
        let a = hub.subscribe(&one(&agent("a1")));
        let _b = hub.subscribe(&one(&agent("a2")));
        let _c = hub.subscribe(&one(&agent("a2")));
        let mut waiting = hub.waiting_consumers();
        waiting.sort();
        assert_eq!(waiting, vec![agent("a1"), agent("a2")]);
        drop(a);
        assert_eq!(hub.waiting_consumers(), vec![agent("a2")]);
    }

    #[tokio::test]
    async fn wake_all_reaches_every_consumer() {
        let hub = WakeHub::new();
        let mut a = hub.subscribe(&one(&agent("a1")));
        let mut b = hub.subscribe(&one(&agent("a2")));
        hub.wake_all();
        tokio::time::timeout(Duration::from_secs(1), async {
            a.notified().await;
            b.notified().await;
        })
        .await
        .expect("wake_all missed a subscriber");
    }

    #[tokio::test]
    async fn a_subscription_counts_as_waiting_only_while_it_waits() {
        let hub = WakeHub::new();
        let mut sub = hub.subscribe(&one(&agent("a1")));
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
        let mut sub = hub.subscribe(&one(&agent("a1")));
        let timed_out = tokio::time::timeout(Duration::from_secs(5), sub.notified()).await;
        assert!(timed_out.is_err());
        assert_eq!(hub.polls_waiting(&agent("a1")), 0);
    }
}
