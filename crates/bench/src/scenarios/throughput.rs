//! Scenario 2: concurrent clients, each submitting single-agent commands back to back for a
//! fixed time. Measured: orders per second over the whole period and each submit's latency.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::future::join_all;

use super::{Bench, throughput_agent};
use crate::api::{Api, command};
use crate::results::Throughput;
use crate::stats::Latency;

pub(crate) async fn run(bench: &Bench, api: &Api) -> Result<Throughput> {
    let clients = bench.sizes.throughput_clients;
    let period = Duration::from_secs(bench.sizes.throughput_secs);
    let started = Instant::now();
    let deadline = started + period;
    let runs = (0..clients).map(|i| {
        let api = api.clone();
        let body = command("agent", &throughput_agent(i), 3600);
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                match api.submit(&body).await {
                    Ok(_) => latencies.push(sent.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        })
    });
    let mut latencies = Vec::new();
    let mut errors = 0;
    for outcome in join_all(runs).await {
        let (l, e) = outcome.context("a client task failed")?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    Ok(Throughput {
        clients,
        secs: elapsed.as_secs_f64(),
        orders: latencies.len() as u64,
        errors,
        latency: Latency::of(&latencies).context("no submit succeeded")?,
    })
}
