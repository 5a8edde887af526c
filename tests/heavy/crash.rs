//! No partial request after a crash (issue 14, item 6; docs/requests.md): the real binary is
//! killed with SIGKILL in the middle of a large group submit, on SQLite, PostgreSQL and
//! OpenSearch, and started again on the same storage.
//!
//! Both outcomes are checked, each on a submit of its own:
//! - the request the client never got an answer for is never handed out (its record is still
//!   `writing`, some of its orders are stored, and polls of their agents get nothing); a retry
//!   with the same `Idempotency-Key` completes it to exactly the full count, and only then do its
//!   orders go out;
//! - without such a retry, the scheduler aborts it after the writing grace period and removes
//!   its orders.

use std::sync::Arc;
use std::time::Duration;

use cm_domain::{Agent, AgentId, GroupName};
use cm_ports::AgentRegistry;
use serde_json::{Value, json};

use crate::ONE_AT_A_TIME;
use crate::http::Http;
use crate::instances::{Indices, fresh_database};
use crate::support::Service;

/// Agents in the group: enough that the fan-out takes well over the time it takes to see it
/// start and kill the process.
const FLEET: usize = 60_000;
const GROUP: &str = "Crash";

fn agents() -> Vec<Agent> {
    let group = GroupName::parse(GROUP, "group").expect("group");
    (0..FLEET)
        .map(|i| {
            Agent::new(
                AgentId::parse(&format!("c{i:06}"), "id").expect("id"),
                vec![group.clone()],
            )
        })
        .collect()
}

/// Registers the fleet straight through the backend's adapter: registering 60,000 agents one
/// `PUT` at a time is not what this test is about.
async fn register(registry: &dyn AgentRegistry) {
    let fleet = agents();
    for chunk in fleet.chunks(5_000) {
        registry.upsert_many(chunk).await.expect("register agents");
    }
    assert_eq!(
        registry
            .count(Some(GroupName::parse(GROUP, "group").expect("group")))
            .await
            .expect("count"),
        FLEET as u64
    );
}

fn body() -> Value {
    json!({"commands": [{
        "source": "Users/Services", "user": "crash-test",
        "target": {"type": "group", "id": GROUP},
        "action": {"name": "restart", "args": {}, "version": "v5"},
        "timeout": 3600
    }]})
}

/// The group submit with `Idempotency-Key: key`.
async fn submit(base: &str, key: &str) -> Result<crate::http::Answer, String> {
    // `Http::new` installed the TLS provider a client needs.
    let req = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| e.to_string())?
        .post(format!("{base}/api/v1/commands"))
        .header("Idempotency-Key", key)
        .json(&body());
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    Ok(crate::http::Answer {
        status,
        body,
        retry_after: None,
        took: Duration::ZERO,
    })
}

/// Starts a submit, waits until its request is `writing` with orders stored, then kills the
/// service. Answers the request id and the service's settings.
async fn kill_mid_fan_out(
    http: &Http,
    svc: Service,
    key: &'static str,
) -> (String, Vec<(String, String)>, u64) {
    let base = svc.base.clone();
    let submitting = {
        let base = base.clone();
        tokio::spawn(async move { submit(&base, key).await })
    };
    let (request, written) = loop {
        let a = http
            .get(&format!("{base}/api/v1/requests?state=writing"))
            .await
            .expect("list requests");
        assert_eq!(a.status, 200, "{}", a.body);
        let found = a.body["requests"]
            .as_array()
            .and_then(|r| r.first())
            .filter(|r| r["pending"].as_u64().unwrap_or(0) > 0)
            .map(|r| {
                (
                    r["request_id"].as_str().expect("id").to_owned(),
                    r["pending"].as_u64().expect("pending"),
                )
            });
        if let Some(found) = found {
            break found;
        }
        assert!(
            !submitting.is_finished(),
            "the submit finished before it could be interrupted: {:?}",
            submitting.await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let env = svc.kill();
    let answered = submitting.await.expect("task");
    assert!(
        answered.as_ref().map_or(true, |a| a.status != 201),
        "the submit was acknowledged before the kill: {answered:?}"
    );
    (request, env, written)
}

async fn request(http: &Http, base: &str, id: &str) -> Value {
    let a = http
        .get(&format!("{base}/api/v1/requests/{id}"))
        .await
        .expect("request");
    assert_eq!(a.status, 200, "{}", a.body);
    a.body
}

/// Polls (without waiting) the first `n` agents, which the fan-out wrote first, and a few
/// spread over the fleet: the orders they get.
async fn poll_sample(http: &Http, base: &str, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    let ids = (0..n).chain((0..FLEET).step_by(FLEET / 20));
    for i in ids {
        let a = http
            .post(
                &format!("{base}/api/v1/agents/c{i:06}/poll?wait=0&limit=10"),
                &json!({}),
            )
            .await
            .expect("poll");
        assert_eq!(a.status, 200, "{}", a.body);
        got.extend(a.body["orders"].as_array().cloned().unwrap_or_default());
    }
    got
}

async fn crash_and_recover(label: &str, env: Vec<(&'static str, String)>) {
    let http = Http::new(Duration::from_secs(120));
    let mut env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    env.push(("CM_SCHEDULER__INTERVAL_SECS".into(), "1".into()));
    // Outcome 1: the retry with the key completes the request.
    let svc = Service::start_owned(env.clone());
    let (first, env_after, written) = kill_mid_fan_out(&http, svc, "crash-retry-1").await;
    let svc = Service::start_owned(env_after);
    let r = request(&http, &svc.base, &first).await;
    assert_eq!(r["state"], json!("writing"), "{label}: {r}");
    assert!(
        r["pending"].as_u64().unwrap_or(0) >= written,
        "{label}: {r}"
    );
    assert!(
        r["pending"].as_u64().unwrap_or(0) < FLEET as u64,
        "{label}: the fan-out was cut short: {r}"
    );
    assert!(
        poll_sample(&http, &svc.base, 50).await.is_empty(),
        "{label}: an order of an unacknowledged submit was handed out"
    );
    let retried = submit(&svc.base, "crash-retry-1").await.expect("retry");
    assert_eq!(retried.status, 201, "{label}: {}", retried.body);
    assert_eq!(retried.body["requests"][0]["request_id"], json!(first));
    assert_eq!(
        retried.body["requests"][0]["order_ids"]
            .as_array()
            .map(Vec::len),
        Some(FLEET)
    );
    let r = request(&http, &svc.base, &first).await;
    assert_eq!(r["state"], json!("running"), "{label}: {r}");
    assert_eq!(
        r["total"],
        json!(FLEET),
        "{label}: exactly the full count: {r}"
    );
    assert_eq!(r["pending"], json!(FLEET), "{label}: {r}");
    let got = poll_sample(&http, &svc.base, 5).await;
    assert!(
        got.iter()
            .all(|o| o["command"]["request_id"] == json!(first))
            && !got.is_empty(),
        "{label}: the completed request goes out"
    );

    // Outcome 2: nobody retries; the scheduler aborts it after the grace period.
    let (second, mut env_after, written) = kill_mid_fan_out(&http, svc, "crash-abort-1").await;
    env_after.push(("CM_LIMITS__WRITING_GRACE_SECS".into(), "2".into()));
    let svc = Service::start_owned(env_after);
    assert!(written > 0);
    assert!(
        poll_sample(&http, &svc.base, 50)
            .await
            .iter()
            .all(|o| o["command"]["request_id"] != json!(second)),
        "{label}: an order of the unacknowledged submit was handed out"
    );
    // The scheduler runs every second; the grace period is 2 s.
    let waiting = std::time::Instant::now();
    let aborted = loop {
        let r = request(&http, &svc.base, &second).await;
        if r["state"] == json!("aborted") && r["total"] == json!(0) {
            break r;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(300),
            "{label}: the unacknowledged request was not aborted with its orders removed: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        aborted["state_reason"],
        json!("the submit never completed"),
        "{label}: {aborted}"
    );
    let orders = http
        .get(&format!(
            "{}/api/v1/requests/{second}/orders?size=10",
            svc.base
        ))
        .await
        .expect("orders");
    assert_eq!(orders.status, 200, "{}", orders.body);
    assert_eq!(
        orders.body["orders"],
        json!([]),
        "{label}: its orders are removed"
    );
    println!(
        "{label}: killed mid fan-out with {written}+ of {FLEET} orders written; retried to {FLEET}, and aborted the other"
    );
    svc.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_killed_mid_fan_out_on_sqlite_is_never_half_delivered() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crash.db");
    let settings = cm_adapter_sqlite::SqliteSettings {
        path: path.clone(),
        ..cm_adapter_sqlite::SqliteSettings::default()
    };
    let backend = cm_adapter_sqlite::SqliteBackend::open(&settings)
        .await
        .expect("open sqlite");
    register(&backend).await;
    backend.close().await;
    crash_and_recover(
        "sqlite",
        vec![
            ("CM_STORAGE__BACKEND", "sqlite".to_owned()),
            (
                "CM_STORAGE__SQLITE__PATH",
                path.to_string_lossy().into_owned(),
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_killed_mid_fan_out_on_postgres_is_never_half_delivered() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let url = fresh_database().await;
    let backend =
        cm_adapter_postgres::PostgresBackend::open(&cm_adapter_postgres::PostgresSettings {
            url: url.clone(),
            ..cm_adapter_postgres::PostgresSettings::default()
        })
        .await
        .expect("open postgres");
    register(&backend).await;
    backend.close().await;
    crash_and_recover(
        "postgres",
        vec![
            ("CM_STORAGE__BACKEND", "postgres".to_owned()),
            ("CM_STORAGE__POSTGRES__URL", url),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_killed_mid_fan_out_on_opensearch_is_never_half_delivered() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let indices = Indices::fresh();
    let backend = Arc::new(
        cm_adapter_opensearch::OpenSearchBackend::open(&indices.settings())
            .await
            .expect("open opensearch"),
    );
    register(backend.as_ref()).await;
    backend.close().await;
    crash_and_recover("opensearch", indices.env()).await;
}
