//! Scenario 3: an agent holds a long-poll open; a manager submits one order for it. Measured:
//! from the submit being sent until the poll's answer carrying that order is received, one
//! order at a time. On one instance, and (for backends several instances share) with the poll on
//! instance A and the submit to instance B.
//!
//! As in real use, the stream is not empty: first it is topped up with group fan-outs over the
//! fleet (orders for other agents, due in an hour) until at least [`pending_orders`] are
//! pending, and the number pending is recorded. Each sample records the instants of its steps
//! (submit sent, its `201` received, the poll's answer received), so the result separates the
//! submit's own latency from the wait after it.
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{Bench, fleet_group};
use crate::api::{Api, command};
use crate::results::{Delivery, Round};
use crate::service::Service;
use crate::stats::Latency;

/// The agents polling in this scenario (one per topology).
pub(crate) const AGENTS: [&str; 2] = ["lat-1", "lat-2"];
/// How long after sending the poll the submit is sent: time for the poll to be waiting.
const POLL_SETTLE: Duration = Duration::from_millis(25);
/// Unmeasured rounds first (connections, caches).
const WARM_UP: usize = 5;
/// The slowest rounds kept, with their instants.
const SLOWEST: usize = 5;

/// The longest one topology is measured: fewer orders when each takes long (an order that
/// reaches another instance's poll only at its next re-check takes about a second).
fn budget(quick: bool) -> Duration {
    Duration::from_secs(if quick { 45 } else { 150 })
}

/// Orders pending for other agents while delivery is measured (the issue's condition: "with
/// 100,000 other orders pending in the stream").
pub(crate) const fn pending_orders() -> u64 {
    100_000
}

pub(crate) async fn run(bench: &Bench, a: &Service) -> Result<Vec<Delivery>> {
    let api = Api::new(a.base())?;
    let pending = top_up(bench, &api).await?;
    eprintln!(
        "bench {}: delivery: {pending} orders pending in the stream",
        bench.backend.name()
    );
    let mut one = measure(bench, a, a, AGENTS[0], "one instance").await?;
    one.pending = Some(pending);
    let mut results = vec![one];
    if bench.backend.is_shared() {
        let b = bench.start("B", &[("CM_SCHEDULER__ENABLED", "false")])?;
        let two = measure(bench, a, &b, AGENTS[1], "two instances").await;
        b.stop()?;
        let mut two = two?;
        two.pending = Some(pending);
        results.push(two);
    }
    Ok(results)
}

/// Tops the stream up with fan-outs to the whole fleet (one hour to deliver, so none expires
/// during the run) until at least [`pending_orders`] are pending; answers how many are.
async fn top_up(bench: &Bench, api: &Api) -> Result<u64> {
    let group = fleet_group(bench.sizes.fleet());
    let mut pending = pending_census(api).await?;
    while pending < pending_orders() {
        let submitted = api
            .submit(&command("group", &group, 3600))
            .await
            .context("top up the pending orders")?;
        pending += submitted.order_ids.len() as u64;
    }
    Ok(pending)
}

/// Orders pending in the stream: the sum of the requests' live `pending` counts.
async fn pending_census(api: &Api) -> Result<u64> {
    let mut pending = 0;
    super::each_request(api, |r| pending += r["pending"].as_u64().unwrap_or(0)).await?;
    Ok(pending)
}

async fn measure(
    bench: &Bench,
    poll_on: &Service,
    submit_to: &Service,
    agent: &str,
    topology: &str,
) -> Result<Delivery> {
    // Separate clients, so that the poll and the submit never wait for one connection.
    let poller = Api::new(poll_on.base())?;
    let submitter = Api::new(submit_to.base())?;
    let body = command("agent", agent, 3600);
    let mut samples = Vec::with_capacity(bench.sizes.deliveries);
    let mut after_ack = Vec::with_capacity(bench.sizes.deliveries);
    let mut submits = Vec::with_capacity(bench.sizes.deliveries);
    let mut rounds = Vec::with_capacity(bench.sizes.deliveries);
    let mut late = 0;
    let started = Instant::now();
    for round in 0..WARM_UP + bench.sizes.deliveries {
        if started.elapsed() > budget(bench.sizes.quick) {
            break;
        }
        let poll = {
            let poller = poller.clone();
            let agent = agent.to_owned();
            tokio::spawn(async move {
                let orders = poller.poll(&agent, 30, 10).await?;
                anyhow::Ok((orders, Instant::now()))
            })
        };
        tokio::time::sleep(POLL_SETTLE).await;
        let sent_at = chrono::Utc::now();
        let sent = Instant::now();
        let submitted = submitter.submit(&body).await?;
        let acked = Instant::now();
        let order_id = submitted
            .order_ids
            .first()
            .context("the submit answered no order id")?
            .clone();
        let (orders, mut received) = poll.await.context("poll task")??;
        let mut got = has(&orders, &order_id);
        acknowledge(&poller, &orders).await?;
        if !got {
            // The open poll ended without it (it ended before the order existed): it comes on
            // the next poll. Counted as late; the latency still runs from the submit.
            late += 1;
            let started = Instant::now();
            while !got {
                if started.elapsed() > Duration::from_secs(60) {
                    bail!("order {order_id} did not reach {agent} within 60 s");
                }
                let orders = poller.poll(agent, 30, 10).await?;
                received = Instant::now();
                got = has(&orders, &order_id);
                acknowledge(&poller, &orders).await?;
            }
        }
        if round >= WARM_UP {
            samples.push(received.saturating_duration_since(sent));
            after_ack.push(received.saturating_duration_since(acked));
            submits.push(acked.saturating_duration_since(sent));
            rounds.push(Round {
                sent_at,
                latency_ms: millis(received.saturating_duration_since(sent)),
                submit_ms: millis(acked.saturating_duration_since(sent)),
            });
        }
    }
    rounds.sort_by(|a, b| b.latency_ms.total_cmp(&a.latency_ms));
    rounds.truncate(SLOWEST);
    Ok(Delivery {
        topology: topology.to_owned(),
        latency: Latency::of(&samples).context("no delivery measured")?,
        after_ack: Latency::of(&after_ack),
        submit: Latency::of(&submits),
        pending: None,
        late,
        slowest: rounds,
    })
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn has(orders: &[Value], order_id: &str) -> bool {
    orders
        .iter()
        .any(|o| o["command"]["order_id"].as_str() == Some(order_id))
}

/// Reports success for every order received, as an agent does (unmeasured).
async fn acknowledge(api: &Api, orders: &[Value]) -> Result<()> {
    for o in orders {
        if let Some(id) = o["command"]["order_id"].as_str() {
            api.report_success(id).await?;
        }
    }
    Ok(())
}
