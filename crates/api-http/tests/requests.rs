//! Requests as records over HTTP (docs/requests.md, docs/rollout.md): the listing, one request,
//! rate control in a submit, pause and resume, the results breakdown and the dry run; in-process
//! over the in-memory adapter, with authentication on.

mod support;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{App, Cred, call, command, poll, register, submit};

async fn manager(app: &App, method: Method, uri: &str, body: Option<&Value>) -> support::Answer {
    call(app, method, uri, &Cred::manager(), body).await
}

async fn request_of(app: &App, order_id: &str) -> String {
    let a = manager(
        app,
        Method::GET,
        &format!("/api/v1/orders/{order_id}"),
        None,
    )
    .await;
    a.json()["command"]["request_id"]
        .as_str()
        .expect("request id")
        .to_owned()
}

#[tokio::test]
async fn requests_are_listed_newest_first_with_their_counts_and_paged_without_loss() {
    let app = App::with_auth();
    register(&app, "a1", &["g"]).await;
    let mut submitted = Vec::new();
    for _ in 0..7 {
        let ids = submit(&app, command("agent", "a1")).await;
        submitted.push(request_of(&app, &ids[0]).await);
    }
    let mut seen = Vec::new();
    let mut uri = "/api/v1/requests?size=3&target_id=a1".to_owned();
    loop {
        let page = manager(&app, Method::GET, &uri, None).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        let page = page.json();
        for r in page["requests"].as_array().expect("requests") {
            assert_eq!(r["total"], json!(1));
            assert_eq!(r["pending"], json!(1));
            assert_eq!(r["state"], json!("running"));
            seen.push(r["request_id"].as_str().expect("id").to_owned());
        }
        match page["next"].as_str() {
            Some(next) => uri = format!("/api/v1/requests?size=3&target_id=a1&after={next}"),
            None => break,
        }
    }
    submitted.reverse();
    assert_eq!(seen, submitted, "newest first, each once");
    let filtered = manager(&app, Method::GET, "/api/v1/requests?state=paused", None).await;
    assert_eq!(filtered.json()["requests"], json!([]));
    let bad = manager(&app, Method::GET, "/api/v1/requests?state=done", None).await;
    assert_eq!(bad.error(StatusCode::BAD_REQUEST)["field"], json!("state"));
    let bad = manager(&app, Method::GET, "/api/v1/requests?after=nope", None).await;
    assert_eq!(bad.error(StatusCode::BAD_REQUEST)["field"], json!("after"));
}

#[tokio::test]
async fn rate_control_is_recorded_and_holds_orders_beyond_the_cap() {
    let app = App::with_auth();
    let mut keys = Vec::new();
    for i in 0..5 {
        keys.push(register(&app, &format!("r{i}"), &["rc"]).await);
    }
    let mut c = command("group", "rc");
    c["rate_control"] = json!({"max_concurrency": 2, "max_errors": "20%"});
    let ids = submit(&app, c).await;
    let request = request_of(&app, &ids[0]).await;
    let r = manager(
        &app,
        Method::GET,
        &format!("/api/v1/requests/{request}"),
        None,
    )
    .await
    .json();
    assert_eq!(
        r["rate_control"],
        json!({"max_concurrency": 2, "max_errors": "20%"})
    );
    let mut delivered = 0;
    for (i, key) in keys.iter().enumerate() {
        let id = format!("r{i}");
        delivered += poll(&app, &id, &Cred::agent(&id, key)).await.json()["orders"]
            .as_array()
            .expect("orders")
            .len();
    }
    assert_eq!(delivered, 2, "two out at once, the rest held");
    for (bad, field) in [
        (json!({"max_concurrency": -1}), "max_concurrency"),
        (json!({"max_errors": "101%"}), "max_errors"),
        (json!({"max_errors": "5 %"}), "max_errors"),
        (json!({"max_concurrency": true}), "max_concurrency"),
        (json!({"max_parallel": 3}), "max_parallel"),
    ] {
        let mut c = command("group", "rc");
        c["rate_control"] = bad;
        let a = manager(
            &app,
            Method::POST,
            "/api/v1/commands",
            Some(&json!({ "commands": [c] })),
        )
        .await;
        assert_eq!(
            a.error(StatusCode::BAD_REQUEST)["field"],
            json!(format!("commands[0].rate_control.{field}"))
        );
    }
}

#[tokio::test]
async fn pause_and_resume_answer_the_request_and_a_finished_one_is_409() {
    let app = App::with_auth();
    let key = register(&app, "p1", &["pg"]).await;
    register(&app, "p2", &["pg"]).await;
    let ids = submit(&app, command("group", "pg")).await;
    let request = request_of(&app, &ids[0]).await;
    let paused = manager(
        &app,
        Method::POST,
        &format!("/api/v1/requests/{request}/pause"),
        None,
    )
    .await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text());
    assert_eq!(paused.json()["state"], json!("paused"));
    let got = poll(&app, "p1", &Cred::agent("p1", &key)).await.json();
    assert_eq!(got["orders"], json!([]), "nothing goes out while paused");
    let resumed = manager(
        &app,
        Method::POST,
        &format!("/api/v1/requests/{request}/resume"),
        None,
    )
    .await;
    assert_eq!(resumed.json()["state"], json!("running"));
    let got = poll(&app, "p1", &Cred::agent("p1", &key)).await.json();
    assert_eq!(got["orders"].as_array().expect("orders").len(), 1);
    manager(
        &app,
        Method::POST,
        &format!("/api/v1/requests/{request}/cancel"),
        None,
    )
    .await;
    for action in ["pause", "resume"] {
        let a = manager(
            &app,
            Method::POST,
            &format!("/api/v1/requests/{request}/{action}"),
            None,
        )
        .await;
        assert_eq!(a.error(StatusCode::CONFLICT)["code"], json!("conflict"));
    }
    let unknown = "01a22da1-877f-7593-a0c9-c9d39d595842";
    manager(
        &app,
        Method::POST,
        &format!("/api/v1/requests/{unknown}/pause"),
        None,
    )
    .await
    .error(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_results_breakdown_groups_finished_orders_largest_first() {
    let app = App::with_auth();
    let mut keys = Vec::new();
    for i in 0..4 {
        keys.push(register(&app, &format!("w{i}"), &["wg"]).await);
    }
    let ids = submit(&app, command("group", "wg")).await;
    let request = request_of(&app, &ids[0]).await;
    for (i, key) in keys.iter().enumerate() {
        let id = format!("w{i}");
        let got = poll(&app, &id, &Cred::agent(&id, key)).await.json();
        let order = got["orders"][0]["command"]["order_id"]
            .as_str()
            .expect("order")
            .to_owned();
        let report = if i == 0 {
            json!({"status": "success", "code": 0, "message": "ok"})
        } else {
            json!({"status": "failure", "code": 7, "message": "disk full"})
        };
        let a = call(
            &app,
            Method::POST,
            &format!("/api/v1/orders/{order}/result"),
            &Cred::agent(&id, key),
            Some(&report),
        )
        .await;
        assert!(a.status.is_success(), "{}", a.text());
    }
    let a = manager(
        &app,
        Method::GET,
        &format!("/api/v1/requests/{request}/results"),
        None,
    )
    .await;
    assert_eq!(
        a.json(),
        json!({"groups": [
            {"status": "failure", "code": 7, "message": "disk full", "count": 3,
             "sample": ["w1", "w2", "w3"]},
            {"status": "success", "code": 0, "message": "ok", "count": 1, "sample": ["w0"]},
        ]})
    );
    let r = manager(
        &app,
        Method::GET,
        &format!("/api/v1/requests/{request}"),
        None,
    )
    .await
    .json();
    assert_eq!(r["state"], json!("completed"));
    assert_eq!(r["errors"], json!(3));
    assert!(r["finished_at"].is_string());
}

#[tokio::test]
async fn a_dry_run_answers_the_plans_and_writes_nothing() {
    let app = App::with_auth();
    for i in 0..12 {
        register(&app, &format!("d{i:02}"), &["dg"]).await;
    }
    let body = json!({"commands": [command("group", "dg"), command("server", "indexer")]});
    let a = manager(
        &app,
        Method::POST,
        "/api/v1/commands?dry_run=true",
        Some(&body),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let sample: Vec<String> = (0..10).map(|i| format!("d{i:02}")).collect();
    assert_eq!(
        a.json(),
        json!({"plans": [
            {"targets": 12, "sample": sample},
            {"targets": 1, "sample": ["indexer"]},
        ]})
    );
    let listed = manager(&app, Method::GET, "/api/v1/requests", None).await;
    assert_eq!(listed.json()["requests"], json!([]), "no record written");
    let orders = manager(&app, Method::GET, "/api/v1/orders", None).await;
    assert_eq!(orders.json()["orders"], json!([]), "no order written");
    // The same 4xx as the submit would give.
    let empty = json!({"commands": [command("group", "nobody")]});
    manager(
        &app,
        Method::POST,
        "/api/v1/commands?dry_run=true",
        Some(&empty),
    )
    .await
    .error(StatusCode::UNPROCESSABLE_ENTITY);
    let a = manager(
        &app,
        Method::POST,
        "/api/v1/commands?dry_run=maybe",
        Some(&body),
    )
    .await;
    assert_eq!(a.error(StatusCode::BAD_REQUEST)["field"], json!("dry_run"));
}
