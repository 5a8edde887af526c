//! The real binary serves the operator console beside the API on one listener (docs/console.md),
//! without shadowing the API's routes, and not at all with `console.enabled = false`.

mod support;

use support::Service;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_the_console_beside_the_api() {
    let svc = Service::start(&[("CM_STORAGE__BACKEND", "memory")]);
    // ring, the workspace's one TLS crypto provider: a client panics without one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let page = http.get(svc.url("/")).send().await.expect("console");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.starts_with("default-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(page.text().await.unwrap().contains("<h1>Requests</h1>"));

    let api = http
        .get(svc.url("/api/v1/orders"))
        .send()
        .await
        .expect("api");
    assert_eq!(api.status(), 200, "the API's routes are not shadowed");
    let unknown = http
        .get(svc.url("/no-such-page"))
        .send()
        .await
        .expect("404");
    assert_eq!(unknown.status(), 404);
    let body: serde_json::Value = unknown.json().await.expect("the API's error body");
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(
        http.get(svc.url("/healthz")).send().await.unwrap().status(),
        200
    );
    svc.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_enabled_false_serves_no_page() {
    let svc = Service::start(&[
        ("CM_STORAGE__BACKEND", "memory"),
        ("CM_CONSOLE__ENABLED", "false"),
    ]);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let page = reqwest::get(svc.url("/")).await.expect("answer");
    assert_eq!(page.status(), 404);
    svc.stop();
}
