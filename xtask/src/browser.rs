//! Headless Chromium and chromedriver, for the console's browser tests
//! (`crates/console/tests/browser.rs`) and `cargo xtask screenshots`: where they are, and what to
//! install when they are missing. The tests get the paths in `CM_CHROMEDRIVER` and
//! `CM_CHROMIUM`; `.ci/run` installs Debian's packages.

use std::path::PathBuf;
use std::process::Command;

use crate::process;

/// The variables the browser harness reads.
pub(crate) const DRIVER_VAR: &str = "CM_CHROMEDRIVER";
pub(crate) const CHROMIUM_VAR: &str = "CM_CHROMIUM";

/// The command that installs both.
pub(crate) const INSTALL: &str = "apt-get install -y chromium chromium-driver";

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

fn given_or_path(var: &str, names: &[&str]) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => on_path(names),
    }
}

/// chromedriver and Chromium.
///
/// # Errors
/// What is missing, with the command that installs it.
pub(crate) fn find() -> Result<(PathBuf, PathBuf), String> {
    let driver = given_or_path(DRIVER_VAR, &["chromedriver"]);
    let chromium = given_or_path(CHROMIUM_VAR, &["chromium", "chromium-browser"]);
    match (driver, chromium) {
        (Some(d), Some(c)) => Ok((d, c)),
        _ => Err(format!(
            "headless Chromium and chromedriver, for the console's browser tests: {INSTALL} \
             (or set {DRIVER_VAR} and {CHROMIUM_VAR})"
        )),
    }
}

/// Sets the variables of the browser harness on `cmd`.
pub(crate) fn export(cmd: &mut Command, (driver, chromium): &(PathBuf, PathBuf)) {
    cmd.env(DRIVER_VAR, driver).env(CHROMIUM_VAR, chromium);
}

/// `cargo xtask screenshots`: every console page at 1280×800 and 390×844, as PNGs in
/// `docs/screenshots/`, taken by the browser harness over a console with sample data (the
/// `screenshots` example of `cm-console`).
pub(crate) fn screenshots(args: &[String]) -> Result<(), String> {
    if let Some(other) = args.first() {
        return Err(format!(
            "unknown argument {other:?}\nusage: cargo xtask screenshots"
        ));
    }
    let found = find().map_err(|e| format!("missing: {e}"))?;
    let out = crate::project_root().join("docs/screenshots");
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut cmd = process::cargo();
    cmd.args([
        "run",
        "--quiet",
        "-p",
        "cm-console",
        "--example",
        "screenshots",
        "--",
    ])
    .arg(&out);
    export(&mut cmd, &found);
    process::run_status(&mut cmd, "taking the screenshots")?;
    println!("xtask: screenshots in {}", out.display());
    Ok(())
}
