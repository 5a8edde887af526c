//! The conformance cases. Each takes a fresh [`Backend`] and panics on a broken contract.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cm_domain::{
    Action, CANCELLED, Command, ComponentName, Consumer, DeliveryPolicy, EXPIRED, KeyHash,
    NO_RESULT, Order, OrderId, PendingEnd, Report, ReportOutcome, ReportStatus, RequestId, Source,
    Status, Target, TargetType, Timeout,
};
use serde_json::json;
use uuid::Uuid;

use super::{Backend, OrderSpec, agent, agent_id, at, group};
use crate::store::{
    AgentPageRequest, Consumers, OrderCursor, OrderFilter, OrderPageRequest, ReplaceError,
    RetentionMode, Upserted,
};
use crate::{Clock, Idempotency, Reporter, Settings, SubmitRequest};

mod records;
pub use records::*;

fn policy() -> DeliveryPolicy {
    DeliveryPolicy {
        redeliver_after: Some(chrono::Duration::seconds(60)),
        result_timeout: Some(chrono::Duration::seconds(600)),
    }
}

fn ids(orders: &[Order]) -> Vec<OrderId> {
    orders.iter().map(|o| *o.order_id()).collect()
}

async fn insert(b: &Backend, orders: &[Order]) {
    let created = b.orders.insert(orders).await.expect("insert");
    assert_eq!(created, orders.len() as u64, "every new order is created");
}

async fn get(b: &Backend, id: &OrderId) -> Order {
    b.orders.get(id).await.expect("get").expect("order exists")
}

/// Delivers `order` through a claim at `now` and returns it as stored.
async fn deliver(b: &Backend, order: &Order, now: DateTime<Utc>) -> Order {
    let agent = order.agent_id().expect("agent order").clone();
    let got = b
        .orders
        .claim(&Consumers::agent(&agent), 1000, now, &policy())
        .await
        .expect("claim");
    assert!(
        got.iter().any(|o| o.order_id() == order.order_id()),
        "order was claimable"
    );
    get(b, order.order_id()).await
}

async fn all_matching(b: &Backend, filter: &OrderFilter, size: usize) -> Vec<Order> {
    let mut out = Vec::new();
    let mut page = OrderPageRequest { size, after: None };
    loop {
        let p = b.orders.query(filter, &page).await.expect("query");
        assert!(p.items.len() <= size, "a page never exceeds its size");
        out.extend(p.items);
        match p.next {
            Some(next) => page.after = Some(next),
            None => return out,
        }
    }
}

// ---- writing and reading ---------------------------------------------------------------------

pub async fn inserted_orders_read_back_unchanged(b: Backend) {
    let orders = OrderSpec::agent("a1").many(3);
    insert(&b, &orders).await;
    for o in &orders {
        assert_eq!(&get(&b, o.order_id()).await, o);
    }
}

pub async fn unknown_order_is_none(b: Backend) {
    let missing = OrderId::from_uuid(Uuid::now_v7());
    assert_eq!(b.orders.get(&missing).await.expect("get"), None);
}

pub async fn inserting_the_same_orders_twice_creates_them_once(b: Backend) {
    let spec = OrderSpec::agent("a1");
    let orders = spec.many(50);
    insert(&b, &orders).await;
    assert_eq!(b.orders.insert(&orders).await.expect("second insert"), 0);
    let counts = b.orders.progress(&spec.request).await.expect("progress");
    assert_eq!(counts.total(), 50);
    assert_eq!(counts.pending, 50);
}

pub async fn a_batch_mixing_known_and_new_orders_creates_only_the_new_ones(b: Backend) {
    let spec = OrderSpec::agent("a1");
    let first = spec.many(20);
    insert(&b, &first).await;
    // A delivered order must not be reset to pending by a re-insert of its original form.
    let delivered = deliver(&b, &first[0], at(1)).await;
    let mut mixed = first.clone();
    mixed.extend(spec.many(30));
    assert_eq!(b.orders.insert(&mixed).await.expect("insert"), 30);
    assert_eq!(
        b.orders
            .progress(&spec.request)
            .await
            .expect("progress")
            .total(),
        50
    );
    assert_eq!(get(&b, first[0].order_id()).await, delivered);
}

pub async fn documents_keep_their_arguments_verbatim(b: Backend) {
    let args = json!({
        "groups": ["Test", "Другая", "グループ"],
        "nested": {"deep": {"n": 1.5, "flag": true, "none": null}},
        "list": [{"index": "wazuh-alerts", "offset": 42}],
        "empty": {}
    });
    let agent_order = OrderSpec::agent("a1").action("set-group", args).build();
    let server_order = OrderSpec::server("indexer-connector")
        .action("update", json!({"index": "wazuh-states", "offset": 9}))
        .build();
    insert(&b, &[agent_order.clone(), server_order.clone()]).await;
    assert_eq!(get(&b, agent_order.order_id()).await, agent_order);
    let stored = get(&b, server_order.order_id()).await;
    assert_eq!(stored, server_order);
    assert!(stored.agent().is_none());
}

/// `action.args` as an array (Wazuh's own examples: the absolute path of the executable and its
/// arguments) or an object: stored, delivered and read back verbatim, whatever the values, and
/// however they differ from order to order.
pub async fn array_and_object_args_are_kept_verbatim_on_every_backend(b: Backend) {
    let shapes = [
        json!(["/path/to/executable/arg8"]),
        json!(["/bin/run", "-v", 3, {"k": [true, null]}]),
        json!({"offset": 1234}),
        json!({"offset": "not a number"}),
        json!([]),
    ];
    let orders: Vec<Order> = shapes
        .iter()
        .map(|args| OrderSpec::agent("a1").action("run", args.clone()).build())
        .collect();
    insert(&b, &orders).await;
    let claimed = b
        .orders
        .claim(&Consumers::agent(&agent_id("a1")), 10, at(1), &policy())
        .await
        .expect("claim");
    assert_eq!(claimed.len(), shapes.len());
    for o in &orders {
        let delivered = claimed
            .iter()
            .find(|c| c.order_id() == o.order_id())
            .expect("delivered");
        assert_eq!(delivered.action().args(), o.action().args());
        assert_eq!(
            get(&b, o.order_id()).await.action().args(),
            o.action().args()
        );
    }
}

// ---- claiming ----------------------------------------------------------------------------

pub async fn claim_marks_pending_orders_sent_and_returns_them(b: Backend) {
    let orders = OrderSpec::agent("a1").many(3);
    insert(&b, &orders).await;
    let got = b
        .orders
        .claim(&Consumers::agent(&agent_id("a1")), 10, at(5), &policy())
        .await
        .expect("claim");
    assert_eq!(got.len(), 3);
    for o in &got {
        assert_eq!(o.status(), Status::Sent);
        assert_eq!(o.sent_at(), Some(at(5)));
        assert_eq!(o.deliveries(), 1);
        assert_eq!(
            &get(&b, o.order_id()).await,
            o,
            "returned state is the stored state"
        );
    }
    let again = b
        .orders
        .claim(&Consumers::agent(&agent_id("a1")), 10, at(6), &policy())
        .await
        .expect("claim");
    assert!(
        again.is_empty(),
        "sent orders are not handed out again before redelivery"
    );
}

pub async fn claim_returns_at_most_limit_orders_oldest_first(b: Backend) {
    let spec = OrderSpec::agent("a1");
    let orders: Vec<Order> = (0..10)
        .rev()
        .map(|i| spec.clone().created(at(i)).build())
        .collect();
    insert(&b, &orders).await;
    let got = b
        .orders
        .claim(&Consumers::agent(&agent_id("a1")), 4, at(20), &policy())
        .await
        .expect("claim");
    let created: Vec<_> = got.iter().map(Order::created_at).collect();
    assert_eq!(created, vec![at(0), at(1), at(2), at(3)]);
}

pub async fn claim_returns_only_the_agents_own_orders(b: Backend) {
    let mine = OrderSpec::agent("a1").many(2);
    let theirs = OrderSpec::agent("a2").many(2);
    let server = OrderSpec::server("a1").build();
    insert(&b, &[mine.clone(), theirs.clone(), vec![server]].concat()).await;
    let got = b
        .orders
        .claim(&Consumers::agent(&agent_id("a1")), 10, at(1), &policy())
        .await
        .expect("claim");
    let mut got_ids = ids(&got);
    got_ids.sort();
    let mut want = ids(&mine);
    want.sort();
    assert_eq!(got_ids, want);
    for o in &theirs {
        assert_eq!(get(&b, o.order_id()).await.status(), Status::Pending);
    }
}

pub async fn claim_skips_orders_past_their_deadline(b: Backend) {
    let short = OrderSpec::agent("a1").timeout(10).build();
    let long = OrderSpec::agent("a1").timeout(100).build();
    insert(&b, &[short.clone(), long.clone()]).await;
    let got = b
        .orders
        .claim(&Consumers::agent(&agent_id("a1")), 10, at(10), &policy())
        .await
        .expect("claim");
    assert_eq!(ids(&got), vec![*long.order_id()]);
    assert_eq!(get(&b, short.order_id()).await.status(), Status::Pending);
}

pub async fn claim_skips_orders_before_their_not_before(b: Backend) {
    let later = OrderSpec::agent("a1").not_before(at(30)).build();
    insert(&b, std::slice::from_ref(&later)).await;
    assert!(
        b.orders
            .claim(&Consumers::agent(&agent_id("a1")), 10, at(29), &policy())
            .await
            .expect("claim")
            .is_empty()
    );
    let got = b
        .orders
        .claim(&Consumers::agent(&agent_id("a1")), 10, at(30), &policy())
        .await
        .expect("claim");
    assert_eq!(ids(&got), vec![*later.order_id()]);
}

pub async fn claim_redelivers_unreported_orders_after_redeliver_after(b: Backend) {
    let o = OrderSpec::agent("a1").build();
    insert(&b, std::slice::from_ref(&o)).await;
    deliver(&b, &o, at(1)).await;
    assert!(
        b.orders
            .claim(&Consumers::agent(&agent_id("a1")), 10, at(60), &policy())
            .await
            .expect("claim")
            .is_empty()
    );
    let again = b
        .orders
        .claim(&Consumers::agent(&agent_id("a1")), 10, at(61), &policy())
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].deliveries(), 2);
    assert_eq!(again[0].sent_at(), Some(at(61)));
}

pub async fn claim_never_redelivers_orders_in_progress(b: Backend) {
    let o = OrderSpec::agent("a1").build();
    insert(&b, std::slice::from_ref(&o)).await;
    let sent = deliver(&b, &o, at(1)).await;
    let report = Report::new(ReportStatus::InProgress, 0, "downloading", "").expect("report");
    let ReportOutcome::Applied(busy) = sent.report(&report, at(2)).expect("report") else {
        panic!("report not applied");
    };
    b.orders.replace(&sent, &busy).await.expect("replace");
    assert!(
        b.orders
            .claim(&Consumers::agent(&agent_id("a1")), 10, at(500), &policy())
            .await
            .expect("claim")
            .is_empty()
    );
}

pub async fn eight_concurrent_pollers_never_receive_the_same_order_twice(b: Backend) {
    let orders = OrderSpec::agent("a1").timeout(1000).many(400);
    insert(&b, &orders).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = Arc::clone(&b.orders);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = store
                    .claim(&Consumers::agent(&agent_id("a1")), 7, at(1), &policy())
                    .await
                    .expect("claim");
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.iter().map(|o| *o.order_id()));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("poller"));
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "an order was handed to two pollers"
    );
    assert_eq!(all.len(), 400, "every order was handed out");
}

pub async fn an_order_racing_between_expiry_and_delivery_ends_in_exactly_one_state(b: Backend) {
    for round in 0..3 {
        let spec = OrderSpec::agent("a1").timeout(10);
        let orders = spec.many(150);
        insert(&b, &orders).await;
        let store = Arc::clone(&b.orders);
        let pollers: Vec<_> = (0..4)
            .map(|_| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        // Still deliverable at +9s.
                        let batch = store
                            .claim(&Consumers::agent(&agent_id("a1")), 5, at(9), &policy())
                            .await
                            .expect("claim");
                        if batch.is_empty() {
                            return got;
                        }
                        got.extend(batch.iter().map(|o| *o.order_id()));
                    }
                })
            })
            .collect();
        let expirer = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut n = 0;
                loop {
                    // Already overdue at +10s.
                    let batch = store.expire_due(at(10), 5).await.expect("expire");
                    n += batch.changed;
                    if batch.examined == 0 {
                        return n;
                    }
                }
            })
        };
        let mut delivered = HashSet::new();
        for p in pollers {
            for id in p.await.expect("poller") {
                assert!(delivered.insert(id), "round {round}: delivered twice");
            }
        }
        let expired = expirer.await.expect("expirer");
        assert_eq!(
            delivered.len() + expired,
            150,
            "round {round}: each order moved exactly once"
        );
        for o in &orders {
            let stored = get(&b, o.order_id()).await;
            if delivered.contains(o.order_id()) {
                assert_eq!(stored.status(), Status::Sent, "round {round}");
            } else {
                assert_eq!(stored.status(), Status::Failure, "round {round}");
                assert_eq!(stored.result().expect("result").message(), EXPIRED);
            }
        }
        let counts = b.orders.progress(&spec.request).await.expect("progress");
        assert_eq!((counts.sent + counts.failure, counts.pending), (150, 0));
    }
}

pub async fn next_due_is_the_earliest_scheduled_start_or_redelivery(b: Backend) {
    let a1 = agent_id("a1");
    assert_eq!(
        b.orders
            .next_due(&Consumers::agent(&a1), at(0))
            .await
            .expect("next_due"),
        None
    );
    let now_ready = OrderSpec::agent("a1").build();
    let later = OrderSpec::agent("a1")
        .timeout(1000)
        .not_before(at(300))
        .build();
    let sooner = OrderSpec::agent("a1")
        .timeout(1000)
        .not_before(at(200))
        .build();
    let other_agent = OrderSpec::agent("a2").not_before(at(5)).build();
    insert(&b, &[now_ready.clone(), later, sooner, other_agent]).await;
    // A pending order already available is not "due later".
    assert_eq!(
        b.orders
            .next_due(&Consumers::agent(&a1), at(0))
            .await
            .expect("next_due"),
        Some(at(200))
    );
    // Once delivered (at +1 s, policy: redeliver after 60 s) its redelivery is the next event.
    deliver(&b, &now_ready, at(1)).await;
    assert_eq!(
        b.orders
            .next_due(&Consumers::agent(&a1), at(1))
            .await
            .expect("next_due"),
        Some(at(61))
    );
    assert_eq!(
        b.orders
            .next_due(&Consumers::agent(&a1), at(100))
            .await
            .expect("next_due"),
        Some(at(200))
    );
    assert_eq!(
        b.orders
            .next_due(&Consumers::agent(&a1), at(250))
            .await
            .expect("next_due"),
        Some(at(300))
    );
    assert_eq!(
        b.orders
            .next_due(&Consumers::agent(&a1), at(300))
            .await
            .expect("next_due"),
        None
    );
}

pub async fn first_due_answers_each_agent_now_when_due_or_when_next_due(b: Backend) {
    let look = |agents: Vec<cm_domain::AgentId>, now| {
        let b = b.clone();
        async move {
            let answer = b.orders.first_due(&agents, now).await.expect("first_due");
            assert_eq!(answer.len(), agents.len(), "one answer per agent, in order");
            answer
        }
    };
    let [a1, a2, a3, a4, a5] = ["a1", "a2", "a3", "a4", "a5"].map(agent_id);
    assert_eq!(
        look(vec![a1.clone(), a2.clone()], at(0)).await,
        vec![None, None]
    );
    assert_eq!(
        look(Vec::new(), at(0)).await,
        Vec::<Option<DateTime<Utc>>>::new()
    );
    let ready = OrderSpec::agent("a1").build();
    let scheduled = OrderSpec::agent("a2")
        .timeout(1000)
        .not_before(at(200))
        .build();
    let held = OrderSpec::agent("a3").position(1, true).build();
    let sent = OrderSpec::agent("a4").build();
    insert(&b, &[ready.clone(), scheduled, held, sent.clone()]).await;
    // Delivered at +1 s (policy: redeliver after 60 s).
    deliver(&b, &sent, at(1)).await;
    let all = vec![
        a1.clone(),
        a2.clone(),
        a3.clone(),
        a4.clone(),
        a5.clone(),
        a1.clone(),
    ];
    let now = look(all.clone(), at(10)).await;
    assert!(
        now[0].is_some_and(|t| t <= at(10)),
        "a deliverable order: {now:?}"
    );
    assert_eq!(now[5], now[0], "the same agent twice, the same answer");
    // Not yet deliverable: when it becomes so by itself, never later.
    assert_eq!(now[1], Some(at(200)), "a scheduled start: {now:?}");
    assert_eq!(now[2], None, "a held order waits for its release: {now:?}");
    assert_eq!(now[3], Some(at(61)), "a redelivery: {now:?}");
    assert_eq!(now[4], None, "no orders: {now:?}");
    let later = look(all.clone(), at(100)).await;
    assert!(
        later[3].is_some_and(|t| t <= at(100)),
        "redelivery due: {later:?}"
    );
    let later = look(all, at(250)).await;
    assert!(
        later[1].is_some_and(|t| t <= at(250)),
        "start due: {later:?}"
    );
    // A finished order is nobody's due.
    b.orders
        .end_pending(ready.request_id(), PendingEnd::Cancelled, at(300), 10)
        .await
        .expect("end_pending");
    assert_eq!(look(vec![a1, a5], at(300)).await, vec![None, None]);
}

pub async fn cancel_pending_cancels_only_the_pending_orders_of_the_request(b: Backend) {
    let request = RequestId::from_uuid(Uuid::now_v7());
    let orders: Vec<Order> = (0..25)
        .map(|i| OrderSpec::agent(&format!("a{i}")).request(request).build())
        .collect();
    let other = OrderSpec::agent("zz").build();
    insert(&b, &[orders.clone(), vec![other.clone()]].concat()).await;
    let sent = deliver(&b, &orders[0], at(1)).await;
    let mut cancelled = 0;
    loop {
        let batch = b
            .orders
            .end_pending(&request, PendingEnd::Cancelled, at(2), 10)
            .await
            .expect("cancel");
        assert!(batch.examined <= 10);
        cancelled += batch.changed;
        if batch.examined == 0 {
            break;
        }
    }
    assert_eq!(cancelled, 24);
    for o in &orders[1..] {
        assert_eq!(
            get(&b, o.order_id()).await,
            o.cancel(at(2)).expect("cancellable")
        );
    }
    assert_eq!(
        get(&b, orders[0].order_id()).await,
        sent,
        "a delivered order is not cancelled"
    );
    assert_eq!(
        get(&b, other.order_id()).await.status(),
        Status::Pending,
        "other requests untouched"
    );
    let counts = b.orders.progress(&request).await.expect("progress");
    assert_eq!((counts.sent, counts.failure), (1, 24));
    let stored = get(&b, orders[1].order_id()).await;
    assert_eq!(stored.result().expect("result").message(), CANCELLED);
}

// ---- compare-and-set -------------------------------------------------------------------------

pub async fn replace_applies_when_the_order_is_unchanged(b: Backend) {
    let o = OrderSpec::agent("a1").build();
    insert(&b, std::slice::from_ref(&o)).await;
    let cancelled = o.cancel(at(1)).expect("cancel");
    b.orders.replace(&o, &cancelled).await.expect("replace");
    assert_eq!(get(&b, o.order_id()).await, cancelled);
}

pub async fn replace_conflicts_when_the_order_changed_meanwhile(b: Backend) {
    let o = OrderSpec::agent("a1").build();
    insert(&b, std::slice::from_ref(&o)).await;
    let sent = deliver(&b, &o, at(1)).await;
    let cancelled = o.cancel(at(2)).expect("cancel");
    assert_eq!(
        b.orders.replace(&o, &cancelled).await,
        Err(ReplaceError::Conflict)
    );
    assert_eq!(get(&b, o.order_id()).await, sent);

    // A redelivery changes a sent order too: a report computed from the first delivery's
    // state must not overwrite the second delivery.
    let again = b
        .orders
        .claim(&Consumers::agent(&agent_id("a1")), 1, at(100), &policy())
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    let r = Report::new(ReportStatus::Success, 0, "ok", "").expect("report");
    let ReportOutcome::Applied(done) = sent.report(&r, at(101)).expect("report") else {
        panic!()
    };
    assert_eq!(
        b.orders.replace(&sent, &done).await,
        Err(ReplaceError::Conflict)
    );
}

pub async fn replace_of_an_unknown_order_is_not_found(b: Backend) {
    let o = OrderSpec::agent("a1").build();
    let cancelled = o.cancel(at(1)).expect("cancel");
    assert_eq!(
        b.orders.replace(&o, &cancelled).await,
        Err(ReplaceError::NotFound)
    );
}

pub async fn concurrent_replacements_from_one_state_let_exactly_one_win(b: Backend) {
    let orders: Vec<Order> = (0..20)
        .map(|i| OrderSpec::agent(&format!("a{i}")).build())
        .collect();
    insert(&b, &orders).await;
    for o in &orders {
        let sent = deliver(&b, o, at(1)).await;
        let mut tasks = Vec::new();
        for code in 0..6 {
            let store = Arc::clone(&b.orders);
            let sent = sent.clone();
            tasks.push(tokio::spawn(async move {
                let status = if code % 2 == 0 {
                    ReportStatus::Success
                } else {
                    ReportStatus::Failure
                };
                let r = Report::new(status, code, "", "").expect("report");
                let ReportOutcome::Applied(next) = sent.report(&r, at(2)).expect("report") else {
                    panic!()
                };
                store.replace(&sent, &next).await.map(|()| next)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.expect("task") {
                Ok(next) => winners.push(next),
                Err(ReplaceError::Conflict) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one concurrent replacement wins");
        assert_eq!(get(&b, o.order_id()).await, winners[0]);
    }
}

// ---- maintenance -----------------------------------------------------------------------------

pub async fn expire_due_fails_only_overdue_pending_orders(b: Backend) {
    let overdue = OrderSpec::agent("a1").timeout(10).many(3);
    let in_time = OrderSpec::agent("a1").timeout(100).build();
    let delivered = OrderSpec::agent("a2").timeout(10).build();
    insert(
        &b,
        &[overdue.clone(), vec![in_time.clone(), delivered.clone()]].concat(),
    )
    .await;
    let sent = deliver(&b, &delivered, at(1)).await;
    let batch = b.orders.expire_due(at(10), 100).await.expect("expire");
    assert_eq!(batch.changed, 3);
    for o in &overdue {
        let stored = get(&b, o.order_id()).await;
        assert_eq!(
            stored,
            o.expire(at(10)).expect("expirable"),
            "expired exactly as the domain says"
        );
    }
    assert_eq!(get(&b, in_time.order_id()).await.status(), Status::Pending);
    assert_eq!(get(&b, delivered.order_id()).await, sent);
    assert_eq!(
        b.orders
            .expire_due(at(10), 100)
            .await
            .expect("expire")
            .changed,
        0
    );
}

pub async fn expire_due_drains_a_backlog_in_batches_of_the_limit(b: Backend) {
    let spec = OrderSpec::agent("a1").timeout(5);
    insert(&b, &spec.many(35)).await;
    let mut total = 0;
    let mut calls = 0;
    loop {
        let batch = b.orders.expire_due(at(6), 10).await.expect("expire");
        assert!(batch.examined <= 10 && batch.changed <= batch.examined);
        total += batch.changed;
        calls += 1;
        if batch.examined == 0 {
            break;
        }
        assert!(calls < 10, "the backlog drains");
    }
    assert_eq!(total, 35);
    assert_eq!(
        b.orders
            .progress(&spec.request)
            .await
            .expect("progress")
            .failure,
        35
    );
}

pub async fn give_up_fails_delivered_orders_past_their_result_deadline(b: Backend) {
    let o = OrderSpec::agent("a1").build();
    let fresh = OrderSpec::agent("a2").build();
    insert(&b, &[o.clone(), fresh.clone()]).await;
    deliver(&b, &o, at(1)).await;
    deliver(&b, &fresh, at(50)).await;
    // policy(): result_timeout 600 s from the (last) delivery.
    assert_eq!(
        b.orders
            .give_up_unreported(at(600), 100)
            .await
            .expect("give up")
            .changed,
        0
    );
    assert_eq!(
        b.orders
            .give_up_unreported(at(601), 100)
            .await
            .expect("give up")
            .changed,
        1
    );
    let stored = get(&b, o.order_id()).await;
    assert_eq!(stored.status(), Status::Failure);
    assert_eq!(stored.result().expect("result").message(), NO_RESULT);
    assert_eq!(get(&b, fresh.order_id()).await.status(), Status::Sent);
}

// ---- querying --------------------------------------------------------------------------------

pub async fn query_filters_by_every_field(b: Backend) {
    let req = RequestId::from_uuid(Uuid::now_v7());
    let a1 = OrderSpec::agent("a1").request(req).created(at(1)).build();
    let a2 = OrderSpec::agent("a2")
        .action("update", json!({}))
        .created(at(2))
        .build();
    let srv = OrderSpec::server("indexer").created(at(3)).build();
    insert(&b, &[a1.clone(), a2.clone(), srv.clone()]).await;
    let sent = deliver(&b, &a2, at(4)).await;
    let one = |f: OrderFilter, want: Vec<&Order>| {
        let b = b.clone();
        let want: Vec<OrderId> = want.into_iter().map(|o| *o.order_id()).collect();
        async move {
            let got = all_matching(&b, &f, 10).await;
            assert_eq!(ids(&got), want, "{f:?}");
            for o in &got {
                assert!(f.matches(o));
            }
        }
    };
    one(
        OrderFilter {
            status: Some(Status::Sent),
            ..Default::default()
        },
        vec![&sent],
    )
    .await;
    one(
        OrderFilter {
            agent_id: Some(agent_id("a1")),
            ..Default::default()
        },
        vec![&a1],
    )
    .await;
    one(
        OrderFilter {
            target_type: Some(TargetType::Server),
            ..Default::default()
        },
        vec![&srv],
    )
    .await;
    one(
        OrderFilter {
            target_id: Some("a2".into()),
            ..Default::default()
        },
        vec![&a2],
    )
    .await;
    one(
        OrderFilter {
            request_id: Some(req),
            ..Default::default()
        },
        vec![&a1],
    )
    .await;
    one(
        OrderFilter {
            action: Some("update".into()),
            ..Default::default()
        },
        vec![&a2],
    )
    .await;
    one(
        OrderFilter {
            status: Some(Status::Pending),
            target_type: Some(TargetType::Agent),
            ..Default::default()
        },
        vec![&a1],
    )
    .await;
    one(OrderFilter::default(), vec![&a1, &a2, &srv]).await;
}

pub async fn query_time_bounds_are_since_inclusive_until_exclusive(b: Backend) {
    let orders: Vec<Order> = (0..5)
        .map(|i| OrderSpec::agent("a1").created(at(i * 10)).build())
        .collect();
    insert(&b, &orders).await;
    let f = OrderFilter {
        since: Some(at(10)),
        until: Some(at(30)),
        ..Default::default()
    };
    let got = all_matching(&b, &f, 10).await;
    assert_eq!(ids(&got), ids(&orders[1..3]));
}

pub async fn query_cursor_pages_through_5000_orders_without_loss_or_repetition(b: Backend) {
    // Many orders share a millisecond, so the cursor must break ties by order id.
    let spec = OrderSpec::agent("a1");
    let orders: Vec<Order> = (0..5000)
        .map(|i| {
            spec.clone()
                .created(at(0) + chrono::Duration::milliseconds(i / 7))
                .build()
        })
        .collect();
    for chunk in orders.chunks(1000) {
        insert(&b, chunk).await;
    }
    let filter = OrderFilter {
        agent_id: Some(agent_id("a1")),
        ..Default::default()
    };
    let got = all_matching(&b, &filter, 333).await;
    assert_eq!(got.len(), 5000);
    let unique: HashSet<_> = got.iter().map(|o| *o.order_id()).collect();
    assert_eq!(unique.len(), 5000, "no order repeated");
    let keys: Vec<OrderCursor> = got.iter().map(OrderCursor::after).collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "pages come in (@timestamp, order_id) order"
    );
    // A page size that divides the total exactly still ends.
    assert_eq!(all_matching(&b, &filter, 1000).await.len(), 5000);
}

pub async fn progress_counts_orders_per_status(b: Backend) {
    let request = RequestId::from_uuid(Uuid::now_v7());
    let orders: Vec<Order> = (0..6)
        .map(|i| {
            OrderSpec::agent(&format!("a{i}"))
                .timeout(50)
                .request(request)
                .build()
        })
        .collect();
    insert(&b, &orders).await;
    let busy = Report::new(ReportStatus::InProgress, 0, "", "").expect("report");
    let done = Report::new(ReportStatus::Success, 0, "", "").expect("report");
    for (o, report) in orders[..3].iter().zip([&busy, &done, &done]) {
        let sent = deliver(&b, o, at(1)).await;
        let ReportOutcome::Applied(next) = sent.report(report, at(3)).expect("report") else {
            panic!()
        };
        b.orders.replace(&sent, &next).await.expect("replace");
    }
    b.orders.expire_due(at(50), 100).await.expect("expire");
    let counts = b.orders.progress(&request).await.expect("progress");
    assert_eq!(
        (
            counts.pending,
            counts.sent,
            counts.in_progress,
            counts.success,
            counts.failure
        ),
        (0, 0, 1, 2, 3)
    );
}

pub async fn progress_of_an_unknown_request_is_zero(b: Backend) {
    let counts = b
        .orders
        .progress(&RequestId::from_uuid(Uuid::now_v7()))
        .await
        .expect("progress");
    assert_eq!(counts.total(), 0);
}

// ---- retention -------------------------------------------------------------------------------

pub async fn retention_deletes_only_finished_orders_older_than_the_cutoff(b: Backend) {
    let spec = OrderSpec::agent("a1").timeout(10);
    let old = spec.many(3);
    let young = OrderSpec::agent("a1").timeout(1000).build();
    let unfinished = OrderSpec::agent("a2").timeout(10).build();
    insert(
        &b,
        &[old.clone(), vec![young.clone(), unfinished.clone()]].concat(),
    )
    .await;
    deliver(&b, &unfinished, at(1)).await;
    b.orders.expire_due(at(10), 100).await.expect("expire"); // finished at +10s
    let cancelled = young.cancel(at(500)).expect("cancel"); // finished at +500s
    b.orders.replace(&young, &cancelled).await.expect("replace");
    let batch = b
        .orders
        .purge_finished(at(100), RetentionMode::Delete, 100)
        .await
        .expect("purge");
    assert_eq!(batch.changed, 3);
    for o in &old {
        assert_eq!(b.orders.get(o.order_id()).await.expect("get"), None);
        assert_eq!(
            b.orders.get_archived(o.order_id()).await.expect("get"),
            None,
            "deleted, not archived"
        );
    }
    assert_eq!(get(&b, young.order_id()).await, cancelled);
    assert_eq!(get(&b, unfinished.order_id()).await.status(), Status::Sent);
}

pub async fn retention_archives_finished_orders_out_of_the_stream(b: Backend) {
    let spec = OrderSpec::agent("a1").timeout(10);
    let orders = spec.many(25);
    insert(&b, &orders).await;
    b.orders.expire_due(at(10), 100).await.expect("expire");
    let mut total = 0;
    loop {
        let batch = b
            .orders
            .purge_finished(at(20), RetentionMode::Archive, 10)
            .await
            .expect("purge");
        assert!(batch.examined <= 10);
        total += batch.changed;
        if batch.examined == 0 {
            break;
        }
    }
    assert_eq!(total, 25);
    for o in &orders {
        assert_eq!(b.orders.get(o.order_id()).await.expect("get"), None);
        let archived = b
            .orders
            .get_archived(o.order_id())
            .await
            .expect("get")
            .expect("archived");
        assert_eq!(archived, o.expire(at(10)).expect("expirable"));
    }
    assert_eq!(
        b.orders
            .progress(&spec.request)
            .await
            .expect("progress")
            .total(),
        0
    );
}

pub async fn delete_request_removes_every_order_of_the_request(b: Backend) {
    let spec = OrderSpec::agent("a1");
    insert(&b, &spec.many(30)).await;
    let other = OrderSpec::agent("a1").build();
    insert(&b, std::slice::from_ref(&other)).await;
    assert_eq!(
        b.orders
            .delete_request(&spec.request)
            .await
            .expect("delete"),
        30
    );
    assert_eq!(
        b.orders
            .progress(&spec.request)
            .await
            .expect("progress")
            .total(),
        0
    );
    assert!(b.orders.get(other.order_id()).await.expect("get").is_some());
}

pub async fn ping_succeeds_on_a_reachable_backend(b: Backend) {
    b.orders.ping().await.expect("ping");
}

// ---- agents registry -------------------------------------------------------------------------

pub async fn upsert_creates_then_updates_an_agent(b: Backend) {
    assert_eq!(
        b.agents
            .upsert(&agent("a1", &["Test"]))
            .await
            .expect("upsert"),
        Upserted::Created
    );
    assert_eq!(
        b.agents
            .upsert(&agent("a1", &["Prod", "Linux"]))
            .await
            .expect("upsert"),
        Upserted::Updated
    );
    let stored = b
        .agents
        .get(&agent_id("a1"))
        .await
        .expect("get")
        .expect("agent");
    assert_eq!(stored, agent("a1", &["Prod", "Linux"]));
    assert_eq!(b.agents.count(Some(group("Test"))).await.expect("count"), 0);
    assert_eq!(
        b.agents.count(Some(group("Linux"))).await.expect("count"),
        1
    );
}

pub async fn unknown_agent_is_none(b: Backend) {
    assert_eq!(b.agents.get(&agent_id("ghost")).await.expect("get"), None);
}

pub async fn deleting_an_agent_reports_whether_it_existed(b: Backend) {
    b.agents
        .upsert(&agent("a1", &["Test"]))
        .await
        .expect("upsert");
    assert!(b.agents.delete(&agent_id("a1")).await.expect("delete"));
    assert!(!b.agents.delete(&agent_id("a1")).await.expect("delete"));
    assert_eq!(b.agents.get(&agent_id("a1")).await.expect("get"), None);
    assert_eq!(b.agents.count(Some(group("Test"))).await.expect("count"), 0);
}

fn key_hash(c: char) -> KeyHash {
    KeyHash::parse(&c.to_string().repeat(64), "key").expect("valid hash")
}

pub async fn an_agents_key_hash_is_kept_across_upserts_and_deleted_with_the_agent(b: Backend) {
    let a1 = agent_id("a1");
    b.agents
        .upsert(&agent("a1", &["Test"]))
        .await
        .expect("upsert");
    assert_eq!(b.agents.key_hash(&a1).await.expect("key"), None);
    assert!(
        b.agents
            .set_key_hash(&a1, &key_hash('a'))
            .await
            .expect("set")
    );
    assert_eq!(
        b.agents.key_hash(&a1).await.expect("key"),
        Some(key_hash('a'))
    );
    b.agents
        .upsert(&agent("a1", &["Prod"]))
        .await
        .expect("upsert");
    b.agents
        .upsert_many(&[agent("a1", &["Prod", "X"])])
        .await
        .expect("upsert");
    assert_eq!(
        b.agents.key_hash(&a1).await.expect("key"),
        Some(key_hash('a')),
        "kept across upserts"
    );
    assert!(
        b.agents
            .set_key_hash(&a1, &key_hash('b'))
            .await
            .expect("rotate")
    );
    assert_eq!(
        b.agents.key_hash(&a1).await.expect("key"),
        Some(key_hash('b'))
    );
    assert!(b.agents.delete(&a1).await.expect("delete"));
    assert_eq!(b.agents.key_hash(&a1).await.expect("key"), None);
    b.agents.upsert(&agent("a1", &[])).await.expect("upsert");
    assert_eq!(
        b.agents.key_hash(&a1).await.expect("key"),
        None,
        "a re-registered agent starts without a key"
    );
}

pub async fn a_key_hash_for_an_unknown_agent_is_not_stored(b: Backend) {
    let ghost = agent_id("ghost");
    assert!(
        !b.agents
            .set_key_hash(&ghost, &key_hash('c'))
            .await
            .expect("set")
    );
    assert_eq!(b.agents.key_hash(&ghost).await.expect("key"), None);
    assert_eq!(
        b.agents.get(&ghost).await.expect("get"),
        None,
        "setting a key registers nothing"
    );
}

pub async fn many_key_hashes_are_stored_at_once_for_registered_agents_only(b: Backend) {
    b.agents
        .upsert_many(&[agent("k1", &["Test"]), agent("k2", &[])])
        .await
        .expect("upsert");
    let stored = b
        .agents
        .set_key_hashes(&[
            (agent_id("k1"), key_hash('a')),
            (agent_id("ghost"), key_hash('b')),
            (agent_id("k2"), key_hash('c')),
        ])
        .await
        .expect("set");
    assert_eq!(stored, 2);
    assert_eq!(
        b.agents.key_hash(&agent_id("k1")).await.expect("key"),
        Some(key_hash('a'))
    );
    assert_eq!(
        b.agents.key_hash(&agent_id("k2")).await.expect("key"),
        Some(key_hash('c'))
    );
    assert_eq!(
        b.agents.key_hash(&agent_id("ghost")).await.expect("key"),
        None
    );
    assert_eq!(b.agents.get(&agent_id("ghost")).await.expect("get"), None);
    assert_eq!(
        b.agents.set_key_hashes(&[]).await.expect("nothing"),
        0,
        "an empty batch stores nothing"
    );
    assert_eq!(
        b.agents.get(&agent_id("k1")).await.expect("get"),
        Some(agent("k1", &["Test"])),
        "storing a key changes no group"
    );
}

pub async fn registered_tells_which_ids_are_agents_in_one_call(b: Backend) {
    b.agents
        .upsert_many(&[agent("r1", &["Test"]), agent("r3", &[])])
        .await
        .expect("upsert");
    let mut found = b
        .agents
        .registered(&[
            agent_id("r3"),
            agent_id("ghost"),
            agent_id("r1"),
            agent_id("r3"),
        ])
        .await
        .expect("registered");
    found.sort();
    assert_eq!(found, [agent_id("r1"), agent_id("r3")]);
    assert!(b.agents.registered(&[]).await.expect("none").is_empty());
    let many: Vec<cm_domain::AgentId> = (0..2500).map(|i| agent_id(&format!("x{i}"))).collect();
    assert_eq!(
        b.agents.registered(&many).await.expect("many"),
        Vec::<cm_domain::AgentId>::new()
    );
}

pub async fn group_members_are_paged_in_id_order(b: Backend) {
    let mut fleet = Vec::new();
    for i in 0..25 {
        let groups: &[&str] = if i % 2 == 0 {
            &["Even", "All"]
        } else {
            &["All"]
        };
        fleet.push(agent(&format!("agent-{i:03}"), groups));
    }
    b.agents.upsert_many(&fleet).await.expect("upsert");
    let mut got = Vec::new();
    let mut page = AgentPageRequest {
        group: Some(group("Even")),
        size: 4,
        after: None,
    };
    loop {
        let p = b.agents.list(&page).await.expect("list");
        assert!(p.items.len() <= 4);
        got.extend(p.items.into_iter().map(|a| a.id().as_str().to_owned()));
        match p.next {
            Some(n) => page.after = Some(n),
            None => break,
        }
    }
    let want: Vec<String> = (0..25)
        .step_by(2)
        .map(|i| format!("agent-{i:03}"))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        b.agents.count(Some(group("Even"))).await.expect("count"),
        13
    );
}

pub async fn listing_without_a_group_pages_every_agent(b: Backend) {
    let fleet: Vec<_> = (0..10).map(|i| agent(&format!("n{i}"), &[])).collect();
    b.agents.upsert_many(&fleet).await.expect("upsert");
    let p = b
        .agents
        .list(&AgentPageRequest {
            group: None,
            size: 100,
            after: None,
        })
        .await
        .expect("list");
    assert_eq!(p.items.len(), 10);
    assert_eq!(p.next, None);
    assert_eq!(b.agents.count(None).await.expect("count"), 10);
}

pub async fn upsert_many_registers_in_bulk_and_counts_the_new_ones(b: Backend) {
    b.agents
        .upsert(&agent("a1", &["Old"]))
        .await
        .expect("upsert");
    let batch = vec![
        agent("a1", &["New"]),
        agent("a2", &["New"]),
        agent("a3", &[]),
    ];
    assert_eq!(b.agents.upsert_many(&batch).await.expect("upsert"), 2);
    assert_eq!(b.agents.count(Some(group("New"))).await.expect("count"), 2);
    assert_eq!(b.agents.count(Some(group("Old"))).await.expect("count"), 0);
}

pub async fn a_20000_agent_group_expands_completely(b: Backend) {
    let fleet: Vec<_> = (0..20_000)
        .map(|i| agent(&format!("big-{i:05}"), &["Big"]))
        .collect();
    for chunk in fleet.chunks(5000) {
        b.agents.upsert_many(chunk).await.expect("upsert");
    }
    b.agents
        .upsert(&agent("outsider", &["Small"]))
        .await
        .expect("upsert");
    let service = b.service(Settings::default());
    let submitted = service
        .submit(SubmitRequest {
            commands: vec![command(TargetType::Group, "Big")],
            idempotency: None,
        })
        .await
        .expect("submit");
    assert_eq!(submitted.len(), 1);
    let order_ids: HashSet<_> = submitted[0].order_ids.iter().collect();
    assert_eq!(order_ids.len(), 20_000);
    let counts = b
        .orders
        .progress(&submitted[0].request_id)
        .await
        .expect("progress");
    assert_eq!(counts.pending, 20_000);
    let filter = OrderFilter {
        request_id: Some(submitted[0].request_id),
        ..Default::default()
    };
    let stored = all_matching(&b, &filter, 1000).await;
    let agents: HashSet<_> = stored
        .iter()
        .map(|o| o.agent_id().expect("agent").as_str().to_owned())
        .collect();
    assert_eq!(agents.len(), 20_000, "one order per member");
    assert!(!agents.contains("outsider"));
}

// ---- notifications and the service over this backend -----------------------------------------

pub async fn notify_wakes_a_subscribed_poll(b: Backend) {
    let mut sub = b.notifier.subscribe(&Consumers::agent(&agent_id("a1")));
    b.notifier
        .notify(&[Consumer::Agent(agent_id("a1"))])
        .await
        .expect("notify");
    // A lost wake-up leaves this waiting forever: the test never ends rather than passing.
    sub.notified().await;
}

pub async fn notify_for_another_agent_does_not_wake(b: Backend) {
    let mut sub = b.notifier.subscribe(&Consumers::agent(&agent_id("a1")));
    b.notifier
        .notify(&[Consumer::Agent(agent_id("a2"))])
        .await
        .expect("notify");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.notified())
            .await
            .is_err()
    );
}

fn command(kind: TargetType, id: &str) -> Command {
    Command::new(
        Source::UsersServices,
        Some("conformance".into()),
        Target::new(kind, id).expect("target"),
        Action::new("restart", json!({}), "v5").expect("action"),
        Timeout::new(300).expect("timeout"),
    )
    .expect("command")
}

pub async fn long_poll_returns_as_soon_as_an_order_is_submitted(b: Backend) {
    b.agents
        .upsert(&agent("a1", &["Test"]))
        .await
        .expect("upsert");
    let service = b.service(super::long_wait_settings());
    let poller = {
        let service = service.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let got = service
                .poll(&agent_id("a1"), 10, super::LONG_WAIT)
                .await
                .expect("poll");
            (got, started.elapsed())
        })
    };
    super::until_poll_waits(b.notifier.as_ref(), &agent_id("a1"), &poller).await;
    let submitted = service
        .submit(SubmitRequest {
            commands: vec![command(TargetType::Agent, "a1")],
            idempotency: None,
        })
        .await
        .expect("submit");
    let (got, waited) = poller.await.expect("task");
    assert_eq!(ids(&got), submitted[0].order_ids);
    assert!(
        waited < super::LONG_WAIT,
        "woken, not at the end of its wait ({waited:?})"
    );
}

pub async fn polls_opening_together_each_claim_their_own_orders_or_wait_for_them(b: Backend) {
    // 60 polls open at once (the first looks of all but one are coalesced): the 20 agents with
    // an order get it at once, each exactly its own; the 40 others wait, and an order created
    // for each while the polls open or wait reaches it.
    let service = b.service(super::long_wait_settings());
    let now = crate::SystemClock.now();
    let name = |i: usize| format!("storm{i:02}");
    let ready: Vec<Order> = (0..20)
        .map(|i| OrderSpec::agent(&name(i)).created(now).timeout(300).build())
        .collect();
    insert(&b, &ready).await;
    let polls: Vec<_> = (0..60)
        .map(|i| {
            let service = service.clone();
            let agent = agent_id(&name(i));
            tokio::spawn(async move { service.poll(&agent, 10, super::LONG_WAIT).await })
        })
        .collect();
    for i in 20..60 {
        b.agents
            .upsert(&agent(&name(i), &["Storm"]))
            .await
            .expect("upsert");
    }
    let submitted = service
        .submit(SubmitRequest {
            commands: (20..60)
                .map(|i| command(TargetType::Agent, &name(i)))
                .collect(),
            idempotency: None,
        })
        .await
        .expect("submit");
    for (i, poll) in polls.into_iter().enumerate() {
        let got = poll.await.expect("task").expect("poll");
        let want = if i < 20 {
            vec![*ready[i].order_id()]
        } else {
            submitted[i - 20].order_ids.clone()
        };
        assert_eq!(ids(&got), want, "the poll of {}", name(i));
    }
}

pub async fn long_poll_returns_a_scheduled_order_when_it_becomes_due(b: Backend) {
    let service = b.service(super::long_wait_settings());
    let now = crate::SystemClock.now();
    let start = now + chrono::Duration::milliseconds(1500);
    let scheduled = OrderSpec::agent("a1")
        .created(now)
        .timeout(300)
        .not_before(start)
        .build();
    insert(&b, std::slice::from_ref(&scheduled)).await;
    let started = tokio::time::Instant::now();
    let got = service
        .poll(&agent_id("a1"), 10, super::LONG_WAIT)
        .await
        .expect("poll");
    let waited = started.elapsed();
    assert_eq!(
        ids(&got),
        vec![*scheduled.order_id()],
        "the scheduled order, once due"
    );
    assert!(
        waited >= Duration::from_millis(1000),
        "not handed out early ({waited:?})"
    );
    assert!(
        waited < super::LONG_WAIT,
        "handed out when due, not at the end of the wait ({waited:?})"
    );
}

pub async fn retried_submit_with_the_same_idempotency_key_creates_nothing(b: Backend) {
    b.agents
        .upsert_many(&[agent("a1", &["Test"]), agent("a2", &["Test"])])
        .await
        .expect("upsert");
    let service = b.service(Settings::default());
    let request = || SubmitRequest {
        commands: vec![
            command(TargetType::Group, "Test"),
            command(TargetType::Server, "indexer"),
        ],
        idempotency: Some(Idempotency {
            key: cm_domain::IdempotencyKey::parse("retry-42", "key").expect("key"),
            fingerprint: "body-1".into(),
        }),
    };
    let first = service.submit(request()).await.expect("first");
    let second = service.submit(request()).await.expect("retry");
    assert_eq!(first, second, "the retry answers the same ids");
    let all = all_matching(&b, &OrderFilter::default(), 100).await;
    assert_eq!(all.len(), 3, "nothing new was created");
}

pub async fn request_progress_follows_delivery_and_reports(b: Backend) {
    b.agents
        .upsert_many(&[agent("a1", &["Test"]), agent("a2", &["Test"])])
        .await
        .expect("upsert");
    let service = b.service(Settings::default());
    let submitted = service
        .submit(SubmitRequest {
            commands: vec![command(TargetType::Group, "Test")],
            idempotency: None,
        })
        .await
        .expect("submit");
    let request = submitted[0].request_id;
    assert_eq!(
        service
            .progress(&request)
            .await
            .expect("progress")
            .expect("known")
            .pending,
        2
    );
    let got = service
        .poll(&agent_id("a1"), 10, Duration::ZERO)
        .await
        .expect("poll");
    assert_eq!(got.len(), 1);
    let report = Report::new(ReportStatus::Success, 0, "restarted", "").expect("report");
    let done = service
        .report(
            got[0].order_id(),
            &report,
            &Reporter::Consumer(Consumer::Agent(agent_id("a1"))),
        )
        .await
        .expect("report");
    assert_eq!(done.status(), Status::Success);
    // Repeating the identical report is accepted.
    service
        .report(
            got[0].order_id(),
            &report,
            &Reporter::Consumer(Consumer::Agent(agent_id("a1"))),
        )
        .await
        .expect("repeat");
    let counts = service
        .progress(&request)
        .await
        .expect("progress")
        .expect("known");
    assert_eq!((counts.pending, counts.success), (1, 1));
}

// ---- rollout control (docs/rollout.md) ---------------------------------------------------------

/// The use cases over this backend with a clock that moves only when told to.
fn service_at(b: &Backend, clock: &Arc<super::ManualClock>) -> crate::CommandManager {
    crate::CommandManager::new(
        crate::Ports {
            orders: Arc::clone(&b.orders),
            agents: Arc::clone(&b.agents),
            components: Arc::clone(&b.components),
            requests: Arc::clone(&b.requests),
            notifier: Arc::clone(&b.notifier),
            clock: Arc::clone(clock) as Arc<dyn Clock>,
        },
        Settings::default(),
    )
}

pub async fn a_rollout_hands_out_orders_slot_by_slot_and_a_request_cancel_stops_the_rest(
    b: Backend,
) {
    let fleet: Vec<_> = (0..10)
        .map(|i| agent(&format!("r{i}"), &["Rollout"]))
        .collect();
    b.agents.upsert_many(&fleet).await.expect("upsert");
    let clock = Arc::new(super::ManualClock::new(at(0)));
    let service = service_at(&b, &clock);
    // Start at +60 s, spread over 100 s: agent r<i> is due at +60 + 10·i s.
    let schedule =
        cm_domain::Schedule::parse(Some("2026-01-01T00:01:00Z"), Some(100)).expect("schedule");
    let submitted = service
        .submit(SubmitRequest {
            commands: vec![command(TargetType::Group, "Rollout").with_schedule(schedule)],
            idempotency: None,
        })
        .await
        .expect("submit");
    let request = submitted[0].request_id;
    let poll = |i: usize| {
        let service = service.clone();
        async move {
            service
                .poll(&agent_id(&format!("r{i}")), 10, Duration::ZERO)
                .await
                .expect("poll")
        }
    };
    for (i, o) in all_matching(
        &b,
        &OrderFilter {
            request_id: Some(request),
            ..OrderFilter::default()
        },
        100,
    )
    .await
    .iter()
    .enumerate()
    {
        assert_eq!(o.not_before(), Some(at(60 + 10 * i as i64)), "slot {i}");
        assert_eq!(o.delivery_deadline(), at(60 + 10 * i as i64 + 300));
    }
    // Just before the start nobody gets anything.
    clock.set(at(59));
    for i in 0..10 {
        assert!(poll(i).await.is_empty(), "r{i} before the start");
    }
    // At +95 s the first four slots are due, the fifth (+100 s) is not.
    clock.set(at(95));
    for i in 0..10 {
        let got = poll(i).await;
        assert_eq!(got.len(), usize::from(i < 4), "r{i} at +95 s");
        if let Some(o) = got.first() {
            assert_eq!(o.request_id(), &request);
            assert_eq!(o.sent_at(), Some(at(95)));
        }
    }
    let counts = service
        .cancel_request(&request)
        .await
        .expect("cancel")
        .expect("a known request");
    assert_eq!(
        (counts.total(), counts.pending, counts.sent, counts.failure),
        (10, 0, 4, 6)
    );
    // After the window (and before the delivered ones are due for redelivery at +215 s), the
    // cancelled orders are never handed out.
    clock.set(at(200));
    for i in 0..10 {
        assert!(poll(i).await.is_empty(), "r{i} after the cancel");
    }
    let cancelled = service
        .request_orders(&request, Some(Status::Failure), 4, None)
        .await
        .expect("orders")
        .expect("known");
    assert_eq!(cancelled.items.len(), 4);
    assert!(cancelled.next.is_some());
    for o in &cancelled.items {
        assert_eq!(o.result().expect("result").message(), CANCELLED);
    }
    let again = service
        .cancel_request(&request)
        .await
        .expect("cancel")
        .expect("known");
    assert_eq!(again, counts, "a second cancel changes nothing");
    assert_eq!(
        service
            .cancel_request(&RequestId::from_uuid(Uuid::now_v7()))
            .await
            .expect("cancel"),
        None
    );
}

pub async fn a_retry_re_runs_only_the_targets_that_ended_in_the_status_linked_to_the_request(
    b: Backend,
) {
    let fleet: Vec<_> = (0..12)
        .map(|i| agent(&format!("f{i:02}"), &["Retry"]))
        .collect();
    b.agents.upsert_many(&fleet).await.expect("upsert");
    let service = b.service(Settings::default());
    let submitted = service
        .submit(SubmitRequest {
            commands: vec![command(TargetType::Group, "Retry")],
            idempotency: None,
        })
        .await
        .expect("submit");
    let request = submitted[0].request_id;
    // Every third agent fails, the others succeed; f11 never polls.
    let mut failed = Vec::new();
    for i in 0..11 {
        let id = agent_id(&format!("f{i:02}"));
        let got = service.poll(&id, 10, Duration::ZERO).await.expect("poll");
        assert_eq!(got.len(), 1, "{id}");
        let (status, code) = if i % 3 == 0 {
            failed.push(id.clone());
            (ReportStatus::Failure, 2)
        } else {
            (ReportStatus::Success, 0)
        };
        let report = Report::new(status, code, "done", "").expect("report");
        service
            .report(
                got[0].order_id(),
                &report,
                &Reporter::Consumer(Consumer::Agent(id.clone())),
            )
            .await
            .expect("report");
    }
    let retry = service
        .retry_request(&request, Status::Failure)
        .await
        .expect("retry");
    assert_ne!(retry.request_id, request);
    assert_eq!(retry.order_ids.len(), failed.len());
    let filter = OrderFilter {
        request_id: Some(retry.request_id),
        ..OrderFilter::default()
    };
    let stored = all_matching(&b, &filter, 2).await;
    assert_eq!(ids(&stored).len(), failed.len());
    let mut agents: Vec<_> = stored
        .iter()
        .map(|o| o.agent_id().expect("agent").clone())
        .collect();
    agents.sort();
    assert_eq!(agents, failed, "only the targets whose order failed");
    for o in &stored {
        assert_eq!(o.retry_of(), Some(&request), "linked to the old request");
        assert_eq!(o.status(), Status::Pending);
        assert_eq!(get(&b, o.order_id()).await, *o, "retry_of survives storage");
    }
    let counts = b
        .orders
        .progress(&retry.request_id)
        .await
        .expect("progress");
    assert_eq!(counts.pending, failed.len() as u64);
    // The old request is unchanged; its failed agents get the new orders at once.
    let old = b.orders.progress(&request).await.expect("progress");
    assert_eq!((old.success, old.failure, old.pending), (7, 4, 1));
    let got = service
        .poll(&failed[0], 10, Duration::ZERO)
        .await
        .expect("poll");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].retry_of(), Some(&request));
    // Nothing succeeded-then-pending to re-run: a retry of `sent` is refused, of an unknown
    // request is not found.
    assert!(matches!(
        service
            .retry_request(&RequestId::from_uuid(Uuid::now_v7()), Status::Failure)
            .await,
        Err(crate::RetryError::NotFound)
    ));
    assert!(matches!(
        service
            .retry_request(&retry.request_id, Status::Success)
            .await,
        Err(crate::RetryError::NothingToRetry(Status::Success))
    ));
}

// ---- consumers: components and relays (docs/delivery.md) --------------------------------------

fn relay_set(agents: &[&str], components: &[&str]) -> Consumers {
    Consumers::new(
        agents.iter().map(|a| agent_id(a)).collect(),
        components.iter().map(|c| super::component(c)).collect(),
    )
}

pub async fn claim_for_many_consumers_takes_their_orders_oldest_first_and_no_others(b: Backend) {
    let a1 = OrderSpec::agent("a1").created(at(0)).build();
    let vd = OrderSpec::server("vd").created(at(1)).build();
    let a2 = OrderSpec::agent("a2").created(at(2)).build();
    let a3 = OrderSpec::agent("a3").created(at(3)).build();
    let other = OrderSpec::server("other").created(at(4)).build();
    // A component named like an agent of the set is another consumer.
    let named_a1 = OrderSpec::server("a1").created(at(5)).build();
    insert(
        &b,
        &[
            a1.clone(),
            vd.clone(),
            a2.clone(),
            a3.clone(),
            other.clone(),
            named_a1.clone(),
        ],
    )
    .await;
    let set = relay_set(&["a1", "a2"], &["vd"]);
    let first = b
        .orders
        .claim(&set, 2, at(10), &policy())
        .await
        .expect("claim");
    assert_eq!(ids(&first), ids(&[a1, vd]), "oldest first over the set");
    assert!(first.iter().all(|o| o.status() == Status::Sent));
    let rest = b
        .orders
        .claim(&set, 10, at(10), &policy())
        .await
        .expect("claim");
    assert_eq!(ids(&rest), ids(&[a2]));
    assert!(
        b.orders
            .claim(&set, 10, at(10), &policy())
            .await
            .expect("claim")
            .is_empty()
    );
    for o in [a3, other, named_a1] {
        assert_eq!(get(&b, o.order_id()).await.status(), Status::Pending);
    }
}

pub async fn component_orders_are_delivered_only_to_their_component(b: Backend) {
    let order = OrderSpec::server("vd").timeout(1000).build();
    let later = OrderSpec::server("vd")
        .timeout(1000)
        .not_before(at(30))
        .build();
    insert(&b, &[order.clone(), later.clone()]).await;
    for wrong in [
        Consumers::agent(&agent_id("vd")),
        Consumers::component(&super::component("vd2")),
    ] {
        assert!(
            b.orders
                .claim(&wrong, 10, at(1), &policy())
                .await
                .expect("claim")
                .is_empty()
        );
    }
    let vd = Consumers::component(&super::component("vd"));
    let got = b
        .orders
        .claim(&vd, 10, at(1), &policy())
        .await
        .expect("claim");
    assert_eq!(
        ids(&got),
        ids(std::slice::from_ref(&order)),
        "not before not_before"
    );
    assert_eq!(got[0].status(), Status::Sent);
    assert_eq!(
        b.orders.next_due(&vd, at(1)).await.expect("next_due"),
        Some(at(30))
    );
    let again = b
        .orders
        .claim(&vd, 10, at(61), &policy())
        .await
        .expect("claim");
    assert_eq!(
        ids(&again),
        ids(&[order, later]),
        "redelivered after redeliver_after, the scheduled one due"
    );
    assert_eq!(again[0].deliveries(), 2);
}

pub async fn next_due_for_many_consumers_is_the_earliest_among_them(b: Backend) {
    insert(
        &b,
        &[
            OrderSpec::agent("a1")
                .not_before(at(50))
                .timeout(1000)
                .build(),
            OrderSpec::server("vd")
                .not_before(at(20))
                .timeout(1000)
                .build(),
            OrderSpec::agent("a9")
                .not_before(at(5))
                .timeout(1000)
                .build(),
        ],
    )
    .await;
    let set = relay_set(&["a1", "a2"], &["vd"]);
    assert_eq!(
        b.orders.next_due(&set, at(0)).await.expect("next_due"),
        Some(at(20))
    );
    assert_eq!(
        b.orders.next_due(&set, at(20)).await.expect("next_due"),
        Some(at(50))
    );
}

pub async fn concurrent_relays_and_polls_never_receive_one_order_twice(b: Backend) {
    let agents: Vec<String> = (0..20).map(|i| format!("a{i:02}")).collect();
    let mut orders = Vec::new();
    for a in &agents {
        orders.extend(OrderSpec::agent(a).timeout(1000).many(15));
    }
    for c in ["vd", "rbac"] {
        orders.extend(OrderSpec::server(c).timeout(1000).many(20));
    }
    insert(&b, &orders).await;
    let all_agents: Vec<&str> = agents.iter().map(String::as_str).collect();
    let mut tasks = Vec::new();
    for r in 0..4 {
        // Two relays for everyone, two for half of the agents and one component.
        let set = if r < 2 {
            relay_set(&all_agents, &["vd", "rbac"])
        } else {
            relay_set(&all_agents[..10], &["vd"])
        };
        tasks.push(set);
    }
    for a in &agents[..5] {
        tasks.push(Consumers::agent(&agent_id(a)));
    }
    tasks.push(Consumers::component(&super::component("rbac")));
    let handles: Vec<_> = tasks
        .into_iter()
        .map(|set| {
            let store = Arc::clone(&b.orders);
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = store
                        .claim(&set, 13, at(1), &policy())
                        .await
                        .expect("claim");
                    if batch.is_empty() {
                        return got;
                    }
                    assert!(batch.iter().all(|o| set.takes(o)), "only the set's orders");
                    got.extend(batch.iter().map(|o| *o.order_id()));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("claimer"));
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "an order was handed out twice");
    assert_eq!(all.len(), orders.len(), "every order was handed out");
}

pub async fn a_relay_claim_racing_an_expiry_ends_in_exactly_one_state(b: Backend) {
    let agents: Vec<String> = (0..30).map(|i| format!("r{i:02}")).collect();
    let names: Vec<&str> = agents.iter().map(String::as_str).collect();
    for round in 0..3 {
        let mut orders = Vec::new();
        for a in &agents {
            orders.extend(OrderSpec::agent(a).timeout(10).many(5));
        }
        orders.extend(OrderSpec::server("vd").timeout(10).many(20));
        insert(&b, &orders).await;
        let set = relay_set(&names, &["vd"]);
        let relays: Vec<_> = (0..3)
            .map(|_| {
                let store = Arc::clone(&b.orders);
                let set = set.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        let batch = store.claim(&set, 9, at(9), &policy()).await.expect("claim");
                        if batch.is_empty() {
                            return got;
                        }
                        got.extend(batch.iter().map(|o| *o.order_id()));
                    }
                })
            })
            .collect();
        let expirer = {
            let store = Arc::clone(&b.orders);
            tokio::spawn(async move {
                let mut n = 0;
                loop {
                    let batch = store.expire_due(at(10), 7).await.expect("expire");
                    n += batch.changed;
                    if batch.examined == 0 {
                        return n;
                    }
                }
            })
        };
        let mut delivered = HashSet::new();
        for r in relays {
            for id in r.await.expect("relay") {
                assert!(delivered.insert(id), "round {round}: handed out twice");
            }
        }
        let expired = expirer.await.expect("expirer");
        assert_eq!(
            delivered.len() + expired,
            orders.len(),
            "round {round}: each order delivered or expired"
        );
        for o in &orders {
            let stored = get(&b, o.order_id()).await;
            if delivered.contains(o.order_id()) {
                assert_eq!(stored.status(), Status::Sent, "round {round}");
            } else {
                assert_eq!(stored.status(), Status::Failure, "round {round}");
                assert_eq!(stored.result().expect("result").message(), EXPIRED);
            }
        }
    }
}

pub async fn notify_wakes_a_subscription_for_many_consumers(b: Backend) {
    let agents: Vec<_> = (0..10_000)
        .map(|i| agent_id(&format!("agent-{i:05}")))
        .collect();
    let set = Consumers::new(agents, vec![super::component("vd")]);
    let mut sub = b.notifier.subscribe(&set);
    b.notifier
        .notify(&[Consumer::Agent(agent_id("agent-09999"))])
        .await
        .expect("notify");
    tokio::time::timeout(Duration::from_secs(5), sub.notified())
        .await
        .expect("woken by an agent of the set");
    b.notifier
        .notify(&[Consumer::Component(super::component("vd"))])
        .await
        .expect("notify");
    tokio::time::timeout(Duration::from_secs(5), sub.notified())
        .await
        .expect("woken by a component of the set");
}

pub async fn a_component_registers_once_and_keeps_its_key_until_rotated(b: Backend) {
    let vd = super::component("vd");
    assert_eq!(b.components.key_hash(&vd).await.expect("key"), None);
    assert!(
        !b.components
            .set_key_hash(&vd, &key_hash('a'))
            .await
            .expect("set"),
        "an unknown component gets no key"
    );
    assert_eq!(
        b.components
            .register(&vd, &key_hash('a'))
            .await
            .expect("register"),
        Upserted::Created
    );
    assert_eq!(
        b.components
            .register(&vd, &key_hash('b'))
            .await
            .expect("register"),
        Upserted::Updated
    );
    assert_eq!(
        b.components.key_hash(&vd).await.expect("key"),
        Some(key_hash('a')),
        "registering again keeps the key"
    );
    assert!(
        b.components
            .set_key_hash(&vd, &key_hash('c'))
            .await
            .expect("rotate")
    );
    assert_eq!(
        b.components.key_hash(&vd).await.expect("key"),
        Some(key_hash('c'))
    );
    for name in ["rbac", "indexer", "zeta"] {
        b.components
            .register(&super::component(name), &key_hash('d'))
            .await
            .expect("register");
    }
    let first = b.components.list(None, 2).await.expect("list");
    assert_eq!(
        first.items,
        vec![super::component("indexer"), super::component("rbac")]
    );
    let rest = b
        .components
        .list(first.next.clone(), 2)
        .await
        .expect("list");
    assert_eq!(rest.items, vec![vd.clone(), super::component("zeta")]);
    let end = b.components.list(rest.next, 2).await.expect("list");
    assert!(end.items.is_empty() && end.next.is_none());
    assert!(b.components.delete(&vd).await.expect("delete"));
    assert!(!b.components.delete(&vd).await.expect("delete"));
    assert_eq!(b.components.key_hash(&vd).await.expect("key"), None);
}

pub async fn a_server_command_is_consumed_by_its_component_and_a_relay_reports_for_a_group(
    b: Backend,
) {
    b.agents
        .upsert_many(&[agent("g1", &["Edge"]), agent("g2", &["Edge"])])
        .await
        .expect("upsert");
    let service = b.service(Settings::default());
    let submitted = service
        .submit(SubmitRequest {
            commands: vec![
                command(TargetType::Server, "vd"),
                command(TargetType::Group, "Edge"),
            ],
            idempotency: None,
        })
        .await
        .expect("submit");
    let vd = ComponentName::parse("vd", "c").expect("name");
    let got = service
        .poll_component(&vd, 10, Duration::ZERO)
        .await
        .expect("poll");
    assert_eq!(ids(&got), submitted[0].order_ids);
    let done = Report::new(ReportStatus::Success, 0, "done", "").expect("report");
    let own = Reporter::Consumer(Consumer::Component(vd.clone()));
    let stranger = Reporter::Consumer(Consumer::Agent(agent_id("vd")));
    assert!(
        service
            .report(got[0].order_id(), &done, &stranger)
            .await
            .is_err(),
        "an agent named like the component may not report"
    );
    let reported = service
        .report(got[0].order_id(), &done, &own)
        .await
        .expect("report");
    assert_eq!(reported.status(), Status::Success);

    let relay = Consumers::new(vec![agent_id("g1"), agent_id("g2")], Vec::new());
    let claimed = service
        .relay_claim(&relay, 100, Duration::ZERO)
        .await
        .expect("relay claim");
    let mut claimed_ids = ids(&claimed);
    claimed_ids.sort_unstable();
    let mut group_ids = submitted[1].order_ids.clone();
    group_ids.sort_unstable();
    assert_eq!(claimed_ids, group_ids);
    for o in &claimed {
        let item = crate::ResultItem {
            order_id: *o.order_id(),
            report: done.clone(),
        };
        let outcome = service
            .report_item(&item, &Reporter::Relay)
            .await
            .expect("report");
        assert_eq!(outcome.outcome, crate::metric::ResultOutcome::Applied);
        let again = service
            .report_item(&item, &Reporter::Relay)
            .await
            .expect("report");
        assert_eq!(again.outcome, crate::metric::ResultOutcome::AlreadyApplied);
    }
    let progress = service
        .progress(&submitted[1].request_id)
        .await
        .expect("progress")
        .expect("known");
    assert_eq!((progress.success, progress.total()), (2, 2));
}
