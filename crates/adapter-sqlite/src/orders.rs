//! [`OrderStore`] over the `orders` and `orders_archive` tables.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cm_domain::{
    AgentId, ComponentName, DeliveryPolicy, Order, OrderId, PendingEnd, RequestId, Status,
};
use cm_ports::{
    Batch, Consumers, OrderCursor, OrderFilter, OrderPageRequest, OrderStore, Page, ReplaceError,
    ResultGroup, RetentionMode, StatusCounts, StoreError,
};
use sqlx::query_builder::Separated;
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection};

use crate::SqliteBackend;
use crate::error::{convert_sqlx_err, corrupt_document};

/// SQLite's default limit on bound parameters in one statement (`SQLITE_MAX_VARIABLE_NUMBER`).
const MAX_BOUND_PARAMETERS: usize = 32_766;
/// Rows per multi-row statement; a row binds at most 17 values.
const CHUNK: usize = 1000;
const _: () = assert!(CHUNK * 17 <= MAX_BOUND_PARAMETERS);

/// The request gate of claims and next_due (`RequestState::delivers`): an order whose request
/// has a record goes out only while that record is `scheduled` or `running`; an order without
/// a record (written before records existed) always does. Read in the claim's own statement,
/// inside its write transaction: every record write goes through the same single writer, so no
/// state change can slip between the gate and the claim.
macro_rules! request_gate {
    () => {
        " AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.request_id = orders.request_id \
           AND r.state NOT IN ('scheduled', 'running'))"
    };
}

/// The deliverable orders of a set of consumers, oldest first: `?1` is the JSON array of the
/// agents' ids, `?2` that of the components' names, `?3` now, `?4` the limit. Agrees with
/// `Consumers::takes` and `Order::is_deliverable`: pending and not held from `not_before` until
/// (excluding) the deadline; sent once redelivery is due; an agent's orders by `agent_id`, a
/// component's by the `server` target naming it; and only while the request gate is open. Each
/// kind is read from its own partial index (which leaves held orders out), each consumer by one
/// seek (the `IN` list), so a claim walks neither history nor the orders already held.
///
/// `INDEXED BY`: without statistics the planner rates `orders_agent` (every order of the agent)
/// as good as these; a poll must not degrade into a scan of the agent's history, and a schema
/// without the indexes must fail loudly rather than slow down.
const CLAIM_CANDIDATES: &str = concat!(
    "SELECT revision, document FROM ( \
      SELECT * FROM ( \
        SELECT created_ms, order_id, revision, document FROM orders INDEXED BY orders_claim \
        WHERE agent_id IN (SELECT value FROM json_each(?1)) AND status = 'pending' \
          AND held = 0 AND available_ms <= ?3 AND deadline_ms > ?3",
    request_gate!(),
    " ORDER BY created_ms, order_id LIMIT ?4) \
      UNION ALL \
      SELECT * FROM ( \
        SELECT created_ms, order_id, revision, document FROM orders INDEXED BY orders_redeliver \
        WHERE agent_id IN (SELECT value FROM json_each(?1)) AND status = 'sent' \
          AND redeliver_ms <= ?3",
    request_gate!(),
    " ORDER BY created_ms, order_id LIMIT ?4) \
      UNION ALL \
      SELECT * FROM ( \
        SELECT created_ms, order_id, revision, document FROM orders \
        INDEXED BY orders_claim_server \
        WHERE target_id IN (SELECT value FROM json_each(?2)) AND status = 'pending' \
          AND held = 0 AND target_type = 'server' \
          AND available_ms <= ?3 AND deadline_ms > ?3",
    request_gate!(),
    " ORDER BY created_ms, order_id LIMIT ?4) \
      UNION ALL \
      SELECT * FROM ( \
        SELECT created_ms, order_id, revision, document FROM orders \
        INDEXED BY orders_redeliver_server \
        WHERE target_id IN (SELECT value FROM json_each(?2)) AND status = 'sent' \
          AND target_type = 'server' AND redeliver_ms <= ?3",
    request_gate!(),
    " ORDER BY created_ms, order_id LIMIT ?4)) \
    ORDER BY created_ms, order_id LIMIT ?4"
);

/// The earliest instant after `?3` at which one of the orders of the consumers (`?1`, `?2` as
/// in [`CLAIM_CANDIDATES`]) becomes deliverable by itself (`Order::becomes_deliverable_after`):
/// a pending (not held) order's `not_before` or a sent order's redelivery, of a request whose
/// gate is open. Each quarter is one range seek per consumer into its partial index, which
/// carries `request_id` for the gate (`INDEXED BY` as in [`CLAIM_CANDIDATES`]: a long-poll asks
/// this on every wait, and must never scan history). `MIN` of no row is `NULL`.
const NEXT_DUE: &str = concat!(
    "SELECT MIN(t) FROM ( \
      SELECT MIN(available_ms) AS t FROM orders INDEXED BY orders_available \
      WHERE agent_id IN (SELECT value FROM json_each(?1)) AND status = 'pending' \
        AND held = 0 AND available_ms > ?3",
    request_gate!(),
    " UNION ALL \
      SELECT MIN(redeliver_ms) AS t FROM orders INDEXED BY orders_redeliver \
      WHERE agent_id IN (SELECT value FROM json_each(?1)) AND status = 'sent' \
        AND redeliver_ms > ?3",
    request_gate!(),
    " UNION ALL \
      SELECT MIN(available_ms) AS t FROM orders INDEXED BY orders_available_server \
      WHERE target_id IN (SELECT value FROM json_each(?2)) AND status = 'pending' \
        AND held = 0 AND target_type = 'server' AND available_ms > ?3",
    request_gate!(),
    " UNION ALL \
      SELECT MIN(redeliver_ms) AS t FROM orders INDEXED BY orders_redeliver_server \
      WHERE target_id IN (SELECT value FROM json_each(?2)) AND status = 'sent' \
        AND target_type = 'server' AND redeliver_ms > ?3",
    request_gate!(),
    ")"
);

/// The first look of many agents' polls (`OrderStore::first_due`), `?1` the JSON array of their
/// ids: per agent, the earliest start of a pending (not held) order and the earliest redelivery
/// of a sent one, past or future. Both from the covering indexes of [`NEXT_DUE`], without the
/// request gate or the deadline (an answer may be early, never late).
const FIRST_DUE: &str = "SELECT agent_id, MIN(t) FROM ( \
      SELECT agent_id, MIN(available_ms) AS t FROM orders INDEXED BY orders_available \
      WHERE agent_id IN (SELECT value FROM json_each(?1)) AND status = 'pending' AND held = 0 \
      GROUP BY agent_id \
      UNION ALL \
      SELECT agent_id, MIN(redeliver_ms) AS t FROM orders INDEXED BY orders_redeliver \
      WHERE agent_id IN (SELECT value FROM json_each(?1)) AND status = 'sent' \
        AND redeliver_ms IS NOT NULL \
      GROUP BY agent_id) \
    GROUP BY agent_id";

/// The JSON arrays of a consumer set's agent ids and component names (`?1`, `?2` of
/// [`CLAIM_CANDIDATES`] and [`NEXT_DUE`]): one bound value each, however many consumers.
fn consumer_lists(consumers: &Consumers) -> Result<(String, String), StoreError> {
    let encode = |names: Vec<&str>| {
        serde_json::to_string(&names)
            .map_err(|e| StoreError::Corrupt(format!("consumers cannot be encoded: {e}")))
    };
    Ok((
        encode(consumers.agents().iter().map(AgentId::as_str).collect())?,
        encode(
            consumers
                .components()
                .iter()
                .map(ComponentName::as_str)
                .collect(),
        )?,
    ))
}

/// A request's pending orders, held or not, oldest first (`Order::end_pending` accepts exactly
/// these). The partial index skips the request's orders that already moved on, so ending a
/// large request batch by batch never re-reads what earlier batches ended.
const END_CANDIDATES: &str = "SELECT revision, document FROM orders \
    INDEXED BY orders_request_pending \
    WHERE request_id = ?1 AND status = 'pending' \
    ORDER BY created_ms, order_id LIMIT ?2";

/// A request's held orders in positions below `?2`, lowest first (`Order::release` accepts
/// exactly these), from their own partial index.
const HELD_CANDIDATES: &str = "SELECT revision, document FROM orders INDEXED BY orders_held \
    WHERE request_id = ?1 AND status = 'pending' AND held = 1 AND position < ?2 \
    ORDER BY position, order_id LIMIT ?3";

/// Pending orders whose delivery deadline passed (`Order::is_expired` at `?2`, in ms: never a
/// held one), earliest first, up to `?4`. The index leaves held orders out, so a batch is never
/// spent on them.
macro_rules! expiry_candidates {
    () => {
        "SELECT order_id FROM orders \
         WHERE status = 'pending' AND held = 0 AND deadline_ms <= ?2 \
         ORDER BY deadline_ms, order_id LIMIT ?4"
    };
}

#[cfg(test)]
const EXPIRY_CANDIDATES: &str = expiry_candidates!();

/// Expires the expiry candidates (status `?1`; `?3` the merge patch of `Order::expiry_patch`,
/// applied to the document's `command`). The outer condition repeats the candidates' own, so
/// the statement changes nothing but orders `Order::expire` accepts.
const EXPIRE_DUE: &str = concat!(
    "UPDATE orders SET status = ?1, finished_ms = ?2, redeliver_ms = NULL, \
     result_deadline_ms = NULL, revision = revision + 1, \
     document = json_patch(document, json_object('command', json(?3))) \
     WHERE status = 'pending' AND held = 0 AND deadline_ms <= ?2 AND order_id IN (",
    expiry_candidates!(),
    ")"
);

/// Delivered orders whose result deadline passed (`Order::is_unreported`), earliest first.
const GIVE_UP_CANDIDATES: &str = "SELECT revision, document FROM orders \
    WHERE result_deadline_ms IS NOT NULL AND result_deadline_ms <= ?1 \
    ORDER BY result_deadline_ms, order_id LIMIT ?2";

/// Orders that finished at or before the cutoff (`Order::finished_by`), earliest first.
const PURGE_CANDIDATES: &str = "SELECT order_id, revision, document FROM orders \
    WHERE finished_ms IS NOT NULL AND finished_ms <= ?1 \
    ORDER BY finished_ms, order_id LIMIT ?2";

/// Whether an order row (`status`, `document`) is a failure of the action
/// (`Order::is_action_failure`): every failure except those the service ended as expired,
/// cancelled or stopped (result code -1). The document is read only for failures.
macro_rules! action_failure {
    () => {
        "(status = 'failure' AND NOT coalesce( \
            json_extract(document, '$.command.result.code') = -1 \
            AND json_extract(document, '$.command.result.message') \
                IN ('expired', 'cancelled', 'stopped'), 0))"
    };
}

/// How many orders of one request are in each status, and how many of them are failures of
/// the action.
const PROGRESS: &str = concat!(
    "SELECT status, COUNT(*), SUM(",
    action_failure!(),
    ") FROM orders WHERE request_id = ?1 GROUP BY status"
);

/// The finished orders of request `?1` grouped by (status, result code, result message), the
/// `?2` largest groups in `ResultGroup::sort` order (`success` before `failure`, then code and
/// message, bytewise), each with its `?3` smallest distinct target ids, one row per sampled
/// target: `(status, code, message, count, target_id)`, in group order then target order.
const RESULT_GROUPS: &str = "WITH finished AS ( \
      SELECT status, \
             coalesce(json_extract(document, '$.command.result.code'), 0) AS code, \
             coalesce(json_extract(document, '$.command.result.message'), '') AS message, \
             target_id \
      FROM orders WHERE request_id = ?1 AND status IN ('success', 'failure')), \
    groups AS ( \
      SELECT status, code, message, COUNT(*) AS n, \
             CASE status WHEN 'success' THEN 0 ELSE 1 END AS rank \
      FROM finished GROUP BY status, code, message \
      ORDER BY n DESC, rank, code, message LIMIT ?2), \
    sampled AS ( \
      SELECT status, code, message, target_id, ROW_NUMBER() OVER ( \
               PARTITION BY status, code, message ORDER BY target_id) AS k \
      FROM (SELECT DISTINCT status, code, message, target_id FROM finished)) \
    SELECT g.status, g.code, g.message, g.n, s.target_id \
    FROM groups g JOIN sampled s \
      ON s.status = g.status AND s.code = g.code AND s.message = g.message AND s.k <= ?3 \
    ORDER BY g.n DESC, g.rank, g.code, g.message, s.target_id";

/// The stored document and the revision a conditional write compares against.
type Versioned = (i64, String);

/// An order as a row: its document and the columns projected from it.
pub(crate) struct Row {
    order_id: String,
    request_id: String,
    agent_id: Option<String>,
    target_type: &'static str,
    target_id: String,
    action: String,
    status: &'static str,
    created_ms: i64,
    deadline_ms: i64,
    available_ms: i64,
    redeliver_ms: Option<i64>,
    result_deadline_ms: Option<i64>,
    finished_ms: Option<i64>,
    held: bool,
    position: Option<i64>,
    document: String,
}

impl Row {
    fn of(o: &Order) -> Result<Self, StoreError> {
        let document = serde_json::to_string(o).map_err(|e| {
            StoreError::Corrupt(format!("order {} cannot be encoded: {e}", o.order_id()))
        })?;
        Ok(Self {
            order_id: o.order_id().to_string(),
            request_id: o.request_id().to_string(),
            agent_id: o.agent_id().map(|a| a.as_str().to_owned()),
            target_type: o.target().kind().as_str(),
            target_id: o.target().id().to_owned(),
            action: o.action().name().to_owned(),
            status: o.status().as_str(),
            created_ms: o.created_at().timestamp_millis(),
            deadline_ms: o.delivery_deadline().timestamp_millis(),
            available_ms: o.available_from().timestamp_millis(),
            redeliver_ms: o.redeliver_at().map(|t| t.timestamp_millis()),
            result_deadline_ms: o.result_deadline().map(|t| t.timestamp_millis()),
            finished_ms: o.finished_at().map(|t| t.timestamp_millis()),
            held: o.is_held(),
            position: o.position().map(|p| i64::try_from(p).unwrap_or(i64::MAX)),
            document,
        })
    }
}

impl Row {
    /// Binds the row's values in the order the `INSERT` and `UPDATE` statements list the
    /// columns: `order_id` … `finished_ms`, `held`, `position`, `document`.
    fn bind(self, b: &mut Separated<'_, Sqlite, &'static str>) {
        b.push_bind(self.order_id)
            .push_bind(self.request_id)
            .push_bind(self.agent_id)
            .push_bind(self.target_type)
            .push_bind(self.target_id)
            .push_bind(self.action)
            .push_bind(self.status)
            .push_bind(self.created_ms)
            .push_bind(self.deadline_ms)
            .push_bind(self.available_ms)
            .push_bind(self.redeliver_ms)
            .push_bind(self.result_deadline_ms)
            .push_bind(self.finished_ms)
            .push_bind(self.held)
            .push_bind(self.position)
            .push_bind(self.document);
    }
}

fn parse_status(status: &str) -> Result<Status, StoreError> {
    Status::parse(status, "status")
        .map_err(|_| StoreError::Corrupt(format!("unknown order status {status:?}")))
}

fn decode(document: &str) -> Result<Order, StoreError> {
    serde_json::from_str(document).map_err(|e| corrupt_document("order", &e))
}

/// A row count or limit as SQLite's integer.
fn sql_int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Writes each `(next, revision)` over its stored order if that is still at `revision`, in
/// multi-row statements; returns the ids of the orders written.
async fn update_all(
    conn: &mut SqliteConnection,
    changes: &[(Order, i64)],
) -> Result<HashSet<String>, StoreError> {
    let mut written = HashSet::with_capacity(changes.len());
    for chunk in changes.chunks(CHUNK) {
        let rows = chunk
            .iter()
            .map(|(o, revision)| Ok((Row::of(o)?, *revision)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut qb = QueryBuilder::<Sqlite>::new(
            "UPDATE orders SET request_id = v.column2, agent_id = v.column3, \
             target_type = v.column4, target_id = v.column5, action = v.column6, \
             status = v.column7, created_ms = v.column8, deadline_ms = v.column9, \
             available_ms = v.column10, redeliver_ms = v.column11, \
             result_deadline_ms = v.column12, finished_ms = v.column13, held = v.column14, \
             position = v.column15, document = v.column16, \
             revision = orders.revision + 1 FROM (",
        );
        qb.push_values(rows, |mut b, (r, revision)| {
            r.bind(&mut b);
            b.push_bind(revision);
        });
        qb.push(
            ") AS v WHERE orders.order_id = v.column1 AND orders.revision = v.column17 \
             RETURNING orders.order_id",
        );
        let ids: Vec<String> = qb
            .build_query_scalar()
            .persistent(false)
            .fetch_all(&mut *conn)
            .await
            .map_err(convert_sqlx_err)?;
        written.extend(ids);
    }
    Ok(written)
}

/// Completes `... (order_id, revision) IN (` with a `VALUES` list of `keys` and `)`.
fn push_keys(qb: &mut QueryBuilder<Sqlite>, keys: &[(String, i64)]) {
    qb.push_values(keys, |mut b, (id, revision)| {
        b.push_bind(id.clone()).push_bind(*revision);
    });
    qb.push(")");
}

/// The page query: every set filter field, strictly after the cursor, in query order.
fn query_sql(filter: &OrderFilter, page: &OrderPageRequest) -> QueryBuilder<Sqlite> {
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
    let mut qb = QueryBuilder::<Sqlite>::new("SELECT document FROM orders WHERE 1 = 1");
    if let Some(s) = status {
        qb.push(" AND status = ").push_bind(s.as_str());
    }
    if let Some(a) = agent_id {
        qb.push(" AND agent_id = ").push_bind(a.as_str().to_owned());
    }
    if let Some(t) = target_type {
        qb.push(" AND target_type = ").push_bind(t.as_str());
    }
    if let Some(t) = target_id {
        qb.push(" AND target_id = ").push_bind(t.clone());
    }
    if let Some(r) = request_id {
        qb.push(" AND request_id = ").push_bind(r.to_string());
    }
    if let Some(a) = action {
        qb.push(" AND action = ").push_bind(a.clone());
    }
    if let Some(t) = since {
        qb.push(" AND created_ms >= ")
            .push_bind(t.timestamp_millis());
    }
    if let Some(t) = until {
        qb.push(" AND created_ms < ")
            .push_bind(t.timestamp_millis());
    }
    if let Some(c) = &page.after {
        qb.push(" AND (created_ms, order_id) > (")
            .push_bind(c.created_at.timestamp_millis())
            .push(", ")
            .push_bind(c.order_id.to_string())
            .push(")");
    }
    qb.push(" ORDER BY created_ms, order_id LIMIT ")
        .push_bind(sql_int(page.size));
    qb
}

/// Encodes `orders` as rows, before any transaction is opened.
pub(crate) fn rows_of(orders: &[Order]) -> Result<Vec<Row>, StoreError> {
    orders.iter().map(Row::of).collect()
}

/// Inserts `rows` inside the caller's write transaction, [`CHUNK`] a statement, skipping ids
/// stored already; returns how many were created.
pub(crate) async fn insert_rows(
    conn: &mut SqliteConnection,
    rows: Vec<Row>,
) -> Result<u64, StoreError> {
    let mut created = 0;
    let mut rows = rows.into_iter();
    loop {
        let chunk: Vec<Row> = rows.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            return Ok(created);
        }
        created += insert_sql(chunk, "")
            .build()
            .persistent(false)
            .execute(&mut *conn)
            .await
            .map_err(convert_sqlx_err)?
            .rows_affected();
    }
}

/// [`insert_rows`], answering the request id of each order created.
pub(crate) async fn insert_rows_returning_requests(
    conn: &mut SqliteConnection,
    rows: Vec<Row>,
) -> Result<Vec<String>, StoreError> {
    let mut created = Vec::with_capacity(rows.len());
    let mut rows = rows.into_iter();
    loop {
        let chunk: Vec<Row> = rows.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            return Ok(created);
        }
        let ids: Vec<String> = insert_sql(chunk, " RETURNING request_id")
            .build_query_scalar()
            .persistent(false)
            .fetch_all(&mut *conn)
            .await
            .map_err(convert_sqlx_err)?;
        created.extend(ids);
    }
}

/// The `INSERT` of `chunk`, skipping ids stored already, then `tail`.
fn insert_sql(chunk: Vec<Row>, tail: &'static str) -> QueryBuilder<Sqlite> {
    let mut qb = QueryBuilder::<Sqlite>::new(
        "INSERT INTO orders (order_id, request_id, agent_id, target_type, target_id, \
         action, status, created_ms, deadline_ms, available_ms, redeliver_ms, \
         result_deadline_ms, finished_ms, held, position, document) ",
    );
    qb.push_values(chunk, |mut b, r| r.bind(&mut b));
    qb.push(" ON CONFLICT (order_id) DO NOTHING");
    qb.push(tail);
    qb
}

impl SqliteBackend {
    /// One state-change batch, in one write transaction: reads the candidates `select` returns
    /// (binding `key` as `?1` and `limit` as `?2`), moves each with `step` (a domain transition)
    /// and writes the results conditionally on the revision read. Candidates for which the
    /// domain refuses the transition are left alone.
    async fn transition_batch<K>(
        &self,
        select: &'static str,
        key: K,
        limit: usize,
        step: impl Fn(&Order) -> Option<Order> + Send,
    ) -> Result<Batch, StoreError>
    where
        K: for<'q> sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite> + Send + 'static,
    {
        let mut tx = self.write().await?;
        let candidates: Vec<Versioned> = sqlx::query_as(select)
            .bind(key)
            .bind(sql_int(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(convert_sqlx_err)?;
        let examined = candidates.len();
        let mut changes = Vec::with_capacity(examined);
        for (revision, document) in candidates {
            if let Some(next) = step(&decode(&document)?) {
                changes.push((next, revision));
            }
        }
        let changed = update_all(&mut tx, &changes).await?.len();
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(Batch { examined, changed })
    }
}

#[async_trait]
impl OrderStore for SqliteBackend {
    async fn insert(&self, orders: &[Order]) -> Result<u64, StoreError> {
        if orders.is_empty() {
            return Ok(0);
        }
        let rows = orders.iter().map(Row::of).collect::<Result<Vec<_>, _>>()?;
        let mut tx = self.write().await?;
        let created = insert_rows(&mut tx, rows).await?;
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(created)
    }

    /// [`Self::insert`] on the staged connection ([`SqliteBackend::staged`]): no fsync of its
    /// own.
    async fn insert_staged(&self, orders: &[Order]) -> Result<u64, StoreError> {
        if orders.is_empty() {
            return Ok(0);
        }
        let rows = rows_of(orders)?;
        let mut conn = self.staged().await?;
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(convert_sqlx_err)?;
        let created = insert_rows(&mut tx, rows).await?;
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(created)
    }

    async fn get(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        let doc: Option<String> =
            sqlx::query_scalar("SELECT document FROM orders WHERE order_id = ?1")
                .bind(id.to_string())
                .fetch_optional(&self.reader)
                .await
                .map_err(convert_sqlx_err)?;
        doc.as_deref().map(decode).transpose()
    }

    async fn query(
        &self,
        filter: &OrderFilter,
        page: &OrderPageRequest,
    ) -> Result<Page<Order, OrderCursor>, StoreError> {
        let mut qb = query_sql(filter, page);
        let docs: Vec<String> = qb
            .build_query_scalar()
            .fetch_all(&self.reader)
            .await
            .map_err(convert_sqlx_err)?;
        let items = docs
            .iter()
            .map(|d| decode(d))
            .collect::<Result<Vec<_>, _>>()?;
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
        let now_ms = now.timestamp_millis();
        let (agents, components) = consumer_lists(consumers)?;
        let mut tx = self.write().await?;
        let candidates: Vec<Versioned> = sqlx::query_as(CLAIM_CANDIDATES)
            .bind(agents)
            .bind(components)
            .bind(now_ms)
            .bind(sql_int(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(convert_sqlx_err)?;
        let mut changes = Vec::with_capacity(candidates.len());
        for (revision, document) in candidates {
            if let Ok(next) = decode(&document)?.deliver(now, policy) {
                changes.push((next, revision));
            }
        }
        let written = update_all(&mut tx, &changes).await?;
        let claimed: Vec<Order> = changes
            .into_iter()
            .map(|(next, _)| next)
            .filter(|o| written.contains(&o.order_id().to_string()))
            .collect();
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(claimed)
    }

    async fn replace(&self, current: &Order, next: &Order) -> Result<(), ReplaceError> {
        if next.order_id() != current.order_id() {
            // `next` is not a version of the stored order; writing it would clobber another row.
            return Err(ReplaceError::Conflict);
        }
        let mut tx = self.write().await?;
        let stored: Option<Versioned> =
            sqlx::query_as("SELECT revision, document FROM orders WHERE order_id = ?1")
                .bind(current.order_id().to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(convert_sqlx_err)?;
        let Some((revision, document)) = stored else {
            return Err(ReplaceError::NotFound);
        };
        if decode(&document)? != *current {
            return Err(ReplaceError::Conflict);
        }
        if update_all(&mut tx, &[(next.clone(), revision)])
            .await?
            .is_empty()
        {
            return Err(ReplaceError::Conflict);
        }
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(())
    }

    async fn next_due(
        &self,
        consumers: &Consumers,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        if consumers.is_empty() {
            return Ok(None);
        }
        let (agents, components) = consumer_lists(consumers)?;
        let due: Option<i64> = sqlx::query_scalar(NEXT_DUE)
            .bind(agents)
            .bind(components)
            .bind(now.timestamp_millis())
            .fetch_one(&self.reader)
            .await
            .map_err(convert_sqlx_err)?;
        due.map(|ms| {
            DateTime::from_timestamp_millis(ms)
                .ok_or_else(|| StoreError::Corrupt(format!("time out of range: {ms} ms")))
        })
        .transpose()
    }

    async fn end_pending(
        &self,
        request: &RequestId,
        end: PendingEnd,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        self.transition_batch(END_CANDIDATES, request.to_string(), limit, |o| {
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
        if limit == 0 || below == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.write().await?;
        let candidates: Vec<Versioned> = sqlx::query_as(HELD_CANDIDATES)
            .bind(request.to_string())
            .bind(i64::try_from(below).unwrap_or(i64::MAX))
            .bind(sql_int(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(convert_sqlx_err)?;
        let mut changes = Vec::with_capacity(candidates.len());
        for (revision, document) in candidates {
            if let Ok(next) = decode(&document)?.release(now) {
                changes.push((next, revision));
            }
        }
        let written = update_all(&mut tx, &changes).await?;
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(changes
            .into_iter()
            .map(|(next, _)| next)
            .filter(|o| written.contains(&o.order_id().to_string()))
            .collect())
    }

    async fn result_groups(&self, request: &RequestId) -> Result<Vec<ResultGroup>, StoreError> {
        let rows: Vec<(String, i64, String, i64, String)> = sqlx::query_as(RESULT_GROUPS)
            .bind(request.to_string())
            .bind(sql_int(ResultGroup::MAX_GROUPS))
            .bind(sql_int(ResultGroup::SAMPLE))
            .fetch_all(&self.reader)
            .await
            .map_err(convert_sqlx_err)?;
        let mut groups: Vec<ResultGroup> = Vec::new();
        for (status, code, message, n, target_id) in rows {
            let status = parse_status(&status)?;
            let code = i16::try_from(code)
                .map_err(|_| StoreError::Corrupt(format!("result code out of range: {code}")))?;
            match groups.last_mut() {
                Some(g) if g.status == status && g.code == code && g.message == message => {
                    g.sample.push(target_id);
                }
                _ => groups.push(ResultGroup {
                    status,
                    code,
                    message,
                    count: u64::try_from(n).unwrap_or(0),
                    sample: vec![target_id],
                }),
            }
        }
        Ok(groups)
    }

    async fn expire_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Batch, StoreError> {
        if limit == 0 {
            return Ok(Batch::default());
        }
        // One statement instead of read, decode, transition, encode, write back: every order
        // `Order::is_expired` accepts changes the same way (`Order::expiry_patch`), merged into
        // its document by `json_patch` (RFC 7396, as the patch is defined). Selecting and
        // writing in one statement of this write transaction keeps it compare-and-set: no other
        // writer runs in between, and the `WHERE` is the transition's own condition.
        let patch = Order::expiry_patch(now);
        let json = serde_json::to_string(&patch)
            .map_err(|e| StoreError::Corrupt(format!("expiry patch cannot be encoded: {e}")))?;
        let mut tx = self.write().await?;
        let changed = sqlx::query(EXPIRE_DUE)
            .bind(patch.status().as_str())
            .bind(now.timestamp_millis())
            .bind(json)
            .bind(sql_int(limit))
            .execute(&mut *tx)
            .await
            .map_err(convert_sqlx_err)?
            .rows_affected();
        tx.commit().await.map_err(convert_sqlx_err)?;
        let changed = count(changed);
        Ok(Batch {
            examined: changed,
            changed,
        })
    }

    async fn give_up_unreported(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        self.transition_batch(GIVE_UP_CANDIDATES, now.timestamp_millis(), limit, |o| {
            o.give_up(now).ok()
        })
        .await
    }

    async fn purge_finished(
        &self,
        cutoff: DateTime<Utc>,
        mode: RetentionMode,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        let mut tx = self.write().await?;
        let due: Vec<(String, i64, String)> = sqlx::query_as(PURGE_CANDIDATES)
            .bind(cutoff.timestamp_millis())
            .bind(sql_int(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(convert_sqlx_err)?;
        let examined = due.len();
        let mut gone = Vec::with_capacity(examined);
        for (order_id, revision, document) in due {
            if decode(&document)?.finished_by(cutoff) {
                gone.push((order_id, revision));
            }
        }
        let mut changed = 0;
        for chunk in gone.chunks(CHUNK) {
            if mode == RetentionMode::Archive {
                let mut qb = QueryBuilder::<Sqlite>::new(
                    "INSERT OR REPLACE INTO orders_archive (order_id, request_id, agent_id, \
                     target_type, target_id, action, status, created_ms, deadline_ms, \
                     available_ms, redeliver_ms, result_deadline_ms, finished_ms, revision, \
                     document) \
                     SELECT order_id, request_id, agent_id, target_type, target_id, action, \
                     status, created_ms, deadline_ms, available_ms, redeliver_ms, \
                     result_deadline_ms, finished_ms, revision, document \
                     FROM orders WHERE (order_id, revision) IN (",
                );
                push_keys(&mut qb, chunk);
                qb.build()
                    .persistent(false)
                    .execute(&mut *tx)
                    .await
                    .map_err(convert_sqlx_err)?;
            }
            let mut qb =
                QueryBuilder::<Sqlite>::new("DELETE FROM orders WHERE (order_id, revision) IN (");
            push_keys(&mut qb, chunk);
            changed += count(
                qb.build()
                    .persistent(false)
                    .execute(&mut *tx)
                    .await
                    .map_err(convert_sqlx_err)?
                    .rows_affected(),
            );
        }
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(Batch { examined, changed })
    }

    async fn get_archived(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        let doc: Option<String> =
            sqlx::query_scalar("SELECT document FROM orders_archive WHERE order_id = ?1")
                .bind(id.to_string())
                .fetch_optional(&self.reader)
                .await
                .map_err(convert_sqlx_err)?;
        doc.as_deref().map(decode).transpose()
    }

    async fn progress(&self, request: &RequestId) -> Result<StatusCounts, StoreError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(PROGRESS)
            .bind(request.to_string())
            .fetch_all(&self.reader)
            .await
            .map_err(convert_sqlx_err)?;
        let mut counts = StatusCounts::default();
        for (status, n, errors) in rows {
            counts.add(parse_status(&status)?, u64::try_from(n).unwrap_or(0));
            counts.errors += u64::try_from(errors).unwrap_or(0);
        }
        Ok(counts)
    }

    async fn delete_request(&self, request: &RequestId) -> Result<u64, StoreError> {
        let mut tx = self.write().await?;
        let deleted = sqlx::query("DELETE FROM orders WHERE request_id = ?1")
            .bind(request.to_string())
            .execute(&mut *tx)
            .await
            .map_err(convert_sqlx_err)?
            .rows_affected();
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(deleted)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1 FROM orders LIMIT 0")
            .execute(&self.reader)
            .await
            .map_err(convert_sqlx_err)?;
        Ok(())
    }

    async fn first_due(
        &self,
        agents: &[AgentId],
        now: DateTime<Utc>,
    ) -> Result<Vec<Option<DateTime<Utc>>>, StoreError> {
        if agents.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(&agents.iter().map(AgentId::as_str).collect::<Vec<_>>())
            .map_err(|e| StoreError::Corrupt(format!("agents cannot be encoded: {e}")))?;
        let rows: Vec<(String, Option<i64>)> = sqlx::query_as(FIRST_DUE)
            .bind(ids)
            .fetch_all(&self.reader)
            .await
            .map_err(convert_sqlx_err)?;
        let due: HashMap<String, i64> = rows
            .into_iter()
            .filter_map(|(agent, t)| t.map(|t| (agent, t)))
            .collect();
        // A start or redelivery already past is answered as `now`: the agent's poll claims.
        let now_ms = now.timestamp_millis();
        agents
            .iter()
            .map(|a| {
                due.get(a.as_str())
                    .map(|&ms| {
                        DateTime::from_timestamp_millis(ms.max(now_ms)).ok_or_else(|| {
                            StoreError::Corrupt(format!("time out of range: {ms} ms"))
                        })
                    })
                    .transpose()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use cm_ports::testkit::{agent_id, at};
    use uuid::Uuid;

    use super::*;
    use crate::testing::{open, plan};

    /// The hot queries are answered from their index, without sorting.
    #[tokio::test]
    async fn hot_queries_walk_their_indexes() {
        let (store, _dir) = open().await;
        let p = plan(&store, CLAIM_CANDIDATES).await;
        assert!(p.contains("USING INDEX orders_claim (agent_id=?)"), "{p}");
        assert!(
            p.contains("USING INDEX orders_redeliver (agent_id=? AND redeliver_ms<?)"),
            "{p}"
        );
        assert!(
            p.contains("USING INDEX orders_claim_server (target_id=?)"),
            "{p}"
        );
        assert!(
            p.contains("USING INDEX orders_redeliver_server (target_id=? AND redeliver_ms<?)"),
            "{p}"
        );
        let p = plan(&store, NEXT_DUE).await;
        assert!(
            p.contains(
                "USING COVERING INDEX orders_available_server (target_id=? AND available_ms>?)"
            ),
            "{p}"
        );
        assert!(
            p.contains("USING COVERING INDEX orders_available (agent_id=? AND available_ms>?)"),
            "{p}"
        );
        assert!(
            p.contains("USING COVERING INDEX orders_redeliver (agent_id=? AND redeliver_ms>?)"),
            "{p}"
        );
        assert!(!p.contains("TEMP B-TREE"), "{p}");
        // The request gate is one primary-key lookup per candidate, in claims and next_due.
        for sql in [CLAIM_CANDIDATES, NEXT_DUE] {
            let p = plan(&store, sql).await;
            assert_eq!(
                p.matches("SEARCH r USING INDEX sqlite_autoindex_requests_1 (request_id=?)")
                    .count(),
                4,
                "{p}"
            );
        }
        // The first look of many polls: one seek per agent into each covering index.
        let p = plan(&store, FIRST_DUE).await;
        assert!(
            p.contains("USING COVERING INDEX orders_available (agent_id=?)"),
            "{p}"
        );
        assert!(
            p.contains("USING COVERING INDEX orders_redeliver (agent_id=?"),
            "{p}"
        );
        assert!(!p.contains("SCAN orders"), "{p}");
        let p = plan(&store, RESULT_GROUPS).await;
        assert!(p.contains("orders_request (request_id=?)"), "{p}");
        assert!(!p.contains("SCAN orders"), "{p}");
        for (sql, index) in [
            (END_CANDIDATES, "orders_request_pending (request_id=?)"),
            (HELD_CANDIDATES, "orders_held (request_id=? AND position<?)"),
            (EXPIRY_CANDIDATES, "orders_expiry"),
            (EXPIRE_DUE, "orders_expiry"),
            (GIVE_UP_CANDIDATES, "orders_result_deadline"),
            (PURGE_CANDIDATES, "orders_finished"),
            (PROGRESS, "orders_request"),
        ] {
            let p = plan(&store, sql).await;
            assert!(p.contains(index), "{sql}: {p}");
            assert!(!p.contains("TEMP B-TREE FOR ORDER BY"), "{sql}: {p}");
        }
        let page = OrderPageRequest {
            size: 100,
            after: Some(OrderCursor {
                created_at: at(0),
                order_id: OrderId::from_uuid(Uuid::nil()),
            }),
        };
        for (filter, index) in [
            (
                OrderFilter {
                    request_id: Some(RequestId::from_uuid(Uuid::nil())),
                    ..OrderFilter::default()
                },
                "orders_request",
            ),
            (
                OrderFilter {
                    agent_id: Some(agent_id("a1")),
                    ..OrderFilter::default()
                },
                "orders_agent",
            ),
            (OrderFilter::default(), "orders_created"),
        ] {
            let sql = query_sql(&filter, &page).into_string();
            let p = plan(&store, &sql).await;
            assert!(p.contains(index), "{sql}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{sql}: {p}");
        }
        store.close().await;
    }
}
