//! Scenario 6: one relay delivers for the 10,000 agents of a group (`POST /api/v1/relay/claim`
//! naming all of them, `limit` 1,000, `wait` the service's longest).
//!
//! 1. While its claim waits, a manager submits a command to the whole group: measured are the
//!    fan-out (submit until the 201) and, from the same submit, the time until the relay,
//!    re-claiming as soon as each claim answers, has claimed every order of it. Then it reports
//!    every result through `POST /api/v1/results`, 1,000 a call (timed), and the request must
//!    show them all `success`.
//! 2. Its wake-up: the claim for the 10,000 ids waits (the service counts it in
//!    `cm_relay_claims_open`), then one single-agent order is submitted for one of them;
//!    measured from sending the submit until the claim's answer carrying that order is
//!    received, one order at a time, like the single agent's poll of scenario 3.
//!
//! The orders of this scenario carry a `user` of their own, so that orders other scenarios left
//! `sent` and due again for redelivery, which the relay may claim too, are not counted.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{Bench, MAX_POLL_WAIT_SECS, fleet_agent, fleet_group, wait_until};
use crate::api::{Api, command, relay_claim_body};
use crate::results::Relay;
use crate::service::Service;
use crate::stats::Latency;

/// The gauge of relay claims waiting that the service exports.
const OPEN_CLAIMS_GAUGE: &str = "cm_relay_claims_open";
/// The `limit` of every claim (the API's maximum).
const LIMIT: u32 = 1000;
/// The `user` of this scenario's commands.
const USER: &str = "bench-relay";
/// Results reported per `POST /api/v1/results` (the API's maximum).
const REPORT_BATCH: usize = 1000;
/// Longest the relay may take to claim the whole fan-out.
const CLAIM_ALL_LIMIT: Duration = Duration::from_secs(300);
/// Longest a claim may take to be counted waiting.
const PARK_LIMIT: Duration = Duration::from_secs(60);
/// Unmeasured wake-up rounds first (connections, caches).
const WARM_UP: usize = 5;

/// The longest the wake-up is measured (as for the single agent's poll of scenario 3).
fn budget(quick: bool) -> Duration {
    Duration::from_secs(if quick { 45 } else { 150 })
}

pub(crate) async fn run(bench: &Bench, a: &Service) -> Result<Relay> {
    let n = bench.sizes.relay_agents;
    // Separate clients, so that the relay and the manager never wait for one connection.
    let relay = Api::new(a.base())?;
    let manager = Api::new(a.base())?;
    let agents: Vec<String> = (0..n).map(fleet_agent).collect();
    let wait_body = relay_claim_body(&agents, LIMIT, MAX_POLL_WAIT_SECS);
    let baseline = gauge(&manager).await?;

    // 1. The fan-out, claimed by the relay while it is written.
    let claiming = {
        let relay = relay.clone();
        let body = wait_body.clone();
        tokio::spawn(async move { claim_all(&relay, &body, n).await })
    };
    if !parked(&manager, baseline, &claiming).await? {
        claiming.await.context("relay task")??;
        bail!("the relay claimed every order before any was submitted");
    }
    let sent = Instant::now();
    let submitted = manager
        .submit(&ours(command("group", &fleet_group(n), 3600)))
        .await?;
    let fanout = sent.elapsed();
    if submitted.order_ids.len() as u64 != n {
        bail!(
            "the submit answered {} order ids for a group of {n}",
            submitted.order_ids.len()
        );
    }
    let (claimed, mut ids, claims) = tokio::time::timeout(CLAIM_ALL_LIMIT, claiming)
        .await
        .with_context(|| format!("the relay did not claim {n} orders within {CLAIM_ALL_LIMIT:?}"))?
        .context("relay task")??;
    let claimed = claimed.saturating_duration_since(sent);
    ids.sort_unstable();
    let mut expected = submitted.order_ids.clone();
    expected.sort_unstable();
    if ids != expected {
        bail!("the relay claimed other orders than the {n} of the request");
    }
    let reporting = Instant::now();
    for batch in ids.chunks(REPORT_BATCH) {
        relay.report_successes(batch).await?;
    }
    let reported = reporting.elapsed();
    let progress = manager.progress(&submitted.request_id).await?;
    if progress.success != n {
        bail!(
            "request {}: {} of {n} orders ended success after the relay reported them all",
            submitted.request_id,
            progress.success
        );
    }
    eprintln!(
        "bench {}: relay: fan-out {:.3} s, all {n} claimed after {:.3} s in {claims} claims, \
         reported in {:.3} s",
        bench.backend.name(),
        fanout.as_secs_f64(),
        claimed.as_secs_f64(),
        reported.as_secs_f64()
    );

    // 2. The relay's wake-up by one agent's order.
    let (wake, late) = wake_ups(bench, &relay, &manager, &agents, &wait_body, baseline).await?;
    Ok(Relay {
        agents: n,
        limit: LIMIT,
        wait_secs: MAX_POLL_WAIT_SECS,
        fanout_secs: fanout.as_secs_f64(),
        claimed_secs: claimed.as_secs_f64(),
        claims,
        reported_secs: reported.as_secs_f64(),
        wake: Latency::of(&wake).context("no wake-up measured")?,
        late,
    })
}

/// Claims until `n` orders of this scenario came; answers when the last came, their ids, and
/// how many claims brought some.
async fn claim_all(relay: &Api, body: &str, n: u64) -> Result<(Instant, Vec<String>, u64)> {
    let mut ids = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    let mut claims = 0;
    loop {
        let orders = relay.relay_claim(body).await?;
        let received = Instant::now();
        let before = ids.len();
        ids.extend(
            orders
                .iter()
                .filter(|o| o["command"]["user"].as_str() == Some(USER))
                .filter_map(|o| o["command"]["order_id"].as_str().map(str::to_owned)),
        );
        if ids.len() > before {
            claims += 1;
        }
        if ids.len() as u64 >= n {
            return Ok((received, ids, claims));
        }
    }
}

/// Single-agent orders, one at a time, each for another of the relay's agents, submitted once
/// the relay's claim waits: the latency of each, and how many came late.
async fn wake_ups(
    bench: &Bench,
    relay: &Api,
    manager: &Api,
    agents: &[String],
    body: &str,
    baseline: f64,
) -> Result<(Vec<Duration>, u64)> {
    let mut samples = Vec::with_capacity(bench.sizes.deliveries);
    let mut late = 0;
    let started = Instant::now();
    for round in 0..WARM_UP + bench.sizes.deliveries {
        if started.elapsed() > budget(bench.sizes.quick) {
            break;
        }
        // Agents spread over the whole set.
        let agent = &agents[(round * 7919) % agents.len()];
        let claim = loop {
            let claim = {
                let relay = relay.clone();
                let body = body.to_owned();
                tokio::spawn(async move {
                    let orders = relay.relay_claim(&body).await?;
                    anyhow::Ok((orders, Instant::now()))
                })
            };
            if parked(manager, baseline, &claim).await? {
                break claim;
            }
            // It found orders left by other scenarios (due again for redelivery): delivered,
            // and the relay claims again.
            let (orders, _) = claim.await.context("claim task")??;
            acknowledge(relay, &orders).await?;
        };
        let sent = Instant::now();
        let submitted = manager.submit(&ours(command("agent", agent, 3600))).await?;
        let order_id = submitted
            .order_ids
            .first()
            .context("the submit answered no order id")?
            .clone();
        let (orders, mut received) = claim.await.context("claim task")??;
        let mut got = has(&orders, &order_id);
        acknowledge(relay, &orders).await?;
        if !got {
            // The claim ended without it: it comes with the next claim. Counted as late; the
            // latency still runs from the submit.
            late += 1;
            let again = Instant::now();
            let now_body = relay_claim_body(agents, LIMIT, 30);
            while !got {
                if again.elapsed() > Duration::from_secs(60) {
                    bail!("order {order_id} did not reach the relay within 60 s");
                }
                let orders = relay.relay_claim(&now_body).await?;
                received = Instant::now();
                got = has(&orders, &order_id);
                acknowledge(relay, &orders).await?;
            }
        }
        if round >= WARM_UP {
            samples.push(received.saturating_duration_since(sent));
        }
    }
    Ok((samples, late))
}

/// Waits until the service counts one more relay claim waiting than `baseline` (the claim of
/// `task`): `true`; `false` when that claim ended instead (it found orders at once).
async fn parked<T>(api: &Api, baseline: f64, task: &tokio::task::JoinHandle<T>) -> Result<bool> {
    let mut ended = false;
    wait_until(
        "the relay's claim to wait",
        PARK_LIMIT,
        Duration::from_millis(2),
        || {
            ended = task.is_finished();
            async move { Ok(ended || gauge(api).await? > baseline) }
        },
    )
    .await?;
    Ok(!ended)
}

async fn gauge(api: &Api) -> Result<f64> {
    Ok(api.metric(OPEN_CLAIMS_GAUGE).await?.unwrap_or(0.0))
}

/// `command` as this scenario's.
fn ours(mut command: Value) -> Value {
    command["user"] = json!(USER);
    command
}

fn has(orders: &[Value], order_id: &str) -> bool {
    orders
        .iter()
        .any(|o| o["command"]["order_id"].as_str() == Some(order_id))
}

/// Reports success for every order claimed, 1,000 a call, as a relay does (unmeasured).
async fn acknowledge(relay: &Api, orders: &[Value]) -> Result<()> {
    let ids: Vec<String> = orders
        .iter()
        .filter_map(|o| o["command"]["order_id"].as_str().map(str::to_owned))
        .collect();
    for batch in ids.chunks(REPORT_BATCH) {
        relay.report_successes(batch).await?;
    }
    Ok(())
}
