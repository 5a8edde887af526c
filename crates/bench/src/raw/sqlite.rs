//! SQLite: the service's own database file, opened with the service's pragmas.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};

use super::{Row, Timed, expired_result, format_millis};

/// Rows per multi-row `INSERT` (14 bound values each; SQLite allows 32,766 per statement).
const CHUNK: usize = 2000;

/// One connection to the service's SQLite file.
#[derive(Debug)]
pub(crate) struct SqliteRaw {
    pool: SqlitePool,
}

impl SqliteRaw {
    /// Opens `path` (created and migrated by the service) as the service does: WAL,
    /// `synchronous = FULL`.
    pub(crate) async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub(crate) async fn version(&self) -> Result<String> {
        let v: String = sqlx::query_scalar("SELECT sqlite_version()")
            .fetch_one(&self.pool)
            .await?;
        Ok(format!("SQLite {v} (bundled with sqlx)"))
    }

    /// One `BEGIN IMMEDIATE … COMMIT` of multi-row `INSERT`s into `orders`.
    pub(crate) async fn write(&self, docs: &[Value]) -> Result<Timed> {
        let rows = docs.iter().map(Row::of).collect::<Result<Vec<_>>>()?;
        let mut conn = self.pool.acquire().await?;
        let started = Instant::now();
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let mut written = 0;
        for chunk in rows.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO orders (order_id, request_id, agent_id, target_type, target_id, \
                 action, status, created_ms, deadline_ms, available_ms, redeliver_ms, \
                 result_deadline_ms, finished_ms, document) ",
            );
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(&r.order_id)
                    .push_bind(&r.request_id)
                    .push_bind(&r.agent_id)
                    .push_bind(&r.target_type)
                    .push_bind(&r.target_id)
                    .push_bind(&r.action)
                    .push_bind(&r.status)
                    .push_bind(r.created.timestamp_millis())
                    .push_bind(r.deadline.timestamp_millis())
                    .push_bind(r.available.timestamp_millis())
                    .push_bind(None::<i64>)
                    .push_bind(None::<i64>)
                    .push_bind(None::<i64>)
                    .push_bind(&r.document);
            });
            written += qb.build().execute(&mut *conn).await?.rows_affected();
        }
        sqlx::query("COMMIT").execute(&mut *conn).await?;
        Ok(Timed {
            elapsed: started.elapsed(),
            method: format!(
                "one transaction of {CHUNK}-row `INSERT`s into `orders` (WAL, synchronous=FULL)"
            ),
            rows: written,
        })
    }

    pub(crate) async fn count_request(&self, request_id: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE request_id = ?1")
            .bind(request_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n)?)
    }

    /// Untimed: the request's orders back to pending. Timed: one `UPDATE` of every overdue
    /// pending order to failure, document included, in one transaction.
    pub(crate) async fn expire(&self, request_id: &str, now: DateTime<Utc>) -> Result<Timed> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query(
            "UPDATE orders SET status = 'pending', finished_ms = NULL, revision = revision + 1, \
             document = json_set(json_remove(document, '$.command.result', \
                                             '$.command.finished_at'), \
                                 '$.command.status', 'pending') \
             WHERE request_id = ?1",
        )
        .bind(request_id)
        .execute(&mut *conn)
        .await?;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut *conn)
            .await?;
        let result = expired_result().to_string();
        let started = Instant::now();
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let changed = sqlx::query(
            "UPDATE orders SET status = 'failure', finished_ms = ?1, revision = revision + 1, \
             document = json_set(document, '$.command.status', 'failure', \
                                 '$.command.result', json(?2), '$.command.finished_at', ?3) \
             WHERE status = 'pending' AND deadline_ms <= ?1",
        )
        .bind(now.timestamp_millis())
        .bind(&result)
        .bind(format_millis(now))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        sqlx::query("COMMIT").execute(&mut *conn).await?;
        Ok(Timed {
            elapsed: started.elapsed(),
            method: "one `UPDATE … SET status = 'failure', document = json_set(…) \
                     WHERE status = 'pending' AND deadline_ms <= now`"
                .to_owned(),
            rows: changed,
        })
    }
}
