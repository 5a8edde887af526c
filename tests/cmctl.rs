//! `cmctl` end to end against the real service: exit codes, `--json` output, imports, and the
//! five-minute scenario (three `cm-agent`s with the sample handler directory, a group restart
//! with `--wait`).

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use support::Service;

const MANAGER: &str = "manager-token-0123456789";

fn service() -> Service {
    Service::start(&[
        ("CM_STORAGE__BACKEND", "memory"),
        ("CM_AUTH__ENABLED", "true"),
        ("CM_AUTH__MANAGER_TOKENS", MANAGER),
    ])
}

/// What one run of `cmctl` did.
struct Run {
    code: i32,
    out: String,
    err: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.out).unwrap_or_else(|e| panic!("{e}: {}", self.out))
    }

    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "stdout: {}\nstderr: {}", self.out, self.err);
        self
    }
}

fn cmctl_with(svc: &Service, token: Option<&str>, args: &[&str], stdin: &str) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cmctl"));
    cmd.args(args)
        .env("CM_URL", &svc.base)
        .env_remove("CM_TOKEN")
        .env("USER", "tester")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = token {
        cmd.env("CM_TOKEN", t);
    }
    let mut child = cmd.spawn().expect("run cmctl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn cmctl(svc: &Service, args: &[&str]) -> Run {
    cmctl_with(svc, Some(MANAGER), args, "")
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/handlers")
}

fn agent(svc: &Service, id: &str, key: &str, handlers: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cm-agent"))
        .args([
            "--url",
            &svc.base,
            "--id",
            id,
            "--key",
            key,
            "--poll-wait",
            "5",
        ])
        .arg("--handlers")
        .arg(handlers)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("start cm-agent")
}

/// Agents stopped with SIGTERM, and checked to exit cleanly, when the test ends.
struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for a in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &a.id().to_string()])
                .status();
            let status = a.wait().unwrap();
            if !std::thread::panicking() {
                assert!(status.success(), "cm-agent exited with {status}");
            }
        }
    }
}

#[test]
fn usage_and_api_errors_exit_2_with_the_apis_message() {
    let svc = service();
    let r = cmctl_with(&svc, None, &["agents"], "");
    assert_eq!(r.code, 2);
    assert!(r.err.contains("unauthorized"), "{}", r.err);
    let r = cmctl(&svc, &["request", "not-a-uuid"]);
    assert_eq!(r.code, 2);
    assert!(r.err.contains("request_id"), "{}", r.err);
    let r = cmctl(&svc, &["submit", "--group", "nobody", "restart"]);
    assert_eq!(r.code, 2);
    assert!(r.err.contains("422"), "{}", r.err);
    assert_eq!(cmctl(&svc, &["submit", "restart"]).code, 2, "no target");
    assert_eq!(
        cmctl(&svc, &["submit", "--agent", "a", "x", "--rollout", "2w"]).code,
        2
    );
    assert_eq!(cmctl(&svc, &["frobnicate"]).code, 2);
}

#[test]
fn agents_are_registered_one_by_one_and_imported_with_keys_in_a_private_file() {
    let svc = service();
    let key = cmctl(&svc, &["agents", "put", "w1", "--group", "web"])
        .ok()
        .out;
    assert_eq!(
        key.trim().len(),
        key.trim().chars().filter(|c| !c.is_whitespace()).count()
    );
    assert!(!key.trim().is_empty());
    let again = cmctl(&svc, &["agents", "put", "w1", "--group", "web"]).ok();
    assert!(again.out.contains("unchanged"), "{}", again.out);

    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys.csv");
    let r = cmctl_with(
        &svc,
        Some(MANAGER),
        &[
            "--json",
            "agents",
            "import",
            "-",
            "--keys",
            keys.to_str().unwrap(),
        ],
        "id,groups\nw1,web\nw2,web;db\n{\"id\": \"w3\", \"groups\": [\"web\"]}\n",
    )
    .ok();
    let summary = r.json();
    assert_eq!(
        (summary["created"].as_u64(), summary["updated"].as_u64()),
        (Some(2), Some(1))
    );
    let mode = std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let lines: Vec<String> = std::fs::read_to_string(&keys)
        .unwrap()
        .lines()
        .map(|l| l.split(',').next().unwrap().to_owned())
        .collect();
    assert_eq!(lines, ["w2", "w3"]);

    let listed = cmctl(&svc, &["--json", "agents", "--group", "web"])
        .ok()
        .json();
    let ids: Vec<&str> = listed["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["w1", "w2", "w3"]);
    let table = cmctl(&svc, &["agents"]).ok().out;
    assert!(
        table.starts_with("ID  GROUPS\nw1  web\nw2  db,web\n")
            || table.starts_with("ID  GROUPS\nw1  web\nw2  web,db\n"),
        "{table}"
    );

    let bad = cmctl_with(
        &svc,
        Some(MANAGER),
        &["agents", "import", "-", "--keys", keys.to_str().unwrap()],
        "ok1,web\n..,web\n",
    );
    assert_eq!(bad.code, 2);
    assert!(bad.err.contains("agents[1].id"), "{}", bad.err);
}

#[test]
fn requests_are_listed_paused_resumed_and_cancelled() {
    let svc = service();
    cmctl(&svc, &["agents", "put", "idle", "--group", "quiet"]).ok();
    let plan = cmctl(
        &svc,
        &[
            "--json",
            "submit",
            "--group",
            "quiet",
            "restart",
            "--dry-run",
        ],
    )
    .ok()
    .json();
    assert_eq!(plan["plans"][0]["targets"], 1);
    let id = cmctl(
        &svc,
        &[
            "submit",
            "--group",
            "quiet",
            "restart",
            "--max-concurrency",
            "1",
            "--timeout",
            "30m",
        ],
    )
    .ok()
    .out
    .trim()
    .to_owned();
    let r = cmctl(&svc, &["--json", "request", &id]).ok().json();
    assert_eq!(r["request"]["state"], "running");
    assert_eq!(r["request"]["timeout"], 1800);
    assert_eq!(r["request"]["user"], "tester");
    assert_eq!(
        cmctl(&svc, &["--json", "pause", &id]).ok().json()["state"],
        "paused"
    );
    assert_eq!(
        cmctl(&svc, &["--json", "resume", &id]).ok().json()["state"],
        "running"
    );
    let listed = cmctl(&svc, &["--json", "requests", "--state", "running"])
        .ok()
        .json();
    assert_eq!(listed["requests"][0]["request_id"], id.as_str());
    let table = cmctl(&svc, &["requests"]).ok().out;
    assert!(table.starts_with("REQUEST "), "{table}");
    assert!(table.contains(&id), "{table}");
    let orders = cmctl(&svc, &["--json", "orders", "--request", &id])
        .ok()
        .json();
    assert_eq!(orders["orders"].as_array().unwrap().len(), 1);
    assert_eq!(
        cmctl(&svc, &["--json", "cancel", &id]).ok().json()["failure"],
        1
    );
    let r = cmctl(&svc, &["--json", "request", &id]).ok().json();
    assert_eq!(r["request"]["state"], "cancelled");
    // The retry of a cancelled order re-runs it.
    let retried = cmctl(&svc, &["--json", "retry", &id]).ok().json();
    assert_eq!(
        retried["requests"][0]["order_ids"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Watching a request that finished, and that failed: exit 1.
    let r = cmctl(&svc, &["request", &id, "--watch"]);
    assert_eq!(r.code, 1, "{}", r.out);
}

#[test]
fn a_group_restart_with_wait_runs_the_sample_handler_on_three_agents() {
    let svc = service();
    let mut children = Vec::new();
    for id in ["web-1", "web-2", "web-3"] {
        let key = cmctl(&svc, &["agents", "put", id, "--group", "web"])
            .ok()
            .out;
        children.push(agent(&svc, id, key.trim(), &examples()));
    }
    let _agents = Agents(children);

    let r = cmctl(&svc, &["submit", "--group", "web", "restart", "--wait"]).ok();
    let id = r.out.lines().next().unwrap().to_owned();
    assert!(r.out.contains("completed"), "{}", r.out);
    assert!(r.out.contains("STATUS"), "{}", r.out);
    let orders = cmctl(&svc, &["--json", "orders", "--request", &id])
        .ok()
        .json();
    let orders = orders["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 3);
    for o in orders {
        let agent = o["agent"]["id"].as_str().unwrap();
        let result = &o["command"]["result"];
        assert_eq!(o["command"]["status"], "success", "{o}");
        let data = result["data"].as_str().unwrap();
        assert!(
            data.contains(&format!("restart requested on {agent}")),
            "{data}"
        );
        assert!(data.ends_with("restarted\n"), "{data}");
    }

    // A request with failures: the agents have no handler `explode`. --wait exits 1, and
    // --json prints the request and its result groups.
    let r = cmctl(
        &svc,
        &["--json", "submit", "--group", "web", "explode", "--wait"],
    );
    assert_eq!(r.code, 1, "{}", r.err);
    let body = r.json();
    assert_eq!(body["request"]["failure"], 3);
    assert_eq!(body["results"][0]["code"], 127);
    assert_eq!(body["results"][0]["count"], 3);
}
