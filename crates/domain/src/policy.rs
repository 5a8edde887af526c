//! Settings of the delivery rules that operators choose.

use chrono::Duration;

/// How at-least-once delivery behaves (docs/delivery.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// A `sent` order with no report after this long is handed out again on the agent's next
    /// poll. `None` never redelivers.
    pub redeliver_after: Option<Duration>,
    /// A `sent` or `in_progress` order with no final result this long after it was (last)
    /// handed out becomes `failure` (`no result`). `None` waits forever.
    pub result_timeout: Option<Duration>,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            redeliver_after: Some(Duration::seconds(120)),
            result_timeout: Some(Duration::seconds(3600)),
        }
    }
}
