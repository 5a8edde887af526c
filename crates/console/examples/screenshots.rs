//! `cargo xtask screenshots`: every console page at 1280×800 and 390×844, as PNGs in the
//! directory given as the one argument, over a console with sample data (the browser tests'
//! harness).

#[path = "../tests/support/mod.rs"]
mod support;

use cm_domain::ReportStatus;
use serde_json::json;
use support::{Driver, serve, wait_for};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let out = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: screenshots <output directory>"),
    );
    let s = serve(false).await;
    for i in 1..=6 {
        s.agent(&format!("web-{i:02}"), &["web", "linux"]).await;
    }
    for i in 1..=3 {
        s.agent(&format!("db-{i:02}"), &["db", "linux"]).await;
    }
    let db = s
        .submit("db", "vacuum", "carol", json!({"full": true}))
        .await;
    s.report_all("db-01", ReportStatus::Failure, 28, "disk full")
        .await;
    s.report_all("db-02", ReportStatus::Failure, 28, "disk full")
        .await;
    s.report_all("db-03", ReportStatus::Success, 0, "done")
        .await;
    let web = s
        .submit("web", "restart-nginx", "alice", json!({"graceful": true}))
        .await;
    for i in 1..=3 {
        s.report_all(
            &format!("web-{i:02}"),
            ReportStatus::Success,
            0,
            "restarted",
        )
        .await;
    }
    s.report_all(
        "web-04",
        ReportStatus::Failure,
        1,
        "nginx: configuration test failed",
    )
    .await;
    s.submit("linux", "collect-inventory", "bob", json!({}))
        .await;
    let pages = [
        ("requests", "/".to_owned()),
        ("request", format!("/requests/{db}")),
        ("request-web", format!("/requests/{web}")),
        ("confirm", format!("/requests/{web}/confirm?step=cancel")),
        ("new", "/new".to_owned()),
        ("agents", "/agents".to_owned()),
        ("servers", "/servers".to_owned()),
    ];
    let mut driver = Driver::start();
    for (size, (w, h)) in [("desktop", (1280, 800)), ("phone", (390, 844))] {
        let (c, _profile) = driver.browser(w, h).await;
        for (name, path) in &pages {
            c.goto(&s.url(path)).await.expect("page");
            wait_for(&c, "return document.readyState === 'complete';").await;
            let png = c.screenshot().await.expect("screenshot");
            let file = out.join(format!("{name}-{size}.png"));
            std::fs::write(&file, png).expect("write the screenshot");
            println!("{}", file.display());
        }
        c.close().await.expect("close");
    }
}
