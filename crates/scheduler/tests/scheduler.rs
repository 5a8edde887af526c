//! The scheduler over the in-memory adapter (and a mocked store for failures), on tokio's
//! paused clock.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cm_domain::Status;
use cm_ports::testkit::{MockAgentRegistry, MockNotifier, MockOrderStore, OrderSpec, at};
use cm_ports::{
    Batch, CommandManager, OrderStore as _, Ports, RetentionMode, Settings, StoreError,
};
use cm_scheduler::{Job, RunReport, Scheduler, SchedulerSettings, metric};
use support::{Instrumented, Logs, Metrics, service, settle, shutdown_signal};

const MINUTE: Duration = Duration::from_secs(60);

fn every(secs: u64) -> SchedulerSettings {
    SchedulerSettings {
        enabled: true,
        interval_secs: secs,
    }
}

async fn insert(store: &Instrumented, orders: &[cm_domain::Order]) {
    let created = store.insert(orders).await.expect("insert");
    assert_eq!(created, orders.len() as u64);
}

async fn status_of(manager: &CommandManager, order: &cm_domain::Order) -> Option<Status> {
    manager
        .order(order.order_id())
        .await
        .expect("get")
        .map(|o| o.status())
}

// ---- settings --------------------------------------------------------------------------------

#[test]
fn settings_default_to_enabled_every_sixty_seconds() {
    let s: SchedulerSettings = serde_json::from_str("{}").expect("empty settings");
    assert_eq!(s, SchedulerSettings::default());
    assert!(s.enabled);
    assert_eq!(s.interval_secs, 60);
    assert_eq!(s.interval(), MINUTE);
}

#[test]
fn an_interval_of_zero_seconds_is_refused_with_a_message_naming_the_rule() {
    let err = serde_json::from_str::<SchedulerSettings>(r#"{"interval_secs": 0}"#)
        .expect_err("zero interval");
    assert!(err.to_string().contains("at least 1"), "{err}");
}

#[test]
fn unknown_settings_are_refused() {
    let err =
        serde_json::from_str::<SchedulerSettings>(r#"{"interval": 5}"#).expect_err("unknown field");
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn settings_given_in_part_keep_the_defaults_of_the_rest() {
    let s: SchedulerSettings = serde_json::from_str(r#"{"enabled": false}"#).expect("settings");
    assert!(!s.enabled);
    assert_eq!(s.interval_secs, 60);
}

// ---- one run ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_backlog_of_5000_overdue_orders_is_fully_expired_in_one_run() {
    let store = Arc::new(Instrumented::new());
    let settings = Settings {
        maintenance_batch: 100,
        ..Settings::default()
    };
    let (manager, clock) = service(store.clone(), settings);
    let spec = OrderSpec::agent("a1").timeout(10);
    insert(&store, &spec.many(5000)).await;
    clock.set(at(11));

    let report = Scheduler::new(manager.clone(), every(60)).run_once().await;

    assert_eq!(report.expired, Ok(5000));
    assert!(report.is_ok(), "{report:?}");
    let counts = manager
        .progress(&spec.request)
        .await
        .expect("progress")
        .expect("known request");
    assert_eq!((counts.pending, counts.failure), (0, 5000));
    assert!(
        store.expire_calls() >= 50,
        "drained in batches of 100, not one big call: {} calls",
        store.expire_calls()
    );
}

#[tokio::test(start_paused = true)]
async fn delivered_orders_without_a_result_are_given_up_on() {
    let store = Arc::new(Instrumented::new());
    let (manager, clock) = service(store.clone(), Settings::default());
    let order = OrderSpec::agent("a1").build();
    insert(&store, std::slice::from_ref(&order)).await;
    let agent = order.agent_id().expect("agent order").clone();
    clock.set(at(1));
    let got = manager
        .poll(&agent, 10, Duration::ZERO)
        .await
        .expect("poll");
    assert_eq!(got.len(), 1);
    let result_timeout = Settings::default()
        .delivery
        .result_timeout
        .expect("a result timeout");
    clock.set(at(1) + result_timeout);

    let report = Scheduler::new(manager.clone(), every(60)).run_once().await;

    assert_eq!(report.gave_up, Ok(1));
    let stored = manager
        .order(order.order_id())
        .await
        .expect("get")
        .expect("order");
    assert_eq!(stored.status(), Status::Failure);
    assert_eq!(
        stored.result().expect("result").message(),
        cm_domain::NO_RESULT
    );
}

#[tokio::test(start_paused = true)]
async fn retention_deletes_finished_orders_older_than_the_configured_age() {
    let store = Arc::new(Instrumented::new());
    let settings = Settings {
        retention: Some(Duration::from_secs(3600)),
        retention_mode: RetentionMode::Delete,
        ..Settings::default()
    };
    let (manager, clock) = service(store.clone(), settings);
    let old = OrderSpec::agent("a1").timeout(10).many(3);
    let young = OrderSpec::agent("a2").timeout(3000).build();
    let open = OrderSpec::agent("a3").timeout(30_000).build();
    insert(
        &store,
        &[old.clone(), vec![young.clone(), open.clone()]].concat(),
    )
    .await;
    let scheduler = Scheduler::new(manager.clone(), every(60));
    clock.set(at(20));
    assert_eq!(scheduler.run_once().await.expired, Ok(3)); // finished at +20 s
    clock.set(at(2000));
    manager.cancel(young.order_id()).await.expect("cancel"); // finished at +2000 s

    clock.set(at(20 + 3599));
    assert_eq!(
        scheduler.run_once().await.purged,
        Ok(0),
        "not old enough yet"
    );
    clock.set(at(20 + 3600));
    let report = scheduler.run_once().await;

    assert_eq!(report.purged, Ok(3));
    for o in &old {
        assert_eq!(status_of(&manager, o).await, None, "deleted");
        assert_eq!(
            store
                .get_archived(o.order_id())
                .await
                .expect("get archived"),
            None,
            "deleted, not archived"
        );
    }
    assert_eq!(status_of(&manager, &young).await, Some(Status::Failure));
    assert_eq!(status_of(&manager, &open).await, Some(Status::Pending));
}

#[tokio::test(start_paused = true)]
async fn retention_archives_finished_orders_when_archiving_is_on() {
    let store = Arc::new(Instrumented::new());
    let settings = Settings {
        retention: Some(Duration::from_secs(60)),
        retention_mode: RetentionMode::Archive,
        ..Settings::default()
    };
    let (manager, clock) = service(store.clone(), settings);
    let old = OrderSpec::agent("a1").timeout(10).build();
    insert(&store, std::slice::from_ref(&old)).await;
    let scheduler = Scheduler::new(manager.clone(), every(60));
    clock.set(at(10));
    scheduler.run_once().await;
    clock.set(at(70));

    assert_eq!(scheduler.run_once().await.purged, Ok(1));
    assert_eq!(status_of(&manager, &old).await, None);
    let archived = store
        .get_archived(old.order_id())
        .await
        .expect("get archived")
        .expect("in the archive");
    assert_eq!(archived.status(), Status::Failure);
}

#[tokio::test(start_paused = true)]
async fn no_retention_configured_purges_nothing() {
    let store = Arc::new(Instrumented::new());
    let settings = Settings {
        retention: None,
        ..Settings::default()
    };
    let (manager, clock) = service(store.clone(), settings);
    let old = OrderSpec::agent("a1").timeout(10).build();
    insert(&store, std::slice::from_ref(&old)).await;
    let scheduler = Scheduler::new(manager.clone(), every(60));
    clock.set(at(10));
    scheduler.run_once().await;
    clock.set(at(10 + 365 * 24 * 3600));

    assert_eq!(scheduler.run_once().await.purged, Ok(0));
    assert_eq!(store.purge_calls(), 0);
    assert_eq!(status_of(&manager, &old).await, Some(Status::Failure));
}

// ---- failures --------------------------------------------------------------------------------

/// A service whose orders stream fails every expiry and answers the other jobs with "nothing
/// to do", counting the calls of the expiry and retention jobs.
fn failing_expiry() -> (CommandManager, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    failing_expiry_with(StoreError::Unavailable("connection refused".to_owned()))
}

/// Like [`failing_expiry`], every expiry failing with `error`.
fn failing_expiry_with(error: StoreError) -> (CommandManager, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let expiries = Arc::new(AtomicUsize::new(0));
    let purges = Arc::new(AtomicUsize::new(0));
    let mut store = MockOrderStore::new();
    store
        .expect_sweep_batch()
        .returning(|configured| configured);
    let n = Arc::clone(&expiries);
    store.expect_expire_due().returning(move |_, _| {
        n.fetch_add(1, Ordering::SeqCst);
        Err(error.clone())
    });
    store
        .expect_give_up_unreported()
        .returning(|_, _| Ok(Batch::default()));
    let n = Arc::clone(&purges);
    store.expect_purge_finished().returning(move |_, _, _| {
        n.fetch_add(1, Ordering::SeqCst);
        Ok(Batch::default())
    });
    let mut requests = cm_ports::testkit::MockRequestStore::new();
    requests.expect_unsettled().returning(|_, _| Ok(Vec::new()));
    requests.expect_purge_settled().returning(|_, _| Ok(0));
    let manager = CommandManager::new(
        Ports {
            orders: Arc::new(store),
            agents: Arc::new(MockAgentRegistry::new()),
            components: Arc::new(cm_ports::testkit::MockComponentRegistry::new()),
            requests: Arc::new(requests),
            notifier: Arc::new(MockNotifier::new()),
            clock: Arc::new(cm_ports::testkit::ManualClock::new(at(0))),
        },
        Settings::default(),
    );
    (manager, expiries, purges)
}

#[tokio::test(start_paused = true)]
async fn a_failing_job_is_logged_and_the_other_jobs_still_run() {
    let (manager, expiries, purges) = failing_expiry();
    let (logs, _guard) = Logs::capture();
    let recorder = Metrics::default();
    let _metrics = metrics::set_default_local_recorder(&recorder);

    let report = Scheduler::new(manager, every(60)).run_once().await;

    assert_eq!(
        report,
        RunReport {
            expired: Err(StoreError::Unavailable("connection refused".to_owned())),
            gave_up: Ok(0),
            requests: Ok(0),
            purged: Ok(0),
        }
    );
    assert!(!report.is_ok());
    assert_eq!(
        report.failures().map(|(job, _)| job).collect::<Vec<_>>(),
        [Job::Expiry]
    );
    assert_eq!(expiries.load(Ordering::SeqCst), 1);
    assert_eq!(
        purges.load(Ordering::SeqCst),
        1,
        "retention ran after the failure"
    );

    let failures: Vec<_> = logs
        .events()
        .into_iter()
        .filter(|e| e.level <= tracing::Level::WARN)
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let event = &failures[0];
    assert_eq!(event.field("job"), Some("expiry"));
    assert!(
        event
            .field("error")
            .is_some_and(|e| e.contains("connection refused")),
        "{event:?}"
    );
    let message = event.field("message").expect("a message");
    assert_eq!(message, message.to_lowercase(), "lowercase message");

    let runs =
        |job, outcome| recorder.get(metric::RUNS.name, &[("job", job), ("outcome", outcome)]);
    assert_eq!(runs("expiry", "error"), 1.0);
    assert_eq!(runs("expiry", "ok"), 0.0);
    assert_eq!(runs("no_result", "ok"), 1.0);
    assert_eq!(runs("retention", "ok"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_job_that_loses_to_contention_is_logged_as_contention_not_as_an_outage() {
    let contention = StoreError::Contention("the orders kept changing".to_owned());
    let (manager, _, purges) = failing_expiry_with(contention.clone());
    let (logs, _guard) = Logs::capture();

    let report = Scheduler::new(manager, every(60)).run_once().await;

    assert_eq!(report.expired, Err(contention));
    assert_eq!(purges.load(Ordering::SeqCst), 1, "retention ran after it");
    let failures: Vec<_> = logs
        .events()
        .into_iter()
        .filter(|e| e.level <= tracing::Level::WARN)
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let event = &failures[0];
    assert_eq!(event.level, tracing::Level::WARN, "{event:?}");
    assert_eq!(event.field("job"), Some("expiry"));
    assert!(
        event
            .field("message")
            .is_some_and(|m| m.contains("contention")),
        "{event:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_job_does_not_stop_the_loop_and_the_next_tick_retries() {
    let (manager, expiries, purges) = failing_expiry();
    let (stop, shutdown) = shutdown_signal();
    let task = tokio::spawn(Scheduler::new(manager, every(60)).run(shutdown));

    settle().await;
    assert_eq!(expiries.load(Ordering::SeqCst), 1, "first tick");
    assert_eq!(purges.load(Ordering::SeqCst), 1);
    tokio::time::advance(MINUTE).await;
    settle().await;
    assert_eq!(expiries.load(Ordering::SeqCst), 2, "the next tick retried");
    assert_eq!(purges.load(Ordering::SeqCst), 2);
    assert!(!task.is_finished());

    stop.send(()).expect("scheduler listening");
    task.await.expect("run ends cleanly");
}

// ---- the loop --------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn overdue_pending_orders_are_expired_on_the_first_tick() {
    let store = Arc::new(Instrumented::new());
    let (manager, clock) = service(store.clone(), Settings::default());
    let overdue = OrderSpec::agent("a1").timeout(10).many(3);
    let in_time = OrderSpec::agent("a1").timeout(1000).build();
    insert(&store, &[overdue.clone(), vec![in_time.clone()]].concat()).await;
    clock.set(at(10));
    let (stop, shutdown) = shutdown_signal();
    let task = tokio::spawn(Scheduler::new(manager.clone(), every(3600)).run(shutdown));

    settle().await;

    for o in &overdue {
        assert_eq!(status_of(&manager, o).await, Some(Status::Failure));
    }
    assert_eq!(status_of(&manager, &in_time).await, Some(Status::Pending));
    stop.send(()).expect("scheduler listening");
    task.await.expect("run ends cleanly");
}

#[tokio::test(start_paused = true)]
async fn the_loop_runs_again_after_the_interval() {
    let store = Arc::new(Instrumented::new());
    let (manager, clock) = service(store.clone(), Settings::default());
    let (stop, shutdown) = shutdown_signal();
    let task = tokio::spawn(Scheduler::new(manager.clone(), every(60)).run(shutdown));
    settle().await;
    assert_eq!(store.expire_calls(), 1, "the first tick runs right away");

    let later = OrderSpec::agent("a1").timeout(10).build();
    insert(&store, std::slice::from_ref(&later)).await;
    clock.set(at(10));
    tokio::time::advance(MINUTE - Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(store.expire_calls(), 1, "no run before the interval");
    assert_eq!(status_of(&manager, &later).await, Some(Status::Pending));

    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(store.expire_calls(), 2);
    assert_eq!(status_of(&manager, &later).await, Some(Status::Failure));

    tokio::time::advance(MINUTE).await;
    settle().await;
    assert_eq!(store.expire_calls(), 3, "and again");
    stop.send(()).expect("scheduler listening");
    task.await.expect("run ends cleanly");
}

#[tokio::test(start_paused = true)]
async fn a_run_longer_than_the_interval_is_followed_by_one_late_run_then_the_schedule_shifts() {
    // Every expiry batch takes 25 s: the first run (3 full batches and a short one) lasts
    // 100 s, longer than the 60 s interval; the later runs (one empty batch) last 25 s.
    let store = Arc::new(Instrumented::slow(Duration::from_secs(25)));
    let settings = Settings {
        maintenance_batch: 10,
        ..Settings::default()
    };
    let (manager, clock) = service(store.clone(), settings);
    insert(&store, &OrderSpec::agent("a1").timeout(10).many(35)).await;
    clock.set(at(10));
    let (stop, shutdown) = shutdown_signal();
    let task = tokio::spawn(Scheduler::new(manager.clone(), every(60)).run(shutdown));

    tokio::time::sleep(Duration::from_secs(99)).await;
    assert_eq!(store.expire_calls(), 4, "the first run is still going");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        store.expire_calls(),
        5,
        "the missed tick runs once, right away"
    );
    tokio::time::sleep(Duration::from_secs(58)).await;
    assert_eq!(
        store.expire_calls(),
        5,
        "no burst of catch-up runs: the next is one interval after the late one"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(store.expire_calls(), 6);

    stop.send(()).expect("scheduler listening");
    task.await.expect("run ends cleanly");
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_run_promptly_while_it_waits_for_the_next_tick() {
    let store = Arc::new(Instrumented::new());
    let (manager, _clock) = service(store.clone(), Settings::default());
    let (stop, shutdown) = shutdown_signal();
    let task = tokio::spawn(Scheduler::new(manager, every(3600)).run(shutdown));
    settle().await;
    tokio::time::advance(Duration::from_secs(10)).await;

    stop.send(()).expect("scheduler listening");
    tokio::time::timeout(Duration::from_millis(1), task)
        .await
        .expect("run returned promptly")
        .expect("run ends cleanly");
    assert_eq!(store.expire_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_does_not_wait_for_a_long_backlog_to_drain() {
    // 50 full batches of 1 s each: draining would take 50 s.
    let store = Arc::new(Instrumented::slow(Duration::from_secs(1)));
    let settings = Settings {
        maintenance_batch: 100,
        ..Settings::default()
    };
    let (manager, clock) = service(store.clone(), settings);
    let spec = OrderSpec::agent("a1").timeout(10);
    insert(&store, &spec.many(5000)).await;
    clock.set(at(10));
    let (stop, shutdown) = shutdown_signal();
    let task = tokio::spawn(Scheduler::new(manager.clone(), every(60)).run(shutdown));
    tokio::time::sleep(Duration::from_millis(5500)).await;

    stop.send(()).expect("scheduler listening");
    tokio::time::timeout(Duration::from_millis(1), task)
        .await
        .expect("run returned at the job's next await point")
        .expect("run ends cleanly");

    let calls = store.expire_calls();
    assert!((5..=7).contains(&calls), "{calls} expiry batches");
    let counts = manager
        .progress(&spec.request)
        .await
        .expect("progress")
        .expect("known request");
    assert!(counts.pending > 0, "the backlog was left for the next run");
    tokio::time::sleep(MINUTE * 5).await;
    assert_eq!(store.expire_calls(), calls, "nothing runs after shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_disabled_scheduler_does_nothing_until_shutdown() {
    let store = Arc::new(Instrumented::new());
    let (manager, clock) = service(store.clone(), Settings::default());
    let overdue = OrderSpec::agent("a1").timeout(10).build();
    insert(&store, std::slice::from_ref(&overdue)).await;
    clock.set(at(10));
    let (stop, shutdown) = shutdown_signal();
    let settings = SchedulerSettings {
        enabled: false,
        ..SchedulerSettings::default()
    };
    let task = tokio::spawn(Scheduler::new(manager.clone(), settings).run(shutdown));

    tokio::time::sleep(MINUTE * 10).await;
    assert!(!task.is_finished(), "run waits for shutdown");
    assert_eq!(store.expire_calls(), 0);
    assert_eq!(store.purge_calls(), 0);
    assert_eq!(status_of(&manager, &overdue).await, Some(Status::Pending));

    stop.send(()).expect("scheduler listening");
    tokio::time::timeout(Duration::from_millis(1), task)
        .await
        .expect("run returned promptly")
        .expect("run ends cleanly");
}

#[tokio::test(start_paused = true)]
async fn an_interval_of_zero_given_in_code_runs_every_second_instead_of_panicking() {
    let store = Arc::new(Instrumented::new());
    let (manager, _clock) = service(store.clone(), Settings::default());
    let (stop, shutdown) = shutdown_signal();
    let task = tokio::spawn(Scheduler::new(manager, every(0)).run(shutdown));
    settle().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(store.expire_calls(), 2);
    stop.send(()).expect("scheduler listening");
    task.await.expect("run ends cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_instances_running_at_once_expire_each_order_exactly_once() {
    let store = Arc::new(Instrumented::new());
    let settings = Settings {
        maintenance_batch: 50,
        ..Settings::default()
    };
    let (manager, clock) = service(store.clone(), settings);
    let spec = OrderSpec::agent("a1").timeout(10);
    insert(&store, &spec.many(2000)).await;
    clock.set(at(10));
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let scheduler = Scheduler::new(manager.clone(), every(60));
            tokio::spawn(async move { scheduler.run_once().await })
        })
        .collect();
    let mut expired = 0;
    for run in runs {
        expired += run.await.expect("run").expired.expect("expiry");
    }
    assert_eq!(expired, 2000, "every order counted by exactly one instance");
    let counts = manager
        .progress(&spec.request)
        .await
        .expect("progress")
        .expect("known request");
    assert_eq!((counts.pending, counts.failure), (0, 2000));
}

// ---- metrics ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn every_run_counts_its_outcome_the_orders_changed_and_its_duration_per_job() {
    let store = Arc::new(Instrumented::new());
    let (manager, clock) = service(store.clone(), Settings::default());
    insert(&store, &OrderSpec::agent("a1").timeout(10).many(3)).await;
    clock.set(at(10));
    let recorder = Metrics::default();
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let scheduler = Scheduler::new(manager, every(60));

    scheduler.run_once().await;
    scheduler.run_once().await;

    for job in Job::ALL {
        let name = job.name();
        assert_eq!(
            recorder.get(metric::RUNS.name, &[("job", name), ("outcome", "ok")]),
            2.0,
            "{name}"
        );
        assert_eq!(
            recorder.get(metric::RUN_DURATION.name, &[("job", name)]),
            2.0,
            "{name}: one duration sample per run"
        );
    }
    assert_eq!(
        recorder.get(metric::ORDERS_CHANGED.name, &[("job", "expiry")]),
        3.0
    );
    assert_eq!(
        recorder.get(metric::ORDERS_CHANGED.name, &[("job", "retention")]),
        0.0
    );
}
