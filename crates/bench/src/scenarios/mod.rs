//! The scenarios of issue 6, run one after the other on one backend.
//!
//! One service instance (`A`) serves them all, in this order: agents are registered; the open
//! long-polls are held (before any order exists, so that every poll stays idle); the fan-out,
//! submit throughput and delivery latency are measured; last, the expiry drain (its orders are
//! overdue, which no other scenario may see).

mod delivery;
mod expiry;
mod fanout;
mod open_polls;
mod throughput;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;

pub(crate) use self::expiry::{SCHEDULER_LOG, memory_interval_secs};
pub(crate) use self::open_polls::POLL_WAIT_SECS;
use crate::api::Api;
use crate::raw::Raw;
use crate::results::{BackendRun, Registration};
use crate::service::Service;

/// The backends the service can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Backend {
    Memory,
    Sqlite,
    Postgres,
    Opensearch,
}

impl Backend {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::Opensearch => "opensearch",
        }
    }

    /// Whether several service instances share one store (and so delivery across instances
    /// is measured).
    pub(crate) const fn is_shared(self) -> bool {
        matches!(self, Self::Postgres | Self::Opensearch)
    }
}

/// Sizes of one run.
#[derive(Debug, Clone)]
pub(crate) struct Sizes {
    pub(crate) quick: bool,
    /// Fan-out group sizes.
    pub(crate) fanouts: Vec<u64>,
    /// Repetitions of the fan-out of the first size (the larger ones run once).
    pub(crate) fanout_reps: usize,
    pub(crate) throughput_clients: usize,
    pub(crate) throughput_secs: u64,
    pub(crate) deliveries: usize,
    pub(crate) open_polls: u64,
    pub(crate) hold_secs: u64,
    pub(crate) expiry_orders: u64,
}

impl Sizes {
    pub(crate) fn new(quick: bool) -> Self {
        Self {
            quick,
            fanouts: if quick {
                vec![10_000]
            } else {
                vec![10_000, 100_000]
            },
            fanout_reps: 5,
            throughput_clients: 32,
            throughput_secs: if quick { 5 } else { 20 },
            deliveries: if quick { 200 } else { 1000 },
            open_polls: 10_000,
            hold_secs: if quick { 5 } else { 15 },
            expiry_orders: if quick { 10_000 } else { 100_000 },
        }
    }

    /// Agents registered for the fan-outs, the open polls and the expiry drain.
    pub(crate) fn fleet(&self) -> u64 {
        self.fanouts
            .iter()
            .copied()
            .chain([self.open_polls, self.expiry_orders])
            .max()
            .unwrap_or(0)
    }
}

/// The name of fleet agent `i`.
pub(crate) fn fleet_agent(i: u64) -> String {
    format!("fan-{i:06}")
}

/// The group holding the first `n` fleet agents.
pub(crate) fn fleet_group(n: u64) -> String {
    format!("first{n}")
}

/// Agents the submit-throughput clients target, one per client.
pub(crate) fn throughput_agent(i: usize) -> String {
    format!("thr-{i:02}")
}

/// Everything a scenario needs.
#[derive(Debug)]
pub(crate) struct Bench {
    pub(crate) backend: Backend,
    pub(crate) sizes: Sizes,
    pub(crate) binary: PathBuf,
    /// `CM_` settings of instance A (storage and limits).
    pub(crate) env: Vec<(String, String)>,
    pub(crate) raw: Raw,
}

impl Bench {
    /// `env` with `extra` settings on top (later ones win).
    pub(crate) fn env_with(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        env
    }

    pub(crate) fn start(&self, name: &str, extra: &[(&str, &str)]) -> Result<Service> {
        Service::start(name, &self.binary, &self.env_with(extra))
    }
}

/// Runs every scenario on instance `a`, recording each outcome (or why there is none) in `out`.
pub(crate) async fn run_all(bench: &Bench, a: &Service, out: &mut BackendRun) -> Result<()> {
    let api = Api::new(a.base())?;
    let registration = register_fleet(bench, &api).await?;
    eprintln!(
        "bench {}: registered {} agents in {:.1} s",
        bench.backend.name(),
        registration.agents,
        registration.secs
    );
    out.registration = Some(registration);

    record(
        out,
        "open long-polls",
        open_polls::run(bench, a, &api).await,
        |out, r| out.open_polls = Some(r),
    );
    record(out, "fan-out", fanout::run(bench, &api).await, |out, r| {
        out.fanout = r
    });
    record(
        out,
        "submit throughput",
        throughput::run(bench, &api).await,
        |out, r| out.throughput = Some(r),
    );
    record(
        out,
        "delivery latency",
        delivery::run(bench, a).await,
        |out, r| out.delivery = r,
    );
    record(
        out,
        "expiry drain",
        expiry::run(bench, a, &api).await,
        |out, r| out.expiry = Some(r),
    );
    Ok(())
}

fn record<T>(
    out: &mut BackendRun,
    scenario: &str,
    outcome: Result<T>,
    store: impl FnOnce(&mut BackendRun, T),
) {
    match outcome {
        Ok(r) => {
            eprintln!("bench {}: {scenario} done", out.backend);
            store(out, r);
        }
        Err(e) => {
            eprintln!("bench {}: {scenario} failed: {e:#}", out.backend);
            out.errors.insert(scenario.to_owned(), format!("{e:#}"));
        }
    }
}

/// How many registrations are in flight at once.
const REGISTER_CONCURRENCY: usize = 32;

/// Registers the fleet (`fan-NNNNNN`, each in the groups `firstN` of every size it falls
/// within), the throughput agents and the delivery agents through the API, as operators do. Not
/// a measurement; timed for the record.
async fn register_fleet(bench: &Bench, api: &Api) -> Result<Registration> {
    let sizes = &bench.sizes;
    let mut group_sizes: Vec<u64> = sizes
        .fanouts
        .iter()
        .copied()
        .chain([sizes.open_polls, sizes.expiry_orders])
        .collect();
    group_sizes.sort_unstable();
    group_sizes.dedup();
    let mut agents: Vec<(String, Vec<String>)> = (0..sizes.fleet())
        .map(|i| {
            let groups = group_sizes
                .iter()
                .filter(|&&n| i < n)
                .map(|&n| fleet_group(n))
                .collect();
            (fleet_agent(i), groups)
        })
        .collect();
    agents.extend(
        (0..sizes.throughput_clients).map(|i| (throughput_agent(i), vec!["thr".to_owned()])),
    );
    agents.extend(
        delivery::AGENTS
            .iter()
            .map(|a| ((*a).to_owned(), vec!["lat".to_owned()])),
    );
    let started = Instant::now();
    let total = agents.len() as u64;
    let mut results = futures::stream::iter(agents)
        .map(|(id, groups)| async move {
            let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
            api.put_agent(&id, &groups).await
        })
        .buffer_unordered(REGISTER_CONCURRENCY);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(Registration {
        agents: total,
        method: format!("`PUT /api/v1/agents/{{id}}`, {REGISTER_CONCURRENCY} at a time"),
        secs: started.elapsed().as_secs_f64(),
    })
}

/// Polls `check` every `every` until it answers `true`, for at most `timeout`.
pub(crate) async fn wait_until<F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let started = Instant::now();
    loop {
        if check().await? {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!("{what}: not reached within {timeout:?}");
        }
        tokio::time::sleep(every).await;
    }
}
