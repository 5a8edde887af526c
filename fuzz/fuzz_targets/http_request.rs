//! Any request to any route of the real router (over the in-memory backend) gets an answer that
//! is not a server error, and the service keeps working.

#![no_main]

use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request};
use cm_adapter_memory::{MemoryAgents, MemoryOrders};
use cm_api_http::{AppState, AuthSettings, HttpSettings, router};
use cm_ports::{CommandManager, LocalNotifier, Ports, Settings, SystemClock};
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;
use tower::ServiceExt;

const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/commands"),
    ("POST", "/_plugins/_command_manager/commands"),
    ("GET", "/api/v1/orders"),
    ("GET", "/api/v1/orders/"),
    ("POST", "/api/v1/orders/{}/cancel"),
    ("POST", "/api/v1/orders/{}/result"),
    ("GET", "/api/v1/requests/"),
    ("PUT", "/api/v1/agents/"),
    ("GET", "/api/v1/agents/"),
    ("GET", "/api/v1/agents"),
    ("DELETE", "/api/v1/agents/"),
    ("POST", "/api/v1/agents/{}/poll"),
    ("POST", "/api/v1/agents/{}/key"),
    ("POST", "/api/v1/requests/{}/cancel"),
    ("POST", "/api/v1/requests/{}/retry"),
    ("GET", "/api/v1/requests/{}/orders"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
];

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    route: u8,
    /// Path segment or query string spliced into the route.
    path: &'a str,
    query: &'a str,
    json_content_type: bool,
    body: &'a [u8],
}

fn app() -> &'static (Runtime, Router) {
    static APP: OnceLock<(Runtime, Router)> = OnceLock::new();
    APP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let orders = MemoryOrders::new();
        let manager = CommandManager::new(
            Ports {
                requests: Arc::new(orders.requests()),
                orders: Arc::new(orders),
                agents: Arc::new(MemoryAgents::new()),
                components: Arc::new(cm_adapter_memory::MemoryComponents::new()),
                notifier: Arc::new(LocalNotifier::new()),
                clock: Arc::new(SystemClock),
            },
            Settings::default(),
        );
        let state = AppState::new(manager, HttpSettings::default(), AuthSettings::default(), None);
        (runtime, router(state))
    })
}

fuzz_target!(|input: Input<'_>| {
    let (runtime, router) = app();
    let (method, template) = ROUTES[usize::from(input.route) % ROUTES.len()];
    let mut uri = if template.contains("{}") {
        template.replace("{}", input.path)
    } else if template.ends_with('/') {
        format!("{template}{}", input.path)
    } else {
        template.to_owned()
    };
    // A poll never waits here: with `wait=0` first, any other `wait` is a repeated parameter.
    let fixed = if template.ends_with("/poll") { "wait=0&" } else { "" };
    if !input.query.is_empty() || !fixed.is_empty() {
        uri = format!("{uri}?{fixed}{}", input.query);
    }
    let Ok(mut request) = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(uri)
        .body(Body::from(input.body.to_vec()))
    else {
        return; // not a request any client could send
    };
    if input.json_content_type {
        request.headers_mut().insert("content-type", "application/json".parse().expect("header"));
    }
    let status = runtime.block_on(async {
        router.clone().oneshot(request).await.expect("infallible").status()
    });
    assert!(!status.is_server_error(), "{method} got {status}");
});
