//! `cm-agent` against the real service: handlers in a temporary directory, what it reports
//! for each way a handler ends, names it refuses, a redelivery it does not run twice, and
//! SIGTERM while a handler runs.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cm_client::{Client, Credentials, NewCommand, TargetRef};
use cm_domain::{Order, Status};
use support::Service;

const MANAGER: &str = "manager-token-0123456789";

fn service(extra: &[(&str, &str)]) -> Service {
    let mut env = vec![
        ("CM_STORAGE__BACKEND", "memory"),
        ("CM_AUTH__ENABLED", "true"),
        ("CM_AUTH__MANAGER_TOKENS", MANAGER),
    ];
    env.extend_from_slice(extra);
    Service::start(&env)
}

fn manager(base: &str) -> Client {
    Client::new(base, Credentials::Bearer(MANAGER.into())).unwrap()
}

/// Writes an executable handler `name` with the shell script `body`.
fn handler(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Starts `cm-agent` for `id` against `base`; its stderr goes to the test's when `TEST_LOG`
/// is set.
fn agent(
    base: &str,
    id: &str,
    key: &str,
    handlers: &Path,
    extra: &[&str],
    env: &[(&str, &Path)],
) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cm-agent"));
    cmd.args(["--url", base, "--id", id, "--poll-wait", "5"])
        .arg(format!("--key={key}"))
        .arg("--handlers")
        .arg(handlers)
        .args(extra)
        .env_remove("CM_URL")
        .env_remove("CM_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start cm-agent")
}

fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// Waits until order `id` satisfies `done`, and returns it.
async fn until_order(c: &Client, id: &str, done: impl Fn(&Order) -> bool) -> Order {
    loop {
        let o = c.order(id).await.unwrap();
        if done(&o) {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn finished(c: &Client, id: &str) -> Order {
    until_order(c, id, |o| {
        matches!(o.status(), Status::Success | Status::Failure)
    })
    .await
}

async fn until_exists(path: &Path) {
    while !path.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn submit(c: &Client, agent: &str, action: &str, args: serde_json::Value) -> String {
    let mut cmd = NewCommand::new(TargetRef::agent(agent), action);
    cmd.action.args = args;
    let s = c.submit(&[cmd], None).await.unwrap();
    s.requests[0].order_ids[0].clone()
}

fn result(o: &Order) -> (Status, i16, String, String) {
    let r = o.result().expect("a result");
    (
        o.status(),
        r.code(),
        r.message().to_owned(),
        r.data().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_reports_success_failure_timeout_and_refused_handlers() {
    let svc = service(&[]);
    let m = manager(&svc.base);
    let key = m.put_agent("a1", &[]).await.unwrap().key.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("handlers");
    std::fs::create_dir(&dir).unwrap();
    let marks = tmp.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    handler(
        &dir,
        "echo-args",
        r#"input=$(cat)
echo "args=$input order=$CM_ORDER_ID request=$CM_REQUEST_ID action=$CM_ACTION agent=$CM_AGENT_ID key=${CM_KEY:-none}""#,
    );
    handler(
        &dir,
        "fail",
        "echo partial\necho first >&2\necho 'disk full' >&2\nexit 7",
    );
    handler(&dir, "slow", "echo begun\nsleep 60\necho never");
    let noexec = dir.join("noexec");
    std::fs::write(&noexec, "#!/bin/sh\ntouch \"$MARKS/noexec\"\n").unwrap();
    handler(&dir, ".hidden", "touch \"$MARKS/hidden\"");
    std::os::unix::fs::symlink(
        handler(tmp.path(), "outside", "touch \"$MARKS/outside\""),
        dir.join("link"),
    )
    .unwrap();
    let mut a = agent(
        &svc.base,
        "a1",
        &key,
        &dir,
        &["--timeout-default", "2", "--max-parallel", "8"],
        &[("MARKS", &marks)],
    );

    let ok = submit(
        &m,
        "a1",
        "echo-args",
        serde_json::json!({"service": "nginx"}),
    )
    .await;
    let (status, code, _, data) = result(&finished(&m, &ok).await);
    assert_eq!((status, code), (Status::Success, 0));
    let request = m.order(&ok).await.unwrap().request_id().to_string();
    assert_eq!(
        data.trim(),
        format!(
            r#"args={{"service":"nginx"}} order={ok} request={request} action=echo-args agent=a1 key=none"#
        )
    );

    let fail = submit(&m, "a1", "fail", serde_json::json!({})).await;
    assert_eq!(
        result(&finished(&m, &fail).await),
        (
            Status::Failure,
            7,
            "disk full".to_owned(),
            "partial\n".to_owned()
        )
    );

    let slow = submit(&m, "a1", "slow", serde_json::json!({})).await;
    let (status, code, _, data) = result(&finished(&m, &slow).await);
    assert_eq!(
        (status, code, data.as_str()),
        (Status::Failure, 124, "begun\n")
    );

    for action in [
        "missing",
        "noexec",
        ".hidden",
        "link",
        "../outside",
        "sub/outside",
        "..",
    ] {
        let id = submit(&m, "a1", action, serde_json::json!({})).await;
        let (status, code, message, _) = result(&finished(&m, &id).await);
        assert_eq!(
            (status, code),
            (Status::Failure, 127),
            "{action}: {message}"
        );
        assert!(message.starts_with("no handler"), "{action}: {message}");
    }
    assert_eq!(
        std::fs::read_dir(&marks).unwrap().count(),
        0,
        "no refused handler ran"
    );
    terminate(&a);
    assert!(a.wait().unwrap().success());
}

/// A proxy in front of the service that, while `dropping`, refuses every result report with a
/// 400 (what a report lost on the way looks like to the service: it never arrives).
async fn lossy_proxy(
    upstream: String,
    dropping: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
) -> String {
    use axum::body::{Body, to_bytes};
    use axum::extract::Request;
    use axum::response::Response;
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: Request| {
        let (http, upstream, dropping, dropped) = (
            http.clone(),
            upstream.clone(),
            dropping.clone(),
            dropped.clone(),
        );
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map(ToString::to_string)
                .unwrap_or_default();
            if dropping.load(Ordering::SeqCst) && req.uri().path().ends_with("/result") {
                dropped.fetch_add(1, Ordering::SeqCst);
                return Response::builder()
                    .status(400)
                    .header("content-type", "application/json")
                    .body(Body::from(
                        r#"{"error":{"code":"invalid_field","message":"lost"}}"#,
                    ))
                    .unwrap();
            }
            let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap();
            let mut out = http.request(method, format!("{upstream}{path}"));
            for (k, v) in req.headers() {
                if k != "host" {
                    out = out.header(k.as_str(), v.as_bytes());
                }
            }
            let body = to_bytes(req.into_body(), usize::MAX).await.unwrap();
            let resp = out.body(body).send().await.unwrap();
            let mut b = Response::builder().status(resp.status().as_u16());
            for (k, v) in resp.headers() {
                b = b.header(k.as_str(), v.as_bytes());
            }
            b.body(Body::from(resp.bytes().await.unwrap())).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_order_that_already_ran_is_reported_again_not_run_again() {
    let svc = service(&[("CM_DELIVERY__REDELIVER_AFTER_SECS", "1")]);
    let m = manager(&svc.base);
    let key = m.put_agent("a1", &[]).await.unwrap().key.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("handlers");
    std::fs::create_dir(&dir).unwrap();
    handler(&dir, "once", "echo run >> \"$MARKS/runs\"\necho done");
    let (dropping, dropped) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicU64::new(0)));
    let proxy = lossy_proxy(svc.base.clone(), dropping.clone(), dropped.clone()).await;
    let state = tmp.path().join("state");
    let mut a = agent(
        &proxy,
        "a1",
        &key,
        &dir,
        &["--state-dir", state.to_str().unwrap()],
        &[("MARKS", tmp.path())],
    );
    let id = submit(&m, "a1", "once", serde_json::json!({})).await;
    // Its in_progress and its final report are lost: the service still has it `sent`.
    while dropped.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(m.order(&id).await.unwrap().status(), Status::Sent);
    dropping.store(false, Ordering::SeqCst);
    // Redelivered after a second; the agent reports the result it kept.
    let (status, code, _, data) = result(&finished(&m, &id).await);
    assert_eq!(
        (status, code, data.as_str()),
        (Status::Success, 0, "done\n")
    );
    assert!(m.order(&id).await.unwrap().deliveries() >= 2);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("runs")).unwrap(),
        "run\n"
    );
    terminate(&a);
    assert!(a.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_running_handler_finish_or_kills_and_reports_it_after_the_grace() {
    let svc = service(&[]);
    let m = manager(&svc.base);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("handlers");
    std::fs::create_dir(&dir).unwrap();
    handler(
        &dir,
        "wait-go",
        "touch \"$MARKS/started-$CM_AGENT_ID\"\nwhile [ ! -e \"$MARKS/go\" ]; do sleep 0.05; done\necho finished",
    );

    // Finishing: SIGTERM while the handler runs, then the handler ends within the grace.
    let key = m.put_agent("a1", &[]).await.unwrap().key.unwrap();
    let mut a = agent(
        &svc.base,
        "a1",
        &key,
        &dir,
        &["--grace", "600"],
        &[("MARKS", tmp.path())],
    );
    let id = submit(&m, "a1", "wait-go", serde_json::json!({})).await;
    until_exists(&tmp.path().join("started-a1")).await;
    terminate(&a);
    std::fs::write(tmp.path().join("go"), "").unwrap();
    assert!(a.wait().unwrap().success());
    let (status, _, _, data) = result(&finished(&m, &id).await);
    assert_eq!((status, data.as_str()), (Status::Success, "finished\n"));
    std::fs::remove_file(tmp.path().join("go")).unwrap();

    // Killed at the end of the grace, and reported.
    let key = m.put_agent("a2", &[]).await.unwrap().key.unwrap();
    let mut a = agent(
        &svc.base,
        "a2",
        &key,
        &dir,
        &["--grace", "1"],
        &[("MARKS", tmp.path())],
    );
    let id = submit(&m, "a2", "wait-go", serde_json::json!({})).await;
    until_exists(&tmp.path().join("started-a2")).await;
    until_order(&m, &id, |o| o.status() == Status::InProgress).await;
    terminate(&a);
    assert!(a.wait().unwrap().success());
    let (status, code, message, _) = result(&finished(&m, &id).await);
    assert_eq!((status, code), (Status::Failure, 143), "{message}");
    assert!(message.contains("interrupted"), "{message}");
}
