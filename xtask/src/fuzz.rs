//! `cargo xtask fuzz [--secs N] [--target NAME]`: runs the `cargo fuzz` targets in `fuzz/`
//! (request parsing through the real router, and domain validation) for N seconds each.
//! Not part of CI: it needs a nightly toolchain and cargo-fuzz, and names them when missing.

use std::process::{Command, Stdio};

const TARGETS: [&str; 2] = ["http_request", "domain_validation"];
const USAGE: &str = "cargo xtask fuzz [--secs N] [--target http_request|domain_validation]";

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut secs: u64 = 60;
    let mut only: Option<String> = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--secs" => {
                secs = rest
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("--secs needs a number of seconds\nusage: {USAGE}"))?;
            }
            "--target" => only = Some(rest.next().cloned().ok_or(USAGE)?),
            other => return Err(format!("unknown argument {other:?}\nusage: {USAGE}")),
        }
    }
    let quiet = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !quiet(Command::new("cargo").args(["+nightly", "--version"])) {
        return Err("a nightly toolchain is needed: rustup toolchain install nightly".to_owned());
    }
    if !quiet(Command::new("cargo").args(["fuzz", "--version"])) {
        return Err("cargo-fuzz is needed: cargo install cargo-fuzz".to_owned());
    }
    let targets: Vec<&str> = match &only {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => return Err(format!("unknown target {t:?}\nusage: {USAGE}")),
        None => TARGETS.to_vec(),
    };
    let dir = crate::project_root().join("fuzz");
    for target in targets {
        println!("xtask: fuzzing {target} for {secs} s");
        let status = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={secs}"))
            .current_dir(&dir)
            .status()
            .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
        if !status.success() {
            return Err(format!(
                "{target} found a failing input ({status}); it is saved under fuzz/artifacts/{target}/"
            ));
        }
    }
    Ok(())
}
