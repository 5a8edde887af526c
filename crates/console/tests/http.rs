//! The console's HTTP rules, in-process: security headers, sessions, CSRF and origin checks.

mod support;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use cm_console::{Access, CONTENT_SECURITY_POLICY_VALUE, Console, ConsoleSettings};
use tower::ServiceExt;

fn console(auth: bool, tls: bool) -> Router {
    cm_console::router(Console::new(
        support::manager(),
        ConsoleSettings::default(),
        Access {
            auth_enabled: auth,
            manager_tokens: vec![support::MANAGER_TOKEN.to_owned()],
            tls,
        },
    ))
}

async fn get(app: &Router, path: &str, cookie: Option<&str>) -> axum::response::Response {
    let mut req = Request::get(path).header(header::HOST, "console.test");
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    app.clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn post(
    app: &Router,
    path: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    body: &str,
) -> axum::response::Response {
    let mut req = Request::post(path)
        .header(header::HOST, "console.test")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    if let Some(o) = origin {
        req = req.header(header::ORIGIN, o);
    }
    app.clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap()
}

fn set_cookie(r: &axum::response::Response) -> String {
    r.headers()
        .get(header::SET_COOKIE)
        .expect("a session cookie")
        .to_str()
        .unwrap()
        .to_owned()
}

async fn body(r: axum::response::Response) -> String {
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..at + 64].to_owned()
}

#[tokio::test]
async fn every_answer_carries_a_strict_content_security_policy_and_nosniff() {
    let app = console(false, false);
    for path in [
        "/",
        "/new",
        "/agents",
        "/servers",
        "/console/assets/console.css",
    ] {
        let r = get(&app, path, None).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert_eq!(csp, CONTENT_SECURITY_POLICY_VALUE);
        assert!(!csp.contains("unsafe-inline"));
        assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
}

#[tokio::test]
async fn without_auth_the_first_page_starts_a_strict_http_only_session() {
    let app = console(false, false);
    let cookie = set_cookie(&get(&app, "/", None).await);
    assert!(cookie.starts_with("cm_console="), "{cookie}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: no Secure flag");
}

#[tokio::test]
async fn under_tls_the_session_cookie_is_secure_and_host_bound() {
    let app = console(true, true);
    let r = post(
        &app,
        "/login",
        None,
        Some("https://console.test"),
        &format!("token={}", support::MANAGER_TOKEN),
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = set_cookie(&r);
    assert!(
        cookie.starts_with("__Host-cm_console=") && cookie.contains("; Secure"),
        "{cookie}"
    );
}

#[tokio::test]
async fn a_post_from_another_origin_or_without_the_session_token_is_refused() {
    let app = console(false, false);
    let first = get(&app, "/new", None).await;
    let cookie = set_cookie(&first);
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let csrf = csrf_of(&body(first).await);
    let form = |token: &str| {
        format!("csrf={token}&target_type=agent&target_id=a1&action=x&timeout=10&intent=preview")
    };

    let foreign = post(
        &app,
        "/new",
        Some(&cookie),
        Some("http://evil.test"),
        &form(&csrf),
    )
    .await;
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    let tokenless = post(
        &app,
        "/new",
        Some(&cookie),
        Some("http://console.test"),
        &form(""),
    )
    .await;
    assert_eq!(tokenless.status(), StatusCode::FORBIDDEN);
    let sessionless = post(
        &app,
        "/new",
        None,
        Some("http://console.test"),
        &form(&csrf),
    )
    .await;
    assert_eq!(sessionless.status(), StatusCode::FORBIDDEN);
    // With both, the form is handled (the agent is unknown: the preview says so).
    let ok = post(
        &app,
        "/new",
        Some(&cookie),
        Some("http://console.test"),
        &form(&csrf),
    )
    .await;
    assert_eq!(ok.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body(ok).await.contains("not registered"));
}

#[tokio::test]
async fn with_auth_pages_redirect_to_login_and_script_endpoints_answer_401() {
    let app = console(true, false);
    for path in ["/", "/new", "/agents", "/servers"] {
        let r = get(&app, path, None).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.headers()[header::LOCATION], "/login");
    }
    let live = get(&app, "/console/live/requests", None).await;
    assert_eq!(live.status(), StatusCode::UNAUTHORIZED);
    let wrong = post(
        &app,
        "/login",
        None,
        None,
        "token=wrong-token-of-some-length",
    )
    .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let login = post(
        &app,
        "/login",
        None,
        None,
        &format!("token={}", support::MANAGER_TOKEN),
    )
    .await;
    let cookie = set_cookie(&login);
    let cookie = cookie.split(';').next().unwrap();
    assert_eq!(get(&app, "/", Some(cookie)).await.status(), StatusCode::OK);
}
