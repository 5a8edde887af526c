//! Following a request until it finishes: a live progress bar on a terminal, one line per
//! change otherwise; then its results, and an exit code that says whether it failed.

use std::time::Duration;

use cm_client::{Client, RequestInfo};
use cm_domain::RequestState;
use indicatif::{ProgressBar, ProgressStyle};

use crate::render::{Out, counts};
use crate::{Failed, Res, on_terminal};

fn state_name(r: &RequestInfo) -> String {
    r.state
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "-".into())
}

/// Follows request `id` until it finishes, prints it with its results, and fails (exit 1)
/// when any of its orders failed or it did not complete.
pub(crate) async fn follow(c: &Client, out: &Out, id: &str) -> Res {
    let bar = (!out.json && on_terminal()).then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.enable_steady_tick(Duration::from_millis(200));
        b
    });
    let mut last: Option<(String, [u64; 6])> = None;
    let mut pause = Duration::from_millis(250);
    let r = loop {
        let r = c.request(id).await?;
        let now = (
            state_name(&r),
            [
                r.total,
                r.pending,
                r.sent,
                r.in_progress,
                r.success,
                r.failure,
            ],
        );
        if last.as_ref() != Some(&now) {
            if let Some(b) = &bar {
                b.set_length(r.total);
                b.set_position(r.finished());
                b.set_message(format!("{}: {} failure", now.0, r.failure));
            } else if !out.json {
                println!("{}: {}", now.0, counts(&r));
            }
            last = Some(now);
        }
        if r.is_finished() {
            break r;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let groups = c.results(id).await?;
    out.request(&r, &groups);
    let ok = r.failure == 0 && matches!(r.state, Some(RequestState::Completed) | None);
    if ok {
        Ok(())
    } else {
        Err(Failed::Outcome(format!(
            "request {id} ended {} with {} failed orders",
            state_name(&r),
            r.failure
        )))
    }
}
