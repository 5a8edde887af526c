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

/// Every metric of this crate.
pub const ALL: [Metric; 2] = [HTTP_REQUESTS, HTTP_REQUEST_DURATION];

/// Registers the HELP text of every metric of this crate with the installed recorder.
pub fn describe() {
    for metric in ALL {
        metric.describe();
    }
}
