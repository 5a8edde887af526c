//! [`OpenSearchNotifier`]: wakes this instance's long-polls at once, and makes every waiting
//! poll re-check the index each poll interval.
//!
//! OpenSearch has no channel for notifications between service instances, so an order created
//! through another instance is found by the periodic re-check: the claim that follows refreshes
//! the orders index when its last refresh is older than the interval, so the order is visible
//! within about one interval of its creation.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use cm_domain::AgentId;
use cm_ports::{Notifier, StoreError, Subscription, WakeHub};

/// Wakes long-polls of this instance; polls everywhere re-check every `poll_interval`.
#[derive(Clone)]
pub struct OpenSearchNotifier {
    hub: WakeHub,
    poll_interval: Duration,
}

impl fmt::Debug for OpenSearchNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenSearchNotifier")
            .field("poll_interval", &self.poll_interval)
            .field("agents_waiting", &self.hub.agents_waiting())
            .finish()
    }
}

impl OpenSearchNotifier {
    pub(crate) const fn new(hub: WakeHub, poll_interval: Duration) -> Self {
        Self { hub, poll_interval }
    }
}

#[async_trait]
impl Notifier for OpenSearchNotifier {
    async fn notify(&self, agents: &[AgentId]) -> Result<(), StoreError> {
        self.hub.wake(agents);
        Ok(())
    }

    fn subscribe(&self, agent: &AgentId) -> Subscription {
        self.hub.subscribe(agent)
    }

    fn recheck_interval(&self) -> Option<Duration> {
        Some(self.poll_interval)
    }
}
