//! [`AgentRegistry`] over the `agents` and `agent_groups` tables. An agent's key hash is a
//! column of its `agents` row, which upserts never write: it lives exactly as long as the row.

use std::collections::BTreeMap;

use async_trait::async_trait;
use cm_domain::{Agent, AgentId, GroupName, KeyHash};
use cm_ports::{AgentPageRequest, AgentRegistry, Page, StoreError, Upserted};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Row};

use crate::PostgresBackend;
use crate::error::{convert_sqlx_err, corrupt};

/// Creates or replaces agents; says per agent whether it was created. `xmax = 0` holds exactly
/// for a row this statement inserted (an `ON CONFLICT DO UPDATE` leaves its own xid in `xmax`).
const UPSERT_AGENTS: &str = "
INSERT INTO agents (agent_id, groups)
SELECT * FROM UNNEST($1::text[], $2::jsonb[])
ON CONFLICT (agent_id) DO UPDATE SET groups = EXCLUDED.groups, updated_at = now()
RETURNING (xmax = 0) AS created";

const REPLACE_MEMBERSHIPS_DELETE: &str = "DELETE FROM agent_groups WHERE agent_id = ANY($1)";

const REPLACE_MEMBERSHIPS_INSERT: &str = "
INSERT INTO agent_groups (group_name, agent_id)
SELECT * FROM UNNEST($1::text[], $2::text[])
ON CONFLICT DO NOTHING";

fn agent_of(row: &PgRow) -> Result<Agent, StoreError> {
    let id: String = row.try_get("agent_id").map_err(convert_sqlx_err)?;
    let Json(groups): Json<Vec<GroupName>> = row.try_get("groups").map_err(convert_sqlx_err)?;
    let id = AgentId::parse(&id, "agent_id").map_err(corrupt)?;
    Ok(Agent::new(id, groups))
}

impl PostgresBackend {
    /// Upserts `agents` in one transaction; returns how many were new. Later duplicates of
    /// an id win, as if the agents were upserted one after another.
    async fn upsert_agents(&self, agents: &[Agent]) -> Result<u64, StoreError> {
        // Sorted by id, so concurrent batches lock shared rows in one order (no deadlock).
        let unique: BTreeMap<&str, &Agent> = agents.iter().map(|a| (a.id().as_str(), a)).collect();
        if unique.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = unique.keys().copied().collect();
        let groups: Vec<Json<&[GroupName]>> = unique.values().map(|a| Json(a.groups())).collect();
        let (member_groups, member_ids): (Vec<&str>, Vec<&str>) = unique
            .values()
            .flat_map(|a| a.groups().iter().map(|g| (g.as_str(), a.id().as_str())))
            .unzip();

        let mut tx = self.pool.begin().await.map_err(convert_sqlx_err)?;
        let created = sqlx::query(UPSERT_AGENTS)
            .bind(&ids)
            .bind(&groups)
            .fetch_all(&mut *tx)
            .await
            .map_err(convert_sqlx_err)?
            .iter()
            .map(|r| r.try_get::<bool, _>("created").map_err(convert_sqlx_err))
            .collect::<Result<Vec<bool>, _>>()?
            .into_iter()
            .filter(|c| *c)
            .count();
        sqlx::query(REPLACE_MEMBERSHIPS_DELETE)
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(convert_sqlx_err)?;
        if !member_ids.is_empty() {
            sqlx::query(REPLACE_MEMBERSHIPS_INSERT)
                .bind(&member_groups)
                .bind(&member_ids)
                .execute(&mut *tx)
                .await
                .map_err(convert_sqlx_err)?;
        }
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(created as u64)
    }
}

#[async_trait]
impl AgentRegistry for PostgresBackend {
    async fn upsert(&self, agent: &Agent) -> Result<Upserted, StoreError> {
        Ok(
            match self.upsert_agents(std::slice::from_ref(agent)).await? {
                0 => Upserted::Updated,
                _ => Upserted::Created,
            },
        )
    }

    async fn upsert_many(&self, agents: &[Agent]) -> Result<u64, StoreError> {
        self.upsert_agents(agents).await
    }

    async fn set_key_hash(&self, id: &AgentId, hash: &KeyHash) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE agents SET key_hash = $2, updated_at = now() WHERE agent_id = $1")
                .bind(id.as_str())
                .bind(hash.as_str())
                .execute(&self.pool)
                .await
                .map_err(convert_sqlx_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_key_hashes(&self, hashes: &[(AgentId, KeyHash)]) -> Result<u64, StoreError> {
        let ids: Vec<&str> = hashes.iter().map(|(id, _)| id.as_str()).collect();
        let keys: Vec<&str> = hashes.iter().map(|(_, h)| h.as_str()).collect();
        // One statement; an id given twice keeps one of its hashes.
        let done = sqlx::query(
            "UPDATE agents SET key_hash = v.key_hash, updated_at = now() \
             FROM (SELECT DISTINCT ON (agent_id) agent_id, key_hash \
                   FROM UNNEST($1::text[], $2::text[]) AS u(agent_id, key_hash)) AS v \
             WHERE agents.agent_id = v.agent_id",
        )
        .bind(&ids)
        .bind(&keys)
        .execute(&self.pool)
        .await
        .map_err(convert_sqlx_err)?;
        Ok(done.rows_affected())
    }

    async fn registered(&self, ids: &[AgentId]) -> Result<Vec<AgentId>, StoreError> {
        let list: Vec<&str> = ids.iter().map(AgentId::as_str).collect();
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT agent_id FROM agents WHERE agent_id = ANY($1)")
                .bind(&list)
                .fetch_all(&self.pool)
                .await
                .map_err(convert_sqlx_err)?;
        rows.iter()
            .map(|raw| AgentId::parse(raw, "agent_id").map_err(corrupt))
            .collect()
    }

    async fn key_hash(&self, id: &AgentId) -> Result<Option<KeyHash>, StoreError> {
        let stored: Option<Option<String>> =
            sqlx::query_scalar("SELECT key_hash FROM agents WHERE agent_id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(convert_sqlx_err)?;
        stored
            .flatten()
            .map(|raw| KeyHash::parse(&raw, "key_hash").map_err(corrupt))
            .transpose()
    }

    async fn get(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        let row = sqlx::query("SELECT agent_id, groups FROM agents WHERE agent_id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        row.as_ref().map(agent_of).transpose()
    }

    async fn delete(&self, id: &AgentId) -> Result<bool, StoreError> {
        // Memberships go with it (ON DELETE CASCADE).
        let done = sqlx::query("DELETE FROM agents WHERE agent_id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn list(&self, page: &AgentPageRequest) -> Result<Page<Agent, AgentId>, StoreError> {
        let mut q = QueryBuilder::<Postgres>::new("");
        match &page.group {
            Some(group) => {
                q.push(
                    "SELECT a.agent_id, a.groups FROM agent_groups m \
                     JOIN agents a ON a.agent_id = m.agent_id WHERE m.group_name = ",
                )
                .push_bind(group.as_str().to_owned());
                if let Some(after) = &page.after {
                    q.push(" AND m.agent_id > ")
                        .push_bind(after.as_str().to_owned());
                }
                q.push(" ORDER BY m.agent_id");
            }
            None => {
                q.push("SELECT agent_id, groups FROM agents WHERE TRUE");
                if let Some(after) = &page.after {
                    q.push(" AND agent_id > ")
                        .push_bind(after.as_str().to_owned());
                }
                q.push(" ORDER BY agent_id");
            }
        }
        q.push(" LIMIT ")
            .push_bind(i64::try_from(page.size).unwrap_or(i64::MAX));
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        let items = rows.iter().map(agent_of).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::read(items, page.size, |a| a.id().clone()))
    }

    async fn count(&self, group: Option<GroupName>) -> Result<u64, StoreError> {
        let query = match &group {
            Some(g) => sqlx::query("SELECT count(*) FROM agent_groups WHERE group_name = $1")
                .bind(g.as_str().to_owned()),
            None => sqlx::query("SELECT count(*) FROM agents"),
        };
        let n: i64 = query
            .fetch_one(&self.pool)
            .await
            .map_err(convert_sqlx_err)?
            .try_get(0)
            .map_err(convert_sqlx_err)?;
        Ok(u64::try_from(n).unwrap_or_default())
    }
}
