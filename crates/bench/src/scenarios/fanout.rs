//! Scenario 1: one request to a group of N agents, timed from the submit until its `201`
//! (which the service sends only once every order is durably written), beside the backend's
//! fastest raw write of the same documents into the same table or index.
//!
//! The documents of the raw write are the orders the service just wrote, read back through the
//! API, under fresh ids (the same table cannot hold one id twice).

use std::time::Instant;

use anyhow::{Result, bail};
use serde_json::Value;

use super::{Bench, fleet_group};
use crate::api::{Api, command};
use crate::raw::with_fresh_ids;
use crate::results::FanOut;

/// The orders' delivery window: long enough that none expires during the run.
const TIMEOUT_SECS: u32 = 3600;

pub(crate) async fn run(bench: &Bench, api: &Api) -> Result<Vec<FanOut>> {
    let mut results = Vec::new();
    for (i, &n) in bench.sizes.fanouts.iter().enumerate() {
        let reps = if i == 0 { bench.sizes.fanout_reps } else { 1 };
        let mut ours = Vec::new();
        let mut raw = Vec::new();
        let mut method = String::new();
        let mut docs: Vec<Value> = Vec::new();
        for _ in 0..reps {
            let started = Instant::now();
            let submitted = api
                .submit(&command("group", &fleet_group(n), TIMEOUT_SECS))
                .await?;
            ours.push(started.elapsed().as_secs_f64());
            if submitted.order_ids.len() as u64 != n {
                bail!(
                    "the submit answered {} order ids for a group of {n}",
                    submitted.order_ids.len()
                );
            }
            verify(bench, api, &submitted.request_id, n).await?;
            if docs.is_empty() {
                docs = api.orders_of_request(&submitted.request_id).await?;
                if docs.len() as u64 != n {
                    bail!("read back {} of {n} orders", docs.len());
                }
            }
            let timed = bench.raw.write(with_fresh_ids(&docs)).await?;
            raw.push(timed.elapsed.as_secs_f64());
            method = timed.method;
            eprintln!(
                "bench {}: fan-out {n}: ours {:.3} s, raw {:.3} s",
                bench.backend.name(),
                ours[ours.len() - 1],
                raw[raw.len() - 1]
            );
        }
        let started = Instant::now();
        let members = api.count_group(&fleet_group(n)).await?;
        let group_read = started.elapsed().as_secs_f64();
        if members != n {
            bail!(
                "group {} lists {members} agents instead of {n}",
                fleet_group(n)
            );
        }
        results.push(FanOut {
            agents: n,
            ours_secs: ours,
            raw_secs: raw,
            raw_method: method,
            group_read_secs: Some(group_read),
        });
    }
    Ok(results)
}

/// Every order of the request is stored: per the API, and per the backend itself.
async fn verify(bench: &Bench, api: &Api, request_id: &str, n: u64) -> Result<()> {
    let progress = api.progress(request_id).await?;
    if progress.total != n {
        bail!(
            "request {request_id}: {} orders instead of {n}",
            progress.total
        );
    }
    if let Some(stored) = bench.raw.count_request(request_id).await?
        && stored != n
    {
        bail!("request {request_id}: the backend holds {stored} orders instead of {n}");
    }
    Ok(())
}
