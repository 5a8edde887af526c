//! The HTTP API in-process (`tower::ServiceExt::oneshot`) over the in-memory adapter, plus one
//! test of `serve` over a real socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use chrono::{DateTime, Utc};
use cm_adapter_memory::{MemoryAgents, MemoryOrders};
use cm_api_http::{AppState, AuthSettings, HttpSettings, install_metrics_recorder, router, serve};
use cm_domain::{AgentId, DeliveryPolicy, Order, OrderId, RequestId};
use cm_ports::testkit::{LONG_WAIT, MockOrderStore, long_wait_settings, until_poll_waits};
use cm_ports::{
    Batch, CommandManager, LocalNotifier, OrderCursor, OrderFilter, OrderPageRequest, OrderStore,
    Page, Ports, ReplaceError, RetentionMode, Settings, StatusCounts, StoreError, SystemClock,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------------
// Harness

struct App {
    router: Router,
    state: AppState,
    /// The notifier behind the API, to wait until a long-poll is parked.
    notifier: Arc<LocalNotifier>,
}

fn manager_over(
    orders: Arc<dyn OrderStore>,
    notifier: Arc<LocalNotifier>,
    settings: Settings,
) -> CommandManager {
    CommandManager::new(
        Ports {
            orders,
            agents: Arc::new(MemoryAgents::new()),
            components: Arc::new(cm_adapter_memory::MemoryComponents::new()),
            requests: Arc::new(cm_adapter_memory::MemoryRequests::default()),
            notifier,
            clock: Arc::new(SystemClock),
        },
        settings,
    )
}

fn app_over(orders: Arc<dyn OrderStore>, settings: Settings, http: HttpSettings) -> App {
    let metrics = install_metrics_recorder().expect("metrics recorder");
    let notifier = Arc::new(LocalNotifier::new());
    let state = AppState::new(
        manager_over(orders, notifier.clone(), settings),
        http,
        AuthSettings::default(),
        Some(metrics),
    );
    App {
        router: router(state.clone()),
        state,
        notifier,
    }
}

/// Waits until the poll `task` of `agent` is parked in the service.
async fn until_parked<T>(app: &App, agent: &str, task: &tokio::task::JoinHandle<T>) {
    let agent = AgentId::parse(agent, "agent").expect("agent id");
    until_poll_waits(app.notifier.as_ref(), &agent, task).await;
}

fn app() -> App {
    app_with(Settings::default())
}

fn app_with(settings: Settings) -> App {
    app_over(
        Arc::new(MemoryOrders::new()),
        settings,
        HttpSettings::default(),
    )
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} answered non-JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an error answer with `status` and returns its `error` object.
    fn error(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        let body = self.json();
        let error = body["error"].clone();
        assert!(error["code"].is_string(), "{body}");
        assert!(error["message"].is_string(), "{body}");
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
        error
    }

    /// Asserts a 400 naming `field`, in the field and in the message.
    fn names_field(&self, field: &str) {
        let error = self.error(StatusCode::BAD_REQUEST);
        assert_eq!(error["field"], json!(field), "{error}");
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{error}"
        );
    }
}

async fn send(app: &App, req: Request<Body>) -> Answer {
    let res = app.router.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .expect("body");
    Answer {
        status,
        headers,
        body,
    }
}

fn request(method: Method, uri: &str, body: Option<&Value>) -> Request<Body> {
    let builder = Request::builder().method(method).uri(uri);
    match body {
        Some(b) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => builder.body(Body::empty()),
    }
    .expect("request")
}

fn raw(method: Method, uri: &str, content_type: Option<&str>, body: Vec<u8>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    b.body(Body::from(body)).expect("request")
}

async fn get(app: &App, uri: &str) -> Answer {
    send(app, request(Method::GET, uri, None)).await
}

async fn post(app: &App, uri: &str, body: &Value) -> Answer {
    send(app, request(Method::POST, uri, Some(body))).await
}

async fn post_empty(app: &App, uri: &str) -> Answer {
    send(app, request(Method::POST, uri, None)).await
}

async fn put(app: &App, uri: &str, body: &Value) -> Answer {
    send(app, request(Method::PUT, uri, Some(body))).await
}

async fn delete(app: &App, uri: &str) -> Answer {
    send(app, request(Method::DELETE, uri, None)).await
}

async fn register(app: &App, id: &str, groups: &[&str]) {
    let a = put(
        app,
        &format!("/api/v1/agents/{id}"),
        &json!({ "groups": groups }),
    )
    .await;
    assert!(a.status.is_success(), "{}", a.text());
}

fn command(kind: &str, id: &str) -> Value {
    json!({
        "source": "Users/Services",
        "user": "admin",
        "target": {"type": kind, "id": id},
        "action": {"name": "restart", "args": {}, "version": "v5"},
        "timeout": 100
    })
}

fn body_of(commands: &[Value]) -> Value {
    json!({ "commands": commands })
}

/// Submits and returns the order ids of each command.
async fn submit(app: &App, commands: &[Value]) -> Vec<Vec<String>> {
    let a = post(app, "/api/v1/commands", &body_of(commands)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    a.json()["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["order_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_str().unwrap().to_owned())
                .collect()
        })
        .collect()
}

async fn order(app: &App, id: &str) -> Value {
    let a = get(app, &format!("/api/v1/orders/{id}")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    a.json()
}

async fn poll(app: &App, agent: &str, query: &str) -> Answer {
    post_empty(app, &format!("/api/v1/agents/{agent}/poll?{query}")).await
}

fn ids_of(orders: &Value) -> Vec<String> {
    orders
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["command"]["order_id"].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Submitting

#[tokio::test]
async fn submitting_an_agent_command_answers_201_with_its_request_and_order_ids() {
    let app = app();
    register(&app, "a1", &["Test"]).await;
    let a = post(
        &app,
        "/api/v1/commands",
        &body_of(&[command("agent", "a1")]),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    let body = a.json();
    let requests = body["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1);
    let request_id = requests[0]["request_id"].as_str().unwrap();
    let order_ids = requests[0]["order_ids"].as_array().unwrap();
    assert_eq!(order_ids.len(), 1);
    let o = order(&app, order_ids[0].as_str().unwrap()).await;
    assert_eq!(o["command"]["request_id"], json!(request_id));
    assert_eq!(o["command"]["status"], json!("pending"));
    assert_eq!(o["agent"], json!({"id": "a1", "groups": ["Test"]}));
    assert_eq!(o["command"]["target"], json!({"type": "agent", "id": "a1"}));
    assert!(o["@timestamp"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn a_group_command_expands_to_one_order_per_member_agent() {
    let app = app();
    register(&app, "a1", &["web"]).await;
    register(&app, "a2", &["web", "db"]).await;
    register(&app, "a3", &["db"]).await;
    let ids = submit(&app, &[command("group", "web")]).await;
    assert_eq!(ids[0].len(), 2);
    let mut agents = Vec::new();
    for id in &ids[0] {
        let o = order(&app, id).await;
        assert_eq!(o["command"]["target"]["type"], json!("agent"));
        agents.push(o["agent"]["id"].as_str().unwrap().to_owned());
    }
    agents.sort();
    assert_eq!(agents, ["a1", "a2"]);
}

#[tokio::test]
async fn a_server_command_creates_one_order_without_an_agent_part() {
    let app = app();
    let ids = submit(&app, &[command("server", "indexer-connector")]).await;
    let o = order(&app, &ids[0][0]).await;
    assert!(o.get("agent").is_none(), "{o}");
    assert_eq!(o["command"]["target"]["type"], json!("server"));
}

#[tokio::test]
async fn the_wazuh_route_answers_exactly_the_plugins_shape_for_its_own_examples() {
    let app = app();
    register(&app, "d5b250c4-dfa1-4d94-827f-9f99210dbe6c", &["g0"]).await;
    let agent = "d5b250c4-dfa1-4d94-827f-9f99210dbe6c";
    let examples = [
        json!({"source": "Users/Services", "user": "Management API",
               "target": {"id": agent, "type": "agent"},
               "action": {"name": "restart", "args": {}, "version": "5.0.0"},
               "timeout": 100}),
        json!({"source": "Users/Services", "user": "Management API",
               "target": {"id": agent, "type": "agent"},
               "action": {"name": "set-group", "args": {"groups": ["g1", "g2"]}, "version": "5.0.0"},
               "timeout": 100}),
        json!({"source": "Content manager",
               "target": {"id": "vulnerability-detector", "type": "server"},
               "action": {"name": "update",
                          "args": {"index": "wazuh-states-vulnerabilities", "offset": "1234"},
                          "version": "5.0.0"},
               "timeout": 100}),
        json!({"source": "Engine",
               "target": {"id": "indexer-connector", "type": "server"},
               "action": {"name": "refresh", "args": {"index": ["wazuh-states-inventory"]}, "version": "5.0.0"},
               "timeout": 100}),
    ];
    for example in &examples {
        let a = post(
            &app,
            "/_plugins/_command_manager/commands",
            &body_of(std::slice::from_ref(example)),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        let body = a.json();
        let id = body["orders"][0]["_id"]
            .as_str()
            .expect("an _id")
            .to_owned();
        assert_eq!(
            body,
            json!({"_index": "wazuh-commands", "orders": [{"_id": id}], "result": "OK"})
        );
        let o = order(&app, &id).await;
        assert_eq!(o["command"]["action"], example["action"]);
        assert_eq!(o["command"]["source"], example["source"]);
    }
}

#[tokio::test]
async fn the_wazuh_route_lists_every_order_of_every_command() {
    let app = app();
    register(&app, "a1", &["g"]).await;
    register(&app, "a2", &["g"]).await;
    let a = post(
        &app,
        "/_plugins/_command_manager/commands",
        &body_of(&[command("group", "g"), command("server", "s1")]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let orders = a.json()["orders"].as_array().unwrap().clone();
    assert_eq!(orders.len(), 3);
    for o in orders {
        assert_eq!(o.as_object().unwrap().len(), 1);
        order(&app, o["_id"].as_str().unwrap()).await;
    }
}

#[tokio::test]
async fn malformed_json_is_a_400_naming_the_body() {
    let app = app();
    let a = send(
        &app,
        raw(
            Method::POST,
            "/api/v1/commands",
            Some("application/json"),
            b"{\"commands\": [".to_vec(),
        ),
    )
    .await;
    let error = a.error(StatusCode::BAD_REQUEST);
    assert_eq!(error["field"], json!("body"));
    assert_eq!(error["code"], json!("malformed_json"));
}

#[tokio::test]
async fn an_unknown_target_type_is_a_400_naming_the_field() {
    let app = app();
    let a = post(
        &app,
        "/api/v1/commands",
        &body_of(&[command("server", "s"), command("cluster", "c1")]),
    )
    .await;
    a.names_field("commands[1].target.type");
    assert_eq!(a.json()["error"]["code"], json!("invalid_field"));
}

#[tokio::test]
async fn a_missing_field_is_a_400_naming_it() {
    let app = app();
    for (path, field) in [
        ("source", "commands[0].source"),
        ("timeout", "commands[0].timeout"),
        ("target", "commands[0].target"),
    ] {
        let mut c = command("server", "s");
        c.as_object_mut().unwrap().remove(path);
        post(&app, "/api/v1/commands", &body_of(&[c]))
            .await
            .names_field(field);
    }
    let mut c = command("server", "s");
    c["action"].as_object_mut().unwrap().remove("version");
    post(&app, "/api/v1/commands", &body_of(&[c]))
        .await
        .names_field("commands[0].action.version");
    post(&app, "/api/v1/commands", &json!({}))
        .await
        .names_field("commands");
}

#[tokio::test]
async fn a_timeout_of_zero_or_of_40000_is_a_400_naming_the_timeout() {
    let app = app();
    for bad in [json!(0), json!(40000)] {
        let mut c = command("server", "s");
        c["timeout"] = bad;
        post(
            &app,
            "/api/v1/commands",
            &body_of(&[command("server", "s"), c]),
        )
        .await
        .names_field("commands[1].timeout");
    }
}

#[tokio::test]
async fn a_wrong_json_type_is_a_400_naming_the_field() {
    let app = app();
    let mut c = command("server", "s");
    c["timeout"] = json!("100");
    let a = post(&app, "/api/v1/commands", &body_of(&[c])).await;
    a.names_field("commands[0].timeout");
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("must be an integer")
    );
}

#[tokio::test]
async fn an_unknown_body_field_is_a_400_naming_it() {
    let app = app();
    let mut c = command("server", "s");
    c["priority"] = json!(1);
    post(&app, "/api/v1/commands", &body_of(&[c]))
        .await
        .names_field("commands[0].priority");
}

#[tokio::test]
async fn an_unknown_agent_is_a_422_naming_the_command_and_nothing_is_written() {
    let app = app();
    register(&app, "a1", &["g"]).await;
    let a = post(
        &app,
        "/api/v1/commands",
        &body_of(&[command("agent", "a1"), command("agent", "ghost")]),
    )
    .await;
    let error = a.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["code"], json!("unprocessable"));
    assert_eq!(error["field"], json!("commands[1]"));
    assert!(error["message"].as_str().unwrap().contains("ghost"));
    let listed = get(&app, "/api/v1/orders").await.json();
    assert_eq!(listed["orders"], json!([]));
}

#[tokio::test]
async fn an_empty_group_is_a_422_naming_the_command() {
    let app = app();
    let error = post(
        &app,
        "/api/v1/commands",
        &body_of(&[command("group", "none")]),
    )
    .await
    .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["field"], json!("commands[0]"));
}

#[tokio::test]
async fn more_commands_than_the_limit_is_a_400_naming_commands() {
    let app = app_with(Settings {
        max_commands: 2,
        ..Settings::default()
    });
    let c = command("server", "s");
    post(
        &app,
        "/api/v1/commands",
        &body_of(&[c.clone(), c.clone(), c]),
    )
    .await
    .names_field("commands");
    post(&app, "/api/v1/commands", &body_of(&[]))
        .await
        .names_field("commands");
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_with_our_error_body() {
    let app = app_over(
        Arc::new(MemoryOrders::new()),
        Settings::default(),
        HttpSettings {
            max_body_bytes: 1024,
            ..HttpSettings::default()
        },
    );
    let mut c = command("server", "s");
    c["action"]["args"] = json!({"blob": "x".repeat(4096)});
    let error = post(&app, "/api/v1/commands", &body_of(&[c]))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error["code"], json!("payload_too_large"));
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_is_a_415() {
    let app = app();
    let body = body_of(&[command("server", "s")]).to_string().into_bytes();
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let error = send(
            &app,
            raw(Method::POST, "/api/v1/commands", ct, body.clone()),
        )
        .await
        .error(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(error["code"], json!("unsupported_media_type"));
    }
    let a = send(
        &app,
        raw(
            Method::POST,
            "/api/v1/commands",
            Some("application/json; charset=utf-8"),
            body,
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
}

#[tokio::test]
async fn retrying_a_submit_with_the_same_idempotency_key_creates_no_second_set_of_orders() {
    let app = app();
    register(&app, "a1", &["g"]).await;
    let body = body_of(&[command("agent", "a1")]);
    let keyed = |key: &str| {
        Request::builder()
            .method(Method::POST)
            .uri("/api/v1/commands")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let first = send(&app, keyed("retry-1")).await;
    let second = send(&app, keyed("retry-1")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.json(), second.json());
    let other = send(&app, keyed("retry-2")).await;
    assert_ne!(first.json(), other.json());
    let listed = get(&app, "/api/v1/orders").await.json();
    assert_eq!(listed["orders"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn an_invalid_idempotency_key_is_a_400_naming_the_header() {
    let app = app();
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/commands")
        .header(header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", "has a space")
        .body(Body::from(body_of(&[command("server", "s")]).to_string()))
        .unwrap();
    send(&app, req).await.names_field("Idempotency-Key");
}

// ---------------------------------------------------------------------------------------------
// Orders and requests

#[tokio::test]
async fn listing_orders_filters_by_every_parameter_and_pages_with_the_cursor() {
    let app = app();
    register(&app, "a1", &["g"]).await;
    register(&app, "a2", &["g"]).await;
    let ids = submit(
        &app,
        &[
            command("group", "g"),
            command("server", "s1"),
            command("agent", "a1"),
        ],
    )
    .await;
    let all = get(&app, "/api/v1/orders").await.json();
    assert_eq!(all["orders"].as_array().unwrap().len(), 4);
    assert_eq!(all["next"], Value::Null);

    let by_agent = get(&app, "/api/v1/orders?agent_id=a1").await.json();
    assert_eq!(by_agent["orders"].as_array().unwrap().len(), 2);
    let by_type = get(&app, "/api/v1/orders?target_type=server").await.json();
    assert_eq!(ids_of(&by_type["orders"]), ids[1]);
    let by_target = get(&app, "/api/v1/orders?target_id=s1&action=restart")
        .await
        .json();
    assert_eq!(ids_of(&by_target["orders"]), ids[1]);
    let request_id = order(&app, &ids[2][0]).await["command"]["request_id"].clone();
    let by_request = get(
        &app,
        &format!("/api/v1/orders?request_id={}", request_id.as_str().unwrap()),
    )
    .await
    .json();
    assert_eq!(ids_of(&by_request["orders"]), ids[2]);
    let none = get(&app, "/api/v1/orders?status=success&action=restart")
        .await
        .json();
    assert_eq!(none["orders"], json!([]));
    let pending = get(&app, "/api/v1/orders?status=pending").await.json();
    assert_eq!(pending["orders"].as_array().unwrap().len(), 4);
    let future = get(&app, "/api/v1/orders?since=2999-01-01T00:00:00Z")
        .await
        .json();
    assert_eq!(future["orders"], json!([]));
    let past = get(
        &app,
        "/api/v1/orders?since=2000-01-01T00:00:00%2B02:00&until=2999-01-01T00:00:00Z",
    )
    .await
    .json();
    assert_eq!(past["orders"].as_array().unwrap().len(), 4);

    let mut seen = Vec::new();
    let mut uri = "/api/v1/orders?size=3".to_owned();
    loop {
        let page = get(&app, &uri).await.json();
        seen.extend(ids_of(&page["orders"]));
        match page["next"].as_str() {
            Some(next) => uri = format!("/api/v1/orders?size=3&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ids_of(&all["orders"]));
}

#[tokio::test]
async fn bad_listing_parameters_are_a_400_naming_the_parameter() {
    let app = app();
    for (query, field) in [
        ("size=0", "size"),
        ("size=1001", "size"),
        ("size=ten", "size"),
        ("status=done", "status"),
        ("target_type=cluster", "target_type"),
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        ("after=garbage", "after"),
        ("request_id=nope", "request_id"),
        ("agent_id=a/b", "agent_id"),
        ("target_id=", "target_id"),
        ("colour=red", "colour"),
        ("status=pending&status=sent", "status"),
    ] {
        get(&app, &format!("/api/v1/orders?{query}"))
            .await
            .names_field(field);
    }
}

#[tokio::test]
async fn getting_an_unknown_order_is_404_and_a_malformed_id_is_400() {
    let app = app();
    let error = get(&app, &format!("/api/v1/orders/{}", uuid_text(7)))
        .await
        .error(StatusCode::NOT_FOUND);
    assert_eq!(error["code"], json!("not_found"));
    get(&app, "/api/v1/orders/not-a-uuid")
        .await
        .names_field("order_id");
}

fn uuid_text(n: u128) -> String {
    OrderId::from_uuid(uuid_from(n)).to_string()
}

fn uuid_from(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

#[tokio::test]
async fn cancelling_a_pending_order_answers_it_cancelled_and_a_second_cancel_is_409() {
    let app = app();
    let ids = submit(&app, &[command("server", "s")]).await;
    let uri = format!("/api/v1/orders/{}/cancel", ids[0][0]);
    let a = post_empty(&app, &uri).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let o = a.json();
    assert_eq!(o["command"]["status"], json!("failure"));
    assert_eq!(o["command"]["result"]["message"], json!("cancelled"));
    let error = post_empty(&app, &uri).await.error(StatusCode::CONFLICT);
    assert_eq!(error["code"], json!("conflict"));
    post_empty(&app, &format!("/api/v1/orders/{}/cancel", uuid_text(9)))
        .await
        .error(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn request_progress_counts_orders_per_status_and_an_unknown_request_is_404() {
    let app = app();
    register(&app, "a1", &["g"]).await;
    register(&app, "a2", &["g"]).await;
    register(&app, "a3", &["g"]).await;
    let ids = submit(&app, &[command("group", "g")]).await;
    let request_id = order(&app, &ids[0][0]).await["command"]["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let polled = poll(&app, "a1", "wait=0").await.json();
    let delivered = ids_of(&polled["orders"]);
    post(
        &app,
        &format!("/api/v1/orders/{}/result", delivered[0]),
        &json!({"status": "success", "code": 0}),
    )
    .await;
    poll(&app, "a2", "wait=0").await;
    let progress = get(&app, &format!("/api/v1/requests/{request_id}"))
        .await
        .json();
    // Every field the progress answer always had, and the record beside them.
    for (field, value) in [
        ("request_id", json!(request_id)),
        ("total", json!(3)),
        ("pending", json!(1)),
        ("sent", json!(1)),
        ("in_progress", json!(0)),
        ("success", json!(1)),
        ("failure", json!(0)),
        ("errors", json!(0)),
        ("state", json!("running")),
        ("target", json!({"type": "group", "id": "g"})),
        ("action", json!({"name": "restart", "version": "v5"})),
        ("user", json!("admin")),
        ("source", json!("Users/Services")),
        ("timeout", json!(100)),
    ] {
        assert_eq!(progress[field], value, "{field}: {progress}");
    }
    assert!(progress["created_at"].is_string(), "{progress}");
    get(
        &app,
        &format!("/api/v1/requests/{}", RequestId::from_uuid(uuid_from(5))),
    )
    .await
    .error(StatusCode::NOT_FOUND);
    get(&app, "/api/v1/requests/xyz")
        .await
        .names_field("request_id");
}

// ---------------------------------------------------------------------------------------------
// Rollout control (docs/rollout.md)

fn scheduled(kind: &str, id: &str, schedule: Value) -> Value {
    let mut c = command(kind, id);
    c["schedule"] = schedule;
    c
}

async fn request_of(app: &App, order_id: &str) -> String {
    order(app, order_id).await["command"]["request_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn millis(doc: &Value, field: &str) -> i64 {
    DateTime::parse_from_rfc3339(doc.as_str().unwrap_or_else(|| panic!("{field}: {doc}")))
        .unwrap()
        .timestamp_millis()
}

#[tokio::test]
async fn a_scheduled_group_spreads_its_orders_over_the_rollout_window() {
    let app = app();
    for i in 0..4 {
        register(&app, &format!("a{i}"), &["g"]).await;
    }
    let start = Utc::now() + chrono::Duration::hours(1);
    let start_text = start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let ids = submit(
        &app,
        &[scheduled(
            "group",
            "g",
            json!({"start_at": start_text, "rollout_secs": 40}),
        )],
    )
    .await;
    let start = millis(&json!(start_text), "start");
    for (i, id) in ids[0].iter().enumerate() {
        let o = order(&app, id).await;
        let not_before = millis(&o["command"]["not_before"], "not_before");
        assert_eq!(not_before, start + 10_000 * i as i64, "order {i}");
        assert_eq!(
            millis(&o["delivery_timestamp"], "delivery_timestamp"),
            not_before + 100_000,
            "the deadline counts from not_before"
        );
    }
    // Nothing is handed out before its time.
    for i in 0..4 {
        let polled = poll(&app, &format!("a{i}"), "wait=0").await.json();
        assert_eq!(polled["orders"], json!([]));
    }
}

#[tokio::test]
async fn a_rollout_without_a_start_begins_now_and_hands_out_the_first_order_at_once() {
    let app = app();
    register(&app, "a1", &["g"]).await;
    register(&app, "a2", &["g"]).await;
    let ids = submit(
        &app,
        &[scheduled("group", "g", json!({"rollout_secs": 3600}))],
    )
    .await;
    let first = poll(&app, "a1", "wait=0").await.json();
    assert_eq!(ids_of(&first["orders"]), [ids[0][0].clone()]);
    let second = poll(&app, "a2", "wait=0").await.json();
    assert_eq!(second["orders"], json!([]), "due in half an hour");
}

#[tokio::test]
async fn a_start_beyond_the_horizon_is_a_422_naming_it_and_nothing_is_written() {
    let app = app_with(Settings {
        max_schedule_ahead: Duration::from_secs(3600),
        ..Settings::default()
    });
    register(&app, "a1", &[]).await;
    let late = (Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let a = post(
        &app,
        "/api/v1/commands",
        &body_of(&[
            command("agent", "a1"),
            scheduled("agent", "a1", json!({"start_at": late})),
        ]),
    )
    .await;
    // The document cannot state a bound that moves with the clock: the body follows every
    // rule it states, so the refusal is a 422, not a 400.
    let error = a.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        error["field"],
        json!("commands[1].schedule.start_at"),
        "{error}"
    );
    assert_eq!(
        get(&app, "/api/v1/orders").await.json()["orders"],
        json!([])
    );
}

#[tokio::test]
async fn cancelling_a_request_fails_its_pending_orders_and_answers_the_counts() {
    let app = app();
    for i in 0..5 {
        register(&app, &format!("a{i}"), &["g"]).await;
    }
    let ids = submit(&app, &[command("group", "g")]).await;
    let request_id = request_of(&app, &ids[0][0]).await;
    let polled = poll(&app, "a0", "wait=0").await.json();
    assert_eq!(polled["orders"].as_array().unwrap().len(), 1);
    let a = post_empty(&app, &format!("/api/v1/requests/{request_id}/cancel")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(
        a.json(),
        json!({"request_id": request_id, "total": 5, "pending": 0, "sent": 1,
               "in_progress": 0, "success": 0, "failure": 4})
    );
    for i in 1..5 {
        let polled = poll(&app, &format!("a{i}"), "wait=0").await.json();
        assert_eq!(polled["orders"], json!([]), "a{i}'s order was cancelled");
    }
    let again = post_empty(&app, &format!("/api/v1/requests/{request_id}/cancel")).await;
    assert_eq!(
        again.json()["failure"],
        json!(4),
        "a second cancel changes nothing"
    );
    post_empty(
        &app,
        &format!(
            "/api/v1/requests/{}/cancel",
            RequestId::from_uuid(uuid_from(5))
        ),
    )
    .await
    .error(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_orders_of_a_request_are_filtered_by_status_and_paged() {
    let app = app();
    for i in 0..7 {
        register(&app, &format!("a{i}"), &["g"]).await;
    }
    let ids = submit(&app, &[command("group", "g"), command("agent", "a0")]).await;
    let request_id = request_of(&app, &ids[0][0]).await;
    for i in 0..3 {
        poll(&app, &format!("a{i}"), "wait=0&limit=1").await;
    }
    let mut seen = Vec::new();
    let mut uri = format!("/api/v1/requests/{request_id}/orders?size=2");
    loop {
        let page = get(&app, &uri).await.json();
        assert!(page["orders"].as_array().unwrap().len() <= 2);
        seen.extend(ids_of(&page["orders"]));
        match page["next"].as_str() {
            Some(next) => {
                uri = format!("/api/v1/requests/{request_id}/orders?size=2&after={next}");
            }
            None => break,
        }
    }
    assert_eq!(
        seen, ids[0],
        "every order of the request, none of the other"
    );
    let pending = get(
        &app,
        &format!("/api/v1/requests/{request_id}/orders?status=pending&size=1000"),
    )
    .await
    .json();
    assert_eq!(pending["orders"].as_array().unwrap().len(), 4);
    assert!(
        pending["orders"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["command"]["status"] == json!("pending"))
    );
    let none = get(
        &app,
        &format!("/api/v1/requests/{request_id}/orders?status=success"),
    )
    .await;
    assert_eq!(none.status, StatusCode::OK);
    assert_eq!(none.json(), json!({"orders": [], "next": null}));
    get(
        &app,
        &format!(
            "/api/v1/requests/{}/orders",
            RequestId::from_uuid(uuid_from(5))
        ),
    )
    .await
    .error(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn retrying_a_request_re_runs_only_its_failed_targets_linked_by_retry_of() {
    let app = app();
    for i in 0..6 {
        register(&app, &format!("a{i}"), &["g"]).await;
    }
    let ids = submit(&app, &[command("group", "g")]).await;
    let request_id = request_of(&app, &ids[0][0]).await;
    // a0 and a3 fail, a1, a2, a4 succeed, a5 never polls.
    for i in 0..5 {
        let polled = poll(&app, &format!("a{i}"), "wait=0").await.json();
        let status = if i % 3 == 0 { "failure" } else { "success" };
        let a = post(
            &app,
            &format!("/api/v1/orders/{}/result", ids_of(&polled["orders"])[0]),
            &json!({"status": status, "code": 1}),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    }
    let a = post_empty(&app, &format!("/api/v1/requests/{request_id}/retry")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    let answer = a.json();
    let requests = answer["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1);
    let retry_id = requests[0]["request_id"].as_str().unwrap().to_owned();
    assert_ne!(retry_id, request_id);
    let retried = get(&app, &format!("/api/v1/requests/{retry_id}/orders"))
        .await
        .json();
    let answered: Vec<String> = requests[0]["order_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids_of(&retried["orders"]), answered);
    let mut agents: Vec<&str> = retried["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            assert_eq!(o["command"]["retry_of"], json!(request_id));
            assert_eq!(o["command"]["status"], json!("pending"));
            assert_eq!(o["command"]["action"]["name"], json!("restart"));
            assert_eq!(o["command"]["user"], json!("admin"));
            assert_eq!(o["command"]["timeout"], json!(100));
            o["agent"]["id"].as_str().unwrap()
        })
        .collect();
    agents.sort_unstable();
    assert_eq!(agents, ["a0", "a3"]);
    // The successes can be re-run too; a status nobody ended in is a 422 naming it.
    let a = post_empty(
        &app,
        &format!("/api/v1/requests/{request_id}/retry?status=success"),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    assert_eq!(
        a.json()["requests"][0]["order_ids"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let a = post_empty(
        &app,
        &format!("/api/v1/requests/{retry_id}/retry?status=success"),
    )
    .await;
    let error = a.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["code"], json!("unprocessable"));
    assert_eq!(error["field"], json!("status"));
    post_empty(
        &app,
        &format!("/api/v1/requests/{request_id}/retry?status=sent"),
    )
    .await
    .names_field("status");
    post_empty(
        &app,
        &format!(
            "/api/v1/requests/{}/retry",
            RequestId::from_uuid(uuid_from(5))
        ),
    )
    .await
    .error(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn routes_without_query_parameters_refuse_any_by_name_but_the_wazuh_route_ignores_them() {
    let app = app();
    register(&app, "a1", &[]).await;
    let ids = submit(&app, &[command("agent", "a1")]).await;
    let id = &ids[0][0];
    let request_id = request_of(&app, id).await;
    for (method, uri, param) in [
        (
            Method::GET,
            format!("/api/v1/orders/{id}?verbose=1"),
            "verbose",
        ),
        (Method::POST, format!("/api/v1/orders/{id}/cancel?x=1"), "x"),
        (
            Method::GET,
            format!("/api/v1/requests/{request_id}?status=failure"),
            "status",
        ),
        (
            Method::POST,
            format!("/api/v1/requests/{request_id}/cancel?all"),
            "all",
        ),
        (
            Method::GET,
            "/api/v1/agents/a1?expand=keys".to_owned(),
            "expand",
        ),
        (
            Method::DELETE,
            "/api/v1/agents/a1?force=1".to_owned(),
            "force",
        ),
        (Method::POST, "/api/v1/agents/a1/key?x=1".to_owned(), "x"),
        (Method::GET, "/healthz?probe=1".to_owned(), "probe"),
        (Method::GET, "/readyz?probe=1".to_owned(), "probe"),
        (Method::GET, "/metrics?x=1".to_owned(), "x"),
        (Method::GET, "/openapi.json?v=3".to_owned(), "v"),
    ] {
        let a = send(&app, request(method.clone(), &uri, None)).await;
        a.names_field(param);
        assert!(
            a.text().contains("takes none"),
            "{method} {uri}: {}",
            a.text()
        );
    }
    for (method, uri, param) in [
        (Method::POST, "/api/v1/commands?dryrun=true", "dryrun"),
        (Method::PUT, "/api/v1/agents/a2?groups=g", "groups"),
    ] {
        let body = if method == Method::PUT {
            json!({"groups": []})
        } else {
            body_of(&[command("agent", "a1")])
        };
        send(&app, request(method, uri, Some(&body)))
            .await
            .names_field(param);
    }
    let o = order(&app, id).await;
    assert_eq!(
        o["command"]["status"],
        json!("pending"),
        "nothing was cancelled"
    );
    assert_eq!(
        get(&app, "/api/v1/agents/a1").await.status,
        StatusCode::OK,
        "nothing was deleted"
    );
    let a = post(
        &app,
        "/_plugins/_command_manager/commands?pretty=true",
        &body_of(&[command("agent", "a1")]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
}

// ---------------------------------------------------------------------------------------------
// Agents

#[tokio::test]
async fn putting_an_agent_creates_it_with_201_then_updates_it_with_200() {
    let app = app();
    let a = put(
        &app,
        "/api/v1/agents/a1",
        &json!({"groups": ["web", "db", "web"]}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    let mut created = a.json();
    let key = created.as_object_mut().unwrap().remove("key");
    assert!(
        key.is_some_and(|k| k.is_string()),
        "a new agent gets its key"
    );
    assert_eq!(created, json!({"id": "a1", "groups": ["web", "db"]}));
    let a = put(&app, "/api/v1/agents/a1", &json!({"groups": []})).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.json(),
        json!({"id": "a1", "groups": []}),
        "no key on update"
    );
    assert_eq!(
        get(&app, "/api/v1/agents/a1").await.json(),
        json!({"id": "a1", "groups": []})
    );
    get(&app, "/api/v1/agents/a2")
        .await
        .error(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_bad_agent_body_is_a_400_naming_the_field() {
    let app = app();
    put(&app, "/api/v1/agents/a1", &json!({"groups": ["ok", "a/b"]}))
        .await
        .names_field("groups[1]");
    put(&app, "/api/v1/agents/a1", &json!({"groups": "web"}))
        .await
        .names_field("groups");
    put(
        &app,
        "/api/v1/agents/a1",
        &json!({"groups": [], "name": "x"}),
    )
    .await
    .names_field("name");
    put(&app, "/api/v1/agents/a%20b", &json!({"groups": []}))
        .await
        .names_field("agent_id");
}

#[tokio::test]
async fn listing_agents_of_a_group_pages_in_id_order() {
    let app = app();
    for id in ["a3", "a1", "a2", "b1"] {
        let groups: &[&str] = if id.starts_with('a') { &["g"] } else { &["h"] };
        register(&app, id, groups).await;
    }
    let first = get(&app, "/api/v1/agents?group=g&size=2").await.json();
    assert_eq!(
        first["agents"],
        json!([{"id": "a1", "groups": ["g"]}, {"id": "a2", "groups": ["g"]}])
    );
    let next = first["next"].as_str().unwrap();
    let second = get(&app, &format!("/api/v1/agents?group=g&size=2&after={next}"))
        .await
        .json();
    assert_eq!(second["agents"], json!([{"id": "a3", "groups": ["g"]}]));
    assert_eq!(second["next"], Value::Null);
    let all = get(&app, "/api/v1/agents").await.json();
    assert_eq!(all["agents"].as_array().unwrap().len(), 4);
    get(&app, "/api/v1/agents?group=a/b")
        .await
        .names_field("group");
    get(&app, "/api/v1/agents?page=2").await.names_field("page");
}

#[tokio::test]
async fn deleting_an_agent_answers_204_then_404_and_keeps_its_orders() {
    let app = app();
    register(&app, "a1", &["g"]).await;
    let ids = submit(&app, &[command("agent", "a1")]).await;
    let a = delete(&app, "/api/v1/agents/a1").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(a.body.is_empty());
    delete(&app, "/api/v1/agents/a1")
        .await
        .error(StatusCode::NOT_FOUND);
    order(&app, &ids[0][0]).await;
}

// ---------------------------------------------------------------------------------------------
// Delivery

#[tokio::test]
async fn polling_hands_out_pending_orders_as_sent_exactly_once() {
    let app = app();
    register(&app, "a1", &["g"]).await;
    register(&app, "a2", &["g"]).await;
    let ids = submit(
        &app,
        &[
            command("agent", "a1"),
            command("agent", "a1"),
            command("agent", "a2"),
        ],
    )
    .await;
    let first = poll(&app, "a1", "wait=0&limit=1").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let first = first.json();
    assert_eq!(ids_of(&first["orders"]), ids[0]);
    assert_eq!(first["orders"][0]["command"]["status"], json!("sent"));
    let second = poll(&app, "a1", "wait=0").await.json();
    assert_eq!(ids_of(&second["orders"]), ids[1]);
    let third = poll(&app, "a1", "wait=0").await.json();
    assert_eq!(third, json!({"orders": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_as_soon_as_an_order_is_submitted_concurrently() {
    let app = app_with(long_wait_settings());
    register(&app, "a1", &["g"]).await;
    let router = app.router.clone();
    let started = Instant::now();
    let poller = tokio::spawn(async move {
        let uri = format!("/api/v1/agents/a1/poll?wait={}", LONG_WAIT.as_secs());
        let res = router
            .oneshot(request(Method::POST, &uri, None))
            .await
            .unwrap();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice::<Value>(&body).unwrap())
    });
    until_parked(&app, "a1", &poller).await;
    let ids = submit(&app, &[command("agent", "a1")]).await;
    let (status, body) = poller.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids_of(&body["orders"]), ids[0]);
    assert!(
        started.elapsed() < LONG_WAIT,
        "woken, not at the end of its wait ({:?})",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_long_poll_with_nothing_to_deliver_returns_empty_after_its_wait() {
    let app = app();
    let started = Instant::now();
    let a = poll(&app, "a1", "wait=1").await;
    let waited = started.elapsed();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), json!({"orders": []}));
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
}

#[tokio::test]
async fn bad_poll_parameters_are_a_400_naming_the_parameter() {
    let app = app();
    for (query, field) in [
        ("wait=-1", "wait"),
        ("wait=1.5", "wait"),
        ("wait=99999", "wait"),
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("timeout=3", "timeout"),
    ] {
        poll(&app, "a1", query).await.names_field(field);
    }
    poll(&app, "..", "wait=0").await.names_field("agent_id");
}

#[tokio::test]
async fn reporting_a_result_finishes_the_order_and_an_identical_repeat_is_200() {
    let app = app();
    register(&app, "a1", &["g"]).await;
    let ids = submit(&app, &[command("agent", "a1")]).await;
    poll(&app, "a1", "wait=0").await;
    let uri = format!("/api/v1/orders/{}/result", ids[0][0]);
    let report = json!({"status": "failure", "code": 2, "message": "disk full", "data": "{}"});
    let a = post(&app, &uri, &report).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let o = a.json();
    assert_eq!(o["command"]["status"], json!("failure"));
    assert_eq!(
        o["command"]["result"],
        json!({"code": 2, "message": "disk full", "data": "{}"})
    );
    let again = post(&app, &uri, &report).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json(), o);
    post(&app, &uri, &json!({"status": "success", "code": 0}))
        .await
        .error(StatusCode::CONFLICT);
}

#[tokio::test]
async fn in_progress_reports_keep_the_order_open_for_a_final_one() {
    let app = app();
    register(&app, "a1", &["g"]).await;
    let ids = submit(&app, &[command("agent", "a1")]).await;
    poll(&app, "a1", "wait=0").await;
    let uri = format!("/api/v1/orders/{}/result", ids[0][0]);
    let busy = post(
        &app,
        &uri,
        &json!({"status": "in_progress", "code": 0, "message": "50%"}),
    )
    .await;
    assert_eq!(busy.json()["command"]["status"], json!("in_progress"));
    let done = post(&app, &uri, &json!({"status": "success", "code": 0})).await;
    assert_eq!(done.json()["command"]["status"], json!("success"));
}

#[tokio::test]
async fn reporting_on_an_order_that_was_not_delivered_is_409_and_on_an_unknown_one_404() {
    let app = app();
    register(&app, "a1", &["g"]).await;
    let ids = submit(&app, &[command("agent", "a1")]).await;
    let report = json!({"status": "success", "code": 0});
    post(
        &app,
        &format!("/api/v1/orders/{}/result", ids[0][0]),
        &report,
    )
    .await
    .error(StatusCode::CONFLICT);
    post(
        &app,
        &format!("/api/v1/orders/{}/result", uuid_text(3)),
        &report,
    )
    .await
    .error(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_bad_report_is_a_400_naming_the_field() {
    let app = app();
    let uri = format!("/api/v1/orders/{}/result", uuid_text(3));
    for (body, field) in [
        (json!({"status": "done", "code": 0}), "status"),
        (json!({"status": "success"}), "code"),
        (json!({"status": "success", "code": 99999}), "code"),
        (
            json!({"status": "success", "code": 0, "message": 5}),
            "message",
        ),
        (json!({"status": "success", "code": 0, "extra": 5}), "extra"),
        (json!(["success"]), "body"),
    ] {
        post(&app, &uri, &body).await.names_field(field);
    }
}

// ---------------------------------------------------------------------------------------------
// No bad input yields a 5xx

#[tokio::test]
async fn no_bad_input_of_a_table_of_fifty_yields_a_server_error() {
    let app = app();
    register(&app, "a1", &["g"]).await;
    let json_ct = Some("application/json");
    let cmd = |f: &dyn Fn(&mut Value)| {
        let mut c = command("agent", "a1");
        f(&mut c);
        body_of(&[c]).to_string().into_bytes()
    };
    let mut deep = String::new();
    for _ in 0..500 {
        deep.push_str("{\"a\":");
    }
    deep.push('1');
    for _ in 0..500 {
        deep.push('}');
    }
    let post_cmd = |body: Vec<u8>| (Method::POST, "/api/v1/commands".to_owned(), json_ct, body);
    let get_uri = |uri: &str| (Method::GET, uri.to_owned(), None, Vec::new());
    let cases: Vec<(Method, String, Option<&str>, Vec<u8>)> = vec![
        post_cmd(b"{".to_vec()),
        post_cmd(b"".to_vec()),
        post_cmd(b"null".to_vec()),
        post_cmd(b"[]".to_vec()),
        post_cmd(b"{}".to_vec()),
        post_cmd(br#"{"commands": []}"#.to_vec()),
        post_cmd(br#"{"commands": "x"}"#.to_vec()),
        post_cmd(br#"{"commands": [null]}"#.to_vec()),
        post_cmd(br#"{"commands": [1e400]}"#.to_vec()),
        post_cmd(vec![0xff, 0xfe, 0x00]),
        post_cmd(deep.into_bytes()),
        post_cmd(cmd(&|c| c["source"] = json!("cron"))),
        post_cmd(cmd(&|c| c["source"] = json!(5))),
        post_cmd(cmd(&|c| c["target"]["type"] = json!("cluster"))),
        post_cmd(cmd(&|c| c["target"] = json!(null))),
        post_cmd(cmd(&|c| c["target"]["id"] = json!(""))),
        post_cmd(cmd(&|c| c["target"]["id"] = json!("../etc/passwd"))),
        post_cmd(cmd(&|c| c["target"]["id"] = json!("x".repeat(300)))),
        post_cmd(cmd(&|c| c["action"]["name"] = json!(""))),
        post_cmd(cmd(&|c| c["action"]["args"] = json!("str"))),
        post_cmd(cmd(&|c| c["action"]["version"] = json!(null))),
        post_cmd(cmd(&|c| c["action"] = json!([]))),
        post_cmd(cmd(&|c| c["timeout"] = json!(0))),
        post_cmd(cmd(&|c| c["timeout"] = json!(40000))),
        post_cmd(cmd(&|c| c["timeout"] = json!(-1))),
        post_cmd(cmd(&|c| c["timeout"] = json!(1.5))),
        post_cmd(cmd(&|c| c["timeout"] = json!(u64::MAX))),
        post_cmd(cmd(&|c| c["user"] = json!(5))),
        post_cmd(cmd(&|c| c["user"] = json!("a\u{0}b"))),
        post_cmd(cmd(&|c| c["user"] = json!("u".repeat(2000)))),
        post_cmd(cmd(&|c| c["schedule"] = json!({"start_at": "now"}))),
        post_cmd(cmd(&|c| c["target"]["id"] = json!("ghost"))),
        (
            Method::POST,
            "/api/v1/commands".to_owned(),
            Some("text/plain"),
            b"{}".to_vec(),
        ),
        (
            Method::POST,
            "/api/v1/commands".to_owned(),
            json_ct,
            vec![b' '; 2 * 1024 * 1024],
        ),
        (
            Method::POST,
            "/_plugins/_command_manager/commands".to_owned(),
            json_ct,
            b"{\"commands\":[{}]}".to_vec(),
        ),
        get_uri("/api/v1/orders?size=0"),
        get_uri("/api/v1/orders?size=99999999999999999999999"),
        get_uri("/api/v1/orders?since=%FF"),
        get_uri("/api/v1/orders?after=1_2"),
        get_uri("/api/v1/orders?after=zzzzzzzzzzzzzzzzzzzzzz_00000000000000000000000000000000"),
        get_uri("/api/v1/orders?bogus"),
        get_uri("/api/v1/orders/%FF%FE"),
        get_uri("/api/v1/orders/00000000-0000-0000-0000-00000000000g"),
        get_uri("/api/v1/requests/%00"),
        get_uri("/api/v1/agents/%2e%2e"),
        get_uri("/api/v1/agents?size=-5"),
        (
            Method::POST,
            "/api/v1/agents/a1/poll?wait=1e3".to_owned(),
            None,
            Vec::new(),
        ),
        (
            Method::PUT,
            "/api/v1/agents/a1".to_owned(),
            json_ct,
            br#"{"groups": [null]}"#.to_vec(),
        ),
        (
            Method::POST,
            format!("/api/v1/orders/{}/result", uuid_text(1)),
            json_ct,
            br#"{"status": "success", "code": "0"}"#.to_vec(),
        ),
        (
            Method::DELETE,
            "/api/v1/commands".to_owned(),
            None,
            Vec::new(),
        ),
        get_uri("/api/v2/nothing"),
    ];
    assert!(cases.len() >= 25);
    for (method, uri, ct, body) in cases {
        let label = format!(
            "{method} {uri} {:?}",
            String::from_utf8_lossy(&body[..body.len().min(60)])
        );
        let a = send(&app, raw(method, &uri, ct, body)).await;
        assert!(
            a.status.is_client_error(),
            "{label}: {} {}",
            a.status,
            a.text()
        );
        let error = a.json();
        assert!(error["error"]["code"].is_string(), "{label}: {error}");
    }
}

// ---------------------------------------------------------------------------------------------
// Storage failures

fn down() -> StoreError {
    StoreError::Unavailable("connection refused by 10.1.2.3:5432 (password=hunter2)".into())
}

fn failing_app() -> App {
    let mut orders = MockOrderStore::new();
    orders.expect_get().returning(|_| Err(down()));
    orders.expect_ping().returning(|| Err(down()));
    orders.expect_insert().returning(|_| Err(down()));
    orders.expect_insert_staged().returning(|_| Err(down()));
    orders.expect_delete_request().returning(|_| Ok(0));
    orders.expect_query().returning(|_, _| Err(down()));
    app_over(
        Arc::new(orders),
        Settings::default(),
        HttpSettings {
            retry_after_secs: 7,
            ..HttpSettings::default()
        },
    )
}

fn assert_unavailable(a: &Answer) {
    let error = a.error(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error["code"], json!("unavailable"));
    assert_eq!(a.headers[header::RETRY_AFTER], "7");
    let text = a.text();
    assert!(
        !text.contains("10.1.2.3") && !text.contains("hunter2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_storage_failure_answers_503_with_retry_after_and_a_generic_body() {
    let app = failing_app();
    assert_unavailable(&get(&app, &format!("/api/v1/orders/{}", uuid_text(1))).await);
    assert_unavailable(&get(&app, "/api/v1/orders").await);
    assert_unavailable(
        &post(
            &app,
            "/api/v1/commands",
            &body_of(&[command("server", "s")]),
        )
        .await,
    );
}

#[tokio::test]
async fn a_cancel_that_keeps_losing_to_concurrent_writers_answers_503_with_retry_after() {
    // The order is pending, but every compare-and-set finds it changed: contention, not an
    // outage, yet the client is told the same thing: retry later.
    let order = cm_ports::testkit::OrderSpec::agent("a1").build();
    let id = order.order_id().to_string();
    let mut orders = MockOrderStore::new();
    orders
        .expect_get()
        .returning(move |_| Ok(Some(order.clone())));
    orders
        .expect_replace()
        .returning(|_, _| Err(ReplaceError::Conflict));
    let app = app_over(
        Arc::new(orders),
        Settings::default(),
        HttpSettings {
            retry_after_secs: 7,
            ..HttpSettings::default()
        },
    );
    let a = post_empty(&app, &format!("/api/v1/orders/{id}/cancel")).await;
    assert_unavailable(&a);
    assert!(!a.text().contains("kept changing"), "{}", a.text());
}

#[tokio::test]
async fn readyz_answers_503_with_retry_after_when_storage_is_down() {
    assert_unavailable(&get(&failing_app(), "/readyz").await);
}

#[tokio::test]
async fn readyz_answers_200_when_storage_is_reachable_and_healthz_always() {
    let app = app();
    let a = get(&app, "/readyz").await;
    assert_eq!(a.status, StatusCode::OK);
    let a = get(&app, "/healthz").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), json!({"status": "ok"}));
    assert_eq!(get(&failing_app(), "/healthz").await.status, StatusCode::OK);
}

/// An orders store whose `ping` never answers in time.
struct SlowPing(MemoryOrders);

#[async_trait]
impl OrderStore for SlowPing {
    async fn insert(&self, orders: &[Order]) -> Result<u64, StoreError> {
        self.0.insert(orders).await
    }
    async fn get(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        self.0.get(id).await
    }
    async fn query(
        &self,
        filter: &OrderFilter,
        page: &OrderPageRequest,
    ) -> Result<Page<Order, OrderCursor>, StoreError> {
        self.0.query(filter, page).await
    }
    async fn claim(
        &self,
        agent: &cm_ports::Consumers,
        limit: usize,
        now: DateTime<Utc>,
        policy: &DeliveryPolicy,
    ) -> Result<Vec<Order>, StoreError> {
        self.0.claim(agent, limit, now, policy).await
    }
    async fn replace(&self, current: &Order, next: &Order) -> Result<(), ReplaceError> {
        self.0.replace(current, next).await
    }
    async fn next_due(
        &self,
        agent: &cm_ports::Consumers,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.0.next_due(agent, now).await
    }
    async fn end_pending(
        &self,
        request: &RequestId,
        end: cm_domain::PendingEnd,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        self.0.end_pending(request, end, now, limit).await
    }

    async fn release_held(
        &self,
        request: &RequestId,
        below: u64,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Order>, StoreError> {
        self.0.release_held(request, below, now, limit).await
    }

    async fn result_groups(
        &self,
        request: &RequestId,
    ) -> Result<Vec<cm_ports::ResultGroup>, StoreError> {
        self.0.result_groups(request).await
    }
    async fn expire_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Batch, StoreError> {
        self.0.expire_due(now, limit).await
    }
    async fn give_up_unreported(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        self.0.give_up_unreported(now, limit).await
    }
    async fn purge_finished(
        &self,
        cutoff: DateTime<Utc>,
        mode: RetentionMode,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        self.0.purge_finished(cutoff, mode, limit).await
    }
    async fn get_archived(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        self.0.get_archived(id).await
    }
    async fn progress(&self, request: &RequestId) -> Result<StatusCounts, StoreError> {
        self.0.progress(request).await
    }
    async fn delete_request(&self, request: &RequestId) -> Result<u64, StoreError> {
        self.0.delete_request(request).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    }
}

#[tokio::test]
async fn a_request_over_the_timeout_answers_503_while_long_polls_may_wait_longer() {
    let app = app_over(
        Arc::new(SlowPing(MemoryOrders::new())),
        Settings::default(),
        HttpSettings {
            request_timeout_secs: 1,
            ..HttpSettings::default()
        },
    );
    // The ping takes a minute: a 503 is the request timeout's answer.
    let a = get(&app, "/readyz").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    assert!(a.headers.contains_key(header::RETRY_AFTER));
    let started = Instant::now();
    let a = poll(&app, "a1", "wait=2").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert!(started.elapsed() >= Duration::from_millis(1900));
}

// ---------------------------------------------------------------------------------------------
// Operations

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_with_our_error_body() {
    let app = app();
    let error = get(&app, "/nope").await.error(StatusCode::NOT_FOUND);
    assert_eq!(error["code"], json!("not_found"));
    let a = get(&app, "/api/v1/commands").await;
    let error = a.error(StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error["code"], json!("method_not_allowed"));
    assert_eq!(a.headers[header::ALLOW], "POST");
}

#[tokio::test]
async fn the_openapi_document_is_valid_json_listing_every_route() {
    let app = app();
    let a = get(&app, "/openapi.json").await;
    assert_eq!(a.status, StatusCode::OK);
    let doc = a.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/v1/commands", &["post"][..]),
        ("/_plugins/_command_manager/commands", &["post"]),
        ("/api/v1/orders", &["get"]),
        ("/api/v1/orders/{order_id}", &["get"]),
        ("/api/v1/orders/{order_id}/cancel", &["post"]),
        ("/api/v1/orders/{order_id}/result", &["post"]),
        ("/api/v1/requests", &["get"]),
        ("/api/v1/requests/{request_id}", &["get"]),
        ("/api/v1/requests/{request_id}/orders", &["get"]),
        ("/api/v1/requests/{request_id}/results", &["get"]),
        ("/api/v1/requests/{request_id}/pause", &["post"]),
        ("/api/v1/requests/{request_id}/resume", &["post"]),
        ("/api/v1/requests/{request_id}/cancel", &["post"]),
        ("/api/v1/requests/{request_id}/retry", &["post"]),
        ("/api/v1/agents", &["get", "put"]),
        ("/api/v1/agents/{agent_id}", &["put", "get", "delete"]),
        ("/api/v1/agents/{agent_id}/key", &["post"]),
        ("/api/v1/agents/{agent_id}/poll", &["post"]),
        ("/api/v1/servers", &["get"]),
        ("/api/v1/servers/{component}", &["put", "delete"]),
        ("/api/v1/servers/{component}/key", &["post"]),
        ("/api/v1/servers/{component}/poll", &["post"]),
        ("/api/v1/relay/claim", &["post"]),
        ("/api/v1/results", &["post"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
    ] {
        for method in methods {
            assert!(
                paths[path][method].is_object(),
                "{method} {path} is missing"
            );
        }
    }
    assert_eq!(paths.len(), 28);
    let mut operation_ids: Vec<&str> = paths
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let count = operation_ids.len();
    operation_ids.sort_unstable();
    operation_ids.dedup();
    assert_eq!(operation_ids.len(), count, "operation ids are unique");
    assert_eq!(count, 32);
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "ErrorBody",
        "SubmitBody",
        "Order",
        "ReportBody",
        "AgentBody",
        "ScheduleBody",
    ] {
        assert!(schemas.contains_key(name), "schema {name} is missing");
    }
}

#[tokio::test]
async fn the_order_schema_names_every_field_of_real_orders() {
    let app = app();
    register(&app, "a1", &["g"]).await;
    let ids = submit(&app, &[command("agent", "a1"), command("server", "s")]).await;
    poll(&app, "a1", "wait=0").await;
    let done = post(
        &app,
        &format!("/api/v1/orders/{}/result", ids[0][0]),
        &json!({"status": "success", "code": 0}),
    )
    .await
    .json();
    let cancelled = post_empty(&app, &format!("/api/v1/orders/{}/cancel", ids[1][0]))
        .await
        .json();
    let doc = get(&app, "/openapi.json").await.json();
    let props = |name: &str| doc["components"]["schemas"][name]["properties"].clone();
    for o in [done, cancelled] {
        for key in o.as_object().unwrap().keys() {
            assert!(
                props("Order").get(key).is_some(),
                "Order.{key} undocumented"
            );
        }
        for key in o["command"].as_object().unwrap().keys() {
            assert!(
                props("OrderCommand").get(key).is_some(),
                "OrderCommand.{key} undocumented"
            );
        }
    }
}

#[tokio::test]
async fn metrics_count_requests_by_method_route_and_status() {
    let app = app();
    get(&app, "/healthz").await;
    get(&app, "/api/v1/orders/not-a-uuid").await;
    let a = get(&app, "/metrics").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = a.text();
    let counted = |route: &str, status: &str| {
        text.lines().any(|l| {
            l.starts_with("cm_http_requests_total{")
                && l.contains(&format!("route=\"{route}\""))
                && l.contains(&format!("status=\"{status}\""))
                && l.contains("method=\"GET\"")
        })
    };
    assert!(counted("/healthz", "200"), "{text}");
    assert!(counted("/api/v1/orders/{order_id}", "400"), "{text}");
    assert!(text.contains("cm_http_request_duration_seconds"), "{text}");
    // Every metric recorded so far (the connection metrics come from `serve`, not from the
    // router alone) has its HELP text.
    for metric in cm_api_http::metric::ALL
        .into_iter()
        .filter(|m| text.contains(&format!("# TYPE {} ", m.name)))
    {
        let help = format!("# HELP {} {}", metric.name, metric.help);
        assert!(text.lines().any(|l| l == help), "{help}: {text}");
    }
}

#[tokio::test]
async fn metrics_are_404_when_no_handle_is_given() {
    let state = AppState::new(
        manager_over(
            Arc::new(MemoryOrders::new()),
            Arc::new(LocalNotifier::new()),
            Settings::default(),
        ),
        HttpSettings::default(),
        AuthSettings::default(),
        None,
    );
    let app = App {
        router: router(state.clone()),
        state,
        notifier: Arc::new(LocalNotifier::new()),
    };
    get(&app, "/metrics").await.error(StatusCode::NOT_FOUND);
    drop(app.state);
}

#[tokio::test]
async fn installing_the_metrics_recorder_twice_returns_the_same_recorder() {
    let a = install_metrics_recorder().expect("first");
    let b = install_metrics_recorder().expect("second");
    metrics::counter!("cm_test_twice_total").increment(1);
    assert!(a.render().contains("cm_test_twice_total"));
    assert!(b.render().contains("cm_test_twice_total"));
}

// ---------------------------------------------------------------------------------------------
// Serving

async fn http_call(addr: std::net::SocketAddr, head: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_over_tcp_and_ends_open_long_polls_promptly_on_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let app = app_with(long_wait_settings());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, app.state.clone(), async move {
        let _ = stopped.await;
    }));

    let health = http_call(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    // A poll that would wait an hour: its answer can only come from the shutdown.
    let head = format!(
        "POST /api/v1/agents/a1/poll?wait={} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        LONG_WAIT.as_secs()
    );
    let long_poll = tokio::spawn(async move { http_call(addr, &head).await });
    until_parked(&app, "a1", &long_poll).await;
    let started = Instant::now();
    stop.send(()).expect("server running");
    let answer = long_poll.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(r#"{"orders":[]}"#), "{answer}");
    server.await.unwrap().expect("served without error");
    assert!(
        started.elapsed() < LONG_WAIT,
        "ended by the shutdown, not by its wait"
    );
}

#[tokio::test]
async fn a_bulk_registration_gives_a_key_to_each_new_agent_only() {
    let app = app();
    assert_eq!(
        put(&app, "/api/v1/agents/old", &json!({"groups": ["g"]}))
            .await
            .status,
        StatusCode::CREATED
    );
    let a = put(
        &app,
        "/api/v1/agents",
        &json!({"agents": [
            {"id": "new1", "groups": ["g", "h"]},
            {"id": "old", "groups": ["h"]},
            {"id": "new2", "groups": []},
        ]}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
    let body = a.json();
    let agents = body["agents"].as_array().unwrap();
    let ids: Vec<&str> = agents.iter().map(|x| x["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["new1", "old", "new2"]);
    assert_eq!(agents[0]["created"], json!(true));
    assert!(agents[0]["key"].as_str().is_some_and(|k| !k.is_empty()));
    assert_eq!(agents[1]["created"], json!(false));
    assert!(agents[1].get("key").is_none(), "{body}");
    assert_eq!(agents[2]["created"], json!(true));
    assert_ne!(agents[0]["key"], agents[2]["key"]);
    assert_eq!(
        get(&app, "/api/v1/agents/old").await.json()["groups"],
        json!(["h"])
    );
    assert_eq!(
        get(&app, "/api/v1/agents/new1").await.json()["groups"],
        json!(["g", "h"])
    );
}

#[tokio::test]
async fn a_bulk_registration_with_one_bad_item_writes_nothing_and_names_it() {
    let app = app();
    let a = put(
        &app,
        "/api/v1/agents",
        &json!({"agents": [
            {"id": "fine", "groups": ["g"]},
            {"id": "..", "groups": ["g"]},
        ]}),
    )
    .await;
    a.names_field("agents[1].id");
    assert_eq!(
        get(&app, "/api/v1/agents/fine").await.status,
        StatusCode::NOT_FOUND
    );
    put(
        &app,
        "/api/v1/agents",
        &json!({"agents": [{"id": "x", "groups": ["g"], "extra": 1}]}),
    )
    .await
    .names_field("agents[0].extra");
    put(&app, "/api/v1/agents", &json!({"agents": []}))
        .await
        .names_field("agents");
    let many: Vec<Value> = (0..10_001)
        .map(|i| json!({"id": format!("a{i}"), "groups": []}))
        .collect();
    put(&app, "/api/v1/agents", &json!({"agents": many}))
        .await
        .names_field("agents");
}

#[tokio::test]
async fn schema_names_are_unique_so_each_answer_is_described_by_its_own_schema() {
    let app = app();
    let doc = get(&app, "/openapi.json").await.json();
    let results = &doc["paths"]["/api/v1/requests/{request_id}/results"]["get"]["responses"]["200"]
        ["content"]["application/json"]["schema"]["$ref"];
    let name = results.as_str().unwrap().rsplit('/').next().unwrap();
    assert!(
        doc["components"]["schemas"][name]["properties"]["groups"].is_object(),
        "{name}"
    );
}
