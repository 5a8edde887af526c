//! Scenario 5: N pending orders whose delivery deadline has passed, expired by ONE scheduler
//! run, beside the backend's raw bulk update of the same rows or documents.
//!
//! The orders are one group request with a timeout of 1 s. Measured is the expiry job's own
//! duration, from its log line (`maintenance job done`, `job = expiry`, `elapsed_ms`), and the
//! run must have expired all N at once.
//!
//! * Backends that outlive the process (SQLite, PostgreSQL, OpenSearch): instance A runs without
//!   a scheduler; once the orders are overdue, instance E starts on the same store with the
//!   scheduler on, and its first run (right at start) drains them.
//! * Memory: instance A's own scheduler runs every [`MEMORY_INTERVAL_SECS`]; the orders are
//!   submitted right after one run, so the next run finds all of them overdue.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{Backend, Bench, fleet_group};
use crate::api::{Api, command};
use crate::results::Expiry;
use crate::service::Service;

/// The scheduler interval of instance A on the memory backend.
pub(crate) fn memory_interval_secs(quick: bool) -> u64 {
    if quick { 10 } else { 30 }
}

/// The log filter that shows every scheduler run (runs that change nothing log at debug).
pub(crate) const SCHEDULER_LOG: &str = "info,cm_scheduler=debug";

pub(crate) async fn run(bench: &Bench, a: &Service, api: &Api) -> Result<Expiry> {
    let n = bench.sizes.expiry_orders;
    let body = command("group", &fleet_group(n), 1);
    let (request_id, job) = if bench.backend == Backend::Memory {
        let interval = Duration::from_secs(memory_interval_secs(bench.sizes.quick));
        let cursor = a.log_len();
        let (_, _) = a
            .wait_log(cursor, interval * 3, "of a scheduler run", |v| {
                is_job(v, "retention")
            })
            .await?;
        let after_run = a.log_len();
        let started = Instant::now();
        let submitted = api.submit(&body).await?;
        if started.elapsed() + Duration::from_millis(1500) > interval {
            bail!(
                "the submit took {:.1?}: the orders would not all be overdue by the next run",
                started.elapsed()
            );
        }
        let (_, line) = a
            .wait_log(after_run, interval * 3, "of the expiry run", |v| {
                is_job(v, "expiry")
            })
            .await?;
        (submitted.request_id, line)
    } else {
        let submitted = api.submit(&body).await?;
        let overdue_at = Instant::now() + Duration::from_millis(1200);
        tokio::time::sleep_until(overdue_at.into()).await;
        let e = bench.start(
            "E",
            &[
                ("CM_SCHEDULER__ENABLED", "true"),
                ("CM_SCHEDULER__INTERVAL_SECS", "3600"),
                ("CM_LOG__LEVEL", SCHEDULER_LOG),
            ],
        )?;
        let line = e
            .wait_log(0, Duration::from_secs(1800), "of the expiry run", |v| {
                is_job(v, "expiry")
            })
            .await;
        e.stop()?;
        (submitted.request_id, line?.1)
    };
    if job["message"] != "maintenance job done" {
        bail!("the expiry run did not succeed: {job}");
    }
    let changed = job["changed"]
        .as_u64()
        .context("no `changed` in the log line")?;
    let elapsed_ms = job["elapsed_ms"]
        .as_u64()
        .context("no `elapsed_ms` in the log line")?;
    if changed != n {
        bail!("one scheduler run expired {changed} orders instead of {n}");
    }
    let progress = api.progress(&request_id).await?;
    if progress.pending != 0 || progress.failure != n {
        bail!(
            "after the run: {} pending, {} failed of {n}",
            progress.pending,
            progress.failure
        );
    }
    let docs = if bench.backend == Backend::Memory {
        api.orders_of_request(&request_id).await?
    } else {
        Vec::new()
    };
    let raw = bench.raw.expire(&request_id, docs).await?;
    if raw.rows != n {
        bail!("the raw update changed {} rows instead of {n}", raw.rows);
    }
    Ok(Expiry {
        request_id,
        orders: n,
        ours_secs: elapsed_ms as f64 / 1e3,
        raw_secs: raw.elapsed.as_secs_f64(),
        raw_method: raw.method,
    })
}

/// A scheduler log line about `job`, whatever its outcome.
fn is_job(line: &Value, job: &str) -> bool {
    line["target"] == "cm_scheduler" && line["job"] == job
}
