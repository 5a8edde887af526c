//! The metrics of the OpenSearch client's node pool (see `client`): each declared with its
//! HELP text. The binary calls [`describe`] at start-up, next to the other crates'.

use cm_ports::metric::Metric;
use metrics::Unit;

/// Counter with label `node` (`host:port`): every attempt of a request on that node, retries
/// included.
pub const REQUESTS: Metric = Metric::counter(
    "cm_opensearch_requests_total",
    "Requests sent to each OpenSearch node (label node, host:port), retries included.",
);
/// Gauge: nodes of the pool not marked dead.
pub const NODES_ALIVE: Metric = Metric::gauge(
    "cm_opensearch_nodes_alive",
    Unit::Count,
    "OpenSearch nodes the service currently sends requests to (not marked dead).",
);
/// Counter: requests sent again to another node after a failure.
pub const RETRIES: Metric = Metric::counter(
    "cm_opensearch_retries_total",
    "Requests sent again to another OpenSearch node after a node failed (only those safe to repeat).",
);

/// Every metric of this crate.
pub const ALL: [Metric; 3] = [REQUESTS, NODES_ALIVE, RETRIES];

/// Registers the HELP text of every metric of this crate with the installed recorder.
pub fn describe() {
    for metric in ALL {
        metric.describe();
    }
}
