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
