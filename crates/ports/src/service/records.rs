//! Requests as records (docs/requests.md): reading and listing them with their counts, pausing and
//! resuming them, the breakdown of their results, and the steps that move them along (releases
//! under a concurrency cap, the stop when the error budget runs out, completion, the abort of a
//! submit that never completed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cm_domain::{
    Consumer, PendingEnd, RequestId, RequestRecord, RequestState, RequestStateError, Status,
    StatusCounts,
};

use super::CommandManager;
use super::cas::CAS_ATTEMPTS;
use crate::metric::{self, Via, count_transition};
use crate::store::{
    OrderFilter, OrderPageRequest, Page, ReplaceError, RequestCursor, RequestFilter,
    RequestPageRequest, ResultGroup, StoreError,
};

/// A request as answered to clients: its record (none for a request submitted before records
/// existed) and the counts of its orders (frozen once settled, live before).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestView {
    pub request_id: RequestId,
    pub record: Option<RequestRecord>,
    pub counts: StatusCounts,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No record and no order has this request id (404).
    #[error("no such request")]
    NotFound,
    /// The request's state does not allow the step (409).
    #[error(transparent)]
    State(#[from] RequestStateError),
    /// Storage failed (503).
    #[error(transparent)]
    Unavailable(#[from] StoreError),
}

/// The requests this instance is moving along right now, each with whether it was asked to
/// again meanwhile: concurrent reports of one request's orders cost one pass at a time, and the
/// last report is never left without a pass after it.
#[derive(Debug, Default, Clone)]
pub(super) struct Advancing(Arc<Mutex<HashMap<RequestId, bool>>>);

impl Advancing {
    /// `true` when the caller is to run the pass; `false` when one is running and will run again.
    fn enter(&self, id: RequestId) -> bool {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get_mut(&id) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                map.insert(id, false);
                true
            }
        }
    }

    /// `true` when another pass was asked for while this one ran.
    fn leave(&self, id: RequestId) -> bool {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get_mut(&id) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                map.remove(&id);
                false
            }
        }
    }
}

/// Counts a request entering `state`.
pub(super) fn count_request(state: RequestState) {
    metrics::counter!(metric::REQUEST_TRANSITIONS.name, "to" => state.as_str()).increment(1);
}

impl CommandManager {
    fn max_hold(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.settings.max_hold).unwrap_or(chrono::Duration::MAX)
    }

    /// One request with its counts; `None` when neither a record nor an order has this id. An
    /// unsettled request is moved along first (completion, releases), so what is answered is
    /// current.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    pub async fn request(&self, id: &RequestId) -> Result<Option<RequestView>, StoreError> {
        let Some(record) = self.ports.requests.get(id).await? else {
            let counts = self.ports.orders.progress(id).await?;
            return Ok((counts.total() > 0).then_some(RequestView {
                request_id: *id,
                record: None,
                counts,
            }));
        };
        let (record, counts) = self.advance_record(record).await?;
        Ok(Some(RequestView {
            request_id: *id,
            record: Some(record),
            counts,
        }))
    }

    /// One page of request records matching `filter`, newest first, each with its counts; the
    /// page size is capped at [`super::MAX_PAGE_SIZE`].
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    pub async fn requests(
        &self,
        filter: &RequestFilter,
        size: usize,
        after: Option<RequestCursor>,
    ) -> Result<Page<RequestView, RequestCursor>, StoreError> {
        let page = RequestPageRequest {
            size: size.clamp(1, super::MAX_PAGE_SIZE),
            after,
        };
        let found = self.ports.requests.list(filter, &page).await?;
        let mut items = Vec::with_capacity(found.items.len());
        for record in found.items {
            let counts = match record.counts() {
                Some(c) => *c,
                None => self.ports.orders.progress(record.request_id()).await?,
            };
            items.push(RequestView {
                request_id: *record.request_id(),
                record: Some(record),
                counts,
            });
        }
        Ok(Page {
            items,
            next: found.next,
        })
    }

    /// The finished orders of a request grouped by how they ended, largest group first; `None`
    /// for an unknown request.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    pub async fn request_results(
        &self,
        id: &RequestId,
    ) -> Result<Option<Vec<ResultGroup>>, StoreError> {
        let groups = self.ports.orders.result_groups(id).await?;
        if groups.is_empty()
            && self.ports.requests.get(id).await?.is_none()
            && self.ports.orders.progress(id).await?.total() == 0
        {
            return Ok(None);
        }
        Ok(Some(groups))
    }

    /// Holds every order of the request not handed out yet; orders already out finish normally.
    ///
    /// # Errors
    /// [`RequestError`]: `NotFound` also for a request without a record (submitted before
    /// records existed), `State` for a finished one.
    pub async fn pause_request(&self, id: &RequestId) -> Result<RequestView, RequestError> {
        let record = self.change_record(id, |r, now| r.pause(now)).await?;
        let (record, counts) = self.advance_record(record).await?;
        Ok(RequestView {
            request_id: *id,
            record: Some(record),
            counts,
        })
    }

    /// Lets a paused request's orders go out again, under its rate control.
    ///
    /// # Errors
    /// [`RequestError`], as [`Self::pause_request`].
    pub async fn resume_request(&self, id: &RequestId) -> Result<RequestView, RequestError> {
        let record = self.change_record(id, |r, now| r.resume(now)).await?;
        let (record, counts) = self.advance_record(record).await?;
        self.wake_pending(id).await?;
        Ok(RequestView {
            request_id: *id,
            record: Some(record),
            counts,
        })
    }

    /// Reads the record `id`, computes its next version with `step` and writes it by
    /// compare-and-set, reading again when it changed meanwhile. Answers the record as it is
    /// now.
    pub(super) async fn change_record(
        &self,
        id: &RequestId,
        step: impl Fn(
            &RequestRecord,
            chrono::DateTime<chrono::Utc>,
        ) -> Result<Option<RequestRecord>, RequestStateError>
        + Send
        + Sync,
    ) -> Result<RequestRecord, RequestError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(current) = self.ports.requests.get(id).await? else {
                return Err(RequestError::NotFound);
            };
            let Some(next) = step(&current, self.ports.clock.now())? else {
                return Ok(current);
            };
            match self.ports.requests.replace(&current, &next).await {
                Ok(()) => {
                    count_request(next.state());
                    return Ok(next);
                }
                Err(ReplaceError::Conflict) => {}
                Err(ReplaceError::NotFound) => return Err(RequestError::NotFound),
                Err(ReplaceError::Store(e)) => return Err(e.into()),
            }
        }
        Err(StoreError::Contention("the request kept changing".to_owned()).into())
    }

    /// Moves the request `id` along after one of its orders finished (a report, a give-up),
    /// when it has rate control: releases held orders into freed slots, stops it when its error
    /// budget is exhausted, completes it. Concurrent calls for one request on this instance
    /// coalesce into one pass at a time.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    pub async fn advance_request(&self, id: &RequestId) -> Result<(), StoreError> {
        if !self.advancing.enter(*id) {
            return Ok(());
        }
        loop {
            let result = match self.ports.requests.get(id).await {
                Ok(Some(record)) => self.advance_record(record).await.map(|_| ()),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            let again = self.advancing.leave(*id);
            if result.is_err() || !again {
                if result.is_err() && again {
                    // Leave no entry behind: the next report starts a pass of its own.
                    self.advancing.leave(*id);
                }
                return result;
            }
        }
    }

    /// Applies what is due for `record` given the live counts of its orders, until nothing
    /// is: the record's next version (compare-and-set; on a conflict the record is read
    /// again), the end of its pending orders, the release of held ones (whose consumers are
    /// woken). Answers the record and counts as they are after.
    pub(super) async fn advance_record(
        &self,
        mut record: RequestRecord,
    ) -> Result<(RequestRecord, StatusCounts), StoreError> {
        let id = *record.request_id();
        let mut counts = match record.counts() {
            Some(c) => return Ok((record.clone(), *c)),
            None => self.ports.orders.progress(&id).await?,
        };
        // Each round either changes the record, ends pending orders, or releases held ones;
        // a request needs at most a handful (stop, end, settle), the rest is contention.
        for _ in 0..(CAS_ATTEMPTS * 2) {
            let now = self.ports.clock.now();
            let step = record.step(&counts, now, self.max_hold());
            let changes_record = step.record.is_some();
            if let Some(next) = step.record {
                match self.ports.requests.replace(&record, &next).await {
                    Ok(()) => {
                        if next.state() != record.state() {
                            count_request(next.state());
                            if next.state() == RequestState::Stopped {
                                metrics::counter!(
                                    metric::REQUEST_STOPS.name,
                                    "reason" => next.state_reason().unwrap_or("").to_owned(),
                                )
                                .increment(1);
                            }
                        }
                        record = next;
                    }
                    Err(ReplaceError::Conflict) => {
                        match self.ports.requests.get(&id).await? {
                            Some(r) => record = r,
                            None => return Ok((record, counts)),
                        }
                        if let Some(c) = record.counts() {
                            return Ok((record.clone(), *c));
                        }
                        counts = self.ports.orders.progress(&id).await?;
                        continue;
                    }
                    Err(ReplaceError::NotFound) => return Ok((record, counts)),
                    Err(ReplaceError::Store(e)) => return Err(e),
                }
                if record.is_settled() {
                    break;
                }
            }
            if let Some(end) = step.end_pending {
                self.end_pending(&id, end).await?;
                counts = self.ports.orders.progress(&id).await?;
                continue;
            }
            if let Some(below) = step.release_below {
                self.release(&id, below).await?;
            }
            if !changes_record {
                break;
            }
        }
        Ok((record, counts))
    }

    /// Ends every pending order of `request` as `end` says, batch after batch.
    pub(super) async fn end_pending(
        &self,
        request: &RequestId,
        end: PendingEnd,
    ) -> Result<u64, StoreError> {
        let limit = self.settings.maintenance_batch.max(1);
        let mut ended = 0u64;
        let mut stalled = 0;
        let via = match end {
            PendingEnd::Cancelled => Via::Cancelled,
            PendingEnd::Stopped => Via::Stopped,
            PendingEnd::Expired => Via::Expired,
        };
        let drained = loop {
            let now = self.ports.clock.now();
            let batch = match self
                .ports
                .orders
                .end_pending(request, end, now, limit)
                .await
            {
                Ok(batch) => batch,
                Err(e) => break Err(e),
            };
            ended += batch.changed as u64;
            if batch.examined < limit {
                break Ok(());
            }
            // A full batch that changed nothing was delivered (or ended) by others meanwhile;
            // the next one looks again. A store that keeps answering so is broken.
            stalled = if batch.changed == 0 { stalled + 1 } else { 0 };
            if stalled >= CAS_ATTEMPTS {
                break Err(StoreError::Contention(
                    "the request's orders kept changing while they were ended".to_owned(),
                ));
            }
        };
        count_transition(Status::Failure, via, ended);
        drained.map(|()| ended)
    }

    /// Releases the held orders of `request` below position `below` and wakes their consumers.
    async fn release(&self, request: &RequestId, below: u64) -> Result<u64, StoreError> {
        let limit = self.settings.maintenance_batch.max(1);
        let mut released = 0u64;
        loop {
            let now = self.ports.clock.now();
            let orders = self
                .ports
                .orders
                .release_held(request, below, now, limit)
                .await?;
            released += orders.len() as u64;
            let mut woken: Vec<Consumer> = orders.iter().filter_map(|o| o.consumer()).collect();
            woken.sort_unstable();
            woken.dedup();
            if !woken.is_empty()
                && let Err(e) = self.ports.notifier.notify(&woken).await
            {
                tracing::warn!(error = %e, "could not notify other instances; their polls find the released orders at the next re-check");
            }
            if orders.len() < limit {
                break;
            }
        }
        if released > 0 {
            metrics::counter!(metric::ORDERS_RELEASED.name).increment(released);
        }
        Ok(released)
    }

    /// Wakes the consumers of every pending order of `request` (after the request's gate
    /// opened: a commit, a resume), page by page.
    pub(super) async fn wake_pending(&self, request: &RequestId) -> Result<(), StoreError> {
        let filter = OrderFilter {
            request_id: Some(*request),
            status: Some(Status::Pending),
            ..OrderFilter::default()
        };
        let mut page = OrderPageRequest {
            size: super::MAX_PAGE_SIZE,
            after: None,
        };
        loop {
            let found = self.ports.orders.query(&filter, &page).await?;
            let mut woken: Vec<Consumer> = found
                .items
                .iter()
                .filter(|o| !o.is_held())
                .filter_map(cm_domain::Order::consumer)
                .collect();
            woken.sort_unstable();
            woken.dedup();
            if !woken.is_empty()
                && let Err(e) = self.ports.notifier.notify(&woken).await
            {
                tracing::warn!(error = %e, "could not notify other instances; their polls find the orders at the next re-check");
            }
            match found.next {
                Some(next) => page.after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// The scheduler's pass over unsettled requests: submits left `writing` past the grace
    /// period are aborted (their orders removed), the others moved along (start, releases,
    /// stops, completion, settling). One pass looks at up to `maintenance_batch` requests,
    /// oldest first, and the next pass carries on after the last one (then starts over), so a
    /// pass stays short however many requests are active. Answers how many records changed
    /// state.
    ///
    /// # Errors
    /// [`StoreError`]; requests done before the failure stay done.
    pub async fn advance_requests(&self) -> Result<u64, StoreError> {
        let limit = self.settings.maintenance_batch.max(1);
        let grace = chrono::Duration::from_std(self.settings.writing_grace)
            .unwrap_or(chrono::Duration::MAX);
        let after = *self
            .requests_cursor
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let records = self.ports.requests.unsettled(after, limit).await?;
        *self
            .requests_cursor
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = match records.last() {
            Some(last) if records.len() == limit => Some(RequestCursor::after(last)),
            _ => None,
        };
        let mut changed = 0u64;
        for record in &records {
            let before = record.state();
            let now = self.ports.clock.now();
            let state = if before == RequestState::Writing {
                if record.updated_at() + grace > now {
                    continue;
                }
                self.abort_record(record.clone()).await?
            } else if before == RequestState::Aborted {
                // Aborted, but its orders not yet removed (the remover died): finish it.
                self.abort_record(record.clone()).await?
            } else {
                self.advance_record(record.clone()).await?.0.state()
            };
            if state != before {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// A submit that never completed: `writing -> aborted`, its orders removed, then settled.
    /// Answers the state the record is left in (another writer may have committed it first).
    pub(super) async fn abort_record(
        &self,
        record: RequestRecord,
    ) -> Result<RequestState, StoreError> {
        let id = *record.request_id();
        let now = self.ports.clock.now();
        let mut current = record;
        if current.state() == RequestState::Writing {
            let Ok(aborted) = current.abort(now) else {
                return Ok(current.state());
            };
            match self.ports.requests.replace(&current, &aborted).await {
                Ok(()) => {
                    count_request(RequestState::Aborted);
                    tracing::warn!(request = %id, "aborted a submit that never completed; its orders are removed");
                    current = aborted;
                }
                // Committed or aborted by someone else meanwhile: theirs stands.
                Err(ReplaceError::Conflict | ReplaceError::NotFound) => {
                    return Ok(self
                        .ports
                        .requests
                        .get(&id)
                        .await?
                        .map_or(RequestState::Aborted, |r| r.state()));
                }
                Err(ReplaceError::Store(e)) => return Err(e),
            }
        }
        if current.state() == RequestState::Aborted && !current.is_settled() {
            self.ports.orders.delete_request(&id).await?;
            // Nothing of it is left to count.
            let settled = current.settle(StatusCounts::default(), self.ports.clock.now());
            match self.ports.requests.replace(&current, &settled).await {
                Ok(()) | Err(ReplaceError::Conflict | ReplaceError::NotFound) => {}
                Err(ReplaceError::Store(e)) => return Err(e),
            }
        }
        Ok(current.state())
    }
}
