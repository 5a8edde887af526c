//! The binary's command line and configuration handling.

mod support;

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(support::binary());
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run command-manager");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_serve_and_migrate() {
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("serve") && out.contains("migrate") && out.contains("--config"),
        "{out}"
    );
}

#[test]
fn a_bad_setting_stops_start_up_naming_it() {
    for (key, value, named) in [
        ("CM_SCHEDULER__INTERVAL_SECS", "soon", "interval_secs"),
        (
            "CM_SCHEDULER__INTERVAL_SECS",
            "0",
            "scheduler.interval_secs",
        ),
        ("CM_STORAGE__BACKEND", "mysql", "mysql"),
        ("CM_HTTP__LISTEN", "not-an-address", "listen"),
        ("CM_LIMITS__MAX_POLL_LIMIT", "5000", "limits.max_poll_limit"),
        ("CM_HTTP__NO_SUCH_KEY", "1", "no_such_key"),
    ] {
        let (code, _, err) = run(&["serve"], &[(key, value)]);
        assert_eq!(code, 2, "{key}={value}: {err}");
        assert!(
            err.contains(named),
            "{key}={value}: message does not name it: {err}"
        );
    }
}

#[test]
fn opensearch_urls_from_the_environment_are_a_comma_separated_list() {
    // The second URL is refused by itself: the variable was split into a list.
    let (code, _, err) = run(
        &["serve"],
        &[
            ("CM_STORAGE__BACKEND", "opensearch"),
            (
                "CM_STORAGE__OPENSEARCH__URLS",
                "http://127.0.0.1:1,node-b:9200",
            ),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("storage.opensearch.urls") && err.contains("node-b:9200"),
        "{err}"
    );
}

#[test]
fn a_missing_config_file_is_named() {
    let (code, _, err) = run(&["--config", "/nonexistent/cm.toml", "serve"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/cm.toml"), "{err}");
}

#[test]
fn settings_come_from_a_toml_file_and_the_environment_overrides_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cm.toml");
    std::fs::write(&file, "[scheduler]\ninterval_secs = 0\n").expect("write");
    let (code, _, err) = run(
        &["--config", file.to_str().unwrap(), "migrate"],
        &[("CM_STORAGE__BACKEND", "memory")],
    );
    assert_eq!(code, 2, "the file's bad value is refused: {err}");
    let (code, _, err) = run(
        &["--config", file.to_str().unwrap(), "migrate"],
        &[
            ("CM_STORAGE__BACKEND", "memory"),
            ("CM_SCHEDULER__INTERVAL_SECS", "5"),
        ],
    );
    assert_eq!(code, 0, "the environment overrides the file: {err}");
}

#[test]
fn migrate_creates_the_sqlite_schema_and_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cm.db");
    let env = [("CM_STORAGE__SQLITE__PATH", path.to_str().unwrap())];
    let (code, _, err) = run(&["migrate"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(path.exists());
    let (code, _, err) = run(&["migrate"], &env);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn authentication_off_on_a_non_loopback_address_is_refused_naming_the_keys() {
    let (code, _, err) = run(
        &["serve"],
        &[
            ("CM_HTTP__LISTEN", "0.0.0.0:0"),
            ("CM_STORAGE__BACKEND", "memory"),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("auth.enabled") && err.contains("http.listen"),
        "{err}"
    );
}

#[test]
fn a_connection_cap_beyond_the_open_file_limit_is_refused_naming_both() {
    let (code, _, err) = run(
        &["serve"],
        &[
            ("CM_HTTP__LISTEN", "127.0.0.1:0"),
            ("CM_STORAGE__BACKEND", "memory"),
            // Beyond any hard limit Linux allows (fs.nr_open is at most 2^30).
            ("CM_HTTP__MAX_CONNECTIONS", "2000000000"),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("http.max_connections") && err.contains("RLIMIT_NOFILE"),
        "{err}"
    );

    let (code, _, err) = run(
        &["serve"],
        &[
            ("CM_HTTP__LISTEN", "127.0.0.1:0"),
            ("CM_STORAGE__BACKEND", "memory"),
            ("CM_HTTP__MAX_CONNECTIONS", "100"),
            ("CM_HTTP__MAX_OPEN_POLLS", "200"),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("http.max_connections") && err.contains("http.max_open_polls"),
        "{err}"
    );
}

#[test]
fn authentication_on_without_usable_manager_tokens_is_refused_without_showing_them() {
    for (tokens, named) in [
        (None, "auth.manager_tokens"),
        (Some("short-token"), "auth.manager_tokens[0]"),
        (
            Some("a-long-token-1234567,short-token"),
            "auth.manager_tokens[1]",
        ),
    ] {
        let mut env = vec![
            ("CM_AUTH__ENABLED", "true"),
            ("CM_HTTP__LISTEN", "0.0.0.0:0"),
            ("CM_STORAGE__BACKEND", "memory"),
        ];
        if let Some(tokens) = tokens {
            env.push(("CM_AUTH__MANAGER_TOKENS", tokens));
        }
        let (code, _, err) = run(&["serve"], &env);
        assert_eq!(code, 2, "{tokens:?}: {err}");
        assert!(err.contains(named), "{tokens:?}: {err}");
        assert!(!err.contains("short-token"), "a token was shown: {err}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cm.toml");
    std::fs::write(
        &file,
        "[auth]\nenabled = true\nmanager_tokens = [\"a-long-token-1234567\", \"tiny\"]\n",
    )
    .expect("write");
    let (code, _, err) = run(
        &["--config", file.to_str().unwrap(), "serve"],
        &[("CM_STORAGE__BACKEND", "memory")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("auth.manager_tokens[1]"), "{err}");
}

/// The status of `GET path` with an optional `Authorization` header.
fn status_of(base: &str, path: &str, authorization: Option<&str>) -> u16 {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"))
}

#[test]
fn manager_tokens_from_the_environment_are_accepted_and_required() {
    let service = support::Service::start(&[
        ("CM_STORAGE__BACKEND", "memory"),
        ("CM_AUTH__ENABLED", "true"),
        (
            "CM_AUTH__MANAGER_TOKENS",
            "a-long-token-1234567,another-token-7654321",
        ),
    ]);
    let base = service.base.clone();
    assert_eq!(status_of(&base, "/healthz", None), 200);
    assert_eq!(status_of(&base, "/api/v1/orders", None), 401);
    for token in ["a-long-token-1234567", "another-token-7654321"] {
        let bearer = format!("Bearer {token}");
        assert_eq!(status_of(&base, "/api/v1/orders", Some(&bearer)), 200);
    }
    assert_eq!(
        status_of(
            &base,
            "/api/v1/orders",
            Some("Bearer a-long-token-1234567,another-token-7654321")
        ),
        401
    );
    let logs = service.drain_logs().join("\n");
    assert!(!logs.contains("a-long-token-1234567"), "{logs}");
    service.stop();
}
