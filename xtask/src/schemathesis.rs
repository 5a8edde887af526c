//! Schemathesis, the schema-driven fuzzer of the API-description test (`tests/schemathesis.rs`):
//! where `cargo xtask test` finds its `st`, and what to run when it is missing.
//!
//! It comes from PyPI, so it lives in a virtual environment at a fixed place,
//! `${CM_VENV:-$HOME/.cache/command-manager/venv}`, which `.ci/run` creates; an `st` on `PATH`
//! does too. The test gets the path in `CM_SCHEMATHESIS`.

use std::path::PathBuf;

/// The variable the test reads.
pub(crate) const VAR: &str = "CM_SCHEMATHESIS";

/// The version `.ci/run` installs, and the one the hint names.
pub(crate) const VERSION: &str = "4.32.5";

/// The virtual environment schemathesis is installed in.
fn venv() -> Option<PathBuf> {
    match std::env::var_os("CM_VENV") {
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".cache/command-manager/venv")),
    }
}

/// `st`: the one `CM_SCHEMATHESIS` names, else the virtual environment's, else one on `PATH`.
///
/// # Errors
/// What is missing, with the commands that install it.
pub(crate) fn find() -> Result<PathBuf, String> {
    if let Some(given) = std::env::var_os(VAR).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(given));
    }
    let in_venv = venv().map(|v| v.join("bin/st")).filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("st"))
                .find(|p| p.is_file())
        })
    };
    in_venv.or_else(on_path).ok_or_else(|| {
        let venv = venv().map_or_else(
            || "$HOME/.cache/command-manager/venv".to_owned(),
            |v| v.display().to_string(),
        );
        format!(
            "schemathesis (st), for the API-description test: python3 -m venv {venv} && \
             {venv}/bin/pip install schemathesis=={VERSION} (apt-get install python3-venv \
             when venv is missing; or set {VAR} to an st you have)"
        )
    })
}
