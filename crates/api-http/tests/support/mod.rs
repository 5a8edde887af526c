//! The harness of the authentication and bad-input tests: the API in-process over the in-memory
//! adapter, with credentials.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cm_adapter_memory::{MemoryAgents, MemoryComponents, MemoryOrders};
use cm_api_http::{AppState, AuthSettings, HttpSettings, install_metrics_recorder, router};
use cm_ports::{CommandManager, LocalNotifier, Ports, Settings, SystemClock};
use serde_json::{Value, json};
use tower::ServiceExt;

/// The one manager token of [`App::with_auth`].
pub const MANAGER_TOKEN: &str = "manager-token-0123456789abcdef";
/// The configured relay token.
pub const RELAY_TOKEN: &str = "relay-token-0123456789abcdef";
/// A second configured manager token.
pub const OTHER_MANAGER_TOKEN: &str = "second-manager-token-000000";

pub struct App {
    pub router: Router,
    pub state: AppState,
    /// The registry behind the API, to register an agent the way Wazuh would: without a key.
    pub agents: Arc<MemoryAgents>,
    /// The notifier behind the API, to wait until a long-poll is parked
    /// (`cm_ports::testkit::until_poll_waits`).
    pub notifier: Arc<LocalNotifier>,
}

impl App {
    /// Authentication on, with [`MANAGER_TOKEN`] and [`OTHER_MANAGER_TOKEN`].
    pub fn with_auth() -> Self {
        Self::new(HttpSettings::default(), true)
    }

    pub fn new(http: HttpSettings, auth: bool) -> Self {
        Self::with_settings(http, auth, Settings::default())
    }

    /// Like [`App::new`], with the use cases' `settings`.
    pub fn with_settings(http: HttpSettings, auth: bool, settings: Settings) -> Self {
        let agents = Arc::new(MemoryAgents::new());
        let notifier = Arc::new(LocalNotifier::new());
        let orders = MemoryOrders::new();
        let manager = CommandManager::new(
            Ports {
                requests: Arc::new(orders.requests()),
                orders: Arc::new(orders),
                agents: agents.clone(),
                components: Arc::new(MemoryComponents::new()),
                notifier: notifier.clone(),
                clock: Arc::new(SystemClock),
            },
            settings,
        );
        let auth = AuthSettings {
            enabled: auth,
            manager_tokens: vec![MANAGER_TOKEN.to_owned(), OTHER_MANAGER_TOKEN.to_owned()],
            relay_tokens: vec![RELAY_TOKEN.to_owned()],
        };
        let metrics = install_metrics_recorder().expect("metrics recorder");
        let state = AppState::new(manager, http, auth, Some(metrics));
        Self {
            router: router(state.clone()),
            state,
            agents,
            notifier,
        }
    }
}

/// What a request presents in `Authorization`.
#[derive(Debug, Clone)]
pub enum Cred {
    None,
    Bearer(String),
    /// An agent id and key, sent as `Basic`.
    Agent(String, String),
    /// The header's value as given.
    Raw(String),
}

impl Cred {
    pub fn manager() -> Self {
        Self::Bearer(MANAGER_TOKEN.to_owned())
    }

    pub fn relay() -> Self {
        Self::Bearer(RELAY_TOKEN.to_owned())
    }

    pub fn agent(id: &str, key: &str) -> Self {
        Self::Agent(id.to_owned(), key.to_owned())
    }

    fn header(&self) -> Option<String> {
        match self {
            Self::None => None,
            Self::Bearer(t) => Some(format!("Bearer {t}")),
            Self::Agent(id, key) => {
                Some(format!("Basic {}", STANDARD.encode(format!("{id}:{key}"))))
            }
            Self::Raw(v) => Some(v.clone()),
        }
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} answered non-JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an error answer with `status` in our error body and returns its `error` object.
    pub fn error(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        let body = self.json();
        let error = body["error"].clone();
        assert!(error["code"].is_string(), "{body}");
        assert!(error["message"].is_string(), "{body}");
        assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
        error
    }
}

/// A request with a JSON body (when given) and credentials.
pub fn request(method: Method, uri: &str, cred: &Cred, body: Option<&Value>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(value) = cred.header() {
        b = b.header(header::AUTHORIZATION, value);
    }
    match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v.to_string())),
        None => b.body(Body::empty()),
    }
    .expect("request")
}

pub async fn send(app: &App, req: Request<Body>) -> Answer {
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

pub async fn call(
    app: &App,
    method: Method,
    uri: &str,
    cred: &Cred,
    body: Option<&Value>,
) -> Answer {
    send(app, request(method, uri, cred, body)).await
}

/// Registers `id` as a manager and returns its key.
pub async fn register(app: &App, id: &str, groups: &[&str]) -> String {
    let a = call(
        app,
        Method::PUT,
        &format!("/api/v1/agents/{id}"),
        &Cred::manager(),
        Some(&json!({ "groups": groups })),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    a.json()["key"].as_str().expect("a key").to_owned()
}

/// Registers a server component through the API and returns its key.
pub async fn register_component(app: &App, name: &str) -> String {
    let a = call(
        app,
        Method::PUT,
        &format!("/api/v1/servers/{name}"),
        &Cred::manager(),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    a.json()["key"].as_str().expect("key").to_owned()
}

pub fn command(kind: &str, id: &str) -> Value {
    json!({
        "source": "Users/Services",
        "user": "admin",
        "target": {"type": kind, "id": id},
        "action": {"name": "restart", "args": {}, "version": "v5"},
        "timeout": 100
    })
}

/// Submits one command as a manager and returns its order ids.
pub async fn submit(app: &App, command: Value) -> Vec<String> {
    let a = call(
        app,
        Method::POST,
        "/api/v1/commands",
        &Cred::manager(),
        Some(&json!({ "commands": [command] })),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    a.json()["requests"][0]["order_ids"]
        .as_array()
        .expect("order ids")
        .iter()
        .map(|id| id.as_str().expect("an id").to_owned())
        .collect()
}

/// Polls without waiting as `cred` for `agent`.
pub async fn poll(app: &App, agent: &str, cred: &Cred) -> Answer {
    call(
        app,
        Method::POST,
        &format!("/api/v1/agents/{agent}/poll?wait=0"),
        cred,
        None,
    )
    .await
}
