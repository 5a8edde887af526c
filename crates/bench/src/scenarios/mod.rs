//! The scenarios of issue 6, run one after the other on one backend.
//!
//! One service instance (`A`) serves them all, in this order: agents are registered; the open
//! long-polls are held (before any order exists, so that every poll stays idle); the relay
//! (before the fan-outs leave 10,000s of pending orders for its agents); the fan-out, submit
//! throughput and delivery latency are measured; last, the expiry drain (its orders are
//! overdue, which no other scenario may see). `cm-bench run --scenario S` runs only some of
//! them (agents are registered whatever the choice).

mod delivery;
mod expiry;
mod fanout;
mod open_polls;
mod relay;
mod requests;
mod throughput;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::Value;

pub(crate) use self::expiry::{SCHEDULER_LOG, memory_interval_secs};
use self::open_polls::POLL_WAIT_SECS;
use crate::api::Api;
use crate::raw::Raw;
use crate::results::{BackendRun, Registration};
use crate::service::Service;

/// The longest `wait` the service is given (`limits.max_poll_wait_secs`): room for the
/// long-polls of the open-polls scenario; the relay's claims ask for it.
pub(crate) const MAX_POLL_WAIT_SECS: u64 = POLL_WAIT_SECS * 2;

/// The scenarios, as `--scenario` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    OpenPolls,
    Relay,
    FanOut,
    Throughput,
    Delivery,
    Expiry,
    Requests,
}

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
    /// Agents one relay claims for.
    pub(crate) relay_agents: u64,
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
            relay_agents: 10_000,
        }
    }

    /// The groups of the fleet (`firstN`), by size: the fan-outs, the open polls, the expiry
    /// drain and the relay target one each.
    pub(crate) fn group_sizes(&self) -> Vec<u64> {
        let mut sizes: Vec<u64> = self
            .fanouts
            .iter()
            .copied()
            .chain([self.open_polls, self.expiry_orders, self.relay_agents])
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    /// Agents registered for the fan-outs, the open polls, the expiry drain and the relay.
    pub(crate) fn fleet(&self) -> u64 {
        self.group_sizes().last().copied().unwrap_or(0)
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

/// Runs the scenarios of `only` (every one when empty) on instance `a`, recording each outcome
/// (or why there is none) in `out`.
pub(crate) async fn run_all(
    bench: &Bench,
    a: &Service,
    only: &[Scenario],
    out: &mut BackendRun,
) -> Result<()> {
    let runs = |s: Scenario| only.is_empty() || only.contains(&s);
    let api = Api::new(a.base())?;
    let registration = register_fleet(bench, &api).await?;
    eprintln!(
        "bench {}: registered {} agents in {:.1} s",
        bench.backend.name(),
        registration.agents,
        registration.secs
    );
    out.registration = Some(registration);

    if runs(Scenario::OpenPolls) {
        record(
            out,
            "open long-polls",
            open_polls::run(bench, a, &api).await,
            |out, r| out.open_polls = Some(r),
        );
    }
    if runs(Scenario::Relay) {
        record(out, "relay", relay::run(bench, a).await, |out, r| {
            out.relay = Some(r)
        });
    }
    if runs(Scenario::FanOut) {
        record(out, "fan-out", fanout::run(bench, &api).await, |out, r| {
            out.fanout = r
        });
    }
    if runs(Scenario::Throughput) {
        record(
            out,
            "submit throughput",
            throughput::run(bench, &api).await,
            |out, r| out.throughput = Some(r),
        );
    }
    if runs(Scenario::Delivery) {
        record(
            out,
            "delivery latency",
            delivery::run(bench, a).await,
            |out, r| out.delivery = r,
        );
    }
    if runs(Scenario::Expiry) {
        record(
            out,
            "expiry drain",
            expiry::run(bench, a, &api).await,
            |out, r| out.expiry = Some(r),
        );
    }
    if runs(Scenario::Requests) {
        let expiry_request = out.expiry.as_ref().map(|e| e.request_id.clone());
        record(
            out,
            "requests",
            requests::run(bench, &api, expiry_request.as_deref()).await,
            |out, r| out.requests = Some(r),
        );
    }
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
const REGISTER_CONCURRENCY: usize = 4;

/// Agents per call of the bulk registration (the route's maximum).
const REGISTER_BATCH: usize = 10_000;

/// Registers the fleet (`fan-NNNNNN`, each in the groups `firstN` of every size it falls
/// within), the throughput agents and the delivery agents through the API, as operators do. Not
/// a measurement; timed for the record.
async fn register_fleet(bench: &Bench, api: &Api) -> Result<Registration> {
    let sizes = &bench.sizes;
    let group_sizes = sizes.group_sizes();
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
    let mut results = futures::stream::iter(agents.chunks(REGISTER_BATCH))
        .map(|batch| api.put_agents(batch))
        .buffer_unordered(REGISTER_CONCURRENCY);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(Registration {
        agents: total,
        method: format!(
            "`PUT /api/v1/agents` in batches of {REGISTER_BATCH}, {REGISTER_CONCURRENCY} at a time"
        ),
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

/// Hands `each` every request of the listing (`GET /api/v1/requests`), 1,000 a page.
pub(crate) async fn each_request(api: &Api, mut each: impl FnMut(&Value)) -> Result<()> {
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/requests?size=1000&after={a}"),
            None => "/api/v1/requests?size=1000".to_owned(),
        };
        let body = api.get_json(&path).await?;
        for r in body["requests"]
            .as_array()
            .context("no requests in the listing")?
        {
            each(r);
        }
        match body["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return Ok(()),
        }
    }
}
