//! Backend outages (issue 5, item 6): two service instances run on a PostgreSQL or OpenSearch
//! server of the test's own; clients keep submitting and agents keep long-polling (through
//! either instance) while the server is stopped and, some seconds later, started again on the
//! same data and port.
//!
//! While it is down: every submit answers 503 with `Retry-After` (never another status, never
//! later than the request timeout), `/readyz` answers 503 and `/healthz` 200, and long-polls end
//! with 200 (empty) or 503 in time. Once it is back the services recover by themselves (no
//! restart): `/readyz` answers 200, submits succeed again, and a poll waiting on one instance
//! is woken by a submit through the other. At the end every order whose submit answered 2xx is
//! there.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::ONE_AT_A_TIME;
use crate::http::{Answer, Http, Rng, command, order_ids};
use crate::servers::{Kind, OwnedServer, ScratchDir};
use crate::support::Service;

/// `http.request_timeout_secs` of the service under test.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The `wait` of the agents' long-polls.
const POLL_WAIT: Duration = Duration::from_secs(3);
/// The `wait` of the one long-poll that is waiting when the backend stops.
const LONG_WAIT: Duration = Duration::from_secs(8);
/// Allowed on top of the longest a request may take (a loaded 2-core machine).
const SLACK: Duration = Duration::from_secs(3);
/// Service instances on the backend; clients pick one at random for each request.
const INSTANCES: usize = 2;
/// How soon a poll waiting on one instance must receive an order submitted through another,
/// once the backend is back: PostgreSQL's notification listener retries its connection with a
/// back-off of up to 10 s, and wakes every waiting poll once it is back. (A listener that never
/// came back would leave the poll to its 30 s re-check, beyond the poll's 20 s wait.)
const WAKE_LIMIT: Duration = Duration::from_secs(12);
/// How soon an order nobody polls, with a timeout of 1 s, must expire once the backend is
/// back (the scheduler runs every second).
const EXPIRY_LIMIT: Duration = Duration::from_secs(10);
const SUBMITTERS: usize = 4;
const AGENTS: usize = 8;
/// Commands per submit.
const COMMANDS: usize = 5;
/// Pause of each submitter between two submits.
const SUBMIT_PAUSE: Duration = Duration::from_millis(100);
/// Traffic before the stop and after the recovery.
const STEADY: Duration = Duration::from_secs(3);
/// How long the backend stays down once it has stopped.
const DOWN_FOR: Duration = Duration::from_secs(8);
/// How soon after the backend is back the service must be ready and take submits again.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);

/// Where the outage stands; each request records the phase it started and ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Phase {
    Up = 0,
    Stopping = 1,
    Down = 2,
    Starting = 3,
    Back = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Up,
            1 => Self::Stopping,
            2 => Self::Down,
            3 => Self::Starting,
            _ => Self::Back,
        }
    }
}

#[derive(Clone)]
struct Clock {
    phase: Arc<AtomicU8>,
    epoch: Instant,
}

impl Clock {
    fn now(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::SeqCst))
    }

    fn set(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::SeqCst);
    }
}

/// One request and what became of it.
#[derive(Debug, Clone)]
struct Record {
    what: &'static str,
    started: Phase,
    ended: Phase,
    /// Since the scenario began.
    at: Duration,
    outcome: Result<Answer, String>,
}

impl Record {
    fn status(&self) -> Option<u16> {
        self.outcome.as_ref().ok().map(|a| a.status)
    }

    fn problem(&self, why: &str) -> String {
        format!(
            "{} at {:?} ({:?}..{:?}): {why}: {:?}",
            self.what, self.at, self.started, self.ended, self.outcome
        )
    }

    /// Entirely while the backend was down.
    fn while_down(&self) -> bool {
        self.started == Phase::Down && self.ended == Phase::Down
    }
}

type Log = Arc<Mutex<Vec<Record>>>;

fn push(log: &Log, r: Record) {
    log.lock().unwrap_or_else(PoisonError::into_inner).push(r);
}

async fn timed(
    clock: &Clock,
    what: &'static str,
    f: impl std::future::Future<Output = Result<Answer, String>>,
) -> Record {
    let started = clock.now();
    let at = clock.epoch.elapsed();
    let outcome = f.await;
    Record {
        what,
        started,
        ended: clock.now(),
        at,
        outcome,
    }
}

fn agent(i: usize) -> String {
    format!("agent-{i}")
}

/// What one run measured.
#[derive(Debug, Default)]
struct Numbers {
    stop_took: Duration,
    down_for: Duration,
    restart_took: Duration,
    ready_after: Duration,
    first_submit_after: Duration,
    acknowledged_submits: usize,
    refused_submits: usize,
    acknowledged_orders: usize,
    lost_orders: usize,
    wake_after_recovery: Duration,
    expiry_after_recovery: Duration,
}

/// How long an order for an agent that never polls, with a timeout of 1 s, took to expire.
async fn expires(http: &Http, bases: &[String]) -> Duration {
    let submitted = Instant::now();
    let a = http
        .post(
            &format!("{}/api/v1/commands", bases[0]),
            &json!({"commands": [command("sleeper", 1, "expire")]}),
        )
        .await
        .expect("submit for the sleeper");
    assert_eq!(a.status, 201, "submit for the sleeper: {}", a.body);
    let id = order_ids(&a.body).remove(0);
    loop {
        let o = http
            .get(&format!("{}/api/v1/orders/{id}", bases[INSTANCES - 1]))
            .await
            .expect("read the sleeper's order");
        assert_eq!(o.status, 200, "{}", o.body);
        let c = &o.body["command"];
        if c["status"] == "failure" {
            assert_eq!(c["result"]["message"], "expired", "{}", o.body);
            return submitted.elapsed();
        }
        assert!(
            submitted.elapsed() < EXPIRY_LIMIT,
            "an order with a timeout of 1 s is still {} after {EXPIRY_LIMIT:?}",
            c["status"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long after a submit through the first instance a poll waiting on the last one
/// receives the order.
async fn wake_across(http: &Http, bases: &[String]) -> Duration {
    let poll = {
        let http = http.clone();
        let url = format!(
            "{}/api/v1/agents/courier/poll?wait=20",
            bases[INSTANCES - 1]
        );
        tokio::spawn(async move { (http.post(&url, &Value::Null).await, Instant::now()) })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let submitted = Instant::now();
    let a = http
        .post(
            &format!("{}/api/v1/commands", bases[0]),
            &json!({"commands": [command("courier", 3600, "wake")]}),
        )
        .await
        .expect("submit for the courier");
    assert_eq!(a.status, 201, "submit for the courier: {}", a.body);
    let (answer, received) = poll.await.expect("the courier's poll");
    let answer = answer.expect("the courier's poll answered");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body["orders"][0]["command"]["order_id"],
        order_ids(&a.body)[0].as_str(),
        "the courier received its order"
    );
    let latency = received - submitted;
    assert!(
        latency < WAKE_LIMIT,
        "a poll on another instance received the order only after {latency:?}"
    );
    latency
}

/// Runs the scenario on `server` with the service configured by `env` (its backend settings).
async fn outage_scenario(label: &str, server: &mut OwnedServer, env: &[(&str, String)]) {
    let mut env: Vec<(&str, String)> = env.to_vec();
    env.extend([
        (
            "CM_HTTP__REQUEST_TIMEOUT_SECS",
            REQUEST_TIMEOUT.as_secs().to_string(),
        ),
        ("CM_HTTP__RETRY_AFTER_SECS", "1".to_owned()),
        ("CM_SCHEDULER__INTERVAL_SECS", "1".to_owned()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let services: Vec<Service> = (0..INSTANCES).map(|_| Service::start(&env)).collect();
    let bases: Arc<Vec<String>> = Arc::new(services.iter().map(|s| s.base.clone()).collect());
    let base = bases[0].clone();
    let http = Http::new(Duration::from_secs(60));
    let clock = Clock {
        phase: Arc::new(AtomicU8::new(Phase::Up as u8)),
        epoch: Instant::now(),
    };
    let seed = Rng::clock_seed();
    println!("{label}: seed {seed}");

    let extra = ["waiter", "courier", "sleeper"].map(str::to_owned);
    for id in (0..AGENTS).map(agent).chain(extra) {
        let a = http
            .put(
                &format!("{base}/api/v1/agents/{id}"),
                &json!({"groups": ["outage"]}),
            )
            .await
            .expect("register");
        assert_eq!(a.status, 201, "register {id}: {}", a.body);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let submits: Log = Arc::default();
    let polls: Log = Arc::default();
    let reports: Log = Arc::default();
    let probes: Log = Arc::default();
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();

    for s in 0..SUBMITTERS {
        let (http, bases, clock, stop) = (http.clone(), bases.clone(), clock.clone(), stop.clone());
        let (submits, acknowledged) = (submits.clone(), acknowledged.clone());
        let mut rng = Rng::new(seed ^ (s as u64 + 1));
        tasks.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let url = format!("{}/api/v1/commands", bases[rng.below(INSTANCES)]);
                let commands: Vec<Value> = (0..COMMANDS)
                    .map(|_| command(&agent(rng.below(AGENTS)), 3600, "outage"))
                    .collect();
                let body = json!({ "commands": commands });
                let r = timed(&clock, "submit", http.post(&url, &body)).await;
                if let Ok(a) = &r.outcome
                    && (200..300).contains(&a.status)
                {
                    acknowledged
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend(order_ids(&a.body));
                }
                push(&submits, r);
                tokio::time::sleep(SUBMIT_PAUSE).await;
            }
        });
    }
    for i in 0..AGENTS {
        let (http, bases, clock, stop) = (http.clone(), bases.clone(), clock.clone(), stop.clone());
        let (polls, reports) = (polls.clone(), reports.clone());
        let mut rng = Rng::new(seed ^ (0x100 + i as u64));
        tasks.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let base = &bases[rng.below(INSTANCES)];
                let url = format!(
                    "{base}/api/v1/agents/{}/poll?wait={}&limit=20",
                    agent(i),
                    POLL_WAIT.as_secs()
                );
                let r = timed(&clock, "poll", http.post(&url, &Value::Null)).await;
                let orders = match &r.outcome {
                    Ok(a) if a.status == 200 => a.body["orders"].as_array().cloned(),
                    _ => None,
                };
                let failed = orders.is_none();
                push(&polls, r);
                for o in orders.unwrap_or_default() {
                    let id = o["command"]["order_id"].as_str().unwrap_or_default();
                    let report =
                        json!({"status": "success", "code": 0, "message": "done", "data": ""});
                    let r = timed(
                        &clock,
                        "report",
                        http.post(&format!("{base}/api/v1/orders/{id}/result"), &report),
                    )
                    .await;
                    push(&reports, r);
                }
                if failed {
                    // As an agent would after a 503: wait a moment before polling again.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        });
    }

    let mut n = Numbers::default();
    tokio::time::sleep(STEADY).await;
    for base in bases.iter() {
        let ready = http.get(&format!("{base}/readyz")).await.expect("readyz");
        assert_eq!(
            ready.status, 200,
            "{label}: ready before the outage: {}",
            ready.body
        );
    }

    // A long-poll with nothing to receive, waiting when the backend stops.
    let waiter = {
        let (http, clock) = (http.clone(), clock.clone());
        let url = format!(
            "{}/api/v1/agents/waiter/poll?wait={}",
            bases[INSTANCES - 1],
            LONG_WAIT.as_secs()
        );
        tokio::spawn(async move { timed(&clock, "long poll", http.post(&url, &Value::Null)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Down.
    clock.set(Phase::Stopping);
    let stopping = Instant::now();
    // `block_in_place`: the clients keep running on the other worker meanwhile.
    let took = tokio::task::block_in_place(|| server.stop());
    n.stop_took = took;
    clock.set(Phase::Down);
    let down_since = Instant::now();
    while down_since.elapsed() < DOWN_FOR {
        for (base, path) in bases.iter().flat_map(|b| [(b, "/readyz"), (b, "/healthz")]) {
            let what = if path == "/readyz" {
                "readyz"
            } else {
                "healthz"
            };
            let r = timed(&clock, what, http.get(&format!("{base}{path}"))).await;
            push(&probes, r);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Back.
    clock.set(Phase::Starting);
    let took = tokio::task::block_in_place(|| server.start_again());
    n.restart_took = took;
    clock.set(Phase::Back);
    let back_at = Instant::now();
    n.down_for = stopping.elapsed();
    let mut ready = 0;
    while ready < INSTANCES {
        let r = http.get(&format!("{}/readyz", bases[ready])).await;
        if r.as_ref().is_ok_and(|a| a.status == 200) {
            n.ready_after = back_at.elapsed();
            ready += 1;
            continue;
        }
        assert!(
            back_at.elapsed() < RECOVERY_LIMIT,
            "{label}: /readyz still not 200 {RECOVERY_LIMIT:?} after the backend was back: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back_offset = clock.epoch.elapsed() - back_at.elapsed();
    loop {
        let ok = submits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|r| r.started == Phase::Back && r.status() == Some(201))
            .map(|r| r.at + r.outcome.as_ref().map(|a| a.took).unwrap_or_default());
        if let Some(done) = ok {
            n.first_submit_after = done.saturating_sub(back_offset);
            break;
        }
        assert!(
            back_at.elapsed() < RECOVERY_LIMIT,
            "{label}: no submit succeeded within {RECOVERY_LIMIT:?} after the backend was back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Waking a poll across instances works again (PostgreSQL: the LISTEN connection is back).
    n.wake_after_recovery = wake_across(&http, &bases).await;
    // The schedulers kept running: an order nobody polls expires.
    n.expiry_after_recovery = expires(&http, &bases).await;
    tokio::time::sleep(STEADY).await;
    stop.store(true, Ordering::SeqCst);
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a client task panicked");
    }
    let waiter = waiter.await.expect("the long poll task");

    let submits = std::mem::take(&mut *submits.lock().unwrap_or_else(PoisonError::into_inner));
    let polls = std::mem::take(&mut *polls.lock().unwrap_or_else(PoisonError::into_inner));
    let reports = std::mem::take(&mut *reports.lock().unwrap_or_else(PoisonError::into_inner));
    let probes = std::mem::take(&mut *probes.lock().unwrap_or_else(PoisonError::into_inner));
    let mut problems: Vec<String> = Vec::new();

    // Submits: 201 or 503 with Retry-After, within the request timeout; only 503 while down.
    for r in &submits {
        match &r.outcome {
            Err(_) => problems.push(r.problem("no answer")),
            Ok(a) if a.status == 201 => {
                if r.while_down() {
                    problems.push(r.problem("acknowledged while the backend was down"));
                }
            }
            Ok(a) if a.status == 503 => {
                if a.retry_after
                    .as_deref()
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_none()
                {
                    problems.push(r.problem("503 without a Retry-After in seconds"));
                }
            }
            Ok(_) => problems.push(r.problem("neither 201 nor 503")),
        }
        if let Ok(a) = &r.outcome
            && a.took > REQUEST_TIMEOUT + SLACK
        {
            problems.push(r.problem("longer than the request timeout"));
        }
    }
    let down_submits = submits.iter().filter(|r| r.while_down()).count();
    if down_submits < SUBMITTERS {
        problems.push(format!(
            "only {down_submits} submits while the backend was down"
        ));
    }
    // Long-polls and reports: 200 or 503, in time.
    for r in polls.iter().chain(std::iter::once(&waiter)) {
        let wait = if r.what == "long poll" {
            LONG_WAIT
        } else {
            POLL_WAIT
        };
        match &r.outcome {
            Err(_) => problems.push(r.problem("no answer")),
            Ok(a) if a.status == 200 || a.status == 503 => {
                if a.took > wait + REQUEST_TIMEOUT + SLACK {
                    problems.push(r.problem("longer than its wait and the request timeout"));
                }
                if a.status == 503 && a.retry_after.is_none() {
                    problems.push(r.problem("503 without Retry-After"));
                }
            }
            Ok(_) => problems.push(r.problem("neither 200 nor 503")),
        }
    }
    if waiter.started != Phase::Up || waiter.ended == Phase::Up {
        problems.push(format!(
            "the long poll ran {:?}..{:?}: it did not wait across the stop",
            waiter.started, waiter.ended
        ));
    }
    for r in &reports {
        if !matches!(r.status(), Some(200 | 503)) {
            problems.push(r.problem("report neither 200 nor 503"));
        }
    }
    // Probes while down.
    let mut ready_probes = 0;
    for r in &probes {
        match (r.what, r.status()) {
            ("healthz", Some(200)) => {}
            ("readyz", Some(503)) => ready_probes += 1,
            ("readyz", Some(_)) if !r.while_down() => {}
            _ => problems
                .push(r.problem("healthz must be 200 and readyz 503 while the backend is down")),
        }
    }
    if ready_probes < 5 {
        problems.push(format!("only {ready_probes} /readyz probes answered 503"));
    }

    // Nothing acknowledged is lost.
    let acknowledged =
        std::mem::take(&mut *acknowledged.lock().unwrap_or_else(PoisonError::into_inner));
    n.acknowledged_orders = acknowledged.len();
    n.acknowledged_submits = submits.iter().filter(|r| r.status() == Some(201)).count();
    n.refused_submits = submits.iter().filter(|r| r.status() == Some(503)).count();
    let missing = missing_orders(&http, &base, &acknowledged).await;
    n.lost_orders = missing.len();
    if !missing.is_empty() {
        problems.push(format!(
            "{} of {} acknowledged orders are gone, e.g. {:?}",
            missing.len(),
            acknowledged.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    let statuses = |log: &[Record]| {
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for r in log {
            let key = r
                .status()
                .map_or_else(|| "error".to_owned(), |s| s.to_string());
            *by.entry(key).or_default() += 1;
        }
        by
    };
    println!(
        "{label}: backend stopped in {:.1?}, down for {:.1?} in all (restart took {:.1?}); \
         /readyz 200 on every instance {:.1?} and the first submit acknowledged {:.1?} after it \
         was back, a poll woken across instances {:.1?} after a submit, an order with a 1 s \
         timeout expired {:.1?} after its submit; \
         submits {:?} ({down_submits} while down), polls {:?}, reports {:?}; \
         {} orders acknowledged, {} lost",
        n.stop_took,
        n.down_for,
        n.restart_took,
        n.ready_after,
        n.first_submit_after,
        n.wake_after_recovery,
        n.expiry_after_recovery,
        statuses(&submits),
        statuses(&polls),
        statuses(&reports),
        n.acknowledged_orders,
        n.lost_orders,
    );
    assert!(
        problems.is_empty(),
        "{label}: {} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(n.acknowledged_submits > 0 && n.refused_submits > 0, "{n:?}");
    for s in services {
        s.stop();
    }
}

/// The acknowledged orders that `GET /api/v1/orders/{id}` does not find.
async fn missing_orders(http: &Http, base: &str, ids: &[String]) -> Vec<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in ids.chunks(ids.len().div_ceil(16).max(1)) {
        let (http, base, chunk) = (http.clone(), base.to_owned(), chunk.to_vec());
        tasks.spawn(async move {
            let mut missing = Vec::new();
            for id in chunk {
                let a = http
                    .get(&format!("{base}/api/v1/orders/{id}"))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                match a.status {
                    200 => assert_eq!(a.body["command"]["order_id"], id.as_str()),
                    404 => missing.push(id),
                    other => panic!("GET order {id}: {other} {}", a.body),
                }
            }
            missing
        });
    }
    let mut missing = Vec::new();
    while let Some(m) = tasks.join_next().await {
        missing.extend(m.expect("a reader task panicked"));
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_refuses_with_503_recovers_by_itself_and_loses_nothing_acknowledged() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let scratch = ScratchDir::new("pg-outage");
    let mut server = tokio::task::spawn_blocking({
        let data = scratch.path().join("cluster");
        move || OwnedServer::start(Kind::Postgres, data)
    })
    .await
    .expect("start PostgreSQL");
    let env = [
        ("CM_STORAGE__BACKEND", "postgres".to_owned()),
        ("CM_STORAGE__POSTGRES__URL", server.url().to_owned()),
        ("CM_STORAGE__POSTGRES__CONNECT_TIMEOUT_SECS", "1".to_owned()),
    ];
    outage_scenario("postgres outage", &mut server, &env).await;
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .expect("stop PostgreSQL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_outage_refuses_with_503_recovers_by_itself_and_loses_nothing_acknowledged() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let scratch = ScratchDir::new("os-outage");
    let mut server = tokio::task::spawn_blocking({
        let data = scratch.path().join("node");
        move || OwnedServer::start(Kind::OpenSearch, data)
    })
    .await
    .expect("start OpenSearch");
    let env = [
        ("CM_STORAGE__BACKEND", "opensearch".to_owned()),
        ("CM_STORAGE__OPENSEARCH__URL", server.url().to_owned()),
        (
            "CM_STORAGE__OPENSEARCH__REQUEST_TIMEOUT_SECS",
            "2".to_owned(),
        ),
    ];
    outage_scenario("opensearch outage", &mut server, &env).await;
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .expect("stop OpenSearch");
}
