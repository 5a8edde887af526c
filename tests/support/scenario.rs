//! The whole life of a command against the real binary, shared by the per-backend tests:
//! agents registered, commands for a group, an agent and a server component submitted, agents
//! long-polling and reporting, progress checked, an unpolled order expiring, the Wazuh route,
//! and (for durable backends) everything still there after a restart.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Client, LONG_WAIT_SECS, LONG_WAIT_SECS_TEXT, Service, until_polls_open};
use serde_json::{Value, json};

fn command(target_type: &str, target_id: &str, action: &str, timeout: u64) -> Value {
    json!({
        "source": "Users/Services",
        "user": "e2e",
        "target": {"type": target_type, "id": target_id},
        "action": {"name": action, "args": {"reason": "e2e"}, "version": "v5"},
        "timeout": timeout
    })
}

/// Every order the service holds, by id.
async fn all_orders(c: &Client, svc: &Service) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let url = match &after {
            Some(a) => svc.url(&format!("/api/v1/orders?size=2&after={a}")),
            None => svc.url("/api/v1/orders?size=2"),
        };
        let (status, body) = c.get(&url).await;
        assert_eq!(status, 200, "{body}");
        for o in body["orders"].as_array().expect("orders") {
            out.insert(
                o["command"]["order_id"].as_str().expect("id").to_owned(),
                o.clone(),
            );
        }
        match body["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return out,
        }
    }
}

async fn poll(c: &Client, svc: &Service, agent: &str, wait: u64) -> Vec<Value> {
    let (status, body) = c
        .post(
            &svc.url(&format!("/api/v1/agents/{agent}/poll?wait={wait}&limit=10")),
            json!(null),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["orders"].as_array().expect("orders").clone()
}

async fn report(c: &Client, svc: &Service, order: &Value, status: &str, code: i64) -> Value {
    let id = order["command"]["order_id"].as_str().expect("id");
    let body = json!({"status": status, "code": code, "message": format!("{status} from e2e"), "data": ""});
    let (code, answer) = c
        .post(&svc.url(&format!("/api/v1/orders/{id}/result")), body)
        .await;
    assert_eq!(code, 200, "{answer}");
    answer
}

async fn progress(c: &Client, svc: &Service, request: &str) -> Value {
    let (status, body) = c
        .get(&svc.url(&format!("/api/v1/requests/{request}")))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Runs the scenario on a service configured by `env`; restarts it when `durable`.
pub async fn whole_command_loop(env: &[(&str, &str)], durable: bool) {
    let mut env: Vec<(&str, &str)> = env.to_vec();
    env.push(("CM_SCHEDULER__INTERVAL_SECS", "1"));
    env.push(("CM_LIMITS__MAX_POLL_WAIT_SECS", LONG_WAIT_SECS_TEXT));
    let svc = Service::start(&env);
    let c = Client::default();

    // Three agents, two of them in group Test.
    for (id, groups) in [
        ("a1", json!(["Test"])),
        ("a2", json!(["Test", "Linux"])),
        ("a3", json!(["Other"])),
    ] {
        let (status, body) = c
            .put(
                &svc.url(&format!("/api/v1/agents/{id}")),
                json!({"groups": groups}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, _) = c
        .put(&svc.url("/api/v1/agents/a3"), json!({"groups": ["Other"]}))
        .await;
    assert_eq!(status, 200, "re-registering updates");

    // A group, an agent and a server command in one request.
    let (status, body) = c
        .post(
            &svc.url("/api/v1/commands"),
            json!({"commands": [
                command("group", "Test", "restart", 300),
                command("agent", "a3", "fetch-config", 300),
                command("server", "indexer-connector", "update", 300),
            ]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let requests = body["requests"].as_array().expect("requests").clone();
    let sizes: Vec<usize> = requests
        .iter()
        .map(|r| r["order_ids"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [2, 1, 1]);
    let group_req = requests[0]["request_id"].as_str().unwrap().to_owned();
    let agent_req = requests[1]["request_id"].as_str().unwrap().to_owned();
    let server_req = requests[2]["request_id"].as_str().unwrap().to_owned();

    // Each agent polls its order and reports.
    for (agent, outcome, code) in [
        ("a1", "success", 0),
        ("a2", "failure", 3),
        ("a3", "success", 0),
    ] {
        let orders = poll(&c, &svc, agent, 5).await;
        assert_eq!(orders.len(), 1, "{agent}: {orders:?}");
        assert_eq!(orders[0]["command"]["status"], "sent");
        assert_eq!(orders[0]["agent"]["id"], agent);
        let done = report(&c, &svc, &orders[0], outcome, code).await;
        assert_eq!(done["command"]["status"], outcome);
        assert_eq!(done["command"]["result"]["code"], code);
    }
    let p = progress(&c, &svc, &group_req).await;
    assert_eq!(
        (
            p["total"].as_u64(),
            p["success"].as_u64(),
            p["failure"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    let p = progress(&c, &svc, &agent_req).await;
    assert_eq!(
        (p["total"].as_u64(), p["success"].as_u64()),
        (Some(1), Some(1))
    );
    let p = progress(&c, &svc, &server_req).await;
    assert_eq!(
        (p["total"].as_u64(), p["pending"].as_u64()),
        (Some(1), Some(1))
    );

    // A waiting long-poll returns as soon as an order for its agent is created: it waits an
    // hour, so an answer with the order before then is the wake-up's.
    let waiting = {
        let c = Client::patient();
        let url = svc.url(&format!("/api/v1/agents/a1/poll?wait={LONG_WAIT_SECS}"));
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = c.post(&url, json!(null)).await;
            (answer, started.elapsed())
        })
    };
    until_polls_open(&c, &svc, 1).await;
    let (status, body) = c
        .post(
            &svc.url("/api/v1/commands"),
            json!({"commands": [command("agent", "a1", "restart", 300)]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let ((status, answer), waited) = waiting.await.expect("poller");
    assert_eq!(status, 200);
    assert_eq!(
        answer["orders"][0]["command"]["order_id"],
        body["requests"][0]["order_ids"][0]
    );
    assert!(
        waited < Duration::from_secs(LONG_WAIT_SECS),
        "woken by the submit, not at the end of its wait: {waited:?}"
    );
    report(&c, &svc, &answer["orders"][0], "success", 0).await;

    // An order nobody polls expires after its timeout (the scheduler runs every second).
    let (status, body) = c
        .post(
            &svc.url("/api/v1/commands"),
            json!({"commands": [command("agent", "a2", "restart", 1)]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let doomed = body["requests"][0]["order_ids"][0]
        .as_str()
        .unwrap()
        .to_owned();
    loop {
        let (status, order) = c.get(&svc.url(&format!("/api/v1/orders/{doomed}"))).await;
        assert_eq!(status, 200);
        if order["command"]["status"] == "failure" {
            assert_eq!(order["command"]["result"]["message"], "expired");
            break;
        }
        assert_eq!(order["command"]["status"], "pending", "{order}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The Wazuh-compatible route answers like the plugin.
    let (status, body) = c
        .post(
            &svc.url("/_plugins/_command_manager/commands"),
            json!({"commands": [command("group", "Test", "restart", 100)]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["_index"], "wazuh-commands");
    assert_eq!(body["result"], "OK");
    assert_eq!(body["orders"].as_array().unwrap().len(), 2);

    let before = all_orders(&c, &svc).await;
    assert_eq!(before.len(), 8);
    let (status, body) = c.get(&svc.url("/api/v1/orders?status=success")).await;
    assert_eq!(status, 200);
    assert_eq!(body["orders"].as_array().unwrap().len(), 3);

    if durable {
        let svc = svc.restart();
        let after = all_orders(&c, &svc).await;
        assert_eq!(
            after, before,
            "every order, in every state, survives a restart"
        );
        let p = progress(&c, &svc, &group_req).await;
        assert_eq!(p["total"].as_u64(), Some(2));
        svc.stop();
    } else {
        svc.stop();
    }
}
