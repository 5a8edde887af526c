//! The operator console (docs/console.md): server-rendered pages over the use cases of
//! [`cm_ports::CommandManager`], to see and steer every request from a browser.
//!
//! * [`router`] builds the pages as an [`axum::Router`] without a fallback, so the binary can
//!   merge it with the HTTP API's router on one listener: the console's paths (`/`,
//!   `/requests/{id}`, `/new`, `/agents`, `/servers`, `/login`, `/logout` and `/console/…`)
//!   never overlap the API's (`/api/…`, `/_plugins/…`, `/healthz`, `/readyz`, `/metrics`,
//!   `/openapi.json`);
//! * pages are rendered by maud, which escapes every value: what agents and clients wrote
//!   (`result.message`, `result.data`, `user`, `args`) is always text;
//! * the stylesheet and the one script are embedded in the binary; every answer carries a
//!   Content-Security-Policy that allows this origin only and no inline script or style;
//! * with [`Access::auth_enabled`], a manager token given at `/login` starts a server-side
//!   session ([`ConsoleSettings::session_ttl_secs`]); without a session every page redirects to
//!   `/login`. Every POST carries the session's CSRF token and is refused from another origin;
//! * every page does bounded work: list sizes are capped ([`MAX_LIST`]).
//!
//! The driver calls use cases only; it never touches an adapter.

mod assets;
mod pages;
mod session;
mod view;

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::http::HeaderValue;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::response::Response;
use axum::routing::{get, post};
use cm_ports::CommandManager;
use serde::Deserialize;

use crate::session::Sessions;

/// Most rows one list shows (requests, orders, agents, servers).
pub const MAX_LIST: usize = 100;

/// The console's policy: this origin only, no inline script or style, no framing.
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'";

/// Settings of the console (`[console]` in the configuration file, `CM_CONSOLE__*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSettings {
    /// Serve the console on the API's listener.
    pub enabled: bool,
    /// How long a login lasts, in seconds.
    pub session_ttl_secs: u64,
    /// Most sessions held at once; the oldest is ended to make room.
    pub max_sessions: usize,
    /// How often open pages refresh their live parts, in milliseconds.
    pub refresh_ms: u64,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            session_ttl_secs: 8 * 3600,
            max_sessions: 10_000,
            refresh_ms: 2_000,
        }
    }
}

/// Who may use the console: the service's authentication settings as the console needs them.
/// `Debug` never shows the tokens.
#[derive(Clone, Default)]
pub struct Access {
    /// Require a login with one of `manager_tokens`.
    pub auth_enabled: bool,
    pub manager_tokens: Vec<String>,
    /// The service is served over TLS: session cookies are `Secure` (and `__Host-` named).
    pub tls: bool,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("auth_enabled", &self.auth_enabled)
            .field(
                "manager_tokens",
                &format_args!("[{} redacted]", self.manager_tokens.len()),
            )
            .field("tls", &self.tls)
            .finish()
    }
}

/// What every page shares: the use cases, the settings and the sessions. Cheap to clone.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    manager: CommandManager,
    settings: ConsoleSettings,
    access: Access,
    sessions: Sessions,
}

impl Console {
    #[must_use]
    pub fn new(manager: CommandManager, settings: ConsoleSettings, access: Access) -> Self {
        let sessions = Sessions::new(
            std::time::Duration::from_secs(settings.session_ttl_secs.max(1)),
            settings.max_sessions.max(1),
        );
        Self {
            inner: Arc::new(Inner {
                manager,
                settings,
                access,
                sessions,
            }),
        }
    }

    pub(crate) fn manager(&self) -> &CommandManager {
        &self.inner.manager
    }

    pub(crate) fn settings(&self) -> &ConsoleSettings {
        &self.inner.settings
    }

    pub(crate) fn access(&self) -> &Access {
        &self.inner.access
    }

    pub(crate) fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }
}

impl fmt::Debug for Console {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Console")
            .field("settings", &self.inner.settings)
            .field("access", &self.inner.access)
            .finish_non_exhaustive()
    }
}

/// Every page of the console, over `console`, with its session guard and security headers. It
/// has no fallback: merge it into a router that has one.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/", get(pages::requests::list))
        .route("/requests/{request_id}", get(pages::requests::detail))
        .route(
            "/requests/{request_id}/confirm",
            get(pages::requests::confirm),
        )
        .route("/requests/{request_id}/{step}", post(pages::requests::act))
        .route("/new", get(pages::new::form).post(pages::new::submit))
        .route("/agents", get(pages::fleet::agents))
        .route("/servers", get(pages::fleet::servers))
        .route("/login", get(session::login_form).post(session::login))
        .route("/logout", post(session::logout))
        .route("/console/live/requests", get(pages::requests::list_live))
        .route(
            "/console/live/requests/{request_id}",
            get(pages::requests::detail_live),
        )
        .route("/console/suggest", get(pages::new::suggest))
        .route("/console/assets/{file}", get(assets::serve))
        .route_layer(axum::middleware::from_fn_with_state(
            console.clone(),
            session::guard,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

/// The headers every console answer carries.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
