//! Time and id sources: the only places the use cases meet the outside world besides storage.

use chrono::{DateTime, Utc};
use cm_domain::{IdSource, OrderId, RequestId};
use uuid::Uuid;

/// Tells the time. Implementations return UTC truncated to milliseconds, the precision every
/// backend stores.
#[cfg_attr(any(test, feature = "testkit"), mockall::automock)]
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        cm_domain::time::truncate_to_millis(Utc::now())
    }
}

/// Fresh, time-ordered ids (UUID v7) for a submit without an idempotency key.
#[derive(Debug, Clone, Copy, Default)]
pub struct FreshIds;

impl IdSource for FreshIds {
    fn request_id(&mut self, _index: usize) -> RequestId {
        RequestId::from_uuid(Uuid::now_v7())
    }

    fn order_id(&mut self, _request: &RequestId, _target: &str) -> OrderId {
        OrderId::from_uuid(Uuid::now_v7())
    }
}
