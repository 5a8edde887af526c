//! The compare-and-set of one order, in one place: read it, compute its next state, write that
//! only if the stored order is still the one read, and read again when it changed meanwhile.

use cm_domain::{Order, OrderId};

use super::CommandManager;
use crate::store::{ReplaceError, StoreError};

/// How many times a compare-and-set is tried before the use case gives up with
/// [`StoreError::Contention`]; also how many full batches in a row that changed nothing a drain
/// accepts before it gives up the same way.
pub(super) const CAS_ATTEMPTS: usize = 5;

/// What [`CommandManager::change_order`] ended with.
#[derive(Debug)]
pub(super) enum Changed {
    /// The order was written; this is what it is now.
    Written(Order),
    /// The step asked for no change: the order as read.
    Unchanged(Order),
    /// No such order (or it was removed meanwhile).
    NotFound,
    /// The order changed under every one of [`CAS_ATTEMPTS`] attempts.
    Contended,
}

impl CommandManager {
    /// Changes the order `id` by compare-and-set: `step` gets the order as stored and answers
    /// its next state, `None` when nothing needs writing, or the error that ends the use case.
    /// When another writer changed the order in between, the order is read again and `step`
    /// runs again, up to [`CAS_ATTEMPTS`] times.
    ///
    /// # Errors
    /// What `step` answers, or the [`StoreError`] of a failed read or write.
    pub(super) async fn change_order<E: From<StoreError>>(
        &self,
        id: &OrderId,
        mut step: impl FnMut(&Order) -> Result<Option<Order>, E> + Send,
    ) -> Result<Changed, E> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(current) = self.ports.orders.get(id).await? else {
                return Ok(Changed::NotFound);
            };
            let Some(next) = step(&current)? else {
                return Ok(Changed::Unchanged(current));
            };
            match self.ports.orders.replace(&current, &next).await {
                Ok(()) => return Ok(Changed::Written(next)),
                // Changed meanwhile: look again.
                Err(ReplaceError::Conflict) => {}
                Err(ReplaceError::NotFound) => return Ok(Changed::NotFound),
                Err(ReplaceError::Store(e)) => return Err(e.into()),
            }
        }
        Ok(Changed::Contended)
    }
}
