//! Server components and relays over HTTP (docs/delivery.md): in-process over the in-memory
//! adapter, with authentication on.

mod support;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{App, Cred, call, command, register, register_component, submit};

fn ids(answer: &Value) -> Vec<String> {
    let mut ids: Vec<String> = answer["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["command"]["order_id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_component_consumes_its_server_command_and_reports_success() {
    let app = App::with_auth();
    // Accepted before the component is registered: its orders wait for it.
    let order = submit(&app, command("server", "vulnerability-detector")).await[0].clone();
    let key = register_component(&app, "vulnerability-detector").await;
    let again = call(
        &app,
        Method::PUT,
        "/api/v1/servers/vulnerability-detector",
        &Cred::manager(),
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.json().get("key").is_none(), "the key is shown once");
    let me = Cred::agent("vulnerability-detector", &key);
    let polled = call(
        &app,
        Method::POST,
        "/api/v1/servers/vulnerability-detector/poll?wait=0",
        &me,
        None,
    )
    .await;
    assert_eq!(polled.status, StatusCode::OK, "{}", polled.text());
    assert_eq!(ids(&polled.json()), vec![order.clone()]);
    assert_eq!(polled.json()["orders"][0]["command"]["status"], "sent");
    let done = call(
        &app,
        Method::POST,
        &format!("/api/v1/orders/{order}/result"),
        &me,
        Some(&json!({"status": "success", "code": 0, "message": "content updated"})),
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    assert_eq!(done.json()["command"]["status"], "success");

    let listed = call(&app, Method::GET, "/api/v1/servers", &Cred::manager(), None).await;
    assert_eq!(
        listed.json(),
        json!({"servers": ["vulnerability-detector"], "next": null})
    );
    let rotated = call(
        &app,
        Method::POST,
        "/api/v1/servers/vulnerability-detector/key",
        &Cred::manager(),
        None,
    )
    .await;
    assert_eq!(rotated.status, StatusCode::OK);
    let old = call(
        &app,
        Method::POST,
        "/api/v1/servers/vulnerability-detector/poll?wait=0",
        &me,
        None,
    )
    .await;
    assert_eq!(
        old.status,
        StatusCode::UNAUTHORIZED,
        "the old key stops working"
    );
}

#[tokio::test]
async fn a_relay_claims_a_group_commands_orders_and_reports_them_in_one_call() {
    let app = App::with_auth();
    register(&app, "edge-1", &["edge"]).await;
    register(&app, "edge-2", &["edge"]).await;
    register(&app, "elsewhere", &["other"]).await;
    let mut group = submit(&app, command("group", "edge")).await;
    group.sort();
    let other = submit(&app, command("agent", "elsewhere")).await;
    let claimed = call(
        &app,
        Method::POST,
        "/api/v1/relay/claim",
        &Cred::relay(),
        Some(&json!({"agents": ["edge-1", "edge-2"], "limit": 100, "wait": 0})),
    )
    .await;
    assert_eq!(claimed.status, StatusCode::OK, "{}", claimed.text());
    assert_eq!(ids(&claimed.json()), group, "exactly its agents' orders");

    let reported = call(
        &app,
        Method::POST,
        "/api/v1/results",
        &Cred::relay(),
        Some(&json!({"results": [
            {"order_id": group[0], "status": "success", "code": 0},
            {"order_id": "not-a-uuid", "status": "success", "code": 0},
            {"order_id": group[1], "status": "success", "code": 0, "message": "ok"},
            {"order_id": other[0], "status": "success", "code": 0},
            {"order_id": group[0], "status": "failure", "code": 1},
            {"order_id": "0193a5e0-0000-7000-8000-000000000000", "status": "success", "code": 0},
        ]})),
    )
    .await;
    assert_eq!(reported.status, StatusCode::OK, "{}", reported.text());
    let answer = reported.json();
    let outcomes: Vec<&str> = answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["outcome"].as_str().expect("outcome"))
        .collect();
    assert_eq!(
        outcomes,
        [
            "applied",
            "invalid",
            "applied",
            "conflict",
            "conflict",
            "not_found"
        ],
        "{}",
        reported.text()
    );
    assert_eq!(reported.json()["results"][1]["order_id"], "not-a-uuid");

    let order = call(
        &app,
        Method::GET,
        &format!("/api/v1/orders/{}", group[0]),
        &Cred::manager(),
        None,
    )
    .await
    .json();
    let request = order["command"]["request_id"].as_str().expect("request");
    let progress = call(
        &app,
        Method::GET,
        &format!("/api/v1/requests/{request}"),
        &Cred::manager(),
        None,
    )
    .await;
    assert_eq!(progress.status, StatusCode::OK);
    assert_eq!(progress.json()["success"], 2, "{}", progress.text());
    assert_eq!(progress.json()["total"], 2);
}

#[tokio::test]
async fn an_agent_reporting_in_a_batch_may_report_only_its_own_orders() {
    let app = App::with_auth();
    let key = register(&app, "a1", &[]).await;
    register(&app, "a2", &[]).await;
    let mine = submit(&app, command("agent", "a1")).await[0].clone();
    let theirs = submit(&app, command("agent", "a2")).await[0].clone();
    let me = Cred::agent("a1", &key);
    call(
        &app,
        Method::POST,
        "/api/v1/agents/a1/poll?wait=0",
        &me,
        None,
    )
    .await;
    let reported = call(
        &app,
        Method::POST,
        "/api/v1/results",
        &me,
        Some(&json!({"results": [
            {"order_id": theirs, "status": "success", "code": 0},
            {"order_id": mine, "status": "success", "code": 0},
        ]})),
    )
    .await;
    assert_eq!(reported.status, StatusCode::OK, "{}", reported.text());
    assert_eq!(reported.json()["results"][0]["outcome"], "forbidden");
    assert_eq!(reported.json()["results"][1]["outcome"], "applied");
    let too_many: Vec<Value> = (0..1001)
        .map(|_| json!({"order_id": mine, "status": "success", "code": 0}))
        .collect();
    let refused = call(
        &app,
        Method::POST,
        "/api/v1/results",
        &me,
        Some(&json!({ "results": too_many })),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
}
