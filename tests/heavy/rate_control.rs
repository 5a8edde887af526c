//! Rollouts that stop themselves, with three service instances on one PostgreSQL database and on
//! one set of OpenSearch indices (issue 14; docs/rollout.md), every scheduler running each second.
//!
//! - A 20-agent request with `max_concurrency: 3`: twenty agents long-poll through random
//!   instances and report through random instances, each holding its order a little while; at
//!   no moment do more than 3 agents hold an order of the request, and it completes.
//! - With `max_errors: 1` and every agent reporting failure, the request stops after the second
//!   failure: the rest end `failure`, `stopped`.
//! - A request paused through one instance hands out nothing through the others; resumed through
//!   a third, the agents still waiting in their long-polls get the rest.
//! - A dry run writes nothing.
//!
//! The agents' count of orders held is a lower bound of the orders out in storage (an agent
//! counts an order from its receipt until just before it reports it), so it can only miss a
//! breach, never invent one; holding each order for a while makes a breach visible.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};

use crate::ONE_AT_A_TIME;
use crate::http::{Http, Rng};
use crate::instances::{Indices, fresh_database};
use crate::support::Service;

const INSTANCES: usize = 3;
const AGENTS: usize = 20;
const POLL_WAIT_SECS: u64 = 2;
/// How long an agent holds an order before it reports it.
const HOLD: Duration = Duration::from_millis(40);

struct Fleet {
    bases: Vec<String>,
    http: Http,
    rng: Mutex<Rng>,
}

impl Fleet {
    fn any(&self) -> String {
        let i = self
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .below(self.bases.len());
        self.bases[i].clone()
    }

    async fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let url = format!("{}{path}", self.any());
        let a = self
            .http
            .call(method, &url, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(a.status < 300, "{method} {url}: {} {}", a.status, a.body);
        a.body
    }

    async fn submit(&self, group: &str, rate_control: Option<Value>) -> String {
        let mut command = json!({
            "source": "Users/Services", "user": "heavy",
            "target": {"type": "group", "id": group},
            "action": {"name": "restart", "args": {}, "version": "v5"},
            "timeout": 900
        });
        if let Some(r) = rate_control {
            command["rate_control"] = r;
        }
        let body = self
            .ok(
                "POST",
                "/api/v1/commands",
                Some(&json!({"commands": [command]})),
            )
            .await;
        body["requests"][0]["request_id"]
            .as_str()
            .expect("request id")
            .to_owned()
    }

    async fn request(&self, id: &str) -> Value {
        self.ok("GET", &format!("/api/v1/requests/{id}"), None)
            .await
    }
}

fn agent(group: &str, i: usize) -> String {
    format!("{group}-{i:02}")
}

/// Runs the group's agents until the request is finished: each long-polls through a random
/// instance, holds what it gets for [`HOLD`], and reports `status` through a random instance.
/// Answers the most orders of the request held at once, and how many each agent got.
async fn run_agents(
    fleet: &Arc<Fleet>,
    group: &str,
    request: &str,
    status: &str,
) -> (usize, usize) {
    let held = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..AGENTS {
        let (fleet, held, most, received, done) = (
            Arc::clone(fleet),
            Arc::clone(&held),
            Arc::clone(&most),
            Arc::clone(&received),
            Arc::clone(&done),
        );
        let id = agent(group, i);
        let status = status.to_owned();
        let request = request.to_owned();
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let got = fleet
                    .ok(
                        "POST",
                        &format!("/api/v1/agents/{id}/poll?wait={POLL_WAIT_SECS}&limit=10"),
                        None,
                    )
                    .await;
                for o in got["orders"].as_array().cloned().unwrap_or_default() {
                    assert_eq!(o["command"]["request_id"], json!(request));
                    received.fetch_add(1, Ordering::SeqCst);
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(HOLD).await;
                    held.fetch_sub(1, Ordering::SeqCst);
                    let order = o["command"]["order_id"].as_str().expect("order id");
                    fleet
                        .ok(
                            "POST",
                            &format!("/api/v1/orders/{order}/result"),
                            Some(
                                &json!({"status": status, "code": 3, "message": "handler said so"}),
                            ),
                        )
                        .await;
                }
            }
        }));
    }
    loop {
        let r = fleet.request(request).await;
        if ["completed", "stopped", "cancelled"].contains(&r["state"].as_str().unwrap_or("")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("agent");
    }
    (most.load(Ordering::SeqCst), received.load(Ordering::SeqCst))
}

async fn register(fleet: &Fleet, group: &str) {
    for i in 0..AGENTS {
        fleet
            .ok(
                "PUT",
                &format!("/api/v1/agents/{}", agent(group, i)),
                Some(&json!({"groups": [group]})),
            )
            .await;
    }
}

async fn rollouts_stop_themselves(label: &str, env: &[(&str, String)]) {
    let mut env: Vec<(&str, String)> = env.to_vec();
    env.push(("CM_SCHEDULER__INTERVAL_SECS", "1".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let services: Vec<Service> = (0..INSTANCES).map(|_| Service::start(&env)).collect();
    let fleet = Arc::new(Fleet {
        bases: services.iter().map(|s| s.base.clone()).collect(),
        http: Http::new(Duration::from_secs(60)),
        rng: Mutex::new(Rng::new(Rng::clock_seed())),
    });

    // The cap.
    register(&fleet, "cap").await;
    let capped = fleet
        .submit("cap", Some(json!({"max_concurrency": 3})))
        .await;
    let (most, received) = run_agents(&fleet, "cap", &capped, "success").await;
    let r = fleet.request(&capped).await;
    assert_eq!(r["state"], json!("completed"), "{label}: {r}");
    assert_eq!(r["success"], json!(AGENTS), "{label}: {r}");
    assert!(
        most <= 3,
        "{label}: {most} orders held at once with a cap of 3"
    );
    assert_eq!(received, AGENTS, "{label}: each order handed out once");

    // The error budget.
    register(&fleet, "budget").await;
    let budget = fleet
        .submit(
            "budget",
            Some(json!({"max_concurrency": 3, "max_errors": 1})),
        )
        .await;
    let (most, received) = run_agents(&fleet, "budget", &budget, "failure").await;
    let r = fleet.request(&budget).await;
    assert_eq!(r["state"], json!("stopped"), "{label}: {r}");
    assert_eq!(
        r["state_reason"],
        json!("error budget exhausted"),
        "{label}: {r}"
    );
    assert!(most <= 3, "{label}: {most} held at once");
    let errors = r["errors"].as_u64().expect("errors");
    // The second failure stops it; orders still out then (at most the cap's worth less the
    // one that failed) may fail after it: at most the budget plus the cap.
    assert!((2..=1 + 3).contains(&errors), "{label}: {r}");
    assert_eq!(
        errors, received as u64,
        "{label}: every delivered order failed: {r}"
    );
    assert_eq!(r["failure"], json!(AGENTS), "{label}: {r}");
    let groups = fleet
        .ok("GET", &format!("/api/v1/requests/{budget}/results"), None)
        .await;
    let stopped = groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["message"] == json!("stopped"))
        .cloned()
        .expect("a stopped group");
    assert_eq!(
        stopped["count"],
        json!(AGENTS as u64 - errors),
        "{label}: {groups}"
    );

    // Pause and resume, through different instances.
    register(&fleet, "pause").await;
    let paused = fleet.submit("pause", None).await;
    let a = fleet
        .http
        .post(
            &format!("{}/api/v1/requests/{paused}/pause", fleet.bases[0]),
            &json!({}),
        )
        .await
        .expect("pause");
    assert_eq!(a.status, 200, "{label}: {}", a.body);
    for i in 0..AGENTS {
        let got = fleet
            .http
            .post(
                &format!(
                    "{}/api/v1/agents/{}/poll?wait=0",
                    fleet.bases[1 + i % 2],
                    agent("pause", i)
                ),
                &json!({}),
            )
            .await
            .expect("poll");
        assert_eq!(
            got.body["orders"],
            json!([]),
            "{label}: handed out while paused"
        );
    }
    let a = fleet
        .http
        .post(
            &format!("{}/api/v1/requests/{paused}/resume", fleet.bases[2]),
            &json!({}),
        )
        .await
        .expect("resume");
    assert_eq!(a.status, 200, "{label}: {}", a.body);
    let (_, received) = run_agents(&fleet, "pause", &paused, "success").await;
    assert_eq!(received, AGENTS, "{label}: the rest after the resume");

    // A dry run writes nothing.
    let before = fleet.ok("GET", "/api/v1/requests?size=1000", None).await;
    let plan = fleet
        .ok(
            "POST",
            "/api/v1/commands?dry_run=true",
            Some(&json!({"commands": [{
                "source": "Users/Services", "user": "heavy",
                "target": {"type": "group", "id": "cap"},
                "action": {"name": "restart", "args": {}, "version": "v5"}, "timeout": 900
            }]})),
        )
        .await;
    assert_eq!(plan["plans"][0]["targets"], json!(AGENTS));
    let after = fleet.ok("GET", "/api/v1/requests?size=1000", None).await;
    assert_eq!(
        before["requests"].as_array().map(Vec::len),
        after["requests"].as_array().map(Vec::len)
    );
    println!("{label}: cap held (most out at once {most}), budget stopped after {errors} errors");
    for s in services {
        s.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_postgres_keep_caps_budgets_and_pauses() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let url = fresh_database().await;
    rollouts_stop_themselves(
        "postgres, 3 instances",
        &[
            ("CM_STORAGE__BACKEND", "postgres".to_owned()),
            ("CM_STORAGE__POSTGRES__URL", url),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_opensearch_keep_caps_budgets_and_pauses() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let indices = Indices::fresh();
    rollouts_stop_themselves("opensearch, 3 instances", &indices.env()).await;
}
