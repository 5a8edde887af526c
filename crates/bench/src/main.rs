//! `cm-bench`: the load generator behind `cargo xtask bench`.
//!
//! * `cm-bench run --backend B --binary PATH --out FILE.json …` starts the real
//!   `command-manager` binary on backend B (whose server, if any, the caller started), runs the
//!   scenarios of issue 6 and the relay of issue 13 against it over HTTP (`--scenario S` for
//!   only some), times the backend's raw baselines through its own client library, and writes
//!   what it measured as JSON;
//! * `cm-bench render --out BENCHMARKS.md FILE.json…` turns those files (and criterion's
//!   estimates) into the page.
//!
//! It depends on no adapter and not on the HTTP driver: the service is measured from outside, as
//! its clients see it.

mod api;
mod machine;
mod notes;
mod raw;
mod render;
mod results;
mod scenarios;
mod service;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::raw::{OpenSearchRaw, PostgresRaw, Raw, SqliteRaw};
use crate::results::BackendRun;
use crate::scenarios::{Backend, Bench, Scenario, Sizes};
use crate::service::Service;

#[derive(Debug, Parser)]
#[command(name = "cm-bench", about = "Load generator of `cargo xtask bench`")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Measure one backend; write the results as JSON.
    Run(RunArgs),
    /// Write BENCHMARKS.md from the results of `run`.
    Render(render::RenderArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[arg(long, value_enum)]
    backend: Backend,
    /// The `command-manager` binary (a release build).
    #[arg(long)]
    binary: PathBuf,
    /// Where to write the results.
    #[arg(long)]
    out: PathBuf,
    /// A directory for this run's files (the SQLite database).
    #[arg(long)]
    workdir: PathBuf,
    /// Smaller sizes and shorter periods.
    #[arg(long)]
    quick: bool,
    /// A PostgreSQL server (a database of its own is created on it).
    #[arg(long)]
    postgres_url: Option<String>,
    /// An OpenSearch node.
    #[arg(long)]
    opensearch_url: Option<String>,
    /// Run only this scenario (repeatable; every one by default). Agents are registered
    /// whatever the choice.
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
}

fn main() -> ExitCode {
    // The workspace compiles one TLS crypto provider, ring; an HTTP client panics without it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cm-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Cmd::Run(args) => runtime.block_on(run(args)),
        Cmd::Render(args) => render::render(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cm-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Measures one backend. A backend that cannot be measured at all is recorded as unavailable
/// (with the reason) rather than failing, so that the page says so.
async fn run(args: RunArgs) -> Result<()> {
    let mut out = BackendRun {
        backend: args.backend.name().to_owned(),
        quick: args.quick,
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        load_before: machine::load_average(),
        ..BackendRun::default()
    };
    if let Some(limit) = machine::open_files_limit()
        && limit < 12_000
    {
        eprintln!(
            "cm-bench: warning: the open-files limit is {limit}; 10,000 long-polls need about \
             that many descriptors in the service and here (raise it with `ulimit -n`)"
        );
    }
    let started = Instant::now();
    if let Err(e) = run_backend(&args, &mut out).await {
        eprintln!("bench {}: not measured: {e:#}", out.backend);
        out.unavailable = Some(format!("{e:#}"));
    }
    out.duration_secs = started.elapsed().as_secs_f64();
    out.load_after = machine::load_average();
    let json = serde_json::to_string_pretty(&out)?;
    std::fs::write(&args.out, json)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    Ok(())
}

async fn run_backend(args: &RunArgs, out: &mut BackendRun) -> Result<()> {
    let sizes = Sizes::new(args.quick);
    let backend = args.backend;
    let mut env: Vec<(String, String)> =
        vec![("CM_STORAGE__BACKEND".to_owned(), backend.name().to_owned())];
    let settings: Vec<(&str, String)> = vec![
        // Room for the long-polls of scenario 4, and no per-request limit on a 100,000-order
        // fan-out on a slow disk.
        (
            "CM_LIMITS__MAX_POLL_WAIT_SECS",
            scenarios::MAX_POLL_WAIT_SECS.to_string(),
        ),
        ("CM_HTTP__REQUEST_TIMEOUT_SECS", "0".to_owned()),
    ];
    let scheduler: Vec<(&str, String)> = if backend == Backend::Memory {
        vec![
            ("CM_SCHEDULER__ENABLED", "true".to_owned()),
            (
                "CM_SCHEDULER__INTERVAL_SECS",
                scenarios::memory_interval_secs(args.quick).to_string(),
            ),
            ("CM_LOG__LEVEL", scenarios::SCHEDULER_LOG.to_owned()),
        ]
    } else {
        vec![
            ("CM_SCHEDULER__ENABLED", "false".to_owned()),
            ("CM_LOG__LEVEL", "info".to_owned()),
        ]
    };
    for (k, v) in settings.iter().chain(&scheduler) {
        out.settings.push(format!("{k}={v}"));
        env.push(((*k).to_owned(), v.clone()));
    }
    let sqlite_path = args.workdir.join("bench.db");
    match backend {
        Backend::Memory => {}
        Backend::Sqlite => {
            std::fs::create_dir_all(&args.workdir)?;
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", sqlite_path.display()));
            }
            env.push((
                "CM_STORAGE__SQLITE__PATH".to_owned(),
                sqlite_path.display().to_string(),
            ));
        }
        Backend::Postgres => {
            let server = args
                .postgres_url
                .as_deref()
                .context("--postgres-url is needed for the postgres backend")?;
            let url = fresh_database(server).await?;
            env.push(("CM_STORAGE__POSTGRES__URL".to_owned(), url));
        }
        Backend::Opensearch => {
            let url = args
                .opensearch_url
                .as_deref()
                .context("--opensearch-url is needed for the opensearch backend")?;
            env.push(("CM_STORAGE__OPENSEARCH__URL".to_owned(), url.to_owned()));
        }
    }
    let a = Service::start("A", &args.binary, &env)?;
    let raw = match backend {
        Backend::Memory => Raw::Memory,
        Backend::Sqlite => Raw::Sqlite(SqliteRaw::open(&sqlite_path).await?),
        Backend::Postgres => Raw::Postgres(
            PostgresRaw::connect(&env_value(&env, "CM_STORAGE__POSTGRES__URL")?).await?,
        ),
        Backend::Opensearch => Raw::OpenSearch(OpenSearchRaw::connect(
            &env_value(&env, "CM_STORAGE__OPENSEARCH__URL")?,
            raw::OPENSEARCH_ORDERS_INDEX,
        )?),
    };
    out.version = raw.version().await;
    let bench = Bench {
        backend,
        sizes,
        binary: args.binary.clone(),
        env,
        raw,
    };
    let outcome = scenarios::run_all(&bench, &a, &args.scenarios, out).await;
    let stopped = a.stop();
    outcome?;
    stopped
}

fn env_value(env: &[(String, String)], key: &str) -> Result<String> {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .with_context(|| format!("{key} is not set"))
}

/// Creates a database of its own on the server of `url` and answers its URL.
async fn fresh_database(url: &str) -> Result<String> {
    use sqlx::Connection;
    let name = format!("cm_bench_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .context("cannot connect to PostgreSQL")?;
    // `name` is ours (a fixed prefix and a number): nothing to inject.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name}"
    )))
    .execute(&mut conn)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    with_database(url, &name)
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> Result<String> {
    let Some(scheme_end) = url.find("://") else {
        bail!("not a URL: {url}");
    };
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let after_scheme = &base[scheme_end + 3..];
    let host_end = after_scheme
        .find('/')
        .map_or(base.len(), |i| scheme_end + 3 + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "b").unwrap(),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "b").unwrap(),
            "postgres://u:p@h/b?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:1", "b").unwrap(),
            "postgres://h:1/b"
        );
    }
}
