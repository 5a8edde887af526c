//! Scenario 3: an agent holds a long-poll open; a manager submits one order for it. Measured:
//! from the submit being sent until the poll's answer carrying that order is received, one
//! order at a time. On one instance, and (for backends several instances share) with the poll on
//! instance A and the submit to instance B.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::Bench;
use crate::api::{Api, command};
use crate::results::Delivery;
use crate::service::Service;
use crate::stats::Latency;

/// The agents polling in this scenario (one per topology).
pub(crate) const AGENTS: [&str; 2] = ["lat-1", "lat-2"];
/// How long after sending the poll the submit is sent: time for the poll to be waiting.
const POLL_SETTLE: Duration = Duration::from_millis(25);
/// Unmeasured rounds first (connections, caches).
const WARM_UP: usize = 5;

/// The longest one topology is measured: fewer orders when each takes long (an order that
/// reaches another instance's poll only at its next re-check takes about a second).
fn budget(quick: bool) -> Duration {
    Duration::from_secs(if quick { 45 } else { 150 })
}

pub(crate) async fn run(bench: &Bench, a: &Service) -> Result<Vec<Delivery>> {
    let mut results = vec![measure(bench, a, a, AGENTS[0], "one instance").await?];
    if bench.backend.is_shared() {
        let b = bench.start("B", &[("CM_SCHEDULER__ENABLED", "false")])?;
        let two = measure(bench, a, &b, AGENTS[1], "two instances").await;
        b.stop()?;
        results.push(two?);
    }
    Ok(results)
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
        let sent = Instant::now();
        let submitted = submitter.submit(&body).await?;
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
        }
    }
    Ok(Delivery {
        topology: topology.to_owned(),
        latency: Latency::of(&samples).context("no delivery measured")?,
        late,
    })
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
