//! Group commit (docs/requests.md): the whole requests of concurrent submits are written by one
//! storage call, so they share one transaction and one fsync, while each caller still gets
//! its own answer only once its requests are durable.
//!
//! No background task and no timer: a submit queues its requests and waits for its turn at
//! the writer; whoever holds the turn writes everything queued so far (oldest first, up to a
//! bound), so submits that arrive while a group is being written form the next group. Alone,
//! a submit writes at once and waits for nobody.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cm_domain::Consumer;
use tokio::sync::oneshot;

use crate::notify::Notifier;
use crate::store::{RequestStore, StoreError, WholeOutcome, WholeRequest};

/// What a group write answers one submit: the outcome of each of its requests, `None` when the
/// backend cannot write whole requests.
pub(super) type Answer = Result<Option<Vec<WholeOutcome>>, StoreError>;

/// One submit's requests waiting in the queue.
struct Waiting {
    requests: Vec<WholeRequest>,
    /// The consumers its orders wake once durable.
    woken: Vec<Consumer>,
    answer: oneshot::Sender<Answer>,
}

impl Waiting {
    fn orders(&self) -> usize {
        self.requests.iter().map(|w| w.orders.len()).sum()
    }
}

#[derive(Default)]
pub(super) struct GroupCommit {
    queue: Mutex<VecDeque<Waiting>>,
    /// Held by the submit writing the next group.
    turn: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("queued", &self.lock().len())
            .finish_non_exhaustive()
    }
}

fn unanswered() -> StoreError {
    StoreError::Unavailable("the group write ended without an answer".to_owned())
}

impl GroupCommit {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Waiting>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `requests` with those of whichever submits are queued beside them; answers once
    /// they are durable (and `woken` notified) or failed. A group holds up to `max_orders`
    /// orders, and always at least one submit.
    pub(super) async fn write(
        &self,
        store: &Arc<dyn RequestStore>,
        notifier: &Arc<dyn Notifier>,
        max_orders: usize,
        requests: Vec<WholeRequest>,
        woken: Vec<Consumer>,
    ) -> Answer {
        let (answer, mut answered) = oneshot::channel();
        self.lock().push_back(Waiting {
            requests,
            woken,
            answer,
        });
        let _turn = self.turn.lock().await;
        loop {
            match answered.try_recv() {
                Ok(a) => return a,
                Err(oneshot::error::TryRecvError::Closed) => return Err(unanswered()),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let group = self.take(max_orders);
            if group.is_empty() {
                // Ours is in a group whose writer went away mid-write; its task still answers.
                return answered.await.unwrap_or_else(|_| Err(unanswered()));
            }
            // A task of its own, so that the submits of the group get their answers even if
            // this caller goes away (its client hung up) while the group is written.
            let task = tokio::spawn(write_group(Arc::clone(store), Arc::clone(notifier), group));
            if task.await.is_err() {
                tracing::error!("a group write panicked; its submits answer 503");
            }
        }
    }

    /// The oldest queued submits, up to `max_orders` orders (at least one submit).
    fn take(&self, max_orders: usize) -> Vec<Waiting> {
        let mut queue = self.lock();
        let mut group = Vec::new();
        let mut orders = 0;
        while let Some(next) = queue.front() {
            let n = next.orders();
            if !group.is_empty() && orders + n > max_orders {
                break;
            }
            orders += n;
            group.extend(queue.pop_front());
        }
        group
    }
}

/// Writes one group and answers each of its submits. A failed write of several submits is
/// tried again one submit at a time, so that one submit's bad input (an order storage refuses)
/// fails that submit alone.
async fn write_group(
    store: Arc<dyn RequestStore>,
    notifier: Arc<dyn Notifier>,
    mut group: Vec<Waiting>,
) {
    let sizes: Vec<usize> = group.iter().map(|w| w.requests.len()).collect();
    let all: Vec<WholeRequest> = group
        .iter_mut()
        .flat_map(|w| std::mem::take(&mut w.requests))
        .collect();
    match store.write_whole(&all).await {
        Ok(Some(outcomes)) => {
            notify(
                &notifier,
                group.iter().flat_map(|w| w.woken.iter().cloned()),
            )
            .await;
            let mut outcomes = outcomes.into_iter();
            for (w, n) in group.into_iter().zip(sizes) {
                let mine = outcomes.by_ref().take(n).collect();
                let _ = w.answer.send(Ok(Some(mine)));
            }
        }
        Ok(None) => {
            for w in group {
                let _ = w.answer.send(Ok(None));
            }
        }
        Err(e) if group.len() == 1 => {
            for w in group {
                let _ = w.answer.send(Err(e.clone()));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, submits = group.len(), "a group write failed; writing its submits one by one");
            let mut start = 0;
            for (w, n) in group.into_iter().zip(sizes) {
                let answer = store.write_whole(&all[start..start + n]).await;
                start += n;
                if matches!(answer, Ok(Some(_))) {
                    notify(&notifier, w.woken.iter().cloned()).await;
                }
                let _ = w.answer.send(answer);
            }
        }
    }
}

/// Wakes `consumers`, each once.
async fn notify(notifier: &Arc<dyn Notifier>, consumers: impl Iterator<Item = Consumer>) {
    let mut woken: Vec<Consumer> = consumers.collect();
    woken.sort_unstable();
    woken.dedup();
    if let Err(e) = notifier.notify(&woken).await {
        tracing::warn!(error = %e, "could not notify other instances; their polls find the orders at the next re-check");
    }
}
