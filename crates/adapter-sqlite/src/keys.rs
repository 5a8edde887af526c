//! The key hashes of the two registries (agents and server components): one way to store and
//! read them, whatever table holds them.

use cm_domain::KeyHash;
use cm_ports::StoreError;

use crate::SqliteBackend;
use crate::error::convert_sqlx_err;

impl SqliteBackend {
    /// Runs `update` (`UPDATE … SET key_hash = ?2 WHERE <key> = ?1`) for `key`; `false` when no
    /// row has that key.
    pub(crate) async fn store_key_hash(
        &self,
        update: &'static str,
        key: &str,
        hash: &KeyHash,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let updated = sqlx::query(update)
            .bind(key)
            .bind(hash.as_str())
            .execute(&mut *tx)
            .await
            .map_err(convert_sqlx_err)?
            .rows_affected();
        tx.commit().await.map_err(convert_sqlx_err)?;
        Ok(updated > 0)
    }

    /// Runs `select` (`SELECT key_hash FROM … WHERE <key> = ?1`) for `key`; `None` when there is
    /// no such row or it has no key. `what` names the row in the error of a malformed hash (built
    /// only then: this read is on every authenticated request).
    pub(crate) async fn read_key_hash(
        &self,
        select: &'static str,
        key: &str,
        what: impl FnOnce() -> String,
    ) -> Result<Option<KeyHash>, StoreError> {
        let stored: Option<Option<String>> = sqlx::query_scalar(select)
            .bind(key)
            .fetch_optional(&self.reader)
            .await
            .map_err(convert_sqlx_err)?;
        stored
            .flatten()
            .map(|raw| {
                KeyHash::parse(&raw, "key_hash").map_err(|_| {
                    StoreError::Corrupt(format!("{} has a malformed key hash", what()))
                })
            })
            .transpose()
    }
}
