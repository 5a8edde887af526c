//! [`RequestStore`] over the requests index, and the request gate claims apply.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cm_domain::{Order, RequestId, RequestRecord, RequestState};
use cm_ports::{
    Page, ReplaceError, RequestCursor, RequestFilter, RequestPageRequest, RequestStore, StoreError,
    WholeOutcome, WholeRequest,
};
use opensearch::http::Method;
use serde_json::{Value, json};

use crate::bulk::{Applied, ItemOutcome, Meta, Need, Op, Ops};
use crate::error::{OsError, corrupt, error_of, kind};
use crate::mapping::Fields;
use crate::visibility::Fresh;
use crate::{MAX_WINDOW, OpenSearchBackend, search_hits};

fn term(field: &str, value: impl Into<Value>) -> Value {
    json!({"term": {field: value.into()}})
}

fn range(field: &str, op: &str, t: DateTime<Utc>) -> Value {
    json!({"range": {field: {op: t.timestamp_millis()}}})
}

/// The sort values of a cursor (`created_at` in milliseconds, `request_id`).
fn after_values(c: &RequestCursor) -> Value {
    json!([c.created_at.timestamp_millis(), c.request_id.to_string()])
}

/// Sorted by (`created_at`, `request_id`) in `direction`.
fn record_order(direction: &str) -> Value {
    json!([
        {(Fields::RECORD_CREATED): direction},
        {(Fields::RECORD_ID): direction}
    ])
}

/// A record is settled once its counts are frozen on it.
fn settled() -> Value {
    json!({"exists": {"field": Fields::RECORD_COUNTS}})
}

fn decode(doc: &Value) -> Result<RequestRecord, StoreError> {
    serde_json::from_value(doc["_source"].clone()).map_err(|e| {
        corrupt(format!(
            "request record document {} does not decode: {e}",
            doc["_id"]
        ))
    })
}

/// A record as stored, with the version a conditional write must name.
struct VersionedRecord {
    record: RequestRecord,
    seq_no: i64,
    primary_term: i64,
}

impl OpenSearchBackend {
    fn records_path(&self, rest: &str) -> String {
        format!("/{}/{rest}", self.inner.requests)
    }

    /// A realtime read of one record with its version.
    async fn get_record(&self, id: &RequestId) -> Result<Option<VersionedRecord>, StoreError> {
        let answer = self
            .http()
            .call(
                Method::Get,
                &self.records_path(&format!("_doc/{id}")),
                &[],
                None,
            )
            .await?;
        match answer.status {
            200 => {
                let record = decode(&answer.body)?;
                let (Some(seq_no), Some(primary_term)) = (
                    answer.body["_seq_no"].as_i64(),
                    answer.body["_primary_term"].as_i64(),
                ) else {
                    return Err(corrupt(format!(
                        "request record {id} came without its version"
                    )));
                };
                Ok(Some(VersionedRecord {
                    record,
                    seq_no,
                    primary_term,
                }))
            }
            404 if answer.body["found"] == false => Ok(None),
            404 if OsError::from_answer(404, &answer.body).is_kind(kind::INDEX_NOT_FOUND) => {
                Err(StoreError::Corrupt(format!(
                    "the requests index {} does not exist",
                    self.inner.requests
                )))
            }
            status => Err(OsError::from_answer(status, &answer.body).into()),
        }
    }

    /// The request gate of claims and `next_due`: which of `requests` have a record whose state
    /// does not deliver (`RequestState::delivers`). One realtime `_mget` of the records' states;
    /// none for no request. A request without a record delivers (it predates records).
    ///
    /// Realtime reads make this exact for the orders a caller found: a submit writes (and waits
    /// for) its record before it writes any order, so once an order is visible, to a search
    /// or a realtime read, its record is visible to this `_mget` too, whatever instance wrote
    /// either, and in the state it had at least when the order was read.
    pub(crate) async fn held_back(
        &self,
        requests: &HashSet<RequestId>,
    ) -> Result<HashSet<RequestId>, StoreError> {
        let mut out = HashSet::new();
        if requests.is_empty() {
            return Ok(out);
        }
        let ids: Vec<String> = requests.iter().map(ToString::to_string).collect();
        let body = self
            .http()
            .ok(
                Method::Post,
                &self.records_path("_mget"),
                &[("_source_includes", Fields::RECORD_STATE)],
                Some(json!({"ids": ids})),
            )
            .await?;
        let docs = body["docs"]
            .as_array()
            .ok_or_else(|| corrupt(format!("_mget answer without docs: {body}")))?;
        for doc in docs {
            if doc.get("error").is_some() {
                let (kind, reason) = error_of(doc);
                return Err(StoreError::Unavailable(format!(
                    "reading request record {} failed: {kind}: {reason}",
                    doc["_id"]
                )));
            }
            if doc["found"] != true {
                continue;
            }
            let id = doc["_id"].as_str().unwrap_or_default();
            let request = RequestId::parse(id, "_id")
                .map_err(|_| corrupt(format!("request record with id {id:?}")))?;
            let state: RequestState = serde_json::from_value(
                doc["_source"][Fields::RECORD_STATE].clone(),
            )
            .map_err(|e| corrupt(format!("request record {id} has no readable state: {e}")))?;
            if !state.delivers() {
                out.insert(request);
            }
        }
        Ok(out)
    }

    fn record_filter(filter: &RequestFilter) -> Vec<Value> {
        // Exhaustive, so a new filter field does not compile until it is translated here.
        let RequestFilter {
            state,
            action,
            user,
            source,
            target_type,
            target_id,
            since,
            until,
        } = filter;
        let mut clauses = Vec::new();
        if let Some(s) = state {
            clauses.push(term(Fields::RECORD_STATE, s.as_str()));
        }
        if let Some(a) = action {
            clauses.push(term(Fields::RECORD_ACTION, a.as_str()));
        }
        if let Some(u) = user {
            clauses.push(term(Fields::RECORD_USER, u.as_str()));
        }
        if let Some(s) = source {
            clauses.push(term(Fields::RECORD_SOURCE, s.as_str()));
        }
        if let Some(t) = target_type {
            clauses.push(term(Fields::RECORD_TARGET_TYPE, t.as_str()));
        }
        if let Some(t) = target_id {
            clauses.push(term(Fields::RECORD_TARGET_ID, t.as_str()));
        }
        if let Some(t) = since {
            clauses.push(range(Fields::RECORD_CREATED, "gte", *t));
        }
        if let Some(t) = until {
            clauses.push(range(Fields::RECORD_CREATED, "lt", *t));
        }
        clauses
    }

    async fn search_records(&self, body: Value) -> Result<Vec<RequestRecord>, StoreError> {
        let answer = self
            .http()
            .ok(Method::Post, &self.records_path("_search"), &[], Some(body))
            .await?;
        search_hits(answer)?.iter().map(decode).collect()
    }

    /// Listings see this instance's own writes, and others' within the poll interval.
    fn records_freshness(&self) -> Fresh {
        Fresh::IfDirtyOrOlder(self.inner.poll_interval)
    }

    /// Notes a finished write to the requests index (listings refresh before they search).
    fn wrote_record(&self) {
        self.inner.requests_visibility.wrote();
    }
}

/// The commit of [`RequestStore::write_whole`]: the stored record becomes `params.record` only
/// while it is still `writing` (otherwise the update is a no-op).
const COMMIT_IF_WRITING: &str = "if (ctx._source.state == 'writing') { \
    ctx._source.clear(); ctx._source.putAll(params.record) } else { ctx.op = 'none' }";

/// About the bytes of one record's bulk lines.
const RECORD_BYTES: usize = 768;

#[async_trait]
impl RequestStore for OpenSearchBackend {
    async fn create(&self, record: &RequestRecord) -> Result<bool, StoreError> {
        let body = serde_json::to_value(record).map_err(corrupt)?;
        let answer = self
            .http()
            .call(
                Method::Put,
                &self.records_path(&format!("_create/{}", record.request_id())),
                &[],
                Some(body),
            )
            .await;
        self.wrote_record();
        let answer = answer?;
        match answer.status {
            200 | 201 => Ok(true),
            409 => Ok(false),
            status => Err(OsError::from_answer(status, &answer.body).into()),
        }
    }

    async fn get(&self, id: &RequestId) -> Result<Option<RequestRecord>, StoreError> {
        Ok(self.get_record(id).await?.map(|v| v.record))
    }

    async fn replace(
        &self,
        current: &RequestRecord,
        next: &RequestRecord,
    ) -> Result<(), ReplaceError> {
        if current.request_id() != next.request_id() {
            return Err(ReplaceError::Conflict);
        }
        let stored = self
            .get_record(current.request_id())
            .await?
            .ok_or(ReplaceError::NotFound)?;
        if stored.record.revision() != current.revision() {
            return Err(ReplaceError::Conflict);
        }
        let seq_no = stored.seq_no.to_string();
        let primary_term = stored.primary_term.to_string();
        let body = serde_json::to_value(next).map_err(|e| ReplaceError::Store(corrupt(e)))?;
        let answer = self
            .http()
            .call(
                Method::Put,
                &self.records_path(&format!("_doc/{}", next.request_id())),
                &[
                    ("if_seq_no", seq_no.as_str()),
                    ("if_primary_term", primary_term.as_str()),
                ],
                Some(body),
            )
            .await;
        self.wrote_record();
        let answer = answer?;
        match answer.status {
            200 | 201 => Ok(()),
            409 => Err(ReplaceError::Conflict),
            status => Err(OsError::from_answer(status, &answer.body).into()),
        }
    }

    async fn list(
        &self,
        filter: &RequestFilter,
        page: &RequestPageRequest,
    ) -> Result<Page<RequestRecord, RequestCursor>, StoreError> {
        if page.size == 0 {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        self.make_requests_fresh(self.records_freshness()).await?;
        let mut body = json!({
            "size": page.size.min(MAX_WINDOW),
            "track_total_hits": false,
            "sort": record_order("desc"),
            "query": {"bool": {"filter": Self::record_filter(filter)}}
        });
        if let Some(after) = &page.after {
            body["search_after"] = after_values(after);
        }
        let items = self.search_records(body).await?;
        Ok(Page::read(items, page.size, RequestCursor::after))
    }

    async fn unsettled(
        &self,
        after: Option<RequestCursor>,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.make_requests_fresh(self.records_freshness()).await?;
        let mut body = json!({
            "size": limit.min(MAX_WINDOW),
            "track_total_hits": false,
            "sort": record_order("asc"),
            "query": {"bool": {"must_not": [settled()]}}
        });
        if let Some(after) = &after {
            body["search_after"] = after_values(after);
        }
        self.search_records(body).await
    }

    async fn purge_settled(&self, cutoff: DateTime<Utc>, limit: usize) -> Result<u64, StoreError> {
        if limit == 0 {
            return Ok(0);
        }
        // `_delete_by_query` sees only what the index has refreshed. A settled record never
        // changes again, so deleting what the query found cannot lose a change.
        self.make_requests_fresh(Fresh::Always).await?;
        let max_docs = limit.to_string();
        let answer = self
            .http()
            .ok(
                Method::Post,
                &self.records_path("_delete_by_query"),
                &[
                    ("conflicts", "proceed"),
                    ("refresh", "true"),
                    ("max_docs", max_docs.as_str()),
                ],
                Some(json!({"query": {"bool": {"filter": [
                    settled(),
                    range(Fields::RECORD_FINISHED, "lte", cutoff)
                ]}}})),
            )
            .await;
        self.wrote_record();
        let answer = answer?;
        if let Some(failure) = answer["failures"].as_array().and_then(|f| f.first()) {
            return Err(StoreError::Unavailable(format!(
                "purging settled request records failed: {failure}"
            )));
        }
        Ok(answer["deleted"].as_u64().unwrap_or(0))
    }

    /// Without transactions, in three bulks for the whole group, each record's step-by-step
    /// protocol: the records as opened (`writing`: the gate holds their orders back), then the
    /// orders of those created, then each record replaced by its committed form, only while it
    /// is still `writing` (a script, the compare-and-set). A failure leaves the records
    /// `writing`: a keyed retry completes them, or the scheduler aborts them.
    async fn write_whole(
        &self,
        requests: &[WholeRequest],
    ) -> Result<Option<Vec<WholeOutcome>>, StoreError> {
        if requests.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let mut opened = Ops::with_capacity(requests.len(), RECORD_BYTES);
        for w in requests {
            opened.push(
                Op::Create,
                &Meta::new(&self.inner.requests, w.opened.request_id()),
                Some(&w.opened),
            )?;
        }
        let outcomes = self.bulk(&opened, Need::Failures).await;
        self.wrote_record();
        let mut created_records = Vec::with_capacity(requests.len());
        for (w, outcome) in requests.iter().zip(outcomes?) {
            match outcome {
                ItemOutcome::Done { .. } => created_records.push(true),
                other if other.is_conflict() => created_records.push(false),
                other => {
                    return Err(StoreError::Unavailable(format!(
                        "the record of request {} was not written: {}",
                        w.record.request_id(),
                        other.describe()
                    )));
                }
            }
        }
        let orders: Vec<&Order> = requests
            .iter()
            .zip(&created_records)
            .filter(|(_, created)| **created)
            .flat_map(|(w, _)| w.orders.iter())
            .collect();
        let mut created: HashMap<RequestId, u64> = HashMap::new();
        for o in self.insert_orders(&orders).await? {
            *created.entry(*o.request_id()).or_default() += 1;
        }
        let mut commits = Ops::with_capacity(requests.len(), RECORD_BYTES * 2);
        for w in requests
            .iter()
            .zip(&created_records)
            .filter(|(_, c)| **c)
            .map(|(w, _)| w)
        {
            commits.push(
                Op::Update,
                &Meta::new(&self.inner.requests, w.record.request_id()),
                Some(&json!({
                    "script": {
                        "lang": "painless",
                        "source": COMMIT_IF_WRITING,
                        "params": {"record": &w.record},
                    }
                })),
            )?;
        }
        let outcomes = self.bulk(&commits, Need::Results).await;
        self.wrote_record();
        let mut outcomes = outcomes?.into_iter();
        let mut out = Vec::with_capacity(requests.len());
        for (w, was_created) in requests.iter().zip(created_records) {
            if !was_created {
                out.push(WholeOutcome::Exists);
                continue;
            }
            match outcomes.next() {
                Some(ItemOutcome::Done {
                    result: Some(Applied::Updated),
                }) => out.push(WholeOutcome::Written {
                    created: created.get(w.record.request_id()).copied().unwrap_or(0),
                }),
                other => {
                    return Err(StoreError::Unavailable(format!(
                        "the record of request {} was not committed: {}",
                        w.record.request_id(),
                        other.map_or_else(|| "no answer".to_owned(), |o| o.describe())
                    )));
                }
            }
        }
        Ok(Some(out))
    }
}
