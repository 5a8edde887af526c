//! The PostgreSQL backend: the orders stream ([`cm_ports::OrderStore`]), the request records
//! ([`cm_ports::RequestStore`]), the agents registry
//! ([`cm_ports::AgentRegistry`]) and a [`cm_ports::Notifier`] that wakes long-polls on every
//! service instance sharing the database.
//!
//! * Schema: versioned migrations in `migrations/`, applied by [`PostgresBackend::open`] and
//!   [`PostgresBackend::migrate`]. Each order is stored as its document (`jsonb`, the layout
//!   the domain defines) plus columns projected from it for the indexes of the hot queries.
//! * Concurrency: every state change locks its rows with `FOR UPDATE SKIP LOCKED`, computes the
//!   next state with the domain's transition function, and writes it back conditionally on
//!   the state it started from, in one transaction; compare-and-set replacements compare the
//!   stored document. Several instances can run against one database.
//! * Notifications: [`PostgresNotifier`] sends `pg_notify('cm_orders', …)` and listens on the
//!   same channel, reconnecting (and waking every local poll) when its connection drops.
//!
//! No `sqlx` type crosses the port: errors become [`StoreError`] in one place
//! (`convert_sqlx_err`).

mod agents;
mod components;
mod error;
mod notify;
mod orders;
mod requests;
mod rows;
mod settings;
mod tls;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use cm_ports::StoreError;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::error::{convert_migrate_err, convert_sqlx_err};
pub use crate::notify::{CHANNEL, PostgresNotifier, RECHECK_INTERVAL};
pub use crate::settings::PostgresSettings;

/// The schema, embedded at build time.
static MIGRATOR: Migrator = sqlx::migrate!();

/// The table where sqlx records applied migrations (its default).
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// `application_name` of the query connections.
pub const APPLICATION_NAME: &str = "command-manager";
/// `application_name` of the notification listener's connection.
pub const LISTENER_APPLICATION_NAME: &str = "command-manager-listener";

/// The orders stream and agents registry in one PostgreSQL database. Cheap to clone: clones
/// share one connection pool.
#[derive(Clone)]
pub struct PostgresBackend {
    pool: PgPool,
    options: PgConnectOptions,
    connect_timeout: Duration,
}

impl fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("host", &self.options.get_host())
            .field("port", &self.options.get_port())
            .field("database", &self.options.get_database())
            .field("connections", &self.pool.size())
            .finish_non_exhaustive()
    }
}

/// The options of `settings.url`, TLS included (`sslmode`, `sslrootcert`: see the `tls`
/// module).
fn connect_options(settings: &PostgresSettings) -> Result<PgConnectOptions, StoreError> {
    let redacted = settings::redact_url(&settings.url);
    let options = PgConnectOptions::from_str(&settings.url)
        .map(|o| o.application_name(APPLICATION_NAME))
        .map_err(|e| {
            StoreError::Unavailable(format!(
                "storage.postgres.url {redacted} is not a PostgreSQL URL: {e}"
            ))
        })?;
    tls::apply_libpq_rules(options, &settings.url)
}

/// A failure to connect at start-up, saying to what and how: the server's address and the
/// `sslmode`, besides the cause (a refused connection, a TLS certificate problem).
fn connect_err(err: sqlx::Error, options: &PgConnectOptions) -> StoreError {
    match convert_sqlx_err(err) {
        StoreError::Unavailable(why) => StoreError::Unavailable(format!(
            "cannot connect to postgres at {}:{} (sslmode={}): {why}",
            options.get_host(),
            options.get_port(),
            tls::mode_name(options.get_ssl_mode()),
        )),
        other => other,
    }
}

fn connect_timeout(settings: &PostgresSettings) -> Duration {
    Duration::from_secs(settings.connect_timeout_secs.max(1))
}

impl PostgresBackend {
    /// Connects and applies any pending migrations.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached (or the URL is not a
    /// PostgreSQL URL); [`StoreError::Corrupt`] when its schema does not match this build's
    /// migrations.
    #[tracing::instrument(skip(settings))]
    pub async fn open(settings: &PostgresSettings) -> Result<Self, StoreError> {
        let options = connect_options(settings)?;
        let connect_timeout = connect_timeout(settings);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(connect_timeout)
            .connect_with(options.clone())
            .await
            .map_err(|e| connect_err(e, &options))?;
        MIGRATOR.run(&pool).await.map_err(convert_migrate_err)?;
        tracing::info!(
            database = options.get_database().unwrap_or_default(),
            "postgres storage open"
        );
        Ok(Self {
            pool,
            options,
            connect_timeout,
        })
    }

    /// Applies pending migrations (`command-manager migrate`) and returns how many ran; 0 when
    /// the schema is current.
    ///
    /// # Errors
    /// As [`Self::open`].
    #[tracing::instrument(skip(settings))]
    pub async fn migrate(settings: &PostgresSettings) -> Result<usize, StoreError> {
        let options = connect_options(settings)?;
        let mut conn = tokio::time::timeout(
            connect_timeout(settings),
            sqlx::PgConnection::connect_with(&options),
        )
        .await
        .map_err(|_| StoreError::Unavailable("timed out connecting to postgres".to_owned()))?
        .map_err(|e| connect_err(e, &options))?;
        // Held across counting and running, so a concurrent migrator cannot skew the count
        // (the migrator takes the same advisory lock again: it is re-entrant).
        conn.lock().await.map_err(convert_migrate_err)?;
        let result = async {
            conn.ensure_migrations_table(MIGRATIONS_TABLE)
                .await
                .map_err(convert_migrate_err)?;
            let applied = conn
                .list_applied_migrations(MIGRATIONS_TABLE)
                .await
                .map_err(convert_migrate_err)?;
            let pending = MIGRATOR
                .iter()
                .filter(|m| m.migration_type.is_up_migration())
                .filter(|m| !applied.iter().any(|a| a.version == m.version))
                .count();
            MIGRATOR
                .run_direct(None, &mut conn, false)
                .await
                .map_err(convert_migrate_err)?;
            Ok::<_, StoreError>(pending)
        }
        .await;
        let unlocked = conn.unlock().await.map_err(convert_migrate_err);
        let _ = conn.close().await;
        let pending = result?;
        unlocked?;
        tracing::info!(applied = pending, "postgres migrations applied");
        Ok(pending)
    }

    /// A notifier for this database, listening for other instances' notifications on its own
    /// connection. Returns once it listens.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the listening connection cannot be opened.
    pub async fn notifier(&self) -> Result<PostgresNotifier, StoreError> {
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(self.connect_timeout)
            .connect_lazy_with(
                self.options
                    .clone()
                    .application_name(LISTENER_APPLICATION_NAME),
            );
        PostgresNotifier::start(self.pool.clone(), listener_pool).await
    }

    /// Closes every connection of the pool (waiting for those in use to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
