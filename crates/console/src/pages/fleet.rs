//! `/agents`: agents by id or group, each with its groups and recent orders; `/servers`: the
//! server components, each with its recent orders.

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Html;
use chrono::Duration;
use cm_domain::{AgentId, ComponentName, GroupName, Order, TargetType};
use cm_ports::store::OrderFilter;
use maud::{Markup, html};
use serde::Deserialize;

use super::{PageError, given, size};
use crate::Console;
use crate::session::Session;
use crate::view::{self, Nav, link};

/// Agents or servers per page by default.
const PAGE: usize = 20;
/// Orders shown per agent or server.
const RECENT: usize = 5;
/// Orders read per agent or server to find its most recent ones: the last of the day's first
/// ones (bounded work per row).
const RECENT_SCAN: usize = 200;

/// The most recent orders matching `filter` among the first [`RECENT_SCAN`] of the last day,
/// newest first.
async fn recent(console: &Console, mut filter: OrderFilter) -> Result<Vec<Order>, PageError> {
    filter.since = Some(chrono::Utc::now() - Duration::days(1));
    let page = console.manager().orders(&filter, RECENT_SCAN, None).await?;
    Ok(page.items.into_iter().rev().take(RECENT).collect())
}

fn orders_list(orders: &[Order]) -> Markup {
    html! {
        @if orders.is_empty() {
            span.muted { "no order in the last day" }
        } @else {
            ul.recent {
                @for o in orders {
                    li {
                        (view::status(o.status())) " "
                        a href={ "/requests/" (o.request_id()) } { (o.action().name()) }
                        " " span.muted { (view::time(o.created_at())) }
                        @if let Some(r) = o.result() { @if !r.message().is_empty() { " — " span.message { (r.message()) } } }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct AgentsQuery {
    id: Option<String>,
    group: Option<String>,
    after: Option<String>,
    size: Option<String>,
}

pub(crate) async fn agents(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Query(q): Query<AgentsQuery>,
) -> Result<Html<String>, PageError> {
    let m = console.manager();
    let id = given(q.id.as_ref());
    let group = given(q.group.as_ref());
    let (agents, next) = if let Some(id) = id {
        let id = AgentId::parse(id, "id")?;
        (m.agent(&id).await?.into_iter().collect::<Vec<_>>(), None)
    } else {
        let group = group.map(|g| GroupName::parse(g, "group")).transpose()?;
        let after = given(q.after.as_ref())
            .map(|a| AgentId::parse(a, "after"))
            .transpose()?;
        let page = m
            .agents(group.as_ref(), size(q.size.as_ref(), PAGE)?, after)
            .await?;
        (page.items, page.next)
    };
    let mut rows = Vec::with_capacity(agents.len());
    for a in &agents {
        let orders = recent(
            &console,
            OrderFilter {
                agent_id: Some(a.id().clone()),
                ..OrderFilter::default()
            },
        )
        .await?;
        rows.push((a, orders));
    }
    let body = html! {
        form.filters method="get" action="/agents" role="search" {
            div.field {
                label for="a-id" { "Agent id (exact)" }
                input #a-id name="id" value=[id];
            }
            div.field {
                label for="a-group" { "Group" }
                input #a-group name="group" value=[group];
            }
            div.field.actions {
                button type="submit" { "Search" }
                a href="/agents" { "Clear" }
            }
        }
        @if rows.is_empty() {
            p.empty { "No agent found." }
        } @else {
            div.table-wrap {
                table.agents {
                    thead { tr {
                        th scope="col" { "Agent" }
                        th scope="col" { "Groups" }
                        th scope="col" .wide { "Latest orders" }
                    } }
                    tbody {
                        @for (a, orders) in &rows {
                            tr data-agent=(a.id().as_str()) {
                                td { code { (a.id().as_str()) } }
                                td { @for (i, g) in a.groups().iter().enumerate() {
                                    @if i > 0 { ", " }
                                    a href=(link("/agents", &[("group", Some(g.as_str()))])) { (g.as_str()) }
                                } }
                                td.wide { (orders_list(orders)) }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next {
            p.pager { a rel="next" href=(link("/agents", &[("group", group), ("size", given(q.size.as_ref())), ("after", Some(next.as_str()))])) { "More agents →" } }
        }
    };
    Ok(Html(
        view::page("Agents", Nav::Agents, Some(&session), &body).into_string(),
    ))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ServersQuery {
    after: Option<String>,
    size: Option<String>,
}

pub(crate) async fn servers(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Query(q): Query<ServersQuery>,
) -> Result<Html<String>, PageError> {
    let after = given(q.after.as_ref())
        .map(|a| ComponentName::parse(a, "after"))
        .transpose()?;
    let page = console
        .manager()
        .components(size(q.size.as_ref(), PAGE)?, after)
        .await?;
    let mut rows = Vec::with_capacity(page.items.len());
    for c in &page.items {
        let orders = recent(
            &console,
            OrderFilter {
                target_type: Some(TargetType::Server),
                target_id: Some(c.as_str().to_owned()),
                ..OrderFilter::default()
            },
        )
        .await?;
        rows.push((c, orders));
    }
    let body = html! {
        @if rows.is_empty() {
            p.empty { "No server component is registered." }
        } @else {
            div.table-wrap {
                table.servers {
                    thead { tr {
                        th scope="col" { "Component" }
                        th scope="col" .wide { "Latest orders" }
                    } }
                    tbody {
                        @for (c, orders) in &rows {
                            tr { td { code { (c.as_str()) } } td.wide { (orders_list(orders)) } }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &page.next {
            p.pager { a rel="next" href=(link("/servers", &[("size", given(q.size.as_ref())), ("after", Some(next.as_str()))])) { "More servers →" } }
        }
    };
    Ok(Html(
        view::page("Servers", Nav::Servers, Some(&session), &body).into_string(),
    ))
}
