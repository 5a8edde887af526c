//! Middleware: tracing spans, request metrics, `Retry-After` on 503, request timeouts.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, TraceLayer};
use tracing::Span;

use crate::error::ApiError;
use crate::metric::{HTTP_REQUEST_DURATION, HTTP_REQUESTS};
use crate::{AppState, POLL_ROUTE};

/// The route label of requests that matched no route.
const UNMATCHED: &str = "unmatched";

fn route_of(req: &Request) -> &str {
    req.extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
}

/// Methods are labelled by name only when they are standard, so a client cannot mint labels.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Spans named `request` carrying the method, the matched route and the path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteSpan;

impl<B> MakeSpan<B> for RouteSpan {
    fn make_span(&mut self, req: &axum::http::Request<B>) -> Span {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or(UNMATCHED, MatchedPath::as_str);
        tracing::info_span!(
            "request",
            method = %req.method(),
            route,
            path = %req.uri().path(),
        )
    }
}

pub(crate) fn trace_layer() -> TraceLayer<SharedClassifier<ServerErrorsAsFailures>, RouteSpan> {
    TraceLayer::new_for_http().make_span_with(RouteSpan)
}

/// Counts every answer in [`HTTP_REQUESTS`] and times it in [`HTTP_REQUEST_DURATION`].
pub(crate) async fn record_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = route_of(&req).to_owned();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        HTTP_REQUESTS.name,
        "method" => method,
        "route" => route.clone(),
        "status" => status,
    )
    .increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION.name, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Sets the configured `Retry-After` on every 503.
pub(crate) async fn retry_after(State(state): State<AppState>, mut response: Response) -> Response {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            RETRY_AFTER,
            HeaderValue::from(state.settings().retry_after_secs),
        );
    }
    response
}

/// Ends a request that takes longer than `request_timeout_secs` (long-polls: their longest
/// wait plus that) with a 503.
pub(crate) async fn timeout(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let secs = state.settings().request_timeout_secs;
    if secs == 0 {
        return next.run(req).await;
    }
    let mut limit = Duration::from_secs(secs);
    if route_of(&req) == POLL_ROUTE {
        limit += state.manager().settings().max_poll_wait;
    }
    let route = route_of(&req).to_owned();
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(route, ?limit, "request timed out");
            ApiError::Unavailable.into_response()
        }
    }
}
