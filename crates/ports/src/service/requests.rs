//! Rollout control over a whole request (docs/rollout.md): cancel what has not been handed out yet,
//! re-run the orders that ended in a status, and list one request's orders.

use cm_domain::{Agent, Command, Expander, FieldError, IdSource, Order, RequestId, Status};

use super::cas::CAS_ATTEMPTS;
use super::submit::{SubmittedRequest, Writer};
use super::{CommandManager, MAX_PAGE_SIZE};
use crate::clock::FreshIds;
use crate::metric::{Via, count_transition};
use crate::store::{OrderCursor, OrderFilter, OrderPageRequest, Page, StatusCounts, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryError {
    /// The status asked for is not one an order ends in (400).
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// No order has this request id.
    #[error("no such request")]
    NotFound,
    /// No order of the request ended in this status: there is nothing to re-run (422).
    #[error("no order of the request ended in {0}: nothing to retry")]
    NothingToRetry(Status),
    /// Storage failed; no order of the retry is acknowledged (503).
    #[error(transparent)]
    Unavailable(#[from] StoreError),
}

impl CommandManager {
    /// Cancels every still-`pending` order of `request` (`failure`, `cancelled`), in batches of
    /// `maintenance_batch` until none is left, and answers the per-status counts after the
    /// change; `None` when no order has this request id. Orders handed out meanwhile stay
    /// `sent`: the cancel never takes back a delivery.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails (orders cancelled before the failure stay cancelled);
    /// [`StoreError::Contention`] when the request's pending orders keep changing under every
    /// batch.
    #[tracing::instrument(skip(self), fields(request = %request))]
    pub async fn cancel_request(
        &self,
        request: &RequestId,
    ) -> Result<Option<StatusCounts>, StoreError> {
        let limit = self.settings.maintenance_batch.max(1);
        let mut cancelled = 0u64;
        let mut stalled = 0;
        let drained = loop {
            let now = self.ports.clock.now();
            let batch = match self.ports.orders.cancel_pending(request, now, limit).await {
                Ok(batch) => batch,
                Err(e) => break Err(e),
            };
            cancelled += batch.changed as u64;
            if batch.examined < limit {
                break Ok(());
            }
            // A full batch that changed nothing was delivered (or cancelled) by others
            // meanwhile; the next one looks again. A store that keeps answering so is broken.
            stalled = if batch.changed == 0 { stalled + 1 } else { 0 };
            if stalled >= CAS_ATTEMPTS {
                break Err(StoreError::Contention(
                    "the request's orders kept changing during the cancel".to_owned(),
                ));
            }
        };
        count_transition(Status::Failure, Via::Cancelled, cancelled);
        drained?;
        let counts = self.ports.orders.progress(request).await?;
        Ok((counts.total() > 0).then_some(counts))
    }

    /// Re-runs a request: a new request with one order for each target whose order of
    /// `request` ended in `status` (`success` or `failure`), with the same source, user,
    /// action and timeout, new ids, and `retry_of` = `request`. Its orders may be handed out at
    /// once. The old orders are read page by page, so a request of any size is re-run without
    /// being held in memory; like a submit it is all or nothing.
    ///
    /// The new orders go to the agents the old ones were for, with the groups they had then
    /// (the registry is not consulted: an agent removed since gets an order that expires).
    ///
    /// # Errors
    /// [`RetryError`].
    #[tracing::instrument(skip(self), fields(request = %request, status = %status))]
    pub async fn retry_request(
        &self,
        request: &RequestId,
        status: Status,
    ) -> Result<SubmittedRequest, RetryError> {
        if !status.is_terminal() {
            return Err(FieldError::new(
                "status",
                "must be success or failure: a status an order ends in",
            )
            .into());
        }
        let now = self.ports.clock.now();
        let mut ids = FreshIds;
        let retry_id = ids.request_id(0);
        let mut writer = Writer::new(self);
        writer.written.push(retry_id);
        let mut order_ids = Vec::new();
        let filter = OrderFilter {
            request_id: Some(*request),
            status: Some(status),
            ..OrderFilter::default()
        };
        let mut page = OrderPageRequest {
            size: self.settings.expansion_page.clamp(1, MAX_PAGE_SIZE),
            after: None,
        };
        loop {
            let found = match self.ports.orders.query(&filter, &page).await {
                Ok(found) => found,
                Err(e) => return Err(writer.abandon(e, false).await.into()),
            };
            for old in &found.items {
                let order = match retry_order(old, retry_id, *request, now, &mut ids) {
                    Ok(order) => order,
                    Err(e) => return Err(writer.abandon(e, false).await.into()),
                };
                if let Err(e) = writer.push(order, &mut order_ids).await {
                    return Err(writer.abandon(e, false).await.into());
                }
            }
            match found.next {
                Some(next) => page.after = Some(next),
                None => break,
            }
        }
        if order_ids.is_empty() {
            return Err(if self.ports.orders.progress(request).await?.total() == 0 {
                RetryError::NotFound
            } else {
                RetryError::NothingToRetry(status)
            });
        }
        if let Err(e) = writer.flush().await {
            return Err(writer.abandon(e, false).await.into());
        }
        writer.notify().await;
        Ok(SubmittedRequest {
            request_id: retry_id,
            order_ids,
        })
    }

    /// One page of the orders of `request` (in `status` when given), oldest first; the page
    /// size is capped at [`MAX_PAGE_SIZE`]. `None` when no order has this request id.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    pub async fn request_orders(
        &self,
        request: &RequestId,
        status: Option<Status>,
        size: usize,
        after: Option<OrderCursor>,
    ) -> Result<Option<Page<Order, OrderCursor>>, StoreError> {
        let filter = OrderFilter {
            request_id: Some(*request),
            status,
            ..OrderFilter::default()
        };
        let page = self.orders(&filter, size, after).await?;
        // Only an empty first page can mean an unknown request.
        if page.items.is_empty()
            && after.is_none()
            && self.ports.orders.progress(request).await?.total() == 0
        {
            return Ok(None);
        }
        Ok(Some(page))
    }
}

/// The order that re-runs `old` in the request `retry_id`.
fn retry_order(
    old: &Order,
    retry_id: RequestId,
    retried: RequestId,
    now: chrono::DateTime<chrono::Utc>,
    ids: &mut dyn IdSource,
) -> Result<Order, StoreError> {
    let command = Command::new(
        old.source(),
        old.user().map(str::to_owned),
        old.target().clone(),
        old.action().clone(),
        old.timeout(),
    )
    .map_err(|e| StoreError::Corrupt(format!("order {}: {e}", old.order_id())))?;
    let ex = Expander::new(&command, 0, retry_id, now).retry_of(retried);
    Ok(match old.agent() {
        Some(a) => ex.agent_order(&Agent::new(a.id().clone(), a.groups().to_vec()), ids),
        None => ex.server_order(ids),
    })
}
