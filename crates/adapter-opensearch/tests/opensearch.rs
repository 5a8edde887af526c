//! What only the OpenSearch backend promises beyond the conformance suite: the Wazuh document
//! layout and index template read back raw from the node, Wazuh's agent documents left intact,
//! the plugin's limits gone (10,000-agent fan-out, 10,000-order expiry in one run), several
//! instances on one cluster, and indices the Wazuh plugin created still usable.
//!
//! Needs a node: `cargo xtask test` starts one; `OPENSEARCH_URL` points at one you run.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use cm_adapter_opensearch::{OpenSearchBackend, OpenSearchNotifier};
use cm_domain::{
    Action, Command, Consumer, DeliveryPolicy, RequestId, RequestRecord, Source, Target,
    TargetType, Timeout,
};
use cm_ports::testkit::{
    Backend, LONG_WAIT, OrderSpec, agent, agent_id, at, long_wait_settings, until_poll_waits,
};
use cm_ports::{
    AgentRegistry, Consumers, Notifier, OrderStore, Settings, StoreError, SubmitRequest,
    Subscription,
};
use common::{Cleanup, Raw, fresh_settings, open_fresh};
use opensearch::http::Method;
use serde_json::{Value, json};

fn policy() -> DeliveryPolicy {
    DeliveryPolicy {
        redeliver_after: Some(chrono::Duration::seconds(60)),
        result_timeout: Some(chrono::Duration::seconds(600)),
    }
}

/// The ports of one instance (the test keeps its indices' [`Cleanup`] itself).
fn ports(b: &OpenSearchBackend) -> Backend {
    Backend {
        orders: Arc::new(b.clone()),
        agents: Arc::new(b.clone()),
        components: Arc::new(b.clone()),
        requests: Arc::new(b.clone()),
        notifier: Arc::new(b.notifier()) as Arc<dyn Notifier>,
        guard: None,
    }
}

/// The ports of one instance whose polls never re-check storage by themselves: an order of
/// another instance reaches them only through the watch's wake-up.
fn watched_ports(b: &OpenSearchBackend) -> Backend {
    let notifier = b.notifier();
    assert!(notifier.is_watching(), "the watch runs");
    Backend {
        notifier: Arc::new(NoRecheck(notifier)),
        ..ports(b)
    }
}

/// A notifier whose polls wake only when it wakes them.
struct NoRecheck(OpenSearchNotifier);

#[async_trait::async_trait]
impl Notifier for NoRecheck {
    async fn notify(&self, consumers: &[Consumer]) -> Result<(), StoreError> {
        self.0.notify(consumers).await
    }

    fn subscribe(&self, consumers: &Consumers) -> Subscription {
        self.0.subscribe(consumers)
    }

    fn recheck_interval(&self) -> Option<Duration> {
        None
    }

    fn polls_waiting(&self, consumer: &Consumer) -> usize {
        self.0.polls_waiting(consumer)
    }
}

fn restart(kind: TargetType, id: &str) -> Command {
    Command::new(
        Source::UsersServices,
        Some("admin".into()),
        Target::new(kind, id).expect("target"),
        Action::new("restart", json!({}), "v5").expect("action"),
        Timeout::new(300).expect("timeout"),
    )
    .expect("command")
}

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

async fn raw_source(raw: &Raw, index: &str, id: &str) -> Value {
    raw.get(&format!("/{index}/_doc/{id}")).await["_source"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_read_back_raw_have_exactly_the_wazuh_layout() {
    let (b, s, _cleanup) = open_fresh().await;
    let raw = Raw::new();
    let order = OrderSpec::agent("a1")
        .action("set-group", json!({"groups": ["group_a", "group_b"]}))
        .build();
    let server = OrderSpec::server("indexer-connector")
        .action(
            "update",
            json!({"index": "wazuh-states-vulnerabilities", "offset": "1234"}),
        )
        .build();
    b.insert(&[order.clone(), server.clone()])
        .await
        .expect("insert");

    let doc = raw_source(&raw, &s.orders_index, &order.order_id().to_string()).await;
    assert_eq!(doc, serde_json::to_value(&order).expect("json"));
    assert_eq!(
        keys(&doc),
        ["@timestamp", "agent", "command", "delivery_timestamp"]
    );
    assert_eq!(keys(&doc["agent"]), ["groups", "id"]);
    assert_eq!(
        keys(&doc["command"]),
        [
            "action",
            "order_id",
            "request_id",
            "source",
            "status",
            "target",
            "timeout",
            "user"
        ]
    );
    assert_eq!(keys(&doc["command"]["action"]), ["args", "name", "version"]);
    assert_eq!(keys(&doc["command"]["target"]), ["id", "type"]);
    assert_eq!(doc["command"]["status"], "pending");
    assert_eq!(
        doc["command"]["action"]["args"],
        json!({"groups": ["group_a", "group_b"]})
    );
    assert!(
        doc["@timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 24),
        "millisecond UTC timestamps: {doc}"
    );

    let server_doc = raw_source(&raw, &s.orders_index, &server.order_id().to_string()).await;
    assert_eq!(
        keys(&server_doc),
        ["@timestamp", "command", "delivery_timestamp"]
    );
    assert_eq!(
        server_doc["command"]["target"],
        json!({"type": "server", "id": "indexer-connector"})
    );

    // Delivered and reported: `result` appears, the additions stay beside Wazuh's fields.
    let sent = b
        .claim(&Consumers::agent(&agent_id("a1")), 10, at(1), &policy())
        .await
        .expect("claim");
    let report =
        cm_domain::Report::new(cm_domain::ReportStatus::Success, 0, "ok", "done").expect("report");
    let cm_domain::ReportOutcome::Applied(done) = sent[0].report(&report, at(2)).expect("report")
    else {
        panic!("report not applied");
    };
    b.replace(&sent[0], &done).await.expect("replace");
    let doc = raw_source(&raw, &s.orders_index, &order.order_id().to_string()).await;
    assert_eq!(doc["command"]["status"], "success");
    assert_eq!(
        doc["command"]["result"],
        json!({"code": 0, "message": "ok", "data": "done"})
    );
    assert_eq!(
        keys(&doc["command"]),
        [
            "action",
            "deliveries",
            "finished_at",
            "order_id",
            "request_id",
            "result",
            "sent_at",
            "source",
            "status",
            "target",
            "timeout",
            "user"
        ]
    );
}

/// Every field of docs/operations.md's layout, as the node maps it in orders and archive indices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_maps_every_field_as_the_wazuh_template_does() {
    let (_b, s, _cleanup) = open_fresh().await;
    let raw = Raw::new();
    let template = raw
        .get(&format!("/_index_template/{}", s.orders_index))
        .await;
    let template = &template["index_templates"][0]["index_template"];
    assert_eq!(
        template["index_patterns"],
        json!([format!("{}*", s.orders_index)])
    );

    for index in [&s.orders_index, &s.archive_index] {
        let mapping = raw.get(&format!("/{index}/_mapping")).await;
        let m = &mapping[index.as_str()]["mappings"];
        assert_eq!(m["date_detection"], false, "{index}");
        assert_ne!(m["dynamic"], "strict", "{index}: dynamic mapping on");
        assert_ne!(m["dynamic"], false, "{index}: dynamic mapping on");
        let field = |path: &str| {
            let mut node = m;
            for part in path.split('.') {
                node = &node["properties"][part];
            }
            node.clone()
        };
        for date in ["@timestamp", "delivery_timestamp"] {
            assert_eq!(field(date), json!({"type": "date"}), "{index} {date}");
        }
        for kw in [
            "agent.groups",
            "command.source",
            "command.user",
            "command.status",
            "command.request_id",
            "command.order_id",
            "command.target.id",
            "command.target.type",
            "command.action.name",
            "command.action.version",
            "command.result.message",
            "command.result.data",
        ] {
            assert_eq!(
                field(kw),
                json!({"type": "keyword", "ignore_above": 1024}),
                "{index} {kw}"
            );
        }
        // `object` is the default type of a field with properties: the node omits `type`.
        let args = field("command.action.args");
        assert!(
            args["type"] == "object" || (args["type"].is_null() && args.is_object()),
            "{index} command.action.args: {args}"
        );
        assert_eq!(args["enabled"], false, "{index}: stored, not indexed");
        for short in ["command.timeout", "command.result.code"] {
            assert_eq!(field(short), json!({"type": "short"}), "{index} {short}");
        }
        // Our additions, typed so that range queries on them work.
        for date in [
            "command.not_before",
            "command.sent_at",
            "command.redeliver_at",
            "command.result_deadline",
            "command.finished_at",
        ] {
            assert_eq!(field(date), json!({"type": "date"}), "{index} {date}");
        }
        assert_eq!(field("command.deliveries"), json!({"type": "integer"}));
        assert_eq!(
            field("command.retry_of"),
            json!({"type": "keyword", "ignore_above": 1024})
        );
        assert_eq!(
            field("agent.id"),
            json!({"type": "keyword", "ignore_above": 1024})
        );

        let settings = raw.get(&format!("/{index}/_settings")).await;
        let i = &settings[index.as_str()]["settings"]["index"];
        assert_eq!(i["number_of_shards"], "1", "{index}");
        assert_eq!(i["number_of_replicas"], "0", "{index}");
        assert_eq!(i["refresh_interval"], "5s", "{index}");
        assert_eq!(
            i["query"]["default_field"],
            json!([
                "command.source",
                "command.target.type",
                "command.status",
                "command.action.name"
            ]),
            "{index}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_keeps_every_other_field_of_a_wazuh_agent_document() {
    let (b, s, _cleanup) = open_fresh().await;
    let raw = Raw::new();
    let wazuh = json!({"agent": {
        "id": "001", "name": "web-1", "groups": ["default"], "type": "endpoint",
        "version": "v5.0.0", "status": "active", "last_login": "2026-01-01T00:00:00Z",
        "key": "wazuh-enrollment-key", "host": {"ip": "10.0.0.1", "os": {"name": "Debian"}}
    }});
    let (status, body) = raw
        .send(
            Method::Put,
            &format!("/{}/_doc/001?refresh=true", s.agents_index),
            Some(&wazuh),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    assert_eq!(
        AgentRegistry::get(&b, &agent_id("001")).await.expect("get"),
        Some(agent("001", &["default"]))
    );
    assert_eq!(
        b.upsert(&agent("001", &["default", "linux"]))
            .await
            .expect("upsert"),
        cm_ports::Upserted::Updated
    );
    let hash = cm_domain::KeyHash::parse(&"e".repeat(64), "k").expect("hash");
    assert!(b.set_key_hash(&agent_id("001"), &hash).await.expect("key"));
    b.upsert_many(&[agent("001", &["linux"])])
        .await
        .expect("upsert");

    let doc = raw_source(&raw, &s.agents_index, "001").await;
    let mut expected = wazuh.clone();
    expected["agent"]["groups"] = json!(["linux"]);
    expected["command_manager"] = json!({"key_hash": "e".repeat(64)});
    assert_eq!(doc, expected, "only agent.groups and our key hash changed");
    assert_eq!(b.key_hash(&agent_id("001")).await.expect("key"), Some(hash));
    assert_eq!(
        b.count(Some(cm_ports::testkit::group("linux")))
            .await
            .expect("count"),
        1
    );
}

/// Registering agents one at a time (what `PUT /api/v1/agents/{id}` does) refreshes nothing:
/// 1,000 sequential upserts, and a group submit right after still finds every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_agents_registered_one_by_one_are_all_found_by_the_next_group_submit() {
    let (b, _s, _cleanup) = open_fresh().await;
    let started = Instant::now();
    for i in 0..1_000 {
        b.upsert(&agent(&format!("one-{i:04}"), &["OneByOne"]))
            .await
            .expect("upsert");
    }
    let took = started.elapsed();
    println!(
        "registration: 1,000 sequential upserts in {took:.2?} ({:.2?} each)",
        took / 1_000
    );
    let submitted = ports(&b)
        .service(Settings::default())
        .submit(SubmitRequest {
            commands: vec![restart(TargetType::Group, "OneByOne")],
            idempotency: None,
        })
        .await
        .expect("submit");
    assert_eq!(submitted[0].order_ids.len(), 1_000);
}

/// Agents registered (or moved, or deleted) through one instance are seen at once by a group
/// submit and a listing through another, even one that refreshed the agents index a moment
/// before the registrations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_submit_through_another_instance_finds_agents_registered_just_before() {
    let (a, settings, _cleanup) = open_fresh().await;
    let b = OpenSearchBackend::open(&settings)
        .await
        .expect("second instance");
    let on_b = ports(&b).service(Settings::default());
    let submit = async |group: &str| {
        on_b.submit(SubmitRequest {
            commands: vec![restart(TargetType::Group, group)],
            idempotency: None,
        })
        .await
        .map(|s| s[0].order_ids.len())
    };
    for round in 0..3 {
        let group = format!("Remote{round}");
        // Instance B has just looked at the group (and so refreshed the agents index).
        assert_eq!(
            b.count(Some(cm_ports::testkit::group(&group)))
                .await
                .expect("count"),
            0
        );
        for i in 0..40 {
            a.upsert(&agent(&format!("r{round}-{i:02}"), &[&group]))
                .await
                .expect("upsert");
        }
        let bulk: Vec<_> = (40..60)
            .map(|i| agent(&format!("r{round}-{i:02}"), &[&group]))
            .collect();
        a.upsert_many(&bulk).await.expect("upsert_many");
        assert_eq!(submit(&group).await.expect("submit"), 60, "round {round}");
        let page = b
            .list(&cm_ports::AgentPageRequest {
                group: Some(cm_ports::testkit::group(&group)),
                size: 100,
                after: None,
            })
            .await
            .expect("list");
        assert_eq!(page.items.len(), 60, "round {round}");
        // Moved out of the group, and deleted, through A: B no longer counts them.
        a.upsert(&agent(&format!("r{round}-00"), &["Elsewhere"]))
            .await
            .expect("move");
        assert!(
            a.delete(&agent_id(&format!("r{round}-01")))
                .await
                .expect("delete")
        );
        assert_eq!(submit(&group).await.expect("submit"), 58, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10000_agent_group_expands_into_10000_orders_in_one_submit() {
    let (b, _s, _cleanup) = open_fresh().await;
    let fleet: Vec<_> = (0..10_000)
        .map(|i| agent(&format!("fleet-{i:05}"), &["Fleet"]))
        .collect();
    for chunk in fleet.chunks(5_000) {
        b.upsert_many(chunk).await.expect("upsert");
    }
    let service = ports(&b).service(Settings::default());
    let started = Instant::now();
    let submitted = service
        .submit(SubmitRequest {
            commands: vec![restart(TargetType::Group, "Fleet")],
            idempotency: None,
        })
        .await
        .expect("submit");
    let took = started.elapsed();
    println!("fan-out: one submit expanded a 10,000-agent group into 10,000 orders in {took:.2?}");
    assert_eq!(submitted[0].order_ids.len(), 10_000);
    let counts = b
        .progress(&submitted[0].request_id)
        .await
        .expect("progress");
    assert_eq!(counts.pending, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_expiry_run_expires_10000_overdue_orders() {
    let (b, _s, _cleanup) = open_fresh().await;
    let long_ago = Utc::now() - chrono::Duration::hours(2);
    let spec = OrderSpec::agent("a1").created(long_ago).timeout(10);
    for _ in 0..5 {
        b.insert(&spec.many(2_000)).await.expect("insert");
    }
    let service = ports(&b).service(Settings::default());
    let started = Instant::now();
    let expired = service.expire_overdue().await.expect("expire");
    let took = started.elapsed();
    println!("expiry: one expire_overdue() run expired {expired} overdue orders in {took:.2?}");
    assert_eq!(expired, 10_000);
    let counts = b.progress(&spec.request).await.expect("progress");
    assert_eq!((counts.failure, counts.pending), (10_000, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_delivers_an_order_through_the_watch() {
    let (first, settings, _cleanup) = open_fresh().await;
    let second = OpenSearchBackend::open(&settings)
        .await
        .expect("second instance");
    first.upsert(&agent("a1", &["Test"])).await.expect("upsert");
    let submitter = ports(&first).service(Settings::default());
    let polling = watched_ports(&second);
    let poller = polling.service(long_wait_settings());
    // The second instance's poll waits an hour with no notification from the first and no
    // re-check of its own: only the watch can bring it the order before then.
    let poll_started = Instant::now();
    let waiting = tokio::spawn(async move {
        poller
            .poll(&agent_id("a1"), 10, LONG_WAIT)
            .await
            .expect("poll")
    });
    until_poll_waits(polling.notifier.as_ref(), &agent_id("a1"), &waiting).await;
    let started = Instant::now();
    let submitted = submitter
        .submit(SubmitRequest {
            commands: vec![restart(TargetType::Agent, "a1")],
            idempotency: None,
        })
        .await
        .expect("submit");
    let got = waiting.await.expect("poller");
    let took = started.elapsed();
    println!(
        "cross-instance: an order submitted through one instance reached a poll on another in {took:.2?}"
    );
    assert_eq!(
        got.iter().map(|o| *o.order_id()).collect::<Vec<_>>(),
        submitted[0].order_ids
    );
    assert!(
        poll_started.elapsed() < LONG_WAIT,
        "woken by the watch, not at the end of its wait"
    );
    // And the first instance sees the delivery at once.
    let stored = OrderStore::get(&first, &submitted[0].order_ids[0])
        .await
        .expect("get")
        .expect("order");
    assert_eq!(stored.status(), cm_domain::Status::Sent);
}

/// Searches the node ran on `index` so far (its primaries' query phases; one per search on
/// the template's single shard).
async fn searches(raw: &Raw, index: &str) -> u64 {
    let stats = raw.get(&format!("/{index}/_stats/search")).await;
    stats["_all"]["primaries"]["search"]["query_total"]
        .as_u64()
        .unwrap_or_else(|| panic!("no query_total in {stats}"))
}

/// One waiting agent's long-polls, again and again until the test ends, the way an agent
/// polls: every order it receives is sent on `got` with its arrival time.
fn keep_polling(
    polls: &mut tokio::task::JoinSet<()>,
    service: &cm_ports::CommandManager,
    agent: String,
    got: tokio::sync::mpsc::UnboundedSender<(String, Vec<cm_domain::OrderId>, Instant)>,
) {
    let service = service.clone();
    polls.spawn(async move {
        loop {
            let orders = service
                .poll(&agent_id(&agent), 10, LONG_WAIT)
                .await
                .expect("poll");
            if !orders.is_empty() {
                let ids = orders.iter().map(|o| *o.order_id()).collect();
                let _ = got.send((agent.clone(), ids, Instant::now()));
            }
        }
    });
}

/// Cross-instance delivery costs each instance one search per poll interval, whatever the
/// number of waiting polls: 1,000 polls waiting on one instance, with no orders, cause a few
/// searches per interval (every poll re-claiming each interval would be ~2,000), and orders
/// submitted through another instance still reach their polls, through the watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiting_polls_cost_a_few_searches_per_interval_and_still_get_remote_orders() {
    const POLLS: usize = 1000;
    const WINDOW: Duration = Duration::from_secs(5);
    let (first, settings, _cleanup) = open_fresh().await;
    let second = OpenSearchBackend::open(&settings)
        .await
        .expect("second instance");
    let raw = Raw::new();
    let name = |i: usize| format!("w{i:04}");
    let fleet: Vec<_> = (0..POLLS).map(|i| agent(&name(i), &["Waiting"])).collect();
    first.upsert_many(&fleet).await.expect("upsert");
    let submitter = ports(&first).service(Settings::default());
    // Polls that wait an hour and never re-check by themselves: whatever reaches them before
    // the test ends came through the watch.
    let poller = watched_ports(&second).service(long_wait_settings());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut polls = tokio::task::JoinSet::new();
    for i in 0..POLLS {
        keep_polling(&mut polls, &poller, name(i), tx.clone());
    }

    // The polls' first claims are a burst; wait until it is over (at most 30 s: polls that
    // re-check by themselves never settle, and the window below shows it).
    let settle = Instant::now();
    let mut before = searches(&raw, &settings.orders_index).await;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = searches(&raw, &settings.orders_index).await;
        let burst = now - before;
        before = now;
        if burst <= 5 || settle.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    let started = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let searched = searches(&raw, &settings.orders_index).await - before;
    let took = started.elapsed();
    let intervals = took.as_secs_f64() / settings.poll_interval().as_secs_f64();
    println!(
        "cross-instance watch: {POLLS} waiting polls cost {searched} searches in {took:.2?} \
         ({:.1} per poll interval; settled after {:.2?})",
        searched as f64 / intervals,
        started - settle
    );
    assert!(
        (searched as f64) <= 3.0 * intervals + 10.0,
        "{searched} searches in {intervals:.1} intervals with {POLLS} waiting polls"
    );

    // Orders from the other instance, submitted at different moments of the watch's tick.
    let mut lags = Vec::new();
    for k in 0..5 {
        tokio::time::sleep(Duration::from_millis(300 + 170 * k as u64)).await;
        let target = name(k * 97);
        let sent = Instant::now();
        let submitted = submitter
            .submit(SubmitRequest {
                commands: vec![restart(TargetType::Agent, &target)],
                idempotency: None,
            })
            .await
            .expect("submit");
        let (who, ids, arrived) = rx.recv().await.expect("a delivery");
        assert_eq!((who, ids), (target, submitted[0].order_ids.clone()));
        lags.push(arrived - sent);
    }
    println!("cross-instance watch: deliveries to polls of another instance took {lags:.2?}");
    polls.shutdown().await;
}

/// The watch reads the agents of every waiting poll in one search per interval, even 12,000 of
/// them (more than one `terms` clause holds), and finds what a time window could miss: an
/// order whose `@timestamp` is long past when it becomes visible (a slow bulk on another
/// instance), and a scheduled order of another instance once it is due, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_finds_late_and_scheduled_orders_of_another_instance_for_12000_waiting_agents() {
    const WAITING: usize = 12_000;
    let (first, settings, _cleanup) = open_fresh().await;
    let second = OpenSearchBackend::open(&settings)
        .await
        .expect("second instance");
    let raw = Raw::new();
    let notifier = second.notifier();
    assert!(notifier.is_watching());
    let name = |i: usize| format!("idle-{i:05}");
    let mut subs: Vec<_> = (0..WAITING)
        .map(|i| notifier.subscribe(&Consumers::agent(&agent_id(&name(i)))))
        .collect();
    let interval = settings.poll_interval();
    tokio::time::sleep(interval * 2).await;
    let before = searches(&raw, &settings.orders_index).await;

    // Written now, but stamped ten minutes ago, as a bulk that took that long would be.
    let now = Utc::now();
    let late = OrderSpec::agent(&name(WAITING - 1))
        .created(now - chrono::Duration::minutes(10))
        .timeout(3600)
        .build();
    let due_at = now + chrono::Duration::milliseconds(2500);
    let scheduled = OrderSpec::agent(&name(WAITING - 2))
        .created(now)
        .timeout(3600)
        .not_before(due_at)
        .build();
    let started = Instant::now();
    first
        .insert(&[late, scheduled])
        .await
        .expect("insert through the first instance");
    // Only the watch wakes these subscriptions (nobody notifies them): a missed order leaves
    // the test waiting.
    subs[WAITING - 1].notified().await;
    let late_took = started.elapsed();
    subs[WAITING - 2].notified().await;
    let woken = Utc::now();
    let scheduled_took = started.elapsed();
    let searched = searches(&raw, &settings.orders_index).await - before;
    println!(
        "cross-instance watch, {WAITING} waiting agents: late order found in {late_took:.2?}, \
         scheduled order (due after 2.5 s) in {scheduled_took:.2?}; {searched} searches"
    );
    assert!(woken >= due_at, "not before it is due");
    let intervals = scheduled_took.as_secs_f64() / interval.as_secs_f64();
    assert!(
        (searched as f64) <= intervals + 3.0,
        "{searched} searches in {intervals:.1} intervals"
    );
    // Each order wakes its agent once; nobody else is woken.
    tokio::time::sleep(interval * 2).await;
    for (i, sub) in subs.iter_mut().enumerate() {
        assert!(
            tokio::time::timeout(Duration::ZERO, sub.notified())
                .await
                .is_err(),
            "{} woken",
            name(i)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_is_shared_by_notifiers_and_stops_on_close() {
    let (b, settings, _cleanup) = open_fresh().await;
    let one = b.notifier();
    let two = b.notifier();
    assert!(one.is_watching() && two.is_watching());
    assert_eq!(
        one.recheck_interval(),
        Some(Duration::from_secs(30)),
        "a safety net while the watch runs"
    );
    b.close().await;
    assert!(!one.is_watching() && !two.is_watching());
    assert_eq!(
        one.recheck_interval(),
        Some(settings.poll_interval()),
        "polls re-check by themselves without the watch"
    );
    assert!(b.notifier().is_watching(), "a new notifier starts it again");
}

/// Arguments of any shape fit the orders this template makes (`args` is stored, not indexed):
/// arrays of scalars, of objects, and values whose types differ from order to order, all read
/// back verbatim, as on every other backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn args_of_any_shape_are_stored_and_read_back_verbatim() {
    let (b, _s, _cleanup) = open_fresh().await;
    let shapes = [
        json!(["/path/to/executable/arg8"]),
        json!([{"index": "wazuh-states-inventory-system"}]),
        json!({"offset": 1234}),
        json!({"offset": "not a number"}),
        json!([1, "two", {"three": [3]}, null]),
    ];
    for args in shapes {
        let order = OrderSpec::agent("a1").action("run", args.clone()).build();
        assert_eq!(
            b.insert(std::slice::from_ref(&order))
                .await
                .expect("insert"),
            1,
            "{args}"
        );
        let stored = OrderStore::get(&b, order.order_id())
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(stored.action().args(), &args);
    }
}

/// An orders index made by an earlier template (the Wazuh plugin's, `args` an indexed
/// `object`) cannot take an array of scalars: refused at once, naming the field, never retried
/// (the README says how to reindex).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn args_an_earlier_mapping_cannot_index_are_refused_not_retried() {
    let settings = fresh_settings();
    let _cleanup = Cleanup::new(&settings);
    let raw = Raw::new();
    let earlier = json!({
        "mappings": {"dynamic": true, "properties": {
            "command": {"properties": {"action": {"properties": {"args": {"type": "object"}}}}}
        }}
    });
    let (status, body) = raw
        .send(
            Method::Put,
            &format!("/{}", settings.orders_index),
            Some(&earlier),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let b = OpenSearchBackend::open(&settings).await.expect("open");
    let scalars = OrderSpec::agent("a1")
        .action("refresh", json!(["wazuh-states-inventory-system"]))
        .build();
    match b.insert(std::slice::from_ref(&scalars)).await {
        Err(StoreError::Rejected {
            request_id, field, ..
        }) => {
            assert_eq!(field, "action.args");
            assert_eq!(&request_id, scalars.request_id());
        }
        other => panic!("refused expected, got {other:?}"),
    }
    assert_eq!(
        OrderStore::get(&b, scalars.order_id()).await.expect("get"),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_template_and_indices_once() {
    let settings = fresh_settings();
    let _cleanup = Cleanup::new(&settings);
    assert_eq!(
        OpenSearchBackend::migrate(&settings)
            .await
            .expect("migrate"),
        7,
        "two templates (orders, requests) and five indices"
    );
    assert_eq!(
        OpenSearchBackend::migrate(&settings).await.expect("again"),
        0
    );
    let b = OpenSearchBackend::open(&settings).await.expect("open");
    b.ping().await.expect("ping");
}

/// An orders index the Wazuh plugin created (its template leaves `agent.id` to dynamic
/// mapping, which makes it `text`) keeps working: claims filter on `agent.id.keyword`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_index_made_by_the_wazuh_plugin_stays_usable() {
    let settings = fresh_settings();
    let _cleanup = Cleanup::new(&settings);
    let raw = Raw::new();
    let kw = json!({"type": "keyword", "ignore_above": 1024});
    let plugin_mapping = json!({
        "settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "5s"}},
        "mappings": {"date_detection": false, "dynamic": true, "properties": {
            "@timestamp": {"type": "date"},
            "delivery_timestamp": {"type": "date"},
            "agent": {"properties": {"groups": kw}},
            "command": {"properties": {
                "source": kw, "user": kw, "status": kw, "request_id": kw, "order_id": kw,
                "target": {"properties": {"id": kw, "type": kw}},
                "action": {"properties": {"name": kw, "version": kw, "args": {"type": "object"}}},
                "timeout": {"type": "short"},
                "result": {"properties": {"code": {"type": "short"}, "message": kw, "data": kw}}
            }}
        }}
    });
    let (status, body) = raw
        .send(
            Method::Put,
            &format!("/{}", settings.orders_index),
            Some(&plugin_mapping),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // One document as the plugin writes it: `agent.id` becomes text + keyword.
    let old = OrderSpec::agent("d5b250c4-dfa1-4d94-827f-9f99210dbe6c").build();
    let (status, body) = raw
        .send(
            Method::Put,
            &format!(
                "/{}/_doc/{}?refresh=true",
                settings.orders_index,
                old.order_id()
            ),
            Some(&serde_json::to_value(&old).expect("json")),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let b = OpenSearchBackend::open(&settings)
        .await
        .expect("open on the plugin's index");
    let got = b
        .claim(
            &Consumers::agent(&agent_id("d5b250c4-dfa1-4d94-827f-9f99210dbe6c")),
            10,
            at(1),
            &policy(),
        )
        .await
        .expect("claim");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].order_id(), old.order_id());
    let mapping = raw
        .get(&format!("/{}/_mapping", settings.orders_index))
        .await;
    let command = &mapping[settings.orders_index.as_str()]["mappings"]["properties"]["command"];
    assert_eq!(
        command["properties"]["redeliver_at"],
        json!({"type": "date"}),
        "our fields were added to the plugin's mapping"
    );
    assert_eq!(command["properties"]["held"], json!({"type": "boolean"}));
    assert_eq!(command["properties"]["position"], json!({"type": "long"}));
}

/// A record of a one-agent command created at `created`, committed and then paused.
fn paused_record(created: chrono::DateTime<Utc>) -> RequestRecord {
    let c = Command::new(
        Source::UsersServices,
        Some("alice".to_owned()),
        Target::new(TargetType::Group, "Test").expect("target"),
        Action::new("restart", json!({}), "v5").expect("action"),
        Timeout::new(300).expect("timeout"),
    )
    .expect("command");
    let writing = RequestRecord::new(
        RequestId::from_uuid(uuid::Uuid::now_v7()),
        &c,
        None,
        40,
        created,
    );
    let running = writing
        .commit(40, created)
        .expect("commit")
        .expect("changed");
    running.pause(created).expect("pause").expect("changed")
}

/// The records get an index of their own under the configured name, with their own template:
/// the orders template (`<orders_index>*`, which covers the default name) does not apply to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requests_index_is_created_with_its_own_mapping_under_its_configured_name() {
    let (b, s, _cleanup) = open_fresh().await;
    assert!(s.requests_index.starts_with(&s.orders_index));
    let raw = Raw::new();
    let template = raw
        .get(&format!("/_index_template/{}", s.requests_index))
        .await;
    assert_eq!(
        template["index_templates"][0]["index_template"]["index_patterns"],
        json!([s.requests_index])
    );
    let mapping = raw.get(&format!("/{}/_mapping", s.requests_index)).await;
    let m = &mapping[s.requests_index.as_str()]["mappings"];
    assert!(
        m["properties"]["command"].is_null(),
        "no orders mapping: {m}"
    );
    assert_eq!(m["dynamic"], "false");
    let kw = json!({"type": "keyword", "ignore_above": 1024});
    for path in ["request_id", "state", "source", "user"] {
        assert_eq!(m["properties"][path], kw, "{path}");
    }
    assert_eq!(m["properties"]["target"]["properties"]["id"], kw);
    assert_eq!(m["properties"]["action"]["properties"]["name"], kw);
    for path in ["created_at", "finished_at"] {
        assert_eq!(m["properties"][path], json!({"type": "date"}), "{path}");
    }
    assert_eq!(m["properties"]["revision"], json!({"type": "long"}));

    // The document is the record's serde form, under its request id.
    let record = paused_record(at(0));
    assert!(
        cm_ports::RequestStore::create(&b, &record)
            .await
            .expect("create")
    );
    let source = raw_source(&raw, &s.requests_index, &record.request_id().to_string()).await;
    assert_eq!(source, serde_json::to_value(&record).expect("json"));
}

/// OpenSearch cannot join orders with their records: a claim reads the records of its
/// candidates, and `next_due` the records of the requests of its earliest instants. A full page
/// of candidates whose request is paused must not hide the deliverable orders behind it, and a
/// paused request's scheduled order must not be what a long-poll waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_page_of_orders_of_a_paused_request_does_not_hide_the_orders_behind_it() {
    let (b, s, _cleanup) = open_fresh().await;
    let paused = paused_record(at(0));
    assert!(
        cm_ports::RequestStore::create(&b, &paused)
            .await
            .expect("create")
    );
    let held_back = OrderSpec::agent("p1")
        .timeout(3600)
        .request(*paused.request_id())
        .many(40);
    b.insert(&held_back).await.expect("insert");
    // Without a record: it predates records, so it goes out.
    let behind = OrderSpec::agent("p1").timeout(3600).created(at(1)).build();
    b.insert(std::slice::from_ref(&behind))
        .await
        .expect("insert");

    // Another instance claims: it finds the orders by searching, a page at a time, not among
    // the orders it wrote itself.
    let other = OpenSearchBackend::open(&s).await.expect("open");
    let consumers = Consumers::agent(&agent_id("p1"));
    let got = other
        .claim(&consumers, 1, at(2), &policy())
        .await
        .expect("claim");
    assert_eq!(
        got.iter().map(|o| *o.order_id()).collect::<Vec<_>>(),
        vec![*behind.order_id()]
    );
    assert!(
        other
            .claim(&consumers, 100, at(2), &policy())
            .await
            .expect("claim")
            .is_empty(),
        "the paused request's orders stay"
    );

    // A long-poll does not wake for the paused request's scheduled order, but does for the
    // later one of a request without a record.
    let scheduled = OrderSpec::agent("p1")
        .timeout(3600)
        .request(*paused.request_id())
        .not_before(at(50))
        .build();
    let later = OrderSpec::agent("p1")
        .timeout(3600)
        .not_before(at(60))
        .build();
    b.insert(&[scheduled, later]).await.expect("insert");
    let fresh = OpenSearchBackend::open(&s).await.expect("open");
    assert_eq!(
        fresh.next_due(&consumers, at(2)).await.expect("next_due"),
        Some(at(60))
    );
}

#[tokio::test]
async fn sweeps_go_a_search_window_at_a_time_whatever_is_configured() {
    // A smaller batch pays a refresh and a request more often; a larger one than a search
    // finds would end the drains of `give_up_unreported` and `purge_finished` after one batch.
    let (backend, _settings, _cleanup) = open_fresh().await;
    for configured in [1, 1_000, 10_000, 50_000] {
        assert_eq!(
            backend.sweep_batch(configured),
            10_000,
            "configured {configured}"
        );
    }
}
