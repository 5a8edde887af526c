//! The HTTP driver of the command manager: every route of docs/api.md over the use cases of
//! [`cm_ports::CommandManager`].
//!
//! * [`router`] builds the whole API as an [`axum::Router`]; [`serve`] runs it until a shutdown
//!   future resolves, over plain TCP or TLS ([`TlsSettings`]);
//! * every route but `/healthz`, `/readyz` and `/openapi.json` needs credentials when
//!   [`AuthSettings::enabled`]: a manager's bearer token, or an agent's key (Basic) on the
//!   delivery routes, where an agent may act only for itself; [`check_exposure`] is the start-up
//!   check that refuses an exposed service without authentication;
//! * open long-polls are capped ([`HttpSettings::max_open_polls`]): beyond it a poll answers 503
//!   with `Retry-After` at once;
//! * request bodies are read as JSON values and walked by DTO functions that build domain types,
//!   so every refusal names the offending field (`commands[1].target.type`);
//! * every failure, including extractor rejections, 404 and 405, answers with one error body,
//!   `{"error": {"code", "message", "field"?}}`; storage failures answer 503 with `Retry-After`
//!   and a generic message (the cause is logged, never echoed);
//! * requests are traced with the matched route and counted in `cm_http_requests_total` and
//!   `cm_http_request_duration_seconds` ([`metric`]); `/metrics` renders every metric when a
//!   [`MetricsHandle`] is given; `/openapi.json` is generated from the handlers.
//!
//! The driver calls use cases only; it never touches an adapter.

mod auth;
mod conn;
mod dto;
mod error;
mod extract;
mod handlers;
pub mod metric;
mod middleware;
mod openapi;
mod tls;

use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use cm_ports::CommandManager;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tokio::sync::{Semaphore, watch};

pub use crate::auth::{AuthSettings, MIN_TOKEN_LEN, check_exposure};
pub use crate::conn::{FdLimit, RESERVED_FDS, fd_limit, raise_fd_limit};
pub use crate::tls::TlsSettings;

/// Settings of the HTTP server (`[http]` in the configuration file, `CM_HTTP__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body accepted; larger bodies answer 413.
    pub max_body_bytes: usize,
    /// Longest a request may take before it answers 503; 0 disables the limit. Long-polls may
    /// take their (bounded) wait plus this much.
    pub request_timeout_secs: u64,
    /// The `Retry-After` header of every 503 answer, in seconds.
    pub retry_after_secs: u64,
    /// Most long-polls open at once; a poll beyond it answers 503 with `Retry-After` at once.
    pub max_open_polls: usize,
    /// Most client connections open at once (long-polls included); a connection beyond it is
    /// answered 503 with `Retry-After` and closed. 0: as many as the process's open-file limit
    /// allows after [`RESERVED_FDS`].
    pub max_connections: usize,
    /// Longest a client may take to send a request head (or complete a TLS handshake), counted
    /// from the connection's start or from the first byte of a later request; slower ones are
    /// dropped.
    pub header_read_timeout_secs: u64,
    /// Longest a kept-alive connection may stay idle between requests before it is closed.
    pub idle_timeout_secs: u64,
    /// Serve HTTPS with this certificate and key; plain HTTP when absent.
    pub tls: Option<TlsSettings>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            max_body_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            retry_after_secs: 5,
            max_open_polls: 20_000,
            max_connections: 0,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            tls: None,
        }
    }
}

/// Buckets of [`metric::HTTP_REQUEST_DURATION`]: from a millisecond to the longest long-poll.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0,
];

/// Buckets of `cm_store_operation_seconds`: from a tenth of a millisecond (a memory or SQLite
/// read) to a backend that is timing out.
const STORE_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// The process's Prometheus recorder, from which `/metrics` renders.
#[derive(Clone)]
pub struct MetricsHandle(PrometheusHandle);

impl MetricsHandle {
    /// The Prometheus text exposition of every metric recorded so far.
    #[must_use]
    pub fn render(&self) -> String {
        self.0.render()
    }

    /// Drains histogram samples into their buckets. [`serve`] runs it every few seconds; call it
    /// yourself when rendering without [`serve`].
    pub fn run_upkeep(&self) {
        self.0.run_upkeep();
    }
}

impl fmt::Debug for MetricsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsHandle").finish_non_exhaustive()
    }
}

/// Installs the Prometheus recorder as the process's global `metrics` recorder and registers
/// the HELP texts of the use cases' and the HTTP driver's metrics with it.
///
/// Idempotent: the first call installs it, every later call returns a handle to the same
/// recorder.
///
/// # Errors
/// A message when another global recorder (not installed by this function) is already set.
pub fn install_metrics_recorder() -> Result<MetricsHandle, String> {
    static INSTALLED: Mutex<Option<MetricsHandle>> = Mutex::new(None);
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(metric::HTTP_REQUEST_DURATION.name.to_owned()),
            &DURATION_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(cm_ports::metric::STORE_OPERATION.name.to_owned()),
                &STORE_BUCKETS,
            )
        })
        .map_err(|e| format!("cannot configure the metrics recorder: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    // The HELP texts of the metrics of the crates this one knows; a binary that runs the
    // scheduler also calls `cm_scheduler::metric::describe`.
    cm_ports::metric::describe();
    metric::describe();
    let handle = MetricsHandle(handle);
    *installed = Some(handle.clone());
    Ok(handle)
}

/// What every handler shares: the use cases, the settings, the metrics handle and the shutdown
/// signal that ends open long-polls. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    manager: CommandManager,
    settings: HttpSettings,
    auth: AuthSettings,
    metrics: Option<MetricsHandle>,
    shutdown: watch::Sender<bool>,
    open_polls: Semaphore,
    /// `/openapi.json`, built on first use.
    openapi: OnceLock<String>,
}

impl AppState {
    #[must_use]
    pub fn new(
        manager: CommandManager,
        settings: HttpSettings,
        auth: AuthSettings,
        metrics: Option<MetricsHandle>,
    ) -> Self {
        let open_polls = Semaphore::new(settings.max_open_polls.min(Semaphore::MAX_PERMITS));
        Self {
            inner: Arc::new(Inner {
                manager,
                settings,
                auth,
                metrics,
                shutdown: watch::Sender::new(false),
                open_polls,
                openapi: OnceLock::new(),
            }),
        }
    }

    pub(crate) fn manager(&self) -> &CommandManager {
        &self.inner.manager
    }

    pub(crate) fn settings(&self) -> &HttpSettings {
        &self.inner.settings
    }

    pub(crate) fn auth(&self) -> &AuthSettings {
        &self.inner.auth
    }

    pub(crate) fn metrics(&self) -> Option<&MetricsHandle> {
        self.inner.metrics.as_ref()
    }

    /// The OpenAPI document, with the bounds this service's settings give its parameters.
    pub(crate) fn openapi_document(&self) -> &str {
        self.inner
            .openapi
            .get_or_init(|| openapi::document(self.manager().settings(), self.auth().enabled))
    }

    /// The slots of open long-polls ([`HttpSettings::max_open_polls`]).
    pub(crate) fn open_polls(&self) -> &Semaphore {
        &self.inner.open_polls
    }

    /// Ends every open long-poll (they answer what they have, usually nothing) and makes new
    /// ones answer without waiting.
    pub(crate) fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// Resolves once shutdown has begun.
    pub(crate) fn shutting_down(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.shutdown.subscribe();
        async move {
            // The sender lives as long as any state clone; an error means it is gone, which
            // also means shutting down.
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
    }
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("settings", &self.inner.settings)
            .field("auth", &self.inner.auth)
            .field("metrics", &self.inner.metrics.is_some())
            .finish_non_exhaustive()
    }
}

/// The path template of the long-poll route; its timeout is its wait plus the request timeout.
pub(crate) const POLL_ROUTE: &str = "/api/v1/agents/{agent_id}/poll";
/// The path template of the result report route.
pub(crate) const RESULT_ROUTE: &str = "/api/v1/orders/{order_id}/result";
/// The path template of a server component's long-poll.
pub(crate) const COMPONENT_POLL_ROUTE: &str = "/api/v1/servers/{component}/poll";
/// The path template of a relay's claim for many agents and components (docs/delivery.md).
pub(crate) const RELAY_CLAIM_ROUTE: &str = "/api/v1/relay/claim";
/// The path template of the batch result report.
pub(crate) const RESULTS_ROUTE: &str = "/api/v1/results";
/// The path templates of rollout control over a whole request (docs/rollout.md).
pub(crate) const REQUEST_ORDERS_ROUTE: &str = "/api/v1/requests/{request_id}/orders";
pub(crate) const REQUEST_CANCEL_ROUTE: &str = "/api/v1/requests/{request_id}/cancel";
pub(crate) const REQUEST_RETRY_ROUTE: &str = "/api/v1/requests/{request_id}/retry";

/// Every route of docs/api.md with its middleware, over `state`.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings().max_body_bytes;
    Router::new()
        .route("/api/v1/commands", post(handlers::commands::submit))
        .route(
            "/_plugins/_command_manager/commands",
            post(handlers::commands::submit_wazuh),
        )
        .route("/api/v1/orders", get(handlers::orders::list))
        .route("/api/v1/orders/{order_id}", get(handlers::orders::one))
        .route(
            "/api/v1/orders/{order_id}/cancel",
            post(handlers::orders::cancel),
        )
        .route(RESULT_ROUTE, post(handlers::delivery::report))
        .route(
            "/api/v1/requests/{request_id}",
            get(handlers::requests::one),
        )
        .route("/api/v1/requests", get(handlers::requests::list))
        .route(
            "/api/v1/requests/{request_id}/pause",
            post(handlers::requests::pause),
        )
        .route(
            "/api/v1/requests/{request_id}/resume",
            post(handlers::requests::resume),
        )
        .route(
            "/api/v1/requests/{request_id}/results",
            get(handlers::requests::results),
        )
        .route(REQUEST_ORDERS_ROUTE, get(handlers::requests::orders))
        .route(REQUEST_CANCEL_ROUTE, post(handlers::requests::cancel))
        .route(REQUEST_RETRY_ROUTE, post(handlers::requests::retry))
        .route(
            "/api/v1/agents",
            get(handlers::agents::list).put(handlers::agents::put_many),
        )
        .route(
            "/api/v1/agents/{agent_id}",
            put(handlers::agents::put)
                .get(handlers::agents::one)
                .delete(handlers::agents::delete),
        )
        .route(
            "/api/v1/agents/{agent_id}/key",
            post(handlers::agents::rotate_key),
        )
        .route(POLL_ROUTE, post(handlers::delivery::poll))
        .route("/api/v1/servers", get(handlers::consumers::list))
        .route(
            "/api/v1/servers/{component}",
            put(handlers::consumers::put).delete(handlers::consumers::delete),
        )
        .route(
            "/api/v1/servers/{component}/key",
            post(handlers::consumers::rotate_key),
        )
        .route(COMPONENT_POLL_ROUTE, post(handlers::consumers::poll))
        .route(RELAY_CLAIM_ROUTE, post(handlers::consumers::relay_claim))
        .route(RESULTS_ROUTE, post(handlers::consumers::results))
        .route("/healthz", get(handlers::ops::healthz))
        .route("/readyz", get(handlers::ops::readyz))
        .route("/metrics", get(handlers::ops::metrics))
        .route("/openapi.json", get(handlers::ops::openapi))
        // Every route above, before its handler's extractors (so an unauthenticated request
        // learns nothing about its body or path): authentication and the route's role.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .method_not_allowed_fallback(handlers::ops::method_not_allowed)
        .fallback(handlers::ops::not_found)
        // Innermost first: the timeout wraps the handler only, the trace span everything.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::timeout,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            middleware::retry_after,
        ))
        .layer(axum::middleware::from_fn(middleware::record_metrics))
        .layer(middleware::trace_layer())
        .with_state(state)
}

/// How often [`serve`] drains histogram samples when it has a [`MetricsHandle`].
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Serves until `shutdown` resolves, then stops accepting, ends open long-polls (they answer
/// with what they have, usually an empty list) and lets in-flight requests finish. With
/// [`HttpSettings::tls`] it terminates TLS on `listener`. Connections are capped and slow or
/// idle clients dropped as [`HttpSettings`] says.
///
/// # Errors
/// The I/O error that stopped the server, or an [`std::io::ErrorKind::InvalidInput`] error
/// naming the TLS setting whose file cannot be used, or the connection setting that does not fit
/// under the open-file limit ([`HttpSettings::connection_cap`]), before anything is served.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, Router::new(), shutdown).await
}

/// [`serve`], with `extra` routes (the operator console) served beside the API's on the same
/// listener. `extra` must have no fallback and no path of the API's; the API's middleware
/// (authentication, timeouts, metrics) stays on the API's routes.
///
/// # Errors
/// As [`serve`].
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = match &state.settings().tls {
        Some(tls) => Some(tokio_rustls::TlsAcceptor::from(
            tls::server_config(tls)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        )),
        None => None,
    };
    let max_connections = state
        .settings()
        .connection_cap(conn::fd_limit()?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let limits = conn::Limits::new(state.settings(), max_connections);
    let exposed = listener
        .local_addr()
        .is_ok_and(|a| !a.ip().to_canonical().is_loopback());
    if exposed && tls.is_none() && state.auth().enabled {
        tracing::warn!(
            "credentials travel unencrypted: set http.tls or terminate TLS in front of this service"
        );
    }
    if let Some(handle) = state.metrics().cloned() {
        let stopping = state.shutting_down();
        tokio::spawn(async move {
            tokio::pin!(stopping);
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tokio::select! {
                    () = &mut stopping => return,
                    _ = every.tick() => handle.run_upkeep(),
                }
            }
        });
    }
    let signal = {
        let state = state.clone();
        async move {
            shutdown.await;
            tracing::info!("shutdown requested: no new connections, ending long-polls");
            state.begin_shutdown();
        }
    };
    // One route table shared by every connection (cloning a `Router` clones an `Arc`).
    let routes = router(state.clone()).merge(extra);
    let served = conn::accept_loop(listener, tls, routes, limits, signal).await;
    state.begin_shutdown();
    served
}
