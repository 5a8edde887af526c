//! Every order has a consumer, against the real binary on each backend (docs/delivery.md): a
//! server command, with `args` an array as in Wazuh's own examples, is consumed by its component
//! and ends `success`; a relay claims a group command's orders for its agents and reports them
//! all in one call; the requests' progress shows them finished.

#![allow(dead_code, unreachable_pub)]

use serde_json::{Value, json};

use super::{Client, Service};

async fn submit(c: &Client, svc: &Service, command: Value) -> (String, Vec<String>) {
    let (status, body) = c
        .post(
            &svc.url("/api/v1/commands"),
            json!({ "commands": [command] }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let request = &body["requests"][0];
    (
        request["request_id"].as_str().expect("request").to_owned(),
        request["order_ids"]
            .as_array()
            .expect("orders")
            .iter()
            .map(|o| o.as_str().expect("id").to_owned())
            .collect(),
    )
}

async fn finished(c: &Client, svc: &Service, request: &str, total: u64) {
    let (status, p) = c
        .get(&svc.url(&format!("/api/v1/requests/{request}")))
        .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(
        (p["total"].as_u64(), p["success"].as_u64()),
        (Some(total), Some(total)),
        "{p}"
    );
}

/// Runs the scenario on a service configured by `env`.
pub async fn components_and_relays(env: &[(&str, &str)]) {
    let svc = Service::start(env);
    let c = Client::default();
    let args = json!(["/path/to/executable/arg8"]);

    // A server command, accepted before its component registers.
    let (server_request, server_orders) = submit(
        &c,
        &svc,
        json!({
            "source": "Content manager",
            "target": {"type": "server", "id": "vulnerability-detector"},
            "action": {"name": "update", "args": args, "version": "5.0.0"},
            "timeout": 300
        }),
    )
    .await;
    let (status, body) = c
        .put(
            &svc.url("/api/v1/servers/vulnerability-detector"),
            json!(null),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, polled) = c
        .post(
            &svc.url("/api/v1/servers/vulnerability-detector/poll?wait=0"),
            json!(null),
        )
        .await;
    assert_eq!(status, 200, "{polled}");
    let order = &polled["orders"][0];
    assert_eq!(order["command"]["order_id"], json!(server_orders[0]));
    assert_eq!(order["command"]["action"]["args"], args, "args verbatim");
    let (status, done) = c
        .post(
            &svc.url(&format!("/api/v1/orders/{}/result", server_orders[0])),
            json!({"status": "success", "code": 0, "message": "content updated"}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    finished(&c, &svc, &server_request, 1).await;

    // A relay delivers a group command to its two agents and reports both in one call.
    for id in ["edge-1", "edge-2"] {
        let (status, body) = c
            .put(
                &svc.url(&format!("/api/v1/agents/{id}")),
                json!({"groups": ["edge"]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (group_request, mut group_orders) = submit(
        &c,
        &svc,
        json!({
            "source": "Users/Services",
            "target": {"type": "group", "id": "edge"},
            "action": {"name": "restart", "args": [], "version": "5.0.0"},
            "timeout": 300
        }),
    )
    .await;
    group_orders.sort();
    let (status, claimed) = c
        .post(
            &svc.url("/api/v1/relay/claim"),
            json!({"agents": ["edge-1", "edge-2"], "limit": 100, "wait": 0}),
        )
        .await;
    assert_eq!(status, 200, "{claimed}");
    let mut claimed_ids: Vec<String> = claimed["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["command"]["order_id"].as_str().expect("id").to_owned())
        .collect();
    claimed_ids.sort();
    assert_eq!(claimed_ids, group_orders);
    let results: Vec<Value> = group_orders
        .iter()
        .map(|id| json!({"order_id": id, "status": "success", "code": 0}))
        .collect();
    let (status, outcomes) = c
        .post(&svc.url("/api/v1/results"), json!({ "results": results }))
        .await;
    assert_eq!(status, 200, "{outcomes}");
    for o in outcomes["results"].as_array().expect("results") {
        assert_eq!(o["outcome"], "applied", "{outcomes}");
    }
    finished(&c, &svc, &group_request, 2).await;
    svc.stop();
}
