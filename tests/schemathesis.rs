//! The API description is the truth: schemathesis (a schema-driven fuzzer) runs against the
//! real binary's `/openapi.json`, once with authentication off and once on, with all its checks
//! and negative data, and any finding fails the test with schemathesis's report.
//!
//! `cargo xtask test` finds `st` (in `${CM_VENV:-~/.cache/command-manager/venv}` or on `PATH`)
//! and passes it in `CM_SCHEMATHESIS`; `.ci/run` installs it. The seed is fixed and the example
//! counts bounded, so a run is repeatable and both take well under two minutes.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};
use support::Service;

/// Where `cargo xtask test` puts the path of schemathesis's `st`.
const ST_VAR: &str = "CM_SCHEMATHESIS";
/// Fixed, so a finding can be replayed.
const SEED: &str = "1";
/// Examples per operation and phase.
const MAX_EXAMPLES: &str = "30";
const MANAGER_TOKEN: &str = "schemathesis-manager-token";
/// The agent whose key schemathesis presents on the delivery routes.
const AGENT: &str = "schemathesis-agent";

/// Statuses a valid request may get. Schemathesis's default, and 422: the body follows every
/// rule the document states, but the service's state or clock refuses it (an unregistered
/// agent, an empty group, a start beyond the horizon, nothing to retry), as docs/api.md says.
const ACCEPTED: &str = r#"["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]"#;

fn st() -> PathBuf {
    match std::env::var_os(ST_VAR) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => panic!(
            "{ST_VAR} is not set: run the tests with `cargo xtask test`, which finds schemathesis \
             and says how to install it when it is missing"
        ),
    }
}

/// The service for schemathesis: memory storage, and polls that never wait (a long-poll would
/// only make the run slow; its bounds are still stated and checked).
fn service(auth: bool) -> Service {
    let mut env = vec![
        ("CM_STORAGE__BACKEND", "memory"),
        ("CM_LIMITS__MAX_POLL_WAIT_SECS", "0"),
    ];
    if auth {
        env.extend([
            ("CM_AUTH__ENABLED", "true"),
            ("CM_AUTH__MANAGER_TOKENS", MANAGER_TOKEN),
        ]);
    }
    Service::start(&env)
}

/// Runs schemathesis with `config` against `svc`; panics with its report on any finding.
fn run(svc: &Service, config: &str, dir: &Path, label: &str) {
    let config_path = dir.join(format!("schemathesis-{label}.toml"));
    std::fs::write(&config_path, config).expect("write the schemathesis configuration");
    let started = Instant::now();
    let output = Command::new(st())
        .arg("--no-color")
        .arg("--config-file")
        .arg(&config_path)
        .args(["run", &svc.url("/openapi.json")])
        .args(["--checks", "all", "--mode", "all"])
        .args(["--seed", SEED, "--max-examples", MAX_EXAMPLES])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({ST_VAR}): {e}", st().display()));
    let report = String::from_utf8_lossy(&output.stdout);
    let summary = report
        .lines()
        .filter(|l| l.contains("generated") || l.contains("=====") && l.contains(" in "))
        .collect::<Vec<_>>()
        .join("; ");
    eprintln!(
        "schemathesis, auth {label}: {summary} ({:.0?})",
        started.elapsed()
    );
    assert!(
        output.status.success(),
        "schemathesis found problems with auth {label}:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn base_config() -> String {
    format!("[checks.positive_data_acceptance]\nexpected-statuses = {ACCEPTED}\n")
}

#[test]
fn the_api_description_holds_with_authentication_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    let svc = service(false);
    run(&svc, &base_config(), dir.path(), "off");
    svc.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_description_holds_with_authentication_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let svc = service(true);
    // An agent of its own, so the delivery routes are exercised past authentication.
    // ring, the workspace's one TLS crypto provider: a client panics without one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registered: Value = reqwest::Client::new()
        .put(svc.url(&format!("/api/v1/agents/{AGENT}")))
        .bearer_auth(MANAGER_TOKEN)
        .json(&json!({"groups": ["schemathesis"]}))
        .send()
        .await
        .expect("register the agent")
        .json()
        .await
        .expect("registration answer");
    let key = registered["key"].as_str().expect("a new agent's key");
    let config = format!(
        "{}
[auth.openapi.manager_token]
bearer = \"{MANAGER_TOKEN}\"

[auth.openapi.agent_key]
username = \"{AGENT}\"
password = \"{key}\"

[[operations]]
include-name = \"POST /api/v1/agents/{{agent_id}}/poll\"
parameters = {{ \"path.agent_id\" = \"{AGENT}\" }}
",
        base_config()
    );
    let dir_path = dir.path().to_path_buf();
    let svc = tokio::task::spawn_blocking(move || {
        run(&svc, &config, &dir_path, "on");
        svc
    })
    .await
    .expect("schemathesis run");
    svc.stop();
}
