//! `cargo xtask test`: every test of the workspace, with the real backends they need.
//!
//! Starts one throwaway PostgreSQL and one single-node OpenSearch for the whole run (each test
//! isolates itself in its own database / index prefix), exports their URLs, runs
//! `cargo test --workspace`, and stops both. `CM_TEST_POSTGRES_URL` (or `DATABASE_URL`) and
//! `OPENSEARCH_URL` point the tests at servers you already run instead. The API-description
//! test gets schemathesis's `st` in `CM_SCHEMATHESIS` ([`schemathesis::find`]), the console's
//! browser tests chromedriver and Chromium in `CM_CHROMEDRIVER` / `CM_CHROMIUM`
//! ([`browser::find`]). Nothing is
//! installed: what is missing is named, with the command that installs it.
//!
//! `--heavy` also builds and runs the heavy tests (`tests/heavy/`: backend outages, many
//! instances), which only exist with the root package's `heavy` feature: the run becomes
//! `cargo test --workspace --features command-manager/heavy`, with `CM_TEST_HEAVY=1`. The
//! outage tests start servers of their own through this binary, whose path every test gets in
//! `CM_XTASK_BIN`.

use std::time::Instant;

use crate::{browser, opensearch, postgres, process, schemathesis};

const USAGE: &str = "cargo xtask test [--heavy] [-- <arguments for cargo test>]";

/// The feature that builds the heavy tests.
const HEAVY_FEATURE: &str = "command-manager/heavy";

/// The variables that point tests at existing servers.
const POSTGRES_VARS: [&str; 2] = ["CM_TEST_POSTGRES_URL", "DATABASE_URL"];
const OPENSEARCH_VAR: &str = "OPENSEARCH_URL";

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut heavy = false;
    let mut passthrough: Vec<String> = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--heavy" => heavy = true,
            "--" => passthrough.extend(rest.by_ref().cloned()),
            other => return Err(format!("unknown argument {other:?}\nusage: {USAGE}")),
        }
    }
    let started = Instant::now();
    let existing_pg = POSTGRES_VARS
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()));
    let existing_os = std::env::var(OPENSEARCH_VAR).ok().filter(|u| !u.is_empty());

    let mut missing = Vec::new();
    if existing_pg.is_none()
        && let Err(e) = postgres::check()
    {
        missing.push(format!(
            "{e} (or set CM_TEST_POSTGRES_URL to a server you run)"
        ));
    }
    if existing_os.is_none()
        && let Err(e) = opensearch::check()
    {
        missing.push(format!("{e} (or set OPENSEARCH_URL to a node you run)"));
    }
    let st = match schemathesis::find() {
        Ok(st) => Some(st),
        Err(e) => {
            missing.push(e);
            None
        }
    };
    let chrome = match browser::find() {
        Ok(found) => Some(found),
        Err(e) => {
            missing.push(e);
            None
        }
    };
    if !missing.is_empty() {
        return Err(format!(
            "cannot run every test; missing:\n  - {}",
            missing.join("\n  - ")
        ));
    }

    // OpenSearch takes the longest to start: boot it while the tests compile.
    let os_boot = existing_os.is_none().then(|| {
        println!("xtask: starting a throwaway OpenSearch node");
        std::thread::spawn(|| opensearch::start(None, None))
    });
    let pg = match existing_pg {
        Some(url) => {
            println!("xtask: using PostgreSQL at {}", redact(&url));
            Backend::Existing(url)
        }
        None => {
            let server = postgres::start(None)?;
            println!("xtask: started a throwaway PostgreSQL at {}", server.url());
            Backend::Started(server)
        }
    };

    let features: &[&str] = if heavy {
        &["--features", HEAVY_FEATURE]
    } else {
        &[]
    };
    let mut build = process::cargo();
    build
        .args(["test", "--workspace", "--no-run"])
        .args(features);
    process::run_status(&mut build, "compiling the tests")?;

    let os = match (existing_os, os_boot) {
        (Some(url), _) => {
            println!("xtask: using OpenSearch at {url}");
            Backend::Existing(url)
        }
        (None, Some(boot)) => {
            let server = boot
                .join()
                .map_err(|_| "the OpenSearch start-up thread panicked".to_owned())??;
            println!("xtask: started a throwaway OpenSearch at {}", server.url());
            Backend::Started(server)
        }
        (None, None) => unreachable!("a node is started whenever none is given"),
    };

    let mut test = process::cargo();
    test.args(["test", "--workspace"])
        .args(features)
        .env("CM_TEST_POSTGRES_URL", pg.url())
        .env(OPENSEARCH_VAR, os.url());
    if let Some(st) = &st {
        test.env(schemathesis::VAR, st);
    }
    if let Some(found) = &chrome {
        browser::export(&mut test, found);
    }
    if let Ok(me) = std::env::current_exe() {
        test.env("CM_XTASK_BIN", me);
    }
    if heavy {
        test.env("CM_TEST_HEAVY", "1");
    }
    if !passthrough.is_empty() {
        test.arg("--").args(&passthrough);
    }
    let outcome = process::run_status(&mut test, "the tests");
    drop(os);
    drop(pg);
    outcome?;
    println!("xtask: every test passed in {:.0?}", started.elapsed());
    Ok(())
}

/// A server the run started (stopped when dropped) or one it was pointed at.
enum Backend<S: HasUrl> {
    Started(S),
    Existing(String),
}

trait HasUrl {
    fn url(&self) -> &str;
}

impl HasUrl for postgres::PgServer {
    fn url(&self) -> &str {
        postgres::PgServer::url(self)
    }
}

impl HasUrl for opensearch::OpenSearchServer {
    fn url(&self) -> &str {
        opensearch::OpenSearchServer::url(self)
    }
}

impl<S: HasUrl> Backend<S> {
    fn url(&self) -> &str {
        match self {
            Self::Started(s) => s.url(),
            Self::Existing(url) => url,
        }
    }
}

/// A URL without its password, for printing.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_in_urls_are_not_printed() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("http://127.0.0.1:9200"), "http://127.0.0.1:9200");
    }
}
