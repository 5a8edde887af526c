//! The pieces every page is made of: the layout, the progress bar, states as words and colour,
//! times, links with queries. maud escapes every value it renders.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use cm_domain::{RequestState, StatusCounts};
use maud::{DOCTYPE, Markup, html};

use crate::assets::{CSS_PATH, JS_PATH};
use crate::session::Session;

/// Which entry of the navigation is the current page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Requests,
    New,
    Agents,
    Servers,
    None,
}

/// A whole page: header with navigation (and logout when signed in), `main` holding `body`.
pub(crate) fn page(title: &str, nav: Nav, session: Option<&Session>, body: &Markup) -> Markup {
    let item = |target: Nav, href: &str, label: &str| {
        html! {
            li { a href=(href) aria-current=[(nav == target).then_some("page")] { (label) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Command Manager" }
                link rel="stylesheet" href=(CSS_PATH);
                script src=(JS_PATH) defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "Command Manager" }
                    nav aria-label="Main" {
                        ul {
                            (item(Nav::Requests, "/", "Requests"))
                            (item(Nav::New, "/new", "New command"))
                            (item(Nav::Agents, "/agents", "Agents"))
                            (item(Nav::Servers, "/servers", "Servers"))
                        }
                    }
                    @if let Some(s) = session.filter(|s| s.signed_in) {
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub(crate) fn error_page(status: StatusCode, message: &str) -> (StatusCode, Html<String>) {
    let body = html! {
        p.error role="alert" { (message) }
        p { a href="/" { "Back to the requests" } }
    };
    (
        status,
        Html(
            page(
                status.canonical_reason().unwrap_or("Error"),
                Nav::None,
                None,
                &body,
            )
            .into_string(),
        ),
    )
}

pub(crate) fn bad_csrf() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "This form is stale (its security token does not match your session). Open the page again and repeat the action.",
    )
    .into_response()
}

pub(crate) fn login(error: Option<&str>) -> Markup {
    let body = html! {
        @if let Some(e) = error { p.error role="alert" { (e) } }
        form.login method="post" action="/login" {
            p {
                label for="token" { "Manager token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
            }
            p { button type="submit" { "Log in" } }
        }
        p.hint { "Use one of the service's manager tokens (" code { "auth.manager_tokens" } ")." }
    };
    page("Log in", Nav::None, None, &body)
}

/// A time as `2026-11-30 18:00:00 UTC`, in a `<time>` element.
pub(crate) fn time(t: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)) {
            (t.format("%Y-%m-%d %H:%M:%S UTC"))
        }
    }
}

pub(crate) fn state(s: RequestState) -> Markup {
    html! { span class={ "state state-" (s.as_str()) } { (s.as_str()) } }
}

pub(crate) fn status(s: cm_domain::Status) -> Markup {
    html! { span class={ "status status-" (s.as_str()) } { (s.as_str()) } }
}

/// The progress of a request: a bar of its success, failure, in-flight and waiting shares, and
/// the same as words and counts.
pub(crate) fn progress(c: &StatusCounts) -> Markup {
    let total = c.total();
    let in_flight = c.sent + c.in_progress;
    let parts = [
        ("ok", c.success),
        ("failed", c.failure),
        ("flight", in_flight),
        ("waiting", c.pending),
    ];
    let mut x = 0u64;
    let mut segments = Vec::new();
    for (class, n) in parts {
        if n > 0 && total > 0 {
            let w = n * 1000 / total;
            segments.push((class, x, w.max(4)));
            x += w;
        }
    }
    let label = format!(
        "{} of {total} succeeded, {} failed, {in_flight} in flight, {} waiting",
        c.success, c.failure, c.pending
    );
    html! {
        div.progress {
            svg.bar viewBox="0 0 1000 12" preserveAspectRatio="none" role="img" aria-label=(label) {
                rect.track x="0" y="0" width="1000" height="12" {}
                @for (class, x, w) in segments {
                    rect class=(class) x=(x) y="0" width=(w) height="12" {}
                }
            }
            p.counts {
                span.c-ok { (c.success) " success" } " · "
                span.c-failed { (c.failure) " failure" } " · "
                span.c-flight { (in_flight) " in flight" } " · "
                span.c-waiting { (c.pending) " waiting" } " · "
                span { (total) " total" }
            }
        }
    }
}

/// Percent-encodes `raw` for a query string (everything but unreserved characters).
pub(crate) fn enc(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `path` with the non-empty `pairs` as its query.
pub(crate) fn link(path: &str, pairs: &[(&str, Option<&str>)]) -> String {
    let query: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.filter(|v| !v.is_empty())
                .map(|v| format!("{k}={}", enc(v)))
        })
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// A JSON value as indented text (rendered in `<pre>`, escaped).
pub(crate) fn json_text(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}
