//! Conformance cases of the request records (docs/requests.md): the record store itself, the
//! request gate of claims, held orders, and the use cases over them on the real backend.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cm_domain::{
    Agent, Command, ERROR_BUDGET_EXHAUSTED, Expander, IdSource, IdempotencyKey, KeyedIds, Limit,
    Order, PendingEnd, RateControl, Report, ReportStatus, RequestId, RequestRecord, RequestState,
    STOPPED, Source, Status, TargetType,
};
use uuid::Uuid;

use super::{command, deliver, get, insert, policy, service_at};
use crate::store::{Consumers, RequestCursor, RequestFilter, RequestPageRequest, ResultGroup};
use crate::testkit::{Backend, ManualClock, OrderSpec, agent, agent_id, at, t0};
use crate::{Idempotency, Reporter, RequestError, Settings, SubmitRequest};

fn capped(concurrency: Option<u64>, errors: Option<u64>) -> RateControl {
    RateControl {
        max_concurrency: concurrency.map(Limit::Count),
        max_errors: errors.map(Limit::Count),
    }
}

/// A committed record of a one-agent command, created at `created`.
fn record_at(created: chrono::DateTime<chrono::Utc>, user: &str, action: &str) -> RequestRecord {
    let c = Command::new(
        Source::UsersServices,
        Some(user.to_owned()),
        cm_domain::Target::new(TargetType::Group, "Test").expect("target"),
        cm_domain::Action::new(action, serde_json::json!({}), "v5").expect("action"),
        cm_domain::Timeout::new(300).expect("timeout"),
    )
    .expect("command");
    RequestRecord::new(RequestId::from_uuid(Uuid::now_v7()), &c, None, 1, created)
}

fn committed(r: &RequestRecord) -> RequestRecord {
    r.commit(r.total(), r.created_at())
        .expect("commit")
        .expect("changed")
}

async fn fleet(b: &Backend, group: &str, n: usize) -> Vec<Agent> {
    let agents: Vec<Agent> = (0..n)
        .map(|i| agent(&format!("{group}-{i:03}"), &[group]))
        .collect();
    b.agents.upsert_many(&agents).await.expect("upsert");
    agents
}

fn reporter(o: &Order) -> Reporter {
    Reporter::Consumer(o.consumer().expect("consumer"))
}

fn report(status: ReportStatus, code: i64, message: &str) -> Report {
    Report::new(status, code, message, "").expect("report")
}

// ---- the record store ------------------------------------------------------------------------

pub async fn a_record_is_created_once_read_back_and_replaced_by_revision(b: Backend) {
    let r = record_at(at(0), "alice", "restart");
    assert!(b.requests.create(&r).await.expect("create"));
    assert!(!b.requests.create(&r).await.expect("again"), "created once");
    assert_eq!(
        b.requests.get(r.request_id()).await.expect("get"),
        Some(r.clone())
    );
    let next = committed(&r);
    b.requests.replace(&r, &next).await.expect("replace");
    assert_eq!(
        b.requests.replace(&r, &next).await,
        Err(crate::ReplaceError::Conflict),
        "a stale revision loses"
    );
    assert_eq!(
        b.requests.get(r.request_id()).await.expect("get"),
        Some(next)
    );
    let unknown = record_at(at(0), "bob", "restart");
    assert_eq!(
        b.requests.replace(&unknown, &committed(&unknown)).await,
        Err(crate::ReplaceError::NotFound)
    );
    assert_eq!(
        b.requests.get(unknown.request_id()).await.expect("get"),
        None
    );
}

pub async fn records_are_listed_newest_first_filtered_and_paged_without_loss_or_repetition(
    b: Backend,
) {
    let mut all = Vec::new();
    for i in 0..45 {
        // Three records per millisecond: ties on `created_at` go by request id.
        let created = at(0) + chrono::Duration::milliseconds(i / 3);
        let user = if i % 2 == 0 { "alice" } else { "bob" };
        let action = if i % 3 == 0 { "restart" } else { "upgrade" };
        let r = committed(&record_at(created, user, action));
        assert!(b.requests.create(&r).await.expect("create"));
        all.push(r);
    }
    let mut expected = all.clone();
    expected
        .sort_by(|a, b| (b.created_at(), b.request_id()).cmp(&(a.created_at(), a.request_id())));
    let list = |filter: RequestFilter, size: usize| {
        let b = b.clone();
        async move {
            let mut out = Vec::new();
            let mut after: Option<RequestCursor> = None;
            loop {
                let page = b
                    .requests
                    .list(&filter, &RequestPageRequest { size, after })
                    .await
                    .expect("list");
                assert!(page.items.len() <= size);
                out.extend(page.items);
                match page.next {
                    Some(next) => after = Some(next),
                    None => return out,
                }
            }
        }
    };
    assert_eq!(list(RequestFilter::default(), 7).await, expected);
    let alice = list(
        RequestFilter {
            user: Some("alice".into()),
            action: Some("restart".into()),
            ..RequestFilter::default()
        },
        4,
    )
    .await;
    let want: Vec<_> = expected
        .iter()
        .filter(|r| r.user() == Some("alice") && r.action().name == "restart")
        .cloned()
        .collect();
    assert_eq!(alice, want);
    assert!(!want.is_empty());
    let window = list(
        RequestFilter {
            since: Some(at(0) + chrono::Duration::milliseconds(3)),
            until: Some(at(0) + chrono::Duration::milliseconds(5)),
            state: Some(RequestState::Running),
            target_type: Some(TargetType::Group),
            target_id: Some("Test".into()),
            source: Some(Source::UsersServices),
            ..RequestFilter::default()
        },
        100,
    )
    .await;
    assert_eq!(window.len(), 6, "two milliseconds of three records each");
    assert!(
        list(
            RequestFilter {
                state: Some(RequestState::Paused),
                ..RequestFilter::default()
            },
            10
        )
        .await
        .is_empty()
    );
}

pub async fn unsettled_records_page_oldest_first_and_retention_purges_only_settled_ones(
    b: Backend,
) {
    let mut unsettled = Vec::new();
    for i in 0..5 {
        let r = committed(&record_at(at(i), "alice", "restart"));
        b.requests.create(&r).await.expect("create");
        unsettled.push(r);
    }
    // Settled long ago, and settled just now.
    let old = record_at(at(0), "alice", "restart");
    let old_done = old
        .abort(at(1))
        .expect("abort")
        .settle(cm_domain::StatusCounts::default(), at(1));
    b.requests.create(&old_done).await.expect("create");
    let recent = record_at(at(100), "alice", "restart");
    let recent_done = recent
        .abort(at(100))
        .expect("abort")
        .settle(cm_domain::StatusCounts::default(), at(100));
    b.requests.create(&recent_done).await.expect("create");

    let first = b.requests.unsettled(None, 3).await.expect("unsettled");
    assert_eq!(first, unsettled[..3].to_vec());
    let rest = b
        .requests
        .unsettled(Some(RequestCursor::after(&first[2])), 3)
        .await
        .expect("unsettled");
    assert_eq!(rest, unsettled[3..].to_vec());

    assert_eq!(
        b.requests.purge_settled(at(50), 10).await.expect("purge"),
        1
    );
    assert_eq!(b.requests.get(old.request_id()).await.expect("get"), None);
    assert!(
        b.requests
            .get(recent.request_id())
            .await
            .expect("get")
            .is_some()
    );
    assert!(
        b.requests
            .get(unsettled[0].request_id())
            .await
            .expect("get")
            .is_some()
    );
}

// ---- the request gate and held orders --------------------------------------------------------

pub async fn orders_of_a_request_go_out_only_while_its_record_delivers(b: Backend) {
    let spec = OrderSpec::agent("g1").timeout(3600);
    let writing = record_at(t0(), "alice", "restart");
    let spec = spec.request(*writing.request_id());
    let orders = spec.many(2);
    b.requests.create(&writing).await.expect("create");
    insert(&b, &orders).await;
    let consumers = Consumers::agent(&agent_id("g1"));
    let policy = policy();
    let claim = || b.orders.claim(&consumers, 10, at(1), &policy);
    assert!(claim().await.expect("claim").is_empty(), "still writing");
    assert_eq!(
        b.orders
            .next_due(&consumers, at(1))
            .await
            .expect("next_due"),
        None
    );

    let running = writing.commit(2, at(1)).expect("commit").expect("changed");
    b.requests
        .replace(&writing, &running)
        .await
        .expect("replace");
    let paused = running.pause(at(1)).expect("pause").expect("changed");
    b.requests
        .replace(&running, &paused)
        .await
        .expect("replace");
    assert!(claim().await.expect("claim").is_empty(), "paused");
    let resumed = paused.resume(at(1)).expect("resume").expect("changed");
    b.requests
        .replace(&paused, &resumed)
        .await
        .expect("replace");
    let got = claim().await.expect("claim");
    assert_eq!(got.len(), 2, "running: handed out");

    // Orders of a request without a record (submitted before records existed) still go out.
    let legacy = OrderSpec::agent("g1").timeout(3600).build();
    insert(&b, std::slice::from_ref(&legacy)).await;
    assert_eq!(claim().await.expect("claim").len(), 1);
    // ... and still answer their progress, without a record.
    let view = b
        .service(Settings::default())
        .request(legacy.request_id())
        .await
        .expect("request")
        .expect("known by its orders");
    assert_eq!(view.record, None);
    assert_eq!((view.counts.total(), view.counts.sent), (1, 1));
}

pub async fn held_orders_neither_go_out_nor_expire_until_released_lowest_position_first(
    b: Backend,
) {
    let request = RequestId::from_uuid(Uuid::now_v7());
    let spec = OrderSpec::agent("h1").request(request).timeout(100);
    // Created at t0 with a 100 s timeout: overdue at +200 s unless held.
    let held: Vec<Order> = (0..4)
        .map(|p| spec.clone().position(p, true).build())
        .collect();
    insert(&b, &held).await;
    let overdue = OrderSpec::agent("h2").timeout(100).build();
    insert(&b, std::slice::from_ref(&overdue)).await;
    let consumers = Consumers::agent(&agent_id("h1"));
    assert!(
        b.orders
            .claim(&consumers, 10, at(1), &policy())
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(
        b.orders
            .next_due(&consumers, at(1))
            .await
            .expect("next_due"),
        None
    );
    // Held orders are older and overdue too, yet a batch of one expires the other order.
    let batch = b.orders.expire_due(at(200), 1).await.expect("expire");
    assert_eq!(batch.changed, 1);
    assert_eq!(get(&b, overdue.order_id()).await.status(), Status::Failure);
    for o in &held {
        assert_eq!(get(&b, o.order_id()).await.status(), Status::Pending);
    }

    let released = b
        .orders
        .release_held(&request, 2, at(200), 10)
        .await
        .expect("release");
    let mut positions: Vec<u64> = released.iter().filter_map(Order::position).collect();
    positions.sort_unstable();
    assert_eq!(positions, [0, 1], "only positions below 2");
    for o in &released {
        assert!(!o.is_held());
        assert_eq!(
            o.delivery_deadline(),
            at(300),
            "the deadline counts from the release"
        );
        assert_eq!(&get(&b, o.order_id()).await, o);
    }
    assert!(
        b.orders
            .release_held(&request, 2, at(201), 10)
            .await
            .expect("again")
            .is_empty(),
        "releasing twice changes nothing"
    );
    let limited = b
        .orders
        .release_held(&request, 10, at(200), 1)
        .await
        .expect("release");
    assert_eq!(
        limited.iter().map(|o| o.position()).collect::<Vec<_>>(),
        [Some(2)]
    );
    let got = b
        .orders
        .claim(&consumers, 10, at(201), &policy())
        .await
        .expect("claim");
    assert_eq!(got.len(), 3);
    // The last one, still held, ends when its request stops.
    let batch = b
        .orders
        .end_pending(&request, PendingEnd::Stopped, at(202), 10)
        .await
        .expect("end");
    assert_eq!(batch.changed, 1);
    let last = get(&b, held[3].order_id()).await;
    assert_eq!(last.status(), Status::Failure);
    assert_eq!(last.result().expect("result").message(), STOPPED);
    assert!(!last.is_held());
}

pub async fn progress_counts_errors_of_the_action_apart_from_service_ends(b: Backend) {
    let spec = OrderSpec::agent("e1").timeout(3600);
    let orders: Vec<Order> = (0..5)
        .map(|i| {
            let mut s = spec.clone();
            s.agent = Some(format!("e{i}"));
            s.build()
        })
        .collect();
    insert(&b, &orders).await;
    for (o, (status, code, message)) in orders[..3].iter().zip([
        (ReportStatus::Failure, 7, "disk full"),
        (ReportStatus::Failure, -1, "expired"),
        (ReportStatus::Success, 0, "ok"),
    ]) {
        let sent = deliver(&b, o, at(1)).await;
        let cm_domain::ReportOutcome::Applied(done) = sent
            .report(&report(status, code, message), at(2))
            .expect("report")
        else {
            panic!("applied");
        };
        b.orders.replace(&sent, &done).await.expect("replace");
    }
    b.orders
        .end_pending(&spec.request, PendingEnd::Cancelled, at(3), 10)
        .await
        .expect("cancel");
    let counts = b.orders.progress(&spec.request).await.expect("progress");
    assert_eq!((counts.success, counts.failure), (1, 4));
    // The agent's "disk full" is an error of the action; the two cancelled orders are not, and
    // neither is a report carrying the service's own code and message for an expiry.
    assert_eq!(counts.errors, 1, "{counts:?}");
}

pub async fn results_group_finished_orders_by_status_code_and_message_largest_first(b: Backend) {
    let request = RequestId::from_uuid(Uuid::now_v7());
    let mut outcomes = Vec::new();
    for i in 0..23 {
        let (status, code, message) = match i % 4 {
            0 | 1 => (ReportStatus::Success, 0, "ok"),
            2 => (ReportStatus::Failure, 7, "disk full"),
            _ => (ReportStatus::Failure, 7, "disk full!"),
        };
        outcomes.push((format!("t{i:02}"), status, code, message));
    }
    for (agent_name, status, code, message) in &outcomes {
        let o = OrderSpec::agent(agent_name)
            .request(request)
            .timeout(3600)
            .build();
        insert(&b, std::slice::from_ref(&o)).await;
        let sent = deliver(&b, &o, at(1)).await;
        let cm_domain::ReportOutcome::Applied(done) = sent
            .report(&report(*status, *code, message), at(2))
            .expect("report")
        else {
            panic!("applied");
        };
        b.orders.replace(&sent, &done).await.expect("replace");
    }
    // Still pending: not part of the breakdown.
    insert(&b, &[OrderSpec::agent("zz").request(request).build()]).await;
    let groups = b.orders.result_groups(&request).await.expect("groups");
    let summary: Vec<(Status, i16, &str, u64)> = groups
        .iter()
        .map(|g| (g.status, g.code, g.message.as_str(), g.count))
        .collect();
    assert_eq!(
        summary,
        [
            (Status::Success, 0, "ok", 12),
            (Status::Failure, 7, "disk full", 6),
            (Status::Failure, 7, "disk full!", 5),
        ]
    );
    assert_eq!(groups[0].sample.len(), ResultGroup::SAMPLE);
    let mut sorted = groups[0].sample.clone();
    sorted.sort();
    assert_eq!(groups[0].sample, sorted, "samples in ascending order");
    assert_eq!(groups[0].sample[0], "t00", "the smallest target ids");
    assert_eq!(groups[2].sample, ["t03", "t07", "t11", "t15", "t19"]);
    assert!(
        b.orders
            .result_groups(&RequestId::from_uuid(Uuid::now_v7()))
            .await
            .expect("groups")
            .is_empty()
    );
}

// ---- the use cases over the real backend ------------------------------------------------------

pub async fn a_submit_writes_its_record_with_the_orders_and_counts_match(b: Backend) {
    fleet(&b, "Rec", 3).await;
    let service = b.service(Settings::default());
    let submitted = service
        .submit(SubmitRequest {
            commands: vec![
                command(TargetType::Group, "Rec"),
                command(TargetType::Agent, "Rec-001"),
            ],
            idempotency: None,
        })
        .await
        .expect("submit");
    let view = service
        .request(&submitted[0].request_id)
        .await
        .expect("request")
        .expect("known");
    let record = view.record.expect("a record");
    assert_eq!(record.state(), RequestState::Running);
    assert_eq!(record.total(), 3);
    assert_eq!(
        record.target().id(),
        "Rec",
        "the target as submitted: the group"
    );
    assert_eq!(record.user(), Some("conformance"));
    assert_eq!(record.action().name, "restart");
    assert_eq!((view.counts.total(), view.counts.pending), (3, 3));
    let second = service
        .request(&submitted[1].request_id)
        .await
        .expect("request")
        .expect("known");
    assert_eq!(second.record.expect("record").total(), 1);
    // Finish every order: the request completes with frozen counts.
    for agent_name in ["Rec-000", "Rec-001", "Rec-002"] {
        for o in service
            .poll(&agent_id(agent_name), 10, Duration::ZERO)
            .await
            .expect("poll")
        {
            service
                .report(
                    o.order_id(),
                    &report(ReportStatus::Success, 0, "ok"),
                    &reporter(&o),
                )
                .await
                .expect("report");
        }
    }
    let done = service
        .request(&submitted[0].request_id)
        .await
        .expect("request")
        .expect("known");
    let record = done.record.expect("record");
    assert_eq!(record.state(), RequestState::Completed);
    assert!(record.finished_at().is_some());
    assert_eq!(record.counts().map(|c| c.success), Some(3));
    assert_eq!(done.counts.success, 3);
}

/// Polls `agents` from 8 concurrent pollers until `done`, reporting each order with what
/// `outcome` says for its agent, and checking after every claim that the request never has
/// more than `cap` orders out.
async fn poll_concurrently(
    service: &crate::CommandManager,
    b: &Backend,
    request: RequestId,
    agents: &[Agent],
    cap: u64,
    outcome: fn(usize) -> ReportStatus,
) {
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for poller in 0..8 {
        let service = service.clone();
        let orders = Arc::clone(&b.orders);
        let done = Arc::clone(&done);
        let mine: Vec<(usize, Agent)> = agents
            .iter()
            .cloned()
            .enumerate()
            .filter(|(i, _)| i % 8 == poller)
            .collect();
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                for (i, a) in &mine {
                    let got = service
                        .poll(a.id(), 10, Duration::ZERO)
                        .await
                        .expect("poll");
                    if got.is_empty() {
                        continue;
                    }
                    let counts = orders.progress(&request).await.expect("progress");
                    assert!(
                        counts.sent + counts.in_progress <= cap,
                        "more than {cap} out at once: {counts:?}"
                    );
                    for o in got {
                        let status = outcome(*i);
                        service
                            .report(
                                o.order_id(),
                                &report(status, 3, "handler said so"),
                                &reporter(&o),
                            )
                            .await
                            .expect("report");
                    }
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    loop {
        let view = service
            .request(&request)
            .await
            .expect("request")
            .expect("known");
        if view
            .record
            .as_ref()
            .is_some_and(|r| r.state().is_finished())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("poller");
    }
}

pub async fn a_capped_request_never_has_more_than_its_cap_out_and_completes(b: Backend) {
    let agents = fleet(&b, "Cap", 20).await;
    let service = b.service(Settings::default());
    let submitted = service
        .submit(SubmitRequest {
            commands: vec![
                command(TargetType::Group, "Cap").with_rate_control(capped(Some(3), None)),
            ],
            idempotency: None,
        })
        .await
        .expect("submit");
    let request = submitted[0].request_id;
    let counts = b.orders.progress(&request).await.expect("progress");
    assert_eq!(counts.pending, 20);
    poll_concurrently(&service, &b, request, &agents, 3, |_| ReportStatus::Success).await;
    let view = service
        .request(&request)
        .await
        .expect("request")
        .expect("known");
    assert_eq!(
        view.record.expect("record").state(),
        RequestState::Completed
    );
    assert_eq!(view.counts.success, 20);
}

pub async fn more_failures_than_the_budget_stop_the_request_and_end_the_rest(b: Backend) {
    let agents = fleet(&b, "Budget", 20).await;
    let service = b.service(Settings::default());
    let submitted = service
        .submit(SubmitRequest {
            commands: vec![
                command(TargetType::Group, "Budget").with_rate_control(capped(Some(3), Some(1))),
            ],
            idempotency: None,
        })
        .await
        .expect("submit");
    let request = submitted[0].request_id;
    poll_concurrently(&service, &b, request, &agents, 3, |_| ReportStatus::Failure).await;
    let view = service
        .request(&request)
        .await
        .expect("request")
        .expect("known");
    let record = view.record.expect("record");
    assert_eq!(record.state(), RequestState::Stopped);
    assert_eq!(record.state_reason(), Some(ERROR_BUDGET_EXHAUSTED));
    // It stopped after the second failure; the orders still out then (at most the cap's worth
    // less the one that failed) may fail after it: at most the budget plus the cap.
    assert!(
        (2..=4).contains(&view.counts.errors),
        "stopped after the second failure: {:?}",
        view.counts
    );
    assert_eq!(view.counts.open(), 0, "{:?}", view.counts);
    assert_eq!(
        view.counts.failure, 20,
        "the rest ended failure: {:?}",
        view.counts
    );
    let groups = service
        .request_results(&request)
        .await
        .expect("results")
        .expect("known");
    let stopped = groups
        .iter()
        .find(|g| g.message == STOPPED)
        .expect("a stopped group");
    assert_eq!(stopped.count, 20 - view.counts.errors);
}

pub async fn pause_holds_the_rest_and_resume_delivers_it(b: Backend) {
    fleet(&b, "Pause", 6).await;
    let clock = Arc::new(ManualClock::new(t0()));
    let service = service_at(&b, &clock);
    let submitted = service
        .submit(SubmitRequest {
            commands: vec![command(TargetType::Group, "Pause")],
            idempotency: None,
        })
        .await
        .expect("submit");
    let request = submitted[0].request_id;
    let poll = |i: usize| {
        let service = service.clone();
        async move {
            service
                .poll(&agent_id(&format!("Pause-{i:03}")), 10, Duration::ZERO)
                .await
                .expect("poll")
        }
    };
    assert_eq!(poll(0).await.len(), 1);
    assert_eq!(poll(1).await.len(), 1);
    let paused = service.pause_request(&request).await.expect("pause");
    assert_eq!(paused.record.expect("record").state(), RequestState::Paused);
    for i in 2..6 {
        assert!(poll(i).await.is_empty(), "Pause-{i:03} while paused");
    }
    let resumed = service.resume_request(&request).await.expect("resume");
    assert_eq!(
        resumed.record.expect("record").state(),
        RequestState::Running
    );
    for i in 2..6 {
        assert_eq!(poll(i).await.len(), 1, "Pause-{i:03} after the resume");
    }
    service.cancel_request(&request).await.expect("cancel");
    assert!(matches!(
        service.pause_request(&request).await,
        Err(RequestError::State(_))
    ));
    assert!(matches!(
        service.resume_request(&request).await,
        Err(RequestError::State(_))
    ));
    assert_eq!(
        service
            .pause_request(&RequestId::from_uuid(Uuid::now_v7()))
            .await,
        Err(RequestError::NotFound)
    );
}

pub async fn a_dry_run_plans_every_command_and_writes_nothing(b: Backend) {
    fleet(&b, "Dry", 12).await;
    let service = b.service(Settings::default());
    let request = SubmitRequest {
        commands: vec![
            command(TargetType::Group, "Dry"),
            command(TargetType::Agent, "Dry-004"),
            command(TargetType::Server, "indexer"),
        ],
        idempotency: None,
    };
    let plans = service.dry_run(&request).await.expect("dry run");
    assert_eq!(
        plans.iter().map(|p| p.targets).collect::<Vec<_>>(),
        [12, 1, 1]
    );
    let want: Vec<String> = (0..10).map(|i| format!("Dry-{i:03}")).collect();
    assert_eq!(plans[0].sample, want);
    assert_eq!(plans[1].sample, ["Dry-004"]);
    assert_eq!(plans[2].sample, ["indexer"]);
    let listed = b
        .requests
        .list(
            &RequestFilter::default(),
            &RequestPageRequest {
                size: 10,
                after: None,
            },
        )
        .await
        .expect("list");
    assert!(listed.items.is_empty(), "no record written");
    assert!(
        service
            .orders(&crate::OrderFilter::default(), 10, None)
            .await
            .expect("orders")
            .items
            .is_empty(),
        "no order written"
    );
    // The same 4xx as a submit.
    let bad = SubmitRequest {
        commands: vec![command(TargetType::Group, "Nobody")],
        idempotency: None,
    };
    assert!(matches!(
        service.dry_run(&bad).await,
        Err(crate::SubmitError::Expansion(_))
    ));
}

/// What a submit that died midway leaves behind: its record `writing` and the first `written`
/// orders of `group`, with the ids a submit with idempotency `key` and `fingerprint` gives.
async fn crashed_submit(
    b: &Backend,
    command: &Command,
    agents: &[Agent],
    written: usize,
    (key, fingerprint): (&str, &str),
    now: chrono::DateTime<chrono::Utc>,
) -> RequestId {
    let mut ids = KeyedIds::new(
        &IdempotencyKey::parse(key, "key").expect("key"),
        fingerprint,
    );
    let request = ids.request_id(0);
    let record = RequestRecord::new(request, command, None, agents.len() as u64, now);
    assert!(b.requests.create(&record).await.expect("create"));
    let ex = Expander::new(command, 0, request, now).spread_over(agents.len() as u64);
    let orders: Vec<Order> = agents[..written]
        .iter()
        .enumerate()
        .map(|(slot, a)| ex.agent_order_at(slot as u64, a, &mut ids))
        .collect();
    insert(b, &orders).await;
    request
}

pub async fn a_submit_left_writing_is_never_delivered_and_is_aborted_after_the_grace(b: Backend) {
    let agents = fleet(&b, "Crash", 10).await;
    let start = crate::Clock::now(&crate::SystemClock);
    let clock = Arc::new(ManualClock::new(start));
    let service = service_at(&b, &clock);
    let cmd = command(TargetType::Group, "Crash");
    let request = crashed_submit(&b, &cmd, &agents, 6, ("crash-1", "body"), start).await;
    for a in &agents {
        assert!(
            service
                .poll(a.id(), 10, Duration::ZERO)
                .await
                .expect("poll")
                .is_empty(),
            "nothing of an unacknowledged submit goes out"
        );
    }
    // Within the grace period the scheduler leaves it alone.
    clock.set(start + chrono::Duration::seconds(599));
    service.advance_requests().await.expect("advance");
    assert_eq!(
        b.orders.progress(&request).await.expect("progress").total(),
        6
    );
    clock.set(start + chrono::Duration::seconds(600));
    assert_eq!(service.advance_requests().await.expect("advance"), 1);
    let record = b
        .requests
        .get(&request)
        .await
        .expect("get")
        .expect("record");
    assert_eq!(record.state(), RequestState::Aborted);
    assert!(record.is_settled());
    assert_eq!(
        b.orders.progress(&request).await.expect("progress").total(),
        0
    );
}

pub async fn a_keyed_retry_completes_a_submit_that_died_midway_to_exactly_the_full_count(
    b: Backend,
) {
    let agents = fleet(&b, "Resume", 10).await;
    let service = b.service(Settings::default());
    let cmd = command(TargetType::Group, "Resume");
    let now = crate::Clock::now(&crate::SystemClock);
    let request = crashed_submit(&b, &cmd, &agents, 4, ("resume-1", "body-7"), now).await;
    let submitted = service
        .submit(SubmitRequest {
            commands: vec![cmd],
            idempotency: Some(Idempotency {
                key: IdempotencyKey::parse("resume-1", "key").expect("key"),
                fingerprint: "body-7".into(),
            }),
        })
        .await
        .expect("retry");
    assert_eq!(submitted[0].request_id, request);
    assert_eq!(submitted[0].order_ids.len(), 10);
    let counts = b.orders.progress(&request).await.expect("progress");
    assert_eq!(
        (counts.total(), counts.pending),
        (10, 10),
        "exactly the full count"
    );
    let record = b
        .requests
        .get(&request)
        .await
        .expect("get")
        .expect("record");
    assert_eq!(record.state(), RequestState::Running);
    assert_eq!(record.total(), 10);
    let mut delivered = HashSet::new();
    for a in &agents {
        for o in service
            .poll(a.id(), 10, Duration::ZERO)
            .await
            .expect("poll")
        {
            assert!(delivered.insert(*o.order_id()));
        }
    }
    assert_eq!(delivered.len(), 10);
}

// ---- whole requests and group commit -------------------------------------------------------

/// The orders of a committed, one-agent-per-order request of `agents`.
fn whole(agents: &[&str], created: chrono::DateTime<chrono::Utc>) -> crate::WholeRequest {
    let c = command(TargetType::Group, "Whole");
    let opened = RequestRecord::new(
        RequestId::from_uuid(Uuid::now_v7()),
        &c,
        None,
        agents.len() as u64,
        created,
    );
    let ex = Expander::new(&c, 0, *opened.request_id(), created);
    let mut ids = crate::clock::FreshIds;
    let orders = agents
        .iter()
        .enumerate()
        .map(|(slot, a)| ex.agent_order_at(slot as u64, &agent(a, &["Whole"]), &mut ids))
        .collect();
    crate::WholeRequest {
        record: committed(&opened),
        opened,
        orders,
    }
}

pub async fn whole_requests_are_written_with_their_orders_and_a_stored_record_is_left_alone(
    b: Backend,
) {
    let fresh = whole(&["whole-a", "whole-b", "whole-c"], at(0));
    let stored = whole(&["whole-d"], at(0));
    assert!(b.requests.create(&stored.record).await.expect("create"));
    let legacy = whole(&["whole-e", "whole-f"], at(0));
    // One order of `legacy` is stored already, without a record (a submit of an older version).
    b.orders
        .insert(&legacy.orders[..1])
        .await
        .expect("insert legacy");
    let Some(outcomes) = b
        .requests
        .write_whole(&[fresh.clone(), stored.clone(), legacy.clone()])
        .await
        .expect("write_whole")
    else {
        // This backend writes step by step; the submit cases cover that path.
        return;
    };
    assert_eq!(
        outcomes,
        vec![
            crate::WholeOutcome::Written { created: 3 },
            crate::WholeOutcome::Exists,
            crate::WholeOutcome::Written { created: 1 },
        ]
    );
    assert_eq!(
        b.requests
            .get(fresh.record.request_id())
            .await
            .expect("get"),
        Some(fresh.record.clone()),
        "the record as written, committed"
    );
    assert_eq!(
        b.requests
            .get(stored.record.request_id())
            .await
            .expect("get"),
        Some(stored.record.clone()),
        "the stored record is kept"
    );
    for o in &fresh.orders {
        assert_eq!(get(&b, o.order_id()).await, *o);
    }
    assert_eq!(
        b.orders
            .get(stored.orders[0].order_id())
            .await
            .expect("get"),
        None,
        "nothing of a request whose record exists is written"
    );
    assert_eq!(
        b.orders
            .progress(legacy.record.request_id())
            .await
            .expect("progress")
            .total(),
        2
    );
    // Committed: its orders go out at once.
    let claimed = b
        .orders
        .claim(
            &Consumers::agent(&agent_id("whole-b")),
            10,
            at(1),
            &policy(),
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].order_id(), fresh.orders[1].order_id());
}

pub async fn concurrent_submits_each_answer_with_their_own_durable_request(b: Backend) {
    const SUBMITS: usize = 32;
    fleet(&b, "Many", SUBMITS).await;
    let service = b.service(Settings::default());
    let submits: Vec<_> = (0..SUBMITS)
        .map(|i| {
            let service = service.clone();
            tokio::spawn(async move {
                service
                    .submit(SubmitRequest {
                        commands: vec![command(TargetType::Agent, &format!("Many-{i:03}"))],
                        idempotency: None,
                    })
                    .await
            })
        })
        .collect();
    let mut requests = HashSet::new();
    for (i, answer) in submits.into_iter().enumerate() {
        let submitted = answer.await.expect("task").expect("submit");
        assert_eq!(submitted.len(), 1);
        assert_eq!(submitted[0].order_ids.len(), 1);
        assert!(
            requests.insert(submitted[0].request_id),
            "a request of its own"
        );
        let view = service
            .request(&submitted[0].request_id)
            .await
            .expect("request")
            .expect("known");
        assert_eq!(view.record.expect("record").state(), RequestState::Running);
        assert_eq!(view.counts.pending, 1);
        let orders = service
            .poll(&agent_id(&format!("Many-{i:03}")), 10, Duration::ZERO)
            .await
            .expect("poll");
        assert_eq!(
            orders.iter().map(|o| *o.order_id()).collect::<Vec<_>>(),
            submitted[0].order_ids,
            "each agent gets exactly its own order"
        );
    }
}
