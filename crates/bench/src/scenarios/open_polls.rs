//! Scenario 4: 10,000 idle agents hold a long-poll open at once. Measured: the service's
//! resident memory and CPU while it holds them, and how fast one of them hears of an order.
//!
//! The polls come from several loopback source addresses (127.0.0.2, .3, …) so that no single
//! address runs short of ephemeral ports. They ramp up in steps, never more than
//! [`MAX_OPENING`] sent but not yet counted open by the service, as a fleet reconnecting after a
//! restart would if it backed off; a poll refused with 503 is retried after a second, as an agent
//! honouring `Retry-After` would, and counted.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::task::JoinHandle;

use super::{Bench, fleet_agent, wait_until};
use crate::api::{self, Api, command};
use crate::results::OpenPolls;
use crate::service::{Service, clock_ticks_per_sec};
use crate::stats::Latency;

/// The gauge of open long-polls the service exports.
const OPEN_POLLS_GAUGE: &str = "cm_long_polls_open";
/// Source addresses the polls are spread over: 127.0.0.2 …
const SOURCE_ADDRESSES: u8 = 8;
/// How long each poll asks to wait: longer than the whole scenario.
pub(crate) const POLL_WAIT_SECS: u64 = 300;
/// Polls started per step of the ramp.
const RAMP_STEP: u64 = 250;
/// Most polls sent but not yet counted open by the service.
const MAX_OPENING: f64 = 1000.0;
/// Longest the service may take to hold every poll.
const ESTABLISH_LIMIT: Duration = Duration::from_secs(150);
/// Agents among the held ones that are woken one at a time, while the time spent waking them
/// stays under [`WAKE_BUDGET`].
const WAKES: u64 = 5;
const WAKE_BUDGET: Duration = Duration::from_secs(20);

type PollTask = JoinHandle<Result<(usize, Instant)>>;

/// The poll tasks, aborted (connections closed) when dropped, however the scenario ends.
#[derive(Debug, Default)]
struct Polls(HashMap<u64, PollTask>);

impl Drop for Polls {
    fn drop(&mut self) {
        for task in self.0.values() {
            task.abort();
        }
    }
}

pub(crate) async fn run(bench: &Bench, service: &Service, api: &Api) -> Result<OpenPolls> {
    let n = bench.sizes.open_polls;
    let clients: Vec<Api> = (0..SOURCE_ADDRESSES)
        .map(|i| {
            let local = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i));
            api::client(Some(local), Duration::from_secs(POLL_WAIT_SECS + 120))
                .map(|c| Api::with_client(service.base(), c))
        })
        .collect::<Result<_>>()?;
    let baseline = gauge(api).await?;
    let rss_before = settled_rss(service).await?;

    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Polls::default();
    for i in 0..n {
        let client = clients[(i % u64::from(SOURCE_ADDRESSES)) as usize].clone();
        let agent = fleet_agent(i);
        let refused = Arc::clone(&refused);
        tasks.0.insert(
            i,
            tokio::spawn(async move {
                loop {
                    match client.poll(&agent, POLL_WAIT_SECS, 10).await {
                        Ok(orders) => return Ok((orders.len(), Instant::now())),
                        Err(e) if format!("{e:#}").contains("HTTP 503") => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }),
        );
        if (i + 1) % RAMP_STEP == 0 {
            let sent = (i + 1) as f64;
            wait_until(
                "the service to take the polls sent so far",
                ESTABLISH_LIMIT.saturating_sub(started.elapsed()),
                Duration::from_millis(20),
                || async { Ok(sent - (gauge(api).await? - baseline) <= MAX_OPENING) },
            )
            .await
            .with_context(|| format!("{} of {n} polls sent", i + 1))?;
            if let Some(failed) = first_failure(&mut tasks.0).await {
                bail!("a poll ended while the others were opening: {failed}");
            }
        }
    }
    let target = baseline + n as f64;
    wait_until(
        "every long-poll open",
        ESTABLISH_LIMIT.saturating_sub(started.elapsed()),
        Duration::from_millis(100),
        || async { Ok(gauge(api).await? >= target) },
    )
    .await
    .with_context(|| format!("{n} long-polls open"))?;
    let established = started.elapsed();

    // Hold: sample memory and the open polls, count CPU.
    let hold = Duration::from_secs(bench.sizes.hold_secs);
    let cpu_start = service.cpu_ticks()?;
    let hold_start = Instant::now();
    let mut rss_max = service.rss_bytes()?;
    let mut fewest_open = n as f64;
    while hold_start.elapsed() < hold {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss_max = rss_max.max(service.rss_bytes()?);
        fewest_open = fewest_open.min(gauge(api).await? - baseline);
    }
    let cpu_ticks = service.cpu_ticks()? - cpu_start;
    let held = hold_start.elapsed();

    // Wake single agents among the held ones (fewer when each takes long).
    let mut wakes = Vec::new();
    let waking = Instant::now();
    for k in 0..WAKES {
        if waking.elapsed() > WAKE_BUDGET {
            break;
        }
        let i = (k * n / WAKES + n / (2 * WAKES)).min(n - 1);
        let task = tasks.0.remove(&i).context("no poll task")?;
        let sent = Instant::now();
        api.submit(&command("agent", &fleet_agent(i), 3600)).await?;
        let (orders, received) = task.await.context("poll task")??;
        if orders != 1 {
            bail!(
                "agent {} woke with {orders} orders instead of 1",
                fleet_agent(i)
            );
        }
        wakes.push(received.saturating_duration_since(sent));
    }

    // Hang up; the service must let go of every poll.
    drop(tasks);
    let released = wait_until(
        "long-polls released",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async { Ok(gauge(api).await? <= baseline) },
    )
    .await
    .ok();

    let ticks_per_sec = clock_ticks_per_sec() as f64;
    Ok(OpenPolls {
        polls: n,
        source_addresses: SOURCE_ADDRESSES as usize,
        established_secs: established.as_secs_f64(),
        hold_secs: held.as_secs_f64(),
        rss_before_bytes: rss_before,
        rss_holding_bytes: rss_max,
        cpu_percent: cpu_ticks as f64 / ticks_per_sec / held.as_secs_f64() * 100.0,
        wake: Latency::of(&wakes).context("no wake-up measured")?,
        released_secs: released.map(|d| d.as_secs_f64()),
        fewest_open: fewest_open.max(0.0) as u64,
        refused: refused.load(Ordering::Relaxed),
    })
}

/// How often the resident size is sampled while waiting for it to settle.
const SETTLE_EVERY: Duration = Duration::from_millis(250);
/// The resident size has settled once it is no lower than it was this long before.
const SETTLE_SPAN: Duration = Duration::from_secs(1);
/// Longest the resident size may keep falling before it is taken as it is.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// The service's resident size once it has stopped falling: the allocator hands the memory
/// freed after the registration's burst back within about a second (`dirty_decay_ms`), and a
/// sample taken during that second would count the burst as the service's own.
async fn settled_rss(service: &Service) -> Result<u64> {
    let kept = (SETTLE_SPAN.as_millis() / SETTLE_EVERY.as_millis()) as usize;
    let mut samples = std::collections::VecDeque::from([service.rss_bytes()?]);
    let started = Instant::now();
    loop {
        tokio::time::sleep(SETTLE_EVERY).await;
        let now = service.rss_bytes()?;
        samples.push_back(now);
        if samples.len() > kept {
            let then = samples.pop_front().unwrap_or(now);
            if now >= then || started.elapsed() > SETTLE_LIMIT {
                return Ok(now);
            }
        }
    }
}

async fn gauge(api: &Api) -> Result<f64> {
    Ok(api.metric(OPEN_POLLS_GAUGE).await?.unwrap_or(0.0))
}

/// The error of a poll task that already ended, if one did (a poll must not end while the
/// others are opening: nothing was submitted yet).
async fn first_failure(tasks: &mut HashMap<u64, PollTask>) -> Option<String> {
    let i = tasks
        .iter()
        .find(|(_, t)| t.is_finished())
        .map(|(i, _)| *i)?;
    let task = tasks.remove(&i)?;
    Some(match task.await {
        Ok(Ok((orders, _))) => format!("agent {} got {orders} orders", fleet_agent(i)),
        Ok(Err(e)) => format!("agent {}: {e:#}", fleet_agent(i)),
        Err(e) => format!("agent {}: {e}", fleet_agent(i)),
    })
}
