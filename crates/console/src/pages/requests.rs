//! `/`: the requests, newest first, with their progress; `/requests/{id}`: one request, what
//! went wrong, its orders, and the steps pause, resume, cancel and retry failed (each confirmed
//! on a page that says how many orders it touches).

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Form, Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use cm_domain::{Order, RequestId, RequestState, Status, TargetType};
use cm_ports::store::{OrderCursor, RequestCursor, RequestFilter};
use cm_ports::{RequestError, RequestView, RetryError};
use maud::{Markup, html};
use serde::Deserialize;

use super::{PageError, given, size};
use crate::session::{Session, csrf_ok};
use crate::view::{self, Nav, link};
use crate::{Console, MAX_LIST};

/// Requests per page by default.
const PAGE: usize = 25;
/// Orders per page of a request by default.
const ORDERS_PAGE: usize = 50;

/// The filters and position of the requests list, as they stand in its URL.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    state: Option<String>,
    action: Option<String>,
    user: Option<String>,
    target_type: Option<String>,
    target: Option<String>,
    after: Option<String>,
    size: Option<String>,
}

impl ListQuery {
    fn filter(&self) -> Result<RequestFilter, PageError> {
        Ok(RequestFilter {
            state: given(self.state.as_ref())
                .map(|s| RequestState::parse(s, "state"))
                .transpose()?,
            action: given(self.action.as_ref()).map(str::to_owned),
            user: given(self.user.as_ref()).map(str::to_owned),
            target_type: given(self.target_type.as_ref())
                .map(TargetType::parse)
                .transpose()?,
            target_id: given(self.target.as_ref()).map(str::to_owned),
            ..RequestFilter::default()
        })
    }

    fn pairs(&self) -> Vec<(&'static str, Option<&str>)> {
        vec![
            ("state", given(self.state.as_ref())),
            ("action", given(self.action.as_ref())),
            ("user", given(self.user.as_ref())),
            ("target_type", given(self.target_type.as_ref())),
            ("target", given(self.target.as_ref())),
            ("size", given(self.size.as_ref())),
        ]
    }
}

async fn list_body(console: &Console, q: &ListQuery) -> Result<Markup, PageError> {
    let filter = q.filter()?;
    let after = given(q.after.as_ref())
        .map(|c| RequestCursor::decode(c, "after"))
        .transpose()?;
    let page = console
        .manager()
        .requests(&filter, size(q.size.as_ref(), PAGE)?, after)
        .await?;
    let mut next = q.pairs();
    let cursor = page.next.map(|c| c.encode());
    next.push(("after", cursor.as_deref()));
    Ok(html! {
        @if page.items.is_empty() {
            p.empty { "No request matches these filters." }
        } @else {
            div.table-wrap {
                table.requests {
                    caption.visually-hidden { "Requests, newest first" }
                    thead { tr {
                        th scope="col" { "Request" }
                        th scope="col" { "Action" }
                        th scope="col" { "Target" }
                        th scope="col" { "User" }
                        th scope="col" { "Created" }
                        th scope="col" { "State" }
                        th scope="col" .wide { "Progress" }
                    } }
                    tbody {
                        @for r in &page.items { (row(r)) }
                    }
                }
            }
        }
        @if let Some(c) = &cursor {
            p.pager { a rel="next" href=(link("/", &next)) data-cursor=(c) { "Older requests →" } }
        }
    })
}

fn row(r: &RequestView) -> Markup {
    let id = r.request_id.to_string();
    let href = format!("/requests/{id}");
    html! {
        tr data-request=(id) {
            td.id { a href=(href) { (id) } }
            @if let Some(rec) = &r.record {
                td { (rec.action().name) }
                td { (rec.target().kind().as_str()) " " code { (rec.target().id()) } }
                td { (rec.user().unwrap_or("—")) }
                td { (view::time(rec.created_at())) }
                td { (view::state(rec.state())) }
            } @else {
                td colspan="5" { "(submitted before request records)" }
            }
            td.wide { (view::progress(&r.counts)) }
        }
    }
}

fn filters(q: &ListQuery) -> Markup {
    let chosen = given(q.state.as_ref());
    let chosen_type = given(q.target_type.as_ref());
    html! {
        form.filters method="get" action="/" role="search" {
            div.field {
                label for="f-state" { "State" }
                select #f-state name="state" {
                    option value="" selected[chosen.is_none()] { "any" }
                    @for s in RequestState::ALL {
                        option value=(s.as_str()) selected[chosen == Some(s.as_str())] { (s.as_str()) }
                    }
                }
            }
            div.field {
                label for="f-action" { "Action" }
                input #f-action name="action" value=[given(q.action.as_ref())];
            }
            div.field {
                label for="f-user" { "User" }
                input #f-user name="user" value=[given(q.user.as_ref())];
            }
            div.field {
                label for="f-target-type" { "Target type" }
                select #f-target-type name="target_type" {
                    option value="" selected[chosen_type.is_none()] { "any" }
                    @for t in TargetType::ALL {
                        option value=(t.as_str()) selected[chosen_type == Some(t.as_str())] { (t.as_str()) }
                    }
                }
            }
            div.field {
                label for="f-target" { "Target id" }
                input #f-target name="target" value=[given(q.target.as_ref())];
            }
            div.field.actions {
                button type="submit" { "Filter" }
                a href="/" { "Clear" }
            }
        }
    }
}

pub(crate) async fn list(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Query(q): Query<ListQuery>,
) -> Result<Html<String>, PageError> {
    let body = list_body(&console, &q).await?;
    let mut live = q.pairs();
    live.push(("after", given(q.after.as_ref())));
    let page = html! {
        (filters(&q))
        div #live data-live=(link("/console/live/requests", &live))
            data-every=(console.settings().refresh_ms) aria-live="polite" {
            (body)
        }
    };
    Ok(Html(
        view::page("Requests", Nav::Requests, Some(&session), &page).into_string(),
    ))
}

pub(crate) async fn list_live(
    State(console): State<Console>,
    Query(q): Query<ListQuery>,
) -> Result<Html<String>, PageError> {
    Ok(Html(list_body(&console, &q).await?.into_string()))
}

/// The position in one request's orders, as it stands in the URL.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DetailQuery {
    status: Option<String>,
    after: Option<String>,
    size: Option<String>,
}

fn request_id(raw: &str) -> Result<RequestId, PageError> {
    RequestId::parse(raw, "request_id").map_err(|_| PageError::NotFound("No such request."))
}

async fn view_of(console: &Console, id: &RequestId) -> Result<RequestView, PageError> {
    console
        .manager()
        .request(id)
        .await?
        .ok_or(PageError::NotFound("No such request."))
}

/// What each step would touch, as the buttons and the confirmation say it.
fn steps(r: &RequestView) -> Vec<(&'static str, String, String)> {
    let c = &r.counts;
    let Some(rec) = &r.record else {
        return if c.pending > 0 {
            vec![(
                "cancel",
                "Cancel".to_owned(),
                format!("ends its {} pending orders", c.pending),
            )]
        } else {
            Vec::new()
        };
    };
    let mut out = Vec::new();
    let s = rec.state();
    if matches!(s, RequestState::Scheduled | RequestState::Running) {
        out.push((
            "pause",
            "Pause".to_owned(),
            format!(
                "holds its {} orders not handed out yet; the {} out now finish normally",
                c.pending,
                c.sent + c.in_progress
            ),
        ));
    }
    if s == RequestState::Paused {
        out.push((
            "resume",
            "Resume".to_owned(),
            format!("lets its {} waiting orders go out again", c.pending),
        ));
    }
    if !s.is_finished() && s != RequestState::Writing {
        out.push((
            "cancel",
            "Cancel".to_owned(),
            format!(
                "ends its {} pending orders as cancelled; the {} out now are not taken back",
                c.pending,
                c.sent + c.in_progress
            ),
        ));
    }
    if c.failure > 0 {
        out.push((
            "retry",
            "Retry failed".to_owned(),
            format!(
                "starts a new request re-running its {} failed orders",
                c.failure
            ),
        ));
    }
    out
}

async fn detail_body(
    console: &Console,
    id: &RequestId,
    q: &DetailQuery,
) -> Result<Markup, PageError> {
    let r = view_of(console, id).await?;
    let status = given(q.status.as_ref())
        .map(|s| Status::parse(s, "status"))
        .transpose()?;
    let after = given(q.after.as_ref())
        .map(|c| OrderCursor::decode(c, "after"))
        .transpose()?;
    let groups = console
        .manager()
        .request_results(id)
        .await?
        .unwrap_or_default();
    let orders = console
        .manager()
        .request_orders(id, status, size(q.size.as_ref(), ORDERS_PAGE)?, after)
        .await?;
    let base = format!("/requests/{id}");
    let status_str = status.map(Status::as_str);
    Ok(html! {
        section aria-labelledby="h-progress" {
            h2 #h-progress { "Progress" }
            (view::progress(&r.counts))
            @let steps = steps(&r);
            @if !steps.is_empty() {
                div.steps {
                    @for (step, label, touches) in &steps {
                        form method="get" action={ (base) "/confirm" } {
                            input type="hidden" name="step" value=(step);
                            button type="submit" class={ "step step-" (step) } title=(touches) {
                                (label)
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="h-wrong" {
            h2 #h-wrong { "What went wrong" }
            @let failed: Vec<_> = groups.iter().filter(|g| g.status == Status::Failure).collect();
            @if failed.is_empty() {
                p.empty { "No order failed." }
            } @else {
                div.table-wrap {
                    table.groups {
                        thead { tr {
                            th scope="col" { "Count" }
                            th scope="col" { "Code" }
                            th scope="col" { "Message" }
                            th scope="col" { "Targets (sample)" }
                        } }
                        tbody {
                            @for g in &failed {
                                tr.group {
                                    td { a href={ (link(&base, &[("status", Some(g.status.as_str()))])) "#orders" } { (g.count) " orders" } }
                                    td { (g.code) }
                                    td.message { (g.message) }
                                    td.sample { @for (i, t) in g.sample.iter().enumerate() { @if i > 0 { ", " } code { (t) } } }
                                }
                            }
                        }
                    }
                }
            }
            @let done: Vec<_> = groups.iter().filter(|g| g.status != Status::Failure).collect();
            @if !done.is_empty() {
                p.ok-groups {
                    @for g in &done {
                        a href={ (link(&base, &[("status", Some(g.status.as_str()))])) "#orders" } {
                            (g.count) " " (g.status.as_str()) " (code " (g.code) ")"
                        } " "
                    }
                }
            }
        }
        section aria-labelledby="h-orders" #orders {
            h2 #h-orders { "Orders" }
            nav.status-filter aria-label="Orders by status" {
                a href={ (base) "#orders" } aria-current=[status.is_none().then_some("true")] { "all" }
                @for s in [Status::Pending, Status::Sent, Status::InProgress, Status::Success, Status::Failure] {
                    " "
                    a href={ (link(&base, &[("status", Some(s.as_str()))])) "#orders" }
                        aria-current=[(status == Some(s)).then_some("true")] { (s.as_str()) " (" (r.counts.get(s)) ")" }
                }
            }
            @match &orders {
                Some(page) if !page.items.is_empty() => {
                    div.table-wrap {
                        table.orders {
                            thead { tr {
                                th scope="col" { "Target" }
                                th scope="col" { "Status" }
                                th scope="col" { "Code" }
                                th scope="col" { "Message" }
                                th scope="col" { "Data" }
                                th scope="col" { "Finished" }
                            } }
                            tbody { @for o in &page.items { (order_row(o)) } }
                        }
                    }
                    @if let Some(next) = page.next {
                        p.pager { a rel="next" href={ (link(&base, &[("status", status_str), ("size", given(q.size.as_ref())), ("after", Some(&next.encode()))])) "#orders" } { "More orders →" } }
                    }
                }
                _ => { p.empty { "No order in this status." } }
            }
        }
    })
}

fn order_row(o: &Order) -> Markup {
    html! {
        tr data-order=(o.order_id().to_string()) {
            td { code { (o.target().id()) } }
            td { (view::status(o.status())) }
            @if let Some(res) = o.result() {
                td { (res.code()) }
                td.message { (res.message()) }
                td { @if !res.data().is_empty() { pre { (res.data()) } } }
            } @else {
                td {} td {} td {}
            }
            td { @if let Some(t) = o.finished_at() { (view::time(t)) } }
        }
    }
}

fn record_facts(r: &RequestView, args: Option<&serde_json::Value>) -> Markup {
    html! {
        @if let Some(rec) = &r.record {
            dl.facts {
                dt { "State" } dd { (view::state(rec.state())) @if let Some(why) = rec.state_reason() { " — " (why) } }
                dt { "Action" } dd { (rec.action().name) " " span.muted { (rec.action().version) } }
                dt { "Target" } dd { (rec.target().kind().as_str()) " " code { (rec.target().id()) } }
                dt { "User" } dd { (rec.user().unwrap_or("—")) }
                dt { "Source" } dd { (rec.source().as_str()) }
                dt { "Created" } dd { (view::time(rec.created_at())) }
                @if let Some(t) = rec.finished_at() { dt { "Finished" } dd { (view::time(t)) } }
                dt { "Timeout" } dd { (rec.timeout().secs()) " s" }
                @if let Some(s) = rec.schedule() {
                    dt { "Schedule" } dd {
                        @if let Some(t) = s.start_at { "starts " (view::time(t)) " " }
                        @if let Some(w) = s.rollout_secs { "over " (w) " s" }
                    }
                }
                @if let Some(rc) = rec.rate_control() {
                    dt { "Rate control" } dd {
                        @if let Some(c) = rc.max_concurrency { "at most " (c) " at once " }
                        @if let Some(e) = rc.max_errors { "stop after " (e) " errors" }
                    }
                }
                @if let Some(of) = rec.retry_of() {
                    dt { "Retry of" } dd { a href={ "/requests/" (of) } { (of) } }
                }
                dt { "Orders" } dd { (rec.total()) }
                @if let Some(args) = args {
                    dt { "Args" } dd { pre.args { (view::json_text(args)) } }
                }
            }
        } @else {
            p { "Submitted before request records existed: only its orders are known." }
        }
    }
}

pub(crate) async fn detail(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Path(raw): Path<String>,
    Query(q): Query<DetailQuery>,
) -> Result<Html<String>, PageError> {
    let id = request_id(&raw)?;
    let r = view_of(&console, &id).await?;
    let body = detail_body(&console, &id, &q).await?;
    // The args stay on the orders: the first one's are the request's.
    let first = console.manager().request_orders(&id, None, 1, None).await?;
    let args = first
        .as_ref()
        .and_then(|p| p.items.first())
        .map(|o| o.action().args().clone());
    let live = link(
        &format!("/console/live/requests/{id}"),
        &[
            ("status", given(q.status.as_ref())),
            ("after", given(q.after.as_ref())),
            ("size", given(q.size.as_ref())),
        ],
    );
    let page = html! {
        p.id { "Request " code { (id) } }
        (record_facts(&r, args.as_ref()))
        div #live data-live=(live) data-every=(console.settings().refresh_ms) aria-live="polite" {
            (body)
        }
    };
    Ok(Html(
        view::page("Request", Nav::Requests, Some(&session), &page).into_string(),
    ))
}

pub(crate) async fn detail_live(
    State(console): State<Console>,
    Path(raw): Path<String>,
    Query(q): Query<DetailQuery>,
) -> Result<Html<String>, PageError> {
    let id = request_id(&raw)?;
    Ok(Html(detail_body(&console, &id, &q).await?.into_string()))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ConfirmQuery {
    step: String,
}

/// The confirmation of one step: what it touches, now, and the form that does it.
pub(crate) async fn confirm(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Path(raw): Path<String>,
    Query(q): Query<ConfirmQuery>,
) -> Result<Html<String>, PageError> {
    let id = request_id(&raw)?;
    let r = view_of(&console, &id).await?;
    let Some((step, label, touches)) = steps(&r).into_iter().find(|(s, _, _)| *s == q.step) else {
        return Err(PageError::Conflict(format!(
            "This request cannot be {} now.",
            past(&q.step)
        )));
    };
    let body = html! {
        p.confirm { (label) " request " code { (id) } ": this " (touches) "." }
        form method="post" action={ "/requests/" (id) "/" (step) } {
            input type="hidden" name="csrf" value=(session.csrf);
            button type="submit" class={ "step step-" (step) } { "Yes, " (label.to_lowercase()) }
            " "
            a href={ "/requests/" (id) } { "No, go back" }
        }
    };
    Ok(Html(
        view::page(&format!("{label}?"), Nav::Requests, Some(&session), &body).into_string(),
    ))
}

fn past(step: &str) -> &'static str {
    match step {
        "pause" => "paused",
        "resume" => "resumed",
        "cancel" => "cancelled",
        "retry" => "retried",
        _ => "changed so",
    }
}

/// Runs one confirmed step and goes to the request (for a retry, to the new one).
pub(crate) async fn act(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Path((raw, step)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !csrf_ok(&session, form.get("csrf").map_or("", String::as_str)) {
        return view::bad_csrf();
    }
    let id = match request_id(&raw) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let m = console.manager();
    let state_error = |e: RequestError| match e {
        RequestError::NotFound => PageError::NotFound("No such request (or it has no record)."),
        RequestError::State(e) => PageError::Conflict(e.to_string()),
        RequestError::Unavailable(e) => e.into(),
    };
    let done: Result<RequestId, PageError> = match step.as_str() {
        "pause" => m.pause_request(&id).await.map(|_| id).map_err(state_error),
        "resume" => m.resume_request(&id).await.map(|_| id).map_err(state_error),
        "cancel" => match m.cancel_request(&id).await {
            Ok(Some(_)) => Ok(id),
            Ok(None) => Err(PageError::NotFound("No such request.")),
            Err(e) => Err(state_error(e)),
        },
        "retry" => match m.retry_request(&id, Status::Failure).await {
            Ok(new) => Ok(new.request_id),
            Err(RetryError::NotFound) => Err(PageError::NotFound("No such request.")),
            Err(e @ (RetryError::NothingToRetry(_) | RetryError::Invalid(_))) => {
                Err(PageError::Conflict(e.to_string()))
            }
            Err(RetryError::Unavailable(e)) => Err(e.into()),
        },
        _ => Err(PageError::NotFound("No such step.")),
    };
    match done {
        Ok(to) => {
            tracing::info!(request = %id, step, "console step");
            Redirect::to(&format!("/requests/{to}")).into_response()
        }
        Err(e) => e.into_response(),
    }
}

const _: () = assert!(PAGE <= MAX_LIST && ORDERS_PAGE <= MAX_LIST);
