//! [`AgentRegistry`] over the `agents` and `agent_groups` tables. An agent's key hash is a
//! column of its `agents` row, which upserts never write: it lives exactly as long as the row.

use std::collections::HashMap;

use async_trait::async_trait;
use cm_domain::{Agent, AgentId, GroupName, KeyHash};
use cm_ports::{AgentPageRequest, AgentRegistry, Page, StoreError, Upserted};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use crate::SqliteBackend;
use crate::error::{convert_sqlx_err, corrupt_document};

/// Rows per multi-row statement (two bound parameters each, well under SQLite's limit).
const CHUNK: usize = 1000;

/// One page of a group's members in id order, read from `agent_groups`' primary key.
const GROUP_PAGE: &str = "SELECT a.document FROM agent_groups g \
    JOIN agents a ON a.agent_id = g.agent_id \
    WHERE g.group_name = ?1 AND g.agent_id > ?2 ORDER BY g.agent_id LIMIT ?3";

/// One page of every agent in id order.
const AGENT_PAGE: &str =
    "SELECT document FROM agents WHERE agent_id > ?1 ORDER BY agent_id LIMIT ?2";

fn decode(document: &str) -> Result<Agent, StoreError> {
    serde_json::from_str(document).map_err(|e| corrupt_document("agent", &e))
}

fn encode(agent: &Agent) -> Result<String, StoreError> {
    serde_json::to_string(agent)
        .map_err(|e| StoreError::Corrupt(format!("agent {} cannot be encoded: {e}", agent.id())))
}

fn sql_int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Writes `agents` (distinct ids) and replaces their group memberships; returns how many of
/// them were not registered before.
async fn put_all(conn: &mut SqliteConnection, agents: &[&Agent]) -> Result<u64, StoreError> {
    let mut created = 0;
    for chunk in agents.chunks(CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new("SELECT agent_id FROM agents WHERE agent_id IN (");
        let mut ids = qb.separated(", ");
        for a in chunk {
            ids.push_bind(a.id().as_str().to_owned());
        }
        qb.push(")");
        let existing: Vec<String> = qb
            .build_query_scalar()
            .persistent(false)
            .fetch_all(&mut *conn)
            .await
            .map_err(convert_sqlx_err)?;
        created += (chunk.len() - existing.len()) as u64;

        let docs = chunk
            .iter()
            .map(|a| Ok((a.id().as_str().to_owned(), encode(a)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO agents (agent_id, document) ");
        qb.push_values(docs, |mut b, (id, doc)| {
            b.push_bind(id).push_bind(doc);
        });
        qb.push(" ON CONFLICT (agent_id) DO UPDATE SET document = excluded.document");
        qb.build()
            .persistent(false)
            .execute(&mut *conn)
            .await
            .map_err(convert_sqlx_err)?;

        if !existing.is_empty() {
            let mut qb =
                QueryBuilder::<Sqlite>::new("DELETE FROM agent_groups WHERE agent_id IN (");
            let mut ids = qb.separated(", ");
            for id in existing {
                ids.push_bind(id);
            }
            qb.push(")");
            qb.build()
                .persistent(false)
                .execute(&mut *conn)
                .await
                .map_err(convert_sqlx_err)?;
        }

        let members: Vec<(&GroupName, &AgentId)> = chunk
            .iter()
            .flat_map(|a| a.groups().iter().map(|g| (g, a.id())))
            .collect();
        for part in members.chunks(CHUNK) {
            let mut qb =
                QueryBuilder::<Sqlite>::new("INSERT INTO agent_groups (group_name, agent_id) ");
            qb.push_values(part, |mut b, (g, id)| {
                b.push_bind(g.as_str().to_owned())
                    .push_bind(id.as_str().to_owned());
            });
            qb.push(" ON CONFLICT DO NOTHING");
            qb.build()
                .persistent(false)
                .execute(&mut *conn)
                .await
                .map_err(convert_sqlx_err)?;
        }
    }
    Ok(created)
}

#[async_trait]
impl AgentRegistry for SqliteBackend {
    async fn upsert(&self, agent: &Agent) -> Result<Upserted, StoreError> {
        let mut tx = self.write().await?;
        let created = put_all(&mut tx, &[agent]).await?;
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(if created == 1 {
            Upserted::Created
        } else {
            Upserted::Updated
        })
    }

    async fn upsert_many(&self, agents: &[Agent]) -> Result<u64, StoreError> {
        // One write per id, the last one given winning, as if they were upserted in turn.
        let mut last: HashMap<&AgentId, usize> = HashMap::with_capacity(agents.len());
        for (i, a) in agents.iter().enumerate() {
            last.insert(a.id(), i);
        }
        let distinct: Vec<&Agent> = agents
            .iter()
            .enumerate()
            .filter(|(i, a)| last.get(a.id()) == Some(i))
            .map(|(_, a)| a)
            .collect();
        let mut tx = self.write().await?;
        let created = put_all(&mut tx, &distinct).await?;
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(created)
    }

    async fn set_key_hash(&self, id: &AgentId, hash: &KeyHash) -> Result<bool, StoreError> {
        self.store_key_hash(
            "UPDATE agents SET key_hash = ?2 WHERE agent_id = ?1",
            id.as_str(),
            hash,
        )
        .await
    }

    async fn set_key_hashes(&self, hashes: &[(AgentId, KeyHash)]) -> Result<u64, StoreError> {
        // One transaction: one synced commit for the whole batch.
        let mut tx = self.write().await?;
        let mut stored = 0;
        for (id, hash) in hashes {
            stored += sqlx::query("UPDATE agents SET key_hash = ?2 WHERE agent_id = ?1")
                .bind(id.as_str())
                .bind(hash.as_str())
                .execute(&mut *tx)
                .await
                .map_err(convert_sqlx_err)?
                .rows_affected();
        }
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(stored)
    }

    async fn key_hash(&self, id: &AgentId) -> Result<Option<KeyHash>, StoreError> {
        self.read_key_hash(
            "SELECT key_hash FROM agents WHERE agent_id = ?1",
            id.as_str(),
            || format!("agent {id}"),
        )
        .await
    }

    async fn get(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        let doc: Option<String> =
            sqlx::query_scalar("SELECT document FROM agents WHERE agent_id = ?1")
                .bind(id.as_str())
                .fetch_optional(&self.reader)
                .await
                .map_err(convert_sqlx_err)?;
        doc.as_deref().map(decode).transpose()
    }

    async fn registered(&self, ids: &[AgentId]) -> Result<Vec<AgentId>, StoreError> {
        let mut found = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let mut qb =
                QueryBuilder::<Sqlite>::new("SELECT agent_id FROM agents WHERE agent_id IN (");
            let mut list = qb.separated(", ");
            for id in chunk {
                list.push_bind(id.as_str().to_owned());
            }
            qb.push(")");
            let rows: Vec<String> = qb
                .build_query_scalar()
                .persistent(false)
                .fetch_all(&self.reader)
                .await
                .map_err(convert_sqlx_err)?;
            for raw in rows {
                found.push(
                    AgentId::parse(&raw, "agent_id")
                        .map_err(|_| StoreError::Corrupt(format!("malformed agent id {raw:?}")))?,
                );
            }
        }
        found.sort();
        found.dedup();
        Ok(found)
    }

    async fn delete(&self, id: &AgentId) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM agent_groups WHERE agent_id = ?1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(convert_sqlx_err)?;
        let deleted = sqlx::query("DELETE FROM agents WHERE agent_id = ?1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(convert_sqlx_err)?
            .rows_affected();
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(deleted > 0)
    }

    async fn list(&self, page: &AgentPageRequest) -> Result<Page<Agent, AgentId>, StoreError> {
        // Agent ids are never empty, so "" is below every one of them.
        let after = page.after.as_ref().map_or("", AgentId::as_str);
        let docs: Vec<String> = match &page.group {
            Some(group) => {
                sqlx::query_scalar(GROUP_PAGE)
                    .bind(group.as_str())
                    .bind(after)
                    .bind(sql_int(page.size))
                    .fetch_all(&self.reader)
                    .await
            }
            None => {
                sqlx::query_scalar(AGENT_PAGE)
                    .bind(after)
                    .bind(sql_int(page.size))
                    .fetch_all(&self.reader)
                    .await
            }
        }
        .map_err(convert_sqlx_err)?;
        let items = docs
            .iter()
            .map(|d| decode(d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::read(items, page.size, |a| a.id().clone()))
    }

    async fn count(&self, group: Option<GroupName>) -> Result<u64, StoreError> {
        let n: i64 = match &group {
            Some(g) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM agent_groups WHERE group_name = ?1")
                    .bind(g.as_str())
                    .fetch_one(&self.reader)
                    .await
            }
            None => {
                sqlx::query_scalar("SELECT COUNT(*) FROM agents")
                    .fetch_one(&self.reader)
                    .await
            }
        }
        .map_err(convert_sqlx_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{open, plan};

    #[tokio::test]
    async fn paging_walks_primary_keys_without_sorting() {
        let (store, _dir) = open().await;
        for sql in [GROUP_PAGE, AGENT_PAGE] {
            let p = plan(&store, sql).await;
            assert!(
                p.contains("PRIMARY KEY") || p.contains("sqlite_autoindex"),
                "{sql}: {p}"
            );
            assert!(!p.contains("TEMP B-TREE"), "{sql}: {p}");
        }
        let p = plan(&store, GROUP_PAGE).await;
        assert!(p.starts_with("SEARCH g"), "members drive the join: {p}");
        store.close().await;
    }
}
