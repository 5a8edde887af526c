//! In-memory implementations of the storage ports: [`MemoryOrders`], [`MemoryRequests`] (from
//! [`MemoryOrders::requests`], since claims consult the records), [`MemoryAgents`] and
//! [`MemoryComponents`].
//!
//! They keep the same contract as the durable adapters (the conformance suite runs against
//! them), so a service embedding the command manager can swap its storage for these in tests.
//! All state sits behind one mutex per store, never held across an `.await`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cm_domain::{
    Agent, AgentId, ComponentName, Consumer, DeliveryPolicy, GroupName, KeyHash, Order, OrderId,
    PendingEnd, RequestId, RequestRecord, Status,
};
use cm_ports::{
    AgentPageRequest, AgentRegistry, Batch, ComponentRegistry, Consumers, OrderCursor, OrderFilter,
    OrderPageRequest, OrderStore, Page, ReplaceError, RequestCursor, RequestFilter,
    RequestPageRequest, RequestStore, ResultGroup, RetentionMode, StatusCounts, StoreError,
    Upserted, WholeOutcome, WholeRequest,
};

type Key = (DateTime<Utc>, OrderId);

/// The orders stream, in memory, with the indexes the hot operations need.
#[derive(Debug)]
pub struct MemoryOrders {
    state: Arc<Mutex<Orders>>,
    requests: MemoryRequests,
}

impl Default for MemoryOrders {
    fn default() -> Self {
        let state = Arc::<Mutex<Orders>>::default();
        let requests = MemoryRequests {
            records: Arc::default(),
            orders: Some(Arc::clone(&state)),
        };
        Self { state, requests }
    }
}

#[derive(Debug, Default)]
struct Orders {
    by_id: HashMap<OrderId, Order>,
    /// Every order in query order.
    by_time: BTreeSet<Key>,
    /// Orders that a claim may hand out now or later (`pending`, `sent`), per consumer.
    open_by_consumer: HashMap<Consumer, BTreeSet<Key>>,
    /// `pending` orders by delivery deadline.
    pending_by_deadline: BTreeSet<Key>,
    /// `sent` / `in_progress` orders by result deadline.
    delivered_by_deadline: BTreeSet<Key>,
    /// Finished orders by finish time.
    finished: BTreeSet<Key>,
    by_request: HashMap<RequestId, HashSet<OrderId>>,
    archive: HashMap<OrderId, Order>,
}

impl Orders {
    fn index(&mut self, o: &Order) {
        let id = *o.order_id();
        self.by_time.insert((o.created_at(), id));
        self.by_request
            .entry(*o.request_id())
            .or_default()
            .insert(id);
        match o.status() {
            Status::Pending | Status::Sent => {
                if let Some(consumer) = o.consumer() {
                    self.open_by_consumer
                        .entry(consumer)
                        .or_default()
                        .insert((o.created_at(), id));
                }
            }
            Status::InProgress | Status::Success | Status::Failure => {}
        }
        // A held order cannot expire: its deadline counts from its release.
        if o.status() == Status::Pending && !o.is_held() {
            self.pending_by_deadline.insert((o.delivery_deadline(), id));
        }
        if let Some(t) = o.result_deadline() {
            self.delivered_by_deadline.insert((t, id));
        }
        if let Some(t) = o.finished_at() {
            self.finished.insert((t, id));
        }
    }

    fn unindex(&mut self, o: &Order) {
        let id = *o.order_id();
        self.by_time.remove(&(o.created_at(), id));
        if let Some(set) = self.by_request.get_mut(o.request_id()) {
            set.remove(&id);
            if set.is_empty() {
                self.by_request.remove(o.request_id());
            }
        }
        if let Some(consumer) = o.consumer()
            && let Some(set) = self.open_by_consumer.get_mut(&consumer)
        {
            set.remove(&(o.created_at(), id));
            if set.is_empty() {
                self.open_by_consumer.remove(&consumer);
            }
        }
        self.pending_by_deadline
            .remove(&(o.delivery_deadline(), id));
        if let Some(t) = o.result_deadline() {
            self.delivered_by_deadline.remove(&(t, id));
        }
        if let Some(t) = o.finished_at() {
            self.finished.remove(&(t, id));
        }
    }

    fn put(&mut self, next: Order) {
        if let Some(old) = self.by_id.remove(next.order_id()) {
            self.unindex(&old);
        }
        self.index(&next);
        self.by_id.insert(*next.order_id(), next);
    }

    fn remove(&mut self, id: &OrderId) -> Option<Order> {
        let old = self.by_id.remove(id)?;
        self.unindex(&old);
        Some(old)
    }

    /// Applies `step` to up to `limit` orders picked from `candidates` (ids in order), skipping
    /// those for which it refuses.
    fn apply_batch(
        &mut self,
        candidates: Vec<OrderId>,
        step: impl Fn(&Order) -> Option<Order>,
    ) -> Batch {
        let mut batch = Batch {
            examined: candidates.len(),
            changed: 0,
        };
        for id in candidates {
            if let Some(next) = self.by_id.get(&id).and_then(&step) {
                self.put(next);
                batch.changed += 1;
            }
        }
        batch
    }
}

impl MemoryOrders {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Orders> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The request records these orders belong to: claims hand out an order only while its
    /// request's record (if any) delivers.
    #[must_use]
    pub fn requests(&self) -> MemoryRequests {
        self.requests.clone()
    }

    /// The ids of `request`'s orders that are `pending`, in (`@timestamp`, id) order.
    fn pending_of(s: &Orders, request: &RequestId) -> Vec<(DateTime<Utc>, OrderId)> {
        let mut pending: Vec<(DateTime<Utc>, OrderId)> = s
            .by_request
            .get(request)
            .into_iter()
            .flatten()
            .filter_map(|id| s.by_id.get(id))
            .filter(|o| o.status() == Status::Pending)
            .map(|o| (o.created_at(), *o.order_id()))
            .collect();
        pending.sort_unstable();
        pending
    }
}

/// The request records, in memory; shared with the [`MemoryOrders`] that made it.
#[derive(Debug, Default, Clone)]
pub struct MemoryRequests {
    records: Arc<Mutex<HashMap<RequestId, RequestRecord>>>,
    /// The orders of [`MemoryOrders::requests`], which [`RequestStore::write_whole`] writes
    /// into; `None` for records kept on their own (`default()`), which then cannot.
    orders: Option<Arc<Mutex<Orders>>>,
}

impl MemoryRequests {
    fn lock(&self) -> MutexGuard<'_, HashMap<RequestId, RequestRecord>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The request gate: may orders of `request` go out now?
    fn delivers(records: &HashMap<RequestId, RequestRecord>, request: &RequestId) -> bool {
        records.get(request).is_none_or(|r| r.state().delivers())
    }
}

fn newest_first(a: &RequestRecord, b: &RequestRecord) -> std::cmp::Ordering {
    (b.created_at(), b.request_id()).cmp(&(a.created_at(), a.request_id()))
}

#[async_trait]
impl RequestStore for MemoryRequests {
    async fn create(&self, record: &RequestRecord) -> Result<bool, StoreError> {
        let mut records = self.lock();
        if records.contains_key(record.request_id()) {
            return Ok(false);
        }
        records.insert(*record.request_id(), record.clone());
        Ok(true)
    }

    async fn get(&self, id: &RequestId) -> Result<Option<RequestRecord>, StoreError> {
        Ok(self.lock().get(id).cloned())
    }

    async fn replace(
        &self,
        current: &RequestRecord,
        next: &RequestRecord,
    ) -> Result<(), ReplaceError> {
        let mut records = self.lock();
        match records.get(current.request_id()) {
            None => Err(ReplaceError::NotFound),
            Some(stored) if stored.revision() != current.revision() => Err(ReplaceError::Conflict),
            Some(_) => {
                records.insert(*next.request_id(), next.clone());
                Ok(())
            }
        }
    }

    async fn list(
        &self,
        filter: &RequestFilter,
        page: &RequestPageRequest,
    ) -> Result<Page<RequestRecord, RequestCursor>, StoreError> {
        let records = self.lock();
        let mut items: Vec<RequestRecord> = records
            .values()
            .filter(|r| filter.matches(r))
            .filter(|r| page.after.is_none_or(|c| c.precedes(r)))
            .cloned()
            .collect();
        items.sort_by(newest_first);
        items.truncate(page.size);
        Ok(Page::read(items, page.size, RequestCursor::after))
    }

    async fn unsettled(
        &self,
        after: Option<RequestCursor>,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        let records = self.lock();
        let mut items: Vec<RequestRecord> = records
            .values()
            .filter(|r| !r.is_settled())
            .filter(|r| {
                after.is_none_or(|c| {
                    (r.created_at(), *r.request_id()) > (c.created_at, c.request_id)
                })
            })
            .cloned()
            .collect();
        items.sort_by(|a, b| newest_first(b, a));
        items.truncate(limit);
        Ok(items)
    }

    async fn purge_settled(&self, cutoff: DateTime<Utc>, limit: usize) -> Result<u64, StoreError> {
        let mut records = self.lock();
        let due: Vec<RequestId> = records
            .values()
            .filter(|r| r.is_settled() && r.finished_at().is_some_and(|t| t <= cutoff))
            .take(limit)
            .map(|r| *r.request_id())
            .collect();
        for id in &due {
            records.remove(id);
        }
        Ok(due.len() as u64)
    }

    async fn write_whole(
        &self,
        requests: &[WholeRequest],
    ) -> Result<Option<Vec<WholeOutcome>>, StoreError> {
        let Some(orders) = &self.orders else {
            return Ok(None);
        };
        // The claim's lock order: orders, then records. Both held, so the whole batch appears
        // at once.
        let mut s = orders.lock().unwrap_or_else(PoisonError::into_inner);
        let mut records = self.lock();
        let mut out = Vec::with_capacity(requests.len());
        for w in requests {
            if records.contains_key(w.record.request_id()) {
                out.push(WholeOutcome::Exists);
                continue;
            }
            records.insert(*w.record.request_id(), w.record.clone());
            let mut created = 0;
            for o in &w.orders {
                if !s.by_id.contains_key(o.order_id()) {
                    s.put(o.clone());
                    created += 1;
                }
            }
            out.push(WholeOutcome::Written { created });
        }
        Ok(Some(out))
    }
}

fn first_ids(set: &BTreeSet<Key>, upto: DateTime<Utc>, limit: usize) -> Vec<OrderId> {
    set.iter()
        .take_while(|(t, _)| *t <= upto)
        .take(limit)
        .map(|(_, id)| *id)
        .collect()
}

#[async_trait]
impl OrderStore for MemoryOrders {
    async fn insert(&self, orders: &[Order]) -> Result<u64, StoreError> {
        let mut s = self.lock();
        let mut created = 0;
        for o in orders {
            if !s.by_id.contains_key(o.order_id()) {
                s.put(o.clone());
                created += 1;
            }
        }
        Ok(created)
    }

    async fn get(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        Ok(self.lock().by_id.get(id).cloned())
    }

    async fn query(
        &self,
        filter: &OrderFilter,
        page: &OrderPageRequest,
    ) -> Result<Page<Order, OrderCursor>, StoreError> {
        let s = self.lock();
        let start = page.after.map(|c| (c.created_at, c.order_id));
        let range = match start {
            Some(k) => s
                .by_time
                .range((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded)),
            None => s.by_time.range(..),
        };
        let items: Vec<Order> = range
            .filter_map(|(_, id)| s.by_id.get(id))
            .filter(|o| filter.matches(o))
            .take(page.size)
            .cloned()
            .collect();
        Ok(Page::read(items, page.size, OrderCursor::after))
    }

    async fn claim(
        &self,
        consumers: &Consumers,
        limit: usize,
        now: DateTime<Utc>,
        policy: &DeliveryPolicy,
    ) -> Result<Vec<Order>, StoreError> {
        let mut s = self.lock();
        let records = self.requests.lock();
        // The oldest `limit` deliverable orders of each consumer, then the oldest of those.
        let mut keys: Vec<Key> = Vec::new();
        for consumer in consumers.iter() {
            let Some(open) = s.open_by_consumer.get(&consumer) else {
                continue;
            };
            keys.extend(
                open.iter()
                    .filter(|(_, id)| {
                        s.by_id.get(id).is_some_and(|o| {
                            o.is_deliverable(now)
                                && MemoryRequests::delivers(&records, o.request_id())
                        })
                    })
                    .take(limit)
                    .copied(),
            );
        }
        drop(records);
        keys.sort_unstable();
        let picked: Vec<Order> = keys
            .iter()
            .take(limit)
            .filter_map(|(_, id)| s.by_id.get(id))
            .filter_map(|o| o.deliver(now, policy).ok())
            .collect();
        for o in &picked {
            s.put(o.clone());
        }
        Ok(picked)
    }

    async fn replace(&self, current: &Order, next: &Order) -> Result<(), ReplaceError> {
        let mut s = self.lock();
        match s.by_id.get(current.order_id()) {
            None => Err(ReplaceError::NotFound),
            Some(stored) if stored != current => Err(ReplaceError::Conflict),
            Some(_) => {
                s.put(next.clone());
                Ok(())
            }
        }
    }

    async fn next_due(
        &self,
        consumers: &Consumers,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let s = self.lock();
        let records = self.requests.lock();
        Ok(consumers
            .iter()
            .filter_map(|c| s.open_by_consumer.get(&c))
            .flatten()
            .filter_map(|(_, id)| s.by_id.get(id))
            .filter(|o| MemoryRequests::delivers(&records, o.request_id()))
            .filter_map(|o| o.becomes_deliverable_after(now))
            .min())
    }

    async fn end_pending(
        &self,
        request: &RequestId,
        end: PendingEnd,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        let mut s = self.lock();
        let ids = Self::pending_of(&s, request)
            .into_iter()
            .take(limit)
            .map(|(_, id)| id)
            .collect();
        Ok(s.apply_batch(ids, |o| o.end_pending(now, end).ok()))
    }

    async fn release_held(
        &self,
        request: &RequestId,
        below: u64,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Order>, StoreError> {
        let mut s = self.lock();
        let mut held: Vec<(u64, OrderId)> = Self::pending_of(&s, request)
            .into_iter()
            .filter_map(|(_, id)| s.by_id.get(&id))
            .filter(|o| o.is_held())
            .filter_map(|o| {
                o.position()
                    .filter(|p| *p < below)
                    .map(|p| (p, *o.order_id()))
            })
            .collect();
        held.sort_unstable();
        let mut released = Vec::new();
        for (_, id) in held.into_iter().take(limit) {
            if let Some(next) = s.by_id.get(&id).and_then(|o| o.release(now).ok()) {
                s.put(next.clone());
                released.push(next);
            }
        }
        Ok(released)
    }

    async fn result_groups(&self, request: &RequestId) -> Result<Vec<ResultGroup>, StoreError> {
        let s = self.lock();
        let mut groups: HashMap<(Status, i16, String), (u64, BTreeSet<String>)> = HashMap::new();
        for o in s
            .by_request
            .get(request)
            .into_iter()
            .flatten()
            .filter_map(|id| s.by_id.get(id))
            .filter(|o| o.status().is_terminal())
        {
            let (code, message) = o
                .result()
                .map_or((0, String::new()), |r| (r.code(), r.message().to_owned()));
            let (count, sample) = groups.entry((o.status(), code, message)).or_default();
            *count += 1;
            sample.insert(o.target().id().to_owned());
            if sample.len() > ResultGroup::SAMPLE {
                sample.pop_last();
            }
        }
        let mut out: Vec<ResultGroup> = groups
            .into_iter()
            .map(|((status, code, message), (count, sample))| ResultGroup {
                status,
                code,
                message,
                count,
                sample: sample.into_iter().collect(),
            })
            .collect();
        ResultGroup::sort(&mut out);
        out.truncate(ResultGroup::MAX_GROUPS);
        Ok(out)
    }

    async fn expire_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Batch, StoreError> {
        let mut s = self.lock();
        let due = first_ids(&s.pending_by_deadline, now, limit);
        Ok(s.apply_batch(due, |o| o.expire(now).ok()))
    }

    async fn give_up_unreported(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        let mut s = self.lock();
        let due = first_ids(&s.delivered_by_deadline, now, limit);
        Ok(s.apply_batch(due, |o| o.give_up(now).ok()))
    }

    async fn purge_finished(
        &self,
        cutoff: DateTime<Utc>,
        mode: RetentionMode,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        let mut s = self.lock();
        let due = first_ids(&s.finished, cutoff, limit);
        let mut batch = Batch {
            examined: due.len(),
            changed: 0,
        };
        for id in due {
            if let Some(old) = s.remove(&id) {
                if mode == RetentionMode::Archive {
                    s.archive.insert(id, old);
                }
                batch.changed += 1;
            }
        }
        Ok(batch)
    }

    async fn get_archived(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        Ok(self.lock().archive.get(id).cloned())
    }

    async fn progress(&self, request: &RequestId) -> Result<StatusCounts, StoreError> {
        let s = self.lock();
        let mut counts = StatusCounts::default();
        for id in s.by_request.get(request).into_iter().flatten() {
            if let Some(o) = s.by_id.get(id) {
                counts.count(o);
            }
        }
        Ok(counts)
    }

    async fn delete_request(&self, request: &RequestId) -> Result<u64, StoreError> {
        let mut s = self.lock();
        let ids: Vec<OrderId> = s
            .by_request
            .get(request)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let mut n = 0;
        for id in ids {
            if s.remove(&id).is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The agents registry, in memory.
#[derive(Debug, Default)]
pub struct MemoryAgents {
    state: Mutex<Agents>,
}

#[derive(Debug, Default)]
struct Agents {
    by_id: BTreeMap<AgentId, Agent>,
    members: HashMap<GroupName, BTreeSet<AgentId>>,
    keys: HashMap<AgentId, KeyHash>,
}

impl Agents {
    fn remove(&mut self, id: &AgentId) -> bool {
        let Some(old) = self.by_id.remove(id) else {
            return false;
        };
        self.keys.remove(id);
        for g in old.groups() {
            if let Some(m) = self.members.get_mut(g) {
                m.remove(id);
                if m.is_empty() {
                    self.members.remove(g);
                }
            }
        }
        true
    }

    fn put(&mut self, agent: &Agent) -> Upserted {
        let key = self.keys.remove(agent.id());
        let existed = self.remove(agent.id());
        if let Some(key) = key {
            self.keys.insert(agent.id().clone(), key);
        }
        for g in agent.groups() {
            self.members
                .entry(g.clone())
                .or_default()
                .insert(agent.id().clone());
        }
        self.by_id.insert(agent.id().clone(), agent.clone());
        if existed {
            Upserted::Updated
        } else {
            Upserted::Created
        }
    }
}

impl MemoryAgents {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Agents> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl AgentRegistry for MemoryAgents {
    async fn upsert(&self, agent: &Agent) -> Result<Upserted, StoreError> {
        Ok(self.lock().put(agent))
    }

    async fn upsert_many(&self, agents: &[Agent]) -> Result<u64, StoreError> {
        let mut s = self.lock();
        Ok(agents
            .iter()
            .filter(|a| s.put(a) == Upserted::Created)
            .count() as u64)
    }

    async fn set_key_hash(&self, id: &AgentId, hash: &KeyHash) -> Result<bool, StoreError> {
        let mut s = self.lock();
        if !s.by_id.contains_key(id) {
            return Ok(false);
        }
        s.keys.insert(id.clone(), hash.clone());
        Ok(true)
    }

    async fn set_key_hashes(&self, hashes: &[(AgentId, KeyHash)]) -> Result<u64, StoreError> {
        let mut s = self.lock();
        let mut stored = 0;
        for (id, hash) in hashes {
            if s.by_id.contains_key(id) {
                s.keys.insert(id.clone(), hash.clone());
                stored += 1;
            }
        }
        Ok(stored)
    }

    async fn registered(&self, ids: &[AgentId]) -> Result<Vec<AgentId>, StoreError> {
        let s = self.lock();
        let mut found: Vec<AgentId> = ids
            .iter()
            .filter(|id| s.by_id.contains_key(*id))
            .cloned()
            .collect();
        found.sort();
        found.dedup();
        Ok(found)
    }

    async fn key_hash(&self, id: &AgentId) -> Result<Option<KeyHash>, StoreError> {
        Ok(self.lock().keys.get(id).cloned())
    }

    async fn get(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        Ok(self.lock().by_id.get(id).cloned())
    }

    async fn delete(&self, id: &AgentId) -> Result<bool, StoreError> {
        Ok(self.lock().remove(id))
    }

    async fn list(&self, page: &AgentPageRequest) -> Result<Page<Agent, AgentId>, StoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let s = self.lock();
        let lower = page.after.clone().map_or(Unbounded, Excluded);
        let items: Vec<Agent> = match &page.group {
            Some(g) => s
                .members
                .get(g)
                .map(|m| {
                    m.range((lower, Unbounded))
                        .take(page.size)
                        .filter_map(|id| s.by_id.get(id).cloned())
                        .collect()
                })
                .unwrap_or_default(),
            None => s
                .by_id
                .range((lower, Unbounded))
                .take(page.size)
                .map(|(_, a)| a.clone())
                .collect(),
        };
        Ok(Page::read(items, page.size, |a| a.id().clone()))
    }

    async fn count(&self, group: Option<GroupName>) -> Result<u64, StoreError> {
        let s = self.lock();
        Ok(match group {
            Some(g) => s.members.get(&g).map_or(0, BTreeSet::len),
            None => s.by_id.len(),
        } as u64)
    }
}

/// The components registry, in memory: each registered component and its key's hash.
#[derive(Debug, Default)]
pub struct MemoryComponents {
    keys: Mutex<BTreeMap<ComponentName, KeyHash>>,
}

impl MemoryComponents {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<ComponentName, KeyHash>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl ComponentRegistry for MemoryComponents {
    async fn register(&self, name: &ComponentName, hash: &KeyHash) -> Result<Upserted, StoreError> {
        let mut keys = self.lock();
        if keys.contains_key(name) {
            return Ok(Upserted::Updated);
        }
        keys.insert(name.clone(), hash.clone());
        Ok(Upserted::Created)
    }

    async fn set_key_hash(&self, name: &ComponentName, hash: &KeyHash) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .get_mut(name)
            .map(|k| *k = hash.clone())
            .is_some())
    }

    async fn key_hash(&self, name: &ComponentName) -> Result<Option<KeyHash>, StoreError> {
        Ok(self.lock().get(name).cloned())
    }

    async fn list(
        &self,
        after: Option<ComponentName>,
        size: usize,
    ) -> Result<Page<ComponentName, ComponentName>, StoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let keys = self.lock();
        let items: Vec<ComponentName> = keys
            .range((after.map_or(Unbounded, Excluded), Unbounded))
            .take(size)
            .map(|(name, _)| name.clone())
            .collect();
        Ok(Page::read(items, size, Clone::clone))
    }

    async fn delete(&self, name: &ComponentName) -> Result<bool, StoreError> {
        Ok(self.lock().remove(name).is_some())
    }
}
