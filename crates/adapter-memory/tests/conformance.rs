//! The conformance suite against the in-memory adapter.

use std::sync::Arc;

use cm_adapter_memory::{MemoryAgents, MemoryComponents, MemoryOrders};
use cm_ports::LocalNotifier;
use cm_ports::testkit::Backend;

async fn backend() -> Backend {
    let orders = MemoryOrders::new();
    Backend {
        requests: Arc::new(orders.requests()),
        orders: Arc::new(orders),
        agents: Arc::new(MemoryAgents::new()),
        components: Arc::new(MemoryComponents::new()),
        notifier: Arc::new(LocalNotifier::new()),
        guard: None,
    }
}

cm_ports::conformance_suite!(backend());
