//! `cm-client` against the real binary, with authentication on: every route, both credential
//! kinds, and the API's errors mapped to status, code and field.

mod support;

use cm_client::{
    BatchReport, Client, Credentials, NewAgent, NewCommand, OrderFilter, RelayClaim, Report,
    RequestFilter, RetryPolicy, TargetRef,
};
use cm_domain::{RequestState, Status};
use reqwest::StatusCode;
use support::Service;

const MANAGER: &str = "manager-token-0123456789";
const RELAY: &str = "relay-token-0123456789ab";

fn service() -> Service {
    Service::start(&[
        ("CM_STORAGE__BACKEND", "memory"),
        ("CM_AUTH__ENABLED", "true"),
        ("CM_AUTH__MANAGER_TOKENS", MANAGER),
        ("CM_AUTH__RELAY_TOKENS", RELAY),
    ])
}

fn manager(svc: &Service) -> Client {
    Client::new(&svc.base, Credentials::Bearer(MANAGER.into())).unwrap()
}

fn as_agent(svc: &Service, id: &str, key: &str) -> Client {
    Client::new(
        &svc.base,
        Credentials::Basic {
            id: id.into(),
            key: key.into(),
        },
    )
    .unwrap()
}

fn report(status: &str, code: i16, message: &str) -> Report {
    Report {
        status: status.into(),
        code,
        message: message.into(),
        data: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_drives_every_route_of_the_real_service() {
    let svc = service();
    let m = manager(&svc);

    // Operations.
    assert_eq!(m.healthz().await.unwrap()["status"], "ok");
    assert_eq!(m.readyz().await.unwrap()["status"], "ready");
    assert!(m.openapi().await.unwrap()["paths"]["/api/v1/agents"]["put"].is_object());
    assert!(m.metrics().await.unwrap().contains("# TYPE"));

    // Agents: one by one and in bulk.
    let a1 = m.put_agent("a1", &["web".into()]).await.unwrap();
    let key1 = a1.key.clone().expect("a new agent's key");
    assert!(
        m.put_agent("a1", &["web".into()])
            .await
            .unwrap()
            .key
            .is_none()
    );
    let bulk = m
        .put_agents(&[
            NewAgent {
                id: "a2".into(),
                groups: vec!["web".into()],
            },
            NewAgent {
                id: "a1".into(),
                groups: vec!["web".into(), "linux".into()],
            },
        ])
        .await
        .unwrap();
    assert!(bulk[0].created && bulk[0].key.is_some());
    assert!(!bulk[1].created && bulk[1].key.is_none());
    let key2 = bulk[0].key.clone().unwrap();
    assert_eq!(m.agent("a1").await.unwrap().groups().len(), 2);
    let page = m.agents(Some("web"), Some(1), None).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let rest = m
        .agents(Some("web"), Some(10), page.next.as_deref())
        .await
        .unwrap();
    assert_eq!(rest.items[0].id().as_str(), "a2");
    m.put_agent("gone", &[]).await.unwrap();
    m.delete_agent("gone").await.unwrap();
    assert_eq!(m.agent("gone").await.unwrap_err().code(), Some("not_found"));

    // Submit, dry run, the Wazuh route.
    let plan = m
        .dry_run(&[NewCommand::new(TargetRef::group("web"), "restart")])
        .await
        .unwrap();
    assert_eq!(plan.plans[0].targets, 2);
    let sub = m
        .submit(
            &[NewCommand::new(TargetRef::group("web"), "restart")],
            Some("key-1"),
        )
        .await
        .unwrap();
    let again = m
        .submit(
            &[NewCommand::new(TargetRef::group("web"), "restart")],
            Some("key-1"),
        )
        .await
        .unwrap();
    assert_eq!(sub, again, "an idempotent submit answers the same request");
    let request = sub.requests[0].request_id.clone();
    assert_eq!(sub.requests[0].order_ids.len(), 2);
    let wazuh = m
        .submit_wazuh(&[NewCommand::new(TargetRef::agent("a2"), "noop")], None)
        .await
        .unwrap();
    assert_eq!(wazuh["result"], "OK");

    // Requests.
    let info = m.request(&request).await.unwrap();
    assert_eq!(info.state, Some(RequestState::Running));
    assert_eq!((info.total, info.pending), (2, 2));
    let listed = m
        .requests(&RequestFilter {
            action: Some("restart".into()),
            ..RequestFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(
        m.pause(&request).await.unwrap().state,
        Some(RequestState::Paused)
    );
    assert!(
        as_agent(&svc, "a1", &key1)
            .poll("a1", 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        m.resume(&request).await.unwrap().state,
        Some(RequestState::Running)
    );

    // Delivery as agents, reports, results.
    let orders = as_agent(&svc, "a1", &key1).poll("a1", 5, 10).await.unwrap();
    assert_eq!(orders.len(), 1);
    let o1 = orders[0].order_id().to_string();
    let agent1 = as_agent(&svc, "a1", &key1);
    agent1
        .report(&o1, &report("in_progress", 0, ""))
        .await
        .unwrap();
    let done = agent1
        .report(&o1, &report("success", 0, "ok"))
        .await
        .unwrap();
    assert_eq!(done.status(), Status::Success);
    let forbidden = as_agent(&svc, "a2", &key2)
        .report(&o1, &report("success", 0, "ok"))
        .await
        .unwrap_err();
    assert_eq!(forbidden.status(), Some(StatusCode::FORBIDDEN));
    let agent2 = as_agent(&svc, "a2", &key2);
    let o2 = agent2.poll("a2", 5, 10).await.unwrap();
    let mine: Vec<_> = o2
        .iter()
        .filter(|o| o.request_id().to_string() == request)
        .collect();
    assert_eq!(mine.len(), 1);
    agent2
        .report(
            &mine[0].order_id().to_string(),
            &report("failure", 3, "disk full"),
        )
        .await
        .unwrap();
    let groups = m.results(&request).await.unwrap();
    assert_eq!(groups.len(), 2);
    assert!(
        groups
            .iter()
            .any(|g| g.code == 3 && g.message == "disk full" && g.sample == ["a2"])
    );
    let failed = m
        .request_orders(&request, Some("failure"), None, None)
        .await
        .unwrap();
    assert_eq!(failed.items.len(), 1);
    let finished = m.request(&request).await.unwrap();
    assert!(finished.is_finished(), "{finished:?}");
    let retry = m.retry_request(&request, None).await.unwrap();
    let retried = retry.requests[0].request_id.clone();
    assert_eq!(
        m.request(&retried).await.unwrap().retry_of.as_deref(),
        Some(request.as_str())
    );
    assert_eq!(m.cancel_request(&retried).await.unwrap().failure, 1);

    // Orders.
    let all = m
        .orders(&OrderFilter {
            agent_id: Some("a1".into()),
            ..OrderFilter::default()
        })
        .await
        .unwrap();
    assert!(all.items.iter().any(|o| o.order_id().to_string() == o1));
    assert_eq!(m.order(&o1).await.unwrap().status(), Status::Success);
    let single = m
        .submit(&[NewCommand::new(TargetRef::agent("a1"), "later")], None)
        .await
        .unwrap();
    let pending = &single.requests[0].order_ids[0];
    assert_eq!(
        m.cancel_order(pending).await.unwrap().status(),
        Status::Failure
    );
    assert_eq!(
        m.cancel_order(pending).await.unwrap_err().status(),
        Some(StatusCode::CONFLICT)
    );

    // Keys: a rotated key replaces the old one at once.
    let new1 = m.rotate_agent_key("a1").await.unwrap().key;
    let old = as_agent(&svc, "a1", &key1)
        .poll("a1", 0, 1)
        .await
        .unwrap_err();
    assert_eq!(old.status(), Some(StatusCode::UNAUTHORIZED));
    as_agent(&svc, "a1", &new1).poll("a1", 0, 1).await.unwrap();

    // Server components and relays.
    let comp = m.put_server("scanner").await.unwrap();
    let ckey = comp.key.expect("a new component's key");
    assert!(m.put_server("scanner").await.unwrap().key.is_none());
    assert_eq!(m.servers(None, None).await.unwrap().items, ["scanner"]);
    m.submit(
        &[NewCommand::new(TargetRef::server("scanner"), "scan")],
        None,
    )
    .await
    .unwrap();
    let scanner = as_agent(&svc, "scanner", &ckey);
    let scans = scanner.poll_server("scanner", 5, 10).await.unwrap();
    assert_eq!(scans.len(), 1);
    let ckey2 = m.rotate_server_key("scanner").await.unwrap().key.unwrap();
    assert_ne!(ckey, ckey2);
    m.submit(&[NewCommand::new(TargetRef::agent("a2"), "relayed")], None)
        .await
        .unwrap();
    let relay = Client::new(&svc.base, Credentials::Bearer(RELAY.into())).unwrap();
    let claimed = relay
        .relay_claim(&RelayClaim {
            agents: vec!["a2".into()],
            wait: Some(5),
            ..RelayClaim::default()
        })
        .await
        .unwrap();
    assert!(!claimed.is_empty());
    let outcomes = relay
        .report_many(
            &claimed
                .iter()
                .map(|o| BatchReport {
                    order_id: o.order_id().to_string(),
                    report: report("success", 0, "relayed"),
                })
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    assert!(
        outcomes.iter().all(|o| o.outcome == "applied"),
        "{outcomes:?}"
    );
    m.delete_server("scanner").await.unwrap();
    assert!(m.servers(None, None).await.unwrap().items.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn api_errors_carry_status_code_and_field_and_refused_calls_are_not_retried() {
    let svc = service();
    let m = manager(&svc);
    let e = m.request("not-a-uuid").await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(e.code(), Some("invalid_field"));
    assert_eq!(e.field(), Some("request_id"));
    let e = m
        .submit(&[NewCommand::new(TargetRef::group("empty"), "x")], None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
    let e = m
        .put_agents(&[
            NewAgent {
                id: "ok".into(),
                groups: vec![],
            },
            NewAgent {
                id: "..".into(),
                groups: vec![],
            },
        ])
        .await
        .unwrap_err();
    assert_eq!(e.field(), Some("agents[1].id"));
    let nobody = Client::new(&svc.base, Credentials::None).unwrap();
    assert_eq!(
        nobody.agents(None, None, None).await.unwrap_err().code(),
        Some("unauthorized")
    );
    // Nothing listens here: a transport error, after the retries of a safe call.
    let dead = Client::builder("http://127.0.0.1:9")
        .retry(RetryPolicy {
            attempts: 2,
            base: std::time::Duration::from_millis(10),
            max: std::time::Duration::from_millis(20),
        })
        .build()
        .unwrap();
    assert!(matches!(
        dead.healthz().await.unwrap_err(),
        cm_client::Error::Transport(_)
    ));
}
