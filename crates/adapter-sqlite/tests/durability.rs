//! What only a file-backed store promises: data survives a restart, migrations are versioned and
//! idempotent, and a file that is not ours is refused.

mod common;

use cm_adapter_sqlite::SqliteBackend;
use cm_domain::{DeliveryPolicy, KeyHash, Status};
use cm_ports::testkit::{OrderSpec, agent, agent_id, at, group};
use cm_ports::{AgentRegistry, Consumers, OrderFilter, OrderPageRequest, OrderStore, StoreError};

#[tokio::test]
async fn orders_and_agents_survive_closing_and_reopening_the_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let settings = common::settings_in(&dir);
    let orders = OrderSpec::agent("a1").many(5);
    let delivered = {
        let store = SqliteBackend::open(&settings).await.expect("open");
        assert_eq!(store.insert(&orders).await.expect("insert"), 5);
        store
            .upsert_many(&[agent("a1", &["Test"]), agent("a2", &["Test", "Prod"])])
            .await
            .expect("upsert");
        let delivered = store
            .claim(
                &Consumers::agent(&agent_id("a1")),
                2,
                at(1),
                &DeliveryPolicy::default(),
            )
            .await
            .expect("claim");
        assert_eq!(delivered.len(), 2);
        store.close().await;
        delivered
    };

    let store = SqliteBackend::open(&settings).await.expect("reopen");
    for o in &orders {
        let stored = OrderStore::get(&store, o.order_id())
            .await
            .expect("get")
            .expect("still there");
        match delivered.iter().find(|d| d.order_id() == o.order_id()) {
            Some(d) => assert_eq!(&stored, d),
            None => assert_eq!(&stored, o),
        }
    }
    let sent = store
        .query(
            &OrderFilter {
                status: Some(Status::Sent),
                ..OrderFilter::default()
            },
            &OrderPageRequest {
                size: 10,
                after: None,
            },
        )
        .await
        .expect("query");
    assert_eq!(sent.items, delivered);
    assert_eq!(
        AgentRegistry::get(&store, &agent_id("a2"))
            .await
            .expect("get")
            .expect("agent"),
        agent("a2", &["Test", "Prod"])
    );
    assert_eq!(store.count(Some(group("Test"))).await.expect("count"), 2);
    store.close().await;
}

#[tokio::test]
async fn an_agents_key_hash_and_a_scheduled_order_survive_reopening_the_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let settings = common::settings_in(&dir);
    let hash = KeyHash::parse(&"0f".repeat(32), "key").expect("hash");
    let scheduled = OrderSpec::agent("a1")
        .timeout(1000)
        .not_before(at(30))
        .build();
    {
        let store = SqliteBackend::open(&settings).await.expect("open");
        store.upsert(&agent("a1", &["Test"])).await.expect("upsert");
        assert!(
            store
                .set_key_hash(&agent_id("a1"), &hash)
                .await
                .expect("set")
        );
        store
            .insert(std::slice::from_ref(&scheduled))
            .await
            .expect("insert");
        store.close().await;
    }
    let store = SqliteBackend::open(&settings).await.expect("reopen");
    assert_eq!(
        store.key_hash(&agent_id("a1")).await.expect("key"),
        Some(hash)
    );
    assert_eq!(
        store
            .next_due(&Consumers::agent(&agent_id("a1")), at(0))
            .await
            .expect("due"),
        Some(at(30))
    );
    store.close().await;
}

#[tokio::test]
async fn migrate_applies_every_migration_once() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let settings = common::settings_in(&dir);
    let first = SqliteBackend::migrate(&settings).await.expect("migrate");
    assert!(first >= 2, "a fresh file gets the whole schema ({first})");
    assert_eq!(SqliteBackend::migrate(&settings).await.expect("again"), 0);
    let store = SqliteBackend::open(&settings).await.expect("open");
    store.ping().await.expect("ping");
    store.close().await;
    assert_eq!(
        SqliteBackend::migrate(&settings).await.expect("after open"),
        0
    );
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_as_corrupt() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let settings = common::settings_in(&dir);
    std::fs::write(&settings.path, vec![b'x'; 8192]).expect("write junk");
    let err = SqliteBackend::open(&settings).await.expect_err("refused");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
}

#[tokio::test]
async fn a_missing_directory_is_unavailable() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut settings = common::settings_in(&dir);
    settings.path = dir.path().join("no-such-dir").join("cm.db");
    let err = SqliteBackend::open(&settings).await.expect_err("refused");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn operations_after_close_are_unavailable() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteBackend::open(&common::settings_in(&dir))
        .await
        .expect("open");
    store.close().await;
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.insert(&OrderSpec::agent("a1").many(1)).await,
        Err(StoreError::Unavailable(_))
    ));
}
