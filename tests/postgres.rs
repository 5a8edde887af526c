//! The service on PostgreSQL: the whole command loop, two instances sharing one database, and
//! rollout control of a 1,000-agent fleet.
//!
//! Needs a server: `cargo xtask test` starts one; `CM_TEST_POSTGRES_URL` (or `DATABASE_URL`)
//! points at one you run. Each test creates its own database.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::{Connection, Executor};
use support::consumers::components_and_relays;
use support::rollout::staggered_rollout_cancel_and_retry;
use support::scenario::whole_command_loop;
use support::{Client, Service, until_polls_open};

fn server_url() -> String {
    ["CM_TEST_POSTGRES_URL", "DATABASE_URL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .expect(
            "these tests need PostgreSQL: run `cargo xtask test`, or start one with \
             `cargo xtask postgres` and set CM_TEST_POSTGRES_URL",
        )
}

/// A URL of a new, empty database on the test server.
async fn fresh_database() -> String {
    let base = server_url();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let name = format!("cm_e2e_{}_{nanos}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("connect to the test server");
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create database");
    conn.close().await.expect("close");
    let (server, _db) = base.rsplit_once('/').expect("URL with a database");
    format!("{server}/{name}")
}

/// A TLS failure stops start-up with its cause printed (`serve` and `migrate`); the adapter's
/// TLS tests (`crates/adapter-postgres/tests/tls.rs`) run every cause against a server with TLS.
#[test]
fn sslmode_require_against_a_server_without_tls_stops_start_up_saying_so() {
    let url = format!("{}?sslmode=require", server_url());
    for command in ["serve", "migrate"] {
        let out = std::process::Command::new(support::binary())
            .arg(command)
            .env_remove("RUST_LOG")
            .env("CM_HTTP__LISTEN", "127.0.0.1:0")
            .env("CM_STORAGE__BACKEND", "postgres")
            .env("CM_STORAGE__POSTGRES__URL", &url)
            .output()
            .expect("run command-manager");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        assert!(
            err.contains("does not support TLS") && err.contains("sslmode=require"),
            "{command}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_command_loop_on_postgres_survives_a_restart() {
    let url = fresh_database().await;
    whole_command_loop(
        &[
            ("CM_STORAGE__BACKEND", "postgres"),
            ("CM_STORAGE__POSTGRES__URL", &url),
        ],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_and_relays_consume_their_orders_on_postgres() {
    let url = fresh_database().await;
    components_and_relays(&[
        ("CM_STORAGE__BACKEND", "postgres"),
        ("CM_STORAGE__POSTGRES__URL", &url),
    ])
    .await;
}

/// The sum of `cm_order_transitions_total{to="failure",via="expired"}` in a metrics page.
fn expired_count(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("cm_order_transitions_total{")
                && l.contains("to=\"failure\"")
                && l.contains("via=\"expired\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_deliver_across_instances_and_expire_each_order_once() {
    let url = fresh_database().await;
    let env = [
        ("CM_STORAGE__BACKEND", "postgres"),
        ("CM_STORAGE__POSTGRES__URL", url.as_str()),
        ("CM_SCHEDULER__INTERVAL_SECS", "1"),
    ];
    let a = Service::start(&env);
    let b = Service::start(&env);
    let c = Client::default();

    // An agent long-polls instance A; the command is submitted to instance B.
    for id in ["a1", "x1", "x2", "x3", "x4", "x5"] {
        let (status, body) = c
            .put(
                &a.url(&format!("/api/v1/agents/{id}")),
                json!({"groups": ["Fleet"]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let poll = {
        let c = c.clone();
        let url = a.url("/api/v1/agents/a1/poll?wait=20");
        tokio::spawn(async move { c.post(&url, json!(null)).await })
    };
    until_polls_open(&c, &a, 1).await;
    let submitted = Instant::now();
    let (status, body) = c
        .post(
            &b.url("/api/v1/commands"),
            json!({"commands": [{
                "source": "Users/Services", "target": {"type": "agent", "id": "a1"},
                "action": {"name": "restart", "args": {}, "version": "v5"}, "timeout": 300
            }]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, answer) = poll.await.expect("poller");
    let latency = submitted.elapsed();
    assert_eq!(status, 200, "{answer}");
    // That B's notification (not A's re-check) woke the poll is the adapter's test
    // (`a_long_poll_on_one_instance_returns_when_another_instance_submits`); here, that the
    // order crossed instances through the binaries.
    assert_eq!(
        answer["orders"][0]["command"]["order_id"], body["requests"][0]["order_ids"][0],
        "the poll on A received the order submitted to B (after {latency:?})"
    );

    // 50 orders nobody polls, through B; both schedulers run every second.
    let commands: Vec<_> = ["x1", "x2", "x3", "x4", "x5"]
        .iter()
        .flat_map(|agent| {
            (0..10).map(move |i| {
                json!({
                    "source": "Engine", "target": {"type": "agent", "id": agent},
                    "action": {"name": format!("job-{i}"), "args": {}, "version": "v1"}, "timeout": 1
                })
            })
        })
        .collect();
    let (status, body) = c
        .post(&b.url("/api/v1/commands"), json!({ "commands": commands }))
        .await;
    assert_eq!(status, 201, "{body}");
    let requests: Vec<String> = body["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .map(|r| r["request_id"].as_str().expect("id").to_owned())
        .collect();
    loop {
        let mut expired = 0;
        for r in &requests {
            let (_, p) = c.get(&a.url(&format!("/api/v1/requests/{r}"))).await;
            expired += p["failure"].as_u64().unwrap_or(0);
        }
        if expired == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, metrics_a) = c.get(&a.url("/metrics")).await;
    let (_, metrics_b) = c.get(&b.url("/metrics")).await;
    let (ea, eb) = (
        expired_count(metrics_a.as_str().unwrap_or_default()),
        expired_count(metrics_b.as_str().unwrap_or_default()),
    );
    assert_eq!(
        ea + eb,
        50,
        "each overdue order is expired exactly once (A: {ea}, B: {eb})"
    );
    for text in [&metrics_a, &metrics_b] {
        let text = text.as_str().unwrap_or_default();
        assert!(
            text.lines()
                .any(|l| l.starts_with("cm_store_operation_seconds")
                    && l.contains("backend=\"postgres\"")),
            "storage operations are timed per backend: {text}"
        );
    }
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staggered_rollout_to_1000_agents_on_postgres_can_be_cancelled_and_its_failures_retried()
{
    let url = fresh_database().await;
    let timings = staggered_rollout_cancel_and_retry(&[
        ("CM_STORAGE__BACKEND", "postgres"),
        ("CM_STORAGE__POSTGRES__URL", &url),
    ])
    .await;
    println!("rollout on postgres: {timings:?}");
}
