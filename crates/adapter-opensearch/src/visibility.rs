//! What this instance wrote that searches may not see yet.
//!
//! OpenSearch searches see a document only after the index refreshed (every 5 s with the Wazuh
//! template); `GET`/`_mget` see it at once. So this instance remembers, per agent, the orders
//! it wrote since the last refresh it made ([`Visibility::recent`]); claims and `next_due` read
//! those with a realtime `_mget` besides their search, and the searches exclude them. A refresh
//! forgets every write it covers. Writes are numbered: a refresh covers every write numbered at
//! most the count read when it started.
//!
//! The agents index has a `Visibility` of its own, which numbers agent writes but remembers no
//! orders: its counts and listings refresh it instead (see `agents`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cm_domain::{Consumer, Order, OrderId};
use cm_ports::Consumers;

/// When a search needs a refresh first.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fresh {
    /// Unless a refresh started after the caller asked (maintenance batches: nothing written
    /// before the batch, by any instance, may be missed).
    Always,
    /// When the last refresh started this long ago or more (claims, `next_due`: writes of other
    /// instances show up within that time; this instance's own are read through `recent`).
    IfOlder(Duration),
    /// When this instance wrote since the last refresh, or as [`Fresh::IfOlder`]
    /// (listings and counts: read-your-writes).
    IfDirtyOrOlder(Duration),
}

/// Beyond this many remembered orders a writer refreshes at once (bounds the memory).
pub(crate) const RECENT_CAP: usize = 50_000;

#[derive(Debug, Default)]
struct Recent {
    by_consumer: HashMap<Consumer, HashMap<OrderId, u64>>,
    len: usize,
}

/// The refresh bookkeeping of one backend (shared by its clones).
#[derive(Debug)]
pub(crate) struct Visibility {
    /// Writes finished so far.
    written: AtomicU64,
    /// Every write numbered at most this is visible to searches.
    covered: AtomicU64,
    /// When the last refresh started.
    last_refresh: Mutex<Option<Instant>>,
    /// One refresh at a time; those who waited usually find theirs done.
    pub(crate) refreshing: tokio::sync::Mutex<()>,
    recent: Mutex<Recent>,
}

/// What a caller asked for, captured when it asked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask {
    fresh: Fresh,
    at: Instant,
    written: u64,
}

impl Visibility {
    pub(crate) fn new() -> Self {
        Self {
            written: AtomicU64::new(0),
            covered: AtomicU64::new(0),
            last_refresh: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            recent: Mutex::new(Recent::default()),
        }
    }

    fn recent_lock(&self) -> MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn last_refresh(&self) -> Option<Instant> {
        *self
            .last_refresh
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that a write request returned (whatever its outcome); returns its number.
    pub(crate) fn wrote(&self) -> u64 {
        self.written.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Remembers the orders of write `number` that have a consumer until a refresh covers it.
    pub(crate) fn remember<'a>(&self, number: u64, orders: impl IntoIterator<Item = &'a Order>) {
        if number <= self.covered.load(Ordering::SeqCst) {
            return;
        }
        let mut r = self.recent_lock();
        for o in orders {
            if let Some(consumer) = o.consumer() {
                let added = r
                    .by_consumer
                    .entry(consumer)
                    .or_default()
                    .insert(*o.order_id(), number)
                    .is_none();
                if added {
                    r.len += 1;
                }
            }
        }
    }

    /// The orders of `consumers` written since the last refresh that covers them.
    pub(crate) fn recent(&self, consumers: &Consumers) -> Vec<OrderId> {
        let covered = self.covered.load(Ordering::SeqCst);
        let r = self.recent_lock();
        if r.by_consumer.is_empty() {
            return Vec::new();
        }
        consumers
            .iter()
            .filter_map(|c| r.by_consumer.get(&c))
            .flat_map(|m| m.iter().filter(|(_, n)| **n > covered).map(|(id, _)| *id))
            .collect()
    }

    pub(crate) fn recent_len(&self) -> usize {
        self.recent_lock().len
    }

    pub(crate) fn ask(&self, fresh: Fresh) -> Ask {
        Ask {
            fresh,
            at: Instant::now(),
            written: self.written.load(Ordering::SeqCst),
        }
    }

    /// Whether `ask` still needs a refresh.
    pub(crate) fn needs(&self, ask: &Ask) -> bool {
        let last = self.last_refresh();
        let older = |max: Duration| last.is_none_or(|t| t.elapsed() >= max);
        match ask.fresh {
            Fresh::Always => last.is_none_or(|t| t < ask.at),
            Fresh::IfOlder(max) => older(max),
            Fresh::IfDirtyOrOlder(max) => {
                self.covered.load(Ordering::SeqCst) < ask.written || older(max)
            }
        }
    }

    /// Call right before sending a refresh: what it will cover and when it started.
    pub(crate) fn refresh_starts(&self) -> (u64, Instant) {
        (self.written.load(Ordering::SeqCst), Instant::now())
    }

    /// Call once a refresh that started at `started`, covering `covers`, succeeded.
    pub(crate) fn refreshed(&self, covers: u64, started: Instant) {
        self.covered.fetch_max(covers, Ordering::SeqCst);
        {
            let mut last = self
                .last_refresh
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_none_or(|t| t < started) {
                *last = Some(started);
            }
        }
        let covered = self.covered.load(Ordering::SeqCst);
        let mut r = self.recent_lock();
        let mut len = 0;
        r.by_consumer.retain(|_, m| {
            m.retain(|_, n| *n > covered);
            len += m.len();
            !m.is_empty()
        });
        r.len = len;
    }
}

#[cfg(test)]
mod tests {
    use cm_domain::{Action, AgentId, NewOrder, RequestId, Source, Target, Timeout};
    use uuid::Uuid;

    use super::*;

    fn order(agent: &str) -> Order {
        let agent = AgentId::parse(agent, "a").unwrap();
        let action = Action::new("restart", serde_json::json!({}), "v5").unwrap();
        Order::new(NewOrder {
            order_id: OrderId::from_uuid(Uuid::now_v7()),
            request_id: RequestId::from_uuid(Uuid::now_v7()),
            source: Source::Engine,
            user: None,
            target: Target::agent(&agent),
            agent: Some((&agent, &[])),
            action: &action,
            timeout: Timeout::new(10).unwrap(),
            now: chrono::Utc::now(),
            not_before: None,
            retry_of: None,
            position: None,
        })
    }

    #[test]
    fn a_refresh_forgets_exactly_the_writes_it_covers() {
        let v = Visibility::new();
        let a1 = AgentId::parse("a1", "a").unwrap();
        let (first, second) = (order("a1"), order("a1"));
        let n = v.wrote();
        v.remember(n, [&first]);
        let (covers, started) = v.refresh_starts();
        let n = v.wrote();
        v.remember(n, [&second]);
        v.refreshed(covers, started);
        assert_eq!(
            v.recent(&cm_ports::Consumers::agent(&a1)),
            vec![*second.order_id()]
        );
        assert_eq!(v.recent_len(), 1);
    }

    #[test]
    fn dirty_asks_need_a_refresh_until_one_covers_them() {
        let v = Visibility::new();
        let long = Duration::from_secs(3600);
        let (covers, started) = v.refresh_starts();
        v.refreshed(covers, started);
        assert!(!v.needs(&v.ask(Fresh::IfDirtyOrOlder(long))));
        v.wrote();
        let ask = v.ask(Fresh::IfDirtyOrOlder(long));
        assert!(v.needs(&ask));
        assert!(
            !v.needs(&v.ask(Fresh::IfOlder(long))),
            "not dirty-sensitive"
        );
        let (covers, started) = v.refresh_starts();
        v.refreshed(covers, started);
        assert!(!v.needs(&ask));
        let always = v.ask(Fresh::Always);
        assert!(v.needs(&always));
    }
}
