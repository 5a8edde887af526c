//! The SQLite storage adapter, the embedded default backend: [`SqliteBackend`] implements
//! [`cm_ports::OrderStore`], [`cm_ports::RequestStore`], [`cm_ports::AgentRegistry`] and
//! [`cm_ports::ComponentRegistry`] over one database file.
//!
//! * The file is in WAL mode, so readers never block the writer. Commits are synced to disk
//!   before they are acknowledged (`synchronous = FULL`) unless [`SqliteSynchronous::Normal`] is
//!   configured.
//! * Every write goes through a single connection in a `BEGIN IMMEDIATE` transaction: writes of
//!   this process are serialised before they reach SQLite, and a transaction never has to upgrade
//!   a read lock to a write lock (the source of `SQLITE_BUSY` deadlocks). A claim selects its
//!   candidates and marks them `sent` inside one such transaction, so two concurrent claims never
//!   hand out the same order.
//! * Reads go through a small pool of `query_only` connections.
//! * Each order is stored as its full document (the domain's serde form) plus projected columns
//!   for the indexed queries. State changes are computed by the domain's transition functions and
//!   written conditionally on a `revision` column read in the same transaction.
//! * The schema is versioned by the migrations in `migrations/`, applied by [`SqliteBackend::open`]
//!   and [`SqliteBackend::migrate`].
//!
//! The database is written only through this process, so long-polls are woken with
//! [`cm_ports::LocalNotifier`].

mod agents;
mod components;
mod error;
mod keys;
mod orders;
mod requests;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cm_ports::StoreError;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Sqlite, Transaction};

use crate::error::{convert_migrate_err, convert_sqlx_err};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The table in which sqlx records the applied migrations.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// Where the database lives and how it is accessed (`[storage.sqlite]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteSettings {
    /// The database file; created when missing. A relative path is relative to the working
    /// directory.
    pub path: PathBuf,
    /// How long a statement waits for a lock held by another connection before it fails.
    pub busy_timeout_ms: u64,
    /// Connections used for reads (at least one); writes use one connection of their own.
    pub max_connections: u32,
    /// How far a commit is pushed to the disk before it is acknowledged (`PRAGMA synchronous`).
    pub synchronous: SqliteSynchronous,
}

/// `PRAGMA synchronous` of every connection: what an acknowledged write survives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    /// Every commit is synced to disk before it is acknowledged: an acknowledged order survives
    /// a power failure or an operating-system crash. The default.
    #[default]
    Full,
    /// Commits are synced only when the write-ahead log is checkpointed: faster writes, and the
    /// database stays consistent, but the last transactions acknowledged before a power failure
    /// or an operating-system crash may be lost (a crash of this process alone loses nothing).
    Normal,
}

impl SqliteSynchronous {
    const fn pragma(self) -> sqlx::sqlite::SqliteSynchronous {
        match self {
            Self::Full => sqlx::sqlite::SqliteSynchronous::Full,
            Self::Normal => sqlx::sqlite::SqliteSynchronous::Normal,
        }
    }
}

impl Default for SqliteSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::from("command-manager.db"),
            busy_timeout_ms: 5000,
            max_connections: 4,
            synchronous: SqliteSynchronous::Full,
        }
    }
}

/// The orders stream and the agents registry in one SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteBackend {
    /// The one connection every write goes through.
    writer: SqlitePool,
    /// `query_only` connections for reads.
    reader: SqlitePool,
    synchronous: SqliteSynchronous,
    /// Set while the write connection runs a staged insert with `synchronous = NORMAL`; the
    /// pool restores the configured level when the connection comes back, before anyone else
    /// can use it (see [`SqliteBackend::staged`]).
    relaxed: Arc<AtomicBool>,
}

impl SqliteBackend {
    /// Opens the database (creating the file if missing) and applies pending migrations.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the file cannot be opened or created;
    /// [`StoreError::Corrupt`] when it is not a database of this service or a migration fails.
    #[tracing::instrument(skip_all, fields(path = %settings.path.display()))]
    pub async fn open(settings: &SqliteSettings) -> Result<Self, StoreError> {
        let relaxed = Arc::new(AtomicBool::new(false));
        let writer = writer_pool(settings, Arc::clone(&relaxed)).await?;
        let applied = match apply_migrations(&writer).await {
            Ok(n) => n,
            Err(e) => {
                writer.close().await;
                return Err(e);
            }
        };
        let reader = SqlitePoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .min_connections(0)
            .connect_with(
                base_options(settings)
                    .create_if_missing(false)
                    .pragma("query_only", "ON"),
            )
            .await;
        let reader = match reader {
            Ok(pool) => pool,
            Err(e) => {
                writer.close().await;
                return Err(convert_sqlx_err(e));
            }
        };
        tracing::info!(migrations_applied = applied, "sqlite storage opened");
        Ok(Self {
            writer,
            reader,
            synchronous: settings.synchronous,
            relaxed,
        })
    }

    /// Applies pending migrations only (`command-manager migrate`), creating the file if
    /// missing; returns how many were applied (0 when the schema is current).
    ///
    /// # Errors
    /// As [`SqliteBackend::open`].
    #[tracing::instrument(skip_all, fields(path = %settings.path.display()))]
    pub async fn migrate(settings: &SqliteSettings) -> Result<usize, StoreError> {
        let writer = writer_pool(settings, Arc::new(AtomicBool::new(false))).await?;
        let applied = apply_migrations(&writer).await;
        writer.close().await;
        let applied = applied?;
        tracing::info!(migrations_applied = applied, "sqlite migrations done");
        Ok(applied)
    }

    /// Closes every connection, waiting for those in use to be returned. Operations called
    /// afterwards fail with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
        tracing::info!("sqlite storage closed");
    }

    /// Starts a write transaction that holds SQLite's write lock from its first statement.
    async fn write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(convert_sqlx_err)
    }

    /// The write connection for a staged write ([`cm_ports::OrderStore::insert_staged`]):
    /// with `synchronous = FULL` configured, switched to `NORMAL`, so its commit appends to
    /// the write-ahead log without syncing it. The next `FULL` commit syncs the log file, and
    /// with it every frame before its own: the log is replayed only up to its first
    /// incomplete frame, so a staged commit can never survive without the writes before it,
    /// nor be lost once a later commit was acknowledged. Dropping the connection hands it back
    /// to the pool, which restores `FULL` first.
    async fn staged(&self) -> Result<PoolConnection<Sqlite>, StoreError> {
        let mut conn = self.writer.acquire().await.map_err(convert_sqlx_err)?;
        if self.synchronous == SqliteSynchronous::Full {
            self.relaxed.store(true, Ordering::SeqCst);
            sqlx::query("PRAGMA synchronous = NORMAL")
                .execute(&mut *conn)
                .await
                .map_err(convert_sqlx_err)?;
        }
        Ok(conn)
    }
}

fn base_options(settings: &SqliteSettings) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(&settings.path)
        .busy_timeout(Duration::from_millis(settings.busy_timeout_ms))
        .synchronous(settings.synchronous.pragma())
        .foreign_keys(false)
}

/// The single write connection; it also switches the file to WAL mode, which is persistent.
async fn writer_pool(
    settings: &SqliteSettings,
    relaxed: Arc<AtomicBool>,
) -> Result<SqlitePool, StoreError> {
    let level = match settings.synchronous {
        SqliteSynchronous::Full => "PRAGMA synchronous = FULL",
        SqliteSynchronous::Normal => "PRAGMA synchronous = NORMAL",
    };
    SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        // A staged write lowered `synchronous` (`SqliteBackend::staged`): back to the
        // configured level before the connection serves anyone else, or closed (a new one
        // starts with the configured level).
        .after_release(move |conn, _| {
            let relaxed = Arc::clone(&relaxed);
            Box::pin(async move {
                if relaxed.swap(false, Ordering::SeqCst) {
                    return Ok(sqlx::query(level).execute(&mut *conn).await.is_ok());
                }
                Ok(true)
            })
        })
        .connect_with(
            base_options(settings)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // Statistics for the query planner, gathered cheaply when the file is closed.
                .optimize_on_close(true, 400),
        )
        .await
        .map_err(convert_sqlx_err)
}

/// Applies the migrations not yet recorded in the database; returns how many it applied.
async fn apply_migrations(pool: &SqlitePool) -> Result<usize, StoreError> {
    let mut conn = pool.acquire().await.map_err(convert_sqlx_err)?;
    conn.ensure_migrations_table(MIGRATIONS_TABLE)
        .await
        .map_err(convert_migrate_err)?;
    let before: HashSet<i64> = conn
        .list_applied_migrations(MIGRATIONS_TABLE)
        .await
        .map_err(convert_migrate_err)?
        .into_iter()
        .map(|m| m.version)
        .collect();
    MIGRATOR
        .run(&mut *conn)
        .await
        .map_err(convert_migrate_err)?;
    let after = conn
        .list_applied_migrations(MIGRATIONS_TABLE)
        .await
        .map_err(convert_migrate_err)?;
    Ok(after
        .iter()
        .filter(|m| !before.contains(&m.version))
        .count())
}

#[cfg(test)]
mod testing {
    use sqlx::Row;

    use super::*;

    /// A backend on a fresh file; keep the directory alive as long as the backend.
    pub(crate) async fn open() -> (SqliteBackend, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let settings = SqliteSettings {
            path: dir.path().join("plan.db"),
            ..SqliteSettings::default()
        };
        (SqliteBackend::open(&settings).await.expect("open"), dir)
    }

    /// SQLite's query plan for `sql`, one step per line.
    pub(crate) async fn plan(store: &SqliteBackend, sql: &str) -> String {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
            .fetch_all(&store.reader)
            .await
            .expect("explain");
        rows.iter()
            .map(|r| r.get::<String, _>("detail"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use cm_ports::OrderStore;
    use cm_ports::testkit::OrderSpec;

    use super::*;

    /// `PRAGMA synchronous` of the write connection: 2 is FULL, 1 NORMAL.
    async fn write_level(store: &SqliteBackend) -> i64 {
        sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&store.writer)
            .await
            .expect("pragma")
    }

    #[tokio::test]
    async fn a_staged_insert_skips_its_sync_and_every_other_write_syncs_again() {
        let (store, _dir) = testing::open().await;
        assert_eq!(write_level(&store).await, 2, "FULL as configured");
        let orders = OrderSpec::agent("a1").many(3);
        assert_eq!(store.insert_staged(&orders).await.expect("staged"), 3);
        assert_eq!(
            write_level(&store).await,
            2,
            "the connection is back at FULL before anyone else writes"
        );
        {
            let mut conn = store.staged().await.expect("staged connection");
            let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut *conn)
                .await
                .expect("pragma");
            assert_eq!(level, 1, "NORMAL while staged");
            // Dropped without finishing, as when the caller goes away midway.
        }
        assert_eq!(write_level(&store).await, 2);
        assert_eq!(
            store
                .insert(&OrderSpec::agent("a2").many(2))
                .await
                .expect("insert"),
            2
        );
    }

    #[test]
    fn settings_default_to_a_file_in_the_working_directory() {
        let s = SqliteSettings::default();
        assert_eq!(s.path, PathBuf::from("command-manager.db"));
        assert_eq!((s.busy_timeout_ms, s.max_connections), (5000, 4));
        assert_eq!(s.synchronous, SqliteSynchronous::Full, "durable by default");
    }

    #[test]
    fn synchronous_is_full_or_normal_in_lowercase() {
        for (raw, expected) in [
            ("full", SqliteSynchronous::Full),
            ("normal", SqliteSynchronous::Normal),
        ] {
            let s: SqliteSettings =
                serde_json::from_str(&format!(r#"{{"synchronous": "{raw}"}}"#)).expect(raw);
            assert_eq!(s.synchronous, expected);
        }
        for bad in ["off", "FULL", "extra", ""] {
            let err =
                serde_json::from_str::<SqliteSettings>(&format!(r#"{{"synchronous": "{bad}"}}"#))
                    .unwrap_err();
            assert!(err.to_string().contains("unknown variant"), "{bad}: {err}");
        }
    }

    /// The value of `PRAGMA synchronous` on the write connection and on a read connection
    /// (SQLite answers 1 for NORMAL, 2 for FULL).
    async fn synchronous_of(settings: &SqliteSettings) -> (i64, i64) {
        let store = SqliteBackend::open(settings).await.expect("open");
        let mut values = [0; 2];
        for (value, pool) in values.iter_mut().zip([&store.writer, &store.reader]) {
            *value = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(pool)
                .await
                .expect("pragma");
        }
        store.close().await;
        (values[0], values[1])
    }

    #[tokio::test]
    async fn the_configured_synchronous_mode_is_applied_to_every_connection() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut settings = SqliteSettings {
            path: dir.path().join("sync.db"),
            ..SqliteSettings::default()
        };
        assert_eq!(synchronous_of(&settings).await, (2, 2), "full by default");
        settings.synchronous = SqliteSynchronous::Normal;
        assert_eq!(synchronous_of(&settings).await, (1, 1));
    }

    #[test]
    fn settings_fill_missing_fields_and_refuse_unknown_ones() {
        let s: SqliteSettings =
            serde_json::from_str(r#"{"path": "/var/lib/cm/cm.db"}"#).expect("partial settings");
        assert_eq!(s.path, PathBuf::from("/var/lib/cm/cm.db"));
        assert_eq!(s.max_connections, 4);
        let err = serde_json::from_str::<SqliteSettings>(r#"{"pathh": "x"}"#).unwrap_err();
        assert!(err.to_string().contains("pathh"), "{err}");
    }

    #[test]
    fn every_migration_has_a_distinct_version() {
        let versions: HashSet<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        assert_eq!(versions.len(), MIGRATOR.iter().count());
        assert!(versions.len() >= 4);
    }
}
