//! The console in a real browser: headless Chromium over WebDriver, against a console served
//! in-process over the memory backend (`support`). `cargo xtask test` checks that Chromium and
//! chromedriver are installed and says how to install them otherwise.
//!
//! The tests take turns (one Chromium at a time) and wait on conditions in the page, never on
//! the clock.

mod support;

use cm_domain::{ReportStatus, RequestState};
use fantoccini::{Client, Locator};
use serde_json::json;
use support::{Driver, MANAGER_TOKEN, Served, serve, text, wait_for};

/// One browser at a time: the machine's cores are few.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DESKTOP: (u32, u32) = (1280, 800);
const PHONE: (u32, u32) = (390, 844);

async fn click(c: &Client, css: &str) {
    // A live region may be replaced between the find and the click: find it again then.
    loop {
        let found = c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        match found.click().await {
            Ok(_) => return,
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
            Err(e) => panic!("click {css}: {e}"),
        }
    }
}

async fn path_is(c: &Client, path: &str) {
    wait_for(
        c,
        &format!("return window.location.pathname === {};", json!(path)),
    )
    .await;
}

async fn state_of(s: &Served, id: &cm_domain::RequestId) -> RequestState {
    s.manager
        .request(id)
        .await
        .expect("request read")
        .expect("request exists")
        .record
        .expect("record")
        .state()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_shows_a_submitted_request_and_its_bar_moves_as_agents_report() {
    let _turn = TURN.lock().await;
    let s = serve(false).await;
    s.agent("web-1", &["web"]).await;
    s.agent("web-2", &["web"]).await;
    let id = s.submit("web", "restart-web", "alice", json!({})).await;
    let other = s.submit("web", "other-action", "bob", json!({})).await;
    let mut driver = Driver::start();
    let (c, _profile) = driver.browser(DESKTOP.0, DESKTOP.1).await;

    c.goto(&s.url("/?action=restart-web")).await.expect("list");
    let row = format!("tr[data-request=\"{id}\"]");
    let counts = format!("document.querySelector('{row} .c-ok')");
    wait_for(
        &c,
        &format!("return {counts} !== null && {counts}.textContent === '0 success';"),
    )
    .await;
    assert!(
        text(&c).await.contains("alice"),
        "the row shows who submitted it"
    );

    s.report_all("web-1", ReportStatus::Success, 0, "ok").await;
    // The page updates itself, filters kept: the bar moves, the other request stays out.
    wait_for(&c, &format!("return {counts}.textContent === '1 success';")).await;
    wait_for(
        &c,
        "return document.querySelector('#live').hasAttribute('data-refreshed');",
    )
    .await;
    assert!(
        c.find(Locator::Css(&format!("tr[data-request=\"{other}\"]")))
            .await
            .is_err(),
        "the action filter holds across live updates"
    );
    assert_eq!(
        c.current_url().await.expect("url").query(),
        Some("action=restart-web"),
        "no reload, the filters stay in the URL"
    );
    let bar = c
        .execute(
            &format!("return document.querySelector('{row} svg.bar').getAttribute('aria-label');"),
            vec![],
        )
        .await
        .expect("label");
    assert_eq!(
        bar,
        json!("1 of 2 succeeded, 0 failed, 0 in flight, 1 waiting")
    );
    c.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detail_page_shows_the_failure_groups_each_opening_its_orders() {
    let _turn = TURN.lock().await;
    let s = serve(false).await;
    for a in ["db-1", "db-2", "db-3", "db-4"] {
        s.agent(a, &["db"]).await;
    }
    let id = s
        .submit("db", "vacuum", "carol", json!({"full": true}))
        .await;
    s.report_all("db-1", ReportStatus::Failure, 28, "disk full")
        .await;
    s.report_all("db-2", ReportStatus::Failure, 28, "disk full")
        .await;
    s.report_all("db-3", ReportStatus::Failure, 1, "locked")
        .await;
    s.report_all("db-4", ReportStatus::Success, 0, "done").await;
    let mut driver = Driver::start();
    let (c, _profile) = driver.browser(DESKTOP.0, DESKTOP.1).await;

    c.goto(&s.url(&format!("/requests/{id}")))
        .await
        .expect("detail");
    // Read in one script: the live region may be replaced between two WebDriver calls.
    let groups = c
        .execute(
            "return Array.from(document.querySelectorAll('table.groups tbody tr')).map(r => r.textContent);",
            vec![],
        )
        .await
        .expect("groups");
    let groups = groups.as_array().expect("rows").clone();
    assert_eq!(groups.len(), 2, "one group per (code, message)");
    let first = groups[0].as_str().expect("text").to_owned();
    assert!(
        first.contains("2 orders") && first.contains("28") && first.contains("disk full"),
        "{first}"
    );
    assert!(
        first.contains("db-1") && first.contains("db-2"),
        "the sample names the targets: {first}"
    );
    assert!(
        text(&c).await.contains("\"full\": true"),
        "the args are shown"
    );

    click(&c, "table.groups tbody tr a").await;
    wait_for(&c, "return window.location.search === '?status=failure';").await;
    wait_for(
        &c,
        "return document.querySelectorAll('table.orders tbody tr').length === 3;",
    )
    .await;
    c.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_cancel_and_retry_from_the_page_change_the_request() {
    let _turn = TURN.lock().await;
    let s = serve(false).await;
    for a in ["app-1", "app-2", "app-3"] {
        s.agent(a, &["app"]).await;
    }
    let id = s.submit("app", "deploy", "dave", json!({})).await;
    let mut driver = Driver::start();
    let (c, _profile) = driver.browser(DESKTOP.0, DESKTOP.1).await;
    let detail = format!("/requests/{id}");
    c.goto(&s.url(&detail)).await.expect("detail");

    click(&c, "button.step-pause").await;
    path_is(&c, &format!("{detail}/confirm")).await;
    assert!(
        text(&c).await.contains("holds its 3 orders"),
        "the confirmation counts the orders"
    );
    click(&c, "button.step-pause").await;
    path_is(&c, &detail).await;
    assert_eq!(state_of(&s, &id).await, RequestState::Paused);

    click(&c, "button.step-resume").await;
    path_is(&c, &format!("{detail}/confirm")).await;
    assert!(text(&c).await.contains("lets its 3 waiting orders go out"));
    click(&c, "button.step-resume").await;
    path_is(&c, &detail).await;
    assert_eq!(state_of(&s, &id).await, RequestState::Running);

    s.report_all("app-1", ReportStatus::Failure, 2, "crashed")
        .await;
    c.goto(&s.url(&detail)).await.expect("detail");
    click(&c, "button.step-cancel").await;
    path_is(&c, &format!("{detail}/confirm")).await;
    assert!(text(&c).await.contains("ends its 2 pending orders"));
    click(&c, "button.step-cancel").await;
    path_is(&c, &detail).await;
    assert_eq!(state_of(&s, &id).await, RequestState::Cancelled);

    click(&c, "button.step-retry").await;
    path_is(&c, &format!("{detail}/confirm")).await;
    assert!(text(&c).await.contains("re-running its 3 failed orders"));
    click(&c, "button.step-retry").await;
    // The confirmation page's own path is a request's too: wait for the new request's page.
    wait_for(
        &c,
        &format!(
            "const p = window.location.pathname; \
             return p.startsWith('/requests/') && p !== {0} && p !== {0} + '/confirm';",
            json!(detail)
        ),
    )
    .await;
    let body = text(&c).await;
    assert!(
        body.contains("Retry of") && body.contains(&id.to_string()),
        "{body}"
    );
    c.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_command_form_previews_then_submits() {
    let _turn = TURN.lock().await;
    let s = serve(false).await;
    s.agent("edge-1", &["edge"]).await;
    s.agent("edge-2", &["edge"]).await;
    let mut driver = Driver::start();
    let (c, _profile) = driver.browser(DESKTOP.0, DESKTOP.1).await;
    c.goto(&s.url("/new")).await.expect("new");

    let target = c.find(Locator::Id("target_id")).await.expect("target");
    target.send_keys("ed").await.expect("type");
    wait_for(
        &c,
        "return document.querySelector('#target-suggestions option[value=\"edge\"]') !== null;",
    )
    .await;
    target.send_keys("ge").await.expect("type");
    c.find(Locator::Id("action"))
        .await
        .expect("action")
        .send_keys("flush-cache")
        .await
        .expect("type");
    let args = c.find(Locator::Id("args")).await.expect("args");
    args.clear().await.expect("clear");
    args.send_keys("{bad").await.expect("type");
    wait_for(&c, "return document.getElementById('args-error').textContent.startsWith('Args are not valid JSON');").await;
    args.clear().await.expect("clear");
    args.send_keys("{\"ttl\": 5}").await.expect("type");
    wait_for(
        &c,
        "return document.getElementById('args-error').textContent === '';",
    )
    .await;

    click(&c, "button[value=preview]").await;
    wait_for(
        &c,
        "return document.querySelector('.preview .targets') !== null;",
    )
    .await;
    let preview = text(&c).await;
    assert!(preview.contains("would reach 2 targets"), "{preview}");
    assert!(
        preview.contains("edge-1") && preview.contains("edge-2"),
        "a sample of the targets"
    );
    assert!(
        s.manager
            .requests(&Default::default(), 10, None)
            .await
            .expect("list")
            .items
            .is_empty(),
        "a preview submits nothing"
    );

    click(&c, "button[value=submit]").await;
    wait_for(
        &c,
        "return window.location.pathname.startsWith('/requests/');",
    )
    .await;
    let page = text(&c).await;
    assert!(
        page.contains("flush-cache") && page.contains("\"ttl\": 5"),
        "{page}"
    );
    let listed = s
        .manager
        .requests(&Default::default(), 10, None)
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].counts.total(), 2);
    c.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_and_logout_with_auth_on_and_every_page_redirects_to_login_without_a_session() {
    let _turn = TURN.lock().await;
    let s = serve(true).await;
    s.agent("web-1", &["web"]).await;
    let id = s.submit("web", "restart", "erin", json!({})).await;
    let mut driver = Driver::start();
    let (c, _profile) = driver.browser(DESKTOP.0, DESKTOP.1).await;

    let pages = [
        "/".to_owned(),
        format!("/requests/{id}"),
        "/new".to_owned(),
        "/agents".to_owned(),
        "/servers".to_owned(),
    ];
    for p in &pages {
        c.goto(&s.url(p)).await.expect("page");
        path_is(&c, "/login").await;
    }

    let token = c.find(Locator::Id("token")).await.expect("token field");
    token.send_keys("not-a-manager-token").await.expect("type");
    click(&c, "form.login button").await;
    wait_for(&c, "return document.querySelector('.error') !== null;").await;
    path_is(&c, "/login").await;

    let token = c.find(Locator::Id("token")).await.expect("token field");
    token.send_keys(MANAGER_TOKEN).await.expect("type");
    click(&c, "form.login button").await;
    path_is(&c, "/").await;
    for p in &pages {
        c.goto(&s.url(p)).await.expect("page");
        path_is(&c, p.as_str()).await;
    }
    let cookies = c.get_all_cookies().await.expect("cookies");
    let session = cookies
        .iter()
        .find(|k| k.name() == "cm_console")
        .expect("session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(
        session.same_site().map(|s| s.to_string()).as_deref(),
        Some("Strict")
    );

    click(&c, "form.logout button").await;
    path_is(&c, "/login").await;
    c.goto(&s.url("/")).await.expect("list");
    path_is(&c, "/login").await;
    c.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reported_message_shows_as_text_and_runs_nothing() {
    let _turn = TURN.lock().await;
    let s = serve(false).await;
    s.agent("web-1", &["web"]).await;
    let hostile = "<img src=x onerror=alert(1)>";
    let id = s
        .submit(
            "web",
            "<script>alert(2)</script>",
            "<b onmouseover=alert(3)>mallory</b>",
            json!({"x": "</pre><script>alert(4)</script>"}),
        )
        .await;
    s.report_all("web-1", ReportStatus::Failure, 1, hostile)
        .await;
    let mut driver = Driver::start();
    let (c, _profile) = driver.browser(DESKTOP.0, DESKTOP.1).await;

    for p in [
        "/".to_owned(),
        format!("/requests/{id}"),
        "/agents".to_owned(),
    ] {
        c.goto(&s.url(&p)).await.expect("page");
        wait_for(&c, "return document.readyState === 'complete';").await;
        let body = text(&c).await;
        assert!(
            body.contains(hostile) || p == "/",
            "{p}: the message shows as text: {body}"
        );
        assert!(
            body.contains("<b onmouseover=alert(3)>mallory</b>") || p == "/agents",
            "{p}: {body}"
        );
        let markup = c
            .execute(
                "return document.querySelectorAll('main img, main b, main script').length;",
                vec![],
            )
            .await
            .expect("count");
        assert_eq!(markup, json!(0), "{p}: nothing became markup");
        assert!(c.get_alert_text().await.is_err(), "{p}: no alert ran");
    }
    c.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_layout_has_no_horizontal_scroll() {
    let _turn = TURN.lock().await;
    let s = serve(false).await;
    for a in ["a-very-long-agent-name-for-a-phone-screen-1", "web-2"] {
        s.agent(a, &["web", "a-rather-long-group-name"]).await;
    }
    let id = s
        .submit(
            "web",
            "restart-the-web-service-everywhere",
            "frank",
            json!({"a": "x".repeat(200)}),
        )
        .await;
    s.report_all(
        "web-2",
        ReportStatus::Failure,
        1,
        &"a long message ".repeat(20),
    )
    .await;
    let mut driver = Driver::start();
    let (c, _profile) = driver.browser(PHONE.0, PHONE.1).await;
    let width = c
        .execute("return window.innerWidth;", vec![])
        .await
        .expect("width");
    assert!(
        width.as_u64().is_some_and(|w| w <= u64::from(PHONE.0)),
        "a phone-sized viewport: {width}"
    );
    for p in [
        "/".to_owned(),
        format!("/requests/{id}"),
        format!("/requests/{id}/confirm?step=cancel"),
        "/new".to_owned(),
        "/agents".to_owned(),
        "/servers".to_owned(),
    ] {
        c.goto(&s.url(&p)).await.expect("page");
        wait_for(&c, "return document.readyState === 'complete';").await;
        let fits = c
            .execute(
                "const d = document.documentElement; return [d.scrollWidth, d.clientWidth];",
                vec![],
            )
            .await
            .expect("widths");
        let (scroll, client) = (fits[0].as_u64().unwrap(), fits[1].as_u64().unwrap());
        assert!(
            scroll <= client,
            "{p}: scrollWidth {scroll} > clientWidth {client}"
        );
    }
    c.close().await.expect("close");
}
