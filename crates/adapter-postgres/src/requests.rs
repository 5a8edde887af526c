//! [`RequestStore`] over the `requests` table: each record as its document (`jsonb`) plus the
//! columns the listing, the scheduler's work list and retention filter and sort on.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cm_domain::time::truncate_to_millis;
use cm_domain::{RequestId, RequestRecord};
use cm_ports::{
    Page, ReplaceError, RequestCursor, RequestFilter, RequestPageRequest, RequestStore, StoreError,
    WholeOutcome, WholeRequest,
};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

use crate::PostgresBackend;
use crate::error::convert_sqlx_err;
use crate::rows::Columns;

/// A new record, unless one with its id exists.
const CREATE: &str = "
INSERT INTO requests (request_id, created_at, state, action, user_name, source, target_type,
                      target_id, settled, finished_at, revision, doc)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (request_id) DO NOTHING";

/// Whole requests in one statement, so one round trip and its own transaction: the records
/// (`$1`…`$12`, one array per column) leaving out ids that exist, then the orders (`$13`…`$28`,
/// in [`crate::orders`]' column order) of the records written, leaving out order ids that
/// exist; answers each record written with how many of its orders were created.
const WRITE_WHOLE: &str = "
WITH written AS (
    INSERT INTO requests (request_id, created_at, state, action, user_name, source, target_type,
                          target_id, settled, finished_at, revision, doc)
    SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::bool[], $10::timestamptz[],
                         $11::int8[], $12::jsonb[])
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id
), created AS (
    INSERT INTO orders (order_id, request_id, agent_id, target_type, target_id, action, status,
                        created_at, deadline, available_at, redeliver_at, result_deadline,
                        finished_at, doc, held, position)
    SELECT o.* FROM UNNEST($13::uuid[], $14::uuid[], $15::text[], $16::text[], $17::text[],
                           $18::text[], $19::text[], $20::timestamptz[], $21::timestamptz[],
                           $22::timestamptz[], $23::timestamptz[], $24::timestamptz[],
                           $25::timestamptz[], $26::jsonb[], $27::bool[], $28::int8[])
        AS o(order_id, request_id, agent_id, target_type, target_id, action, status, created_at,
             deadline, available_at, redeliver_at, result_deadline, finished_at, doc, held,
             position)
    WHERE o.request_id IN (SELECT request_id FROM written)
    ON CONFLICT (order_id) DO NOTHING
    RETURNING request_id
)
SELECT w.request_id, count(c.request_id) AS created
FROM written w LEFT JOIN created c USING (request_id)
GROUP BY w.request_id";

/// Compare-and-set of record `$1` against its revision `$2`, in one statement; also says whether
/// the record exists at all. The id stays the stored record's.
const REPLACE: &str = "
WITH replaced AS (
    UPDATE requests
    SET created_at = $3, state = $4, action = $5, user_name = $6, source = $7,
        target_type = $8, target_id = $9, settled = $10, finished_at = $11, revision = $12,
        doc = $13
    WHERE request_id = $1 AND revision = $2
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM replaced) AS replaced,
       EXISTS (SELECT 1 FROM requests WHERE request_id = $1) AS present";

/// Retention's batch: settled records that finished at or before `$1`, earliest first, at most
/// `$2`, from `requests_settled_by_finish`.
const PURGE_SETTLED: &str = "
DELETE FROM requests WHERE request_id IN (
    SELECT request_id FROM requests
    WHERE settled AND finished_at <= $1
    ORDER BY finished_at, request_id
    LIMIT $2
    FOR UPDATE SKIP LOCKED)";

fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn revision_of(r: &RequestRecord) -> i64 {
    i64::try_from(r.revision()).unwrap_or(i64::MAX)
}

fn record_of(row: &PgRow) -> Result<RequestRecord, StoreError> {
    row.try_get::<Json<RequestRecord>, _>("doc")
        .map(|Json(r)| r)
        .map_err(convert_sqlx_err)
}

fn records_of(rows: &[PgRow]) -> Result<Vec<RequestRecord>, StoreError> {
    rows.iter().map(record_of).collect()
}

/// Binds a record's columns, `created_at` … `doc`, in the order [`CREATE`] and [`REPLACE`] list
/// them after their key parameters.
fn bind_columns<'q>(
    q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    r: &'q RequestRecord,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    q.bind(truncate_to_millis(r.created_at()))
        .bind(r.state().as_str())
        .bind(r.action().name.as_str())
        .bind(r.user())
        .bind(r.source().as_str())
        .bind(r.target().kind().as_str())
        .bind(r.target().id())
        .bind(r.is_settled())
        .bind(r.finished_at().map(truncate_to_millis))
        .bind(revision_of(r))
        .bind(Json(r))
}

/// The listing's query: every set filter field, strictly older than the cursor, newest first
/// (`requests_newest_first`, or `requests_by_state` when the state is filtered).
fn list_sql(filter: &RequestFilter, page: &RequestPageRequest) -> QueryBuilder<Postgres> {
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
    let mut q = QueryBuilder::<Postgres>::new("SELECT doc FROM requests WHERE TRUE");
    if let Some(s) = state {
        q.push(" AND state = ").push_bind(s.as_str());
    }
    if let Some(a) = action {
        q.push(" AND action = ").push_bind(a.clone());
    }
    if let Some(u) = user {
        q.push(" AND user_name = ").push_bind(u.clone());
    }
    if let Some(s) = source {
        q.push(" AND source = ").push_bind(s.as_str());
    }
    if let Some(t) = target_type {
        q.push(" AND target_type = ").push_bind(t.as_str());
    }
    if let Some(t) = target_id {
        q.push(" AND target_id = ").push_bind(t.clone());
    }
    if let Some(t) = since {
        q.push(" AND created_at >= ").push_bind(*t);
    }
    if let Some(t) = until {
        q.push(" AND created_at < ").push_bind(*t);
    }
    if let Some(c) = &page.after {
        q.push(" AND (created_at, request_id) < (")
            .push_bind(c.created_at)
            .push(", ")
            .push_bind(*c.request_id.as_uuid())
            .push(")");
    }
    q.push(" ORDER BY created_at DESC, request_id DESC LIMIT ")
        .push_bind(sql_limit(page.size));
    q
}

/// The scheduler's work list: unsettled records strictly after the cursor, oldest first, from
/// `requests_unsettled`.
fn unsettled_sql(after: Option<RequestCursor>, limit: usize) -> QueryBuilder<Postgres> {
    let mut q = QueryBuilder::<Postgres>::new("SELECT doc FROM requests WHERE NOT settled");
    if let Some(c) = after {
        q.push(" AND (created_at, request_id) > (")
            .push_bind(c.created_at)
            .push(", ")
            .push_bind(*c.request_id.as_uuid())
            .push(")");
    }
    q.push(" ORDER BY created_at, request_id LIMIT ")
        .push_bind(sql_limit(limit));
    q
}

#[async_trait]
impl RequestStore for PostgresBackend {
    async fn create(&self, record: &RequestRecord) -> Result<bool, StoreError> {
        let q = sqlx::query(CREATE).bind(record.request_id().as_uuid());
        let done = bind_columns(q, record)
            .execute(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn get(&self, id: &RequestId) -> Result<Option<RequestRecord>, StoreError> {
        let row = sqlx::query("SELECT doc FROM requests WHERE request_id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        row.as_ref().map(record_of).transpose()
    }

    async fn replace(
        &self,
        current: &RequestRecord,
        next: &RequestRecord,
    ) -> Result<(), ReplaceError> {
        let q = sqlx::query(REPLACE)
            .bind(current.request_id().as_uuid())
            .bind(revision_of(current));
        let row = bind_columns(q, next)
            .fetch_one(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        let replaced: bool = row.try_get("replaced").map_err(convert_sqlx_err)?;
        let present: bool = row.try_get("present").map_err(convert_sqlx_err)?;
        match (replaced, present) {
            (true, _) => Ok(()),
            (false, true) => Err(ReplaceError::Conflict),
            (false, false) => Err(ReplaceError::NotFound),
        }
    }

    async fn list(
        &self,
        filter: &RequestFilter,
        page: &RequestPageRequest,
    ) -> Result<Page<RequestRecord, RequestCursor>, StoreError> {
        if page.size == 0 {
            return Ok(Page::read(Vec::new(), 0, RequestCursor::after));
        }
        let rows = list_sql(filter, page)
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        Ok(Page::read(
            records_of(&rows)?,
            page.size,
            RequestCursor::after,
        ))
    }

    async fn unsettled(
        &self,
        after: Option<RequestCursor>,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = unsettled_sql(after, limit)
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        records_of(&rows)
    }

    async fn purge_settled(&self, cutoff: DateTime<Utc>, limit: usize) -> Result<u64, StoreError> {
        if limit == 0 {
            return Ok(0);
        }
        let done = sqlx::query(PURGE_SETTLED)
            .bind(cutoff)
            .bind(sql_limit(limit))
            .execute(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        Ok(done.rows_affected())
    }

    /// One statement whatever the number of requests ([`WRITE_WHOLE`]): one round trip.
    async fn write_whole(
        &self,
        requests: &[WholeRequest],
    ) -> Result<Option<Vec<WholeOutcome>>, StoreError> {
        if requests.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let records: Vec<&RequestRecord> = requests.iter().map(|w| &w.record).collect();
        let c = Columns::of(requests.iter().flat_map(|w| w.orders.iter()));
        let q = sqlx::query(WRITE_WHOLE)
            .bind(
                records
                    .iter()
                    .map(|r| *r.request_id().as_uuid())
                    .collect::<Vec<_>>(),
            )
            .bind(
                records
                    .iter()
                    .map(|r| truncate_to_millis(r.created_at()))
                    .collect::<Vec<_>>(),
            )
            .bind(
                records
                    .iter()
                    .map(|r| r.state().as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                records
                    .iter()
                    .map(|r| r.action().name.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(records.iter().map(|r| r.user()).collect::<Vec<_>>())
            .bind(
                records
                    .iter()
                    .map(|r| r.source().as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                records
                    .iter()
                    .map(|r| r.target().kind().as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(records.iter().map(|r| r.target().id()).collect::<Vec<_>>())
            .bind(records.iter().map(|r| r.is_settled()).collect::<Vec<_>>())
            .bind(
                records
                    .iter()
                    .map(|r| r.finished_at().map(truncate_to_millis))
                    .collect::<Vec<_>>(),
            )
            .bind(records.iter().map(|r| revision_of(r)).collect::<Vec<_>>())
            .bind(records.iter().map(|r| Json(*r)).collect::<Vec<_>>());
        let rows = c
            .bind_all(q)
            .fetch_all(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        let mut written: HashMap<Uuid, u64> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: Uuid = row.try_get("request_id").map_err(convert_sqlx_err)?;
            let created: i64 = row.try_get("created").map_err(convert_sqlx_err)?;
            written.insert(id, u64::try_from(created).unwrap_or(0));
        }
        Ok(Some(
            records
                .iter()
                .map(|r| match written.get(r.request_id().as_uuid()) {
                    Some(created) => WholeOutcome::Written { created: *created },
                    None => WholeOutcome::Exists,
                })
                .collect(),
        ))
    }
}
