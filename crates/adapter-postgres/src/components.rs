//! [`ComponentRegistry`] over the `components` table.

use async_trait::async_trait;
use cm_domain::{ComponentName, KeyHash};
use cm_ports::{ComponentRegistry, Page, StoreError, Upserted};

use crate::PostgresBackend;
use crate::error::{convert_sqlx_err, corrupt};

#[async_trait]
impl ComponentRegistry for PostgresBackend {
    async fn register(&self, name: &ComponentName, hash: &KeyHash) -> Result<Upserted, StoreError> {
        let done = sqlx::query(
            "INSERT INTO components (name, key_hash) VALUES ($1, $2) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name.as_str())
        .bind(hash.as_str())
        .execute(&self.pool)
        .await
        .map_err(convert_sqlx_err)?;
        Ok(if done.rows_affected() > 0 {
            Upserted::Created
        } else {
            Upserted::Updated
        })
    }

    async fn set_key_hash(&self, name: &ComponentName, hash: &KeyHash) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE components SET key_hash = $2, updated_at = now() WHERE name = $1")
                .bind(name.as_str())
                .bind(hash.as_str())
                .execute(&self.pool)
                .await
                .map_err(convert_sqlx_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn key_hash(&self, name: &ComponentName) -> Result<Option<KeyHash>, StoreError> {
        let stored: Option<String> =
            sqlx::query_scalar("SELECT key_hash FROM components WHERE name = $1")
                .bind(name.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(convert_sqlx_err)?;
        stored
            .map(|raw| KeyHash::parse(&raw, "key_hash").map_err(corrupt))
            .transpose()
    }

    async fn list(
        &self,
        after: Option<ComponentName>,
        size: usize,
    ) -> Result<Page<ComponentName, ComponentName>, StoreError> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM components WHERE name > $1 ORDER BY name LIMIT $2",
        )
        .bind(after.as_ref().map_or("", ComponentName::as_str))
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(convert_sqlx_err)?;
        let items = names
            .iter()
            .map(|n| ComponentName::parse(n, "name").map_err(corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::read(items, size, Clone::clone))
    }

    async fn delete(&self, name: &ComponentName) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM components WHERE name = $1")
            .bind(name.as_str())
            .execute(&self.pool)
            .await
            .map_err(convert_sqlx_err)?;
        Ok(done.rows_affected() > 0)
    }
}
