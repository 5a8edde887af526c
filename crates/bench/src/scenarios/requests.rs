//! Scenario 7: requests as records, as an operator reads them (docs/requests.md).
//!
//! 1. The stream is topped up with group fan-outs until it holds `stream_orders` orders (the
//!    sum of every request's `total`, as the listing reports it), and with single-agent
//!    commands until it holds at least 50 requests; then `GET
//!    /api/v1/requests?size=50` (50 records, each with its live or frozen counts) is read
//!    [`READS`] times: p50 / p99 / max.
//! 2. The results breakdown (`GET /api/v1/requests/{id}/results`) of the expiry scenario's
//!    request, whose orders all expired: grouping every one of them, [`READS`] times.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{Bench, fleet_group};
use crate::api::{Api, command};
use crate::results::Requests;
use crate::stats::Latency;

/// Reads of each kind measured (after [`WARM_UP`] unmeasured ones).
const READS: usize = 50;
const WARM_UP: usize = 3;
/// Records on the page an operator opens first.
const PAGE: usize = 50;

/// Orders the stream holds while the listing is read.
pub(crate) fn stream_orders(quick: bool) -> u64 {
    if quick { 100_000 } else { 1_000_000 }
}

pub(crate) async fn run(
    bench: &Bench,
    api: &Api,
    expiry_request: Option<&str>,
) -> Result<Requests> {
    let target = stream_orders(bench.sizes.quick);
    let group_size = bench.sizes.fleet();
    let (mut orders, mut requests) = census(api).await?;
    while orders < target {
        let submitted = api
            .submit(&command("group", &fleet_group(group_size), 3600))
            .await
            .context("top up the stream")?;
        orders += submitted.order_ids.len() as u64;
        requests += 1;
    }
    // A page of 50 needs 50 requests (a run of only some scenarios may have fewer).
    while requests < PAGE as u64 {
        api.submit(&command("agent", &super::fleet_agent(requests), 3600))
            .await
            .context("top up the requests")?;
        orders += 1;
        requests += 1;
    }
    eprintln!(
        "bench {}: requests: the stream holds {orders} orders in {requests} requests",
        bench.backend.name()
    );
    let list = time(api, &format!("/api/v1/requests?size={PAGE}"), |body| {
        let n = body["requests"].as_array().map_or(0, Vec::len);
        if n == PAGE {
            Ok(())
        } else {
            bail!("the listing answered {n} requests, not {PAGE}")
        }
    })
    .await?;
    let (breakdown_orders, breakdown) = match expiry_request {
        Some(id) => {
            let total = api.progress(id).await?.total;
            let latency = time(api, &format!("/api/v1/requests/{id}/results"), |body| {
                let counted: u64 = body["groups"]
                    .as_array()
                    .map(|g| g.iter().filter_map(|g| g["count"].as_u64()).sum())
                    .unwrap_or(0);
                if counted == total {
                    Ok(())
                } else {
                    bail!("the breakdown counted {counted} of {total} orders")
                }
            })
            .await?;
            (total, latency)
        }
        None => bail!("the expiry scenario left no request to break down"),
    };
    Ok(Requests {
        stream_orders: orders,
        requests,
        list,
        breakdown_orders,
        breakdown,
    })
}

/// The orders and requests in the stream: the sum of every listed request's `total`.
async fn census(api: &Api) -> Result<(u64, u64)> {
    let mut orders = 0;
    let mut requests = 0;
    super::each_request(api, |r| {
        orders += r["total"].as_u64().unwrap_or(0);
        requests += 1;
    })
    .await?;
    Ok((orders, requests))
}

/// Reads `path` [`WARM_UP`] + [`READS`] times, checking each answer; the latency of the
/// measured ones.
async fn time(api: &Api, path: &str, check: impl Fn(&Value) -> Result<()>) -> Result<Latency> {
    let mut samples: Vec<Duration> = Vec::with_capacity(READS);
    for i in 0..WARM_UP + READS {
        let started = Instant::now();
        let body = api.get_json(path).await?;
        let took = started.elapsed();
        check(&body)?;
        if i >= WARM_UP {
            samples.push(took);
        }
    }
    Latency::of(&samples).context("nothing measured")
}
