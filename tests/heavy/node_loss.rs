//! Node loss (issue 17, item 4): a three-node OpenSearch cluster (`cargo xtask opensearch
//! --nodes 3`), its indices with one replica, two service instances given all three URLs.
//! Sixteen agents long-poll through both instances while submits flow through both (single-agent
//! commands, and one group command to a 5,000-agent group). Meanwhile the node holding the
//! primary of the orders index is killed with SIGKILL, and once the cluster has recovered (a
//! primary of the index active again on the two nodes left) it is brought back; then the same
//! with the elected cluster manager.
//!
//! Checked once everything settled: every submit answered 201 has all its orders, each in one
//! final state (delivered and reported `success`, or `expired` for the group's agents that
//! never poll); no order was handed out by two polls (`redeliver_after` is a minute, and agents
//! report within seconds: only an order whose claim applied while its poll failed — a node died
//! under the claim — is handed out again, to one poll); the instances were never restarted; every 503 was answered to a request in flight
//! while the cluster had no primary for the index (from the kill until the cluster, asked
//! through a node left, reports the node gone and the index's primary active); any other
//! failure fails the test; a node killed and back gets requests again
//! (`cm_opensearch_requests_total{node}` grows on both instances). The figures are printed.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use cm_domain::{Agent, AgentId, GroupName};
use cm_ports::AgentRegistry;
use serde_json::{Value, json};

use crate::ONE_AT_A_TIME;
use crate::http::{Http, Rng, command, counter_sum, order_ids};
use crate::instances::all_orders;
use crate::servers::{ScratchDir, xtask_command};
use crate::support::Service;

const NODES: usize = 3;
const INSTANCES: usize = 2;
const POLLERS: usize = 16;
/// Agents of the group, pollers included.
const FLEET: usize = 5_000;
const GROUP: &str = "fleet";
/// The group command's timeout: its orders for agents that never poll expire then.
const GROUP_TIMEOUT_SECS: u64 = 90;
/// The timeout of the single-agent commands (never reached).
const LONG_TIMEOUT: u64 = 3600;
/// Single-agent commands per submit.
const BATCH: usize = 5;
const SUBMITTERS: usize = 2;
const POLL_WAIT_SECS: u64 = 5;
const POLL_LIMIT: usize = 50;
const ORDERS_INDEX: &str = "wazuh-commands";
/// How long a cluster, a node or the service may take for any one step before the test fails.
const STEP_LIMIT: Duration = Duration::from_secs(240);

fn poller(i: usize) -> String {
    format!("poller-{i:02}")
}

/// One `cargo xtask opensearch` process: the whole cluster, or one node brought back.
struct Xtask {
    child: Child,
    stdin: Option<ChildStdin>,
    urls: Vec<String>,
}

impl Xtask {
    /// Runs `xtask opensearch <args>` and waits for its `ready` lines, one per node.
    fn start(args: &[String], nodes: usize) -> Self {
        let mut child = xtask_command()
            .arg("opensearch")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run xtask");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let said: Arc<Mutex<Vec<String>>> = Arc::default();
        let lines = Arc::clone(&said);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("[xtask] {line}");
                }
                lines
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("opensearch ready ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let mut xtask = Self {
            child,
            stdin,
            urls: Vec::new(),
        };
        let deadline = Instant::now() + STEP_LIMIT;
        while xtask.urls.len() < nodes {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(url) => xtask.urls.push(url),
                Err(_) => panic!(
                    "xtask opensearch {} printed {} of {nodes} ready lines within {STEP_LIMIT:?}; \
                     it said:\n{}",
                    args.join(" "),
                    xtask.urls.len(),
                    said.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .join("\n")
                ),
            }
        }
        xtask
    }
}

impl Drop for Xtask {
    fn drop(&mut self) {
        // xtask stops its nodes when its input ends.
        self.stdin.take();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Requests to the cluster itself, each node tried in turn, with short timeouts.
struct Os {
    client: reqwest::Client,
    urls: Vec<String>,
}

impl Os {
    fn new(urls: Vec<String>) -> Self {
        // ring, the workspace's one TLS crypto provider: a client panics without one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .no_proxy()
                .build()
                .expect("client"),
            urls,
        }
    }

    /// The answer of the first node (not in `down`) that gives a 2xx answer.
    async fn get(&self, path: &str, down: &[usize]) -> Option<Value> {
        for (i, url) in self.urls.iter().enumerate() {
            if down.contains(&i) {
                continue;
            }
            let Ok(response) = self.client.get(format!("{url}{path}")).send().await else {
                continue;
            };
            if response.status().is_success()
                && let Ok(body) = response.json::<Value>().await
            {
                return Some(body);
            }
        }
        None
    }

    /// Which node (index into `urls`, from its name `node-<i+1>`) `path`'s answer names in
    /// `field` of its first row (`_cat` APIs with `format=json`).
    async fn node_of(&self, path: &str, pick: impl Fn(&Value) -> bool) -> usize {
        let deadline = Instant::now() + STEP_LIMIT;
        loop {
            if let Some(rows) = self.get(path, &[]).await
                && let Some(row) = rows.as_array().and_then(|r| r.iter().find(|r| pick(r)))
                && let Some(n) = row["node"]
                    .as_str()
                    .and_then(|n| n.strip_prefix("node-"))
                    .and_then(|n| n.parse::<usize>().ok())
            {
                return n - 1;
            }
            assert!(Instant::now() < deadline, "no answer to {path}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The process id of node `i` (as the node itself reports it).
    async fn pid(&self, i: usize) -> u32 {
        let body = self
            .get(&format!("/_nodes/node-{}/process", i + 1), &[])
            .await
            .expect("the nodes' processes");
        body["nodes"]
            .as_object()
            .and_then(|n| n.values().next())
            .and_then(|n| n["process"]["id"].as_u64())
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or_else(|| panic!("no process id of node-{}: {body}", i + 1))
    }

    /// Waits until every node is in the cluster and every index green.
    async fn until_green(&self) -> Duration {
        let started = Instant::now();
        loop {
            let health = self
                .get(
                    "/_cluster/health?wait_for_status=green&wait_for_nodes=3&timeout=2s",
                    &[],
                )
                .await;
            if let Some(h) = &health
                && h["status"] == "green"
                && h["number_of_nodes"] == NODES
            {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < STEP_LIMIT,
                "the cluster was not green with {NODES} nodes within {STEP_LIMIT:?}: {health:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the cluster, asked through the nodes left, has a cluster manager, has seen
    /// node `down` go, and has the orders index's primary active again; returns when that was
    /// first seen, and for how long the index's primary was seen inactive meanwhile.
    async fn until_recovered(&self, down: usize) -> (Instant, Duration) {
        let started = Instant::now();
        let mut inactive = Duration::ZERO;
        let mut last = Instant::now();
        loop {
            let health = self
                .get(
                    &format!(
                        "/_cluster/health/{ORDERS_INDEX}?timeout=1s&cluster_manager_timeout=1s"
                    ),
                    &[down],
                )
                .await;
            let now = Instant::now();
            let primary = health
                .as_ref()
                .is_some_and(|h| h["active_primary_shards"].as_u64() >= Some(1));
            if !primary {
                inactive += now - last;
            }
            last = now;
            if let Some(h) = &health
                && primary
                && h["number_of_nodes"] == NODES - 1
                && h["status"] != "red"
            {
                return (now, inactive);
            }
            assert!(
                started.elapsed() < STEP_LIMIT,
                "the cluster did not recover from losing node-{} within {STEP_LIMIT:?}: {health:?}",
                down + 1
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One order handed out by one poll.
#[derive(Debug, Clone)]
struct Delivery {
    order: String,
    poll: u64,
}

/// A 503 the service answered: when its request started and when the answer came.
#[derive(Debug, Clone)]
struct Unavailable {
    what: String,
    started: Instant,
    ended: Instant,
}

#[derive(Default)]
struct Shared {
    deliveries: Mutex<Vec<Delivery>>,
    unavailable: Mutex<Vec<Unavailable>>,
    /// Answers that were neither the expected one nor a 503.
    failures: Mutex<Vec<String>>,
    /// Order ids of every submit answered 201, with whether it is the group's.
    acknowledged: Mutex<Vec<(String, bool)>>,
    submits: AtomicU64,
    polls: AtomicU64,
}

impl Shared {
    fn record(&self, what: String, started: Instant, answer: &Result<crate::http::Answer, String>) {
        match answer {
            Ok(a) if a.status == 503 => self
                .unavailable
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Unavailable {
                    what,
                    started,
                    ended: Instant::now(),
                }),
            other => self
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(format!("{what}: {other:?}")),
        }
    }
}

/// A kill and its recovery, as the cluster saw them.
#[derive(Debug)]
struct Loss {
    what: &'static str,
    node: usize,
    killed: Instant,
    recovered: Instant,
    primary_inactive: Duration,
    back_in: Duration,
    green_in: Duration,
}

/// The sum of `name{node="<label>"}` over the instances' metrics pages.
async fn node_requests(http: &Http, bases: &[String], label: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for base in bases {
        let m = http
            .get(&format!("{base}/metrics"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        out.push(counter_sum(
            m.body.as_str().unwrap_or_default(),
            "cm_opensearch_requests_total",
            &[("node", label)],
        ));
    }
    out
}

async fn metric_of(http: &Http, base: &str, name: &str) -> u64 {
    let m = http
        .get(&format!("{base}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    counter_sum(m.body.as_str().unwrap_or_default(), name, &[])
}

fn kill_now(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL {pid}: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_that_loses_a_node_keeps_every_acknowledged_order_and_uses_the_node_again() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let data = ScratchDir::new("cluster");
    let data_dir = data.path().to_string_lossy().into_owned();
    let cluster_started = Instant::now();
    let cluster = Xtask::start(
        &[
            "--nodes".to_owned(),
            NODES.to_string(),
            "--data".to_owned(),
            data_dir.clone(),
        ],
        NODES,
    );
    let urls = cluster.urls.clone();
    let base_port: u16 = urls[0]
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("http://127.0.0.1:<port>");
    let os = Os::new(urls.clone());
    os.until_green().await;
    println!(
        "node loss: cluster of {NODES} ready in {:.1?}: {}",
        cluster_started.elapsed(),
        urls.join(",")
    );

    // The fleet, straight through the adapter (with the service's settings: replicas 1).
    let settings = cm_adapter_opensearch::OpenSearchSettings {
        urls: urls.clone(),
        replicas: 1,
        ..cm_adapter_opensearch::OpenSearchSettings::default()
    };
    let backend = cm_adapter_opensearch::OpenSearchBackend::open(&settings)
        .await
        .expect("open the cluster");
    let group = GroupName::parse(GROUP, "group").expect("group");
    let fleet: Vec<Agent> = (0..FLEET)
        .map(|i| {
            let id = if i < POLLERS {
                poller(i)
            } else {
                format!("idle-{i:05}")
            };
            Agent::new(AgentId::parse(&id, "id").expect("id"), vec![group.clone()])
        })
        .collect();
    for chunk in fleet.chunks(1_000) {
        backend.upsert_many(chunk).await.expect("register agents");
    }
    backend.close().await;
    drop(backend);

    let env: Vec<(&str, String)> = vec![
        ("CM_STORAGE__BACKEND", "opensearch".to_owned()),
        ("CM_STORAGE__OPENSEARCH__URLS", urls.join(",")),
        ("CM_STORAGE__OPENSEARCH__REPLICAS", "1".to_owned()),
        (
            "CM_STORAGE__OPENSEARCH__REQUEST_TIMEOUT_SECS",
            "20".to_owned(),
        ),
        ("CM_SCHEDULER__INTERVAL_SECS", "1".to_owned()),
        // Long next to the agents' reports; short enough for an order whose poll failed after
        // its claim applied to be delivered within the run.
        ("CM_DELIVERY__REDELIVER_AFTER_SECS", "60".to_owned()),
        ("CM_DELIVERY__RESULT_TIMEOUT_SECS", "0".to_owned()),
        // A submit that failed half-way leaves orders that never deliver: its request is
        // aborted (and they removed) soon, so that the run settles.
        ("CM_LIMITS__WRITING_GRACE_SECS", "15".to_owned()),
        // What is measured is the cluster, not the HTTP layer on a machine three JVMs load:
        // a kept-alive connection is never closed under the test's client as it reuses it.
        ("CM_HTTP__IDLE_TIMEOUT_SECS", "3600".to_owned()),
        ("CM_HTTP__HEADER_READ_TIMEOUT_SECS", "60".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let services: Vec<Service> = (0..INSTANCES).map(|_| Service::start(&env)).collect();
    let bases: Arc<Vec<String>> = Arc::new(services.iter().map(|s| s.base.clone()).collect());
    // Every index (the service made the orders, archive, requests and servers ones) has its
    // replica before anything is killed.
    os.until_green().await;

    let http = Http::new(Duration::from_secs(90));
    let seed = Rng::clock_seed();
    println!("node loss: seed {seed}");
    let shared = Arc::new(Shared::default());
    let stop_agents = Arc::new(AtomicBool::new(false));
    let stop_submits = Arc::new(AtomicBool::new(false));

    let mut agents = tokio::task::JoinSet::new();
    for i in 0..POLLERS {
        let (http, bases, shared, stop) = (
            http.clone(),
            bases.clone(),
            shared.clone(),
            stop_agents.clone(),
        );
        let me = poller(i);
        agents.spawn(async move {
            let mut turn = i;
            let mut seen: HashSet<String> = HashSet::new();
            let mut unreported: Vec<String> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                turn += 1;
                let base = &bases[turn % INSTANCES];
                let url = format!(
                    "{base}/api/v1/agents/{me}/poll?wait={POLL_WAIT_SECS}&limit={POLL_LIMIT}"
                );
                let poll = shared.polls.fetch_add(1, Ordering::SeqCst);
                let started = Instant::now();
                let answer = http.post(&url, &Value::Null).await;
                let a = match answer {
                    Ok(a) if a.status == 200 => a,
                    other => {
                        shared.record(format!("poll by {me}"), started, &other);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                {
                    let mut d = shared
                        .deliveries
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    for o in a.body["orders"].as_array().into_iter().flatten() {
                        let id = o["command"]["order_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        d.push(Delivery {
                            order: id.clone(),
                            poll,
                        });
                        if seen.insert(id.clone()) {
                            unreported.push(id);
                        }
                    }
                }
                // Reports that failed (503) are sent again on the next turn.
                let mut again = Vec::new();
                for id in unreported.drain(..) {
                    turn += 1;
                    let base = &bases[turn % INSTANCES];
                    let report = json!({"status": "success", "code": 0, "message": me, "data": ""});
                    let started = Instant::now();
                    let answer = http
                        .post(&format!("{base}/api/v1/orders/{id}/result"), &report)
                        .await;
                    match answer {
                        Ok(a) if a.status == 200 => {}
                        other => {
                            shared.record(format!("report of {id} by {me}"), started, &other);
                            again.push(id);
                        }
                    }
                }
                unreported = again;
            }
            assert!(
                unreported.is_empty(),
                "{me} could not report {unreported:?}"
            );
        });
    }

    let mut submitters = tokio::task::JoinSet::new();
    for s in 0..SUBMITTERS {
        let (http, bases, shared, stop) = (
            http.clone(),
            bases.clone(),
            shared.clone(),
            stop_submits.clone(),
        );
        let mut rng = Rng::new(seed ^ (0x200 + s as u64));
        submitters.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let commands: Vec<Value> = (0..BATCH)
                    .map(|_| command(&poller(rng.below(POLLERS)), LONG_TIMEOUT, "node-loss"))
                    .collect();
                let base = &bases[rng.below(INSTANCES)];
                let n = shared.submits.fetch_add(1, Ordering::SeqCst);
                let started = Instant::now();
                let answer = http
                    .post(
                        &format!("{base}/api/v1/commands"),
                        &json!({ "commands": commands }),
                    )
                    .await;
                match answer {
                    Ok(a) if a.status == 201 => {
                        let ids = order_ids(&a.body);
                        assert_eq!(ids.len(), BATCH, "one order per command: {}", a.body);
                        shared
                            .acknowledged
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .extend(ids.into_iter().map(|id| (id, false)));
                    }
                    other => shared.record(format!("submit {n}"), started, &other),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The group command, and the first kill while it fans out.
    let group_submit = {
        let (http, base, shared) = (http.clone(), bases[0].clone(), shared.clone());
        tokio::spawn(async move {
            let body = json!({"commands": [{
                "source": "Users/Services", "user": "node-loss",
                "target": {"type": "group", "id": GROUP},
                "action": {"name": "restart", "args": {}, "version": "v5"},
                "timeout": GROUP_TIMEOUT_SECS
            }]});
            let started = Instant::now();
            let answer = http.post(&format!("{base}/api/v1/commands"), &body).await;
            match answer {
                Ok(a) if a.status == 201 => {
                    let ids = order_ids(&a.body);
                    assert_eq!(ids.len(), FLEET, "one order per agent of the group");
                    shared
                        .acknowledged
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend(ids.into_iter().map(|id| (id, true)));
                    true
                }
                other => {
                    shared.record("the group submit".to_owned(), started, &other);
                    false
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut losses = Vec::new();
    let mut back = Vec::new();
    for what in ["the orders primary's node", "the elected cluster manager"] {
        let node = if losses.is_empty() {
            os.node_of(&format!("/_cat/shards/{ORDERS_INDEX}?format=json"), |r| {
                r["prirep"] == "p" && r["state"] == "STARTED"
            })
            .await
        } else {
            os.node_of("/_cat/cluster_manager?format=json", |_| true)
                .await
        };
        let pid = os.pid(node).await;
        let killed = Instant::now();
        kill_now(pid);
        let (recovered, primary_inactive) = os.until_recovered(node).await;
        println!(
            "node loss: killed node-{} ({what}); the cluster recovered after {:.1?} (index \
             primary seen inactive for {:.1?})",
            node + 1,
            recovered - killed,
            primary_inactive
        );
        // Back on its data and ports.
        let restarted = Instant::now();
        back.push(Xtask::start(
            &[
                "--cluster-node".to_owned(),
                format!("{}/{NODES}", node + 1),
                "--port".to_owned(),
                base_port.to_string(),
                "--data".to_owned(),
                data_dir.clone(),
            ],
            1,
        ));
        let back_in = restarted.elapsed();
        let green_in = os.until_green().await;
        losses.push(Loss {
            what,
            node,
            killed,
            recovered,
            primary_inactive,
            back_in,
            green_in,
        });
    }

    // The nodes brought back get requests again, from both instances.
    for loss in &losses {
        let label = urls[loss.node].trim_start_matches("http://").to_owned();
        let before = node_requests(&http, &bases, &label).await;
        let deadline = Instant::now() + STEP_LIMIT;
        loop {
            let now = node_requests(&http, &bases, &label).await;
            if now.iter().zip(&before).all(|(n, b)| n > b) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node-{} ({label}) got no requests from every instance within {STEP_LIMIT:?} \
                 of being back: {before:?} -> {now:?}",
                loss.node + 1
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    stop_submits.store(true, Ordering::SeqCst);
    while let Some(done) = submitters.join_next().await {
        done.expect("a submitter panicked");
    }
    let group_acknowledged = group_submit.await.expect("the group submit panicked");

    // Settled: nothing pending, nothing sent (twice in a row).
    let settle_started = Instant::now();
    let mut quiet = 0;
    let mut turn = 0;
    while quiet < 2 {
        assert!(
            settle_started.elapsed() < STEP_LIMIT,
            "not settled within {STEP_LIMIT:?} after the last submit; failures: {:?}",
            shared
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        turn += 1;
        let base = &bases[turn % INSTANCES];
        let mut busy = false;
        for status in ["pending", "sent"] {
            let a = http
                .get(&format!("{base}/api/v1/orders?status={status}&size=1"))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(a.status, 200, "list {status} orders: {}", a.body);
            busy |= !a.body["orders"].as_array().is_none_or(Vec::is_empty);
        }
        quiet = if busy { 0 } else { quiet + 1 };
    }
    stop_agents.store(true, Ordering::SeqCst);
    while let Some(done) = agents.join_next().await {
        done.expect("an agent panicked");
    }

    // The accounting.
    let mut problems: Vec<String> = shared
        .failures
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let unavailable = shared
        .unavailable
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for u in &unavailable {
        let in_a_window = losses
            .iter()
            .any(|l| u.started <= l.recovered && u.ended >= l.killed);
        if !in_a_window {
            problems.push(format!(
                "503 to {} outside every window without a primary ({:?} after the first kill)",
                u.what,
                u.started.saturating_duration_since(losses[0].killed)
            ));
        }
    }
    let acknowledged: HashMap<String, bool> = shared
        .acknowledged
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .cloned()
        .collect();
    let deliveries = shared
        .deliveries
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut polls_of: HashMap<&str, Vec<u64>> = HashMap::new();
    for d in &deliveries {
        polls_of.entry(d.order.as_str()).or_default().push(d.poll);
    }
    let handed_twice: Vec<_> = polls_of.iter().filter(|(_, p)| p.len() > 1).collect();
    if !handed_twice.is_empty() {
        problems.push(format!(
            "{} orders handed out by more than one poll, e.g. {:?}",
            handed_twice.len(),
            &handed_twice[..handed_twice.len().min(5)]
        ));
    }
    let stored = all_orders(&http, &bases[1]).await;
    let (mut success, mut expired) = (0_u64, 0_u64);
    for (id, &of_group) in &acknowledged {
        let delivered = polls_of.contains_key(id.as_str());
        match (stored.get(id), delivered) {
            (Some((s, m)), true) if s == "success" && m.starts_with("poller-") => success += 1,
            (Some((s, m)), false) if of_group && s == "failure" && m == "expired" => expired += 1,
            (state, delivered) => problems.push(format!(
                "acknowledged order {id} (group: {of_group}): delivered {delivered}, stored \
                 {state:?}"
            )),
        }
    }
    for (id, (status, _)) in &stored {
        if status == "pending" || status == "sent" {
            problems.push(format!("order {id} is still {status}"));
        }
    }
    let mut retries = 0;
    for base in bases.iter() {
        retries += metric_of(&http, base, "cm_opensearch_retries_total").await;
        let alive = metric_of(&http, base, "cm_opensearch_nodes_alive").await;
        if alive != NODES as u64 {
            problems.push(format!("{base} counts {alive} nodes alive at the end"));
        }
    }

    println!(
        "node loss: {} submits, {} polls; {} orders acknowledged (group of {FLEET} acknowledged: \
         {group_acknowledged}), {} stored; {success} delivered and reported, {expired} expired \
         (the group's agents that never poll); {} answers 503, {retries} requests retried on \
         another node",
        shared.submits.load(Ordering::SeqCst),
        shared.polls.load(Ordering::SeqCst),
        acknowledged.len(),
        stored.len(),
        unavailable.len(),
    );
    for l in &losses {
        let in_window = unavailable
            .iter()
            .filter(|u| u.started <= l.recovered && u.ended >= l.killed)
            .count();
        println!(
            "node loss: {}: node-{}; 503 window (kill until the cluster had a primary of the \
             index again without it) {:.1?}, primary seen inactive {:.1?}; {in_window} answers \
             503 in it; node back in {:.1?}, cluster green {:.1?} later",
            l.what,
            l.node + 1,
            l.recovered - l.killed,
            l.primary_inactive,
            l.back_in,
            l.green_in
        );
    }
    // The instances ran throughout: never restarted, still serving.
    drop(services);
    drop(back);
    drop(cluster);
    assert!(
        problems.is_empty(),
        "{} problems: {problems:#?}",
        problems.len()
    );
}
