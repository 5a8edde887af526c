//! `/metrics` of the real binary: every metric carries its HELP text, and storage operations are
//! timed per operation and backend by the instrumented stores.

mod support;

use serde_json::json;
use support::{Client, Service};

/// The names of the `# TYPE` lines of a Prometheus text page that have no `# HELP` line.
fn undescribed(text: &str) -> Vec<&str> {
    let described = |name: &str| {
        text.lines().any(|l| {
            l.strip_prefix("# HELP ")
                .and_then(|l| l.split_once(' '))
                .is_some_and(|(n, _)| n == name)
        })
    };
    text.lines()
        .filter_map(|l| {
            l.strip_prefix("# TYPE ")?
                .split_once(' ')
                .map(|(name, _)| name)
        })
        .filter(|name| !described(name))
        .collect()
}

/// Whether `cm_store_operation_seconds` has a series with all of `labels`.
fn store_timed(text: &str, labels: &[(&str, &str)]) -> bool {
    text.lines()
        .filter(|l| l.starts_with("cm_store_operation_seconds"))
        .any(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
}

/// A submit and a poll through the service, then its `/metrics` page once the scheduler has run.
async fn metrics_after_a_submit_and_a_poll(svc: &Service) -> String {
    let c = Client::default();
    let (status, body) = c
        .put(
            &svc.url("/api/v1/agents/m1"),
            json!({"groups": ["Metrics"]}),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let (status, body) = c
        .post(
            &svc.url("/api/v1/commands"),
            json!({"commands": [{
                "source": "Users/Services", "user": "metrics-e2e",
                "target": {"type": "agent", "id": "m1"},
                "action": {"name": "restart", "args": {}, "version": "v5"},
                "timeout": 300
            }]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = c
        .post(
            &svc.url("/api/v1/agents/m1/poll?wait=0&limit=10"),
            json!(null),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["orders"].as_array().map(Vec::len), Some(1), "{body}");
    // The scheduler's first run starts with the service; wait for it to be counted too.
    loop {
        let (status, text) = c.get(&svc.url("/metrics")).await;
        assert_eq!(status, 200, "{text}");
        let text = text.as_str().expect("a text page").to_owned();
        if text.contains("cm_scheduler_runs_total{") {
            return text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_has_help_and_storage_operations_are_timed_per_backend_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("orders.db");
    let svc = Service::start(&[
        ("CM_STORAGE__BACKEND", "sqlite"),
        (
            "CM_STORAGE__SQLITE__PATH",
            path.to_str().expect("utf-8 path"),
        ),
    ]);

    let text = metrics_after_a_submit_and_a_poll(&svc).await;

    assert!(text.contains("# TYPE "), "{text}");
    assert_eq!(undescribed(&text), Vec::<&str>::new(), "{text}");
    for name in [
        "cm_http_requests_total",
        "cm_orders_created_total",
        "cm_order_transitions_total",
        "cm_store_operation_seconds",
        "cm_scheduler_runs_total",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}: {text}");
    }
    // A one-agent submit is written whole (its record with its order, group-committed).
    for op in ["request_write_whole", "claim", "agent_upsert"] {
        assert!(
            store_timed(
                &text,
                &[("op", op), ("backend", "sqlite"), ("outcome", "ok")]
            ),
            "{op}: {text}"
        );
    }
    svc.stop();
}
