//! [`ComponentRegistry`] over the `components` table.

use async_trait::async_trait;
use cm_domain::{ComponentName, KeyHash};
use cm_ports::{ComponentRegistry, Page, StoreError, Upserted};

use crate::SqliteBackend;
use crate::error::convert_sqlx_err;

fn name_of(raw: &str) -> Result<ComponentName, StoreError> {
    ComponentName::parse(raw, "name")
        .map_err(|_| StoreError::Corrupt(format!("malformed component name {raw:?}")))
}

#[async_trait]
impl ComponentRegistry for SqliteBackend {
    async fn register(&self, name: &ComponentName, hash: &KeyHash) -> Result<Upserted, StoreError> {
        let mut tx = self.write().await?;
        let created = sqlx::query(
            "INSERT INTO components (name, key_hash) VALUES (?1, ?2) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name.as_str())
        .bind(hash.as_str())
        .execute(&mut *tx)
        .await
        .map_err(convert_sqlx_err)?
        .rows_affected();
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(if created > 0 {
            Upserted::Created
        } else {
            Upserted::Updated
        })
    }

    async fn set_key_hash(&self, name: &ComponentName, hash: &KeyHash) -> Result<bool, StoreError> {
        self.store_key_hash(
            "UPDATE components SET key_hash = ?2 WHERE name = ?1",
            name.as_str(),
            hash,
        )
        .await
    }

    async fn key_hash(&self, name: &ComponentName) -> Result<Option<KeyHash>, StoreError> {
        self.read_key_hash(
            "SELECT key_hash FROM components WHERE name = ?1",
            name.as_str(),
            || format!("component {name}"),
        )
        .await
    }

    async fn list(
        &self,
        after: Option<ComponentName>,
        size: usize,
    ) -> Result<Page<ComponentName, ComponentName>, StoreError> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM components WHERE name > ?1 ORDER BY name LIMIT ?2",
        )
        .bind(after.as_ref().map_or("", ComponentName::as_str))
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .fetch_all(&self.reader)
        .await
        .map_err(convert_sqlx_err)?;
        let items = names
            .iter()
            .map(|n| name_of(n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::read(items, size, Clone::clone))
    }

    async fn delete(&self, name: &ComponentName) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let deleted = sqlx::query("DELETE FROM components WHERE name = ?1")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(convert_sqlx_err)?
            .rows_affected();
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(deleted > 0)
    }
}
