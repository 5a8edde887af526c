//! `cancel_request`, `retry_request` and `request_orders` (docs/rollout.md).

use cm_domain::{Order, PendingEnd, ReportStatus, RequestId, Status};
use mockall::Sequence;
use uuid::Uuid;

use super::{Calls, Doubles, at, delivered, pending};
use crate::store::{
    Batch, OrderCursor, OrderFilter, OrderPageRequest, Page, StatusCounts, StoreError,
};
use crate::{RequestError, RetryError, Settings};

fn request_id() -> RequestId {
    RequestId::from_uuid(Uuid::from_u128(0x42))
}

fn unavailable() -> StoreError {
    StoreError::Unavailable("connection reset".to_owned())
}

fn counts(pending: u64, sent: u64, failure: u64) -> StatusCounts {
    StatusCounts {
        pending,
        sent,
        failure,
        ..StatusCounts::default()
    }
}

fn batches_of(n: usize) -> Settings {
    Settings {
        maintenance_batch: n,
        expansion_page: n,
        write_batch: n,
        ..Settings::default()
    }
}

// ---- cancel ----------------------------------------------------------------------------------

#[tokio::test]
async fn cancelling_a_request_drains_its_pending_orders_in_batches_then_answers_its_counts() {
    let mut d = Doubles::new();
    let mut seq = Sequence::new();
    for changed in [10, 10, 3] {
        d.orders
            .expect_end_pending()
            .times(1)
            .in_sequence(&mut seq)
            .withf(|r, end, now, limit| {
                *r == request_id() && *end == PendingEnd::Cancelled && *now == at(0) && *limit == 10
            })
            .returning(move |_, _, _, _| {
                Ok(Batch {
                    examined: changed,
                    changed,
                })
            });
    }
    d.orders
        .expect_progress()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(counts(0, 2, 23)));
    let got = d
        .manager(batches_of(10))
        .cancel_request(&request_id())
        .await
        .unwrap();
    assert_eq!(got, Some(counts(0, 2, 23)));
}

#[tokio::test]
async fn a_full_batch_that_lost_every_order_to_deliveries_looks_again() {
    let mut d = Doubles::new();
    let mut seq = Sequence::new();
    for (examined, changed) in [(10, 0), (10, 4), (0, 0)] {
        d.orders
            .expect_end_pending()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_, _, _, _| Ok(Batch { examined, changed }));
    }
    d.orders
        .expect_progress()
        .returning(|_| Ok(counts(0, 16, 4)));
    let got = d
        .manager(batches_of(10))
        .cancel_request(&request_id())
        .await
        .unwrap();
    assert_eq!(got, Some(counts(0, 16, 4)));
}

#[tokio::test]
async fn a_store_that_never_changes_a_full_batch_ends_the_cancel_as_contention() {
    let mut d = Doubles::new();
    d.orders
        .expect_end_pending()
        .times(5)
        .returning(|_, _, _, _| {
            Ok(Batch {
                examined: 10,
                changed: 0,
            })
        });
    d.orders.expect_progress().never();
    let err = d
        .manager(batches_of(10))
        .cancel_request(&request_id())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RequestError::Unavailable(StoreError::Contention(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn cancelling_an_unknown_request_is_none() {
    let mut d = Doubles::new();
    d.orders
        .expect_end_pending()
        .times(1)
        .returning(|_, _, _, _| Ok(Batch::default()));
    d.orders
        .expect_progress()
        .returning(|_| Ok(StatusCounts::default()));
    let got = d
        .manager(Settings::default())
        .cancel_request(&request_id())
        .await
        .unwrap();
    assert_eq!(got, None);
}

#[tokio::test]
async fn a_storage_failure_during_a_request_cancel_is_unavailable() {
    let mut d = Doubles::new();
    let mut seq = Sequence::new();
    d.orders
        .expect_end_pending()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _, _| {
            Ok(Batch {
                examined: 10,
                changed: 10,
            })
        });
    d.orders
        .expect_end_pending()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _, _| Err(unavailable()));
    d.orders.expect_progress().never();
    let err = d
        .manager(batches_of(10))
        .cancel_request(&request_id())
        .await
        .unwrap_err();
    assert_eq!(err, RequestError::Unavailable(unavailable()));
}

// ---- retry -----------------------------------------------------------------------------------

/// `n` orders of [`request_id`] for agents `m000`…, in stored order.
fn old_orders(n: usize) -> Vec<Order> {
    let mut orders: Vec<Order> = (0..n)
        .map(|i| {
            let mut o = pending(&format!("m{i:03}"));
            // Same request for all: rebuild through serde to set it.
            let mut doc = serde_json::to_value(&o).unwrap();
            doc["command"]["request_id"] = serde_json::json!(request_id().to_string());
            o = serde_json::from_value(doc).unwrap();
            o
        })
        .collect();
    orders.sort_by_key(OrderCursor::after);
    orders
}

/// An orders double whose `query` serves `orders` (filtered by the filter's rule) page by page
/// like a real adapter, recording each page request.
fn serve_query(d: &mut Doubles, orders: Vec<Order>) -> Calls<(OrderFilter, OrderPageRequest)> {
    let calls = Calls::new();
    let seen = calls.clone();
    d.orders.expect_query().returning(move |filter, page| {
        seen.push((filter.clone(), *page));
        let matching: Vec<Order> = orders
            .iter()
            .filter(|o| filter.matches(o))
            .filter(|o| page.after.is_none_or(|a| OrderCursor::after(o) > a))
            .cloned()
            .collect();
        let items: Vec<Order> = matching.into_iter().take(page.size).collect();
        Ok(Page::read(items, page.size, OrderCursor::after))
    });
    calls
}

/// Finishes `order` (delivered at +1 s) with `status`.
fn finished(order: &Order, status: ReportStatus) -> Order {
    let report = cm_domain::Report::new(status, 3, "done", "").unwrap();
    match delivered(order, 1).report(&report, at(2)).unwrap() {
        cm_domain::ReportOutcome::Applied(o) => o,
        cm_domain::ReportOutcome::AlreadyApplied => unreachable!(),
    }
}

#[tokio::test]
async fn a_retry_creates_one_order_per_target_that_failed_linked_to_the_old_request() {
    let mut d = Doubles::new();
    let old: Vec<Order> = old_orders(25)
        .iter()
        .enumerate()
        .map(|(i, o)| match i % 5 {
            0 => finished(o, ReportStatus::Failure),
            1 => finished(o, ReportStatus::Success),
            2 => delivered(o, 1),
            _ => o.clone(),
        })
        .collect();
    let failed: Vec<cm_domain::Consumer> = old
        .iter()
        .filter(|o| o.status() == Status::Failure)
        .map(|o| o.consumer().unwrap())
        .collect();
    assert_eq!(failed.len(), 5);
    let queries = serve_query(&mut d, old.clone());
    let inserted = Calls::new();
    let seen = inserted.clone();
    d.orders.expect_insert_staged().returning(move |orders| {
        seen.push(orders.to_vec());
        Ok(orders.len() as u64)
    });
    d.orders.expect_delete_request().never();
    let woken = Calls::new();
    let seen = woken.clone();
    d.notifier.expect_notify().returning(move |agents| {
        seen.push(agents.to_vec());
        Ok(())
    });
    let out = d
        .manager(batches_of(2))
        .retry_request(&request_id(), Status::Failure)
        .await
        .unwrap();

    // The old orders were read page by page, by request and status.
    let queries = queries.all();
    assert_eq!(queries.len(), 3, "pages of 2 over 5 matches");
    for (filter, page) in &queries {
        assert_eq!(filter.request_id, Some(request_id()));
        assert_eq!(filter.status, Some(Status::Failure));
        assert_eq!(page.size, 2);
    }
    let written: Vec<Order> = inserted.all().concat();
    assert_eq!(written.len(), 5);
    assert_eq!(
        written.iter().map(|o| *o.order_id()).collect::<Vec<_>>(),
        out.order_ids
    );
    assert_ne!(out.request_id, request_id());
    for (new, old) in written
        .iter()
        .zip(old.iter().filter(|o| o.status() == Status::Failure))
    {
        assert_eq!(new.request_id(), &out.request_id);
        assert_eq!(new.retry_of(), Some(&request_id()));
        assert_ne!(new.order_id(), old.order_id());
        assert_eq!(new.status(), Status::Pending);
        assert_eq!(new.agent(), old.agent());
        assert_eq!(new.target(), old.target());
        assert_eq!(new.action(), old.action());
        assert_eq!(new.source(), old.source());
        assert_eq!(new.user(), old.user());
        assert_eq!(new.timeout(), old.timeout());
        assert_eq!(new.created_at(), at(0));
        assert_eq!(new.not_before(), None, "a retry starts at once");
    }
    assert_eq!(woken.all(), vec![failed]);
}

#[tokio::test]
async fn a_retry_of_successes_re_runs_the_successful_targets() {
    let mut d = Doubles::new();
    let old: Vec<Order> = old_orders(3)
        .iter()
        .map(|o| finished(o, ReportStatus::Success))
        .collect();
    serve_query(&mut d, old);
    d.orders
        .expect_insert_staged()
        .times(1)
        .returning(|orders| Ok(orders.len() as u64));
    d.notifier.expect_notify().returning(|_| Ok(()));
    let out = d
        .manager(Settings::default())
        .retry_request(&request_id(), Status::Success)
        .await
        .unwrap();
    assert_eq!(out.order_ids.len(), 3);
}

#[tokio::test]
async fn a_retry_with_nothing_in_that_status_is_nothing_to_retry_and_writes_nothing() {
    let mut d = Doubles::new();
    serve_query(&mut d, old_orders(3));
    d.orders
        .expect_progress()
        .returning(|_| Ok(counts(3, 0, 0)));
    d.orders.expect_insert().never();
    d.orders.expect_insert_staged().never();
    d.notifier.expect_notify().never();
    let err = d
        .manager(Settings::default())
        .retry_request(&request_id(), Status::Failure)
        .await
        .unwrap_err();
    assert_eq!(err, RetryError::NothingToRetry(Status::Failure));
}

#[tokio::test]
async fn a_retry_of_an_unknown_request_is_not_found() {
    let mut d = Doubles::new();
    serve_query(&mut d, Vec::new());
    d.orders
        .expect_progress()
        .returning(|_| Ok(StatusCounts::default()));
    d.orders.expect_insert().never();
    d.orders.expect_insert_staged().never();
    let err = d
        .manager(Settings::default())
        .retry_request(&request_id(), Status::Failure)
        .await
        .unwrap_err();
    assert_eq!(err, RetryError::NotFound);
}

#[tokio::test]
async fn a_retry_of_a_status_no_order_ends_in_is_invalid_naming_status() {
    for status in [Status::Pending, Status::Sent, Status::InProgress] {
        let d = Doubles::new();
        let err = d
            .manager(Settings::default())
            .retry_request(&request_id(), status)
            .await
            .unwrap_err();
        let RetryError::Invalid(e) = err else {
            panic!("expected Invalid, got {err:?}");
        };
        assert_eq!(e.field(), "status");
    }
}

#[tokio::test]
async fn a_storage_failure_while_writing_a_retry_removes_what_it_wrote() {
    let mut d = Doubles::new();
    let old: Vec<Order> = old_orders(5)
        .iter()
        .map(|o| finished(o, ReportStatus::Failure))
        .collect();
    serve_query(&mut d, old);
    let mut calls = 0;
    d.orders.expect_insert_staged().times(2).returning(move |orders| {
        calls += 1;
        if calls == 2 {
            Err(unavailable())
        } else {
            Ok(orders.len() as u64)
        }
    });
    let removed = Calls::new();
    let seen = removed.clone();
    d.orders
        .expect_delete_request()
        .times(1)
        .returning(move |r| {
            seen.push(*r);
            Ok(2)
        });
    d.notifier.expect_notify().never();
    let err = d
        .manager(batches_of(2))
        .retry_request(&request_id(), Status::Failure)
        .await
        .unwrap_err();
    assert_eq!(err, RetryError::Unavailable(unavailable()));
    let removed = removed.all();
    assert_eq!(removed.len(), 1);
    assert_ne!(
        removed[0],
        request_id(),
        "the retry's orders, never the old ones"
    );
}

#[tokio::test]
async fn a_storage_failure_while_reading_the_old_orders_is_unavailable() {
    let mut d = Doubles::new();
    d.orders.expect_query().returning(|_, _| Err(unavailable()));
    d.orders.expect_insert().never();
    d.orders.expect_insert_staged().never();
    d.orders.expect_delete_request().returning(|_| Ok(0));
    let err = d
        .manager(Settings::default())
        .retry_request(&request_id(), Status::Failure)
        .await
        .unwrap_err();
    assert_eq!(err, RetryError::Unavailable(unavailable()));
}

// ---- listing ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_requests_orders_are_listed_by_request_and_status() {
    let mut d = Doubles::new();
    let old = old_orders(3);
    let queries = serve_query(&mut d, old.clone());
    d.orders.expect_progress().never();
    let page = d
        .manager(Settings::default())
        .request_orders(&request_id(), Some(Status::Pending), 2, None)
        .await
        .unwrap()
        .expect("a known request");
    assert_eq!(page.items, old[..2]);
    assert_eq!(page.next, Some(OrderCursor::after(&old[1])));
    let (filter, _) = &queries.all()[0];
    assert_eq!(filter.request_id, Some(request_id()));
    assert_eq!(filter.status, Some(Status::Pending));
}

#[tokio::test]
async fn an_empty_first_page_tells_an_unknown_request_from_a_status_nobody_is_in() {
    let mut d = Doubles::new();
    serve_query(&mut d, old_orders(3));
    let mut seq = Sequence::new();
    d.orders
        .expect_progress()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(counts(3, 0, 0)));
    d.orders
        .expect_progress()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(StatusCounts::default()));
    let m = d.manager(Settings::default());
    let known = m
        .request_orders(&request_id(), Some(Status::Failure), 10, None)
        .await
        .unwrap();
    assert_eq!(known.map(|p| p.items.len()), Some(0));
    let unknown = m
        .request_orders(&RequestId::from_uuid(Uuid::from_u128(1)), None, 10, None)
        .await
        .unwrap();
    assert_eq!(unknown, None);
}
