//! Reading the orders stream and cancelling orders.

use cm_domain::{Order, OrderId, RequestId, Status};

use super::CommandManager;
use super::cas::Changed;
use crate::metric::{Via, count_transition};
use crate::store::{OrderCursor, OrderFilter, OrderPageRequest, Page, StatusCounts, StoreError};

/// Largest page a query may ask for.
pub const MAX_PAGE_SIZE: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CancelError {
    #[error("no such order")]
    NotFound,
    /// Only a `pending` order can be cancelled (409).
    #[error("order is {0}: only pending orders can be cancelled")]
    NotPending(Status),
    #[error(transparent)]
    Unavailable(#[from] StoreError),
}

impl CommandManager {
    /// # Errors
    /// [`StoreError`] when storage fails.
    pub async fn order(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        self.ports.orders.get(id).await
    }

    /// One page of the orders matching `filter`; the page size is capped at [`MAX_PAGE_SIZE`].
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    pub async fn orders(
        &self,
        filter: &OrderFilter,
        size: usize,
        after: Option<OrderCursor>,
    ) -> Result<Page<Order, OrderCursor>, StoreError> {
        let page = OrderPageRequest {
            size: size.clamp(1, MAX_PAGE_SIZE),
            after,
        };
        self.ports.orders.query(filter, &page).await
    }

    /// The per-status counts of one request; `None` when no order has that request id.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    pub async fn progress(&self, request: &RequestId) -> Result<Option<StatusCounts>, StoreError> {
        let counts = self.ports.orders.progress(request).await?;
        Ok((counts.total() > 0).then_some(counts))
    }

    /// Cancels a pending order (`failure`, `cancelled`).
    ///
    /// # Errors
    /// [`CancelError`]; `Unavailable` with [`StoreError::Contention`] when the order kept
    /// changing under every attempt.
    pub async fn cancel(&self, id: &OrderId) -> Result<Order, CancelError> {
        let changed = self
            .change_order(id, |current| {
                // A pending order that was delivered meanwhile answers NotPending.
                current
                    .cancel(self.ports.clock.now())
                    .map(Some)
                    .map_err(|e| CancelError::NotPending(e.status))
            })
            .await?;
        match changed {
            Changed::Written(next) => {
                count_transition(Status::Failure, Via::Cancelled, 1);
                Ok(next)
            }
            // `cancel` always asks for a change.
            Changed::Unchanged(current) => Ok(current),
            Changed::NotFound => Err(CancelError::NotFound),
            // Still pending yet changing under us every time: answer "try again later"
            // rather than spin forever.
            Changed::Contended => Err(StoreError::Contention(
                "the order kept changing during the cancel".to_owned(),
            )
            .into()),
        }
    }
}
