//! The cross-instance watch: one task per backend that, every poll interval, looks in the
//! orders index on behalf of all the long-polls waiting on this instance and wakes those that
//! have something to claim.
//!
//! OpenSearch carries no notifications between service instances. Instead of every waiting
//! poll re-claiming each interval (a search per poll per interval), each tick of the watch
//! costs one refresh and one search, whatever the number of waiting polls:
//!
//! 1. the consumers (agents, components) with a waiting poll or relay claim
//!    ([`cm_ports::WakeHub::waiting_consumers`]); none: nothing to do;
//! 2. a refresh of the orders index (unless one started since the tick began), so that every
//!    order written before the tick, by any instance, is searchable;
//! 3. one search for the orders of those agents that are deliverable now (the claim's own
//!    predicate, [`crate::orders::deliverable_at`]), the agents in `terms` clauses of at most
//!    [`AGENTS_PER_CLAUSE`] ids (more pages only when it finds over 10,000 orders);
//! 4. a wake-up of the agents of the orders the previous tick did not find.
//!
//! The search asks for a state, not for a time window: no watermark, so no margin for refresh
//! lag, clock skew between instances or a slow bulk that makes old orders visible late; an
//! order is found at the first tick after it became both visible and deliverable. A waiting
//! poll has already claimed everything it could, so a deliverable order of a waiting agent is
//! one its poll does not know about yet, whoever wrote it. The orders found are remembered
//! until a tick no longer finds them, so each wakes its agent once: an order that stays
//! deliverable (its poll is claiming it right now, or lost it to another poll) does not wake
//! it every tick. Orders this instance writes wake their polls at once through `notify` and are
//! almost always claimed before a tick can find them; a tick that does find one wakes a poll
//! that is claiming it already (at most one more claim). They are not told apart (documents
//! name no writer, and the Wazuh layout must stay as it is), which also covers orders written
//! without a `notify`.
//!
//! A scheduled order written by another instance is found when it becomes due, so it arrives
//! within one interval of its `not_before` (its own instance's polls sleep until it is due).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use cm_domain::{AgentId, ComponentName, Consumer};
use cm_ports::StoreError;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::error::corrupt;
use crate::mapping::Fields;
use crate::orders::{deliverable_at, stream_order};
use crate::visibility::Fresh;
use crate::{MAX_WINDOW, OpenSearchBackend};

/// Most agent ids in one `terms` clause (OpenSearch's `index.max_terms_count` is 65,536).
pub(crate) const AGENTS_PER_CLAUSE: usize = 10_000;
/// Most pages of hits one tick reads; deliverable orders of waiting agents are claimed within
/// moments, so one page is the rule. The rest is found by the next ticks.
const MAX_PAGES: usize = 10;

/// The running watch of one backend, shared by its notifiers; dropping the last one (or
/// [`Self::stop`]) ends the task.
#[derive(Debug)]
pub(crate) struct Watch {
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Watch {
    /// Starts the watch of `backend` on the current Tokio runtime; `None` outside of one.
    pub(crate) fn start(backend: OpenSearchBackend, every: Duration) -> Option<Arc<Self>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (stop, stopped) = watch::channel(false);
        let task = runtime.spawn(run(backend, every, stopped));
        Some(Arc::new(Self {
            stop,
            task: Mutex::new(Some(task)),
        }))
    }

    /// Whether the task is still running (not stopped, not ended by a panic).
    pub(crate) fn is_running(&self) -> bool {
        self.task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// Ends the task and waits for it.
    pub(crate) async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Ticks every `every` until told to stop; a failed tick is logged and the next one tries again.
async fn run(backend: OpenSearchBackend, every: Duration, mut stopped: watch::Receiver<bool>) {
    tracing::debug!(orders_index = %backend.inner.orders, interval = ?every, "cross-instance order watch started");
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seen = Seen::default();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = ticks.tick() => {}
        }
        let outcome = tokio::select! {
            _ = stopped.changed() => break,
            outcome = tick(&backend, &mut seen) => outcome,
        };
        match outcome {
            Ok(woken) => {
                if failing {
                    tracing::info!("cross-instance order watch recovered");
                    failing = false;
                }
                if woken > 0 {
                    tracing::debug!(agents = woken, "woke polls for orders they may claim");
                }
            }
            Err(error) if !failing => {
                tracing::warn!(%error, retry_in = ?every, "cross-instance order watch failed");
                failing = true;
            }
            Err(error) => {
                tracing::debug!(%error, retry_in = ?every, "cross-instance order watch still failing");
            }
        }
    }
    tracing::debug!(orders_index = %backend.inner.orders, "cross-instance order watch stopped");
}

/// One look on behalf of every waiting poll; returns how many agents it woke.
async fn tick(backend: &OpenSearchBackend, seen: &mut Seen) -> Result<usize, StoreError> {
    let hub = &backend.inner.hub;
    let waiting = hub.waiting_consumers();
    if waiting.is_empty() {
        seen.forget_all();
        return Ok(0);
    }
    backend.make_fresh(Fresh::Always).await?;
    let field = &backend.inner.fields.order_agent;
    let mut body = json!({
        "size": MAX_WINDOW,
        "_source": false,
        "docvalue_fields": [field, Fields::TARGET_TYPE, Fields::TARGET_ID],
        "track_total_hits": false,
        "sort": stream_order(),
        "query": watch_query(field, &waiting, Utc::now())
    });
    let mut found = Vec::new();
    for _ in 0..MAX_PAGES {
        let hits = backend.search(body.clone()).await?;
        let full = hits.len() == MAX_WINDOW;
        for hit in &hits {
            found.push(read_hit(hit, field)?);
        }
        match hits.last() {
            Some(last) if full => body["search_after"] = last["sort"].clone(),
            _ => break,
        }
    }
    let wake = seen.update(found);
    hub.wake(&wake);
    Ok(wake.len())
}

/// The orders of the `waiting` consumers deliverable at `now`: agents by `field`, components by
/// the `server` target naming them.
fn watch_query(field: &str, waiting: &[Consumer], now: chrono::DateTime<Utc>) -> Value {
    let mut agents: Vec<&str> = Vec::new();
    let mut components: Vec<&str> = Vec::new();
    for c in waiting {
        match c {
            Consumer::Agent(a) => agents.push(a.as_str()),
            Consumer::Component(n) => components.push(n.as_str()),
        }
    }
    let mut clauses: Vec<Value> = agents
        .chunks(AGENTS_PER_CLAUSE)
        .map(|ids| json!({"terms": {field: ids}}))
        .collect();
    for names in components.chunks(AGENTS_PER_CLAUSE) {
        clauses.push(json!({"bool": {"filter": [
            {"term": {Fields::TARGET_TYPE: "server"}},
            {"terms": {Fields::TARGET_ID: names}}
        ]}}));
    }
    json!({"bool": {"filter": [
        {"bool": {"should": clauses, "minimum_should_match": 1}},
        deliverable_at(now)
    ]}})
}

/// A hit's document id and consumer.
fn read_hit(hit: &Value, field: &str) -> Result<(String, Option<Consumer>), StoreError> {
    let id = hit["_id"]
        .as_str()
        .ok_or_else(|| corrupt(format!("search hit without _id: {hit}")))?;
    // A name the domain refuses cannot have a waiting poll either.
    let agent = hit["fields"][field][0]
        .as_str()
        .and_then(|a| AgentId::parse(a, Fields::AGENT_ID).ok())
        .map(Consumer::Agent);
    let component = || {
        (hit["fields"][Fields::TARGET_TYPE][0].as_str() == Some("server"))
            .then(|| hit["fields"][Fields::TARGET_ID][0].as_str())
            .flatten()
            .and_then(|n| ComponentName::parse(n, Fields::TARGET_ID).ok())
            .map(Consumer::Component)
    };
    Ok((id.to_owned(), agent.or_else(component)))
}

/// The orders the last tick found: each wakes its agent once, at the first tick that finds it.
#[derive(Debug, Default)]
struct Seen {
    ids: HashSet<String>,
}

impl Seen {
    /// Remembers exactly `found` (orders no longer found are forgotten) and returns the
    /// consumers of those that are new, each once.
    fn update(&mut self, found: Vec<(String, Option<Consumer>)>) -> Vec<Consumer> {
        let mut agents = HashSet::new();
        let mut ids = HashSet::with_capacity(found.len());
        for (id, agent) in found {
            if !self.ids.contains(&id)
                && let Some(agent) = agent
            {
                agents.insert(agent);
            }
            ids.insert(id);
        }
        self.ids = ids;
        agents.into_iter().collect()
    }

    fn forget_all(&mut self) {
        self.ids = HashSet::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str) -> Consumer {
        Consumer::Agent(AgentId::parse(id, "a").unwrap())
    }

    fn found(pairs: &[(&str, &str)]) -> Vec<(String, Option<Consumer>)> {
        pairs
            .iter()
            .map(|(id, a)| ((*id).to_owned(), Some(agent(a))))
            .collect()
    }

    fn sorted(mut v: Vec<Consumer>) -> Vec<Consumer> {
        v.sort();
        v
    }

    #[test]
    fn an_order_wakes_its_agent_once_while_it_is_found() {
        let mut seen = Seen::default();
        assert_eq!(
            sorted(seen.update(found(&[("o1", "a1"), ("o2", "a1"), ("o3", "a2")]))),
            vec![agent("a1"), agent("a2")],
            "each agent once"
        );
        assert!(
            seen.update(found(&[("o1", "a1"), ("o3", "a2")])).is_empty(),
            "still found: no second wake"
        );
        assert_eq!(
            seen.update(found(&[("o1", "a1"), ("o4", "a2")])),
            vec![agent("a2")],
            "a new order wakes its agent"
        );
        seen.update(Vec::new());
        assert_eq!(
            seen.update(found(&[("o1", "a1")])),
            vec![agent("a1")],
            "found again after it was gone: its agent polls anew"
        );
    }

    #[test]
    fn an_unreadable_agent_wakes_nobody() {
        let mut seen = Seen::default();
        assert!(seen.update(vec![("o1".to_owned(), None)]).is_empty());
    }

    #[test]
    fn agents_are_split_into_clauses_of_bounded_size() {
        let mut waiting: Vec<Consumer> = (0..AGENTS_PER_CLAUSE * 2 + 1)
            .map(|i| agent(&format!("a{i}")))
            .collect();
        waiting.push(Consumer::Component(
            ComponentName::parse("vd", "c").unwrap(),
        ));
        let q = watch_query(Fields::AGENT_ID, &waiting, Utc::now());
        let clauses = q["bool"]["filter"][0]["bool"]["should"].as_array().unwrap();
        let sizes: Vec<usize> = clauses[..3]
            .iter()
            .map(|c| c["terms"][Fields::AGENT_ID].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, vec![AGENTS_PER_CLAUSE, AGENTS_PER_CLAUSE, 1]);
        assert_eq!(
            clauses[3]["bool"]["filter"][1]["terms"][Fields::TARGET_ID],
            serde_json::json!(["vd"]),
            "components by their server target"
        );
    }
}
