//! The raw baselines: the fastest write (and bulk update) each backend takes for the very
//! documents the service wrote, through the backend's own client library, into the same table or
//! index. They answer "how much slower than the storage itself is the service?".
//!
//! Each timed operation is durable on return in the same sense as the service's: SQLite commits
//! with the service's pragmas (WAL, `synchronous = FULL`), PostgreSQL commits, OpenSearch answers
//! the bulk request (the translog is synced per request). Converting documents into columns is
//! done before the clock starts: only the round trips to the backend are timed.

mod opensearch;
mod postgres;
mod sqlite;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

pub(crate) use self::opensearch::OpenSearchRaw;
pub(crate) use self::postgres::PostgresRaw;
pub(crate) use self::sqlite::SqliteRaw;

/// The orders index of the OpenSearch backend (the service's default, `wazuh-commands`).
pub(crate) const OPENSEARCH_ORDERS_INDEX: &str = "wazuh-commands";

/// One timed raw operation.
#[derive(Debug, Clone)]
pub(crate) struct Timed {
    pub(crate) elapsed: Duration,
    pub(crate) method: String,
    /// Rows or documents the backend reported as written.
    pub(crate) rows: u64,
}

/// A backend's raw access.
#[derive(Debug)]
pub(crate) enum Raw {
    /// A `HashMap` of the documents: what an in-process store cannot beat.
    Memory,
    Sqlite(SqliteRaw),
    Postgres(PostgresRaw),
    OpenSearch(OpenSearchRaw),
}

impl Raw {
    /// The backend server's version, when it has one.
    pub(crate) async fn version(&self) -> Option<String> {
        match self {
            Self::Memory => None,
            Self::Sqlite(r) => r.version().await.ok(),
            Self::Postgres(r) => r.version().await.ok(),
            Self::OpenSearch(r) => r.version().await.ok(),
        }
    }

    /// Writes `docs` (orders nobody has written yet) the fastest way the backend knows.
    pub(crate) async fn write(&self, docs: Vec<Value>) -> Result<Timed> {
        let n = docs.len() as u64;
        let timed = match self {
            Self::Memory => {
                let keyed: Vec<(String, Value)> = docs
                    .into_iter()
                    .map(|d| (order_id(&d).map(str::to_owned), d))
                    .map(|(id, d)| id.map(|id| (id, d)))
                    .collect::<Result<_>>()?;
                let started = Instant::now();
                let mut map = HashMap::with_capacity(keyed.len());
                for (id, doc) in keyed {
                    map.insert(id, doc);
                }
                let elapsed = started.elapsed();
                std::hint::black_box(&map);
                Timed {
                    elapsed,
                    method: "`HashMap::insert` of each document".to_owned(),
                    rows: map.len() as u64,
                }
            }
            Self::Sqlite(r) => r.write(&docs).await?,
            Self::Postgres(r) => r.write(&docs).await?,
            Self::OpenSearch(r) => r.write(&docs).await?,
        };
        if timed.rows != n {
            bail!("the raw write stored {} of {n} documents", timed.rows);
        }
        Ok(timed)
    }

    /// The stored orders of one request, counted by the backend itself (after a refresh where
    /// searches need one); `None` for memory, whose store the service holds.
    pub(crate) async fn count_request(&self, request_id: &str) -> Result<Option<u64>> {
        match self {
            Self::Memory => Ok(None),
            Self::Sqlite(r) => r.count_request(request_id).await.map(Some),
            Self::Postgres(r) => r.count_request(request_id).await.map(Some),
            Self::OpenSearch(r) => r.count_request(request_id).await.map(Some),
        }
    }

    /// Puts the (expired) orders of `request_id` back to pending, untimed, then times the
    /// backend's bulk update that expires every overdue pending order. `docs` are the orders as
    /// the API returned them (used by the memory baseline only).
    pub(crate) async fn expire(&self, request_id: &str, docs: Vec<Value>) -> Result<Timed> {
        let now = Utc::now();
        match self {
            Self::Memory => memory_expire(docs, now),
            Self::Sqlite(r) => r.expire(request_id, now).await,
            Self::Postgres(r) => r.expire(request_id, now).await,
            Self::OpenSearch(r) => r.expire(request_id, now).await,
        }
    }
}

fn memory_expire(docs: Vec<Value>, now: DateTime<Utc>) -> Result<Timed> {
    let mut map: HashMap<String, (DateTime<Utc>, Value)> = HashMap::with_capacity(docs.len());
    for mut doc in docs {
        let row = Row::of(&doc)?;
        doc["command"]["status"] = json!("pending");
        if let Some(c) = doc["command"].as_object_mut() {
            c.remove("result");
            c.remove("finished_at");
        }
        map.insert(row.order_id, (row.deadline, doc));
    }
    let finished = json!(format_millis(now));
    let result = expired_result();
    let started = Instant::now();
    let mut changed = 0;
    for (deadline, doc) in map.values_mut() {
        if *deadline <= now && doc["command"]["status"] == "pending" {
            let c = &mut doc["command"];
            c["status"] = json!("failure");
            c["result"] = result.clone();
            c["finished_at"] = finished.clone();
            changed += 1;
        }
    }
    let elapsed = started.elapsed();
    std::hint::black_box(&map);
    Ok(Timed {
        elapsed,
        method: "a loop over a `HashMap` of the documents".to_owned(),
        rows: changed,
    })
}

/// The `result` the scheduler gives an expired order.
pub(crate) fn expired_result() -> Value {
    json!({"code": -1, "message": "expired", "data": ""})
}

fn order_id(doc: &Value) -> Result<&str> {
    doc["command"]["order_id"]
        .as_str()
        .context("a document without command.order_id")
}

/// `2026-11-27T10:00:00.000Z`, the documents' time format.
pub(crate) fn format_millis(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The columns the adapters project out of an order document.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) order_id: String,
    pub(crate) request_id: String,
    pub(crate) agent_id: Option<String>,
    pub(crate) target_type: String,
    pub(crate) target_id: String,
    pub(crate) action: String,
    pub(crate) status: String,
    pub(crate) created: DateTime<Utc>,
    pub(crate) deadline: DateTime<Utc>,
    pub(crate) available: DateTime<Utc>,
    pub(crate) document: String,
}

impl Row {
    pub(crate) fn of(doc: &Value) -> Result<Self> {
        let c = &doc["command"];
        let text = |v: &Value, what: &str| -> Result<String> {
            v.as_str()
                .map(str::to_owned)
                .with_context(|| format!("a document without {what}"))
        };
        let time = |v: &Value, what: &str| -> Result<DateTime<Utc>> {
            let raw = text(v, what)?;
            DateTime::parse_from_rfc3339(&raw)
                .map(|t| t.with_timezone(&Utc))
                .with_context(|| format!("{what}: {raw:?} is not RFC 3339"))
        };
        let created = time(&doc["@timestamp"], "@timestamp")?;
        let available = if c["not_before"].is_string() {
            time(&c["not_before"], "command.not_before")?
        } else {
            created
        };
        Ok(Self {
            order_id: text(&c["order_id"], "command.order_id")?,
            request_id: text(&c["request_id"], "command.request_id")?,
            agent_id: doc["agent"]["id"].as_str().map(str::to_owned),
            target_type: text(&c["target"]["type"], "command.target.type")?,
            target_id: text(&c["target"]["id"], "command.target.id")?,
            action: text(&c["action"]["name"], "command.action.name")?,
            status: text(&c["status"], "command.status")?,
            created,
            deadline: time(&doc["delivery_timestamp"], "delivery_timestamp")?,
            available,
            document: serde_json::to_string(doc)?,
        })
    }
}

/// `docs` as orders nobody wrote yet: a fresh `request_id` shared by all, a fresh `order_id`
/// each (UUID v7, as the service makes them), status pending.
pub(crate) fn with_fresh_ids(docs: &[Value]) -> Vec<Value> {
    let request = uuid::Uuid::now_v7().to_string();
    docs.iter()
        .map(|d| {
            let mut d = d.clone();
            let c = &mut d["command"];
            c["request_id"] = json!(request);
            c["order_id"] = json!(uuid::Uuid::now_v7().to_string());
            c["status"] = json!("pending");
            d
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        json!({
            "@timestamp": "2026-11-27T10:00:00.000Z",
            "delivery_timestamp": "2026-11-27T10:01:40.000Z",
            "agent": {"id": "a1", "groups": ["Test"]},
            "command": {
                "source": "Users/Services", "user": "admin",
                "target": {"type": "agent", "id": "a1"},
                "action": {"name": "restart", "args": {}, "version": "v5"},
                "timeout": 100, "status": "pending",
                "request_id": "0193e0a0-0000-7000-8000-000000000001",
                "order_id": "0193e0a0-0000-7000-8000-000000000002"
            }
        })
    }

    #[test]
    fn a_row_projects_the_columns_of_the_document() {
        let row = Row::of(&doc()).expect("row");
        assert_eq!(row.agent_id.as_deref(), Some("a1"));
        assert_eq!(row.available, row.created);
        assert_eq!((row.deadline - row.created).num_seconds(), 100);
        assert_eq!(format_millis(row.created), "2026-11-27T10:00:00.000Z");
    }

    #[test]
    fn fresh_ids_share_one_request_and_differ_per_order() {
        let docs = with_fresh_ids(&[doc(), doc()]);
        let c0 = &docs[0]["command"];
        let c1 = &docs[1]["command"];
        assert_eq!(c0["request_id"], c1["request_id"]);
        assert_ne!(c0["order_id"], c1["order_id"]);
        assert_ne!(c0["order_id"], doc()["command"]["order_id"]);
    }

    #[test]
    fn the_memory_baseline_expires_only_overdue_pending_orders() {
        let mut late = doc();
        late["command"]["status"] = json!("failure");
        let mut future = doc();
        future["delivery_timestamp"] = json!("2999-01-01T00:00:00.000Z");
        future["command"]["order_id"] = json!("0193e0a0-0000-7000-8000-000000000003");
        let t = memory_expire(vec![late, future], Utc::now()).expect("expire");
        assert_eq!(t.rows, 1);
    }
}
