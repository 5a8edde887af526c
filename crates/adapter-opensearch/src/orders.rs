//! [`OrderStore`] over the orders index.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use cm_domain::{
    AgentId, CANCELLED, ComponentName, DeliveryPolicy, EXPIRED, Order, OrderId, PendingEnd,
    RequestId, SERVICE_RESULT_CODE, STOPPED, Status, TargetType,
};
use cm_ports::{
    Batch, Consumers, OrderCursor, OrderFilter, OrderPageRequest, OrderStore, Page, ReplaceError,
    ResultGroup, RetentionMode, StatusCounts, StoreError,
};
use opensearch::http::Method;
use serde_json::{Value, json};

use crate::bulk::{Applied, ItemOutcome, Meta, Need, Op, Ops};
use crate::client::BY_QUERY_BATCH;
use crate::error::{OsError, corrupt, kind};
use crate::mapping::Fields;
use crate::visibility::Fresh;
use crate::{Change, MAX_WINDOW, OpenSearchBackend, Versioned, doc_id};

/// Most search-and-write rounds of one claim (each round that loses a race to another poller
/// goes again).
const MAX_CLAIM_ROUNDS: usize = 32;

/// How many requests `next_due` looks at per kind of instant, earliest first, to find one that
/// passes the request gate.
const NEXT_DUE_REQUESTS: usize = 32;

/// About how many bytes one order takes in a bulk body (its action line and document).
const ORDER_BYTES: usize = 640;

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn term(field: &str, value: impl Into<Value>) -> Value {
    json!({"term": {field: value.into()}})
}

fn terms(field: &str, values: &[&str]) -> Value {
    json!({"terms": {field: values}})
}

fn range(field: &str, op: &str, t: DateTime<Utc>) -> Value {
    json!({"range": {field: {op: millis(t)}}})
}

/// Ascending `field`, then `order_id`.
fn sort_by(field: &str) -> Value {
    json!([{field: "asc"}, {(Fields::ORDER_ID): "asc"}])
}

/// Query order: `@timestamp`, then `order_id` (the order of [`OrderCursor`]).
pub(crate) fn stream_order() -> Value {
    sort_by(Fields::CREATED)
}

/// Not held back by rate control (`Order::is_held`). Orders written before rate control existed
/// have no `held` field: missing is false.
pub(crate) fn held() -> Value {
    term(Fields::HELD, true)
}

/// Orders the index says are deliverable at `now` (the domain's `Order::is_deliverable`): not
/// held, and pending, available (`not_before`, or else `@timestamp`, reached) and not past
/// `delivery_timestamp`; or sent and due for redelivery.
pub(crate) fn deliverable_at(now: DateTime<Utc>) -> Value {
    let available = json!({"bool": {
        "should": [
            range(Fields::NOT_BEFORE, "lte", now),
            {"bool": {
                "must_not": [{"exists": {"field": Fields::NOT_BEFORE}}],
                "filter": [range(Fields::CREATED, "lte", now)]
            }}
        ],
        "minimum_should_match": 1
    }});
    json!({"bool": {
        "should": [
            {"bool": {"filter": [
                term(Fields::STATUS, Status::Pending.as_str()),
                range(Fields::DELIVERY_DEADLINE, "gt", now),
                available
            ]}},
            {"bool": {"filter": [
                term(Fields::STATUS, Status::Sent.as_str()),
                range(Fields::REDELIVER_AT, "lte", now)
            ]}}
        ],
        "minimum_should_match": 1,
        "must_not": [held()]
    }})
}

/// Failures of the action (`Order::is_action_failure`): `failure`, except the service's own
/// ends of orders never handed out (code -1: expired, cancelled, stopped).
fn action_failure() -> Value {
    json!({"bool": {
        "filter": [term(Fields::STATUS, Status::Failure.as_str())],
        "must_not": [{"bool": {"filter": [
            term(Fields::RESULT_CODE, SERVICE_RESULT_CODE),
            terms(Fields::RESULT_MESSAGE, &[EXPIRED, CANCELLED, STOPPED])
        ]}}]
    }})
}

/// Requests with the earliest instant of each, and whether more requests exist beyond them.
type Earliest = (Vec<(RequestId, DateTime<Utc>)>, bool);

/// The earliest instants of one kind of `next_due`'s aggregation, each with its request: the
/// buckets of a `terms` on the request id ordered by their `min`, and whether requests beyond
/// them exist.
fn earliest_by_request(agg: &Value) -> Result<Earliest, StoreError> {
    let buckets = agg["r"]["buckets"]
        .as_array()
        .ok_or_else(|| corrupt(format!("next_due aggregation without buckets: {agg}")))?;
    let mut out = Vec::with_capacity(buckets.len());
    for b in buckets {
        let key = b["key"].as_str().unwrap_or_default();
        let request = RequestId::parse(key, Fields::REQUEST_ID)
            .map_err(|_| corrupt(format!("order with request id {key:?}")))?;
        if let Some(t) = min_value(b) {
            out.push((request, t));
        }
    }
    let more = agg["r"]["sum_other_doc_count"].as_u64().unwrap_or(0) > 0;
    Ok((out, more))
}

/// Why an order cannot be indexed under an earlier mapping (the Wazuh plugin's) that indexes
/// `command.action.args` as an `object`, if it cannot: an array of args must then hold only
/// objects (OpenSearch refuses an array of strings or numbers there). This service's template
/// stores `args` without indexing it, so indices it made take any shape.
fn unindexable(order: &Order) -> Option<StoreError> {
    fn only_objects(v: &Value) -> bool {
        match v {
            Value::Array(items) => items.iter().all(only_objects),
            Value::Object(_) | Value::Null => true,
            _ => false,
        }
    }
    let args = order.action().args();
    (args.is_array() && !only_objects(args)).then(|| StoreError::Rejected {
        request_id: *order.request_id(),
        field: "action.args".to_owned(),
        message: "is an array holding non-object values, which this index's mapping of \
                  command.action.args (an indexed object, from an earlier template) cannot \
                  index; send an object (e.g. {\"items\": [...]}) or an array of objects, or \
                  reindex into an index made by this service (see the README)"
            .to_owned(),
    })
}

/// What one round of conditional writes did.
#[derive(Debug, Default)]
struct Written {
    applied: Vec<Order>,
    conflicts: usize,
    failed: Vec<String>,
}

impl OpenSearchBackend {
    fn agent_term(&self, agent: &AgentId) -> Value {
        term(&self.inner.fields.order_agent, agent.as_str())
    }

    /// The orders of `consumers` (`Consumers::takes`): an agent's by `agent.id`, a component's
    /// by the `server` target naming it. A relay's 10,000 ids fit one `terms` clause each
    /// (`index.max_terms_count` is 65,536).
    pub(crate) fn consumers_filter(&self, consumers: &Consumers) -> Value {
        let mut should = Vec::new();
        if !consumers.agents().is_empty() {
            let ids: Vec<&str> = consumers.agents().iter().map(AgentId::as_str).collect();
            should.push(json!({"terms": {self.inner.fields.order_agent.as_str(): ids}}));
        }
        if !consumers.components().is_empty() {
            let names: Vec<&str> = consumers
                .components()
                .iter()
                .map(ComponentName::as_str)
                .collect();
            should.push(json!({"bool": {"filter": [
                term(Fields::TARGET_TYPE, TargetType::Server.as_str()),
                {"terms": {Fields::TARGET_ID: names}}
            ]}}));
        }
        json!({"bool": {"should": should, "minimum_should_match": 1}})
    }

    /// Writes each `next` only if the stored order still has the version it was computed from.
    async fn write_conditionally(&self, changes: Vec<Change>) -> Result<Written, StoreError> {
        if changes.is_empty() {
            return Ok(Written::default());
        }
        let mut ops = Ops::with_capacity(changes.len(), ORDER_BYTES);
        for c in &changes {
            let meta =
                Meta::new(&self.inner.orders, c.id.as_str()).if_version(c.seq_no, c.primary_term);
            ops.push(Op::Index, &meta, Some(&c.next))?;
        }
        let result = self.bulk(&ops, Need::Failures).await;
        let mut written = Written::default();
        if let Ok(outcomes) = &result {
            for (Change { next, .. }, outcome) in changes.into_iter().zip(outcomes) {
                match outcome {
                    ItemOutcome::Done { .. } => written.applied.push(next),
                    o if o.is_conflict() => written.conflicts += 1,
                    o => written
                        .failed
                        .push(format!("{}: {}", next.order_id(), o.describe())),
                }
            }
        }
        self.wrote(&written.applied).await;
        result?;
        Ok(written)
    }

    /// Ids, versions of a claim's candidates: the orders of `consumers` that the index (as of its
    /// last refresh) says are deliverable at `now`, oldest first, except `skip` (read by id
    /// instead).
    async fn deliverable_candidates(
        &self,
        consumers: &Consumers,
        now: DateTime<Utc>,
        size: usize,
        skip: &[String],
        gated: &HashSet<RequestId>,
    ) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let gated: Vec<String> = gated.iter().map(ToString::to_string).collect();
        let body = json!({
            "size": size,
            "_source": false,
            "seq_no_primary_term": true,
            "track_total_hits": false,
            "sort": stream_order(),
            "query": {"bool": {
                "filter": [self.consumers_filter(consumers), deliverable_at(now)],
                "must_not": [
                    {"ids": {"values": skip}},
                    {"terms": {(Fields::REQUEST_ID): gated}}
                ]
            }}
        });
        self.search(body)
            .await?
            .iter()
            .map(|hit| {
                match (
                    hit["_id"].as_str(),
                    hit["_seq_no"].as_i64(),
                    hit["_primary_term"].as_i64(),
                ) {
                    (Some(id), Some(seq), Some(term)) => Ok((id.to_owned(), seq, term)),
                    _ => Err(corrupt(format!("search hit without id or version: {hit}"))),
                }
            })
            .collect()
    }

    /// The recent orders of `consumers` (written by this instance since the last refresh), as
    /// ids.
    fn recent_ids(&self, consumers: &Consumers) -> Vec<String> {
        self.visibility()
            .recent(consumers)
            .iter()
            .map(doc_id)
            .collect()
    }

    /// One maintenance batch: refresh, search up to `limit` candidates with their versions,
    /// apply `step` (a domain transition) and write the results conditionally.
    async fn sweep(
        &self,
        query: Value,
        sort: Value,
        limit: usize,
        step: impl Fn(&Order) -> Option<Order>,
    ) -> Result<Batch, StoreError> {
        let candidates = self.sweep_candidates(query, sort, limit).await?;
        let examined = candidates.len();
        let changes = candidates
            .iter()
            .filter_map(|v| step(&v.order).map(|next| v.change(next)))
            .collect();
        let written = self.write_conditionally(changes).await?;
        if !written.failed.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "{} of {examined} orders could not be changed: {}",
                written.failed.len(),
                written.failed.join("; ")
            )));
        }
        Ok(Batch {
            examined,
            changed: written.applied.len(),
        })
    }

    async fn sweep_candidates(
        &self,
        query: Value,
        sort: Value,
        limit: usize,
    ) -> Result<Vec<Versioned>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Stale hits would end a drain early (a batch of orders changed meanwhile changes
        // nothing): see everything written before this batch, by any instance.
        self.make_fresh(Fresh::Always).await?;
        let body = json!({
            "size": limit.min(MAX_WINDOW),
            "seq_no_primary_term": true,
            "track_total_hits": false,
            "sort": sort,
            "query": query
        });
        self.search(body)
            .await?
            .iter()
            .map(Versioned::read)
            .collect()
    }

    /// Moves finished orders to the archive: index each there (the latest version wins), then
    /// delete it from the stream if it is still the version archived.
    async fn archive(&self, candidates: &[Versioned]) -> Result<usize, StoreError> {
        let mut copies = Ops::with_capacity(candidates.len(), ORDER_BYTES);
        for v in candidates {
            let meta = Meta::new(&self.inner.archive, v.id.as_str());
            copies.push(Op::Index, &meta, Some(&v.order))?;
        }
        let outcomes = self.bulk(&copies, Need::Failures).await?;
        let mut failed = Vec::new();
        let mut archived = Vec::new();
        for (v, outcome) in candidates.iter().zip(&outcomes) {
            match outcome {
                ItemOutcome::Done { .. } => archived.push(v),
                other => failed.push(format!("{}: {}", v.order.order_id(), other.describe())),
            }
        }
        let removed = self.delete_versions(&archived).await?;
        if failed.is_empty() {
            Ok(removed)
        } else {
            Err(StoreError::Unavailable(format!(
                "{} orders could not be archived: {}",
                failed.len(),
                failed.join("; ")
            )))
        }
    }

    /// Deletes each order if it is still at its version; returns how many were deleted.
    async fn delete_versions(&self, versions: &[&Versioned]) -> Result<usize, StoreError> {
        if versions.is_empty() {
            return Ok(0);
        }
        let mut ops = Ops::with_capacity(versions.len(), 128);
        for v in versions {
            let meta =
                Meta::new(&self.inner.orders, v.id.as_str()).if_version(v.seq_no, v.primary_term);
            ops.push(Op::Delete, &meta, None::<&()>)?;
        }
        let outcomes = self.bulk(&ops, Need::Results).await;
        self.wrote(std::iter::empty::<&Order>()).await;
        let mut deleted = 0;
        let mut failed = Vec::new();
        for (v, outcome) in versions.iter().zip(outcomes?) {
            match &outcome {
                ItemOutcome::Done {
                    result: Some(Applied::Deleted),
                } => deleted += 1,
                // Gone or changed meanwhile (another instance's retention got there first).
                ItemOutcome::Done { .. }
                | ItemOutcome::Failed {
                    status: 404 | 409, ..
                } => {}
                other => failed.push(format!("{}: {}", v.order.order_id(), other.describe())),
            }
        }
        if failed.is_empty() {
            Ok(deleted)
        } else {
            Err(StoreError::Unavailable(format!(
                "{} orders could not be deleted: {}",
                failed.len(),
                failed.join("; ")
            )))
        }
    }

    fn filter_clauses(&self, filter: &OrderFilter) -> Vec<Value> {
        // Exhaustive, so a new filter field does not compile until it is translated here.
        let OrderFilter {
            status,
            agent_id,
            target_type,
            target_id,
            request_id,
            action,
            since,
            until,
        } = filter;
        let mut clauses = Vec::new();
        if let Some(s) = status {
            clauses.push(term(Fields::STATUS, s.as_str()));
        }
        if let Some(a) = agent_id {
            clauses.push(self.agent_term(a));
        }
        if let Some(t) = target_type {
            clauses.push(term(Fields::TARGET_TYPE, t.as_str()));
        }
        if let Some(t) = target_id {
            clauses.push(term(Fields::TARGET_ID, t.as_str()));
        }
        if let Some(r) = request_id {
            clauses.push(term(Fields::REQUEST_ID, r.to_string()));
        }
        if let Some(a) = action {
            clauses.push(term(Fields::ACTION_NAME, a.as_str()));
        }
        if let Some(t) = since {
            clauses.push(range(Fields::CREATED, "gte", *t));
        }
        if let Some(t) = until {
            clauses.push(range(Fields::CREATED, "lt", *t));
        }
        clauses
    }

    /// Listings see this instance's own writes, and others' within the poll interval.
    fn listing_freshness(&self) -> Fresh {
        Fresh::IfDirtyOrOlder(self.inner.poll_interval)
    }
}

/// One bucket of `result_groups`' `multi_terms`: key (code, message), count, sample.
fn result_group(status: Status, bucket: &Value) -> Result<ResultGroup, StoreError> {
    let bad = || corrupt(format!("result group bucket unreadable: {bucket}"));
    let key = bucket["key"].as_array().ok_or_else(bad)?;
    let code = key
        .first()
        .and_then(|c| {
            c.as_i64()
                .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
        })
        .and_then(|c| i16::try_from(c).ok())
        .ok_or_else(bad)?;
    let message = key
        .get(1)
        .and_then(Value::as_str)
        .ok_or_else(bad)?
        .to_owned();
    let sample = bucket["sample"]["buckets"]
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|b| b["key"].as_str().map(str::to_owned).ok_or_else(bad))
        .collect::<Result<Vec<String>, StoreError>>()?;
    Ok(ResultGroup {
        status,
        code,
        message,
        count: bucket["doc_count"].as_u64().ok_or_else(bad)?,
        sample,
    })
}

/// A `min` aggregation's value (epoch milliseconds), when it has one.
fn min_value(agg: &Value) -> Option<DateTime<Utc>> {
    #[allow(clippy::cast_possible_truncation)] // dates are whole milliseconds
    let millis = agg["t"]["value"].as_f64()? as i64;
    Utc.timestamp_millis_opt(millis).single()
}

impl OpenSearchBackend {
    /// [`OrderStore::insert`], answering the orders created (those stored already are left as
    /// they are).
    pub(crate) async fn insert_orders<'a>(
        &self,
        orders: &[&'a Order],
    ) -> Result<Vec<&'a Order>, StoreError> {
        if let Some(refused) = self
            .inner
            .fields
            .args_indexed
            .then(|| orders.iter().copied().find_map(unindexable))
            .flatten()
        {
            return Err(refused);
        }
        // Each order goes straight into the NDJSON body: its id (serialised as `doc_id` writes
        // it) and its serde form.
        let mut ops = Ops::with_capacity(orders.len(), ORDER_BYTES);
        for o in orders.iter().copied() {
            ops.push(
                Op::Create,
                &Meta::new(&self.inner.orders, o.order_id()),
                Some(o),
            )?;
        }
        let result = self.bulk(&ops, Need::Failures).await;
        let mut created = Vec::new();
        let mut failed = Vec::new();
        if let Ok(outcomes) = &result {
            for (o, outcome) in orders.iter().copied().zip(outcomes) {
                match outcome {
                    ItemOutcome::Done { .. } => created.push(o),
                    // Already stored: left as it is, not counted.
                    other if other.is_conflict() => {}
                    other => failed.push((o, other.clone())),
                }
            }
        }
        self.wrote(created.iter().copied()).await;
        result?;
        if let Some((o, outcome)) = failed.first() {
            let message = format!(
                "{} of {} orders were not written (first: order {}: {})",
                failed.len(),
                orders.len(),
                o.order_id(),
                outcome.describe()
            );
            // A document the mapping refuses will be refused again: not worth a retry.
            let refused = failed.iter().all(|(_, f)| {
                matches!(f, ItemOutcome::Failed { status, kind: k, .. }
                    if *status == 400 || k == kind::MAPPER_PARSING)
            });
            return Err(if refused {
                // The mapping refuses what the caller sent (e.g. an argument whose type clashes
                // with the one dynamic mapping already chose): its input, not storage, is at
                // fault.
                StoreError::Rejected {
                    request_id: *o.request_id(),
                    field: "action.args".to_owned(),
                    message: format!("does not fit the index mapping: {}", outcome.describe()),
                }
            } else {
                StoreError::Unavailable(message)
            });
        }
        Ok(created)
    }
}

#[async_trait]
impl OrderStore for OpenSearchBackend {
    async fn insert(&self, orders: &[Order]) -> Result<u64, StoreError> {
        let orders: Vec<&Order> = orders.iter().collect();
        Ok(self.insert_orders(&orders).await?.len() as u64)
    }

    async fn get(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        Ok(self.get_versioned(id).await?.map(|v| v.order))
    }

    async fn query(
        &self,
        filter: &OrderFilter,
        page: &OrderPageRequest,
    ) -> Result<Page<Order, OrderCursor>, StoreError> {
        if page.size == 0 {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        self.make_fresh(self.listing_freshness()).await?;
        let size = page.size.min(MAX_WINDOW);
        let mut body = json!({
            "size": size,
            "track_total_hits": false,
            "sort": stream_order(),
            "query": {"bool": {"filter": self.filter_clauses(filter)}}
        });
        if let Some(after) = page.after {
            body["search_after"] = json!([millis(after.created_at), doc_id(&after.order_id)]);
        }
        let items = self
            .search(body)
            .await?
            .iter()
            .map(|hit| {
                serde_json::from_value::<Order>(hit["_source"].clone()).map_err(|e| {
                    corrupt(format!(
                        "order document {} does not decode: {e}",
                        hit["_id"]
                    ))
                })
            })
            .collect::<Result<Vec<Order>, StoreError>>()?;
        Ok(Page::read(items, page.size, OrderCursor::after))
    }

    async fn claim(
        &self,
        consumers: &Consumers,
        limit: usize,
        now: DateTime<Utc>,
        policy: &DeliveryPolicy,
    ) -> Result<Vec<Order>, StoreError> {
        if limit == 0 || consumers.is_empty() {
            return Ok(Vec::new());
        }
        // Other instances' orders: visible once the index refreshed after they were written.
        self.make_fresh(Fresh::IfOlder(self.inner.poll_interval))
            .await?;
        let mut claimed: Vec<Order> = Vec::new();
        let mut refreshed = false;
        // Requests whose record does not deliver: their orders are left out of later searches.
        let mut gated: HashSet<RequestId> = HashSet::new();
        for _ in 0..MAX_CLAIM_ROUNDS {
            let want = limit - claimed.len();
            let recent = self.recent_ids(consumers);
            let page = (want.saturating_mul(2) + 16).min(MAX_WINDOW);
            let hits = self
                .deliverable_candidates(consumers, now, page, &recent, &gated)
                .await?;
            let full_page = hits.len() == page;
            let taken: HashSet<String> = claimed.iter().map(|o| doc_id(o.order_id())).collect();
            let mut ids: Vec<String> = recent;
            ids.extend(hits.iter().map(|(id, _, _)| id.clone()));
            let mut seen = HashSet::new();
            ids.retain(|id| !taken.contains(id) && seen.insert(id.clone()));
            if ids.is_empty() {
                break;
            }
            // The domain decides, on realtime reads.
            let current = self.mget(&ids).await?;
            let by_id: HashMap<String, &Versioned> =
                current.iter().map(|v| (v.id.clone(), v)).collect();
            let stale = hits.iter().any(|(id, seq, term)| {
                by_id.get(id).is_none_or(|v| {
                    (v.seq_no, v.primary_term) != (*seq, *term) || !v.order.is_deliverable(now)
                })
            });
            let mut due: Vec<&Versioned> = current
                .iter()
                .filter(|v| consumers.takes(&v.order) && v.order.is_deliverable(now))
                .collect();
            // The request gate, before any order is marked sent: OpenSearch cannot join the
            // orders with their records, so one realtime `_mget` reads the records of the
            // requests not seen yet (see `held_back` for why that is exact).
            let unseen: HashSet<RequestId> = due
                .iter()
                .map(|v| *v.order.request_id())
                .filter(|r| !gated.contains(r))
                .collect();
            let newly_gated = self.held_back(&unseen).await?;
            let gated_more = !newly_gated.is_empty();
            gated.extend(newly_gated);
            due.retain(|v| !gated.contains(v.order.request_id()));
            due.sort_by_key(|v| (v.order.created_at(), *v.order.order_id()));
            due.truncate(want);
            let changes: Vec<Change> = due
                .iter()
                .filter_map(|v| v.order.deliver(now, policy).ok().map(|next| v.change(next)))
                .collect();
            let mut conflicts = 0;
            if !changes.is_empty() {
                let written = self.write_conditionally(changes).await?;
                conflicts = written.conflicts;
                claimed.extend(written.applied);
                if !written.failed.is_empty() {
                    if claimed.is_empty() {
                        return Err(StoreError::Unavailable(format!(
                            "no order could be marked sent: {}",
                            written.failed.join("; ")
                        )));
                    }
                    break;
                }
            }
            if claimed.len() >= limit {
                break;
            }
            // A full page of stale hits may hide deliverable orders behind it: look again on
            // a refreshed index.
            let look_again = full_page && stale;
            // A full page with orders of requests that do not deliver: search again without
            // those requests.
            let skip_gated = full_page && gated_more;
            if look_again && !refreshed {
                self.make_fresh(Fresh::Always).await?;
                refreshed = true;
            } else if conflicts == 0 && !look_again && !skip_gated {
                break;
            }
        }
        claimed.sort_by_key(|o| (o.created_at(), *o.order_id()));
        Ok(claimed)
    }

    async fn replace(&self, current: &Order, next: &Order) -> Result<(), ReplaceError> {
        if current.order_id() != next.order_id() {
            return Err(ReplaceError::Conflict);
        }
        let stored = self
            .get_versioned(current.order_id())
            .await?
            .ok_or(ReplaceError::NotFound)?;
        if stored.order != *current {
            return Err(ReplaceError::Conflict);
        }
        let seq_no = stored.seq_no.to_string();
        let primary_term = stored.primary_term.to_string();
        let body = serde_json::to_value(next).map_err(|e| ReplaceError::Store(corrupt(e)))?;
        let result = self
            .http()
            .call(
                Method::Put,
                &format!("/{}/_doc/{}", self.inner.orders, doc_id(next.order_id())),
                &[
                    ("if_seq_no", seq_no.as_str()),
                    ("if_primary_term", primary_term.as_str()),
                ],
                Some(body),
            )
            .await;
        let applied = matches!(&result, Ok(a) if a.is_success());
        self.wrote(applied.then_some(next)).await;
        let answer = result?;
        match answer.status {
            200 | 201 => Ok(()),
            409 => Err(ReplaceError::Conflict),
            status => Err(OsError::from_answer(status, &answer.body).into()),
        }
    }

    async fn next_due(
        &self,
        consumers: &Consumers,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        if consumers.is_empty() {
            return Ok(None);
        }
        self.make_fresh(Fresh::IfOlder(self.inner.poll_interval))
            .await?;
        let recent = self.recent_ids(consumers);
        let pending = term(Fields::STATUS, Status::Pending.as_str());
        // Per kind of instant, its earliest requests (to apply the request gate to).
        let by_request = |field: &str| {
            json!({
                "terms": {
                    "field": Fields::REQUEST_ID,
                    "size": NEXT_DUE_REQUESTS,
                    "order": {"t": "asc"}
                },
                "aggs": {"t": {"min": {"field": field}}}
            })
        };
        let body = json!({
            "size": 0,
            "track_total_hits": false,
            "query": {"bool": {
                "filter": [self.consumers_filter(consumers)],
                // A held order becomes deliverable only when released.
                "must_not": [{"ids": {"values": recent}}, held()]
            }},
            "aggs": {
                "not_before": {
                    "filter": {"bool": {"filter": [pending, range(Fields::NOT_BEFORE, "gt", now)]}},
                    "aggs": {"r": by_request(Fields::NOT_BEFORE)}
                },
                "created": {
                    "filter": {"bool": {
                        "filter": [pending, range(Fields::CREATED, "gt", now)],
                        "must_not": [{"exists": {"field": Fields::NOT_BEFORE}}]
                    }},
                    "aggs": {"r": by_request(Fields::CREATED)}
                },
                "redeliver": {
                    "filter": {"bool": {"filter": [
                        term(Fields::STATUS, Status::Sent.as_str()),
                        range(Fields::REDELIVER_AT, "gt", now)
                    ]}},
                    "aggs": {"r": by_request(Fields::REDELIVER_AT)}
                }
            }
        });
        let answer = self.search_answer(body).await?;
        let aggs = &answer["aggregations"];
        let kinds = ["not_before", "created", "redeliver"]
            .iter()
            .map(|name| earliest_by_request(&aggs[*name]))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let from_recent: Vec<(RequestId, DateTime<Utc>)> = self
            .mget(&recent)
            .await?
            .iter()
            .filter(|v| consumers.takes(&v.order))
            .filter_map(|v| {
                v.order
                    .becomes_deliverable_after(now)
                    .map(|t| (*v.order.request_id(), t))
            })
            .collect();
        let requests: HashSet<RequestId> = kinds
            .iter()
            .flat_map(|(buckets, _)| buckets.iter().map(|(r, _)| *r))
            .chain(from_recent.iter().map(|(r, _)| *r))
            .collect();
        let gated = self.held_back(&requests).await?;
        let passes = |(r, t): &(RequestId, DateTime<Utc>)| (!gated.contains(r)).then_some(*t);
        let from_index = kinds.iter().filter_map(|(buckets, more)| {
            // The earliest request that passes the gate; when every one looked at is gated and
            // there are more, the latest instant looked at: no later than any of theirs (an
            // early wake-up, never a missed order).
            buckets
                .iter()
                .find_map(passes)
                .or_else(|| more.then(|| buckets.last().map(|(_, t)| *t)).flatten())
        });
        Ok(from_index
            .chain(from_recent.iter().filter_map(passes))
            .min())
    }

    async fn end_pending(
        &self,
        request: &RequestId,
        end: PendingEnd,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        // Held or not.
        let query = json!({"bool": {"filter": [
            term(Fields::REQUEST_ID, request.to_string()),
            term(Fields::STATUS, Status::Pending.as_str())
        ]}});
        self.sweep(query, stream_order(), limit, |o| {
            o.end_pending(now, end).ok()
        })
        .await
    }

    async fn release_held(
        &self,
        request: &RequestId,
        below: u64,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Order>, StoreError> {
        if below == 0 {
            return Ok(Vec::new());
        }
        let query = json!({"bool": {"filter": [
            term(Fields::REQUEST_ID, request.to_string()),
            term(Fields::STATUS, Status::Pending.as_str()),
            held(),
            {"range": {(Fields::POSITION): {"lt": below}}}
        ]}});
        let candidates = self
            .sweep_candidates(query, sort_by(Fields::POSITION), limit)
            .await?;
        let examined = candidates.len();
        let changes = candidates
            .iter()
            .filter(|v| v.order.position().is_some_and(|p| p < below))
            .filter_map(|v| v.order.release(now).ok().map(|next| v.change(next)))
            .collect();
        // Those changed meanwhile were released (or ended) by someone else.
        let written = self.write_conditionally(changes).await?;
        if !written.failed.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "{} of {examined} held orders could not be released: {}",
                written.failed.len(),
                written.failed.join("; ")
            )));
        }
        let mut released = written.applied;
        released.sort_by_key(|o| (o.position(), *o.order_id()));
        Ok(released)
    }

    async fn result_groups(&self, request: &RequestId) -> Result<Vec<ResultGroup>, StoreError> {
        self.make_fresh(self.listing_freshness()).await?;
        // One exact top list per finished status: the largest groups overall are among the
        // largest of their status, whatever the ties (a `multi_terms` on the status too would
        // break ties by the status's name, not by `Status`'s order).
        let groups = || {
            json!({
                "multi_terms": {
                    "terms": [
                        {"field": Fields::RESULT_CODE, "missing": 0},
                        {"field": Fields::RESULT_MESSAGE, "missing": ""}
                    ],
                    "size": ResultGroup::MAX_GROUPS,
                    "order": [{"_count": "desc"}, {"_key": "asc"}]
                },
                "aggs": {"sample": {"terms": {
                    "field": Fields::TARGET_ID,
                    "size": ResultGroup::SAMPLE,
                    "order": {"_key": "asc"}
                }}}
            })
        };
        let finished = [Status::Success, Status::Failure];
        let mut aggs = serde_json::Map::new();
        for status in finished {
            aggs.insert(
                status.as_str().to_owned(),
                json!({
                    "filter": term(Fields::STATUS, status.as_str()),
                    "aggs": {"groups": groups()}
                }),
            );
        }
        let body = json!({
            "size": 0,
            "track_total_hits": false,
            "query": {"bool": {"filter": [term(Fields::REQUEST_ID, request.to_string())]}},
            "aggs": aggs
        });
        let answer = self.search_answer(body).await?;
        let mut out = Vec::new();
        for status in finished {
            let buckets = answer["aggregations"][status.as_str()]["groups"]["buckets"]
                .as_array()
                .ok_or_else(|| corrupt(format!("result groups aggregation missing: {answer}")))?;
            for b in buckets {
                out.push(result_group(status, b)?);
            }
        }
        ResultGroup::sort(&mut out);
        out.truncate(ResultGroup::MAX_GROUPS);
        Ok(out)
    }

    /// A search window (10,000), whatever is configured. Every batch costs a refresh and a
    /// request, whatever its size (the node works through one in scroll batches of its own),
    /// so a smaller batch pays them more often; and the sweeps that search their candidates
    /// (`give_up_unreported`, `purge_finished`) find at most a search window, which the drain
    /// would take for the end of a larger batch.
    fn sweep_batch(&self, _configured: usize) -> usize {
        MAX_WINDOW
    }

    async fn expire_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Batch, StoreError> {
        if limit == 0 {
            return Ok(Batch::default());
        }
        // Stale hits would end a drain early: see everything written before this batch.
        self.make_fresh(Fresh::Always).await?;
        // One `_update_by_query` instead of search, decode, transition, encode, `_bulk`: every
        // order `Order::is_expired` accepts changes the same way (`Order::expiry_patch`, a merge
        // patch of `command`: its `null` members removed, the rest put). Each document is
        // written only if it is still the version the query found (a changed one is a version
        // conflict, skipped), so no order is expired after it was claimed, or twice. Held
        // orders never expire: left out by the query, so a batch is never made only of orders
        // that cannot change (which would end the drain early).
        let query = json!({"bool": {
            "filter": [
                term(Fields::STATUS, Status::Pending.as_str()),
                range(Fields::DELIVERY_DEADLINE, "lte", now)
            ],
            "must_not": [held()]
        }});
        let Value::Object(members) = serde_json::to_value(Order::expiry_patch(now))
            .map_err(|e| corrupt(format!("expiry patch cannot be encoded: {e}")))?
        else {
            return Err(corrupt("the expiry patch is not a JSON object"));
        };
        let (removed, set): (Vec<_>, Vec<_>) = members.into_iter().partition(|(_, v)| v.is_null());
        let removed: Vec<String> = removed.into_iter().map(|(k, _)| k).collect();
        let set: serde_json::Map<String, Value> = set.into_iter().collect();
        let body = json!({
            "max_docs": limit,
            "query": query,
            "script": {
                "lang": "painless",
                "source": "ctx._source.command.putAll(params.set); \
                           for (def k : params.remove) { ctx._source.command.remove(k); }",
                "params": {"set": set, "remove": removed}
            }
        });
        let scroll_size = limit.min(MAX_WINDOW).to_string();
        let answer = self
            .http()
            .ok(
                Method::Post,
                &format!("/{}/_update_by_query", self.inner.orders),
                &[("conflicts", "proceed"), ("scroll_size", &scroll_size)],
                Some(body),
            )
            .await?;
        let changed = answer["updated"].as_u64().unwrap_or(0);
        // Searches (listings, counts) of this instance must see these writes: mark it dirty.
        self.wrote(std::iter::empty::<&Order>()).await;
        if let Some(failures) = answer["failures"].as_array()
            && !failures.is_empty()
        {
            return Err(StoreError::Unavailable(format!(
                "{} orders could not be expired: {}",
                failures.len(),
                Value::Array(failures.clone())
            )));
        }
        let examined = answer["total"].as_u64().unwrap_or(changed);
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(Batch {
            examined: count(examined).min(limit),
            changed: count(changed),
        })
    }

    async fn give_up_unreported(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        let query = json!({"bool": {"filter": [
            terms(Fields::STATUS, &[Status::Sent.as_str(), Status::InProgress.as_str()]),
            range(Fields::RESULT_DEADLINE, "lte", now)
        ]}});
        let sort = sort_by(Fields::RESULT_DEADLINE);
        self.sweep(query, sort, limit, |o| o.give_up(now).ok())
            .await
    }

    async fn purge_finished(
        &self,
        cutoff: DateTime<Utc>,
        mode: RetentionMode,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        let query = json!({"bool": {"filter": [
            terms(Fields::STATUS, &[Status::Success.as_str(), Status::Failure.as_str()]),
            range(Fields::FINISHED_AT, "lte", cutoff)
        ]}});
        let sort = sort_by(Fields::FINISHED_AT);
        let candidates = self.sweep_candidates(query, sort, limit).await?;
        let examined = candidates.len();
        let due: Vec<Versioned> = candidates
            .into_iter()
            .filter(|v| v.order.finished_by(cutoff))
            .collect();
        let changed = match mode {
            RetentionMode::Delete => {
                self.delete_versions(&due.iter().collect::<Vec<_>>())
                    .await?
            }
            RetentionMode::Archive => self.archive(&due).await?,
        };
        Ok(Batch { examined, changed })
    }

    async fn get_archived(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        let answer = self
            .http()
            .call(
                Method::Get,
                &format!("/{}/_doc/{}", self.inner.archive, doc_id(id)),
                &[],
                None,
            )
            .await?;
        match answer.status {
            200 => serde_json::from_value(answer.body["_source"].clone())
                .map(Some)
                .map_err(|e| corrupt(format!("archived order {id} does not decode: {e}"))),
            404 if answer.body["found"] == false => Ok(None),
            status => Err(OsError::from_answer(status, &answer.body).into()),
        }
    }

    async fn progress(&self, request: &RequestId) -> Result<StatusCounts, StoreError> {
        self.make_fresh(self.listing_freshness()).await?;
        let body = json!({
            "size": 0,
            "track_total_hits": false,
            "query": {"bool": {"filter": [term(Fields::REQUEST_ID, request.to_string())]}},
            "aggs": {
                "status": {"terms": {"field": Fields::STATUS, "size": 16}},
                "errors": {"filter": action_failure()}
            }
        });
        let answer = self.search_answer(body).await?;
        let buckets = answer["aggregations"]["status"]["buckets"]
            .as_array()
            .ok_or_else(|| corrupt(format!("status aggregation missing: {answer}")))?;
        let mut counts = StatusCounts::default();
        for bucket in buckets {
            let key = bucket["key"].as_str().unwrap_or_default();
            let status = Status::parse(key, Fields::STATUS)
                .map_err(|_| corrupt(format!("unknown status {key:?} in request {request}")))?;
            counts.add(status, bucket["doc_count"].as_u64().unwrap_or(0));
        }
        counts.errors = answer["aggregations"]["errors"]["doc_count"]
            .as_u64()
            .ok_or_else(|| corrupt(format!("errors aggregation missing: {answer}")))?;
        Ok(counts)
    }

    async fn delete_request(&self, request: &RequestId) -> Result<u64, StoreError> {
        // `_delete_by_query` sees only what the index has refreshed.
        self.make_fresh(Fresh::Always).await?;
        let answer = self
            .http()
            .ok(
                Method::Post,
                &format!("/{}/_delete_by_query", self.inner.orders),
                &[
                    ("conflicts", "proceed"),
                    ("refresh", "true"),
                    ("scroll_size", BY_QUERY_BATCH),
                ],
                Some(json!({"query": term(Fields::REQUEST_ID, request.to_string())})),
            )
            .await;
        self.wrote(std::iter::empty::<&Order>()).await;
        let answer = answer?;
        if let Some(failure) = answer["failures"].as_array().and_then(|f| f.first()) {
            return Err(StoreError::Unavailable(format!(
                "deleting the orders of request {request} failed: {failure}"
            )));
        }
        Ok(answer["deleted"].as_u64().unwrap_or(0))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let answer = self
            .http()
            .call(Method::Head, &format!("/{}", self.inner.orders), &[], None)
            .await?;
        match answer.status {
            200 => Ok(()),
            404 => Err(StoreError::Unavailable(format!(
                "the orders index {} does not exist",
                self.inner.orders
            ))),
            status => Err(OsError::from_answer(status, &answer.body).into()),
        }
    }

    async fn first_due(
        &self,
        agents: &[AgentId],
        now: DateTime<Utc>,
    ) -> Result<Vec<Option<DateTime<Utc>>>, StoreError> {
        if agents.is_empty() {
            return Ok(Vec::new());
        }
        // What a claim would see: others' orders once the index refreshed after them, this
        // instance's own written since through realtime reads (as `next_due` does).
        self.make_fresh(Fresh::IfOlder(self.inner.poll_interval))
            .await?;
        // Read before the search (as `claim` does), so that a refresh in between cannot leave
        // an order out of both.
        let recent: Vec<String> = self
            .visibility()
            .recent(&Consumers::new(agents.to_vec(), Vec::new()))
            .iter()
            .map(doc_id)
            .collect();
        let field = self.inner.fields.order_agent.as_str();
        let ids: Vec<&str> = agents.iter().map(AgentId::as_str).collect();
        let pending = term(Fields::STATUS, Status::Pending.as_str());
        let min_of = |field: &str| json!({"t": {"min": {"field": field}}});
        // Per agent: does it have an order deliverable now, and else the earliest instant one
        // becomes deliverable by itself (the kinds of `next_due`, without the request gate).
        let body = json!({
            "size": 0,
            "track_total_hits": false,
            "query": {"bool": {
                "filter": [{"terms": {field: ids}}],
                "must_not": [{"ids": {"values": recent}}, held()]
            }},
            "aggs": {"agent": {
                "terms": {"field": field, "size": agents.len()},
                "aggs": {
                    "now": {"filter": deliverable_at(now)},
                    "not_before": {
                        "filter": {"bool": {"filter": [
                            pending.clone(),
                            range(Fields::NOT_BEFORE, "gt", now)
                        ]}},
                        "aggs": min_of(Fields::NOT_BEFORE)
                    },
                    "created": {
                        "filter": {"bool": {
                            "filter": [pending, range(Fields::CREATED, "gt", now)],
                            "must_not": [{"exists": {"field": Fields::NOT_BEFORE}}]
                        }},
                        "aggs": min_of(Fields::CREATED)
                    },
                    "redeliver": {
                        "filter": {"bool": {"filter": [
                            term(Fields::STATUS, Status::Sent.as_str()),
                            range(Fields::REDELIVER_AT, "gt", now)
                        ]}},
                        "aggs": min_of(Fields::REDELIVER_AT)
                    }
                }
            }}
        });
        let answer = self.search_answer(body).await?;
        let buckets = answer["aggregations"]["agent"]["buckets"]
            .as_array()
            .ok_or_else(|| corrupt(format!("first_due answer without buckets: {answer}")))?;
        let mut due: HashMap<String, DateTime<Utc>> = HashMap::with_capacity(buckets.len());
        for b in buckets {
            let Some(agent) = b["key"].as_str() else {
                return Err(corrupt(format!("first_due bucket without an agent: {b}")));
            };
            let t = if b["now"]["doc_count"].as_u64().unwrap_or(0) > 0 {
                Some(now)
            } else {
                ["not_before", "created", "redeliver"]
                    .iter()
                    .filter_map(|kind| min_value(&b[*kind]))
                    .min()
            };
            if let Some(t) = t {
                due.insert(agent.to_owned(), t);
            }
        }
        for v in self.mget(&recent).await? {
            let order = &v.order;
            let t = if order.is_deliverable(now) {
                Some(now)
            } else {
                order.becomes_deliverable_after(now)
            };
            if let (Some(agent), Some(t)) = (order.agent_id(), t) {
                due.entry(agent.as_str().to_owned())
                    .and_modify(|d| *d = (*d).min(t))
                    .or_insert(t);
            }
        }
        Ok(agents
            .iter()
            .map(|a| due.get(a.as_str()).copied())
            .collect())
    }
}

impl OpenSearchBackend {
    /// A realtime read of one order with its version.
    async fn get_versioned(&self, id: &OrderId) -> Result<Option<Versioned>, StoreError> {
        let answer = self
            .http()
            .call(
                Method::Get,
                &format!("/{}/_doc/{}", self.inner.orders, doc_id(id)),
                &[],
                None,
            )
            .await?;
        match answer.status {
            200 => Versioned::read(&answer.body).map(Some),
            404 if answer.body["found"] == false => Ok(None),
            404 if OsError::from_answer(404, &answer.body).is_kind(kind::INDEX_NOT_FOUND) => {
                Err(StoreError::Corrupt(format!(
                    "the orders index {} does not exist",
                    self.inner.orders
                )))
            }
            status => Err(OsError::from_answer(status, &answer.body).into()),
        }
    }
}
