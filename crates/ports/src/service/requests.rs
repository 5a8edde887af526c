//! Rollout control over a whole request (docs/rollout.md): cancel what has not been handed out yet,
//! re-run the orders that ended in a status, and list one request's orders.

use cm_domain::{
    Agent, Command, Expander, FieldError, IdSource, Order, PendingEnd, RequestId, RequestRecord,
    Status,
};

use super::records::RequestError;
use super::submit::{SubmittedRequest, Writer};
use super::{CommandManager, MAX_PAGE_SIZE};
use crate::clock::FreshIds;
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
    /// Cancels a request: its record (when it has one) becomes `cancelled`, which stops its
    /// orders going out at once, and every still-`pending` order (held or not) ends `failure`,
    /// `cancelled`, in batches of `maintenance_batch` until none is left. Answers the per-status
    /// counts after the change; `None` when neither a record nor an order has this id. Orders
    /// handed out meanwhile stay `sent`: the cancel never takes back a delivery. Cancelling a
    /// finished request changes nothing.
    ///
    /// # Errors
    /// [`RequestError::State`] for a request still being written; [`RequestError::Unavailable`]
    /// when storage fails (orders cancelled before the failure stay cancelled), with
    /// [`StoreError::Contention`] when the request's pending orders keep changing under every
    /// batch.
    #[tracing::instrument(skip(self), fields(request = %request))]
    pub async fn cancel_request(
        &self,
        request: &RequestId,
    ) -> Result<Option<StatusCounts>, RequestError> {
        let record = match self
            .change_record(request, |r, now| {
                if r.state().is_finished() {
                    Ok(None)
                } else {
                    r.cancel(now)
                }
            })
            .await
        {
            Ok(record) => Some(record),
            Err(RequestError::NotFound) => None,
            Err(e) => return Err(e),
        };
        let cancels = record
            .as_ref()
            .is_none_or(|r| r.state() == cm_domain::RequestState::Cancelled);
        if cancels {
            self.end_pending(request, PendingEnd::Cancelled).await?;
        }
        if let Some(record) = record {
            let (_, counts) = self.advance_record(record).await?;
            return Ok(Some(counts));
        }
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
        let filter = OrderFilter {
            request_id: Some(*request),
            status: Some(status),
            ..OrderFilter::default()
        };
        let mut page = OrderPageRequest {
            size: self.settings.expansion_page.clamp(1, MAX_PAGE_SIZE),
            after: None,
        };
        let mut found = self.ports.orders.query(&filter, &page).await?;
        let Some(first) = found.items.first() else {
            let known = self.ports.orders.progress(request).await?.total() > 0
                || self.ports.requests.get(request).await?.is_some();
            return Err(if known {
                RetryError::NothingToRetry(status)
            } else {
                RetryError::NotFound
            });
        };
        // The re-run keeps the original's rate control: a retry of a fleet-wide failure is as
        // dangerous as the first run.
        let original = self.ports.requests.get(request).await?;
        let mut command = command_of(first)?;
        let mut planned = 0;
        if let Some(rate) = original.as_ref().and_then(RequestRecord::rate_control) {
            command = command.with_rate_control(*rate);
            // Percentages resolve against the re-run's size.
            planned = self.ports.orders.progress(request).await?.get(status);
        }
        let record = RequestRecord::new(retry_id, &command, Some(*request), planned, now);
        let record = self.open_record(record).await?;
        let hold_from = record.rate_control().map(|_| record.released());
        let mut writer = Writer::new(self);
        writer.written.push(retry_id);
        writer.records.push(record);
        let mut order_ids = Vec::new();
        let mut slot = 0u64;
        loop {
            for old in &found.items {
                let order =
                    match retry_order(old, retry_id, *request, now, slot, hold_from, &mut ids) {
                        Ok(order) => order,
                        Err(e) => return Err(writer.abandon(e, false).await.into()),
                    };
                slot += 1;
                if let Err(e) = writer.push(order, &mut order_ids).await {
                    return Err(writer.abandon(e, false).await.into());
                }
            }
            match found.next {
                Some(next) => page.after = Some(next),
                None => break,
            }
            found = match self.ports.orders.query(&filter, &page).await {
                Ok(found) => found,
                Err(e) => return Err(writer.abandon(e, false).await.into()),
            };
        }
        if let Err(e) = writer.flush().await {
            return Err(writer.abandon(e, false).await.into());
        }
        if let Err(e) = writer.commit(&[order_ids.len() as u64]).await {
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
        // Only an empty first page can mean an unknown request; a request with a record is
        // known even when none of its orders is left (aborted, or purged by retention).
        if page.items.is_empty()
            && after.is_none()
            && self.ports.orders.progress(request).await?.total() == 0
            && self.ports.requests.get(request).await?.is_none()
        {
            return Ok(None);
        }
        Ok(Some(page))
    }
}

/// The command an order was expanded from (its target the order's own).
fn command_of(old: &Order) -> Result<Command, StoreError> {
    Command::new(
        old.source(),
        old.user().map(str::to_owned),
        old.target().clone(),
        old.action().clone(),
        old.timeout(),
    )
    .map_err(|e| StoreError::Corrupt(format!("order {}: {e}", old.order_id())))
}

/// The order that re-runs `old` in the request `retry_id`, in position `slot` (held from
/// `hold_from` on, under rate control).
fn retry_order(
    old: &Order,
    retry_id: RequestId,
    retried: RequestId,
    now: chrono::DateTime<chrono::Utc>,
    slot: u64,
    hold_from: Option<u64>,
    ids: &mut dyn IdSource,
) -> Result<Order, StoreError> {
    let command = command_of(old)?;
    let mut ex = Expander::new(&command, 0, retry_id, now).retry_of(retried);
    if let Some(released) = hold_from {
        ex = ex.hold_from(released);
    }
    Ok(match old.agent() {
        Some(a) => ex.agent_order_at(slot, &Agent::new(a.id().clone(), a.groups().to_vec()), ids),
        None => ex.server_order(ids),
    })
}
