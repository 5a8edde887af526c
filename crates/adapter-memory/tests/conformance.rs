//! The conformance suite against the in-memory adapter.

use std::sync::Arc;

use cm_adapter_memory::{MemoryAgents, MemoryComponents, MemoryOrders};
use cm_ports::LocalNotifier;
use cm_ports::testkit::Backend;

async fn backend() -> Backend {
    Backend {
        orders: Arc::new(MemoryOrders::new()),
        agents: Arc::new(MemoryAgents::new()),
        components: Arc::new(MemoryComponents::new()),
        notifier: Arc::new(LocalNotifier::new()),
        guard: None,
    }
}

cm_ports::conformance_suite!(backend());
