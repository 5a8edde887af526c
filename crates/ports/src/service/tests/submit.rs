//! `submit`: validation, expansion against the registry, batched writes, compensation, wake-ups.

use cm_domain::{Agent, ExpansionError, IdempotencyKey, Order, RequestId, TargetType};
use mockall::predicate::eq;

use super::{Calls, Doubles, agent, at, command, group};
use crate::store::{AgentPageRequest, Page, StoreError};
use crate::{Idempotency, Settings, SubmitError, SubmitRequest};

fn request(commands: Vec<cm_domain::Command>) -> SubmitRequest {
    SubmitRequest {
        commands,
        idempotency: None,
    }
}

fn keyed(commands: Vec<cm_domain::Command>) -> SubmitRequest {
    SubmitRequest {
        commands,
        idempotency: Some(Idempotency {
            key: IdempotencyKey::parse("retry-me", "key").unwrap(),
            fingerprint: "body".to_owned(),
        }),
    }
}

fn unavailable() -> StoreError {
    StoreError::Unavailable("connection reset".to_owned())
}

/// A registry double whose group `name` has `n` members `m0000`, `m0001`, …, served page by
/// page like a real adapter; records the page requests.
fn group_of(d: &mut Doubles, name: &'static str, n: usize) -> Calls<AgentPageRequest> {
    let members: Vec<Agent> = (0..n)
        .map(|i| agent(&format!("m{i:04}"), &[name]))
        .collect();
    d.agents
        .expect_count()
        .with(eq(Some(group(name))))
        .return_const(Ok(n as u64));
    let pages = Calls::new();
    let seen = pages.clone();
    d.agents
        .expect_list()
        .withf(move |p| p.group == Some(group(name)))
        .returning(move |page| {
            seen.push(page.clone());
            let start = page.after.as_ref().map_or(0, |after| {
                members.iter().position(|a| a.id() == after).unwrap() + 1
            });
            let items: Vec<Agent> = members[start..].iter().take(page.size).cloned().collect();
            Ok(Page::read(items, page.size, |a| a.id().clone()))
        });
    pages
}

/// An orders double that stores every insert batch (and creates all of it).
fn record_inserts(d: &mut Doubles) -> Calls<Vec<Order>> {
    let batches = Calls::new();
    let seen = batches.clone();
    d.orders.expect_insert_staged().returning(move |orders| {
        seen.push(orders.to_vec());
        Ok(orders.len() as u64)
    });
    batches
}

fn known_agent(d: &mut Doubles, id: &'static str) {
    d.agents
        .expect_get()
        .withf(move |a| a.as_str() == id)
        .returning(move |_| Ok(Some(agent(id, &["Test"]))));
}

fn quiet_notifier(d: &mut Doubles) -> Calls<Vec<String>> {
    let woken = Calls::new();
    let seen = woken.clone();
    d.notifier.expect_notify().returning(move |agents| {
        seen.push(
            agents
                .iter()
                .map(|c| match c {
                    cm_domain::Consumer::Agent(a) => a.as_str().to_owned(),
                    cm_domain::Consumer::Component(c) => format!("server:{c}"),
                })
                .collect(),
        );
        Ok(())
    });
    woken
}

fn nothing_written(d: &mut Doubles) {
    d.orders.expect_insert().never();
    d.orders.expect_insert_staged().never();
    d.orders.expect_delete_request().never();
    d.notifier.expect_notify().never();
}

// ---- validation ------------------------------------------------------------------------------

#[tokio::test]
async fn a_request_without_commands_is_invalid_naming_commands() {
    let mut d = Doubles::new();
    nothing_written(&mut d);
    let err = d
        .manager(Settings::default())
        .submit(request(vec![]))
        .await
        .unwrap_err();
    let SubmitError::Invalid(e) = err else {
        panic!("expected Invalid, got {err:?}");
    };
    assert_eq!(e.field(), "commands");
}

#[tokio::test]
async fn a_request_with_more_commands_than_allowed_is_invalid_naming_commands() {
    let mut d = Doubles::new();
    nothing_written(&mut d);
    d.agents.expect_get().never();
    let settings = Settings {
        max_commands: 2,
        ..Settings::default()
    };
    let commands = vec![command(TargetType::Server, "indexer"); 3];
    let err = d
        .manager(settings)
        .submit(request(commands))
        .await
        .unwrap_err();
    let SubmitError::Invalid(e) = err else {
        panic!("expected Invalid, got {err:?}");
    };
    assert_eq!(e.field(), "commands");
    assert!(e.message().contains('2'), "{}", e.message());
}

// ---- expansion -------------------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_agent_fails_expansion_naming_its_command_and_nothing_is_written() {
    let mut d = Doubles::new();
    known_agent(&mut d, "a1");
    d.agents
        .expect_get()
        .withf(|a| a.as_str() == "ghost")
        .returning(|_| Ok(None));
    nothing_written(&mut d);
    let commands = vec![
        command(TargetType::Server, "indexer"),
        command(TargetType::Agent, "a1"),
        command(TargetType::Agent, "ghost"),
    ];
    let err = d
        .manager(Settings::default())
        .submit(request(commands))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        SubmitError::Expansion(ExpansionError::UnknownAgent {
            index: 2,
            agent: "ghost".to_owned(),
        })
    );
}

#[tokio::test]
async fn an_empty_group_fails_expansion_and_nothing_is_written() {
    let mut d = Doubles::new();
    d.agents.expect_count().return_const(Ok(0));
    d.agents.expect_list().never();
    nothing_written(&mut d);
    let err = d
        .manager(Settings::default())
        .submit(request(vec![command(TargetType::Group, "nobody")]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        SubmitError::Expansion(ExpansionError::EmptyGroup {
            index: 0,
            group: "nobody".to_owned(),
        })
    );
}

#[tokio::test]
async fn a_fan_out_over_the_order_limit_is_refused_before_anything_is_written() {
    let mut d = Doubles::new();
    d.agents
        .expect_count()
        .with(eq(Some(group("big"))))
        .return_const(Ok(60));
    d.agents
        .expect_count()
        .with(eq(Some(group("bigger"))))
        .return_const(Ok(50));
    d.agents.expect_list().never();
    nothing_written(&mut d);
    let settings = Settings {
        max_orders_per_request: 100,
        ..Settings::default()
    };
    let commands = vec![
        command(TargetType::Group, "big"),
        command(TargetType::Group, "bigger"),
    ];
    let err = d
        .manager(settings)
        .submit(request(commands))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        SubmitError::Expansion(ExpansionError::TooManyOrders {
            index: 1,
            count: 110,
            limit: 100,
        })
    );
}

#[tokio::test]
async fn a_registry_failure_while_checking_targets_is_unavailable_and_nothing_is_written() {
    let mut d = Doubles::new();
    d.agents.expect_get().returning(|_| Err(unavailable()));
    nothing_written(&mut d);
    let err = d
        .manager(Settings::default())
        .submit(request(vec![command(TargetType::Agent, "a1")]))
        .await
        .unwrap_err();
    assert_eq!(err, SubmitError::Unavailable(unavailable()));
}

#[tokio::test]
async fn a_group_of_2500_is_read_in_3_pages_and_written_in_3_batches() {
    let mut d = Doubles::new();
    let pages = group_of(&mut d, "big", 2500);
    let batches = record_inserts(&mut d);
    let woken = quiet_notifier(&mut d);
    d.orders.expect_delete_request().never();
    let settings = Settings {
        expansion_page: 1000,
        write_batch: 1000,
        ..Settings::default()
    };
    let out = d
        .manager(settings)
        .submit(request(vec![command(TargetType::Group, "big")]))
        .await
        .unwrap();

    let pages = pages.all();
    assert_eq!(pages.len(), 3);
    assert!(pages.iter().all(|p| p.size == 1000));
    let afters: Vec<Option<String>> = pages
        .iter()
        .map(|p| p.after.as_ref().map(|a| a.as_str().to_owned()))
        .collect();
    assert_eq!(
        afters,
        [None, Some("m0999".to_owned()), Some("m1999".to_owned())]
    );
    let sizes: Vec<usize> = batches.all().iter().map(Vec::len).collect();
    assert_eq!(sizes, [1000, 1000, 500]);

    assert_eq!(out.len(), 1);
    assert_eq!(out[0].order_ids.len(), 2500);
    let written: Vec<_> = batches.all().concat();
    assert!(written.iter().all(|o| o.request_id() == &out[0].request_id));
    assert_eq!(
        written.iter().map(|o| *o.order_id()).collect::<Vec<_>>(),
        out[0].order_ids
    );
    assert_eq!(
        woken.all().len(),
        1,
        "one notification for the whole submit"
    );
}

#[tokio::test]
async fn a_storage_failure_on_the_second_batch_removes_every_request_of_the_submit() {
    let mut d = Doubles::new();
    known_agent(&mut d, "a1");
    group_of(&mut d, "big", 2500);
    let batches = Calls::new();
    let seen = batches.clone();
    let mut calls = 0;
    d.orders.expect_insert_staged().times(2).returning(move |orders| {
        calls += 1;
        seen.push(orders.to_vec());
        if calls == 2 {
            Err(unavailable())
        } else {
            Ok(orders.len() as u64)
        }
    });
    let removed: Calls<RequestId> = Calls::new();
    let seen = removed.clone();
    d.orders.expect_delete_request().returning(move |r| {
        seen.push(*r);
        Ok(1)
    });
    d.notifier.expect_notify().never();
    let settings = Settings {
        expansion_page: 1000,
        write_batch: 1000,
        ..Settings::default()
    };
    let commands = vec![
        command(TargetType::Agent, "a1"),
        command(TargetType::Group, "big"),
    ];
    let err = d
        .manager(settings)
        .submit(request(commands))
        .await
        .unwrap_err();

    assert_eq!(err, SubmitError::Unavailable(unavailable()));
    // The batches hold the agent's order, then the group's: both requests may have orders in
    // storage, and both are removed.
    let mut requests: Vec<RequestId> = batches
        .all()
        .concat()
        .iter()
        .map(|o| *o.request_id())
        .collect();
    requests.dedup();
    assert_eq!(requests.len(), 2);
    assert_eq!(removed.all(), requests);
}

#[tokio::test]
async fn storage_refusing_a_field_is_invalid_input_naming_its_command_and_nothing_stays() {
    let mut d = Doubles::new();
    known_agent(&mut d, "a1");
    known_agent(&mut d, "a2");
    // The backend refuses the second command's order (e.g. arguments its schema cannot hold).
    d.orders.expect_insert_staged().times(1).returning(|orders| {
        Err(StoreError::Rejected {
            request_id: *orders[1].request_id(),
            field: "action.args".to_owned(),
            message: "does not fit".to_owned(),
        })
    });
    let removed: Calls<RequestId> = Calls::new();
    let seen = removed.clone();
    d.orders.expect_delete_request().returning(move |r| {
        seen.push(*r);
        Ok(0)
    });
    d.notifier.expect_notify().never();
    let commands = vec![
        command(TargetType::Agent, "a1"),
        command(TargetType::Agent, "a2"),
    ];
    let err = d
        .manager(Settings::default())
        .submit(request(commands))
        .await
        .unwrap_err();
    let SubmitError::Invalid(e) = err else {
        panic!("a refused field is the caller's input at fault, got {err:?}");
    };
    assert_eq!(e.field(), "commands[1].action.args");
    assert_eq!(removed.all().len(), 2, "both requests' orders are removed");
}

#[tokio::test]
async fn with_an_idempotency_key_a_storage_failure_leaves_the_orders_for_the_retry() {
    let mut d = Doubles::new();
    group_of(&mut d, "big", 2500);
    let mut calls = 0;
    d.orders.expect_insert_staged().times(2).returning(move |orders| {
        calls += 1;
        if calls == 2 {
            Err(unavailable())
        } else {
            Ok(orders.len() as u64)
        }
    });
    d.orders.expect_delete_request().never();
    d.notifier.expect_notify().never();
    let settings = Settings {
        expansion_page: 1000,
        write_batch: 1000,
        ..Settings::default()
    };
    let err = d
        .manager(settings)
        .submit(keyed(vec![command(TargetType::Group, "big")]))
        .await
        .unwrap_err();
    assert_eq!(err, SubmitError::Unavailable(unavailable()));
}

#[tokio::test]
async fn a_registry_failure_midway_through_a_group_removes_the_request() {
    let mut d = Doubles::new();
    d.agents.expect_count().return_const(Ok(2500));
    let mut calls = 0;
    d.agents.expect_list().returning(move |page| {
        calls += 1;
        if calls > 1 {
            return Err(unavailable());
        }
        let items: Vec<Agent> = (0..page.size)
            .map(|i| agent(&format!("m{i:04}"), &["big"]))
            .collect();
        let next = items.last().map(|a| a.id().clone());
        Ok(Page { items, next })
    });
    let batches = record_inserts(&mut d);
    let removed: Calls<RequestId> = Calls::new();
    let seen = removed.clone();
    d.orders
        .expect_delete_request()
        .times(1)
        .returning(move |r| {
            seen.push(*r);
            Ok(1000)
        });
    d.notifier.expect_notify().never();
    let settings = Settings {
        expansion_page: 1000,
        write_batch: 1000,
        ..Settings::default()
    };
    let err = d
        .manager(settings)
        .submit(request(vec![command(TargetType::Group, "big")]))
        .await
        .unwrap_err();
    assert_eq!(err, SubmitError::Unavailable(unavailable()));
    assert_eq!(removed.all(), [*batches.all()[0][0].request_id()]);
}

#[tokio::test]
async fn a_zero_expansion_page_still_expands_the_whole_group() {
    let mut d = Doubles::new();
    group_of(&mut d, "small", 3);
    let batches = record_inserts(&mut d);
    quiet_notifier(&mut d);
    let settings = Settings {
        expansion_page: 0,
        ..Settings::default()
    };
    let out = d
        .manager(settings)
        .submit(request(vec![command(TargetType::Group, "small")]))
        .await
        .unwrap();
    assert_eq!(out[0].order_ids.len(), 3);
    assert_eq!(batches.all().concat().len(), 3);
}

// ---- after the write -------------------------------------------------------------------------

#[tokio::test]
async fn the_consumers_notified_after_a_submit_are_exactly_the_consumers_of_its_orders() {
    let mut d = Doubles::new();
    known_agent(&mut d, "a1");
    d.agents.expect_count().return_const(Ok(2));
    d.agents.expect_list().returning(|_| {
        Ok(Page {
            items: vec![agent("g1", &["G"]), agent("g2", &["G"])],
            next: None,
        })
    });
    let batches = record_inserts(&mut d);
    let woken = quiet_notifier(&mut d);
    let commands = vec![
        command(TargetType::Agent, "a1"),
        command(TargetType::Server, "indexer"),
        command(TargetType::Group, "G"),
    ];
    let out = d
        .manager(Settings::default())
        .submit(request(commands))
        .await
        .unwrap();

    assert_eq!(out.len(), 3, "one request per command");
    assert_eq!(
        out.iter().map(|r| r.order_ids.len()).collect::<Vec<_>>(),
        [1, 1, 2]
    );
    let written = batches.all().concat();
    let mut order_consumers: Vec<String> = written
        .iter()
        .map(|o| match o.agent_id() {
            Some(a) => a.as_str().to_owned(),
            None => format!("server:{}", o.target().id()),
        })
        .collect();
    order_consumers.sort();
    let calls = woken.all();
    assert_eq!(calls.len(), 1);
    let mut notified = calls[0].clone();
    notified.sort();
    assert_eq!(notified, order_consumers);
    assert_eq!(notified, ["a1", "g1", "g2", "server:indexer"]);
}

#[tokio::test]
async fn a_notifier_failure_does_not_fail_the_submit() {
    let mut d = Doubles::new();
    known_agent(&mut d, "a1");
    record_inserts(&mut d);
    d.notifier
        .expect_notify()
        .times(1)
        .returning(|_| Err(unavailable()));
    d.orders.expect_delete_request().never();
    let out = d
        .manager(Settings::default())
        .submit(request(vec![command(TargetType::Agent, "a1")]))
        .await
        .unwrap();
    assert_eq!(out[0].order_ids.len(), 1);
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_give_the_same_ids() {
    let run = async || {
        let mut d = Doubles::new();
        known_agent(&mut d, "a1");
        record_inserts(&mut d);
        quiet_notifier(&mut d);
        d.manager(Settings::default())
            .submit(keyed(vec![command(TargetType::Agent, "a1")]))
            .await
            .unwrap()
    };
    assert_eq!(run().await, run().await);
}

// ---- schedules (docs/rollout.md) -------------------------------------------------------------

fn scheduled(
    kind: TargetType,
    id: &str,
    start_at: Option<&str>,
    rollout: i64,
) -> cm_domain::Command {
    command(kind, id).with_schedule(cm_domain::Schedule::parse(start_at, Some(rollout)).unwrap())
}

#[tokio::test]
async fn a_scheduled_group_spreads_not_before_evenly_over_the_window_across_pages() {
    let mut d = Doubles::new();
    group_of(&mut d, "big", 2500);
    let batches = record_inserts(&mut d);
    quiet_notifier(&mut d);
    let settings = Settings {
        expansion_page: 1000,
        write_batch: 700,
        ..Settings::default()
    };
    // t0 is 2026-01-01T00:00:00Z; start one minute later, spread over 25 s.
    let command = scheduled(TargetType::Group, "big", Some("2026-01-01T00:01:00Z"), 25);
    d.manager(settings)
        .submit(request(vec![command]))
        .await
        .unwrap();
    let written: Vec<Order> = batches.all().concat();
    assert_eq!(written.len(), 2500);
    let starts: Vec<_> = written.iter().map(|o| o.not_before().unwrap()).collect();
    assert_eq!(starts[0], at(60), "the first at the start");
    assert_eq!(
        starts[2499],
        at(60) + chrono::Duration::milliseconds(24_990),
        "the last before the end of the window"
    );
    assert_eq!(starts[1000], at(70), "slots continue across pages");
    assert!(
        starts.windows(2).all(|w| w[0] <= w[1]),
        "in expansion order"
    );
    for o in &written {
        assert_eq!(
            o.delivery_deadline(),
            o.not_before().unwrap() + chrono::Duration::seconds(100),
            "the deadline counts from not_before"
        );
    }
}

#[tokio::test]
async fn an_agent_command_starts_at_its_start_and_a_past_start_is_now() {
    let mut d = Doubles::new();
    known_agent(&mut d, "a1");
    let batches = record_inserts(&mut d);
    quiet_notifier(&mut d);
    let commands = vec![
        scheduled(TargetType::Agent, "a1", Some("2026-01-01T02:00:00Z"), 600),
        scheduled(TargetType::Agent, "a1", Some("2025-06-01T00:00:00Z"), 600),
    ];
    d.manager(Settings::default())
        .submit(request(commands))
        .await
        .unwrap();
    let written: Vec<Order> = batches.all().concat();
    assert_eq!(written[0].not_before(), Some(at(7200)));
    assert_eq!(written[1].not_before(), None, "due at once");
    assert_eq!(written[1].available_from(), at(0));
}

#[tokio::test]
async fn a_start_beyond_the_horizon_is_too_far_ahead_naming_its_command_and_nothing_is_read() {
    let mut d = Doubles::new();
    d.agents.expect_get().never();
    d.agents.expect_count().never();
    nothing_written(&mut d);
    let settings = Settings {
        max_schedule_ahead: std::time::Duration::from_secs(3600),
        ..Settings::default()
    };
    let commands = vec![
        scheduled(TargetType::Agent, "a1", Some("2026-01-01T01:00:00Z"), 0),
        scheduled(TargetType::Agent, "a1", Some("2026-01-01T01:00:00.001Z"), 0),
    ];
    let err = d
        .manager(settings)
        .submit(request(commands))
        .await
        .unwrap_err();
    let SubmitError::TooFarAhead(e) = err else {
        panic!("expected TooFarAhead, got {err:?}");
    };
    assert_eq!(e.field(), "commands[1].schedule.start_at");
    assert!(e.message().contains("3600"), "{}", e.message());
}
