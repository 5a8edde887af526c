//! PostgreSQL: the service's own database, through sqlx.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

use super::{Row, Timed, expired_result, format_millis};

/// Rows per `INSERT … SELECT FROM UNNEST` statement: one statement for a whole 10,000-order
/// fan-out. (The service's adapter writes 250 rows a statement, which is faster for it; a
/// baseline that also tried 250-row statements was no faster than this one, and the third
/// copy of every fan-out it wrote, 50,000 more rows, tripled the delivery latency measured
/// later in the run: p50 8 ms -> 25 ms.)
const CHUNK: usize = 10_000;

const COLUMNS: &str = "order_id, request_id, agent_id, target_type, target_id, action, status, \
                       created_at, deadline, available_at, doc";

const INSERT_UNNEST: &str = "INSERT INTO orders (order_id, request_id, agent_id, target_type, \
     target_id, action, status, created_at, deadline, available_at, doc) \
     SELECT o, r, a, tt, ti, ac, s, c, d, av, doc::jsonb \
     FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::text[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], \
                 $11::text[]) AS u(o, r, a, tt, ti, ac, s, c, d, av, doc)";

/// A pool on the service's database.
#[derive(Debug)]
pub(crate) struct PostgresRaw {
    pool: PgPool,
}

impl PostgresRaw {
    pub(crate) async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
            .context("cannot connect to PostgreSQL")?;
        Ok(Self { pool })
    }

    pub(crate) async fn version(&self) -> Result<String> {
        let v: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&self.pool)
            .await?;
        Ok(format!("PostgreSQL {v}"))
    }

    /// The faster of two ways, each one transaction into `orders`: multi-row
    /// `INSERT … SELECT FROM UNNEST` and `COPY … FROM STDIN`. Both write every document (the
    /// second under another set of fresh ids); the faster is reported.
    pub(crate) async fn write(&self, docs: &[Value]) -> Result<Timed> {
        let unnest = self.write_unnest(docs).await?;
        let copy = self.write_copy(&super::with_fresh_ids(docs)).await?;
        Ok(if copy.elapsed < unnest.elapsed {
            copy
        } else {
            unnest
        })
    }

    async fn write_unnest(&self, docs: &[Value]) -> Result<Timed> {
        let rows = docs.iter().map(Row::of).collect::<Result<Vec<_>>>()?;
        let chunks: Vec<Columns> = rows.chunks(CHUNK).map(Columns::of).collect::<Result<_>>()?;
        let started = Instant::now();
        let mut tx = self.pool.begin().await?;
        let mut written = 0;
        for c in &chunks {
            written += sqlx::query(INSERT_UNNEST)
                .bind(&c.order_id)
                .bind(&c.request_id)
                .bind(&c.agent_id)
                .bind(&c.target_type)
                .bind(&c.target_id)
                .bind(&c.action)
                .bind(&c.status)
                .bind(&c.created)
                .bind(&c.deadline)
                .bind(&c.available)
                .bind(&c.doc)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(Timed {
            elapsed: started.elapsed(),
            method: format!(
                "one transaction of {CHUNK}-row `INSERT … SELECT FROM UNNEST` into `orders`"
            ),
            rows: written,
        })
    }

    async fn write_copy(&self, docs: &[Value]) -> Result<Timed> {
        let rows = docs.iter().map(Row::of).collect::<Result<Vec<_>>>()?;
        let started = Instant::now();
        let mut csv = String::with_capacity(rows.len() * 900);
        for r in &rows {
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{},{},{},{},{}",
                r.order_id,
                r.request_id,
                r.agent_id.as_deref().map(quote).unwrap_or_default(),
                quote(&r.target_type),
                quote(&r.target_id),
                quote(&r.action),
                quote(&r.status),
                format_millis(r.created),
                format_millis(r.deadline),
                format_millis(r.available),
                quote(&r.document),
            );
        }
        let mut tx = self.pool.begin().await?;
        let mut copy = tx
            .copy_in_raw(&format!(
                "COPY orders ({COLUMNS}) FROM STDIN WITH (FORMAT csv)"
            ))
            .await?;
        copy.send(csv.as_bytes()).await?;
        let written = copy.finish().await?;
        tx.commit().await?;
        Ok(Timed {
            elapsed: started.elapsed(),
            method: "one transaction of `COPY orders FROM STDIN (FORMAT csv)`".to_owned(),
            rows: written,
        })
    }

    pub(crate) async fn count_request(&self, request_id: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE request_id = $1")
            .bind(Uuid::parse_str(request_id)?)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n)?)
    }

    /// Untimed: the request's orders back to pending, then `VACUUM` so the timed update finds
    /// the table as the scheduler did. Timed: one `UPDATE` of every overdue pending order.
    pub(crate) async fn expire(&self, request_id: &str, now: DateTime<Utc>) -> Result<Timed> {
        sqlx::query(
            "UPDATE orders SET status = 'pending', finished_at = NULL, \
             doc = jsonb_set(doc #- '{command,result}' #- '{command,finished_at}', \
                             '{command,status}', '\"pending\"') \
             WHERE request_id = $1",
        )
        .bind(Uuid::parse_str(request_id)?)
        .execute(&self.pool)
        .await?;
        sqlx::query("VACUUM orders").execute(&self.pool).await?;
        let result = expired_result();
        let started = Instant::now();
        let changed = sqlx::query(
            "UPDATE orders SET status = 'failure', finished_at = $1, \
             doc = jsonb_set(jsonb_set(jsonb_set(doc, '{command,status}', '\"failure\"'), \
                                       '{command,result}', $2), \
                             '{command,finished_at}', to_jsonb($3::text)) \
             WHERE status = 'pending' AND deadline <= $1",
        )
        .bind(now)
        .bind(sqlx::types::Json(&result))
        .bind(format_millis(now))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(Timed {
            elapsed: started.elapsed(),
            method: "one `UPDATE … SET status = 'failure', doc = jsonb_set(…) WHERE status = \
                     'pending' AND deadline <= now()`"
                .to_owned(),
            rows: changed,
        })
    }
}

/// A CSV field, quoted.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// One array per column.
#[derive(Debug, Default)]
struct Columns {
    order_id: Vec<Uuid>,
    request_id: Vec<Uuid>,
    agent_id: Vec<Option<String>>,
    target_type: Vec<String>,
    target_id: Vec<String>,
    action: Vec<String>,
    status: Vec<String>,
    created: Vec<DateTime<Utc>>,
    deadline: Vec<DateTime<Utc>>,
    available: Vec<DateTime<Utc>>,
    doc: Vec<String>,
}

impl Columns {
    fn of(rows: &[Row]) -> Result<Self> {
        let mut c = Self::default();
        for r in rows {
            c.order_id.push(Uuid::parse_str(&r.order_id)?);
            c.request_id.push(Uuid::parse_str(&r.request_id)?);
            c.agent_id.push(r.agent_id.clone());
            c.target_type.push(r.target_type.clone());
            c.target_id.push(r.target_id.clone());
            c.action.push(r.action.clone());
            c.status.push(r.status.clone());
            c.created.push(r.created);
            c.deadline.push(r.deadline);
            c.available.push(r.available);
            c.doc.push(r.document.clone());
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn csv_fields_double_their_quotes() {
        assert_eq!(quote(r#"{"a":"b"}"#), r#""{""a"":""b""}""#);
    }
}
