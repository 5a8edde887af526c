//! Many instances (issue 5, item 7): three service instances on one PostgreSQL database, and
//! three on one set of OpenSearch indices, every scheduler running each second. Sixteen agents
//! long-poll through random instances while 5,000 single-agent orders are submitted through
//! random instances, in batches of 100; some orders have a timeout of 1–2 s (those for four
//! agents that never poll always expire; those for polling agents race their delivery).
//!
//! Once everything settled: every order ended delivered-and-reported (`success`) or expired
//! (`failure`, `expired`), never both; no order was handed out by two polls (redelivery is off
//! for the run: `redeliver_after` is an hour); received + expired = 5,000; the three instances'
//! `cm_order_transitions_total{to="failure",via="expired"}` add up to the expired orders, and
//! their `{to="sent",via="delivered"}` to the received ones.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::ONE_AT_A_TIME;
use crate::http::{Http, Rng, command, counter_sum, order_ids};
use crate::support::Service;

const INSTANCES: usize = 3;
const POLLING_AGENTS: usize = 16;
/// Registered, never polling: their orders (all short) expire.
const IDLE_AGENTS: usize = 4;
const ORDERS: usize = 5_000;
/// Commands per submit (one order each).
const BATCH: usize = 100;
const SUBMITTERS: usize = 4;
/// The long timeout of most orders, in seconds.
const LONG_TIMEOUT: u64 = 900;
const POLL_WAIT_SECS: u64 = 2;
const POLL_LIMIT: usize = 50;
/// How long everything may take to settle once every submit is answered.
const SETTLE_LIMIT: Duration = Duration::from_secs(180);

fn polling_agent(i: usize) -> String {
    format!("poller-{i:02}")
}

fn idle_agent(i: usize) -> String {
    format!("idle-{i}")
}

/// One order handed out by one poll.
#[derive(Debug, Clone)]
struct Delivery {
    order: String,
    poll: u64,
    agent: String,
    /// The agent the order document names.
    addressed_to: String,
}

/// The plan of one order: its agent and timeout.
#[derive(Debug, Clone)]
struct Planned {
    agent: String,
    timeout: u64,
}

/// The whole plan: `ORDERS` orders in batches of `BATCH`.
fn plan(rng: &mut Rng) -> Vec<Vec<Planned>> {
    (0..ORDERS / BATCH)
        .map(|_| {
            (0..BATCH)
                .map(|_| {
                    let roll = rng.below(100);
                    let short = 1 + rng.below(2) as u64;
                    if roll < 6 {
                        Planned {
                            agent: idle_agent(rng.below(IDLE_AGENTS)),
                            timeout: short,
                        }
                    } else if roll < 16 {
                        Planned {
                            agent: polling_agent(rng.below(POLLING_AGENTS)),
                            timeout: short,
                        }
                    } else {
                        Planned {
                            agent: polling_agent(rng.below(POLLING_AGENTS)),
                            timeout: LONG_TIMEOUT,
                        }
                    }
                })
                .collect()
        })
        .collect()
}

/// Every order the service holds: id → (status, result message).
pub(crate) async fn all_orders(http: &Http, base: &str) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let url = match &after {
            Some(a) => format!("{base}/api/v1/orders?size=1000&after={a}"),
            None => format!("{base}/api/v1/orders?size=1000"),
        };
        let a = http.get(&url).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.status, 200, "list orders: {}", a.body);
        for o in a.body["orders"].as_array().expect("orders") {
            let c = &o["command"];
            out.insert(
                c["order_id"].as_str().expect("order_id").to_owned(),
                (
                    c["status"].as_str().unwrap_or_default().to_owned(),
                    c["result"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                ),
            );
        }
        match a.body["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return out,
        }
    }
}

/// Whether some order is in `status`, asked through `base`.
async fn any_in(http: &Http, base: &str, status: &str) -> bool {
    let a = http
        .get(&format!("{base}/api/v1/orders?status={status}&size=1"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.status, 200, "list {status} orders: {}", a.body);
    !a.body["orders"].as_array().is_none_or(Vec::is_empty)
}

#[derive(Default)]
struct Shared {
    deliveries: Mutex<Vec<Delivery>>,
    /// Requests answered with a status other than the expected one.
    failures: Mutex<Vec<String>>,
    acknowledged: Mutex<Vec<(String, Planned)>>,
    polls: AtomicU64,
    reports: AtomicU64,
}

impl Shared {
    fn fail(&self, what: String) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(what);
    }
}

async fn many_instances(label: &str, env: &[(&str, String)]) {
    let started = Instant::now();
    let mut env: Vec<(&str, String)> = env.to_vec();
    env.extend([
        ("CM_SCHEDULER__INTERVAL_SECS", "1".to_owned()),
        ("CM_DELIVERY__REDELIVER_AFTER_SECS", "3600".to_owned()),
        ("CM_DELIVERY__RESULT_TIMEOUT_SECS", "0".to_owned()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let services: Vec<Service> = (0..INSTANCES).map(|_| Service::start(&env)).collect();
    let bases: Arc<Vec<String>> = Arc::new(services.iter().map(|s| s.base.clone()).collect());
    let http = Http::new(Duration::from_secs(60));
    let seed = Rng::clock_seed();
    println!("{label}: seed {seed}");
    let mut rng = Rng::new(seed);

    let agents: Vec<String> = (0..POLLING_AGENTS)
        .map(polling_agent)
        .chain((0..IDLE_AGENTS).map(idle_agent))
        .collect();
    for id in &agents {
        let base = &bases[rng.below(INSTANCES)];
        let a = http
            .put(
                &format!("{base}/api/v1/agents/{id}"),
                &json!({"groups": ["many"]}),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.status, 201, "register {id}: {}", a.body);
    }

    let shared = Arc::new(Shared::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut agent_tasks = tokio::task::JoinSet::new();
    for i in 0..POLLING_AGENTS {
        let (http, bases, shared, stop) =
            (http.clone(), bases.clone(), shared.clone(), stop.clone());
        let mut rng = Rng::new(seed ^ (0x100 + i as u64));
        let me = polling_agent(i);
        agent_tasks.spawn(async move {
            let mut seen: HashSet<String> = HashSet::new();
            while !stop.load(Ordering::SeqCst) {
                let base = &bases[rng.below(INSTANCES)];
                let url = format!(
                    "{base}/api/v1/agents/{me}/poll?wait={POLL_WAIT_SECS}&limit={POLL_LIMIT}"
                );
                let poll = shared.polls.fetch_add(1, Ordering::SeqCst);
                let a = match http.post(&url, &Value::Null).await {
                    Ok(a) if a.status == 200 => a,
                    other => {
                        shared.fail(format!("poll by {me}: {other:?}"));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let orders = a.body["orders"].as_array().cloned().unwrap_or_default();
                let mut fresh = Vec::new();
                {
                    let mut d = shared
                        .deliveries
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    for o in &orders {
                        let id = o["command"]["order_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        d.push(Delivery {
                            order: id.clone(),
                            poll,
                            agent: me.clone(),
                            addressed_to: o["agent"]["id"].as_str().unwrap_or_default().to_owned(),
                        });
                        // Agents de-duplicate by order id.
                        if seen.insert(id.clone()) {
                            fresh.push(id);
                        }
                    }
                }
                for id in fresh {
                    let base = &bases[rng.below(INSTANCES)];
                    let report = json!({"status": "success", "code": 0, "message": me, "data": ""});
                    match http
                        .post(&format!("{base}/api/v1/orders/{id}/result"), &report)
                        .await
                    {
                        Ok(a) if a.status == 200 => {
                            shared.reports.fetch_add(1, Ordering::SeqCst);
                        }
                        other => shared.fail(format!("report of {id} by {me}: {other:?}")),
                    }
                }
            }
        });
    }

    // Submit everything through random instances.
    let batches = Arc::new(plan(&mut rng));
    let next = Arc::new(AtomicUsize::new(0));
    let submit_started = Instant::now();
    let mut submitters = tokio::task::JoinSet::new();
    for s in 0..SUBMITTERS {
        let (http, bases, shared) = (http.clone(), bases.clone(), shared.clone());
        let (batches, next) = (batches.clone(), next.clone());
        let mut rng = Rng::new(seed ^ (0x200 + s as u64));
        submitters.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(batch) = batches.get(i) else { break };
                let commands: Vec<Value> = batch
                    .iter()
                    .map(|p| command(&p.agent, p.timeout, "many"))
                    .collect();
                let base = &bases[rng.below(INSTANCES)];
                match http
                    .post(
                        &format!("{base}/api/v1/commands"),
                        &json!({ "commands": commands }),
                    )
                    .await
                {
                    Ok(a) if a.status == 201 => {
                        let ids = order_ids(&a.body);
                        assert_eq!(ids.len(), batch.len(), "one order per command: {}", a.body);
                        shared
                            .acknowledged
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .extend(ids.into_iter().zip(batch.iter().cloned()));
                    }
                    other => shared.fail(format!("submit of batch {i}: {other:?}")),
                }
            }
        });
    }
    while let Some(done) = submitters.join_next().await {
        done.expect("a submitter panicked");
    }
    let submitted_in = submit_started.elapsed();

    // Settled: nothing pending, nothing sent (twice in a row, through different instances).
    let settle_started = Instant::now();
    let mut quiet = 0;
    let mut turn = 0;
    while quiet < 2 {
        assert!(
            settle_started.elapsed() < SETTLE_LIMIT,
            "{label}: not settled {SETTLE_LIMIT:?} after the last submit; {} reports so far, \
             failures: {:?}",
            shared.reports.load(Ordering::SeqCst),
            shared
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
        turn += 1;
        let base = &bases[turn % INSTANCES];
        let busy = any_in(&http, base, "pending").await || any_in(&http, base, "sent").await;
        quiet = if busy { 0 } else { quiet + 1 };
    }
    let settled_in = settle_started.elapsed();
    stop.store(true, Ordering::SeqCst);
    while let Some(done) = agent_tasks.join_next().await {
        done.expect("an agent panicked");
    }

    // The accounting.
    let mut problems: Vec<String> = shared
        .failures
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let acknowledged: HashMap<String, Planned> = shared
        .acknowledged
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .cloned()
        .collect();
    if acknowledged.len() != ORDERS {
        problems.push(format!(
            "{} distinct orders acknowledged, not {ORDERS}",
            acknowledged.len()
        ));
    }
    let deliveries = shared
        .deliveries
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut polls_of: HashMap<&str, Vec<u64>> = HashMap::new();
    for d in &deliveries {
        polls_of.entry(d.order.as_str()).or_default().push(d.poll);
        if d.agent != d.addressed_to {
            problems.push(format!(
                "{} of {} went to {}",
                d.order, d.addressed_to, d.agent
            ));
        }
        match acknowledged.get(&d.order) {
            Some(p) if p.agent == d.agent => {}
            other => problems.push(format!(
                "{} delivered to {} but planned {other:?}",
                d.order, d.agent
            )),
        }
    }
    let handed_twice: Vec<(&&str, &Vec<u64>)> =
        polls_of.iter().filter(|(_, p)| p.len() > 1).collect();
    if !handed_twice.is_empty() {
        problems.push(format!(
            "{} orders handed out by more than one poll (redelivery is off), e.g. {:?}",
            handed_twice.len(),
            &handed_twice[..handed_twice.len().min(5)]
        ));
    }
    let received: HashSet<&str> = polls_of.keys().copied().collect();

    let stored = all_orders(&http, &bases[0]).await;
    if stored.len() != ORDERS {
        problems.push(format!(
            "the service holds {} orders, not {ORDERS}",
            stored.len()
        ));
    }
    let mut expired = 0u64;
    let mut success = 0u64;
    let mut expired_short_for_pollers = 0u64;
    for (id, planned) in &acknowledged {
        let got = received.contains(id.as_str());
        match (stored.get(id), got) {
            (Some((s, m)), true) if s == "success" && m == &planned.agent => success += 1,
            (Some((s, m)), false) if s == "failure" && m == "expired" => {
                expired += 1;
                if planned.timeout == LONG_TIMEOUT {
                    problems.push(format!("{id} (timeout {LONG_TIMEOUT} s) expired"));
                }
                if planned.agent.starts_with("poller") {
                    expired_short_for_pollers += 1;
                }
            }
            (state, got) => problems.push(format!(
                "{id} for {} (timeout {}): received {got}, stored {state:?}",
                planned.agent, planned.timeout
            )),
        }
    }
    let received_n = received.len() as u64;
    if received_n + expired != ORDERS as u64 {
        problems.push(format!(
            "received {received_n} + expired {expired} != {ORDERS}"
        ));
    }
    let mut metrics_expired = Vec::new();
    let mut metrics_delivered = Vec::new();
    let mut metrics_redelivered = 0;
    for base in bases.iter() {
        let m = http
            .get(&format!("{base}/metrics"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let text = m.body.as_str().unwrap_or_default();
        let name = "cm_order_transitions_total";
        metrics_expired.push(counter_sum(
            text,
            name,
            &[("to", "failure"), ("via", "expired")],
        ));
        metrics_delivered.push(counter_sum(
            text,
            name,
            &[("to", "sent"), ("via", "delivered")],
        ));
        metrics_redelivered += counter_sum(text, name, &[("to", "sent"), ("via", "redelivered")]);
    }
    if metrics_expired.iter().sum::<u64>() != expired {
        problems.push(format!(
            "the instances counted {metrics_expired:?} expiries, the stream holds {expired}"
        ));
    }
    if metrics_delivered.iter().sum::<u64>() != received_n || metrics_redelivered != 0 {
        problems.push(format!(
            "the instances counted {metrics_delivered:?} deliveries and {metrics_redelivered} \
             redeliveries; the agents received {received_n}"
        ));
    }
    println!(
        "{label}: {ORDERS} orders submitted in {submitted_in:.1?}, settled {settled_in:.1?} later \
         ({:.1?} in all); received and reported {received_n} (success {success}), expired {expired} \
         ({expired_short_for_pollers} of them for polling agents); expiries per instance \
         {metrics_expired:?}, deliveries per instance {metrics_delivered:?}; {} polls, {} \
         deliveries, {} handed out twice",
        started.elapsed(),
        shared.polls.load(Ordering::SeqCst),
        deliveries.len(),
        handed_twice.len(),
    );
    assert!(
        problems.is_empty(),
        "{label}: {} problems:\n{}",
        problems.len(),
        problems[..problems.len().min(40)].join("\n")
    );
    for s in services {
        s.stop();
    }
}

/// A new, empty database on the run's PostgreSQL server.
pub(crate) async fn fresh_database() -> String {
    use sqlx::{Connection, Executor};
    let base = ["CM_TEST_POSTGRES_URL", "DATABASE_URL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .expect("the heavy tests need PostgreSQL: run `cargo xtask test --heavy`");
    let name = format!("cm_heavy_{}_{}", std::process::id(), Rng::clock_seed());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("connect to the test server");
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create database");
    conn.close().await.expect("close");
    let (server, _db) = base.rsplit_once('/').expect("URL with a database");
    format!("{server}/{name}")
}

/// Indices of their own on the run's OpenSearch node, deleted (with their template) when
/// dropped.
pub(crate) struct Indices {
    pub(crate) node: String,
    pub(crate) prefix: String,
}

impl Indices {
    pub(crate) fn fresh() -> Self {
        let node = std::env::var("OPENSEARCH_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .expect("the heavy tests need OpenSearch: run `cargo xtask test --heavy`");
        Self {
            node: node.trim_end_matches('/').to_owned(),
            prefix: format!("heavy{}x{}", std::process::id(), Rng::clock_seed()),
        }
    }

    pub(crate) fn name(&self, index: &str) -> String {
        format!("{}-{index}", self.prefix)
    }

    /// The adapter's settings for these indices (to prepare data without the service).
    pub(crate) fn settings(&self) -> cm_adapter_opensearch::OpenSearchSettings {
        cm_adapter_opensearch::OpenSearchSettings {
            url: self.node.clone(),
            orders_index: self.name("wazuh-commands"),
            agents_index: self.name("wazuh-agents"),
            archive_index: self.name("wazuh-commands-archive"),
            requests_index: self.name("wazuh-commands-requests"),
            ..cm_adapter_opensearch::OpenSearchSettings::default()
        }
    }

    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CM_STORAGE__BACKEND", "opensearch".to_owned()),
            ("CM_STORAGE__OPENSEARCH__URL", self.node.clone()),
            (
                "CM_STORAGE__OPENSEARCH__ORDERS_INDEX",
                self.name("wazuh-commands"),
            ),
            (
                "CM_STORAGE__OPENSEARCH__AGENTS_INDEX",
                self.name("wazuh-agents"),
            ),
            (
                "CM_STORAGE__OPENSEARCH__ARCHIVE_INDEX",
                self.name("wazuh-commands-archive"),
            ),
            (
                "CM_STORAGE__OPENSEARCH__REQUESTS_INDEX",
                self.name("wazuh-commands-requests"),
            ),
        ]
    }
}

impl Drop for Indices {
    fn drop(&mut self) {
        let urls = [
            format!(
                "{}/{},{},{},{}?ignore_unavailable=true",
                self.node,
                self.name("wazuh-commands"),
                self.name("wazuh-agents"),
                self.name("wazuh-commands-archive"),
                self.name("wazuh-commands-requests")
            ),
            format!(
                "{}/_index_template/{}",
                self.node,
                self.name("wazuh-commands")
            ),
            format!(
                "{}/_index_template/{}",
                self.node,
                self.name("wazuh-commands-requests")
            ),
        ];
        // `Drop` runs inside the test's runtime: delete from a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let http = Http::new(Duration::from_secs(30));
                for url in urls {
                    let _ = http.call("DELETE", &url, None).await;
                }
            });
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_postgres_deliver_or_expire_every_order_exactly_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let url = fresh_database().await;
    let env = [
        ("CM_STORAGE__BACKEND", "postgres".to_owned()),
        ("CM_STORAGE__POSTGRES__URL", url),
    ];
    many_instances("postgres, 3 instances", &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_opensearch_deliver_or_expire_every_order_exactly_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let indices = Indices::fresh();
    many_instances("opensearch, 3 instances", &indices.env()).await;
}
