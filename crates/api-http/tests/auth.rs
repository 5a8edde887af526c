//! Authentication and roles, agents' keys, the cap of open long-polls and TLS: in-process over
//! the in-memory adapter, and over real sockets for TLS.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use cm_api_http::{AuthSettings, HttpSettings, TlsSettings, check_exposure, serve};
use cm_domain::{Agent, AgentId};
use cm_ports::AgentRegistry;
use cm_ports::testkit::until_poll_waits;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::support::{
    Answer, App, Cred, MANAGER_TOKEN, OTHER_MANAGER_TOKEN, call, command, poll, register,
    register_component, send, submit,
};

// ---------------------------------------------------------------------------------------------
// The route × credential matrix

/// The credentials of each column, in the order they are tried on every row.
const COLUMNS: [&str; 9] = [
    "none",
    "wrong token",
    "wrong key",
    "another agent",
    "the agent itself",
    "manager",
    "the component",
    "other component",
    "relay",
];

/// Expected statuses of a management route whose manager call answers `ok`.
const fn manager_only(ok: u16) -> [u16; 9] {
    [401, 401, 401, 403, 403, ok, 403, 403, 403]
}

/// Expected statuses of a route of agent `a1` whose call by `a1` answers `ok`.
const fn agent_a1(ok: u16) -> [u16; 9] {
    [401, 401, 401, 403, ok, 403, 403, 403, 403]
}

/// Expected statuses of a route of component `c1` whose call by `c1` answers `ok`.
const fn component_c1(ok: u16) -> [u16; 9] {
    [401, 401, 401, 403, 403, 403, ok, 403, 403]
}

/// Expected statuses of a route for relays whose call by a relay answers `ok`.
const fn relay_only(ok: u16) -> [u16; 9] {
    [401, 401, 401, 403, 403, 403, 403, 403, ok]
}

/// Expected statuses of an open route.
const fn open(ok: u16) -> [u16; 9] {
    [ok; 9]
}

struct Row {
    method: Method,
    /// The route template, as the OpenAPI document names it.
    route: &'static str,
    uri: String,
    body: Option<Value>,
    expected: [u16; 9],
}

fn row(
    method: Method,
    route: &'static str,
    uri: impl Into<String>,
    body: Option<Value>,
    expected: [u16; 9],
) -> Row {
    Row {
        method,
        route,
        uri: uri.into(),
        body,
        expected,
    }
}

#[tokio::test]
async fn every_route_answers_each_kind_of_credentials_with_its_expected_status() {
    let app = App::with_auth();
    let a1_key = register(&app, "a1", &["g"]).await;
    let a2_key = register(&app, "a2", &["g"]).await;
    register(&app, "doomed", &[]).await;
    register(&app, "rotated", &[]).await;
    let delivered = submit(&app, command("agent", "a1")).await[0].clone();
    assert_eq!(
        poll(&app, "a1", &Cred::agent("a1", &a1_key)).await.status,
        StatusCode::OK
    );
    let pending = submit(&app, command("server", "s")).await[0].clone();
    let request_of = |order: String| {
        let app = &app;
        async move {
            call(
                app,
                Method::GET,
                &format!("/api/v1/orders/{order}"),
                &Cred::manager(),
                None,
            )
            .await
            .json()["command"]["request_id"]
                .as_str()
                .expect("request id")
                .to_owned()
        }
    };
    let request_id = request_of(delivered.clone()).await;
    // The pending order's request: cancelled by its row, then re-run by the retry's row.
    let pending_request = request_of(pending.clone()).await;

    let c1_key = register_component(&app, "c1").await;
    let c2_key = register_component(&app, "c2").await;
    register_component(&app, "doomed-c").await;
    register_component(&app, "rotated-c").await;
    let credentials = [
        Cred::None,
        Cred::Bearer("not-a-configured-token-000".to_owned()),
        Cred::agent("a1", "not-the-key-of-a1"),
        Cred::agent("a2", &a2_key),
        Cred::agent("a1", &a1_key),
        Cred::manager(),
        Cred::agent("c1", &c1_key),
        Cred::agent("c2", &c2_key),
        Cred::relay(),
    ];
    let submit_body = json!({"commands": [command("server", "s")]});
    let rows = vec![
        row(
            Method::POST,
            "/api/v1/commands",
            "/api/v1/commands",
            Some(submit_body.clone()),
            manager_only(201),
        ),
        row(
            Method::POST,
            "/_plugins/_command_manager/commands",
            "/_plugins/_command_manager/commands",
            Some(submit_body),
            manager_only(200),
        ),
        row(
            Method::GET,
            "/api/v1/orders",
            "/api/v1/orders",
            None,
            manager_only(200),
        ),
        row(
            Method::GET,
            "/api/v1/orders/{order_id}",
            format!("/api/v1/orders/{delivered}"),
            None,
            manager_only(200),
        ),
        row(
            Method::POST,
            "/api/v1/orders/{order_id}/cancel",
            format!("/api/v1/orders/{pending}/cancel"),
            None,
            manager_only(200),
        ),
        row(
            Method::GET,
            "/api/v1/requests/{request_id}",
            format!("/api/v1/requests/{request_id}"),
            None,
            manager_only(200),
        ),
        row(
            Method::GET,
            "/api/v1/requests/{request_id}/orders",
            format!("/api/v1/requests/{request_id}/orders?status=sent"),
            None,
            manager_only(200),
        ),
        row(
            Method::GET,
            "/api/v1/requests",
            "/api/v1/requests?size=5",
            None,
            manager_only(200),
        ),
        row(
            Method::GET,
            "/api/v1/requests/{request_id}/results",
            format!("/api/v1/requests/{request_id}/results"),
            None,
            manager_only(200),
        ),
        row(
            Method::POST,
            "/api/v1/requests/{request_id}/pause",
            format!("/api/v1/requests/{request_id}/pause"),
            None,
            manager_only(200),
        ),
        row(
            Method::POST,
            "/api/v1/requests/{request_id}/resume",
            format!("/api/v1/requests/{request_id}/resume"),
            None,
            manager_only(200),
        ),
        row(
            Method::POST,
            "/api/v1/requests/{request_id}/cancel",
            format!("/api/v1/requests/{pending_request}/cancel"),
            None,
            manager_only(200),
        ),
        row(
            Method::POST,
            "/api/v1/requests/{request_id}/retry",
            format!("/api/v1/requests/{pending_request}/retry?status=failure"),
            None,
            manager_only(201),
        ),
        row(
            Method::GET,
            "/api/v1/agents",
            "/api/v1/agents",
            None,
            manager_only(200),
        ),
        row(
            Method::PUT,
            "/api/v1/agents",
            "/api/v1/agents",
            Some(json!({"agents": [{"id": "bulk1", "groups": ["g"]}]})),
            manager_only(200),
        ),
        row(
            Method::PUT,
            "/api/v1/agents/{agent_id}",
            "/api/v1/agents/a3",
            Some(json!({"groups": []})),
            manager_only(201),
        ),
        row(
            Method::GET,
            "/api/v1/agents/{agent_id}",
            "/api/v1/agents/a1",
            None,
            manager_only(200),
        ),
        row(
            Method::DELETE,
            "/api/v1/agents/{agent_id}",
            "/api/v1/agents/doomed",
            None,
            manager_only(204),
        ),
        row(
            Method::POST,
            "/api/v1/agents/{agent_id}/key",
            "/api/v1/agents/rotated/key",
            None,
            manager_only(200),
        ),
        row(Method::GET, "/metrics", "/metrics", None, manager_only(200)),
        row(
            Method::POST,
            "/api/v1/agents/{agent_id}/poll",
            "/api/v1/agents/a1/poll?wait=0",
            None,
            agent_a1(200),
        ),
        row(
            Method::POST,
            "/api/v1/orders/{order_id}/result",
            format!("/api/v1/orders/{delivered}/result"),
            Some(json!({"status": "success", "code": 0})),
            // A component may report only its own orders; a relay any (the same result again:
            // already applied, 200).
            [401, 401, 401, 403, 200, 403, 403, 403, 200],
        ),
        row(
            Method::GET,
            "/api/v1/servers",
            "/api/v1/servers",
            None,
            manager_only(200),
        ),
        row(
            Method::PUT,
            "/api/v1/servers/{component}",
            "/api/v1/servers/c3",
            None,
            // Created by the manager's call; nobody else gets that far.
            manager_only(201),
        ),
        row(
            Method::DELETE,
            "/api/v1/servers/{component}",
            "/api/v1/servers/doomed-c",
            None,
            manager_only(204),
        ),
        row(
            Method::POST,
            "/api/v1/servers/{component}/key",
            "/api/v1/servers/rotated-c/key",
            None,
            manager_only(200),
        ),
        row(
            Method::POST,
            "/api/v1/servers/{component}/poll",
            "/api/v1/servers/c1/poll?wait=0",
            None,
            component_c1(200),
        ),
        row(
            Method::POST,
            "/api/v1/relay/claim",
            "/api/v1/relay/claim",
            Some(json!({"agents": ["a1", "a2"], "servers": ["c1"], "wait": 0})),
            relay_only(200),
        ),
        row(
            Method::POST,
            "/api/v1/results",
            "/api/v1/results",
            Some(json!({"results": [{"order_id": delivered, "status": "success", "code": 0}]})),
            // 200 for every deliverer: an item it may not report is that item's `forbidden`.
            [401, 401, 401, 200, 200, 403, 200, 200, 200],
        ),
        row(Method::GET, "/healthz", "/healthz", None, open(200)),
        row(Method::GET, "/readyz", "/readyz", None, open(200)),
        row(
            Method::GET,
            "/openapi.json",
            "/openapi.json",
            None,
            open(200),
        ),
    ];

    let mut failures = Vec::new();
    let mut table = format!("{:<55}", "route");
    for c in COLUMNS {
        table.push_str(&format!(" | {c:>16}"));
    }
    for r in &rows {
        table.push_str(&format!("\n{:<55}", format!("{} {}", r.method, r.route)));
        for (i, cred) in credentials.iter().enumerate() {
            let a = call(&app, r.method.clone(), &r.uri, cred, r.body.as_ref()).await;
            let got = a.status.as_u16();
            table.push_str(&format!(" | {got:>16}"));
            if got != r.expected[i] {
                failures.push(format!(
                    "{} {} with {}: {got}, expected {}: {}",
                    r.method,
                    r.uri,
                    COLUMNS[i],
                    r.expected[i],
                    a.text()
                ));
                continue;
            }
            match got {
                401 => {
                    assert_eq!(
                        a.error(StatusCode::UNAUTHORIZED)["code"],
                        json!("unauthorized")
                    );
                    assert!(
                        a.headers.contains_key(header::WWW_AUTHENTICATE),
                        "{}",
                        r.uri
                    );
                }
                403 => assert_eq!(a.error(StatusCode::FORBIDDEN)["code"], json!("forbidden")),
                _ => {}
            }
        }
    }
    println!("{table}");
    assert!(failures.is_empty(), "{table}\n\n{}", failures.join("\n"));

    // Every route of the OpenAPI document has its row.
    let doc = call(&app, Method::GET, "/openapi.json", &Cred::None, None)
        .await
        .json();
    let documented: BTreeSet<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .map(move |m| format!("{} {path}", m.to_uppercase()))
        })
        .collect();
    let covered: BTreeSet<String> = rows
        .iter()
        .map(|r| format!("{} {}", r.method, r.route))
        .collect();
    assert_eq!(covered, documented);
}

#[tokio::test]
async fn missing_malformed_or_unknown_credentials_are_401_with_a_challenge_and_no_echo() {
    let app = App::with_auth();
    let a1_key = register(&app, "a1", &[]).await;
    let a2_key = register(&app, "a2", &[]).await;
    let basic = |raw: &[u8]| Cred::Raw(format!("Basic {}", STANDARD.encode(raw)));
    let cases = [
        Cred::None,
        Cred::Raw("Bearer".to_owned()),
        Cred::Raw("Bearer ".to_owned()),
        Cred::Raw(format!("Token {MANAGER_TOKEN}")),
        Cred::Raw(MANAGER_TOKEN.to_owned()),
        Cred::Bearer(MANAGER_TOKEN[..MANAGER_TOKEN.len() - 1].to_owned()),
        Cred::Bearer(format!("{MANAGER_TOKEN}x")),
        Cred::Bearer(a1_key.clone()),
        Cred::Raw("Basic !!!not-base64!!!".to_owned()),
        basic(b"a1"),
        basic(format!("a1{a1_key}").as_bytes()),
        basic(b"\xff\xfe:\xff"),
        basic(format!("ghost:{a1_key}").as_bytes()),
        basic(format!("A1:{a1_key}").as_bytes()),
        basic(format!("a/1:{a1_key}").as_bytes()),
        basic(format!("a1:{a2_key}").as_bytes()),
        basic(format!("a1:{MANAGER_TOKEN}").as_bytes()),
        basic(format!("a1:{a1_key} ").as_bytes()),
        basic(b":"),
    ];
    for cred in &cases {
        let a = poll(&app, "a1", cred).await;
        let error = a.error(StatusCode::UNAUTHORIZED);
        assert_eq!(error["code"], json!("unauthorized"), "{cred:?}");
        let challenges: Vec<&str> = a
            .headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .map(|v| v.to_str().expect("ascii"))
            .collect();
        assert!(
            challenges.iter().any(|c| c.starts_with("Bearer "))
                && challenges.iter().any(|c| c.starts_with("Basic ")),
            "{challenges:?}"
        );
        let text = a.text();
        for secret in [MANAGER_TOKEN, a1_key.as_str(), a2_key.as_str()] {
            assert!(!text.contains(secret), "{cred:?} echoed: {text}");
        }
    }
    // Two Authorization headers are refused even when both are valid.
    let req = Request::builder()
        .method(Method::GET)
        .uri("/api/v1/orders")
        .header(header::AUTHORIZATION, format!("Bearer {MANAGER_TOKEN}"))
        .header(header::AUTHORIZATION, format!("Bearer {MANAGER_TOKEN}"))
        .body(Body::empty())
        .expect("request");
    send(&app, req).await.error(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn schemes_are_case_insensitive_padding_is_optional_and_every_manager_token_works() {
    let app = App::with_auth();
    let key = register(&app, "a1", &[]).await;
    for cred in [
        Cred::Raw(format!("bearer {MANAGER_TOKEN}")),
        Cred::Raw(format!("BEARER  {OTHER_MANAGER_TOKEN}")),
        Cred::Bearer(OTHER_MANAGER_TOKEN.to_owned()),
    ] {
        let a = call(&app, Method::GET, "/api/v1/orders", &cred, None).await;
        assert_eq!(a.status, StatusCode::OK, "{cred:?}: {}", a.text());
    }
    for cred in [
        Cred::Raw(format!("basic {}", STANDARD.encode(format!("a1:{key}")))),
        Cred::Raw(format!(
            "Basic {}",
            STANDARD_NO_PAD.encode(format!("a1:{key}"))
        )),
    ] {
        let a = poll(&app, "a1", &cred).await;
        assert_eq!(a.status, StatusCode::OK, "{cred:?}: {}", a.text());
    }
}

#[tokio::test]
async fn an_agent_id_holding_a_colon_authenticates_with_its_key() {
    let app = App::with_auth();
    let key = register(&app, "web-01.example:x", &[]).await;
    let a = poll(
        &app,
        "web-01.example:x",
        &Cred::agent("web-01.example:x", &key),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
}

#[tokio::test]
async fn an_agent_may_report_only_on_its_own_orders() {
    let app = App::with_auth();
    let a1 = Cred::agent("a1", &register(&app, "a1", &[]).await);
    let a2 = Cred::agent("a2", &register(&app, "a2", &[]).await);
    let id = submit(&app, command("agent", "a1")).await[0].clone();
    poll(&app, "a1", &a1).await;
    let uri = format!("/api/v1/orders/{id}/result");
    let report = json!({"status": "success", "code": 0});
    let error = call(&app, Method::POST, &uri, &a2, Some(&report))
        .await
        .error(StatusCode::FORBIDDEN);
    assert_eq!(error["code"], json!("forbidden"));
    let o = call(
        &app,
        Method::GET,
        &format!("/api/v1/orders/{id}"),
        &Cred::manager(),
        None,
    )
    .await
    .json();
    assert_eq!(
        o["command"]["status"],
        json!("sent"),
        "unchanged by the refused report"
    );
    let a = call(&app, Method::POST, &uri, &a1, Some(&report)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    // A server order belongs to no agent: no agent may report on it.
    let server = submit(&app, command("server", "s")).await[0].clone();
    call(
        &app,
        Method::POST,
        &format!("/api/v1/orders/{server}/result"),
        &a1,
        Some(&report),
    )
    .await
    .error(StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn with_authentication_off_every_route_is_open_and_credentials_are_ignored() {
    let app = App::new(HttpSettings::default(), false);
    let a = call(&app, Method::GET, "/metrics", &Cred::None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = call(
        &app,
        Method::PUT,
        "/api/v1/agents/a1",
        &Cred::Bearer("whatever".to_owned()),
        Some(&json!({"groups": []})),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    let id = submit(&app, command("agent", "a1")).await[0].clone();
    assert_eq!(poll(&app, "a1", &Cred::None).await.status, StatusCode::OK);
    let a = call(
        &app,
        Method::POST,
        &format!("/api/v1/orders/{id}/result"),
        &Cred::None,
        Some(&json!({"status": "success", "code": 0})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
}

// ---------------------------------------------------------------------------------------------
// Keys

/// Every text a manager can read about agents and orders.
async fn everything_readable(app: &App) -> String {
    let mut all = String::new();
    for uri in [
        "/api/v1/agents",
        "/api/v1/agents/a1",
        "/api/v1/orders",
        "/metrics",
    ] {
        all.push_str(
            &call(app, Method::GET, uri, &Cred::manager(), None)
                .await
                .text(),
        );
    }
    all
}

#[tokio::test]
async fn a_new_agent_gets_its_key_once_and_the_key_never_appears_again() {
    let app = App::with_auth();
    let a = call(
        &app,
        Method::PUT,
        "/api/v1/agents/a1",
        &Cred::manager(),
        Some(&json!({"groups": ["g"]})),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
    let body = a.json();
    let key = body["key"].as_str().expect("a key").to_owned();
    assert_eq!(key.len(), 43);
    assert_eq!(body, json!({"id": "a1", "groups": ["g"], "key": key}));

    let got = call(
        &app,
        Method::GET,
        "/api/v1/agents/a1",
        &Cred::manager(),
        None,
    )
    .await
    .json();
    assert_eq!(got, json!({"id": "a1", "groups": ["g"]}));
    let again = call(
        &app,
        Method::PUT,
        "/api/v1/agents/a1",
        &Cred::manager(),
        Some(&json!({"groups": ["h"]})),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json(), json!({"id": "a1", "groups": ["h"]}));
    assert!(!everything_readable(&app).await.contains(&key));
    assert_eq!(
        poll(&app, "a1", &Cred::agent("a1", &key)).await.status,
        StatusCode::OK,
        "an update keeps the key"
    );
}

#[tokio::test]
async fn rotating_a_key_makes_the_old_one_stop_working_at_once() {
    let app = App::with_auth();
    let old = register(&app, "a1", &[]).await;
    let a = call(
        &app,
        Method::POST,
        "/api/v1/agents/a1/key",
        &Cred::manager(),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
    let body = a.json();
    let new = body["key"].as_str().expect("a key").to_owned();
    assert_eq!(body, json!({"id": "a1", "key": new}));
    assert_ne!(new, old);
    poll(&app, "a1", &Cred::agent("a1", &old))
        .await
        .error(StatusCode::UNAUTHORIZED);
    assert_eq!(
        poll(&app, "a1", &Cred::agent("a1", &new)).await.status,
        StatusCode::OK
    );
    assert!(!everything_readable(&app).await.contains(&new));
    let error = call(
        &app,
        Method::POST,
        "/api/v1/agents/ghost/key",
        &Cred::manager(),
        None,
    )
    .await
    .error(StatusCode::NOT_FOUND);
    assert_eq!(error["code"], json!("not_found"));
    // An agent cannot rotate its own key: that is a manager's act.
    call(
        &app,
        Method::POST,
        "/api/v1/agents/a1/key",
        &Cred::agent("a1", &new),
        None,
    )
    .await
    .error(StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_agent_registered_without_a_key_authenticates_only_once_a_key_is_issued() {
    let app = App::with_auth();
    // As Wazuh registers agents in `wazuh-agents`: no key.
    let id = AgentId::parse("w1", "id").expect("id");
    app.agents
        .upsert(&Agent::new(id, Vec::new()))
        .await
        .expect("upsert");
    for key in [
        "",
        "anything",
        "0000000000000000000000000000000000000000000",
    ] {
        poll(&app, "w1", &Cred::agent("w1", key))
            .await
            .error(StatusCode::UNAUTHORIZED);
    }
    let a = call(
        &app,
        Method::POST,
        "/api/v1/agents/w1/key",
        &Cred::manager(),
        None,
    )
    .await;
    let key = a.json()["key"].as_str().expect("a first key").to_owned();
    assert_eq!(
        poll(&app, "w1", &Cred::agent("w1", &key)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn deleting_an_agent_revokes_its_key_and_registering_it_again_issues_a_new_one() {
    let app = App::with_auth();
    let old = register(&app, "a1", &[]).await;
    let a = call(
        &app,
        Method::DELETE,
        "/api/v1/agents/a1",
        &Cred::manager(),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    poll(&app, "a1", &Cred::agent("a1", &old))
        .await
        .error(StatusCode::UNAUTHORIZED);
    let new = register(&app, "a1", &[]).await;
    assert_ne!(new, old);
    poll(&app, "a1", &Cred::agent("a1", &old))
        .await
        .error(StatusCode::UNAUTHORIZED);
    assert_eq!(
        poll(&app, "a1", &Cred::agent("a1", &new)).await.status,
        StatusCode::OK
    );
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

#[tokio::test]
async fn credentials_and_keys_never_reach_the_logs_even_at_trace_level() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // A second live dispatch: with only one, tracing-core computes a callsite's interest from
    // the default of the thread that first reaches it (tokio-rs/tracing#3611), so a test running
    // alongside, on a thread without a subscriber, would turn our callsites off for good.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = App::with_auth();
    let key = register(&app, "a1", &[]).await;
    let id = submit(&app, command("agent", "a1")).await[0].clone();
    let a1 = Cred::agent("a1", &key);
    poll(&app, "a1", &a1).await;
    call(
        &app,
        Method::POST,
        &format!("/api/v1/orders/{id}/result"),
        &a1,
        Some(&json!({"status": "success", "code": 0})),
    )
    .await;
    let rotated = call(
        &app,
        Method::POST,
        "/api/v1/agents/a1/key",
        &Cred::manager(),
        None,
    )
    .await
    .json()["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let wrong = "wrong-token-that-must-not-be-logged";
    call(
        &app,
        Method::GET,
        "/api/v1/orders",
        &Cred::Bearer(wrong.to_owned()),
        None,
    )
    .await;
    poll(&app, "a1", &Cred::agent("a1", "wrong-key-not-logged")).await;

    let text = logs.text();
    assert!(
        text.contains("/api/v1/agents/{agent_id}/poll"),
        "requests are traced: {text}"
    );
    for secret in [
        MANAGER_TOKEN,
        key.as_str(),
        rotated.as_str(),
        wrong,
        "wrong-key-not-logged",
        &STANDARD.encode(format!("a1:{key}")),
    ] {
        assert!(!text.contains(secret), "{secret} was logged:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// The cap of open long-polls

fn capped(max_open_polls: usize) -> App {
    App::new(
        HttpSettings {
            max_open_polls,
            retry_after_secs: 3,
            ..HttpSettings::default()
        },
        false,
    )
}

fn spawn_poll(app: &App, uri: &str) -> tokio::task::JoinHandle<Answer> {
    let router = app.router.clone();
    let req = support::request(Method::POST, uri, &Cred::None, None);
    tokio::spawn(async move {
        use tower::ServiceExt;
        let res = router.oneshot(req).await.expect("infallible");
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
    })
}

/// Waits until the poll `task` of `agent` is parked in the service.
async fn until_parked(app: &App, agent: &str, task: &tokio::task::JoinHandle<Answer>) {
    let agent = AgentId::parse(agent, "agent").expect("agent id");
    until_poll_waits(app.notifier.as_ref(), &agent, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_beyond_the_cap_of_open_long_polls_answers_503_with_retry_after_at_once() {
    let app = capped(2);
    let first = spawn_poll(&app, "/api/v1/agents/a1/poll?wait=60");
    let second = spawn_poll(&app, "/api/v1/agents/a2/poll?wait=60");
    until_parked(&app, "a1", &first).await;
    until_parked(&app, "a2", &second).await;

    // `wait=0`, and both slots are held for a minute: an answer now is a refusal at once.
    let a = poll(&app, "a3", &Cred::None).await;
    let error = a.error(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error["code"], json!("overloaded"));
    assert_eq!(a.headers[header::RETRY_AFTER], "3");

    // End the two open polls the way polls end: an order for each.
    for agent in ["a1", "a2"] {
        register(&app, agent, &["g"]).await;
        submit(&app, command("agent", agent)).await;
    }
    for open in [first, second] {
        let a = open.await.expect("poll task");
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert_eq!(a.json()["orders"].as_array().map(Vec::len), Some(1));
    }
    assert_eq!(
        poll(&app, "a3", &Cred::None).await.status,
        StatusCode::OK,
        "the slots are free again once the polls ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_whose_client_went_away_frees_its_slot() {
    let app = capped(1);
    let gone = spawn_poll(&app, "/api/v1/agents/a1/poll?wait=30");
    until_parked(&app, "a1", &gone).await;
    poll(&app, "a2", &Cred::None)
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE);
    gone.abort();
    let _ = gone.await;
    assert_eq!(poll(&app, "a2", &Cred::None).await.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// TLS

struct Pki {
    dir: tempfile::TempDir,
    tls: TlsSettings,
    cert_der: tokio_rustls::rustls::pki_types::CertificateDer<'static>,
}

/// A self-signed certificate for `localhost` and its key, in PEM files.
fn self_signed() -> Pki {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("write key");
    Pki {
        dir,
        tls: TlsSettings {
            cert_path,
            key_path,
        },
        cert_der: certified.cert.der().clone(),
    }
}

fn client(trusted: &Pki) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(trusted.cert_der.clone())
        .expect("trust the certificate");
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn https_get(connector: &TlsConnector, addr: std::net::SocketAddr, path: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("server name");
    let mut tls = connector.connect(name, tcp).await.expect("tls handshake");
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_terminates_tls_for_a_client_that_trusts_the_certificate() {
    let pki = self_signed();
    let app = App::new(
        HttpSettings {
            tls: Some(pki.tls.clone()),
            ..HttpSettings::default()
        },
        false,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, app.state.clone(), async move {
        let _ = stopped.await;
    }));

    // A client that connects and never starts its handshake holds up no one.
    let _silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let connector = client(&pki);
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        https_get(&connector, addr, "/healthz"),
    )
    .await
    .expect("answered while another handshake is pending");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(r#"{"status":"ok"}"#), "{answer}");
    let answer = https_get(&connector, addr, "/api/v1/orders").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut out)).await;
    assert!(
        !out.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );

    // A client that does not trust the certificate cannot connect.
    let stranger = client(&self_signed());
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("server name");
    assert!(stranger.connect(name, tcp).await.is_err());

    stop.send(()).expect("server running");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stopped")
        .expect("server task")
        .expect("served without error");
    drop(pki.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_finishes_is_dropped_after_the_header_timeout() {
    let pki = self_signed();
    let app = App::new(
        HttpSettings {
            tls: Some(pki.tls.clone()),
            header_read_timeout_secs: 1,
            ..HttpSettings::default()
        },
        false,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, app.state.clone(), async move {
        let _ = stopped.await;
    }));
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // Half a ClientHello, then nothing.
    silent.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
    let mut out = Vec::new();
    let _ = silent.read_to_end(&mut out).await;
    assert!(out.is_empty(), "{out:?}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    // A client that completes its handshake is still served.
    let answer = https_get(&client(&pki), addr, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop.send(()).expect("server running");
    server
        .await
        .expect("server task")
        .expect("served without error");
    drop(pki.dir);
}

#[tokio::test]
async fn unusable_tls_files_stop_start_up_naming_the_setting() {
    let pki = self_signed();
    let other = self_signed();
    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a pem file\n").expect("write");
    let missing = pki.dir.path().join("missing.pem");
    let http = |cert: &std::path::Path, key: &std::path::Path| HttpSettings {
        tls: Some(TlsSettings {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
        }),
        ..HttpSettings::default()
    };
    let off = AuthSettings::default();
    for (settings, named) in [
        (http(&missing, &pki.tls.key_path), "http.tls.cert_path"),
        (http(&garbage, &pki.tls.key_path), "http.tls.cert_path"),
        (
            http(&pki.tls.key_path, &pki.tls.key_path),
            "http.tls.cert_path",
        ),
        (http(&pki.tls.cert_path, &missing), "http.tls.key_path"),
        (http(&pki.tls.cert_path, &garbage), "http.tls.key_path"),
        (
            http(&pki.tls.cert_path, &pki.tls.cert_path),
            "http.tls.key_path",
        ),
        (
            http(&pki.tls.cert_path, &other.tls.key_path),
            "http.tls.key_path",
        ),
    ] {
        let err = check_exposure(&settings, &off).unwrap_err();
        assert!(err.contains(named), "{settings:?}: {err}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let app = App::new(settings, false);
        let err = serve(listener, app.state.clone(), std::future::ready(()))
            .await
            .expect_err("serve refuses the files");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains(named), "{err}");
    }
    assert_eq!(
        check_exposure(&http(&pki.tls.cert_path, &pki.tls.key_path), &off),
        Ok(())
    );
}

// ---------------------------------------------------------------------------------------------
// The security model in the OpenAPI document

#[tokio::test]
async fn the_openapi_document_states_the_security_of_every_operation() {
    let app = App::with_auth();
    let doc = call(&app, Method::GET, "/openapi.json", &Cred::None, None)
        .await
        .json();
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["manager_token"]["type"], json!("http"));
    assert_eq!(schemes["manager_token"]["scheme"], json!("bearer"));
    assert_eq!(schemes["agent_key"]["type"], json!("http"));
    assert_eq!(schemes["agent_key"]["scheme"], json!("basic"));
    assert_eq!(schemes["relay_token"]["scheme"], json!("bearer"));
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    for (path, method, security) in [
        ("/api/v1/commands", "post", json!([{"manager_token": []}])),
        (
            "/api/v1/agents/{agent_id}/key",
            "post",
            json!([{"manager_token": []}]),
        ),
        ("/metrics", "get", json!([{"manager_token": []}])),
        (
            "/api/v1/agents/{agent_id}/poll",
            "post",
            json!([{"agent_key": []}]),
        ),
        (
            "/api/v1/orders/{order_id}/result",
            "post",
            json!([{"agent_key": []}, {"relay_token": []}]),
        ),
        (
            "/api/v1/results",
            "post",
            json!([{"agent_key": []}, {"relay_token": []}]),
        ),
        (
            "/api/v1/servers/{component}/poll",
            "post",
            json!([{"agent_key": []}]),
        ),
        ("/api/v1/relay/claim", "post", json!([{"relay_token": []}])),
        (
            "/api/v1/servers/{component}",
            "put",
            json!([{"manager_token": []}]),
        ),
        ("/healthz", "get", json!([])),
        ("/openapi.json", "get", json!([])),
    ] {
        let o = op(path, method);
        assert_eq!(o["security"], security, "{method} {path}");
        let protected = security != json!([]);
        for status in ["401", "403"] {
            assert_eq!(
                o["responses"].get(status).is_some(),
                protected,
                "{method} {path} {status}"
            );
        }
    }
    let description = doc["info"]["description"].as_str().expect("description");
    assert!(description.contains("auth.manager_tokens"), "{description}");
}
