//! The service on OpenSearch: the whole command loop, rollout control of a 1,000-agent fleet,
//! and the Wazuh plugin's own request examples on its compatibility route, checked against the
//! raw index.
//!
//! Needs a node: `cargo xtask test` starts one; `OPENSEARCH_URL` points at one you run (start
//! one with `cargo xtask opensearch`). Each test uses its own index prefix.

mod support;

use serde_json::{Value, json};
use support::consumers::components_and_relays;
use support::rollout::staggered_rollout_cancel_and_retry;
use support::scenario::whole_command_loop;
use support::{Client, Service};

fn node_url() -> String {
    std::env::var("OPENSEARCH_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .expect(
            "these tests need OpenSearch: run `cargo xtask test`, or start a node with \
             `cargo xtask opensearch` and set OPENSEARCH_URL to the URL it prints",
        )
}

/// The three indices of one test, deleted (with their template) when dropped.
struct Indices {
    node: String,
    orders: String,
    agents: String,
    archive: String,
    servers: String,
    requests: String,
}

impl Indices {
    fn fresh() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        let prefix = format!("e2e{}x{nanos}", std::process::id());
        Self {
            node: node_url(),
            orders: format!("{prefix}-wazuh-commands"),
            agents: format!("{prefix}-wazuh-agents"),
            archive: format!("{prefix}-wazuh-commands-archive"),
            servers: format!("{prefix}-wazuh-servers"),
            requests: format!("{prefix}-wazuh-commands-requests"),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CM_STORAGE__BACKEND", "opensearch".to_owned()),
            ("CM_STORAGE__OPENSEARCH__URL", self.node.clone()),
            ("CM_STORAGE__OPENSEARCH__ORDERS_INDEX", self.orders.clone()),
            ("CM_STORAGE__OPENSEARCH__AGENTS_INDEX", self.agents.clone()),
            (
                "CM_STORAGE__OPENSEARCH__ARCHIVE_INDEX",
                self.archive.clone(),
            ),
            (
                "CM_STORAGE__OPENSEARCH__SERVERS_INDEX",
                self.servers.clone(),
            ),
            (
                "CM_STORAGE__OPENSEARCH__REQUESTS_INDEX",
                self.requests.clone(),
            ),
        ]
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.node.trim_end_matches('/'))
    }
}

impl Drop for Indices {
    fn drop(&mut self) {
        let urls = [
            self.url(&format!(
                "/{},{},{},{},{}?ignore_unavailable=true",
                self.orders, self.agents, self.archive, self.servers, self.requests
            )),
            self.url(&format!("/_index_template/{}", self.orders)),
            self.url(&format!("/_index_template/{}", self.requests)),
        ];
        // `Drop` runs inside the test's runtime: delete from a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let c = Client::default();
                for url in urls {
                    c.send("DELETE", &url, None).await;
                }
            });
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_command_loop_on_opensearch_survives_a_restart() {
    let indices = Indices::fresh();
    let env = indices.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    whole_command_loop(&env, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_and_relays_consume_their_orders_on_opensearch() {
    let indices = Indices::fresh();
    let env = indices.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    components_and_relays(&env).await;
}

/// The Wazuh plugin's request examples (its README and API spec), one request each.
fn plugin_examples() -> Vec<(Value, usize)> {
    vec![
        (
            json!({"commands": [{
                "action": {"args": {}, "name": "restart", "version": "5.0.0"},
                "source": "Users/Services",
                "user": "Management API",
                "timeout": 100,
                "target": {"id": "d5b250c4-dfa1-4d94-827f-9f99210dbe6c", "type": "agent"}
            }]}),
            1,
        ),
        (
            json!({"commands": [{
                "action": {"args": {"groups": ["group_a", "group_b"]}, "name": "set-group", "version": "5.0.0"},
                "source": "Users/Services",
                "user": "Management API",
                "timeout": 100,
                "target": {"id": "group_000", "type": "group"}
            }]}),
            2,
        ),
        (
            json!({"commands": [{
                "action": {"args": {"index": "wazuh-states-vulnerabilities", "offset": "1234"}, "name": "update", "version": "5.0.0"},
                "source": "Content manager",
                "timeout": 100,
                "target": {"id": "vulnerability-detector", "type": "server"}
            }]}),
            1,
        ),
        (
            json!({"commands": [{
                "action": {"args": {"index": ["wazuh-states-inventory-system"]}, "name": "refresh", "version": "5.0.0"},
                "source": "Users/Services",
                "user": "Management API",
                "timeout": 100,
                "target": {"id": "wazuh-indexer", "type": "server"}
            }]}),
            1,
        ),
    ]
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugins_own_requests_are_answered_like_the_plugin_and_land_in_the_index() {
    let indices = Indices::fresh();
    let env = indices.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let svc = Service::start(&env);
    let c = Client::default();
    for (id, groups) in [
        ("d5b250c4-dfa1-4d94-827f-9f99210dbe6c", json!(["default"])),
        ("001", json!(["group_000"])),
        ("002", json!(["group_000", "default"])),
    ] {
        let (status, body) = c
            .put(
                &svc.url(&format!("/api/v1/agents/{id}")),
                json!({"groups": groups}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    let mut ids: Vec<(String, Value)> = Vec::new();
    for (request, orders) in plugin_examples() {
        let (status, body) = c
            .post(
                &svc.url("/_plugins/_command_manager/commands"),
                request.clone(),
            )
            .await;
        assert_eq!(status, 200, "{request}: {body}");
        assert_eq!(body["result"], "OK", "{body}");
        assert_eq!(body["_index"], "wazuh-commands", "{body}");
        let answered = body["orders"].as_array().expect("orders");
        assert_eq!(answered.len(), orders, "one _id per order: {body}");
        for o in answered {
            let id = o["_id"].as_str().expect("_id").to_owned();
            ids.push((id, request["commands"][0].clone()));
        }
    }

    let (status, _) = c
        .send(
            "POST",
            &indices.url(&format!("/{}/_refresh", indices.orders)),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, count) = c
        .get(&indices.url(&format!("/{}/_count", indices.orders)))
        .await;
    assert_eq!(status, 200, "{count}");
    assert_eq!(count["count"].as_u64(), Some(ids.len() as u64));
    assert_eq!(ids.len(), 5);

    for (id, command) in &ids {
        let (status, doc) = c
            .get(&indices.url(&format!("/{}/_doc/{id}", indices.orders)))
            .await;
        assert_eq!(status, 200, "{doc}");
        let source = &doc["_source"];
        let server = command["target"]["type"] == "server";
        let top: &[&str] = if server {
            &["@timestamp", "command", "delivery_timestamp"]
        } else {
            &["@timestamp", "agent", "command", "delivery_timestamp"]
        };
        assert_eq!(keys(source), top, "{source}");
        let mut expected_command = vec![
            "action",
            "order_id",
            "request_id",
            "source",
            "status",
            "target",
            "timeout",
        ];
        if command.get("user").is_some() {
            expected_command.push("user");
        }
        expected_command.sort_unstable();
        assert_eq!(keys(&source["command"]), expected_command, "{source}");
        assert_eq!(source["command"]["order_id"], json!(id));
        assert_eq!(source["command"]["status"], "pending");
        assert_eq!(
            source["command"]["action"], command["action"],
            "args verbatim"
        );
        assert_eq!(source["command"]["source"], command["source"]);
        assert_eq!(source["command"]["timeout"], 100);
        if server {
            assert_eq!(source["command"]["target"], command["target"]);
        } else {
            assert_eq!(keys(&source["agent"]), ["groups", "id"]);
            assert_eq!(source["command"]["target"]["type"], "agent");
            assert_eq!(source["command"]["target"]["id"], source["agent"]["id"]);
        }
    }
    let (_, metrics) = c.get(&svc.url("/metrics")).await;
    let metrics = metrics.as_str().unwrap_or_default();
    assert!(
        metrics
            .lines()
            // A one-agent submit is written whole (its record with its order).
            .any(|l| l.starts_with("cm_store_operation_seconds")
                && l.contains("op=\"request_write_whole\"")
                && l.contains("backend=\"opensearch\"")),
        "storage operations are timed per backend: {metrics}"
    );
    svc.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staggered_rollout_to_1000_agents_on_opensearch_can_be_cancelled_and_its_failures_retried()
 {
    // The default poll interval (1 s): 1,000 waiting polls cost one search per interval for
    // other instances' orders (the backend's watch), not one each.
    let indices = Indices::fresh();
    let env = indices.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let timings = staggered_rollout_cancel_and_retry(&env).await;
    println!("rollout on opensearch: {timings:?}");
}

/// Registering an agent does not refresh the agents index; a group submit (and a listing)
/// refreshes it before it reads the members. So agents registered through one instance are
/// found by a group submit through another right after, even when that instance refreshed the
/// index a moment before the registrations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_submit_through_another_instance_finds_agents_registered_just_before() {
    let indices = Indices::fresh();
    let env = indices.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (a, b) = (Service::start(&env), Service::start(&env));
    let c = Client::default();
    for round in 0..3 {
        let group = format!("Remote{round}");
        let members = b.url(&format!("/api/v1/agents?group={group}&size=100"));
        let (status, body) = c.get(&members).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["agents"], json!([]), "nobody yet");
        for i in 0..50 {
            let (status, body) = c
                .put(
                    &a.url(&format!("/api/v1/agents/r{round}-{i:02}")),
                    json!({"groups": [group]}),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
        let (status, body) = c
            .post(
                &b.url("/api/v1/commands"),
                json!({"commands": [{
                    "source": "Users/Services",
                    "user": "e2e",
                    "target": {"type": "group", "id": group},
                    "action": {"name": "restart", "args": {}, "version": "v5"},
                    "timeout": 300
                }]}),
            )
            .await;
        assert_eq!(status, 201, "round {round}: {body}");
        assert_eq!(
            body["requests"][0]["order_ids"].as_array().map(Vec::len),
            Some(50),
            "round {round}: every member registered through the other instance: {body}"
        );
        let (status, body) = c.get(&members).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["agents"].as_array().map(Vec::len), Some(50), "{body}");
    }
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_an_earlier_mapping_cannot_index_get_a_400_naming_the_field_and_nothing_is_written()
 {
    let indices = Indices::fresh();
    let env = indices.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c = Client::default();
    // An orders index made by an earlier template (the Wazuh plugin's): `args` an indexed
    // `object`. Indices this service makes store `args` without indexing it, and take any shape.
    let (status, body) = c
        .put(
            &indices.url(&format!("/{}", indices.orders)),
            json!({"mappings": {"dynamic": true, "properties": {"command": {"properties": {
                "action": {"properties": {"args": {"type": "object"}}}
            }}}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let svc = Service::start(&env);
    for id in ["a1", "a2"] {
        let (status, body) = c
            .put(
                &svc.url(&format!("/api/v1/agents/{id}")),
                json!({"groups": ["G"]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let command = |target: Value, args: Value| {
        json!({
            "source": "Users/Services", "target": target,
            "action": {"name": "refresh", "args": args, "version": "v5"}, "timeout": 100
        })
    };
    // The second command's arguments are an array of strings: docs/orders.md allows one, the
    // earlier indexed `object` mapping cannot index one of plain values.
    let (status, body) = c
        .post(
            &svc.url("/api/v1/commands"),
            json!({"commands": [
                command(json!({"type": "group", "id": "G"}), json!({"index": ["a", "b"]})),
                command(json!({"type": "agent", "id": "a1"}), json!(["wazuh-states-inventory"])),
            ]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "commands[1].action.args", "{body}");
    let (status, body) = c.get(&svc.url("/api/v1/orders")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["orders"],
        json!([]),
        "the whole request was refused: nothing written"
    );
    svc.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_down_is_left_out_and_the_pool_shows_in_the_metrics() {
    let indices = Indices::fresh();
    let down = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("address"))
    };
    let mut env = indices.env();
    env.push((
        "CM_STORAGE__OPENSEARCH__URLS",
        format!("{down},{}", indices.node.trim_end_matches('/')),
    ));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Starts, and serves, with one of its two nodes down.
    let svc = Service::start(&env);
    let c = Client::default();
    let (status, body) = c
        .put(
            &svc.url("/api/v1/agents/pool-1"),
            json!({"groups": ["Pool"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let (status, text) = c.get(&svc.url("/metrics")).await;
    assert_eq!(status, 200, "{text}");
    let text = text.as_str().expect("a text page");
    for name in [
        "cm_opensearch_requests_total",
        "cm_opensearch_nodes_alive",
        "cm_opensearch_retries_total",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}: {text}");
    }
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    };
    assert!((value("cm_opensearch_nodes_alive ") - 1.0).abs() < f64::EPSILON);
    let up = indices
        .node
        .trim_end_matches('/')
        .trim_start_matches("http://")
        .to_owned();
    assert!(value(&format!("cm_opensearch_requests_total{{node=\"{up}\"}} ")) >= 1.0);
    assert!(value("cm_opensearch_retries_total ") >= 1.0);
    svc.stop();
}
