//! Behaviour this adapter must share with the in-memory one beyond what the suite checks.

mod common;

use cm_domain::{DeliveryPolicy, Status};
use cm_ports::testkit::{OrderSpec, agent, agent_id, at, group};
use cm_ports::{AgentPageRequest, Consumers, ReplaceError};

#[tokio::test]
async fn upsert_many_with_an_id_twice_keeps_the_last_and_counts_it_once() {
    let b = common::backend().await;
    let batch = [
        agent("a1", &["First"]),
        agent("a2", &["First"]),
        agent("a1", &["Second", "Third"]),
    ];
    assert_eq!(b.agents.upsert_many(&batch).await.expect("upsert"), 2);
    assert_eq!(
        b.agents.get(&agent_id("a1")).await.expect("get"),
        Some(agent("a1", &["Second", "Third"]))
    );
    assert_eq!(
        b.agents.count(Some(group("First"))).await.expect("count"),
        1
    );
    assert_eq!(
        b.agents.count(Some(group("Third"))).await.expect("count"),
        1
    );
    let page = b
        .agents
        .list(&AgentPageRequest {
            group: Some(group("Second")),
            size: 10,
            after: None,
        })
        .await
        .expect("list");
    assert_eq!(page.items, vec![agent("a1", &["Second", "Third"])]);
}

#[tokio::test]
async fn an_empty_insert_creates_nothing() {
    let b = common::backend().await;
    assert_eq!(b.orders.insert(&[]).await.expect("insert"), 0);
}

#[tokio::test]
async fn a_claim_of_zero_orders_changes_nothing() {
    let b = common::backend().await;
    let o = OrderSpec::agent("a1").build();
    b.orders
        .insert(std::slice::from_ref(&o))
        .await
        .expect("insert");
    let got = b
        .orders
        .claim(
            &Consumers::agent(&agent_id("a1")),
            0,
            at(1),
            &DeliveryPolicy::default(),
        )
        .await
        .expect("claim");
    assert!(got.is_empty());
    let stored = b
        .orders
        .get(o.order_id())
        .await
        .expect("get")
        .expect("order");
    assert_eq!(stored.status(), Status::Pending);
}

#[tokio::test]
async fn replace_refuses_a_next_version_of_another_order() {
    let b = common::backend().await;
    let [one, other] = [
        OrderSpec::agent("a1").build(),
        OrderSpec::agent("a1").build(),
    ];
    b.orders
        .insert(&[one.clone(), other.clone()])
        .await
        .expect("insert");
    let cancelled_other = other.cancel(at(1)).expect("cancel");
    assert_eq!(
        b.orders.replace(&one, &cancelled_other).await,
        Err(ReplaceError::Conflict)
    );
    assert_eq!(b.orders.get(one.order_id()).await.expect("get"), Some(one));
    assert_eq!(
        b.orders.get(other.order_id()).await.expect("get"),
        Some(other)
    );
}

#[tokio::test]
async fn a_sent_order_waiting_for_redelivery_is_not_handed_out_while_newer_ones_are() {
    let b = common::backend().await;
    let spec = OrderSpec::agent("a1").timeout(1000);
    let old = spec.clone().created(at(0)).build();
    let new = spec.created(at(5)).build();
    b.orders
        .insert(std::slice::from_ref(&old))
        .await
        .expect("insert");
    let policy = DeliveryPolicy::default(); // redelivery after 120 s
    assert_eq!(
        b.orders
            .claim(&Consumers::agent(&agent_id("a1")), 10, at(1), &policy)
            .await
            .expect("claim")
            .len(),
        1
    );
    b.orders
        .insert(std::slice::from_ref(&new))
        .await
        .expect("insert");
    let got = b
        .orders
        .claim(&Consumers::agent(&agent_id("a1")), 10, at(6), &policy)
        .await
        .expect("claim");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].order_id(), new.order_id());
    // Once its redelivery is due the older one comes first again.
    let got = b
        .orders
        .claim(&Consumers::agent(&agent_id("a1")), 10, at(200), &policy)
        .await
        .expect("claim");
    let ids: Vec<_> = got.iter().map(|o| *o.order_id()).collect();
    assert_eq!(ids, vec![*old.order_id(), *new.order_id()]);
}
