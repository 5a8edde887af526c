//! The maintenance driver (docs/operations.md): each tick runs the expiry, no-result and retention
//! jobs of [`CommandManager`] until told to shut down.
//!
//! Each job drains its whole backlog in batches (the use cases do that), one failing job does not
//! keep the others from running, and the next tick retries. Several instances may run at once:
//! every change the jobs make is a compare-and-set in the store, so two schedulers never apply
//! two transitions to one order. The scheduler holds no lock and keeps no state between ticks.

use std::future::Future;
use std::time::Duration;

use cm_ports::metric::Outcome;
use cm_ports::{CommandManager, StoreError};
use serde::{Deserialize, Deserializer};
use tokio::time::{Instant, MissedTickBehavior};

/// The scheduler's metrics, each with its HELP text; label values come from [`Job::name`] and
/// [`Outcome::as_str`].
pub mod metric {
    use cm_ports::metric::Metric;
    use metrics::Unit;

    /// Counter with labels `job` and `outcome` (`ok` / `error`).
    pub const RUNS: Metric = Metric::counter(
        "cm_scheduler_runs_total",
        "Maintenance job runs, by job (expiry, no_result, requests, retention) and outcome (ok or error).",
    );
    /// Counter with label `job`.
    pub const ORDERS_CHANGED: Metric = Metric::counter(
        "cm_scheduler_orders_changed_total",
        "What the maintenance jobs changed, by job: orders expired, given up on or purged; for the requests job, requests whose state changed.",
    );
    /// Histogram with label `job`.
    pub const RUN_DURATION: Metric = Metric::histogram(
        "cm_scheduler_run_duration_seconds",
        Unit::Seconds,
        "Duration of one run of a maintenance job, its whole backlog drained, by job.",
    );

    /// Every metric of this crate.
    pub const ALL: [Metric; 3] = [RUNS, ORDERS_CHANGED, RUN_DURATION];

    /// Registers the HELP text of every metric of this crate with the installed recorder.
    pub fn describe() {
        for metric in ALL {
            metric.describe();
        }
    }
}

/// The `[scheduler]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSettings {
    /// Whether this instance runs the maintenance jobs at all.
    pub enabled: bool,
    /// Seconds between the starts of two runs; at least 1.
    #[serde(deserialize_with = "interval_secs")]
    pub interval_secs: u64,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: 60,
        }
    }
}

impl SchedulerSettings {
    /// The time between two runs (`interval_secs`, at least one second).
    #[must_use]
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs.max(1))
    }
}

fn interval_secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let secs = u64::deserialize(d)?;
    if secs == 0 {
        return Err(serde::de::Error::invalid_value(
            serde::de::Unexpected::Unsigned(0),
            &"a number of seconds of at least 1",
        ));
    }
    Ok(secs)
}

/// One of the maintenance jobs run on every tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Job {
    /// Pending orders past their delivery deadline become `failure` (`expired`).
    Expiry,
    /// Delivered orders past their result deadline become `failure` (`no result`).
    NoResult,
    /// Requests are moved along (docs/requests.md): scheduled ones start, capped ones release
    /// held orders, those over their error budget or held too long stop, finished ones are
    /// settled, and submits left `writing` past the grace period are aborted.
    Requests,
    /// Finished orders older than the retention age are deleted or archived.
    Retention,
}

impl Job {
    /// Every job, in the order a run does them.
    pub const ALL: [Self; 4] = [
        Self::Expiry,
        Self::NoResult,
        Self::Requests,
        Self::Retention,
    ];

    /// The job's name in logs and metric labels.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Expiry => "expiry",
            Self::NoResult => "no_result",
            Self::Requests => "requests",
            Self::Retention => "retention",
        }
    }
}

/// What one run of every job did: how many orders each changed, or why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Pending orders expired.
    pub expired: Result<u64, StoreError>,
    /// Delivered orders given up on for lack of a result.
    pub gave_up: Result<u64, StoreError>,
    /// Requests whose state changed.
    pub requests: Result<u64, StoreError>,
    /// Finished orders deleted or archived.
    pub purged: Result<u64, StoreError>,
}

impl RunReport {
    /// The outcome of `job`.
    pub const fn get(&self, job: Job) -> &Result<u64, StoreError> {
        match job {
            Job::Expiry => &self.expired,
            Job::NoResult => &self.gave_up,
            Job::Requests => &self.requests,
            Job::Retention => &self.purged,
        }
    }

    /// Whether every job succeeded.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        Job::ALL.iter().all(|&job| self.get(job).is_ok())
    }

    /// The jobs that failed, and why.
    pub fn failures(&self) -> impl Iterator<Item = (Job, &StoreError)> {
        Job::ALL
            .into_iter()
            .filter_map(|job| self.get(job).as_ref().err().map(|e| (job, e)))
    }
}

/// Runs the maintenance jobs of one service instance on a fixed interval.
#[derive(Debug)]
pub struct Scheduler {
    manager: CommandManager,
    settings: SchedulerSettings,
}

impl Scheduler {
    /// A scheduler over `manager`'s use cases. An `interval_secs` of 0 is taken as 1.
    #[must_use]
    pub fn new(manager: CommandManager, settings: SchedulerSettings) -> Self {
        Self { manager, settings }
    }

    /// Runs the jobs every interval, the first time right away, until `shutdown` resolves.
    /// The order jobs (expiry, no-result, retention) run one after the other on one ticker;
    /// the requests job runs on a ticker of its own, so a long pass over many requests never
    /// delays an expiry. A run that takes longer than the interval delays its next one instead
    /// of bunching runs up. On shutdown the runs in flight are dropped at their next await
    /// point: a long backlog is left for the next start (or another instance) rather than
    /// waited for. With `enabled = false` this only waits for `shutdown`.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let mut shutdown = std::pin::pin!(shutdown);
        if !self.settings.enabled {
            tracing::info!("scheduler disabled");
            shutdown.await;
            return;
        }
        let every = self.settings.interval();
        tracing::info!(interval_secs = every.as_secs(), "scheduler started");
        let ticker = || {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticks
        };
        let mut order_ticks = ticker();
        let mut request_ticks = ticker();
        let orders = async {
            loop {
                order_ticks.tick().await;
                // Each outcome is logged and counted by `job`.
                let _ = self.run_order_jobs().await;
            }
        };
        let requests = async {
            loop {
                request_ticks.tick().await;
                self.job(Job::Requests, self.manager.advance_requests())
                    .await
                    .ok();
            }
        };
        tokio::select! {
            biased;
            () = &mut shutdown => {}
            () = orders => {}
            () = requests => {}
        }
        tracing::info!("scheduler stopped");
    }

    /// The order jobs once: expiry, no-result and retention, one after the other.
    async fn run_order_jobs(
        &self,
    ) -> (
        Result<u64, StoreError>,
        Result<u64, StoreError>,
        Result<u64, StoreError>,
    ) {
        let expired = self.job(Job::Expiry, self.manager.expire_overdue()).await;
        let gave_up = self
            .job(Job::NoResult, self.manager.give_up_unreported())
            .await;
        let purged = self
            .job(Job::Retention, self.manager.apply_retention())
            .await;
        (expired, gave_up, purged)
    }

    /// Runs every job once, now: expiry, no-result and retention one after the other, the
    /// requests job beside them; a failing job does not keep the next from running. Each outcome is logged and counted in the metrics.
    pub async fn run_once(&self) -> RunReport {
        // The requests job reads the counts of every request it looks at: it runs beside the
        // order jobs, so a long pass over many requests never delays an expiry.
        let orders = self.run_order_jobs();
        let requests = self.job(Job::Requests, self.manager.advance_requests());
        let ((expired, gave_up, purged), requests) = tokio::join!(orders, requests);
        RunReport {
            expired,
            gave_up,
            requests,
            purged,
        }
    }

    async fn job(
        &self,
        job: Job,
        work: impl Future<Output = Result<u64, StoreError>>,
    ) -> Result<u64, StoreError> {
        let started = Instant::now();
        let outcome = work.await;
        let elapsed = started.elapsed();
        let name = job.name();
        metrics::histogram!(metric::RUN_DURATION.name, "job" => name).record(elapsed.as_secs_f64());
        metrics::counter!(
            metric::RUNS.name,
            "job" => name,
            "outcome" => Outcome::of(&outcome).as_str(),
        )
        .increment(1);
        let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        match &outcome {
            Ok(changed) => {
                metrics::counter!(metric::ORDERS_CHANGED.name, "job" => name).increment(*changed);
                if *changed > 0 {
                    tracing::info!(job = name, changed, elapsed_ms, "maintenance job done");
                } else {
                    tracing::debug!(
                        job = name,
                        elapsed_ms,
                        "maintenance job found nothing to do"
                    );
                }
            }
            Err(error) => match error {
                StoreError::Unavailable(_) => tracing::warn!(
                    job = name,
                    %error,
                    elapsed_ms,
                    "maintenance job failed; the next tick retries"
                ),
                // Not an outage: other writers kept changing the orders this job meant to.
                StoreError::Contention(_) => tracing::warn!(
                    job = name,
                    %error,
                    elapsed_ms,
                    "maintenance job lost to storage contention; the next tick retries"
                ),
                StoreError::Corrupt(_) | StoreError::Rejected { .. } => tracing::error!(
                    job = name,
                    %error,
                    elapsed_ms,
                    "maintenance job failed; the next tick retries"
                ),
            },
        }
        outcome
    }
}
