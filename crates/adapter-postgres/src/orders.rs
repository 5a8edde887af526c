//! [`OrderStore`] over the `orders` and `orders_archive` tables.
//!
//! Every state change runs the same way: lock the candidate rows (`FOR UPDATE SKIP LOCKED`, so
//! concurrent pollers, schedulers and instances each take different rows and never wait for
//! one another), compute the next state of each with the domain's transition function in
//! Rust, and write all of them back with one `UPDATE … FROM UNNEST(…)` that is still
//! conditional on the status the transition started from, all in one transaction. Expiry alone
//! is one `UPDATE`: it changes every order the same way (`Order::expiry_patch`), so the rows
//! need not travel to Rust and back.

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
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use crate::PostgresBackend;
use crate::error::{convert_sqlx_err, corrupt};
use crate::rows::{Columns, order_of, orders_of};

/// Orders written per `INSERT` statement. Measured on a 10,000-order fan-out (quick bench,
/// median of 5): 2,000 rows 0.26 s, 1,000 0.24 s, 500 0.22 s, 250 0.20 s, 100 0.20 s.
const INSERT_CHUNK: usize = 250;

/// The `INSERT` of a batch of orders, one array per column, followed by `$tail`.
macro_rules! insert_unnest {
    ($tail:literal) => {
        concat!(
            "INSERT INTO orders (order_id, request_id, agent_id, target_type, target_id, action,
                    status, created_at, deadline, available_at, redeliver_at, result_deadline,
                    finished_at, doc, held, position)
SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[],
                     $11::timestamptz[], $12::timestamptz[], $13::timestamptz[], $14::jsonb[],
                     $15::bool[], $16::int8[])",
            $tail
        )
    };
}

/// A batch of new orders; fails on the first order whose id exists.
const INSERT: &str = insert_unnest!("");

/// [`INSERT`], leaving out the orders that exist already (by id).
const INSERT_SKIPPING_EXISTING: &str = insert_unnest!(" ON CONFLICT (order_id) DO NOTHING");

/// The request gate of claims and next_due (`RequestState::delivers`): an order whose request
/// has a record goes out only while that record is `scheduled` or `running`; an order without a
/// record (written before records existed) always does.
///
/// Read in the claim's own statement, under READ COMMITTED: the statement's snapshot is safe
/// because a record is always committed no later than its orders (a large submit creates the
/// record, then writes the orders in later transactions; a small one writes both in one
/// statement, `RequestStore::write_whole`), so any order the statement sees has its record
/// visible to it too, never mistaken for an order without one. A state change
/// committed after the snapshot was taken is ordered after this claim, as if it came later.
macro_rules! request_gate {
    () => {
        "
  AND NOT EXISTS (SELECT 1 FROM requests r
                  WHERE r.request_id = orders.request_id
                    AND r.state NOT IN ('scheduled', 'running'))"
    };
}

/// The conditions under which `Order::is_deliverable` accepts an order at `$2`: not held, and
/// pending from `not_before` until (excluding) the deadline, or sent with a redelivery due.
/// Every claim statement selects with them.
macro_rules! deliverable {
    () => {
        "
  AND status IN ('pending', 'sent') AND NOT held
  AND ((status = 'pending' AND available_at <= $2 AND deadline > $2)
       OR (status = 'sent' AND redeliver_at <= $2))"
    };
}

/// The orders of the consumers (`$1` the agents' ids, `$4` the components' names) that are
/// deliverable at `$2` (`deliverable!`): an agent's by `agent_id`, a
/// component's by the `server` target naming it (`Consumers::takes`); and only while the
/// request gate is open. One statement, so that `SKIP LOCKED` skips the rows other claims hold
/// before `LIMIT` counts; each side of the `OR` reads its partial index (`orders_open_by_agent`,
/// `orders_open_by_server`, which leave held orders out), and the candidates are sorted.
///
/// It sorts by the row `(created_at, order_id)`, an order no index gives, on purpose: sorting by
/// the columns lets the planner walk `orders_by_time` (every order, oldest first) and filter,
/// betting that the consumers' orders come early. The bet fails when they have none or only new
/// ones, and the planner makes it whenever the statistics credit the consumers with many orders
/// (finished ones count): with 566,000 orders it cost 64 ms for three agents, and 343 ms a poll
/// for one agent with none open (`EXPLAIN ANALYZE`, after an autoanalyze), where the indexes
/// answer in 0.5 ms. So the cost stays that of the consumers' own open orders.
const SELECT_CLAIMABLE: &str = concat!(
    "
SELECT doc FROM orders
WHERE (agent_id = ANY($1::text[])
       OR (target_type = 'server' AND target_id = ANY($4::text[])))",
    deliverable!(),
    request_gate!(),
    "
ORDER BY ROW(created_at, order_id)
LIMIT $3
FOR UPDATE OF orders SKIP LOCKED"
);

/// [`SELECT_CLAIMABLE`] for one agent (`$1`), as every agent's own poll claims: `agent_id = $1`
/// and the statement's conditions select from `orders_open_by_agent` (`agent_id, created_at,
/// order_id`) in claim order, so the scan ends at `LIMIT`, whatever the rest of the table holds.
const SELECT_CLAIMABLE_BY_AGENT: &str = concat!(
    "
SELECT doc FROM orders
WHERE agent_id = $1",
    deliverable!(),
    request_gate!(),
    "
ORDER BY created_at, order_id
LIMIT $3
FOR UPDATE OF orders SKIP LOCKED"
);

/// The earliest instant after `$2` at which one of the orders of the consumers (`$1`, `$3` as in
/// [`SELECT_CLAIMABLE`]) becomes deliverable by itself (`Order::becomes_deliverable_after`): a
/// pending (not held) order's `not_before` or a sent order's redelivery, of a request whose gate
/// is open. Each `min` reads its partial index (`orders_pending_by_agent_available`,
/// `orders_sent_by_agent_redeliver` and their `server` twins); `LEAST` ignores the ones that
/// are `NULL`.
const NEXT_DUE: &str = concat!(
    "
SELECT LEAST(
    (SELECT min(available_at) FROM orders
     WHERE agent_id = ANY($1::text[]) AND status = 'pending' AND NOT held
       AND available_at > $2",
    request_gate!(),
    "),
    (SELECT min(redeliver_at) FROM orders
     WHERE agent_id = ANY($1::text[]) AND status = 'sent' AND redeliver_at > $2",
    request_gate!(),
    "),
    (SELECT min(available_at) FROM orders
     WHERE target_id = ANY($3::text[]) AND target_type = 'server'
       AND status = 'pending' AND NOT held AND available_at > $2",
    request_gate!(),
    "),
    (SELECT min(redeliver_at) FROM orders
     WHERE target_id = ANY($3::text[]) AND target_type = 'server'
       AND status = 'sent' AND redeliver_at > $2",
    request_gate!(),
    "))"
);

/// The first look of many agents' polls (`OrderStore::first_due`), `$1` their ids: per agent,
/// the earliest start of a pending (not held) order and the earliest redelivery of a sent one,
/// past or future, from the indexes of [`NEXT_DUE`], without the request gate or the deadline
/// (an answer may be early, never late).
const FIRST_DUE: &str = "
SELECT agent_id, min(t) FROM (
    SELECT agent_id, min(available_at) AS t FROM orders
    WHERE agent_id = ANY($1::text[]) AND status = 'pending' AND NOT held
    GROUP BY agent_id
    UNION ALL
    SELECT agent_id, min(redeliver_at) AS t FROM orders
    WHERE agent_id = ANY($1::text[]) AND status = 'sent' AND redeliver_at IS NOT NULL
    GROUP BY agent_id
) due
GROUP BY agent_id";

/// A consumer set as the two text arrays the claim and next-due queries bind.
fn consumer_arrays(consumers: &Consumers) -> (Vec<&str>, Vec<&str>) {
    (
        consumers.agents().iter().map(AgentId::as_str).collect(),
        consumers
            .components()
            .iter()
            .map(ComponentName::as_str)
            .collect(),
    )
}

/// The pending orders of request `$1`, held or not (`Order::end_pending` accepts exactly
/// these), oldest first, from `orders_pending_by_request`.
const SELECT_PENDING_OF_REQUEST: &str = "
SELECT doc FROM orders
WHERE request_id = $1 AND status = 'pending'
ORDER BY created_at, order_id
LIMIT $2
FOR UPDATE SKIP LOCKED";

/// The held orders of request `$1` in positions below `$2` (`Order::release` accepts exactly
/// these), lowest position first, from `orders_held_by_position`.
const SELECT_HELD: &str = "
SELECT doc FROM orders
WHERE request_id = $1 AND status = 'pending' AND held AND position < $2
ORDER BY position, order_id
LIMIT $3
FOR UPDATE SKIP LOCKED";

/// `Order::is_expired` at `$1` (never a held order: the index leaves them out, so a batch is
/// never spent on them).
/// Expires up to `$2` pending orders whose deadline passed at `$1` (`Order::is_expired`: never a
/// held one), earliest first, from `orders_pending_by_deadline`, in one statement: the rows are
/// locked (`SKIP LOCKED`, so concurrent schedulers take different ones), and each gets what
/// `Order::expire` changes: status `$3`, and the document's `command` merged with `$4`, the
/// merge patch of `Order::expiry_patch` (its `null` members are the keys removed, the others
/// are put). The rows are joined by primary key only: locking re-checks the `WHERE` on the
/// latest version of each row (READ COMMITTED), and the lock keeps it so until the commit, so
/// every row written is one `Order::expire` accepts. Repeating that condition outside made the
/// generic plan of this prepared statement hash-join every overdue row (125 ms instead of 28 ms
/// for a batch of 1,000 with 40,000 overdue: `EXPLAIN ANALYZE`, `plan_cache_mode =
/// force_generic_plan`).
const EXPIRE_DUE: &str = "
WITH due AS (
    SELECT order_id FROM orders
    WHERE status = 'pending' AND NOT held AND deadline <= $1
    ORDER BY deadline
    LIMIT $2
    FOR UPDATE SKIP LOCKED)
UPDATE orders o
SET status = $3, finished_at = $1, redeliver_at = NULL, result_deadline = NULL,
    doc = jsonb_set(o.doc, '{command}',
                    ((o.doc -> 'command')
                     - ARRAY(SELECT key FROM jsonb_each($4::jsonb) WHERE value = 'null'::jsonb))
                    || jsonb_strip_nulls($4::jsonb))
FROM due
WHERE o.order_id = due.order_id";

/// `Order::is_unreported` at `$1`.
const SELECT_UNREPORTED: &str = "
SELECT doc FROM orders
WHERE status IN ('sent', 'in_progress') AND result_deadline <= $1
ORDER BY result_deadline
LIMIT $2
FOR UPDATE SKIP LOCKED";

/// `Order::finished_by` at `$1`.
const SELECT_FINISHED: &str = "
SELECT doc FROM orders
WHERE status IN ('success', 'failure') AND finished_at <= $1
ORDER BY finished_at
LIMIT $2
FOR UPDATE SKIP LOCKED";

/// Writes transitions back, each only if the row still has the status (and held flag) it
/// started from. A transition never changes what an order is for (ids, target, action,
/// creation, position), so only the columns that follow the state are rewritten (the deadline
/// too: a release restarts it).
const WRITE_BACK: &str = "
UPDATE orders AS o
SET status = u.status,
    redeliver_at = u.redeliver_at,
    result_deadline = u.result_deadline,
    finished_at = u.finished_at,
    doc = u.doc,
    deadline = u.deadline,
    held = u.held
FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[],
            $6::jsonb[], $7::text[], $8::timestamptz[], $9::bool[], $10::bool[])
     AS u(order_id, status, redeliver_at, result_deadline, finished_at, doc, from_status,
          deadline, held, from_held)
WHERE o.order_id = u.order_id AND o.status = u.from_status AND o.held = u.from_held
RETURNING o.order_id";

/// Compare-and-set of one order against the document it was read as (`$16`, jsonb), in one
/// statement; also says whether the order exists at all.
const REPLACE_IF_SAME_DOC: &str = "
WITH replaced AS (
    UPDATE orders
    SET request_id = $2, agent_id = $3, target_type = $4, target_id = $5, action = $6,
        status = $7, created_at = $8, deadline = $9, available_at = $10, redeliver_at = $11,
        result_deadline = $12, finished_at = $13, doc = $14, held = $17, position = $18
    WHERE order_id = $1 AND status = $15 AND doc = $16
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM replaced) AS replaced,
       EXISTS (SELECT 1 FROM orders WHERE order_id = $1) AS present";

/// The same compare-and-set against the stored document's exact text (`$16`), for the rare
/// document whose stored form differs from how this build serialises the same order.
const REPLACE_IF_SAME_TEXT: &str = "
UPDATE orders
SET request_id = $2, agent_id = $3, target_type = $4, target_id = $5, action = $6,
    status = $7, created_at = $8, deadline = $9, available_at = $10, redeliver_at = $11,
    result_deadline = $12, finished_at = $13, doc = $14, held = $17, position = $18
WHERE order_id = $1 AND status = $15 AND doc::text = $16";

/// How many orders of request `$1` are in each status, and how many of them are failures of the
/// action (`Order::is_action_failure`: every failure except those the service ended as expired,
/// cancelled or stopped, result code -1). Documents are read only for failures.
const PROGRESS: &str = "
SELECT status, count(*) AS n,
       count(*) FILTER (WHERE status = 'failure' AND NOT coalesce(
           doc #>> '{command,result,code}' = '-1'
           AND doc #>> '{command,result,message}' IN ('expired', 'cancelled', 'stopped'),
           false)) AS errors
FROM orders WHERE request_id = $1 GROUP BY status";

/// The finished orders of request `$1` grouped by (status, result code, result message), the
/// `$2` largest groups in `ResultGroup::sort` order (`success` before `failure`, then code, then
/// message byte-wise), each with its `$3` smallest distinct target ids (byte-wise): one row per
/// sampled target, in group order then target order.
const RESULT_GROUPS: &str = r#"
WITH finished AS (
    SELECT status,
           coalesce((doc #>> '{command,result,code}')::int, 0) AS code,
           coalesce(doc #>> '{command,result,message}', '') COLLATE "C" AS message,
           target_id COLLATE "C" AS target_id
    FROM orders WHERE request_id = $1 AND status IN ('success', 'failure')),
groups AS (
    SELECT status, code, message, count(*) AS n,
           CASE status WHEN 'success' THEN 0 ELSE 1 END AS rank
    FROM finished GROUP BY status, code, message
    ORDER BY n DESC, rank, code, message
    LIMIT $2),
sampled AS (
    SELECT status, code, message, target_id,
           row_number() OVER (PARTITION BY status, code, message ORDER BY target_id) AS k
    FROM (SELECT DISTINCT status, code, message, target_id FROM finished) AS d)
SELECT g.status, g.code, g.message, g.n, s.target_id
FROM groups g JOIN sampled s USING (status, code, message)
WHERE s.k <= $3
ORDER BY g.n DESC, g.rank, g.code, g.message, s.target_id"#;

const ARCHIVE: &str = "
WITH moved AS (
    DELETE FROM orders WHERE order_id = ANY($1)
    RETURNING order_id, request_id, agent_id, status, created_at, finished_at, doc
)
INSERT INTO orders_archive (order_id, request_id, agent_id, status, created_at, finished_at, doc)
SELECT order_id, request_id, agent_id, status, created_at, finished_at, doc FROM moved
ON CONFLICT (order_id) DO UPDATE
SET request_id = EXCLUDED.request_id, agent_id = EXCLUDED.agent_id, status = EXCLUDED.status,
    created_at = EXCLUDED.created_at, finished_at = EXCLUDED.finished_at, doc = EXCLUDED.doc,
    archived_at = now()";

/// Whether `err` is a write refused because a row with its key exists already.
fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// What a transition started from: the row is written only if it still is so.
#[derive(Debug, Clone, Copy)]
struct Start {
    status: Status,
    held: bool,
}

impl Start {
    fn of(o: &Order) -> Self {
        Self {
            status: o.status(),
            held: o.is_held(),
        }
    }
}

/// Writes `(from, to)` transitions of rows this transaction has locked; returns the ids that
/// were written (a row whose status moved meanwhile is left alone).
async fn write_back(
    conn: &mut PgConnection,
    transitions: &[(Start, Order)],
) -> Result<Vec<Uuid>, StoreError> {
    if transitions.is_empty() {
        return Ok(Vec::new());
    }
    let c = Columns::of(transitions.iter().map(|(_, next)| next));
    let from: Vec<&str> = transitions.iter().map(|(f, _)| f.status.as_str()).collect();
    let from_held: Vec<bool> = transitions.iter().map(|(f, _)| f.held).collect();
    let rows = sqlx::query(WRITE_BACK)
        .bind(&c.order_id)
        .bind(&c.status)
        .bind(&c.redeliver_at)
        .bind(&c.result_deadline)
        .bind(&c.finished_at)
        .bind(&c.doc)
        .bind(&from)
        .bind(&c.deadline)
        .bind(&c.held)
        .bind(&from_held)
        .fetch_all(conn)
        .await
        .map_err(convert_sqlx_err)?;
    rows.iter()
        .map(|r| r.try_get::<Uuid, _>(0).map_err(convert_sqlx_err))
        .collect()
}

/// Writes `orders` with `insert` ([`INSERT`] or [`INSERT_SKIPPING_EXISTING`]) inside the
/// caller's transaction, [`INSERT_CHUNK`] rows a statement. Returns how many rows were created.
async fn insert_chunks(
    conn: &mut PgConnection,
    orders: &[Order],
    insert: &'static str,
) -> sqlx::Result<u64> {
    let mut created = 0;
    for chunk in orders.chunks(INSERT_CHUNK) {
        let c = Columns::of(chunk);
        debug_assert_eq!(c.len(), chunk.len());
        let done = c.bind_all(sqlx::query(insert)).execute(&mut *conn).await?;
        created += done.rows_affected();
    }
    Ok(created)
}

impl PostgresBackend {
    /// Writes `orders` with `insert` ([`INSERT`] or [`INSERT_SKIPPING_EXISTING`]) in one
    /// transaction, [`INSERT_CHUNK`] rows a statement: the batch becomes visible (and durable)
    /// all at once. Returns how many rows were created.
    async fn insert_batch(
        &self,
        orders: &[Order],
        insert: &'static str,
        staged: bool,
    ) -> sqlx::Result<u64> {
        let mut tx = self.pool.begin().await?;
        if staged {
            // Its commit returns without waiting for the WAL flush; the flush of the record's
            // commit, later in the same log, covers it (`OrderStore::insert_staged`).
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }
        let created = insert_chunks(&mut tx, orders, insert).await?;
        tx.commit().await?;
        Ok(created)
    }

    /// [`OrderStore::insert`], or [`OrderStore::insert_staged`] when `staged`.
    async fn insert_orders(&self, orders: &[Order], staged: bool) -> Result<u64, StoreError> {
        if orders.is_empty() {
            return Ok(0);
        }
        // Fresh ids never collide, so the batch is first written as it is: a plain `INSERT`
        // costs PostgreSQL less than the speculative insertion of `ON CONFLICT` (about 15% of
        // a 10,000-order fan-out's write). Only a batch that does hold an existing order (a
        // retried idempotent submit) is written again, skipping those.
        match self.insert_batch(orders, INSERT, staged).await {
            Err(e) if is_unique_violation(&e) => {
                tracing::debug!("some orders exist already; writing the batch skipping them");
                self.insert_batch(orders, INSERT_SKIPPING_EXISTING, staged)
                    .await
                    .map_err(convert_sqlx_err)
            }
            other => other.map_err(convert_sqlx_err),
        }
    }

    /// One maintenance batch: lock up to `limit` candidates selected by `select` (binding
    /// `now` and `limit`), move each with `step`, write them back, commit.
    async fn transition_batch(
        &self,
        select: &'static str,
        now: DateTime<Utc>,
        limit: usize,
        step: impl Fn(&Order) -> Option<Order>,
    ) -> Result<Batch, StoreError> {
        if limit == 0 {
            return Ok(Batch::default());
        }
        self.transition_locked(sqlx::query(select).bind(now).bind(sql_limit(limit)), step)
            .await
    }

    /// Locks the candidates `select` returns (a `FOR UPDATE SKIP LOCKED` query, its parameters
    /// bound), moves each with `step`, writes them back and commits.
    async fn transition_locked(
        &self,
        select: Query<'_, Postgres, PgArguments>,
        step: impl Fn(&Order) -> Option<Order>,
    ) -> Result<Batch, StoreError> {
        let mut tx = self.pool.begin().await.map_err(convert_sqlx_err)?;
        let rows = select.fetch_all(&mut *tx).await.map_err(convert_sqlx_err)?;
        let candidates = orders_of(&rows)?;
        let transitions: Vec<(Start, Order)> = candidates
            .iter()
            .filter_map(|o| step(o).map(|next| (Start::of(o), next)))
            .collect();
        let written = write_back(&mut tx, &transitions).await?;
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(Batch {
            examined: candidates.len(),
            changed: written.len(),
        })
    }
}

#[async_trait]
impl OrderStore for PostgresBackend {
    async fn insert(&self, orders: &[Order]) -> Result<u64, StoreError> {
        self.insert_orders(orders, false).await
    }

    async fn insert_staged(&self, orders: &[Order]) -> Result<u64, StoreError> {
        self.insert_orders(orders, true).await
    }

    async fn get(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        let row = sqlx::query("SELECT doc FROM orders WHERE order_id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        row.as_ref().map(order_of).transpose()
    }

    async fn query(
        &self,
        filter: &OrderFilter,
        page: &OrderPageRequest,
    ) -> Result<Page<Order, OrderCursor>, StoreError> {
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
        let mut q = QueryBuilder::<Postgres>::new("SELECT doc FROM orders WHERE TRUE");
        if let Some(s) = status {
            q.push(" AND status = ").push_bind(s.as_str());
        }
        if let Some(a) = agent_id {
            q.push(" AND agent_id = ").push_bind(a.as_str().to_owned());
        }
        if let Some(t) = target_type {
            q.push(" AND target_type = ").push_bind(t.as_str());
        }
        if let Some(t) = target_id {
            q.push(" AND target_id = ").push_bind(t.clone());
        }
        if let Some(r) = request_id {
            q.push(" AND request_id = ").push_bind(*r.as_uuid());
        }
        if let Some(a) = action {
            q.push(" AND action = ").push_bind(a.clone());
        }
        if let Some(t) = since {
            q.push(" AND created_at >= ").push_bind(*t);
        }
        if let Some(t) = until {
            q.push(" AND created_at < ").push_bind(*t);
        }
        if let Some(after) = &page.after {
            q.push(" AND (created_at, order_id) > (")
                .push_bind(after.created_at)
                .push(", ")
                .push_bind(*after.order_id.as_uuid())
                .push(")");
        }
        q.push(" ORDER BY created_at, order_id LIMIT ")
            .push_bind(sql_limit(page.size));
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        let items = orders_of(&rows)?;
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
        let mut tx = self.pool.begin().await.map_err(convert_sqlx_err)?;
        let query = match (consumers.agents(), consumers.components()) {
            ([agent], []) => sqlx::query(SELECT_CLAIMABLE_BY_AGENT)
                .bind(agent.as_str())
                .bind(now)
                .bind(sql_limit(limit)),
            _ => {
                let (agents, components) = consumer_arrays(consumers);
                sqlx::query(SELECT_CLAIMABLE)
                    .bind(agents)
                    .bind(now)
                    .bind(sql_limit(limit))
                    .bind(components)
            }
        };
        let rows = query.fetch_all(&mut *tx).await.map_err(convert_sqlx_err)?;
        let transitions: Vec<(Start, Order)> = orders_of(&rows)?
            .iter()
            .filter_map(|o| o.deliver(now, policy).ok().map(|next| (Start::of(o), next)))
            .collect();
        let written: HashSet<Uuid> = write_back(&mut tx, &transitions)
            .await?
            .into_iter()
            .collect();
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(transitions
            .into_iter()
            .map(|(_, next)| next)
            .filter(|o| written.contains(o.order_id().as_uuid()))
            .collect())
    }

    async fn replace(&self, current: &Order, next: &Order) -> Result<(), ReplaceError> {
        let c = Columns::of([next]);
        let bind_next = |sql: &'static str| {
            sqlx::query(sql)
                .bind(current.order_id().as_uuid())
                .bind(c.request_id[0])
                .bind(c.agent_id[0])
                .bind(c.target_type[0])
                .bind(c.target_id[0])
                .bind(c.action[0])
                .bind(c.status[0])
                .bind(c.created_at[0])
                .bind(c.deadline[0])
                .bind(c.available_at[0])
                .bind(c.redeliver_at[0])
                .bind(c.result_deadline[0])
                .bind(c.finished_at[0])
                .bind(Json(next))
                .bind(current.status().as_str())
        };
        // Fast path: the stored document is the one `current` serialises to.
        let row = bind_next(REPLACE_IF_SAME_DOC)
            .bind(Json(current))
            .bind(c.held[0])
            .bind(c.position[0])
            .fetch_one(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        let replaced: bool = row.try_get("replaced").map_err(convert_sqlx_err)?;
        let present: bool = row.try_get("present").map_err(convert_sqlx_err)?;
        if replaced {
            return Ok(());
        }
        if !present {
            return Err(ReplaceError::NotFound);
        }
        // The stored document differs from `current`'s serialisation. It may still be the same
        // order (a document written by another version, in another shape): compare as the
        // domain does, then compare-and-set against the exact stored text.
        let Some(row) = sqlx::query("SELECT doc::text AS raw, doc FROM orders WHERE order_id = $1")
            .bind(current.order_id().as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(convert_sqlx_err)?
        else {
            return Err(ReplaceError::NotFound);
        };
        let stored = order_of(&row)?;
        if stored != *current {
            return Err(ReplaceError::Conflict);
        }
        let raw: String = row.try_get("raw").map_err(convert_sqlx_err)?;
        let done = bind_next(REPLACE_IF_SAME_TEXT)
            .bind(raw)
            .bind(c.held[0])
            .bind(c.position[0])
            .execute(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(ReplaceError::Conflict)
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
        let (agents, components) = consumer_arrays(consumers);
        sqlx::query_scalar(NEXT_DUE)
            .bind(agents)
            .bind(now)
            .bind(components)
            .fetch_one(&self.pool)
            .await
            .map_err(convert_sqlx_err)
    }

    async fn end_pending(
        &self,
        request: &RequestId,
        end: PendingEnd,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        if limit == 0 {
            return Ok(Batch::default());
        }
        let select = sqlx::query(SELECT_PENDING_OF_REQUEST)
            .bind(request.as_uuid())
            .bind(sql_limit(limit));
        self.transition_locked(select, |o| o.end_pending(now, end).ok())
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
        let mut tx = self.pool.begin().await.map_err(convert_sqlx_err)?;
        let rows = sqlx::query(SELECT_HELD)
            .bind(request.as_uuid())
            .bind(i64::try_from(below).unwrap_or(i64::MAX))
            .bind(sql_limit(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(convert_sqlx_err)?;
        let transitions: Vec<(Start, Order)> = orders_of(&rows)?
            .iter()
            .filter_map(|o| o.release(now).ok().map(|next| (Start::of(o), next)))
            .collect();
        let written: HashSet<Uuid> = write_back(&mut tx, &transitions)
            .await?
            .into_iter()
            .collect();
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(transitions
            .into_iter()
            .map(|(_, next)| next)
            .filter(|o| written.contains(o.order_id().as_uuid()))
            .collect())
    }

    async fn result_groups(&self, request: &RequestId) -> Result<Vec<ResultGroup>, StoreError> {
        let rows = sqlx::query(RESULT_GROUPS)
            .bind(request.as_uuid())
            .bind(sql_limit(ResultGroup::MAX_GROUPS))
            .bind(sql_limit(ResultGroup::SAMPLE))
            .fetch_all(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        let mut groups: Vec<ResultGroup> = Vec::new();
        for row in &rows {
            let status: String = row.try_get("status").map_err(convert_sqlx_err)?;
            let status = Status::parse(&status, "status").map_err(corrupt)?;
            let code: i32 = row.try_get("code").map_err(convert_sqlx_err)?;
            let code = i16::try_from(code)
                .map_err(|_| corrupt(format!("result code out of range: {code}")))?;
            let message: String = row.try_get("message").map_err(convert_sqlx_err)?;
            let n: i64 = row.try_get("n").map_err(convert_sqlx_err)?;
            let target_id: String = row.try_get("target_id").map_err(convert_sqlx_err)?;
            match groups.last_mut() {
                Some(g) if g.status == status && g.code == code && g.message == message => {
                    g.sample.push(target_id);
                }
                _ => groups.push(ResultGroup {
                    status,
                    code,
                    message,
                    count: u64::try_from(n).unwrap_or_default(),
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
        // One statement instead of lock, read, decode, transition, encode, write back: every
        // order `Order::is_expired` accepts changes the same way.
        let patch = Order::expiry_patch(now);
        let changed = sqlx::query(EXPIRE_DUE)
            .bind(now)
            .bind(sql_limit(limit))
            .bind(patch.status().as_str())
            .bind(Json(&patch))
            .execute(&self.pool)
            .await
            .map_err(convert_sqlx_err)?
            .rows_affected();
        let changed = usize::try_from(changed).unwrap_or(usize::MAX);
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
        self.transition_batch(SELECT_UNREPORTED, now, limit, |o| o.give_up(now).ok())
            .await
    }

    async fn purge_finished(
        &self,
        cutoff: DateTime<Utc>,
        mode: RetentionMode,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        if limit == 0 {
            return Ok(Batch::default());
        }
        let mut tx = self.pool.begin().await.map_err(convert_sqlx_err)?;
        let rows = sqlx::query(SELECT_FINISHED)
            .bind(cutoff)
            .bind(sql_limit(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(convert_sqlx_err)?;
        let candidates = orders_of(&rows)?;
        let due: Vec<Uuid> = candidates
            .iter()
            .filter(|o| o.finished_by(cutoff))
            .map(|o| *o.order_id().as_uuid())
            .collect();
        let changed = if due.is_empty() {
            0
        } else {
            let sql = match mode {
                RetentionMode::Delete => "DELETE FROM orders WHERE order_id = ANY($1)",
                // Moved in one statement: an order leaves the stream only into the archive.
                RetentionMode::Archive => ARCHIVE,
            };
            sqlx::query(sql)
                .bind(&due)
                .execute(&mut *tx)
                .await
                .map_err(convert_sqlx_err)?
                .rows_affected()
        };
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(Batch {
            examined: candidates.len(),
            changed: usize::try_from(changed).unwrap_or(usize::MAX),
        })
    }

    async fn get_archived(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        let row = sqlx::query("SELECT doc FROM orders_archive WHERE order_id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        row.as_ref().map(order_of).transpose()
    }

    async fn progress(&self, request: &RequestId) -> Result<StatusCounts, StoreError> {
        let rows = sqlx::query(PROGRESS)
            .bind(request.as_uuid())
            .fetch_all(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        let mut counts = StatusCounts::default();
        for row in &rows {
            let status: String = row.try_get("status").map_err(convert_sqlx_err)?;
            let n: i64 = row.try_get("n").map_err(convert_sqlx_err)?;
            let errors: i64 = row.try_get("errors").map_err(convert_sqlx_err)?;
            let status = Status::parse(&status, "status").map_err(corrupt)?;
            counts.add(status, u64::try_from(n).unwrap_or_default());
            counts.errors += u64::try_from(errors).unwrap_or_default();
        }
        Ok(counts)
    }

    async fn delete_request(&self, request: &RequestId) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM orders WHERE request_id = $1")
            .bind(request.as_uuid())
            .execute(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        Ok(done.rows_affected())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            // Whatever made `SELECT 1` fail, the backend is not usable now.
            .map_err(|e| StoreError::Unavailable(convert_sqlx_err(e).to_string()))
    }

    async fn first_due(
        &self,
        agents: &[AgentId],
        now: DateTime<Utc>,
    ) -> Result<Vec<Option<DateTime<Utc>>>, StoreError> {
        if agents.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = agents.iter().map(AgentId::as_str).collect();
        let rows: Vec<(String, Option<DateTime<Utc>>)> = sqlx::query_as(FIRST_DUE)
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        let due: HashMap<String, DateTime<Utc>> = rows
            .into_iter()
            .filter_map(|(agent, t)| t.map(|t| (agent, t)))
            .collect();
        // A start or redelivery already past is answered as `now`: the agent's poll claims.
        Ok(agents
            .iter()
            .map(|a| due.get(a.as_str()).map(|&t| t.max(now)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use cm_ports::testkit::{OrderSpec, at};
    use sqlx::{Connection, Executor};

    use super::*;
    use crate::PostgresSettings;

    /// A migrated backend on a database of its own on the test server (`CM_TEST_POSTGRES_URL`),
    /// named as the integration tests name theirs, so that their clean-up drops it.
    async fn fresh() -> PostgresBackend {
        let url = std::env::var("CM_TEST_POSTGRES_URL")
            .or_else(|_| std::env::var("DATABASE_URL"))
            .expect("CM_TEST_POSTGRES_URL: a PostgreSQL server (`cargo xtask test` starts one)");
        let name = format!("cm_test_{}", Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(&url).await.expect("connect");
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        let (head, options) = url
            .split_once('?')
            .map_or((url.as_str(), None), |(h, o)| (h, Some(o)));
        let (scheme, rest) = head.split_once("://").expect("a postgres:// URL");
        let authority = rest.split('/').next().unwrap_or_default();
        let mut url = format!("{scheme}://{authority}/{name}");
        if let Some(options) = options {
            url = format!("{url}?{options}");
        }
        PostgresBackend::open(&PostgresSettings {
            url,
            max_connections: 4,
            connect_timeout_secs: 10,
        })
        .await
        .expect("open")
    }

    async fn plan(backend: &PostgresBackend, query: Query<'_, Postgres, PgArguments>) -> String {
        let rows = query.fetch_all(&backend.pool).await.expect("explain");
        rows.iter()
            .map(|r| r.get::<String, _>(0))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn claims_read_their_consumers_open_orders_however_many_orders_statistics_credit_them() {
        // The statistics credit `busy` with many orders (all finished) among 20,000 others. A
        // planner free to sort by the columns walks `orders_by_time` (every order, oldest
        // first) expecting `busy`'s open orders early, and reads the whole table to find none.
        let backend = fresh().await;
        let others: Vec<Order> = (0..20_000)
            .map(|i| OrderSpec::agent(&format!("a{i:05}")).build())
            .collect();
        for batch in others.chunks(2_000) {
            backend.insert(batch).await.expect("insert");
        }
        for _ in 0..2 {
            let busy = OrderSpec::agent("busy").many(1_000);
            backend.insert(&busy).await.expect("insert");
        }
        let mut conn = backend.pool.acquire().await.expect("connection");
        conn.execute(
            "UPDATE orders SET status = 'success', finished_at = created_at \
             WHERE agent_id = 'busy'; ANALYZE orders",
        )
        .await
        .expect("finish busy's orders, then analyze");
        drop(conn);

        let explain = |sql: &str| sqlx::AssertSqlSafe(format!("EXPLAIN {sql}"));
        let one = plan(
            &backend,
            sqlx::query(explain(SELECT_CLAIMABLE_BY_AGENT))
                .bind("busy")
                .bind(at(1))
                .bind(10_i64),
        )
        .await;
        let several = plan(
            &backend,
            sqlx::query(explain(SELECT_CLAIMABLE))
                .bind(vec!["busy", "idle"])
                .bind(at(1))
                .bind(10_i64)
                .bind(Vec::<String>::new()),
        )
        .await;
        for plan in [one, several] {
            assert!(
                !plan.contains("orders_by_time"),
                "walks every order:\n{plan}"
            );
            assert!(plan.contains("orders_open_by_agent"), "{plan}");
        }
    }
}
