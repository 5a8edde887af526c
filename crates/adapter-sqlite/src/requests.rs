//! [`RequestStore`] over the `requests` table: each record as its document plus the columns the
//! listing, the scheduler's work list and retention filter and sort on.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cm_domain::{RequestId, RequestRecord};
use cm_ports::{
    Page, ReplaceError, RequestCursor, RequestFilter, RequestPageRequest, RequestStore, StoreError,
    WholeOutcome, WholeRequest,
};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use crate::SqliteBackend;
use crate::error::{convert_sqlx_err, corrupt_document};
use crate::orders::{insert_rows_returning_requests, rows_of};

/// A record as a row, in the order the `INSERT` lists the columns.
struct RecordRow {
    request_id: String,
    created_ms: i64,
    state: &'static str,
    action: String,
    user_name: Option<String>,
    source: &'static str,
    target_type: &'static str,
    target_id: String,
    settled: bool,
    finished_ms: Option<i64>,
    revision: i64,
    document: String,
}

impl RecordRow {
    fn of(r: &RequestRecord) -> Result<Self, StoreError> {
        let document = serde_json::to_string(r).map_err(|e| {
            StoreError::Corrupt(format!("request {} cannot be encoded: {e}", r.request_id()))
        })?;
        Ok(Self {
            request_id: r.request_id().to_string(),
            created_ms: r.created_at().timestamp_millis(),
            state: r.state().as_str(),
            action: r.action().name.clone(),
            user_name: r.user().map(str::to_owned),
            source: r.source().as_str(),
            target_type: r.target().kind().as_str(),
            target_id: r.target().id().to_owned(),
            settled: r.is_settled(),
            finished_ms: r.finished_at().map(|t| t.timestamp_millis()),
            revision: revision_of(r),
            document,
        })
    }
}

fn revision_of(r: &RequestRecord) -> i64 {
    i64::try_from(r.revision()).unwrap_or(i64::MAX)
}

fn decode(document: &str) -> Result<RequestRecord, StoreError> {
    serde_json::from_str(document).map_err(|e| corrupt_document("request", &e))
}

fn decode_all(documents: &[String]) -> Result<Vec<RequestRecord>, StoreError> {
    documents.iter().map(|d| decode(d)).collect()
}

/// Records per `INSERT` of [`RequestStore::write_whole`]: 12 variables each, under SQLite's
/// 32,766.
const RECORD_CHUNK: usize = 1000;

fn sql_int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The listing's query: every set filter field, strictly older than the cursor, newest first
/// (`requests_created`, or `requests_state` when the state is filtered).
fn list_sql(filter: &RequestFilter, page: &RequestPageRequest) -> QueryBuilder<Sqlite> {
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
    let mut qb = QueryBuilder::<Sqlite>::new("SELECT document FROM requests WHERE 1 = 1");
    if let Some(s) = state {
        qb.push(" AND state = ").push_bind(s.as_str());
    }
    if let Some(a) = action {
        qb.push(" AND action = ").push_bind(a.clone());
    }
    if let Some(u) = user {
        qb.push(" AND user_name = ").push_bind(u.clone());
    }
    if let Some(s) = source {
        qb.push(" AND source = ").push_bind(s.as_str());
    }
    if let Some(t) = target_type {
        qb.push(" AND target_type = ").push_bind(t.as_str());
    }
    if let Some(t) = target_id {
        qb.push(" AND target_id = ").push_bind(t.clone());
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
        qb.push(" AND (created_ms, request_id) < (")
            .push_bind(c.created_at.timestamp_millis())
            .push(", ")
            .push_bind(c.request_id.to_string())
            .push(")");
    }
    qb.push(" ORDER BY created_ms DESC, request_id DESC LIMIT ")
        .push_bind(sql_int(page.size));
    qb
}

/// The scheduler's work list: unsettled records strictly after the cursor, oldest first, from
/// the partial index `requests_unsettled`.
fn unsettled_sql(after: Option<RequestCursor>, limit: usize) -> QueryBuilder<Sqlite> {
    let mut qb = QueryBuilder::<Sqlite>::new("SELECT document FROM requests WHERE settled = 0");
    if let Some(c) = after {
        qb.push(" AND (created_ms, request_id) > (")
            .push_bind(c.created_at.timestamp_millis())
            .push(", ")
            .push_bind(c.request_id.to_string())
            .push(")");
    }
    qb.push(" ORDER BY created_ms, request_id LIMIT ")
        .push_bind(sql_int(limit));
    qb
}

/// Retention's batch: settled records that finished at or before `?1`, earliest first, at most
/// `?2`, from the partial index `requests_settled`.
const PURGE_SETTLED: &str = "DELETE FROM requests WHERE request_id IN ( \
    SELECT request_id FROM requests \
    WHERE settled = 1 AND finished_ms <= ?1 \
    ORDER BY finished_ms, request_id LIMIT ?2)";

/// Inserts record `r` inside the caller's write transaction; `false` when its id is stored.
async fn insert_record(conn: &mut SqliteConnection, r: RecordRow) -> Result<bool, StoreError> {
    let created = insert_records_sql(std::iter::once(r), "")
        .build()
        .execute(&mut *conn)
        .await
        .map_err(convert_sqlx_err)?
        .rows_affected();
    Ok(created == 1)
}

/// The `INSERT` of `records`, leaving out ids that exist, then `tail`.
fn insert_records_sql(
    records: impl IntoIterator<Item = RecordRow>,
    tail: &'static str,
) -> QueryBuilder<Sqlite> {
    let mut qb = QueryBuilder::<Sqlite>::new(
        "INSERT INTO requests (request_id, created_ms, state, action, user_name, source, \
         target_type, target_id, settled, finished_ms, revision, document) ",
    );
    qb.push_values(records, |mut b, r| {
        b.push_bind(r.request_id)
            .push_bind(r.created_ms)
            .push_bind(r.state)
            .push_bind(r.action)
            .push_bind(r.user_name)
            .push_bind(r.source)
            .push_bind(r.target_type)
            .push_bind(r.target_id)
            .push_bind(r.settled)
            .push_bind(r.finished_ms)
            .push_bind(r.revision)
            .push_bind(r.document);
    });
    qb.push(" ON CONFLICT (request_id) DO NOTHING");
    qb.push(tail);
    qb
}

#[async_trait]
impl RequestStore for SqliteBackend {
    async fn create(&self, record: &RequestRecord) -> Result<bool, StoreError> {
        let r = RecordRow::of(record)?;
        let mut tx = self.write().await?;
        let created = insert_record(&mut tx, r).await?;
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(created)
    }

    async fn get(&self, id: &RequestId) -> Result<Option<RequestRecord>, StoreError> {
        let doc: Option<String> =
            sqlx::query_scalar("SELECT document FROM requests WHERE request_id = ?1")
                .bind(id.to_string())
                .fetch_optional(&self.reader)
                .await
                .map_err(convert_sqlx_err)?;
        doc.as_deref().map(decode).transpose()
    }

    async fn replace(
        &self,
        current: &RequestRecord,
        next: &RequestRecord,
    ) -> Result<(), ReplaceError> {
        let r = RecordRow::of(next)?;
        let mut tx = self.write().await?;
        // The id is the stored record's: a `next` of another id cannot clobber another row.
        let replaced = sqlx::query(
            "UPDATE requests SET created_ms = ?3, state = ?4, action = ?5, user_name = ?6, \
             source = ?7, target_type = ?8, target_id = ?9, settled = ?10, finished_ms = ?11, \
             revision = ?12, document = ?13 \
             WHERE request_id = ?1 AND revision = ?2",
        )
        .bind(current.request_id().to_string())
        .bind(revision_of(current))
        .bind(r.created_ms)
        .bind(r.state)
        .bind(r.action)
        .bind(r.user_name)
        .bind(r.source)
        .bind(r.target_type)
        .bind(r.target_id)
        .bind(r.settled)
        .bind(r.finished_ms)
        .bind(r.revision)
        .bind(r.document)
        .execute(&mut *tx)
        .await
        .map_err(convert_sqlx_err)?
        .rows_affected();
        if replaced == 1 {
            tx.commit().await.map_err(convert_sqlx_err)?;
            return Ok(());
        }
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM requests WHERE request_id = ?1)")
                .bind(current.request_id().to_string())
                .fetch_one(&mut *tx)
                .await
                .map_err(convert_sqlx_err)?;
        tx.commit().await.map_err(convert_sqlx_err)?;
        Err(if exists {
            ReplaceError::Conflict
        } else {
            ReplaceError::NotFound
        })
    }

    async fn list(
        &self,
        filter: &RequestFilter,
        page: &RequestPageRequest,
    ) -> Result<Page<RequestRecord, RequestCursor>, StoreError> {
        if page.size == 0 {
            return Ok(Page::read(Vec::new(), 0, RequestCursor::after));
        }
        let docs: Vec<String> = list_sql(filter, page)
            .build_query_scalar()
            .fetch_all(&self.reader)
            .await
            .map_err(convert_sqlx_err)?;
        Ok(Page::read(
            decode_all(&docs)?,
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
        let docs: Vec<String> = unsettled_sql(after, limit)
            .build_query_scalar()
            .fetch_all(&self.reader)
            .await
            .map_err(convert_sqlx_err)?;
        decode_all(&docs)
    }

    async fn purge_settled(&self, cutoff: DateTime<Utc>, limit: usize) -> Result<u64, StoreError> {
        if limit == 0 {
            return Ok(0);
        }
        let mut tx = self.write().await?;
        let removed = sqlx::query(PURGE_SETTLED)
            .bind(cutoff.timestamp_millis())
            .bind(sql_int(limit))
            .execute(&mut *tx)
            .await
            .map_err(convert_sqlx_err)?
            .rows_affected();
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(removed)
    }

    /// Everything in one write transaction: one commit, one fsync, for every submit that
    /// joined the group; the records in one statement, the orders of those written in
    /// statements of [`crate::orders`]' chunk.
    async fn write_whole(
        &self,
        requests: &[WholeRequest],
    ) -> Result<Option<Vec<WholeOutcome>>, StoreError> {
        if requests.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let mut records = Vec::with_capacity(requests.len());
        let mut orders = Vec::with_capacity(requests.len());
        for w in requests {
            records.push(RecordRow::of(&w.record)?);
            orders.push(rows_of(&w.orders)?);
        }
        let ids: Vec<String> = records.iter().map(|r| r.request_id.clone()).collect();
        let mut tx = self.write().await?;
        let mut written = HashSet::with_capacity(ids.len());
        let mut records = records.into_iter();
        loop {
            let chunk: Vec<RecordRow> = records.by_ref().take(RECORD_CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            let mut qb = insert_records_sql(chunk, " RETURNING request_id");
            let created: Vec<String> = qb
                .build_query_scalar()
                .persistent(false)
                .fetch_all(&mut *tx)
                .await
                .map_err(convert_sqlx_err)?;
            written.extend(created);
        }
        let rows = ids
            .iter()
            .zip(orders)
            .filter(|(id, _)| written.contains(*id))
            .flat_map(|(_, rows)| rows)
            .collect();
        let mut created: HashMap<String, u64> = HashMap::new();
        for id in insert_rows_returning_requests(&mut tx, rows).await? {
            *created.entry(id).or_default() += 1;
        }
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(Some(
            ids.iter()
                .map(|id| {
                    if written.contains(id) {
                        WholeOutcome::Written {
                            created: created.get(id).copied().unwrap_or(0),
                        }
                    } else {
                        WholeOutcome::Exists
                    }
                })
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use cm_ports::testkit::at;
    use uuid::Uuid;

    use super::*;
    use crate::testing::{open, plan};

    /// The listing, the work list and retention are answered from their indexes, in order,
    /// without sorting.
    #[tokio::test]
    async fn record_queries_walk_their_indexes() {
        let (store, _dir) = open().await;
        let cursor = RequestCursor {
            created_at: at(0),
            request_id: RequestId::from_uuid(Uuid::nil()),
        };
        let page = RequestPageRequest {
            size: 50,
            after: Some(cursor),
        };
        for (filter, index) in [
            (RequestFilter::default(), "requests_created"),
            (
                RequestFilter {
                    state: Some(cm_domain::RequestState::Running),
                    ..RequestFilter::default()
                },
                "requests_state",
            ),
        ] {
            let sql = list_sql(&filter, &page).into_string();
            let p = plan(&store, &sql).await;
            assert!(p.contains(index), "{sql}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{sql}: {p}");
        }
        let sql = unsettled_sql(Some(cursor), 10).into_string();
        let p = plan(&store, &sql).await;
        assert!(p.contains("requests_unsettled"), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "{p}");
        let p = plan(&store, PURGE_SETTLED).await;
        assert!(p.contains("requests_settled"), "{p}");
        store.close().await;
    }
}
