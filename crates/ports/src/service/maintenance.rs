//! Scheduled maintenance of the stream: expiry, giving up on unreported orders, retention.

use chrono::{DateTime, Utc};
use cm_domain::Status;

use super::CommandManager;
use crate::metric::{self, Via, count_transition};
use crate::store::{RetentionMode, StoreError};

/// One kind of maintenance batch.
#[derive(Debug, Clone, Copy)]
enum Sweep {
    Expire,
    GiveUp,
    /// Finished orders older than `age`.
    Purge {
        age: chrono::Duration,
        mode: RetentionMode,
    },
}

impl CommandManager {
    /// Expires every pending order whose deadline has passed, batch after batch until none is
    /// left (never one fixed batch per run).
    ///
    /// # Errors
    /// [`StoreError`]; batches done before the failure stay done.
    pub async fn expire_overdue(&self) -> Result<u64, StoreError> {
        let n = self.drain(Sweep::Expire).await?;
        count_transition(Status::Failure, Via::Expired, n);
        Ok(n)
    }

    /// Fails every delivered order whose result deadline has passed (`no result`).
    ///
    /// # Errors
    /// [`StoreError`]; batches done before the failure stay done.
    pub async fn give_up_unreported(&self) -> Result<u64, StoreError> {
        let n = self.drain(Sweep::GiveUp).await?;
        count_transition(Status::Failure, Via::NoResult, n);
        Ok(n)
    }

    /// Deletes or archives finished orders older than the retention age (nothing when
    /// retention is off).
    ///
    /// # Errors
    /// [`StoreError`]; batches done before the failure stay done.
    pub async fn apply_retention(&self) -> Result<u64, StoreError> {
        let Some(age) = self.settings.retention else {
            return Ok(0);
        };
        let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
        let mode = self.settings.retention_mode;
        let n = self.drain(Sweep::Purge { age, mode }).await?;
        if n > 0 {
            metrics::counter!(metric::ORDERS_PURGED.name, "mode" => mode.as_str()).increment(n);
        }
        // Settled request records go with their orders (they finished no later than their
        // last order).
        let limit = self.settings.maintenance_batch.max(1);
        loop {
            let cutoff = self
                .ports
                .clock
                .now()
                .checked_sub_signed(age)
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            let purged = self.ports.requests.purge_settled(cutoff, limit).await?;
            if purged < limit as u64 {
                break;
            }
        }
        Ok(n)
    }

    /// Repeats `sweep` while it finds full batches and changes something.
    // A plain `match` rather than an async closure: futures of async closures borrowing
    // `self` are not provably `Send`, and the drivers spawn these use cases.
    async fn drain(&self, sweep: Sweep) -> Result<u64, StoreError> {
        let orders = &self.ports.orders;
        let limit = orders.sweep_batch(self.settings.maintenance_batch).max(1);
        let mut total = 0u64;
        loop {
            let now = self.ports.clock.now();
            let batch = match sweep {
                Sweep::Expire => orders.expire_due(now, limit).await?,
                Sweep::GiveUp => orders.give_up_unreported(now, limit).await?,
                Sweep::Purge { age, mode } => {
                    let cutoff = now
                        .checked_sub_signed(age)
                        .unwrap_or(DateTime::<Utc>::MIN_UTC);
                    orders.purge_finished(cutoff, mode, limit).await?
                }
            };
            total += batch.changed as u64;
            if batch.examined < limit || batch.changed == 0 {
                return Ok(total);
            }
        }
    }
}
