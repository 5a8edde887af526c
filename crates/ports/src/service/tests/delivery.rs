//! `poll` (long-poll delivery) and `report` (results).

use std::time::Duration;

use cm_domain::{Consumer, Order, Report, ReportStatus, Status};
use mockall::Sequence;
use tokio::time::Instant;

use super::{Doubles, SECOND, agent_id, at, delivered, pending, policy, t0};
use crate::notify::WakeHub;
use crate::store::{Consumers, ReplaceError, StoreError};
use crate::{ReportError, Reporter, Settings, Subscription};

fn unavailable() -> StoreError {
    StoreError::Unavailable("timed out".to_owned())
}

fn success(message: &str) -> Report {
    Report::new(ReportStatus::Success, 0, message, "").unwrap()
}

/// A notifier double over a real [`WakeHub`] (so a test can wake the poll), with `recheck`.
fn hub_notifier(d: &mut Doubles, recheck: Option<Duration>) -> WakeHub {
    let hub = WakeHub::new();
    let h = hub.clone();
    d.notifier
        .expect_subscribe()
        .returning(move |agent| h.subscribe(agent));
    d.notifier.expect_recheck_interval().return_const(recheck);
    hub
}

fn settings() -> Settings {
    Settings {
        delivery: policy(),
        ..Settings::default()
    }
}

// ---- poll ------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_poll_returns_the_claimed_orders_without_waiting() {
    let mut d = Doubles::new();
    hub_notifier(&mut d, None);
    let order = delivered(&pending("a1"), 0);
    let claimed = order.clone();
    d.orders
        .expect_claim()
        .times(1)
        .withf(|agent, limit, now, p| {
            *agent == Consumers::agent(&agent_id("a1"))
                && *limit == 10
                && *now == t0()
                && *p == policy()
        })
        .return_once(move |_, _, _, _| Ok(vec![claimed]));
    let started = Instant::now();
    let got = d
        .manager(settings())
        .poll(&agent_id("a1"), 10, 30 * SECOND)
        .await
        .unwrap();
    assert_eq!(got, [order]);
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn an_empty_poll_waits_and_claims_again_when_its_agent_is_notified() {
    let mut d = Doubles::new();
    let hub = hub_notifier(&mut d, None);
    d.orders.expect_next_due().returning(|_, _| Ok(None));
    let order = delivered(&pending("a1"), 5);
    let claimed = order.clone();
    let mut seq = Sequence::new();
    d.orders
        .expect_claim()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _, _| Ok(vec![]));
    d.orders
        .expect_claim()
        .times(1)
        .in_sequence(&mut seq)
        .return_once(move |_, _, _, _| Ok(vec![claimed]));
    let waker = tokio::spawn(async move {
        tokio::time::sleep(5 * SECOND).await;
        hub.wake(&[Consumer::Agent(agent_id("a1"))]);
    });
    let started = Instant::now();
    let got = d
        .manager(settings())
        .poll(&agent_id("a1"), 10, 30 * SECOND)
        .await
        .unwrap();
    assert_eq!(got, [order]);
    assert_eq!(started.elapsed(), 5 * SECOND, "woken, not timed out");
    waker.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_empty_poll_returns_nothing_when_its_wait_ends() {
    let mut d = Doubles::new();
    hub_notifier(&mut d, None);
    d.orders.expect_next_due().returning(|_, _| Ok(None));
    d.orders.expect_claim().returning(|_, _, _, _| Ok(vec![]));
    let started = Instant::now();
    let got = d
        .manager(settings())
        .poll(&agent_id("a1"), 10, 10 * SECOND)
        .await
        .unwrap();
    assert!(got.is_empty());
    assert_eq!(started.elapsed(), 10 * SECOND);
}

#[tokio::test(start_paused = true)]
async fn a_poll_waits_no_longer_than_max_poll_wait() {
    let mut d = Doubles::new();
    hub_notifier(&mut d, None);
    d.orders.expect_next_due().returning(|_, _| Ok(None));
    d.orders.expect_claim().returning(|_, _, _, _| Ok(vec![]));
    let settings = Settings {
        max_poll_wait: 5 * SECOND,
        ..settings()
    };
    let started = Instant::now();
    let got = d
        .manager(settings)
        .poll(&agent_id("a1"), 10, 3600 * SECOND)
        .await
        .unwrap();
    assert!(got.is_empty());
    assert_eq!(started.elapsed(), 5 * SECOND);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_poll_looks_at_storage_again_every_recheck_interval() {
    let mut d = Doubles::new();
    hub_notifier(&mut d, Some(2 * SECOND));
    d.orders.expect_next_due().returning(|_, _| Ok(None));
    let order = delivered(&pending("a1"), 4);
    let claimed = order.clone();
    let mut seq = Sequence::new();
    d.orders
        .expect_claim()
        .times(2)
        .in_sequence(&mut seq)
        .returning(|_, _, _, _| Ok(vec![]));
    d.orders
        .expect_claim()
        .times(1)
        .in_sequence(&mut seq)
        .return_once(move |_, _, _, _| Ok(vec![claimed]));
    let started = Instant::now();
    let got = d
        .manager(settings())
        .poll(&agent_id("a1"), 10, 30 * SECOND)
        .await
        .unwrap();
    assert_eq!(got, [order]);
    assert_eq!(started.elapsed(), 4 * SECOND);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_poll_wakes_when_a_scheduled_order_becomes_due() {
    let mut d = Doubles::new();
    hub_notifier(&mut d, None);
    let order = delivered(&pending("a1"), 3);
    let claimed = order.clone();
    let mut seq = Sequence::new();
    d.orders
        .expect_claim()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _, _| Ok(vec![]));
    d.orders
        .expect_next_due()
        .times(1)
        .returning(|_, now| Ok(Some(now + chrono::Duration::seconds(3))));
    d.orders
        .expect_claim()
        .times(1)
        .in_sequence(&mut seq)
        .return_once(move |_, _, _, _| Ok(vec![claimed]));
    let started = Instant::now();
    let got = d
        .manager(settings())
        .poll(&agent_id("a1"), 10, 30 * SECOND)
        .await
        .unwrap();
    assert_eq!(got, [order]);
    assert_eq!(
        started.elapsed(),
        3 * SECOND,
        "woken when the order became due"
    );
}

#[tokio::test(start_paused = true)]
async fn a_storage_failure_fails_the_poll() {
    let mut d = Doubles::new();
    hub_notifier(&mut d, None);
    d.orders
        .expect_claim()
        .times(1)
        .returning(|_, _, _, _| Err(unavailable()));
    let err = d
        .manager(settings())
        .poll(&agent_id("a1"), 10, 30 * SECOND)
        .await
        .unwrap_err();
    assert_eq!(err, unavailable());
}

#[tokio::test(start_paused = true)]
async fn the_poll_limit_is_clamped_to_max_poll_limit_and_to_at_least_one() {
    for (asked, max, claimed) in [(1000, 100, 100), (0, 100, 1), (7, 100, 7), (5, 0, 1)] {
        let mut d = Doubles::new();
        d.notifier
            .expect_subscribe()
            .returning(|_| Subscription::never());
        d.notifier.expect_recheck_interval().return_const(None);
        let order = delivered(&pending("a1"), 0);
        d.orders
            .expect_claim()
            .times(1)
            .withf(move |_, limit, _, _| *limit == claimed)
            .return_once(move |_, _, _, _| Ok(vec![order]));
        let settings = Settings {
            max_poll_limit: max,
            ..settings()
        };
        let got = d
            .manager(settings)
            .poll(&agent_id("a1"), asked, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "asked {asked}, max {max}");
    }
}

// ---- report ----------------------------------------------------------------------------------

fn stored(d: &mut Doubles, order: &Order) {
    let order = order.clone();
    d.orders
        .expect_get()
        .returning(move |_| Ok(Some(order.clone())));
}

#[tokio::test]
async fn a_report_on_another_agents_order_is_not_yours() {
    let mut d = Doubles::new();
    let order = delivered(&pending("a1"), 1);
    stored(&mut d, &order);
    d.orders.expect_replace().never();
    let err = d
        .manager(settings())
        .report(
            order.order_id(),
            &success("done"),
            &Reporter::Consumer(Consumer::Agent(agent_id("a2"))),
        )
        .await
        .unwrap_err();
    assert_eq!(err, ReportError::NotYours);
}

#[tokio::test]
async fn a_report_on_a_pending_order_is_a_conflict() {
    let mut d = Doubles::new();
    let order = pending("a1");
    stored(&mut d, &order);
    d.orders.expect_replace().never();
    let err = d
        .manager(settings())
        .report(
            order.order_id(),
            &success("done"),
            &Reporter::Consumer(Consumer::Agent(agent_id("a1"))),
        )
        .await
        .unwrap_err();
    assert_eq!(err, ReportError::Conflict(Status::Pending));
}

#[tokio::test]
async fn a_report_stores_the_result_on_the_delivered_order() {
    let mut d = Doubles::new();
    let order = delivered(&pending("a1"), 1);
    stored(&mut d, &order);
    let current = order.clone();
    d.orders
        .expect_replace()
        .times(1)
        .withf(move |c, next| *c == current && next.status() == Status::Success)
        .returning(|_, _| Ok(()));
    let got = d
        .manager(settings())
        .report(
            order.order_id(),
            &success("done"),
            &Reporter::Consumer(Consumer::Agent(agent_id("a1"))),
        )
        .await
        .unwrap();
    assert_eq!(got.status(), Status::Success);
    assert_eq!(got.result().unwrap().message(), "done");
    assert_eq!(got.finished_at(), Some(t0()));
}

#[tokio::test]
async fn a_replace_conflict_is_retried_from_a_fresh_read() {
    let mut d = Doubles::new();
    let first = delivered(&pending("a1"), 1);
    let redelivered = first.deliver(at(61), &policy()).unwrap();
    let mut reads = Sequence::new();
    let v1 = first.clone();
    d.orders
        .expect_get()
        .times(1)
        .in_sequence(&mut reads)
        .return_once(move |_| Ok(Some(v1)));
    let v2 = redelivered.clone();
    d.orders
        .expect_get()
        .times(1)
        .in_sequence(&mut reads)
        .return_once(move |_| Ok(Some(v2)));
    let mut writes = Sequence::new();
    let v1 = first.clone();
    d.orders
        .expect_replace()
        .times(1)
        .in_sequence(&mut writes)
        .withf(move |current, _| *current == v1)
        .returning(|_, _| Err(ReplaceError::Conflict));
    let v2 = redelivered.clone();
    d.orders
        .expect_replace()
        .times(1)
        .in_sequence(&mut writes)
        .withf(move |current, _| *current == v2)
        .returning(|_, _| Ok(()));
    let got = d
        .manager(settings())
        .report(
            first.order_id(),
            &success("done"),
            &Reporter::Consumer(Consumer::Agent(agent_id("a1"))),
        )
        .await
        .unwrap();
    assert_eq!(got.status(), Status::Success);
    assert_eq!(got.deliveries(), 2, "built from the fresh read");
}

#[tokio::test]
async fn an_order_that_keeps_changing_ends_the_report_in_a_conflict_after_bounded_retries() {
    let mut d = Doubles::new();
    let order = delivered(&pending("a1"), 1);
    stored(&mut d, &order);
    d.orders
        .expect_replace()
        .times(5)
        .returning(|_, _| Err(ReplaceError::Conflict));
    let err = d
        .manager(settings())
        .report(
            order.order_id(),
            &success("done"),
            &Reporter::Consumer(Consumer::Agent(agent_id("a1"))),
        )
        .await
        .unwrap_err();
    assert_eq!(err, ReportError::Conflict(Status::Sent));
}

#[tokio::test]
async fn repeating_the_identical_report_succeeds_without_writing() {
    let mut d = Doubles::new();
    let done = delivered(&pending("a1"), 1)
        .report(&success("done"), at(2))
        .unwrap();
    let cm_domain::ReportOutcome::Applied(done) = done else {
        panic!("the first report applies");
    };
    stored(&mut d, &done);
    d.orders.expect_replace().never();
    let got = d
        .manager(settings())
        .report(
            done.order_id(),
            &success("done"),
            &Reporter::Consumer(Consumer::Agent(agent_id("a1"))),
        )
        .await
        .unwrap();
    assert_eq!(got, done);
}

#[tokio::test]
async fn a_different_report_on_a_finished_order_is_a_conflict() {
    let mut d = Doubles::new();
    let cm_domain::ReportOutcome::Applied(done) = delivered(&pending("a1"), 1)
        .report(&success("done"), at(2))
        .unwrap()
    else {
        panic!("the first report applies");
    };
    stored(&mut d, &done);
    d.orders.expect_replace().never();
    let err = d
        .manager(settings())
        .report(done.order_id(), &success("other"), &Reporter::Anyone)
        .await
        .unwrap_err();
    assert_eq!(err, ReportError::Conflict(Status::Success));
}

#[tokio::test]
async fn a_report_on_an_unknown_order_is_not_found() {
    let mut d = Doubles::new();
    d.orders.expect_get().returning(|_| Ok(None));
    d.orders.expect_replace().never();
    let order = pending("a1");
    let err = d
        .manager(settings())
        .report(order.order_id(), &success("done"), &Reporter::Anyone)
        .await
        .unwrap_err();
    assert_eq!(err, ReportError::NotFound);
}

#[tokio::test]
async fn a_report_whose_order_vanished_before_the_write_is_not_found() {
    let mut d = Doubles::new();
    let order = delivered(&pending("a1"), 1);
    stored(&mut d, &order);
    d.orders
        .expect_replace()
        .times(1)
        .returning(|_, _| Err(ReplaceError::NotFound));
    let err = d
        .manager(settings())
        .report(order.order_id(), &success("done"), &Reporter::Anyone)
        .await
        .unwrap_err();
    assert_eq!(err, ReportError::NotFound);
}

#[tokio::test]
async fn a_storage_failure_fails_the_report_as_unavailable() {
    let mut d = Doubles::new();
    let order = delivered(&pending("a1"), 1);
    stored(&mut d, &order);
    d.orders
        .expect_replace()
        .times(1)
        .returning(|_, _| Err(ReplaceError::Store(unavailable())));
    let err = d
        .manager(settings())
        .report(order.order_id(), &success("done"), &Reporter::Anyone)
        .await
        .unwrap_err();
    assert_eq!(err, ReportError::Unavailable(unavailable()));
}
