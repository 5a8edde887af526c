//! `/new`: the form for a command. **Preview** runs the dry run (how many targets, a sample);
//! **Submit** submits it and goes to the new request's page. `/console/suggest` answers the
//! groups and agents that start with what is typed, for the target's `<datalist>`.

use std::collections::BTreeSet;

use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use cm_domain::{
    Action, AgentId, Command, FieldError, Limit, RateControl, Schedule, Source, Target, TargetType,
    Timeout,
};
use cm_ports::{DryRunPlan, SubmitError, SubmitRequest};
use maud::{Markup, html};
use serde::Deserialize;

use super::{PageError, given};
use crate::Console;
use crate::session::{Session, csrf_ok};
use crate::view::{self, Nav};

/// The default timeout of the form, in seconds.
const DEFAULT_TIMEOUT: &str = "300";
/// Most suggestions answered.
const SUGGESTIONS: usize = 20;
/// Agents read to find the groups that match (one page: bounded work per keystroke).
const GROUP_SCAN: usize = 1000;

/// The form's fields, as sent.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct NewForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    target_type: String,
    #[serde(default)]
    target_id: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    args: String,
    #[serde(default)]
    timeout: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    start_at: String,
    #[serde(default)]
    rollout_secs: String,
    #[serde(default)]
    max_concurrency: String,
    #[serde(default)]
    max_errors: String,
    #[serde(default)]
    intent: String,
}

fn int(raw: &str, field: &str) -> Result<Option<i64>, FieldError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse()
        .map(Some)
        .map_err(|_| FieldError::new(field, "must be a whole number"))
}

fn limit(raw: &str, field: &str) -> Result<Option<Limit>, FieldError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    Limit::parse(raw).map(Some).ok_or_else(|| {
        FieldError::new(
            field,
            "must be a number of orders, or a percentage such as 10%",
        )
    })
}

impl NewForm {
    /// The command the form describes, checked as the API checks one.
    fn command(&self) -> Result<Command, FieldError> {
        let kind = TargetType::parse(self.target_type.trim())?;
        let target = Target::new(kind, self.target_id.trim())?;
        let args_text = if self.args.trim().is_empty() {
            "{}"
        } else {
            self.args.as_str()
        };
        let args: serde_json::Value = serde_json::from_str(args_text)
            .map_err(|e| FieldError::new("action.args", format!("is not valid JSON: {e}")))?;
        let action = Action::new(self.action.trim(), args, self.version.trim())?;
        let timeout = Timeout::new(
            int(&self.timeout, "timeout")?
                .ok_or_else(|| FieldError::new("timeout", "is required"))?,
        )?;
        let user = Some(self.user.trim())
            .filter(|u| !u.is_empty())
            .map(str::to_owned);
        let start = Some(self.start_at.trim()).filter(|s| !s.is_empty());
        let schedule = Schedule::parse(start, int(&self.rollout_secs, "schedule.rollout_secs")?)?;
        let rate = RateControl {
            max_concurrency: limit(&self.max_concurrency, "rate_control.max_concurrency")?,
            max_errors: limit(&self.max_errors, "rate_control.max_errors")?,
        };
        let mut command = Command::new(Source::UsersServices, user, target, action, timeout)?
            .with_schedule(schedule);
        if !rate.is_empty() {
            command = command.with_rate_control(rate);
        }
        Ok(command)
    }
}

fn form_page(session: &Session, f: &NewForm, outcome: Option<Markup>) -> Markup {
    let kind = if f.target_type.is_empty() {
        "group"
    } else {
        f.target_type.as_str()
    };
    let timeout = if f.timeout.is_empty() {
        DEFAULT_TIMEOUT
    } else {
        f.timeout.as_str()
    };
    let args = if f.args.is_empty() {
        "{}"
    } else {
        f.args.as_str()
    };
    let body = html! {
        @if let Some(o) = outcome { (o) }
        form.command #new-command method="post" action="/new" {
            input type="hidden" name="csrf" value=(session.csrf);
            fieldset {
                legend { "Target" }
                div.field {
                    label for="target_type" { "Type" }
                    select #target_type name="target_type" {
                        @for t in TargetType::ALL {
                            option value=(t.as_str()) selected[kind == t.as_str()] { (t.as_str()) }
                        }
                    }
                }
                div.field {
                    label for="target_id" { "Id" }
                    input #target_id name="target_id" value=(f.target_id) list="target-suggestions"
                        autocomplete="off" required;
                    datalist #target-suggestions {}
                }
            }
            fieldset {
                legend { "Action" }
                div.field {
                    label for="action" { "Name" }
                    input #action name="action" value=(f.action) required;
                }
                div.field {
                    label for="version" { "Version" }
                    input #version name="version" value=(f.version);
                }
                div.field.full {
                    label for="args" { "Args (JSON object or array)" }
                    textarea #args name="args" rows="5" spellcheck="false" aria-describedby="args-error" { (args) }
                    p #args-error .field-error aria-live="polite" {}
                }
                div.field {
                    label for="timeout" { "Timeout (seconds)" }
                    input #timeout name="timeout" type="number" min="1" max=(Timeout::MAX) value=(timeout) required;
                }
                div.field {
                    label for="user" { "User" }
                    input #user name="user" value=(f.user) autocomplete="username";
                }
            }
            fieldset {
                legend { "Schedule and rate control (optional)" }
                div.field {
                    label for="start_at" { "Start at (RFC 3339, UTC)" }
                    input #start_at name="start_at" value=(f.start_at) placeholder="2026-12-01T10:00:00Z";
                }
                div.field {
                    label for="rollout_secs" { "Rollout window (seconds)" }
                    input #rollout_secs name="rollout_secs" type="number" min="0" max=(Schedule::MAX_ROLLOUT_SECS) value=(f.rollout_secs);
                }
                div.field {
                    label for="max_concurrency" { "Max concurrency (n or n%)" }
                    input #max_concurrency name="max_concurrency" value=(f.max_concurrency) pattern="[0-9]+%?";
                }
                div.field {
                    label for="max_errors" { "Max errors (n or n%)" }
                    input #max_errors name="max_errors" value=(f.max_errors) pattern="[0-9]+%?";
                }
            }
            div.buttons {
                button type="submit" name="intent" value="preview" { "Preview" }
                button.primary type="submit" name="intent" value="submit" { "Submit" }
            }
        }
    };
    view::page("New command", Nav::New, Some(session), &body)
}

pub(crate) async fn form(Extension(session): Extension<Session>) -> Html<String> {
    Html(form_page(&session, &NewForm::default(), None).into_string())
}

fn refusal(e: &SubmitError) -> (StatusCode, String) {
    match e {
        SubmitError::Invalid(f) | SubmitError::TooFarAhead(f) => {
            (StatusCode::BAD_REQUEST, f.to_string())
        }
        SubmitError::Expansion(x) => (StatusCode::UNPROCESSABLE_ENTITY, x.to_string()),
        SubmitError::Unavailable(s) => {
            tracing::warn!(error = %s, "console submit failed on storage");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "Storage is unavailable right now; nothing was submitted.".to_owned(),
            )
        }
    }
}

fn error_box(message: &str) -> Markup {
    html! { p.error role="alert" { (message) } }
}

fn preview_box(plan: &DryRunPlan) -> Markup {
    html! {
        section.preview aria-labelledby="h-preview" {
            h2 #h-preview { "Preview" }
            p.targets { "This command would reach " strong { (plan.targets) } " targets." }
            @if !plan.sample.is_empty() {
                p { "For example: " @for (i, t) in plan.sample.iter().enumerate() { @if i > 0 { ", " } code { (t) } } }
            }
            p.hint { "Nothing was sent. Submit to send it." }
        }
    }
}

pub(crate) async fn submit(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Form(f): Form<NewForm>,
) -> Response {
    if !csrf_ok(&session, &f.csrf) {
        return view::bad_csrf();
    }
    let command = match f.command() {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Html(form_page(&session, &f, Some(error_box(&e.to_string()))).into_string()),
            )
                .into_response();
        }
    };
    let request = SubmitRequest {
        commands: vec![command],
        idempotency: None,
    };
    let m = console.manager();
    if f.intent == "submit" {
        match m.submit(request).await {
            Ok(done) => match done.first() {
                Some(s) => {
                    tracing::info!(request = %s.request_id, "console submit");
                    Redirect::to(&format!("/requests/{}", s.request_id)).into_response()
                }
                None => PageError::Unavailable.into_response(),
            },
            Err(e) => {
                let (code, message) = refusal(&e);
                (
                    code,
                    Html(form_page(&session, &f, Some(error_box(&message))).into_string()),
                )
                    .into_response()
            }
        }
    } else {
        let outcome = match m.dry_run(&request).await {
            Ok(plans) => plans.first().map(preview_box),
            Err(e) => {
                let (code, message) = refusal(&e);
                return (
                    code,
                    Html(form_page(&session, &f, Some(error_box(&message))).into_string()),
                )
                    .into_response();
            }
        };
        Html(form_page(&session, &f, outcome).into_string()).into_response()
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct SuggestQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    q: Option<String>,
}

/// Existing agents (by id) or groups (of the first agents) starting with `q`.
pub(crate) async fn suggest(
    State(console): State<Console>,
    Query(q): Query<SuggestQuery>,
) -> Result<Json<Vec<String>>, PageError> {
    let prefix = given(q.q.as_ref()).unwrap_or("");
    let m = console.manager();
    let out = match given(q.kind.as_ref()) {
        Some("agent") => {
            // Agents are listed by id: the first page after the prefix holds its matches.
            let mut out = Vec::new();
            let exact = AgentId::parse(prefix, "q").ok();
            if let Some(id) = &exact
                && m.agent(id).await?.is_some()
            {
                out.push(prefix.to_owned());
            }
            let page = m.agents(None, SUGGESTIONS, exact).await?;
            out.extend(
                page.items
                    .iter()
                    .map(|a| a.id().as_str())
                    .filter(|id| id.starts_with(prefix))
                    .map(str::to_owned),
            );
            out
        }
        Some("group") => {
            let page = m.agents(None, GROUP_SCAN, None).await?;
            let groups: BTreeSet<&str> = page
                .items
                .iter()
                .flat_map(|a| a.groups().iter().map(|g| g.as_str()))
                .filter(|g| g.starts_with(prefix))
                .collect();
            groups
                .into_iter()
                .take(SUGGESTIONS)
                .map(str::to_owned)
                .collect()
        }
        _ => Vec::new(),
    };
    Ok(Json(out))
}
