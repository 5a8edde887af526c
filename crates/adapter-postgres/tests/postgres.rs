//! What only the PostgreSQL backend promises beyond the conformance suite: several instances on
//! one database (notifications across them, claims across pools), a listener that survives
//! losing its connection, idempotent migrations, and errors translated at the port.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cm_adapter_postgres::{
    LISTENER_APPLICATION_NAME, PostgresBackend, PostgresNotifier, PostgresSettings,
};
use cm_domain::{Action, Command, Consumer, DeliveryPolicy, Source, Target, TargetType, Timeout};
use cm_ports::testkit::{
    Backend, LONG_WAIT, OrderSpec, agent, agent_id, at, long_wait_settings, until_poll_waits,
};
use cm_ports::{
    AgentRegistry, Consumers, Notifier, OrderStore, Settings, StoreError, SubmitRequest,
};
use common::{admin, fresh_settings, open_fresh};
use sqlx::Row;
use tokio::time::timeout;

fn policy() -> DeliveryPolicy {
    DeliveryPolicy {
        redeliver_after: Some(chrono::Duration::seconds(60)),
        result_timeout: Some(chrono::Duration::seconds(600)),
    }
}

/// One service instance: its own pool and notifier on a shared database.
struct Instance {
    backend: PostgresBackend,
    notifier: Arc<PostgresNotifier>,
}

impl Instance {
    async fn open(settings: &PostgresSettings) -> Self {
        let backend = PostgresBackend::open(settings).await.expect("open");
        let notifier = Arc::new(backend.notifier().await.expect("notifier"));
        Self { backend, notifier }
    }

    fn ports(&self) -> Backend {
        Backend {
            orders: Arc::new(self.backend.clone()),
            agents: Arc::new(self.backend.clone()),
            requests: Arc::new(self.backend.clone()),
            components: Arc::new(self.backend.clone()),
            notifier: Arc::clone(&self.notifier) as Arc<dyn Notifier>,
            guard: None,
        }
    }
}

/// Two instances on one fresh database.
async fn two_instances() -> (Instance, Instance, PostgresSettings) {
    let settings = fresh_settings().await;
    let a = Instance::open(&settings).await;
    let b = Instance::open(&settings).await;
    (a, b, settings)
}

fn database_of(settings: &PostgresSettings) -> String {
    let path = settings
        .url
        .rsplit('/')
        .next()
        .expect("a database in the URL");
    path.split('?').next().unwrap_or(path).to_owned()
}

fn restart(kind: TargetType, id: &str) -> Command {
    Command::new(
        Source::UsersServices,
        None,
        Target::new(kind, id).expect("target"),
        Action::new("restart", serde_json::json!({}), "v5").expect("action"),
        Timeout::new(300).expect("timeout"),
    )
    .expect("command")
}

#[test]
fn urls_are_pointed_at_another_database_keeping_their_options() {
    assert_eq!(
        common::with_database("postgres://u:p@h:1/postgres?sslmode=disable", "x"),
        "postgres://u:p@h:1/x?sslmode=disable"
    );
    assert_eq!(common::with_database("postgres://h", "x"), "postgres://h/x");
}

#[test]
fn test_databases_carry_their_creation_time() {
    let before = std::time::SystemTime::now();
    let name = format!("cm_test_{}", uuid::Uuid::now_v7().simple());
    let after = std::time::SystemTime::now();
    let created = common::created_at(&name).expect("a time");
    // A UUID v7 keeps milliseconds: its time is `before`, cut to the millisecond, or later.
    assert!(
        created + Duration::from_millis(1) > before && created <= after,
        "{created:?} is not between {before:?} and {after:?}"
    );
    assert_eq!(common::created_at("cm_test_nonsense"), None);
    assert_eq!(common::created_at("postgres"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_wakes_a_poll_on_another_instance() {
    let (a, b, _) = two_instances().await;
    let mut mine = b.notifier.subscribe(&Consumers::agent(&agent_id("a1")));
    let mut other = b.notifier.subscribe(&Consumers::agent(&agent_id("a2")));
    a.notifier
        .notify(&[Consumer::Agent(agent_id("a1"))])
        .await
        .expect("notify");
    // Only LISTEN/NOTIFY can wake it; a lost notification leaves the test waiting.
    mine.notified().await;
    assert!(
        timeout(Duration::from_millis(300), other.notified())
            .await
            .is_err(),
        "another agent's poll stays asleep"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_fan_out_still_reaches_every_instance() {
    let (a, b, _) = two_instances().await;
    let fleet: Vec<Consumer> = (0..20_000)
        .map(|i| Consumer::Agent(agent_id(&format!("agent-{i:05}"))))
        .collect();
    let one = |c: &Consumer| match c {
        Consumer::Agent(a) => Consumers::agent(a),
        Consumer::Component(c) => Consumers::component(c),
    };
    let mut first = b.notifier.subscribe(&one(&fleet[0]));
    let mut last = b.notifier.subscribe(&one(&fleet[19_999]));
    a.notifier.notify(&fleet).await.expect("notify");
    first.notified().await;
    last.notified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_poll_on_one_instance_returns_when_another_instance_submits() {
    let (a, b, _) = two_instances().await;
    // The polling instance never re-checks storage by itself: only the other instance's
    // notification can bring it the order before the end of its (hour-long) wait.
    let polling = Backend {
        notifier: Arc::new(NoRecheck(Arc::clone(&b.notifier))),
        ..b.ports()
    };
    let (submitter, poller) = (
        a.ports().service(Settings::default()),
        polling.service(long_wait_settings()),
    );
    b.backend
        .upsert(&agent("a1", &["Test"]))
        .await
        .expect("upsert");
    let poll = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let got = poller
            .poll(&agent_id("a1"), 10, LONG_WAIT)
            .await
            .expect("poll");
        (got, started.elapsed())
    });
    until_poll_waits(b.notifier.as_ref(), &agent_id("a1"), &poll).await;
    let submitted = submitter
        .submit(SubmitRequest {
            commands: vec![restart(TargetType::Agent, "a1")],
            idempotency: None,
        })
        .await
        .expect("submit");
    let (got, waited) = poll.await.expect("task");
    let got: Vec<_> = got.iter().map(|o| *o.order_id()).collect();
    assert_eq!(got, submitted[0].order_ids);
    assert!(
        waited < LONG_WAIT,
        "woken by the other instance, not at the end of its wait ({waited:?})"
    );
}

/// A notifier whose polls never re-check storage by themselves: what reaches them came through
/// its notifications.
struct NoRecheck(Arc<PostgresNotifier>);

#[async_trait::async_trait]
impl Notifier for NoRecheck {
    async fn notify(&self, consumers: &[Consumer]) -> Result<(), StoreError> {
        self.0.notify(consumers).await
    }

    fn subscribe(&self, consumers: &Consumers) -> cm_ports::Subscription {
        self.0.subscribe(consumers)
    }

    fn recheck_interval(&self) -> Option<Duration> {
        None
    }

    fn polls_waiting(&self, consumer: &Consumer) -> usize {
        self.0.polls_waiting(consumer)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_connection_is_killed_reconnects_and_wakes_every_poll() {
    let (a, b, settings) = two_instances().await;
    let mut waiting = a.notifier.subscribe(&Consumers::agent(&agent_id("a1")));
    let mut admin = admin().await;
    let killed: i64 = sqlx::query(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name = $2",
    )
    .bind(database_of(&settings))
    .bind(LISTENER_APPLICATION_NAME)
    .fetch_one(&mut admin)
    .await
    .expect("terminate the listeners")
    .get(0);
    assert_eq!(killed, 2, "both instances' listeners were connected");

    // Whatever was notified while the listener was gone is lost: after reconnecting it wakes
    // every poll so they look at storage themselves.
    waiting.notified().await;

    // And it listens again: a notification sent now arrives.
    let mut later = a.notifier.subscribe(&Consumers::agent(&agent_id("a2")));
    loop {
        // b's listener may still be reconnecting; a's is back (it woke us). Send until heard:
        // a lost notification here would be the bug under test only if a had not reconnected
        // (then the test never ends).
        b.notifier
            .notify(&[Consumer::Agent(agent_id("a2"))])
            .await
            .expect("notify");
        if timeout(Duration::from_millis(500), later.notified())
            .await
            .is_ok()
        {
            break;
        }
    }
    let listeners: i64 = sqlx::query(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
    )
    .bind(database_of(&settings))
    .bind(LISTENER_APPLICATION_NAME)
    .fetch_one(&mut admin)
    .await
    .expect("count listeners")
    .get(0);
    assert!(listeners >= 1, "the listener connection is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_reconnect_at_once_keeps_retrying_and_then_wakes_every_poll() {
    let (a, b, settings) = two_instances().await;
    let database = database_of(&settings);
    let mut waiting = a.notifier.subscribe(&Consumers::agent(&agent_id("a1")));
    let mut admin = admin().await;
    // Refuse new connections to the database, then cut the listeners off: their immediate
    // reconnection fails and they fall back to retrying with backoff.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {database} ALLOW_CONNECTIONS false"
    )))
    .execute(&mut admin)
    .await
    .expect("refuse connections");
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name = $2",
    )
    .bind(&database)
    .bind(LISTENER_APPLICATION_NAME)
    .execute(&mut admin)
    .await
    .expect("terminate the listeners");
    assert!(
        timeout(Duration::from_millis(1_500), waiting.notified())
            .await
            .is_err(),
        "nobody is woken while the listener is down"
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {database} ALLOW_CONNECTIONS true"
    )))
    .execute(&mut admin)
    .await
    .expect("accept connections again");
    // Woken once the listener is back (it listens again before it wakes every poll).
    waiting.notified().await;
    let mut later = a.notifier.subscribe(&Consumers::agent(&agent_id("a2")));
    b.notifier
        .notify(&[Consumer::Agent(agent_id("a2"))])
        .await
        .expect("notify");
    later.notified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_notifier_closes_its_listener_connection() {
    let (backend, settings) = open_fresh().await;
    let notifier = backend.notifier().await.expect("notifier");
    let mut admin = admin().await;
    let count = async |admin: &mut sqlx::PgConnection| -> i64 {
        sqlx::query(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
        )
        .bind(database_of(&settings))
        .bind(LISTENER_APPLICATION_NAME)
        .fetch_one(admin)
        .await
        .expect("count listeners")
        .get(0)
    };
    assert_eq!(count(&mut admin).await, 1);
    notifier.shutdown().await;
    // The server sees the connection go a moment after the client closed it.
    while count(&mut admin).await > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_claiming_for_one_agent_never_hand_out_the_same_order() {
    let (a, b, _) = two_instances().await;
    let orders = OrderSpec::agent("a1").timeout(1000).many(600);
    assert_eq!(a.backend.insert(&orders).await.expect("insert"), 600);
    let mut tasks = Vec::new();
    for backend in [&a.backend, &b.backend] {
        for _ in 0..4 {
            let store = backend.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = store
                        .claim(&Consumers::agent(&agent_id("a1")), 7, at(1), &policy())
                        .await
                        .expect("claim");
                    if batch.is_empty() {
                        return got;
                    }
                    got.extend(batch.iter().map(|o| *o.order_id()));
                }
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("claimer"));
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "an order was handed out twice");
    assert_eq!(all.len(), 600, "every order was handed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_on_one_instance_and_claims_on_another_move_each_order_once() {
    let (a, b, _) = two_instances().await;
    let orders = OrderSpec::agent("a1").timeout(10).many(300);
    a.backend.insert(&orders).await.expect("insert");
    let claimer = {
        let store = b.backend.clone();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let batch = store
                    .claim(&Consumers::agent(&agent_id("a1")), 5, at(9), &policy())
                    .await
                    .expect("claim");
                if batch.is_empty() {
                    return n;
                }
                n += batch.len();
            }
        })
    };
    let expirer = {
        let store = a.backend.clone();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let batch = store.expire_due(at(10), 5).await.expect("expire");
                n += batch.changed;
                if batch.examined == 0 {
                    return n;
                }
            }
        })
    };
    let (claimed, expired) = (
        claimer.await.expect("claimer"),
        expirer.await.expect("expirer"),
    );
    assert_eq!(claimed + expired, 300);
    let counts = a
        .backend
        .progress(orders[0].request_id())
        .await
        .expect("progress");
    assert_eq!(
        (
            counts.sent as usize,
            counts.failure as usize,
            counts.pending
        ),
        (claimed, expired, 0)
    );
}

#[tokio::test]
async fn migrate_applies_every_migration_once() {
    let settings = fresh_settings().await;
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("migrations directory")
        .count();
    assert_eq!(
        PostgresBackend::migrate(&settings).await.expect("migrate"),
        files
    );
    assert_eq!(PostgresBackend::migrate(&settings).await.expect("again"), 0);
    let backend = PostgresBackend::open(&settings).await.expect("open");
    backend.ping().await.expect("ping");
    assert_eq!(
        PostgresBackend::migrate(&settings)
            .await
            .expect("after open"),
        0
    );
}

#[tokio::test]
async fn open_runs_the_migrations_of_a_fresh_database() {
    let (backend, settings) = open_fresh().await;
    backend.ping().await.expect("ping");
    assert_eq!(
        PostgresBackend::migrate(&settings).await.expect("migrate"),
        0
    );
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let settings = PostgresSettings {
        url: "postgres://nobody:secret@127.0.0.1:1/nothing".into(),
        max_connections: 1,
        connect_timeout_secs: 2,
    };
    match PostgresBackend::open(&settings).await {
        Err(StoreError::Unavailable(message)) => {
            assert!(!message.contains("secret"), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        PostgresBackend::migrate(&settings).await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_document_the_domain_cannot_read_is_corrupt() {
    let (backend, settings) = open_fresh().await;
    let order = OrderSpec::agent("a1").build();
    backend
        .insert(std::slice::from_ref(&order))
        .await
        .expect("insert");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&settings.url)
        .await
        .expect("connect");
    sqlx::query("UPDATE orders SET doc = '{\"not\": \"an order\"}'::jsonb")
        .execute(&mut conn)
        .await
        .expect("break the document");
    assert!(matches!(
        OrderStore::get(&backend, order.order_id()).await,
        Err(StoreError::Corrupt(_))
    ));
}

#[tokio::test]
async fn a_stopped_server_makes_calls_unavailable_not_panics() {
    let (backend, _) = open_fresh().await;
    backend.close().await;
    assert!(matches!(
        backend.ping().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        OrderStore::get(&backend, OrderSpec::agent("a1").build().order_id()).await,
        Err(StoreError::Unavailable(_))
    ));
}
