//! The library as a Rust service embeds it (the README's "Embedding" section, kept compiling and
//! true): use cases over the in-memory storage, and the HTTP router over the same use cases.

use std::sync::Arc;
use std::time::Duration;

use cm_adapter_memory::{MemoryAgents, MemoryOrders};
use cm_api_http::{AppState, AuthSettings, HttpSettings};
use cm_domain::{
    Action, Agent, AgentId, Command, GroupName, Report, ReportStatus, Source, Status, Target,
    TargetType, Timeout,
};
use cm_ports::{CommandManager, LocalNotifier, Ports, Settings, SubmitRequest, SystemClock};

#[tokio::test]
async fn an_embedding_service_drives_the_whole_loop_through_the_use_cases() {
    // Storage: swap MemoryOrders/MemoryAgents for the SQLite, PostgreSQL or OpenSearch
    // backend (cm-adapter-*) without touching anything else.
    let orders = MemoryOrders::new();
    let manager = CommandManager::new(
        Ports {
            requests: Arc::new(orders.requests()),
            orders: Arc::new(orders),
            agents: Arc::new(MemoryAgents::new()),
            components: Arc::new(cm_adapter_memory::MemoryComponents::new()),
            notifier: Arc::new(LocalNotifier::new()),
            clock: Arc::new(SystemClock),
        }
        // The same storage spans, failure logs and `cm_store_operation_seconds` as the service.
        .instrumented("memory"),
        Settings::default(),
    );

    let a1 = AgentId::parse("a1", "agent_id").unwrap();
    let test = GroupName::parse("Test", "group").unwrap();
    let registered = manager
        .put_agent(&Agent::new(a1.clone(), vec![test]))
        .await
        .unwrap();
    assert!(registered.key.is_some(), "a new agent gets its key once");

    let restart = Command::new(
        Source::UsersServices,
        Some("embedder".to_owned()),
        Target::new(TargetType::Group, "Test").unwrap(),
        Action::new("restart", serde_json::json!({}), "v5").unwrap(),
        Timeout::new(300).unwrap(),
    )
    .unwrap();
    let submitted = manager
        .submit(SubmitRequest {
            commands: vec![restart],
            idempotency: None,
        })
        .await
        .unwrap();
    assert_eq!(submitted[0].order_ids.len(), 1);

    let orders = manager.poll(&a1, 10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(orders.len(), 1);
    let report = Report::new(ReportStatus::Success, 0, "restarted", "").unwrap();
    let done = manager
        .report(
            orders[0].order_id(),
            &report,
            &cm_ports::Reporter::Consumer(cm_domain::Consumer::Agent(a1.clone())),
        )
        .await
        .unwrap();
    assert_eq!(done.status(), Status::Success);

    // The same use cases behind the HTTP API, mounted in the embedder's own axum server.
    let router = cm_api_http::router(AppState::new(
        manager,
        HttpSettings::default(),
        AuthSettings::default(),
        None,
    ));
    let _: axum::Router = router;
}
