//! Rollout control against the real binary (docs/rollout.md), shared by the per-backend tests.
//!
//! A fleet of 1,000 agents of one group, each long-polling for itself the way a real agent
//! does, records when each order arrives. Three requests go to the whole group:
//!
//! 1. a staggered restart (start in 5 s, rollout over 10 s): no order arrives before its
//!    `not_before`, and the deliveries spread over the window (the 10th and the 90th percentile
//!    of arrivals at least 7 s apart); a tenth of the agents report failure;
//! 2. a second rollout of 10 s, cancelled 4 s after its start: no order of it is handed out
//!    after the cancel answered, and the counts add up;
//! 3. a retry of the first request's failures: orders only for the agents that failed, each
//!    carrying `retry_of`, delivered to exactly those agents.
//!
//! The only timing assertions are those the rules demand: none early (allowing
//! [`CLOCK_SKEW_MS`] between the test's and the service's reading of the same clock), and the
//! spread of the rollout.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::{Client, Service, until_polls_open};

/// Agents in the fleet.
pub const FLEET: usize = 1000;
/// The group they all belong to.
const GROUP: &str = "Fleet";
/// Every rollout of the scenario spreads over this window.
const ROLLOUT_SECS: i64 = 10;
/// How much earlier than the service the test may read the shared clock. Both read the same
/// system clock; the service truncates to milliseconds.
pub const CLOCK_SKEW_MS: i64 = 5;
/// Agents whose index is `FAILING mod 10` report failure for the first rollout.
const FAILING: usize = 7;

fn agent(i: usize) -> String {
    format!("fleet-{i:04}")
}

fn fails(agent: &str) -> bool {
    agent
        .strip_prefix("fleet-")
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| n % 10 == FAILING)
}

fn time(raw: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(raw.as_str().unwrap_or_else(|| panic!("a time: {raw}")))
        .unwrap_or_else(|e| panic!("{raw}: {e}"))
        .with_timezone(&Utc)
}

/// One order as an agent received it.
#[derive(Debug, Clone)]
struct Delivery {
    agent: String,
    order_id: String,
    request_id: String,
    retry_of: Option<String>,
    /// `command.not_before`, or `@timestamp` for an order due at once.
    not_before: DateTime<Utc>,
    /// `command.sent_at`: when the service handed it out.
    sent_at: DateTime<Utc>,
    /// When the answer reached the agent.
    arrived: DateTime<Utc>,
}

#[derive(Default)]
struct Log {
    deliveries: Vec<Delivery>,
    /// Anything an agent saw go wrong: asserted empty at the end.
    errors: Vec<String>,
}

type Shared = Arc<Mutex<Log>>;

fn lock(log: &Shared) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the scenario measured, for the caller to print.
#[derive(Debug)]
pub struct Timings {
    pub register: Duration,
    /// Of the staggered rollout, relative to its start: first arrival, 10th and 90th percentile,
    /// last arrival.
    pub first: Duration,
    pub p10: Duration,
    pub p90: Duration,
    pub last: Duration,
    /// Largest delay between an order's `not_before` and its arrival.
    pub worst_lag: Duration,
    /// Orders of the cancelled rollout delivered before the cancel, and cancelled.
    pub delivered_before_cancel: u64,
    pub cancelled: u64,
    pub total: Duration,
}

/// One agent: long-polls for itself until `stop`, records every order and reports on it:
/// failure for the first rollout when it is one of the failing tenth, success otherwise.
async fn run_agent(c: Client, base: String, id: String, log: Shared, stop: Arc<AtomicBool>) {
    let poll = format!("{base}/api/v1/agents/{id}/poll?wait=20&limit=10");
    while !stop.load(Ordering::Relaxed) {
        let (status, body) = c.post(&poll, json!(null)).await;
        let arrived = Utc::now();
        if status != 200 {
            lock(&log)
                .errors
                .push(format!("{id}: poll answered {status}: {body}"));
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        for o in body["orders"].as_array().into_iter().flatten() {
            let cmd = &o["command"];
            let d = Delivery {
                agent: id.clone(),
                order_id: cmd["order_id"].as_str().unwrap_or_default().to_owned(),
                request_id: cmd["request_id"].as_str().unwrap_or_default().to_owned(),
                retry_of: cmd["retry_of"].as_str().map(str::to_owned),
                not_before: time(if cmd["not_before"].is_null() {
                    &o["@timestamp"]
                } else {
                    &cmd["not_before"]
                }),
                sent_at: time(&cmd["sent_at"]),
                arrived,
            };
            if o["agent"]["id"] != json!(id) {
                lock(&log).errors.push(format!("{id} received {o}"));
            }
            let failure = cmd["action"]["name"] == "rollout" && d.retry_of.is_none() && fails(&id);
            let report = if failure {
                json!({"status": "failure", "code": 7, "message": "disk full", "data": ""})
            } else {
                json!({"status": "success", "code": 0, "message": "done", "data": ""})
            };
            let url = format!("{base}/api/v1/orders/{}/result", d.order_id);
            lock(&log).deliveries.push(d);
            let (status, body) = c.post(&url, report).await;
            if status != 200 {
                lock(&log)
                    .errors
                    .push(format!("{id}: report answered {status}: {body}"));
            }
        }
    }
}

/// Registers the fleet, 16 agents at a time.
async fn register(c: &Client, svc: &Service) {
    let mut tasks = JoinSet::new();
    let next = Arc::new(Mutex::new(0usize));
    for _ in 0..16 {
        let (c, base, next) = (c.clone(), svc.base.clone(), Arc::clone(&next));
        tasks.spawn(async move {
            loop {
                let i = {
                    let mut n = next.lock().unwrap_or_else(PoisonError::into_inner);
                    *n += 1;
                    *n - 1
                };
                if i >= FLEET {
                    return;
                }
                let (status, body) = c
                    .put(
                        &format!("{base}/api/v1/agents/{}", agent(i)),
                        json!({"groups": [GROUP, "Linux"]}),
                    )
                    .await;
                assert_eq!(status, 201, "{body}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("registration task");
    }
}

async fn submit(c: &Client, svc: &Service, action: &str, start_at: DateTime<Utc>) -> String {
    let (status, body) = c
        .post(
            &svc.url("/api/v1/commands"),
            json!({"commands": [{
                "source": "Users/Services", "user": "rollout-e2e",
                "target": {"type": "group", "id": GROUP},
                "action": {"name": action, "args": {}, "version": "v5"},
                "timeout": 300,
                "schedule": {
                    "start_at": start_at.to_rfc3339_opts(SecondsFormat::Millis, true),
                    "rollout_secs": ROLLOUT_SECS
                }
            }]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["requests"][0]["order_ids"].as_array().map(Vec::len),
        Some(FLEET)
    );
    body["requests"][0]["request_id"]
        .as_str()
        .expect("request id")
        .to_owned()
}

async fn progress(c: &Client, svc: &Service, request: &str) -> Value {
    let (status, body) = c
        .get(&svc.url(&format!("/api/v1/requests/{request}")))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Every order of `request` (in `status` when given), through the paged listing.
async fn request_orders(
    c: &Client,
    svc: &Service,
    request: &str,
    status: Option<&str>,
) -> Vec<Value> {
    let filter = status.map(|s| format!("&status={s}")).unwrap_or_default();
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let url = svc.url(&format!(
            "/api/v1/requests/{request}/orders?size=300{filter}{after}"
        ));
        let (code, body) = c.get(&url).await;
        assert_eq!(code, 200, "{body}");
        out.extend(body["orders"].as_array().expect("orders").iter().cloned());
        match body["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return out,
        }
    }
}

/// The deliveries of `request` recorded so far.
fn delivered(log: &Shared, request: &str) -> Vec<Delivery> {
    lock(log)
        .deliveries
        .iter()
        .filter(|d| d.request_id == request)
        .cloned()
        .collect()
}

/// Waits until `n` orders of `request` have reached their agents.
async fn await_deliveries(log: &Shared, request: &str, n: usize) {
    while delivered(log, request).len() < n {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `check` holds for the request's progress.
async fn await_progress(
    c: &Client,
    svc: &Service,
    request: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let p = progress(c, svc, request).await;
        if check(&p) {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `secs` seconds from now, in whole milliseconds (the precision the service keeps).
fn in_secs(secs: i64) -> DateTime<Utc> {
    let t = Utc::now() + chrono::Duration::seconds(secs);
    DateTime::from_timestamp_millis(t.timestamp_millis()).expect("a time in range")
}

fn secs_since(t: DateTime<Utc>, origin: DateTime<Utc>) -> Duration {
    (t - origin).to_std().unwrap_or_default()
}

/// Runs the scenario on a service configured by `env` and returns what it measured.
pub async fn staggered_rollout_cancel_and_retry(env: &[(&str, &str)]) -> Timings {
    let began = Instant::now();
    let svc = Service::start(env);
    let c = Client::default();
    register(&c, &svc).await;
    let registered = began.elapsed();

    // Every agent long-polls for itself before anything is submitted.
    let log: Shared = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut agents = JoinSet::new();
    for i in 0..FLEET {
        agents.spawn(run_agent(
            c.clone(),
            svc.base.clone(),
            agent(i),
            Arc::clone(&log),
            Arc::clone(&stop),
        ));
    }
    until_polls_open(&c, &svc, FLEET as u64).await;

    // ---- 1. A staggered restart: start in 5 s (time for the whole fleet's polls, woken by the
    // submit, to look and go back to sleep until their order is due), spread over 10 s.
    let start = in_secs(5);
    let first = submit(&c, &svc, "rollout", start).await;
    await_deliveries(&log, &first, FLEET).await;
    let got = delivered(&log, &first);
    assert_eq!(got.len(), FLEET, "each order handed out once");
    let agents_served: BTreeSet<&str> = got.iter().map(|d| d.agent.as_str()).collect();
    assert_eq!(agents_served.len(), FLEET, "one order per agent");
    let skew = chrono::Duration::milliseconds(CLOCK_SKEW_MS);
    for d in &got {
        assert!(
            d.sent_at >= d.not_before,
            "{} handed out at {} before its not_before {}",
            d.order_id,
            d.sent_at,
            d.not_before
        );
        assert!(
            d.arrived + skew >= d.not_before,
            "{} arrived at {} before its not_before {}",
            d.order_id,
            d.arrived,
            d.not_before
        );
        assert!(
            d.not_before >= start && d.not_before < start + chrono::Duration::seconds(ROLLOUT_SECS),
            "{} scheduled at {} outside the window",
            d.order_id,
            d.not_before
        );
    }
    let mut arrivals: Vec<DateTime<Utc>> = got.iter().map(|d| d.arrived).collect();
    arrivals.sort_unstable();
    let (p10, p90) = (arrivals[FLEET / 10 - 1], arrivals[FLEET - FLEET / 10]);
    assert!(
        p90 - p10 >= chrono::Duration::seconds(7),
        "the first and the last decile of deliveries are only {:?} apart",
        (p90 - p10).to_std()
    );
    let worst_lag = got
        .iter()
        .map(|d| secs_since(d.arrived, d.not_before))
        .max()
        .unwrap_or_default();
    let p = await_progress(&c, &svc, &first, |p| {
        p["success"].as_u64().unwrap_or(0) + p["failure"].as_u64().unwrap_or(0) == FLEET as u64
    })
    .await;
    assert_eq!(
        (p["success"].as_u64(), p["failure"].as_u64()),
        (Some(900), Some(100)),
        "{p}"
    );

    // ---- 2. A second rollout, cancelled 4 s after its start.
    let start2 = in_secs(2);
    let second = submit(&c, &svc, "second", start2).await;
    let cancel_at = start2 + chrono::Duration::seconds(4);
    tokio::time::sleep(secs_since(cancel_at, Utc::now())).await;
    let (status, counts) = c
        .post(
            &svc.url(&format!("/api/v1/requests/{second}/cancel")),
            json!(null),
        )
        .await;
    let cancel_answered = Utc::now();
    assert_eq!(status, 200, "{counts}");
    let n = |k: &str| {
        counts[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {counts}"))
    };
    assert_eq!(counts["request_id"], json!(second));
    assert_eq!(n("total"), FLEET as u64, "{counts}");
    assert_eq!(n("pending"), 0, "{counts}");
    assert_eq!(
        n("sent") + n("in_progress") + n("success") + n("failure"),
        FLEET as u64,
        "{counts}"
    );
    let cancelled = n("failure");
    let handed_out = FLEET as u64 - cancelled;
    // The cancel landed inside the window: some orders had gone out and some had not (how
    // many depends on how busy the machine is, so no proportion is asserted).
    assert!(
        cancelled >= 1 && handed_out >= 1,
        "4 s into a 10 s rollout some orders went out and some did not: {counts}"
    );
    // Past the end of the window: exactly the orders handed out before the cancel arrived.
    tokio::time::sleep(secs_since(
        start2 + chrono::Duration::seconds(ROLLOUT_SECS + 2),
        Utc::now(),
    ))
    .await;
    await_deliveries(&log, &second, usize::try_from(handed_out).expect("small")).await;
    let got2 = delivered(&log, &second);
    assert_eq!(
        got2.len() as u64,
        handed_out,
        "nothing cancelled was delivered"
    );
    for d in &got2 {
        assert!(
            d.sent_at <= cancel_answered + skew,
            "{} handed out at {} after the cancel answered at {cancel_answered}",
            d.order_id,
            d.sent_at
        );
        assert!(d.sent_at >= d.not_before, "{} early", d.order_id);
    }
    let failed = request_orders(&c, &svc, &second, Some("failure")).await;
    assert_eq!(failed.len() as u64, cancelled);
    for o in &failed {
        assert_eq!(o["command"]["result"]["message"], "cancelled", "{o}");
        assert!(
            !got2.iter().any(|d| d.order_id == o["command"]["order_id"]),
            "a cancelled order was delivered: {o}"
        );
    }
    await_progress(&c, &svc, &second, |p| {
        p["success"].as_u64() == Some(handed_out) && p["failure"].as_u64() == Some(cancelled)
    })
    .await;

    // ---- 3. A retry of the first rollout's failures.
    let (status, body) = c
        .post(
            &svc.url(&format!("/api/v1/requests/{first}/retry?status=failure")),
            json!(null),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let retry = body["requests"][0]["request_id"]
        .as_str()
        .expect("request id")
        .to_owned();
    assert_ne!(retry, first);
    let retry_ids: BTreeSet<String> = body["requests"][0]["order_ids"]
        .as_array()
        .expect("order ids")
        .iter()
        .map(|id| id.as_str().expect("id").to_owned())
        .collect();
    assert_eq!(retry_ids.len(), 100);
    let failing: BTreeSet<String> = (0..FLEET).map(agent).filter(|a| fails(a)).collect();
    let stored = request_orders(&c, &svc, &retry, None).await;
    let mut by_agent: BTreeMap<String, &Value> = BTreeMap::new();
    for o in &stored {
        assert_eq!(o["command"]["retry_of"], json!(first), "{o}");
        assert_eq!(o["command"]["action"]["name"], "rollout", "{o}");
        assert_eq!(o["command"]["user"], "rollout-e2e", "{o}");
        assert!(retry_ids.contains(o["command"]["order_id"].as_str().unwrap_or_default()));
        by_agent.insert(o["agent"]["id"].as_str().expect("agent").to_owned(), o);
    }
    assert_eq!(
        by_agent.keys().cloned().collect::<BTreeSet<_>>(),
        failing,
        "orders only for the agents that failed"
    );
    await_deliveries(&log, &retry, 100).await;
    let got3 = delivered(&log, &retry);
    assert_eq!(got3.len(), 100);
    for d in &got3 {
        assert!(failing.contains(&d.agent), "{} got a retry", d.agent);
        assert_eq!(d.retry_of.as_deref(), Some(first.as_str()));
    }
    await_progress(&c, &svc, &retry, |p| p["success"].as_u64() == Some(100)).await;

    stop.store(true, Ordering::Relaxed);
    agents.abort_all();
    while agents.join_next().await.is_some() {}
    let errors = std::mem::take(&mut lock(&log).errors);
    assert!(errors.is_empty(), "the agents saw:\n{}", errors.join("\n"));
    svc.stop();
    Timings {
        register: registered,
        first: secs_since(arrivals[0], start),
        p10: secs_since(p10, start),
        p90: secs_since(p90, start),
        last: secs_since(arrivals[FLEET - 1], start),
        worst_lag,
        delivered_before_cancel: handed_out,
        cancelled,
        total: began.elapsed(),
    }
}
