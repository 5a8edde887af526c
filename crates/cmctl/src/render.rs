//! Output: aligned tables for people, one JSON document for scripts.

use cm_client::{RequestInfo, ResultGroup, Submitted};
use cm_domain::Order;
use serde::Serialize;
use serde_json::json;

/// Prints `rows` under `headers`, each column as wide as its widest cell, two spaces apart.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", table_text(headers, rows));
}

pub(crate) fn table_text(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            l.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 2;
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Where output goes, and in which form.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Out {
    pub(crate) json: bool,
}

fn state(r: &RequestInfo) -> String {
    r.state.map_or_else(
        || "-".to_owned(),
        |s| {
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        },
    )
}

fn target(r: &RequestInfo) -> String {
    r.target
        .as_ref()
        .map_or_else(|| "-".to_owned(), |t| format!("{}:{}", t.kind, t.id))
}

fn status_name(o: &Order) -> String {
    serde_json::to_value(o.status())
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The counts of a request on one line.
pub(crate) fn counts(r: &RequestInfo) -> String {
    format!(
        "{}/{} done: {} success, {} failure; {} pending, {} sent, {} in progress",
        r.finished(),
        r.total,
        r.success,
        r.failure,
        r.pending,
        r.sent,
        r.in_progress
    )
}

impl Out {
    pub(crate) const fn new(json: bool) -> Self {
        Self { json }
    }

    pub(crate) fn print_json(&self, v: &impl Serialize) {
        println!(
            "{}",
            serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into())
        );
    }

    pub(crate) fn submitted(&self, s: &Submitted) {
        if self.json {
            self.print_json(s);
        } else {
            for r in &s.requests {
                println!("{}", r.request_id);
            }
        }
    }

    pub(crate) fn requests(&self, items: &[RequestInfo]) {
        if self.json {
            self.print_json(&json!({ "requests": items }));
            return;
        }
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|r| {
                vec![
                    r.request_id.clone(),
                    r.created_at.clone().unwrap_or_else(|| "-".into()),
                    state(r),
                    r.action
                        .as_ref()
                        .map_or_else(|| "-".into(), |a| a.name.clone()),
                    target(r),
                    r.user.clone().unwrap_or_else(|| "-".into()),
                    r.total.to_string(),
                    r.success.to_string(),
                    r.failure.to_string(),
                ]
            })
            .collect();
        table(
            &[
                "REQUEST", "CREATED", "STATE", "ACTION", "TARGET", "USER", "TOTAL", "SUCCESS",
                "FAILURE",
            ],
            &rows,
        );
    }

    /// One line after a pause or a resume.
    pub(crate) fn request_line(&self, r: &RequestInfo) {
        if self.json {
            self.print_json(r);
        } else {
            println!("{}: {}; {}", r.request_id, state(r), counts(r));
        }
    }

    /// A request with its results.
    pub(crate) fn request(&self, r: &RequestInfo, groups: &[ResultGroup]) {
        if self.json {
            self.print_json(&json!({ "request": r, "results": groups }));
            return;
        }
        let mut rows = vec![
            vec!["request".to_owned(), r.request_id.clone()],
            vec!["state".to_owned(), state(r)],
        ];
        if let Some(reason) = &r.state_reason {
            rows.push(vec!["reason".into(), reason.clone()]);
        }
        if let Some(a) = &r.action {
            rows.push(vec!["action".into(), format!("{} ({})", a.name, a.version)]);
        }
        rows.push(vec!["target".into(), target(r)]);
        if let Some(u) = &r.user {
            rows.push(vec!["user".into(), u.clone()]);
        }
        if let Some(t) = &r.created_at {
            rows.push(vec!["created".into(), t.clone()]);
        }
        if let Some(t) = &r.finished_at {
            rows.push(vec!["finished".into(), t.clone()]);
        }
        if let Some(id) = &r.retry_of {
            rows.push(vec!["retry of".into(), id.clone()]);
        }
        rows.push(vec!["orders".into(), counts(r)]);
        for row in &rows {
            println!("{:<9} {}", format!("{}:", row[0]), row[1]);
        }
        self.groups(groups);
    }

    /// The results breakdown as a table (nothing when no order finished).
    pub(crate) fn groups(&self, groups: &[ResultGroup]) {
        if groups.is_empty() {
            return;
        }
        println!();
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|g| {
                vec![
                    serde_json::to_value(g.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    g.code.to_string(),
                    g.count.to_string(),
                    g.message.clone(),
                    g.sample.join(","),
                ]
            })
            .collect();
        table(&["STATUS", "CODE", "COUNT", "MESSAGE", "SAMPLE"], &rows);
    }

    pub(crate) fn orders(&self, items: &[Order]) {
        if self.json {
            self.print_json(&json!({ "orders": items }));
            return;
        }
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|o| {
                let (code, message) = o.result().map_or_else(
                    || ("-".to_owned(), String::new()),
                    |r| (r.code().to_string(), r.message().to_owned()),
                );
                vec![
                    o.order_id().to_string(),
                    o.target().id().to_owned(),
                    o.action().name().to_owned(),
                    status_name(o),
                    code,
                    message,
                ]
            })
            .collect();
        table(
            &["ORDER", "TARGET", "ACTION", "STATUS", "CODE", "MESSAGE"],
            &rows,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_to_their_widest_cell() {
        let t = table_text(
            &["ID", "GROUPS"],
            &[
                vec!["a1".into(), "web".into()],
                vec!["agent-long".into(), String::new()],
            ],
        );
        assert_eq!(t, "ID          GROUPS\na1          web\nagent-long\n");
    }
}
