//! The maintenance jobs: draining in batches, retention's cutoff, errors.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mockall::Sequence;

use super::{Calls, Doubles, at, t0};
use crate::Settings;
use crate::clock::MockClock;
use crate::store::{Batch, RetentionMode, StoreError};

fn batch(examined: usize, changed: usize) -> Batch {
    Batch { examined, changed }
}

fn batches_of(n: usize) -> Settings {
    Settings {
        maintenance_batch: n,
        ..Settings::default()
    }
}

/// An orders double whose `expire_due` answers `answers` in turn, recording its arguments.
fn expiry_answers(
    d: &mut Doubles,
    answers: Vec<Result<Batch, StoreError>>,
) -> Calls<(DateTime<Utc>, usize)> {
    let calls = Calls::new();
    let mut seq = Sequence::new();
    for answer in answers {
        let seen = calls.clone();
        d.orders
            .expect_expire_due()
            .times(1)
            .in_sequence(&mut seq)
            .return_once(move |now, limit| {
                seen.push((now, limit));
                answer
            });
    }
    calls
}

#[tokio::test]
async fn expiry_keeps_asking_while_batches_are_full_and_change_something() {
    let mut d = Doubles::new();
    let calls = expiry_answers(
        &mut d,
        vec![Ok(batch(10, 10)), Ok(batch(10, 7)), Ok(batch(3, 3))],
    );
    let n = d.manager(batches_of(10)).expire_overdue().await.unwrap();
    assert_eq!(n, 20);
    assert_eq!(calls.all(), [(t0(), 10); 3]);
}

#[tokio::test]
async fn expiry_stops_on_a_short_batch() {
    let mut d = Doubles::new();
    let calls = expiry_answers(&mut d, vec![Ok(batch(4, 4))]);
    let n = d.manager(batches_of(10)).expire_overdue().await.unwrap();
    assert_eq!(n, 4);
    assert_eq!(calls.all().len(), 1);
}

#[tokio::test]
async fn expiry_stops_when_a_full_batch_changed_nothing() {
    let mut d = Doubles::new();
    let calls = expiry_answers(&mut d, vec![Ok(batch(10, 10)), Ok(batch(10, 0))]);
    let n = d.manager(batches_of(10)).expire_overdue().await.unwrap();
    assert_eq!(n, 10);
    assert_eq!(calls.all().len(), 2);
}

#[tokio::test]
async fn every_expiry_batch_reads_the_clock_again() {
    let mut d = Doubles::new();
    let mut clock = MockClock::new();
    let mut ticks = Sequence::new();
    for secs in [100, 105] {
        clock
            .expect_now()
            .times(1)
            .in_sequence(&mut ticks)
            .return_const(at(secs));
    }
    d.clock = clock;
    let calls = expiry_answers(&mut d, vec![Ok(batch(10, 10)), Ok(batch(0, 0))]);
    d.manager(batches_of(10)).expire_overdue().await.unwrap();
    assert_eq!(calls.all(), [(at(100), 10), (at(105), 10)]);
}

#[tokio::test]
async fn an_expiry_error_propagates_after_the_batches_before_it() {
    let mut d = Doubles::new();
    let down = StoreError::Unavailable("down".to_owned());
    let calls = expiry_answers(&mut d, vec![Ok(batch(10, 10)), Err(down.clone())]);
    let err = d
        .manager(batches_of(10))
        .expire_overdue()
        .await
        .unwrap_err();
    assert_eq!(err, down);
    assert_eq!(calls.all().len(), 2);
}

#[tokio::test]
async fn a_zero_maintenance_batch_is_taken_as_one() {
    let mut d = Doubles::new();
    let calls = expiry_answers(&mut d, vec![Ok(batch(1, 1)), Ok(batch(0, 0))]);
    let n = d.manager(batches_of(0)).expire_overdue().await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(calls.all(), [(t0(), 1); 2]);
}

#[tokio::test]
async fn giving_up_on_unreported_orders_drains_in_batches_too() {
    let mut d = Doubles::new();
    let mut seq = Sequence::new();
    for answer in [batch(5, 5), batch(5, 5), batch(2, 2)] {
        d.orders
            .expect_give_up_unreported()
            .times(1)
            .in_sequence(&mut seq)
            .withf(|now, limit| *now == t0() && *limit == 5)
            .return_const(Ok(answer));
    }
    let n = d.manager(batches_of(5)).give_up_unreported().await.unwrap();
    assert_eq!(n, 12);
}

#[tokio::test]
async fn retention_purges_with_now_minus_the_retention_age_and_the_configured_mode() {
    for mode in [RetentionMode::Delete, RetentionMode::Archive] {
        let mut d = Doubles::new();
        let mut seq = Sequence::new();
        for answer in [batch(50, 50), batch(20, 20)] {
            d.orders
                .expect_purge_finished()
                .times(1)
                .in_sequence(&mut seq)
                .withf(move |cutoff, m, limit| *cutoff == at(-3600) && *m == mode && *limit == 50)
                .return_const(Ok(answer));
        }
        let settings = Settings {
            retention: Some(Duration::from_secs(3600)),
            retention_mode: mode,
            maintenance_batch: 50,
            ..Settings::default()
        };
        let n = d.manager(settings).apply_retention().await.unwrap();
        assert_eq!(n, 70, "{mode:?}");
    }
}

#[tokio::test]
async fn retention_does_nothing_when_it_is_off() {
    let mut d = Doubles::new();
    d.orders.expect_purge_finished().never();
    let settings = Settings {
        retention: None,
        ..Settings::default()
    };
    assert_eq!(d.manager(settings).apply_retention().await.unwrap(), 0);
}

#[tokio::test]
async fn a_retention_age_beyond_the_calendar_purges_only_what_finished_at_the_dawn_of_time() {
    let mut d = Doubles::new();
    d.orders
        .expect_purge_finished()
        .times(1)
        .withf(|cutoff, _, _| *cutoff == DateTime::<Utc>::MIN_UTC)
        .return_const(Ok(batch(0, 0)));
    let settings = Settings {
        retention: Some(Duration::MAX),
        ..Settings::default()
    };
    assert_eq!(d.manager(settings).apply_retention().await.unwrap(), 0);
}

#[tokio::test]
async fn a_retention_error_propagates() {
    let mut d = Doubles::new();
    let down = StoreError::Unavailable("down".to_owned());
    d.orders
        .expect_purge_finished()
        .return_const(Err(down.clone()));
    let err = d
        .manager(Settings::default())
        .apply_retention()
        .await
        .unwrap_err();
    assert_eq!(err, down);
}

#[tokio::test]
async fn the_drain_asks_for_the_batch_the_backend_sweeps_best_in() {
    let mut d = Doubles::new();
    d.orders = crate::store::MockOrderStore::new();
    d.orders
        .expect_sweep_batch()
        .withf(|configured| *configured == 10)
        .returning(|_| 40);
    let calls = expiry_answers(&mut d, vec![Ok(batch(40, 40)), Ok(batch(12, 12))]);
    let n = d.manager(batches_of(10)).expire_overdue().await.unwrap();
    assert_eq!(n, 52);
    assert_eq!(
        calls.all(),
        [(t0(), 40); 2],
        "a full batch is the backend's 40, not the configured 10"
    );
}
