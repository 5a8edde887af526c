//! The HTTP driver's metrics, each with its HELP text. Label values: `method` from one function
//! (standard methods by name, anything else `other`), `route` the matched path template
//! (`unmatched` otherwise), `status` the answer's status code.

use cm_ports::metric::Metric;
use metrics::Unit;

/// Counter with labels `method`, `route` and `status`.
pub const HTTP_REQUESTS: Metric = Metric::counter(
    "cm_http_requests_total",
    "HTTP requests answered, by method, route (the matched path template) and status code.",
);

/// Histogram with labels `method` and `route`.
pub const HTTP_REQUEST_DURATION: Metric = Metric::histogram(
    "cm_http_request_duration_seconds",
    Unit::Seconds,
    "Time to answer an HTTP request (a long-poll's wait included), by method and route.",
);

/// Gauge: client connections open now.
pub const CONNECTIONS_OPEN: Metric = Metric::gauge(
    "cm_http_connections_open",
    Unit::Count,
    "Client connections open now (long-polls included).",
);

/// Counter with label `reason` ([`crate::conn`]'s `Dropped`: over_cap, header_timeout,
/// idle_timeout, tls_failed).
pub const CONNECTIONS_DROPPED: Metric = Metric::counter(
    "cm_http_connections_dropped_total",
    "Connections the server closed before or between requests, by reason: over_cap, \
     header_timeout, idle_timeout, tls_failed.",
);

/// Every metric of this crate.
pub const ALL: [Metric; 4] = [
    HTTP_REQUESTS,
    HTTP_REQUEST_DURATION,
    CONNECTIONS_OPEN,
    CONNECTIONS_DROPPED,
];

/// Registers the HELP text of every metric of this crate with the installed recorder.
pub fn describe() {
    for metric in ALL {
        metric.describe();
    }
}
