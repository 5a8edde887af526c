//! A database written by the schema before request records (migrations 1 to 5) keeps working
//! once upgraded: its orders, which have no record and no `held` or `position`, are delivered,
//! expire and are counted as before.

mod common;

use std::path::Path;

use chrono::Duration;
use cm_adapter_sqlite::SqliteBackend;
use cm_domain::{DeliveryPolicy, Order, Status};
use cm_ports::testkit::{OrderSpec, agent_id, at};
use cm_ports::{Consumers, OrderStore};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

/// The migrations before request records.
const BEFORE_RECORDS: usize = 5;

/// Writes `order` as the schema before records did: no `held`, no `position` column.
async fn insert_old(pool: &sqlx::SqlitePool, o: &Order) {
    sqlx::query(
        "INSERT INTO orders (order_id, request_id, agent_id, target_type, target_id, action, \
         status, created_ms, deadline_ms, available_ms, redeliver_ms, result_deadline_ms, \
         finished_ms, document) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, NULL, \
         NULL, ?11)",
    )
    .bind(o.order_id().to_string())
    .bind(o.request_id().to_string())
    .bind(o.agent_id().map(|a| a.as_str().to_owned()))
    .bind(o.target().kind().as_str())
    .bind(o.target().id())
    .bind(o.action().name())
    .bind(o.status().as_str())
    .bind(o.created_at().timestamp_millis())
    .bind(o.delivery_deadline().timestamp_millis())
    .bind(o.available_from().timestamp_millis())
    .bind(serde_json::to_string(o).expect("encode"))
    .execute(pool)
    .await
    .expect("insert an order of the old schema");
}

/// A database file holding the schema of the migrations before records only, as a build of
/// that schema left it.
async fn old_database(path: &Path) -> sqlx::SqlitePool {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true),
        )
        .await
        .expect("create the old database");
    let mut migrator = Migrator::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"))
        .await
        .expect("migrations");
    let mut old = migrator.migrations.to_vec();
    old.sort_by_key(|m| m.version);
    old.truncate(BEFORE_RECORDS);
    migrator.migrations = old.into();
    migrator.run(&pool).await.expect("apply the old migrations");
    pool
}

#[tokio::test]
async fn orders_of_the_schema_before_records_are_delivered_and_expire_after_the_upgrade() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let settings = common::settings_in(&dir);
    let deliverable = OrderSpec::agent("a1").build();
    let expiring = OrderSpec::agent("a2").timeout(10).build();
    let scheduled = OrderSpec::agent("a3").not_before(at(100)).build();
    {
        let pool = old_database(&settings.path).await;
        for o in [&deliverable, &expiring, &scheduled] {
            insert_old(&pool, o).await;
        }
        pool.close().await;
    }

    let store = SqliteBackend::open(&settings)
        .await
        .expect("open and upgrade");
    let stored = OrderStore::get(&store, deliverable.order_id())
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(stored, deliverable);
    assert!(!stored.is_held() && stored.position().is_none());

    // No record, not held: it goes out, through the rebuilt claim index.
    let claimed = store
        .claim(
            &Consumers::agent(&agent_id("a1")),
            10,
            at(1),
            &DeliveryPolicy::default(),
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].order_id(), deliverable.order_id());
    assert_eq!(claimed[0].status(), Status::Sent);

    // The long-poll still sees the scheduled one coming.
    assert_eq!(
        store
            .next_due(&Consumers::agent(&agent_id("a3")), at(1))
            .await
            .expect("next due"),
        Some(at(100))
    );

    // The expiry drain still finds the old pending orders past their deadline.
    let now = expiring.delivery_deadline() + Duration::seconds(1);
    let batch = store.expire_due(now, 10).await.expect("expire");
    assert_eq!(batch.changed, 1, "{batch:?}");
    let expired = OrderStore::get(&store, expiring.order_id())
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(expired.status(), Status::Failure);

    // An expiry of the service is not an error of the action.
    let counts = store
        .progress(expiring.request_id())
        .await
        .expect("progress");
    assert_eq!((counts.failure, counts.errors), (1, 0), "{counts:?}");
    store.close().await;
}
