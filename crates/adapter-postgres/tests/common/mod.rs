//! What the PostgreSQL tests share: a fresh database per test on the server named by
//! `CM_TEST_POSTGRES_URL` (or `DATABASE_URL`).

// Each test binary uses part of this module.
#![allow(dead_code)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cm_adapter_postgres::{PostgresBackend, PostgresSettings};
use cm_ports::testkit::Backend;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

/// The server's URL; fails the test loudly when none is configured.
pub(crate) fn server_url() -> String {
    std::env::var("CM_TEST_POSTGRES_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| {
            panic!(
                "the PostgreSQL tests need a server: run them with `cargo xtask test`, or start \
                 one with `cargo xtask postgres` and set CM_TEST_POSTGRES_URL to the URL it \
                 prints (DATABASE_URL is read too)"
            )
        })
}

/// `url` pointing at database `name` instead (the path of the URL replaced, options kept).
pub(crate) fn with_database(url: &str, name: &str) -> String {
    let (head, query) = url
        .split_once('?')
        .map_or((url, None), |(h, q)| (h, Some(q)));
    let (scheme, rest) = head.split_once("://").expect("a postgres:// URL");
    let authority = rest.split('/').next().unwrap_or_default();
    let mut out = format!("{scheme}://{authority}/{name}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A connection to the server's maintenance database, to create databases and kill
/// connections.
pub(crate) async fn admin() -> PgConnection {
    let options = PgConnectOptions::from_str(&server_url()).expect("a valid postgres URL");
    PgConnection::connect_with(&options)
        .await
        .expect("connect to the test server")
}

/// Test databases older than this are dropped by the next test that starts (a test cannot
/// drop its own: the conformance suite has no teardown), so a long-lived server does not fill
/// its disk.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// When the test database `name` was made: its name carries a UUID v7, which starts with the
/// creation time in milliseconds.
pub(crate) fn created_at(name: &str) -> Option<SystemTime> {
    let id = Uuid::try_parse(name.strip_prefix("cm_test_")?).ok()?;
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Drops test databases left by runs more than [`STALE_AFTER`] ago (best effort).
async fn drop_stale_databases(conn: &mut PgConnection) {
    let Ok(names) = sqlx::query_scalar::<_, String>(
        "SELECT datname FROM pg_database WHERE datname LIKE 'cm\\_test\\_%'",
    )
    .fetch_all(&mut *conn)
    .await
    else {
        return;
    };
    let now = SystemTime::now();
    for name in names {
        let stale = created_at(&name)
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STALE_AFTER);
        if stale {
            let _ = conn
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await;
        }
    }
}

/// Settings of a database made for this test only.
pub(crate) async fn fresh_settings() -> PostgresSettings {
    let name = format!("cm_test_{}", Uuid::now_v7().simple());
    let mut conn = admin().await;
    drop_stale_databases(&mut conn).await;
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create the test database");
    let _ = conn.close().await;
    PostgresSettings {
        url: with_database(&server_url(), &name),
        max_connections: 10,
        connect_timeout_secs: 10,
    }
}

/// A backend on a fresh database, migrated.
pub(crate) async fn open_fresh() -> (PostgresBackend, PostgresSettings) {
    let settings = fresh_settings().await;
    let backend = PostgresBackend::open(&settings).await.expect("open");
    (backend, settings)
}

/// The ports of a backend on a fresh database, with its LISTEN/NOTIFY notifier.
pub(crate) async fn backend() -> Backend {
    let (b, _) = open_fresh().await;
    let notifier = b.notifier().await.expect("notifier");
    Backend {
        orders: Arc::new(b.clone()),
        agents: Arc::new(b.clone()),
        requests: Arc::new(b.clone()),
        components: Arc::new(b),
        notifier: Arc::new(notifier),
        guard: None,
    }
}
