//! Sessions, login and logout, and the guard in front of every page.
//!
//! A session is a random id (32 bytes from the operating system's generator) in an `HttpOnly`,
//! `SameSite=Strict` cookie, `Secure` and `__Host-` named under TLS, mapped server-side to its
//! expiry and its CSRF token. With authentication on, a session starts only at `/login` with a
//! manager token; without it, the first page visited starts one (it carries the CSRF token).
//! Every POST must come from this origin (`Origin`, else `Sec-Fetch-Site`) and carry its
//! session's CSRF token in the form.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Form, Request, State};
use axum::http::header::{COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use cm_ports::auth::matches_any;
use serde::Deserialize;

use crate::Console;
use crate::view;

/// One signed-in browser, as the pages see it.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) csrf: String,
    /// A login is shown (and logout offered) only with authentication on.
    pub(crate) signed_in: bool,
}

#[derive(Debug)]
struct Entry {
    csrf: String,
    expires: Instant,
}

/// The sessions of this process.
#[derive(Debug)]
pub(crate) struct Sessions {
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<String, Entry>>,
}

/// 32 random bytes from the operating system, as hex.
fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Sessions {
    pub(crate) fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) const fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new session: its id and CSRF token. `None` when the system has no randomness.
    fn start(&self) -> Option<(String, String)> {
        let id = random_token().ok()?;
        let csrf = random_token().ok()?;
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= self.max {
            map.retain(|_, e| e.expires > now);
        }
        if map.len() >= self.max
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Entry {
                csrf: csrf.clone(),
                expires: now + self.ttl,
            },
        );
        Some((id, csrf))
    }

    /// The CSRF token of the live session `id`.
    fn get(&self, id: &str) -> Option<String> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(id) {
            Some(e) if e.expires > Instant::now() => Some(e.csrf.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    fn end(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }
}

fn cookie_name(console: &Console) -> &'static str {
    if console.access().tls {
        "__Host-cm_console"
    } else {
        "cm_console"
    }
}

fn session_cookie(console: &Console, id: &str, max_age: u64) -> HeaderValue {
    let secure = if console.access().tls { "; Secure" } else { "" };
    let value = format!(
        "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
        cookie_name(console)
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn session_id<'a>(console: &Console, headers: &'a HeaderMap) -> Option<&'a str> {
    let name = cookie_name(console);
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether a POST comes from this console's own pages: its `Origin` names the host it was sent
/// to, or, without `Origin`, the browser says it is not cross-site.
fn same_origin(console: &Console, headers: &HeaderMap) -> bool {
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    match headers.get(ORIGIN).map(HeaderValue::to_str) {
        Some(Ok(origin)) => {
            let scheme = if console.access().tls {
                "https://"
            } else {
                "http://"
            };
            host.is_some_and(|h| origin.strip_prefix(scheme) == Some(h))
        }
        Some(Err(_)) => false,
        None => headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_none_or(|site| matches!(site, "same-origin" | "none")),
    }
}

/// Paths served without a session: the login page and the assets.
fn is_open(path: &str) -> bool {
    path == "/login" || path.starts_with("/console/assets/")
}

/// Paths read by the pages' script, which answer 401 rather than a redirect.
fn is_script_endpoint(path: &str) -> bool {
    path.starts_with("/console/live/") || path == "/console/suggest"
}

/// In front of every route: refuses cross-origin POSTs, finds the session (or, without
/// authentication, starts one), and sends a browser without one to `/login`.
pub(crate) async fn guard(
    State(console): State<Console>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    if req.method() == Method::POST && !same_origin(&console, req.headers()) {
        return view::error_page(
            StatusCode::FORBIDDEN,
            "This form was sent from another site.",
        )
        .into_response();
    }
    let auth = console.access().auth_enabled;
    let found = session_id(&console, req.headers())
        .and_then(|id| console.sessions().get(id).map(|csrf| (id.to_owned(), csrf)));
    if let Some((_, csrf)) = &found {
        req.extensions_mut().insert(Session {
            csrf: csrf.clone(),
            signed_in: auth,
        });
        return next.run(req).await;
    }
    if is_open(&path) {
        return next.run(req).await;
    }
    if auth {
        if is_script_endpoint(&path) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        return Redirect::to("/login").into_response();
    }
    if req.method() == Method::POST {
        // A POST without a session cannot carry a valid token.
        return view::error_page(
            StatusCode::FORBIDDEN,
            "Your session ended; open the page again and repeat the action.",
        )
        .into_response();
    }
    let Some((id, csrf)) = console.sessions().start() else {
        return view::error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "No randomness for a session.",
        )
        .into_response();
    };
    req.extensions_mut().insert(Session {
        csrf,
        signed_in: false,
    });
    let mut response = next.run(req).await;
    let cookie = session_cookie(&console, &id, console.sessions().ttl().as_secs());
    response.headers_mut().append(SET_COOKIE, cookie);
    response
}

/// Whether `presented` is the session's CSRF token (in constant time).
pub(crate) fn csrf_ok(session: &Session, presented: &str) -> bool {
    matches_any(presented, [session.csrf.as_str()])
}

pub(crate) async fn login_form(State(console): State<Console>) -> Response {
    if !console.access().auth_enabled {
        return Redirect::to("/").into_response();
    }
    Html(view::login(None).into_string()).into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    token: String,
}

pub(crate) async fn login(State(console): State<Console>, Form(form): Form<LoginForm>) -> Response {
    if !console.access().auth_enabled {
        return Redirect::to("/").into_response();
    }
    let tokens = console.access().manager_tokens.iter().map(String::as_str);
    if form.token.is_empty() || !matches_any(&form.token, tokens) {
        tracing::info!("console login refused");
        return (
            StatusCode::UNAUTHORIZED,
            Html(view::login(Some("That token is not a manager token.")).into_string()),
        )
            .into_response();
    }
    let Some((id, _)) = console.sessions().start() else {
        return view::error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "No randomness for a session.",
        )
        .into_response();
    };
    tracing::info!("console login");
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().append(
        SET_COOKIE,
        session_cookie(&console, &id, console.sessions().ttl().as_secs()),
    );
    response
}

#[derive(Debug, Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(crate) async fn logout(
    State(console): State<Console>,
    axum::Extension(session): axum::Extension<Session>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !csrf_ok(&session, &form.csrf) {
        return view::bad_csrf().into_response();
    }
    if let Some(id) = session_id(&console, &headers) {
        console.sessions().end(id);
    }
    let mut response = Redirect::to(if console.access().auth_enabled {
        "/login"
    } else {
        "/"
    })
    .into_response();
    response
        .headers_mut()
        .append(SET_COOKIE, session_cookie(&console, "", 0));
    response
}
