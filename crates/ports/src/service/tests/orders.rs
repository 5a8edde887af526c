//! `cancel` and `progress`.

use cm_domain::{CANCELLED, RequestId, Status};
use mockall::Sequence;
use mockall::predicate::eq;
use uuid::Uuid;

use super::{Doubles, delivered, pending, t0};
use crate::store::{ReplaceError, StatusCounts, StoreError};
use crate::{CancelError, Settings};

#[tokio::test]
async fn cancelling_a_pending_order_fails_it_as_cancelled() {
    let mut d = Doubles::new();
    let order = pending("a1");
    let current = order.clone();
    d.orders
        .expect_get()
        .return_once(move |_| Ok(Some(current)));
    let current = order.clone();
    d.orders
        .expect_replace()
        .times(1)
        .withf(move |c, next| *c == current && next.status() == Status::Failure)
        .returning(|_, _| Ok(()));
    let got = d
        .manager(Settings::default())
        .cancel(order.order_id())
        .await
        .unwrap();
    assert_eq!(got.status(), Status::Failure);
    assert_eq!(got.result().unwrap().message(), CANCELLED);
    assert_eq!(got.finished_at(), Some(t0()));
}

#[tokio::test]
async fn cancelling_a_sent_order_is_not_pending() {
    let mut d = Doubles::new();
    let order = delivered(&pending("a1"), 1);
    let current = order.clone();
    d.orders
        .expect_get()
        .return_once(move |_| Ok(Some(current)));
    d.orders.expect_replace().never();
    let err = d
        .manager(Settings::default())
        .cancel(order.order_id())
        .await
        .unwrap_err();
    assert_eq!(err, CancelError::NotPending(Status::Sent));
}

#[tokio::test]
async fn cancelling_an_unknown_order_is_not_found() {
    let mut d = Doubles::new();
    d.orders.expect_get().returning(|_| Ok(None));
    d.orders.expect_replace().never();
    let err = d
        .manager(Settings::default())
        .cancel(pending("a1").order_id())
        .await
        .unwrap_err();
    assert_eq!(err, CancelError::NotFound);
}

#[tokio::test]
async fn a_cancel_conflict_is_retried_from_a_fresh_read() {
    let mut d = Doubles::new();
    let order = pending("a1");
    let mut reads = Sequence::new();
    for _ in 0..2 {
        let current = order.clone();
        d.orders
            .expect_get()
            .times(1)
            .in_sequence(&mut reads)
            .return_once(move |_| Ok(Some(current)));
    }
    let mut writes = Sequence::new();
    d.orders
        .expect_replace()
        .times(1)
        .in_sequence(&mut writes)
        .returning(|_, _| Err(ReplaceError::Conflict));
    d.orders
        .expect_replace()
        .times(1)
        .in_sequence(&mut writes)
        .returning(|_, _| Ok(()));
    let got = d
        .manager(Settings::default())
        .cancel(order.order_id())
        .await
        .unwrap();
    assert_eq!(got.status(), Status::Failure);
}

#[tokio::test]
async fn a_cancel_that_lost_the_race_to_a_delivery_is_not_pending() {
    let mut d = Doubles::new();
    let order = pending("a1");
    let mut reads = Sequence::new();
    let first = order.clone();
    d.orders
        .expect_get()
        .times(1)
        .in_sequence(&mut reads)
        .return_once(move |_| Ok(Some(first)));
    let sent = delivered(&order, 1);
    d.orders
        .expect_get()
        .times(1)
        .in_sequence(&mut reads)
        .return_once(move |_| Ok(Some(sent)));
    d.orders
        .expect_replace()
        .times(1)
        .returning(|_, _| Err(ReplaceError::Conflict));
    let err = d
        .manager(Settings::default())
        .cancel(order.order_id())
        .await
        .unwrap_err();
    assert_eq!(err, CancelError::NotPending(Status::Sent));
}

#[tokio::test]
async fn a_cancel_that_keeps_conflicting_gives_up_after_bounded_retries() {
    let mut d = Doubles::new();
    let order = pending("a1");
    let current = order.clone();
    d.orders
        .expect_get()
        .returning(move |_| Ok(Some(current.clone())));
    d.orders
        .expect_replace()
        .times(5)
        .returning(|_, _| Err(ReplaceError::Conflict));
    let err = d
        .manager(Settings::default())
        .cancel(order.order_id())
        .await
        .unwrap_err();
    assert!(
        matches!(err, CancelError::Unavailable(StoreError::Contention(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_storage_failure_fails_the_cancel_as_unavailable() {
    let mut d = Doubles::new();
    let down = StoreError::Unavailable("down".to_owned());
    let e = down.clone();
    d.orders.expect_get().returning(move |_| Err(e.clone()));
    let err = d
        .manager(Settings::default())
        .cancel(pending("a1").order_id())
        .await
        .unwrap_err();
    assert_eq!(err, CancelError::Unavailable(down));
}

// ---- progress --------------------------------------------------------------------------------

#[tokio::test]
async fn the_progress_of_a_request_without_orders_is_none() {
    let mut d = Doubles::new();
    d.orders
        .expect_progress()
        .return_const(Ok(StatusCounts::default()));
    let got = d
        .manager(Settings::default())
        .progress(&RequestId::from_uuid(Uuid::now_v7()))
        .await
        .unwrap();
    assert_eq!(got, None);
}

#[tokio::test]
async fn the_progress_of_a_request_is_its_counts_per_status() {
    let mut d = Doubles::new();
    let request = RequestId::from_uuid(Uuid::now_v7());
    let counts = StatusCounts {
        pending: 1,
        sent: 2,
        in_progress: 0,
        success: 3,
        failure: 4,
        errors: 4,
    };
    d.orders
        .expect_progress()
        .with(eq(request))
        .return_const(Ok(counts));
    let got = d
        .manager(Settings::default())
        .progress(&request)
        .await
        .unwrap();
    assert_eq!(got, Some(counts));
}

#[tokio::test]
async fn a_storage_failure_fails_the_progress() {
    let mut d = Doubles::new();
    let down = StoreError::Corrupt("bad document".to_owned());
    d.orders.expect_progress().return_const(Err(down.clone()));
    let err = d
        .manager(Settings::default())
        .progress(&RequestId::from_uuid(Uuid::now_v7()))
        .await
        .unwrap_err();
    assert_eq!(err, down);
}
