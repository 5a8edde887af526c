//! Authentication and roles (docs/api.md, docs/configuration.md).
//!
//! * A **manager** presents `Authorization: Bearer <token>`, one of [`AuthSettings::manager_tokens`]
//!   (compared in constant time with every configured token).
//! * An **agent** presents `Authorization: Basic base64(<agent id>:<key>)`, the key issued when it
//!   was registered or its key was rotated (verified against the stored hash).
//! * A **component** (a server component consuming `server` orders) presents
//!   `Authorization: Basic base64(<component>:<key>)` the same way. A name that is both an agent
//!   and a component is told apart by the key: the agent's is tried first.
//! * A **relay** presents `Authorization: Bearer <token>`, one of
//!   [`AuthSettings::relay_tokens`]: it claims orders for many agents and components and reports
//!   their results, and can do nothing else.
//!
//! Every matched route has one [`Role`] ([`role_of`]): management routes need a manager, an
//! agent's poll the agent, a component's poll the component (the handlers check it is the
//! right one), the result routes any consumer or a relay, the relay claim a relay; operations
//! are open.
//! Missing, unknown or malformed credentials answer 401 with `WWW-Authenticate`; valid credentials
//! of the wrong role answer 403. With authentication off every route is open.
//!
//! Credentials are never logged: spans carry the method, the route and the path only.

use std::fmt;
use std::net::SocketAddr;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header::AUTHORIZATION};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use cm_domain::{AgentId, ComponentName, Consumer};
use cm_ports::Reporter;
use cm_ports::auth::matches_any;
use serde::Deserialize;

use crate::error::ApiError;
use crate::{
    AppState, COMPONENT_POLL_ROUTE, HttpSettings, POLL_ROUTE, RELAY_CLAIM_ROUTE,
    REQUEST_CANCEL_ROUTE, REQUEST_ORDERS_ROUTE, REQUEST_RETRY_ROUTE, RESULT_ROUTE, RESULTS_ROUTE,
};

/// Shortest manager token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// Authentication settings (`[auth]` in the configuration file, `CM_AUTH__*`). `Debug` never
/// shows the tokens.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Require credentials on every route but `/healthz`, `/readyz` and `/openapi.json`. Off is
    /// allowed only on a loopback listen address ([`check_exposure`]).
    pub enabled: bool,
    /// The bearer tokens of managers; each at least [`MIN_TOKEN_LEN`] visible ASCII characters.
    pub manager_tokens: Vec<String>,
    /// The bearer tokens of relays (docs/delivery.md), under the same rules; none by default.
    pub relay_tokens: Vec<String>,
}

impl fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSettings")
            .field("enabled", &self.enabled)
            .field(
                "manager_tokens",
                &format_args!("[{} redacted]", self.manager_tokens.len()),
            )
            .field(
                "relay_tokens",
                &format_args!("[{} redacted]", self.relay_tokens.len()),
            )
            .finish()
    }
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// The start-up check of how the service is exposed: refuses authentication off on a
/// non-loopback listen address, authentication on without manager tokens or with a token
/// shorter than [`MIN_TOKEN_LEN`] (or holding spaces or control characters), and TLS files that
/// cannot be read or do not fit together.
///
/// # Errors
/// A message naming the setting at fault (`auth.enabled`, `http.listen`, `auth.manager_tokens`,
/// `http.tls.cert_path`, `http.tls.key_path`); it never shows a token.
pub fn check_exposure(http: &HttpSettings, auth: &AuthSettings) -> Result<(), String> {
    if auth.enabled {
        if auth.manager_tokens.is_empty() {
            return Err(
                "auth.manager_tokens: must hold at least one token when auth.enabled \
                        is true (CM_AUTH__MANAGER_TOKENS=token1,token2)"
                    .to_owned(),
            );
        }
        let tokens = [
            ("manager_tokens", &auth.manager_tokens),
            ("relay_tokens", &auth.relay_tokens),
        ];
        for (key, list) in tokens {
            for (i, token) in list.iter().enumerate() {
                if token.chars().count() < MIN_TOKEN_LEN {
                    return Err(format!(
                        "auth.{key}[{i}]: must be at least {MIN_TOKEN_LEN} characters long"
                    ));
                }
                if !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!(
                        "auth.{key}[{i}]: may hold only visible ASCII characters \
                         (no spaces, no control characters)"
                    ));
                }
            }
        }
        if let Some(i) = auth
            .relay_tokens
            .iter()
            .position(|t| auth.manager_tokens.contains(t))
        {
            return Err(format!(
                "auth.relay_tokens[{i}]: is also a manager token; a relay needs a token of its own"
            ));
        }
    } else if !is_loopback(&http.listen) {
        return Err(format!(
            "auth.enabled is false while http.listen {} is not a loopback address: anyone who \
             can reach it could command the whole fleet; set auth.enabled = true with \
             auth.manager_tokens, or listen on 127.0.0.1",
            http.listen
        ));
    }
    if let Some(tls) = &http.tls {
        crate::tls::server_config(tls)?;
    }
    Ok(())
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Anyone: health, readiness, the OpenAPI document.
    Open,
    /// A manager token.
    Manager,
    /// An agent's key; the handler checks that it is the agent the request is about.
    Agent,
    /// A component's key; the handler checks that it is the component the request is about.
    Component,
    /// Whoever delivers orders: an agent or a component (for its own orders, checked per
    /// order), or a relay.
    Reporter,
    /// A relay token.
    Relay,
}

/// The role of a matched route template. A route not named here needs a manager, so a new
/// route is closed until it is placed.
pub(crate) fn role_of(route: &str) -> Role {
    match route {
        "/healthz" | "/readyz" | "/openapi.json" => Role::Open,
        POLL_ROUTE => Role::Agent,
        COMPONENT_POLL_ROUTE => Role::Component,
        RESULT_ROUTE | RESULTS_ROUTE => Role::Reporter,
        RELAY_CLAIM_ROUTE => Role::Relay,
        // Rollout control acts on a whole fleet at once: managers only, named here so that a
        // change of the default cannot open them.
        REQUEST_ORDERS_ROUTE | REQUEST_CANCEL_ROUTE | REQUEST_RETRY_ROUTE => Role::Manager,
        _ => Role::Manager,
    }
}

/// Who made a request, as the handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// Authentication is off: anyone may do anything.
    Anyone,
    Manager,
    Agent(AgentId),
    Component(ComponentName),
    Relay,
}

impl Caller {
    /// Refuses anyone but `agent` itself (or anyone at all with authentication off).
    ///
    /// # Errors
    /// [`ApiError::Forbidden`] when the caller is not that agent.
    pub(crate) fn must_be(&self, agent: &AgentId) -> Result<(), ApiError> {
        match self {
            Self::Anyone => Ok(()),
            Self::Agent(me) if me == agent => Ok(()),
            Self::Agent(_) => Err(ApiError::Forbidden(
                "an agent may act only for itself".to_owned(),
            )),
            Self::Manager | Self::Component(_) | Self::Relay => Err(ApiError::Forbidden(
                "this route is for the agent itself".to_owned(),
            )),
        }
    }

    /// Refuses anyone but `component` itself (or anyone at all with authentication off).
    ///
    /// # Errors
    /// [`ApiError::Forbidden`] when the caller is not that component.
    pub(crate) fn must_be_component(&self, component: &ComponentName) -> Result<(), ApiError> {
        match self {
            Self::Anyone => Ok(()),
            Self::Component(me) if me == component => Ok(()),
            Self::Component(_) => Err(ApiError::Forbidden(
                "a component may act only for itself".to_owned(),
            )),
            Self::Manager | Self::Agent(_) | Self::Relay => Err(ApiError::Forbidden(
                "this route is for the component itself".to_owned(),
            )),
        }
    }

    /// Which orders the caller may report for.
    pub(crate) fn reporter(&self) -> Reporter {
        match self {
            Self::Anyone | Self::Manager => Reporter::Anyone,
            Self::Relay => Reporter::Relay,
            Self::Agent(id) => Reporter::Consumer(Consumer::Agent(id.clone())),
            Self::Component(name) => Reporter::Consumer(Consumer::Component(name.clone())),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // Fail closed: a handler reached without the middleware is a bug, not an open door.
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or_else(|| ApiError::internal(&"no caller: the auth middleware did not run"))
    }
}

/// `Basic` credentials, padded or not.
const BASIC: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn malformed() -> ApiError {
    ApiError::Unauthorized(
        "malformed credentials: send Authorization: Bearer <manager token> or \
         Basic base64(<agent id>:<key>)"
            .to_owned(),
    )
}

fn refused() -> ApiError {
    ApiError::Unauthorized("the credentials are not valid".to_owned())
}

/// Who presented the request's credentials.
async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let auth = state.auth();
    if !auth.enabled {
        return Ok(Caller::Anyone);
    }
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(ApiError::Unauthorized(
            "credentials required: Authorization: Bearer <manager token> or \
             Basic base64(<agent id>:<key>)"
                .to_owned(),
        ));
    };
    if values.next().is_some() {
        return Err(malformed());
    }
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, credentials) = value.trim().split_once(' ').ok_or_else(malformed)?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if matches_any(credentials, auth.manager_tokens.iter().map(String::as_str)) {
            Ok(Caller::Manager)
        } else if matches_any(credentials, auth.relay_tokens.iter().map(String::as_str)) {
            Ok(Caller::Relay)
        } else {
            Err(refused())
        }
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = BASIC.decode(credentials).map_err(|_| malformed())?;
        let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
        // Keys never hold a `:`; agent ids may.
        let (name, key) = decoded.rsplit_once(':').ok_or_else(malformed)?;
        // Agent ids and component names follow the same rules.
        let id = AgentId::parse(name, "agent_id").map_err(|_| refused())?;
        let manager = state.manager();
        if manager.authenticate_agent(&id, key).await? {
            return Ok(Caller::Agent(id));
        }
        let component = ComponentName::parse(name, "component").map_err(|_| refused())?;
        if manager.authenticate_component(&component, key).await? {
            Ok(Caller::Component(component))
        } else {
            Err(refused())
        }
    } else {
        Err(malformed())
    }
}

/// Authenticates every request to a matched route and enforces its [`Role`]; the handlers
/// find the [`Caller`] in the request's extensions.
pub(crate) async fn authorize(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let role = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(Role::Manager, |p| role_of(p.as_str()));
    let caller = if role == Role::Open {
        Caller::Anyone
    } else {
        match authenticate(&state, req.headers()).await {
            Ok(caller) => caller,
            Err(e) => return e.into_response(),
        }
    };
    let refusal = match (role, &caller) {
        (_, Caller::Anyone) | (Role::Open, _) => None,
        (Role::Manager, Caller::Manager)
        | (Role::Agent, Caller::Agent(_))
        | (Role::Component, Caller::Component(_))
        | (Role::Relay, Caller::Relay)
        | (Role::Reporter, Caller::Agent(_) | Caller::Component(_) | Caller::Relay) => None,
        (Role::Manager, _) => Some("this route is for managers"),
        (Role::Agent, _) => Some("this route is for the agent itself"),
        (Role::Component, _) => Some("this route is for the component itself"),
        (Role::Relay, _) => Some("this route is for relays"),
        (Role::Reporter, _) => Some("this route is for agents, components and relays"),
    };
    if let Some(why) = refusal {
        return ApiError::Forbidden(why.to_owned()).into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(listen: &str) -> HttpSettings {
        HttpSettings {
            listen: listen.parse().unwrap(),
            ..HttpSettings::default()
        }
    }

    fn on(tokens: &[&str]) -> AuthSettings {
        AuthSettings {
            enabled: true,
            manager_tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
            relay_tokens: Vec::new(),
        }
    }

    #[test]
    fn auth_off_is_allowed_only_on_loopback_addresses() {
        for ok in [
            "127.0.0.1:8080",
            "127.1.2.3:0",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert_eq!(
                check_exposure(&http(ok), &AuthSettings::default()),
                Ok(()),
                "{ok}"
            );
        }
        for exposed in ["0.0.0.0:8080", "[::]:8080", "10.0.0.1:80", "192.168.1.2:0"] {
            let err = check_exposure(&http(exposed), &AuthSettings::default()).unwrap_err();
            assert!(
                err.contains("auth.enabled") && err.contains("http.listen"),
                "{exposed}: {err}"
            );
        }
    }

    #[test]
    fn auth_on_needs_manager_tokens_of_at_least_16_visible_characters() {
        let err = check_exposure(&http("0.0.0.0:80"), &on(&[])).unwrap_err();
        assert!(err.contains("auth.manager_tokens"), "{err}");
        let err = check_exposure(&http("0.0.0.0:80"), &on(&["a-long-token-1234567", "short"]))
            .unwrap_err();
        assert!(err.contains("auth.manager_tokens[1]"), "{err}");
        assert!(!err.contains("short"), "never shows a token: {err}");
        let err =
            check_exposure(&http("0.0.0.0:80"), &on(&["a long token with spaces"])).unwrap_err();
        assert!(err.contains("auth.manager_tokens[0]"), "{err}");
        assert_eq!(
            check_exposure(&http("0.0.0.0:80"), &on(&["a-long-token-1234567"])),
            Ok(())
        );
        assert_eq!(
            check_exposure(&http("127.0.0.1:80"), &on(&["exactly-16-chars"])),
            Ok(())
        );
    }

    #[test]
    fn relay_tokens_follow_the_manager_tokens_rules_and_differ_from_them() {
        let mut auth = on(&["a-long-token-1234567"]);
        auth.relay_tokens = vec!["short".to_owned()];
        let err = check_exposure(&http("0.0.0.0:80"), &auth).unwrap_err();
        assert!(err.contains("auth.relay_tokens[0]"), "{err}");
        auth.relay_tokens = vec!["a-long-token-1234567".to_owned()];
        let err = check_exposure(&http("0.0.0.0:80"), &auth).unwrap_err();
        assert!(err.contains("auth.relay_tokens[0]"), "{err}");
        assert!(!err.contains("a-long-token"), "never shows a token: {err}");
        auth.relay_tokens = vec!["a-relay-token-7654321".to_owned()];
        assert_eq!(check_exposure(&http("0.0.0.0:80"), &auth), Ok(()));
    }

    #[test]
    fn debug_never_shows_the_tokens() {
        let shown = format!("{:?}", on(&["a-long-token-1234567"]));
        assert!(!shown.contains("a-long-token"), "{shown}");
        assert!(shown.contains("1 redacted"), "{shown}");
    }

    #[test]
    fn every_route_outside_operations_and_delivery_needs_a_manager() {
        assert_eq!(role_of("/healthz"), Role::Open);
        assert_eq!(role_of("/openapi.json"), Role::Open);
        assert_eq!(role_of(POLL_ROUTE), Role::Agent);
        assert_eq!(role_of(COMPONENT_POLL_ROUTE), Role::Component);
        assert_eq!(role_of(RESULT_ROUTE), Role::Reporter);
        assert_eq!(role_of(RESULTS_ROUTE), Role::Reporter);
        assert_eq!(role_of(RELAY_CLAIM_ROUTE), Role::Relay);
        assert_eq!(role_of("/api/v1/servers/{component}"), Role::Manager);
        assert_eq!(role_of("/metrics"), Role::Manager);
        for route in [
            REQUEST_ORDERS_ROUTE,
            REQUEST_CANCEL_ROUTE,
            REQUEST_RETRY_ROUTE,
        ] {
            assert_eq!(role_of(route), Role::Manager, "{route}");
        }
        assert_eq!(role_of("/api/v1/some/new/route"), Role::Manager);
    }
}
