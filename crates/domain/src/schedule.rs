//! Rollout control (docs/rollout.md): when a command's orders may first be handed out.
//!
//! A command may carry a [`Schedule`]: a start time and a rollout window. Its orders are spread
//! evenly over the window: order `i` of `n` gets `not_before = start + window * i / n`, so the
//! first starts at `start` and the last before `start + window`. Both rules are pure functions
//! of `now`.

use chrono::{DateTime, Duration, Utc};

use crate::error::FieldError;
use crate::time::truncate_to_millis;

/// When a command's orders may first be handed out, as submitted: a start time (`None`: at
/// once; a time in the past also means at once) and a window over which the orders are spread
/// (`None` or 0: all at the start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Schedule {
    start_at: Option<DateTime<Utc>>,
    rollout_secs: Option<u32>,
}

impl Schedule {
    /// The longest rollout window: 7 days.
    pub const MAX_ROLLOUT_SECS: u32 = 7 * 24 * 3600;
    /// The default of how far ahead a start may be: 30 days (the service's setting
    /// `limits.max_schedule_ahead_secs` may change it).
    pub const DEFAULT_HORIZON: Duration = Duration::days(30);

    /// A schedule from its parts: `start_at` an RFC 3339 time, `rollout_secs` 0..=7 days.
    /// Whether the start is too far ahead depends on `now`: see [`Self::validate`].
    ///
    /// # Errors
    /// A [`FieldError`] on `schedule.start_at` or `schedule.rollout_secs`.
    pub fn parse(start_at: Option<&str>, rollout_secs: Option<i64>) -> Result<Self, FieldError> {
        let start_at = start_at
            .map(|raw| {
                DateTime::parse_from_rfc3339(raw)
                    .map(|t| truncate_to_millis(t.with_timezone(&Utc)))
                    .map_err(|_| {
                        FieldError::new(
                            "schedule.start_at",
                            "must be an RFC 3339 time such as 2026-11-27T10:00:00Z",
                        )
                    })
            })
            .transpose()?;
        let rollout_secs = rollout_secs
            .map(|secs| {
                u32::try_from(secs)
                    .ok()
                    .filter(|s| *s <= Self::MAX_ROLLOUT_SECS)
                    .ok_or_else(|| {
                        FieldError::new(
                            "schedule.rollout_secs",
                            format!(
                                "must be an integer from 0 to {} (seconds, 7 days)",
                                Self::MAX_ROLLOUT_SECS
                            ),
                        )
                    })
            })
            .transpose()?;
        Ok(Self {
            start_at,
            rollout_secs,
        })
    }

    /// The start as submitted.
    #[must_use]
    pub const fn start_at(&self) -> Option<DateTime<Utc>> {
        self.start_at
    }

    /// The rollout window as submitted, in seconds.
    #[must_use]
    pub const fn rollout_secs(&self) -> Option<u32> {
        self.rollout_secs
    }

    /// The rollout this schedule means at `now`: a start in the past (or none) is `now`.
    #[must_use]
    pub fn rollout(&self, now: DateTime<Utc>) -> Rollout {
        Rollout {
            start: self.start_at.map_or(now, |t| t.max(now)),
            window_ms: u64::from(self.rollout_secs.unwrap_or(0)) * 1000,
        }
    }

    /// The rollout at `now`, refusing a start more than `horizon` ahead of `now`.
    ///
    /// # Errors
    /// A [`FieldError`] on `schedule.start_at` when it lies beyond `now + horizon`.
    pub fn validate(&self, now: DateTime<Utc>, horizon: Duration) -> Result<Rollout, FieldError> {
        if let Some(start) = self.start_at {
            let latest = now
                .checked_add_signed(horizon)
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            if start > latest {
                return Err(FieldError::new(
                    "schedule.start_at",
                    format!(
                        "must be at most {} seconds ahead of now",
                        horizon.num_seconds()
                    ),
                ));
            }
        }
        Ok(self.rollout(now))
    }
}

/// A resolved schedule: the start and the window the orders of one command are spread over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rollout {
    start: DateTime<Utc>,
    window_ms: u64,
}

impl Rollout {
    /// Every order at `now`.
    #[must_use]
    pub const fn immediate(now: DateTime<Utc>) -> Self {
        Self {
            start: now,
            window_ms: 0,
        }
    }

    #[must_use]
    pub const fn start(&self) -> DateTime<Utc> {
        self.start
    }

    /// The window, in milliseconds.
    #[must_use]
    pub const fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// The `not_before` of order `i` of `n`: `start + window * i / n`, in whole milliseconds
    /// (the precision of the stored documents). So the first order starts at `start`, the last
    /// before `start + window`, and they are evenly spread in between. An `i` of `n` or more
    /// (a member that joined a group while it was being expanded) gets the last slot; `n` of 0
    /// counts as 1.
    #[must_use]
    pub fn not_before(&self, i: u64, n: u64) -> DateTime<Utc> {
        let n = n.max(1);
        let i = i.min(n - 1);
        let offset = u128::from(self.window_ms) * u128::from(i) / u128::from(n);
        // `offset < window_ms <= 7 days`: it fits an `i64` of milliseconds.
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        self.start
            .checked_add_signed(Duration::milliseconds(offset))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap()
    }

    fn secs(s: i64) -> DateTime<Utc> {
        now() + Duration::seconds(s)
    }

    fn rollout(start: DateTime<Utc>, window_secs: u32) -> Rollout {
        Schedule {
            start_at: Some(start),
            rollout_secs: Some(window_secs),
        }
        .rollout(now())
    }

    #[test]
    fn the_first_order_starts_at_the_start_and_the_last_before_its_end() {
        let r = rollout(secs(60), 10);
        assert_eq!(r.not_before(0, 1000), secs(60));
        assert_eq!(
            r.not_before(999, 1000),
            secs(60) + Duration::milliseconds(9990)
        );
        assert!(r.not_before(999, 1000) < secs(70));
    }

    #[test]
    fn orders_are_spread_evenly_and_monotonically() {
        let r = rollout(secs(0), 10);
        let times: Vec<_> = (0..1000).map(|i| r.not_before(i, 1000)).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "monotone");
        // Every tenth of the orders starts a second later than the tenth before it.
        for decile in 0..10 {
            assert_eq!(times[decile * 100], secs(i64::try_from(decile).unwrap()));
        }
        // Uneven divisions stay monotone and inside the window.
        let r = rollout(secs(0), 7);
        let times: Vec<_> = (0..3).map(|i| r.not_before(i, 3)).collect();
        assert_eq!(
            times,
            [
                secs(0),
                secs(0) + Duration::milliseconds(2333),
                secs(0) + Duration::milliseconds(4666)
            ]
        );
    }

    #[test]
    fn a_single_order_starts_at_the_start() {
        assert_eq!(rollout(secs(5), 3600).not_before(0, 1), secs(5));
    }

    #[test]
    fn a_rollout_of_zero_starts_every_order_at_the_start() {
        let r = rollout(secs(5), 0);
        assert!((0..100).all(|i| r.not_before(i, 100) == secs(5)));
        let r = Schedule::default().rollout(now());
        assert_eq!(r, Rollout::immediate(now()));
        assert_eq!(r.not_before(42, 100), now());
    }

    #[test]
    fn a_late_member_gets_the_last_slot_and_zero_orders_count_as_one() {
        let r = rollout(secs(0), 10);
        assert_eq!(r.not_before(12, 10), r.not_before(9, 10));
        assert_eq!(r.not_before(0, 0), secs(0));
    }

    #[test]
    fn the_longest_window_over_the_largest_fan_out_does_not_overflow() {
        let r = rollout(secs(0), Schedule::MAX_ROLLOUT_SECS);
        let last = r.not_before(199_999, 200_000);
        assert!(last < secs(i64::from(Schedule::MAX_ROLLOUT_SECS)));
        assert!(last > secs(i64::from(Schedule::MAX_ROLLOUT_SECS) - 4));
    }

    #[test]
    fn a_start_in_the_past_or_none_is_now() {
        assert_eq!(rollout(secs(-3600), 0).start(), now());
        assert_eq!(Schedule::default().rollout(now()).start(), now());
    }

    #[test]
    fn the_start_may_be_at_most_the_horizon_ahead() {
        let horizon = Duration::days(30);
        let at = |t: DateTime<Utc>| Schedule {
            start_at: Some(t),
            rollout_secs: None,
        };
        let edge = now() + horizon;
        assert_eq!(at(edge).validate(now(), horizon).unwrap().start(), edge);
        let err = at(edge + Duration::milliseconds(1))
            .validate(now(), horizon)
            .unwrap_err();
        assert_eq!(err.field(), "schedule.start_at");
        assert!(err.message().contains("2592000"), "{}", err.message());
        assert!(at(secs(-10)).validate(now(), horizon).is_ok());
        assert!(
            Schedule::default()
                .validate(now(), Duration::zero())
                .is_ok()
        );
    }

    #[test]
    fn parsing_names_the_field_at_fault() {
        let s = Schedule::parse(Some("2026-11-27T11:00:00.123456+01:00"), Some(600)).unwrap();
        assert_eq!(
            s.start_at(),
            Some(now() + Duration::milliseconds(123)),
            "converted to UTC, truncated to milliseconds"
        );
        assert_eq!(s.rollout_secs(), Some(600));
        assert_eq!(Schedule::parse(None, None).unwrap(), Schedule::default());
        for bad in ["tomorrow", "2026-11-27", "2026-11-27 10:00:00", ""] {
            assert_eq!(
                Schedule::parse(Some(bad), None).unwrap_err().field(),
                "schedule.start_at",
                "{bad}"
            );
        }
        for bad in [-1, i64::from(Schedule::MAX_ROLLOUT_SECS) + 1, i64::MAX] {
            assert_eq!(
                Schedule::parse(None, Some(bad)).unwrap_err().field(),
                "schedule.rollout_secs",
                "{bad}"
            );
        }
        assert!(Schedule::parse(None, Some(0)).is_ok());
        assert!(Schedule::parse(None, Some(i64::from(Schedule::MAX_ROLLOUT_SECS))).is_ok());
    }
}
