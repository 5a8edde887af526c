//! [`OpenSearchNotifier`]: wakes this instance's long-polls at once, and those waiting for
//! orders written through other instances through the backend's watch.
//!
//! OpenSearch has no channel for notifications between service instances. The backend's watch
//! (see `watch`) looks in the orders index once per poll interval on behalf of every poll
//! waiting on this instance, and wakes those that have orders to claim: an order created
//! through another instance reaches a waiting poll within about one interval, at the cost of
//! one refresh and one search per interval and instance, however many polls wait. Waiting
//! polls re-check by themselves only as a safety net ([`SAFETY_NET`]), or every interval when
//! the watch is not running.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cm_domain::Consumer;
use cm_ports::{Consumers, Notifier, StoreError, Subscription, WakeHub};

use crate::watch::Watch;

/// How often a waiting poll re-checks the index by itself while the watch runs (at least ten
/// poll intervals).
pub(crate) const SAFETY_NET: Duration = Duration::from_secs(30);

/// Wakes long-polls of this instance, at once for orders written through it and within about
/// `poll_interval` for orders of other instances. Clones (and other notifiers of the same
/// backend) share one watch, which ends with the last of them or with
/// [`crate::OpenSearchBackend::close`].
#[derive(Clone)]
pub struct OpenSearchNotifier {
    hub: WakeHub,
    poll_interval: Duration,
    watch: Option<Arc<Watch>>,
}

impl fmt::Debug for OpenSearchNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenSearchNotifier")
            .field("poll_interval", &self.poll_interval)
            .field("watching", &self.is_watching())
            .field("agents_waiting", &self.hub.agents_waiting())
            .finish()
    }
}

impl OpenSearchNotifier {
    pub(crate) const fn new(
        hub: WakeHub,
        poll_interval: Duration,
        watch: Option<Arc<Watch>>,
    ) -> Self {
        Self {
            hub,
            poll_interval,
            watch,
        }
    }

    /// Whether the watch that finds other instances' orders is running. It is not when the
    /// notifier was made outside of a Tokio runtime, after the backend was closed, or when the
    /// task died; waiting polls then re-check every poll interval by themselves.
    #[must_use]
    pub fn is_watching(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| w.is_running())
    }
}

#[async_trait]
impl Notifier for OpenSearchNotifier {
    async fn notify(&self, consumers: &[Consumer]) -> Result<(), StoreError> {
        self.hub.wake(consumers);
        Ok(())
    }

    fn subscribe(&self, consumers: &Consumers) -> Subscription {
        self.hub.subscribe(consumers)
    }

    fn recheck_interval(&self) -> Option<Duration> {
        Some(if self.is_watching() {
            SAFETY_NET.max(self.poll_interval.saturating_mul(10))
        } else {
            self.poll_interval
        })
    }

    fn polls_waiting(&self, consumer: &Consumer) -> usize {
        self.hub.polls_waiting(consumer)
    }
}
