//! `command-manager`: reads its configuration, wires one storage backend into the HTTP API and
//! the scheduler, and runs until SIGINT/SIGTERM.

mod config;
mod wiring;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cm_api_http::AppState;
use cm_ports::CommandManager;
use cm_scheduler::Scheduler;
use tokio::sync::watch;

use crate::config::{Config, LogFormat};

/// jemalloc, set up in `.cargo/config.toml` to hand freed memory back within about a second.
/// Under glibc's allocator the memory of a burst stayed resident: 90 MB after registering
/// 100,000 agents, where jemalloc falls back to 57 MB.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Expands fleet command requests into per-agent orders, delivers them to long-polling agents,
/// records their results and keeps the orders stream healthy.
#[derive(Debug, Parser)]
#[command(name = "command-manager", version, about)]
struct Cli {
    /// A TOML configuration file; `CM_*` environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply pending storage migrations, then exit.
    Migrate,
}

fn main() -> ExitCode {
    // ring is the one TLS crypto provider compiled in (the OpenSearch client's HTTPS and the
    // HTTP listener's TLS); clients built later find it installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("command-manager: {e}");
            return ExitCode::from(2);
        }
    };
    // Before anything listens: no exposed service without authentication (docs/configuration.md).
    if !matches!(cli.command, Some(Command::Migrate))
        && let Err(e) = cm_api_http::check_exposure(&cfg.http, &cfg.auth)
    {
        eprintln!("command-manager: configuration error: {e}");
        return ExitCode::from(2);
    }
    init_logging(&cfg);
    if !matches!(cli.command, Some(Command::Migrate))
        && let Err(e) = raise_fd_limit(&cfg)
    {
        eprintln!("command-manager: configuration error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(cfg).await,
            Command::Migrate => migrate(cfg).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "command-manager stopped");
            eprintln!("command-manager: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Every open connection (an agent's long-poll is one) holds a file descriptor: raise the soft
/// limit to the hard one, log both, and refuse a connection cap that does not fit under it.
fn raise_fd_limit(cfg: &Config) -> Result<(), String> {
    let limit = cm_api_http::raise_fd_limit()
        .map_err(|e| format!("cannot read the open-file limit: {e}"))?;
    let max_connections = cfg.http.connection_cap(limit)?;
    tracing::info!(
        soft = limit.soft,
        hard = limit.hard,
        max_connections,
        "open-file limit"
    );
    Ok(())
}

fn init_logging(cfg: &Config) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    match cfg.log.format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn migrate(cfg: Config) -> Result<(), String> {
    let applied = wiring::migrate(&cfg.storage)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        backend = cfg.storage.backend.name(),
        applied,
        "migrations applied"
    );
    Ok(())
}

async fn serve(cfg: Config) -> Result<(), String> {
    // Installed before the storage opens, so that what the storage reports while opening
    // (the OpenSearch nodes alive) is recorded.
    let metrics = match cm_api_http::install_metrics_recorder() {
        Ok(handle) => {
            // The recorder has the HELP texts of the use cases and the HTTP driver; the
            // scheduler's and the OpenSearch client's are ours to add.
            cm_scheduler::metric::describe();
            cm_adapter_opensearch::metric::describe();
            Some(handle)
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics are off");
            None
        }
    };
    let backend = cfg.storage.backend.name();
    let storage = wiring::open(&cfg.storage)
        .await
        .map_err(|e| format!("cannot open the {backend} storage: {e}"))?;
    let manager = CommandManager::new(storage.ports.clone(), cfg.service_settings());
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .map_err(|e| format!("http.listen {}: {e}", cfg.http.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        %address,
        backend,
        tls = cfg.http.tls.is_some(),
        auth = cfg.auth.enabled,
        "listening"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });

    let scheduler =
        tokio::spawn(Scheduler::new(manager.clone(), cfg.scheduler.clone()).run(stopped()));
    // The operator console on the API's listener (docs/console.md).
    let console = if cfg.console.enabled {
        let access = cm_console::Access {
            auth_enabled: cfg.auth.enabled,
            manager_tokens: cfg.auth.manager_tokens.clone(),
            tls: cfg.http.tls.is_some(),
        };
        cm_console::router(cm_console::Console::new(
            manager.clone(),
            cfg.console.clone(),
            access,
        ))
    } else {
        axum::Router::new()
    };
    let state = AppState::new(manager, cfg.http.clone(), cfg.auth.clone(), metrics);
    let served = cm_api_http::serve_with(listener, state, console, stopped()).await;
    if let Err(e) = scheduler.await {
        tracing::error!(error = %e, "scheduler task failed");
    }
    storage.close().await;
    served.map_err(|e| format!("http server: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
