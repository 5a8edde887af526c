//! Submitting command requests: validation of the whole request, expansion, durable write.

use cm_domain::{
    Agent, AgentId, Command, Consumer, Expander, ExpansionError, FieldError, GroupName, IdSource,
    IdempotencyKey, KeyedIds, Order, OrderId, RequestId, TargetType,
};

use super::CommandManager;
use crate::clock::FreshIds;
use crate::metric;
use crate::store::{AgentPageRequest, StoreError};

/// A validated request: 1..=`max_commands` commands, optionally with an idempotency key.
#[derive(Debug, Clone)]
pub struct SubmitRequest {
    pub commands: Vec<Command>,
    pub idempotency: Option<Idempotency>,
}

/// `Idempotency-Key` and a fingerprint of the body it came with: the same key and body always
/// yield the same ids, so a retry writes nothing new.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: IdempotencyKey,
    pub fingerprint: String,
}

/// The ids one command of a submit produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmittedRequest {
    pub request_id: RequestId,
    pub order_ids: Vec<OrderId>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// The request itself breaks a rule (400).
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// A command's `schedule.start_at` lies beyond the service's horizon
    /// (`Settings::max_schedule_ahead`) as of now (422): a rule of the clock, not of the
    /// request's form. Nothing was read or written.
    #[error("{0}")]
    TooFarAhead(FieldError),
    /// A command expands to nothing or to too much (422). Nothing was written.
    #[error(transparent)]
    Expansion(#[from] ExpansionError),
    /// Storage failed; nothing of this request is acknowledged (503).
    #[error(transparent)]
    Unavailable(#[from] StoreError),
}

/// The answer to a failed write: storage refusing a field of an order is the caller's input at
/// fault (400 naming `commands[i].<field>`, `written` holds the request ids by command index);
/// anything else is storage trouble.
fn refusal(error: StoreError, written: &[RequestId]) -> SubmitError {
    match error {
        StoreError::Rejected {
            request_id,
            field,
            message,
        } => {
            let path = written.iter().position(|r| *r == request_id).map_or_else(
                || "commands".to_owned(),
                |i| format!("commands[{i}].{field}"),
            );
            SubmitError::Invalid(FieldError::new(path, message))
        }
        other @ (StoreError::Unavailable(_)
        | StoreError::Contention(_)
        | StoreError::Corrupt(_)) => SubmitError::Unavailable(other),
    }
}

/// How one command will expand, decided before anything is written.
enum Plan {
    Agent(Agent),
    /// A group and how many members it had when planned: the rollout is spread over them.
    Group(GroupName, u64),
    Server,
}

impl CommandManager {
    /// Expands every command of `request` and writes the orders. All or nothing to the caller:
    /// every schedule and target is checked before the first write, and if storage fails midway
    /// the orders already written are removed again (unless an idempotency key makes the retry
    /// the cure). A command's schedule spreads its orders' `not_before` over its rollout window
    /// (docs/rollout.md).
    ///
    /// # Errors
    /// [`SubmitError`].
    #[tracing::instrument(skip_all, fields(commands = request.commands.len()))]
    pub async fn submit(
        &self,
        request: SubmitRequest,
    ) -> Result<Vec<SubmittedRequest>, SubmitError> {
        let n = request.commands.len();
        if n == 0 || n > self.settings.max_commands {
            return Err(FieldError::new(
                "commands",
                format!("must hold 1 to {} commands", self.settings.max_commands),
            )
            .into());
        }
        let now = self.ports.clock.now();
        let horizon = chrono::Duration::from_std(self.settings.max_schedule_ahead)
            .unwrap_or(chrono::Duration::MAX);
        for (index, command) in request.commands.iter().enumerate() {
            command
                .schedule()
                .validate(now, horizon)
                .map_err(|e| SubmitError::TooFarAhead(e.under(&format!("commands[{index}]"))))?;
        }
        let plans = self.plan(&request.commands).await?;

        let mut fresh = FreshIds;
        let mut keyed = request
            .idempotency
            .as_ref()
            .map(|i| KeyedIds::new(&i.key, &i.fingerprint));
        // `+ Send`: the ids are used across awaits, and a submit must be spawnable.
        let ids: &mut (dyn IdSource + Send) = match keyed.as_mut() {
            Some(k) => k,
            None => &mut fresh,
        };
        let mut writer = Writer::new(self);
        let mut out = Vec::with_capacity(n);
        for (index, (command, plan)) in request.commands.iter().zip(plans).enumerate() {
            let request_id = ids.request_id(index);
            let ex = Expander::new(command, index, request_id, now);
            let mut order_ids = Vec::new();
            let result = match plan {
                Plan::Agent(agent) => {
                    writer
                        .push(ex.agent_order(&agent, ids), &mut order_ids)
                        .await
                }
                Plan::Server => writer.push(ex.server_order(ids), &mut order_ids).await,
                Plan::Group(group, members) => {
                    let ex = ex.spread_over(members);
                    self.expand_group(&ex, &group, ids, &mut writer, &mut order_ids)
                        .await
                }
            };
            writer.written.push(request_id);
            if let Err(e) = result {
                let written = writer.written.clone();
                let e = writer.abandon(e, request.idempotency.is_some()).await;
                return Err(refusal(e, &written));
            }
            out.push(SubmittedRequest {
                request_id,
                order_ids,
            });
        }
        if let Err(e) = writer.flush().await {
            let written = writer.written.clone();
            let e = writer.abandon(e, request.idempotency.is_some()).await;
            return Err(refusal(e, &written));
        }
        writer.notify().await;
        Ok(out)
    }

    /// Checks every command's target before anything is written.
    async fn plan(&self, commands: &[Command]) -> Result<Vec<Plan>, SubmitError> {
        let limit = self.settings.max_orders_per_request;
        let mut total: u64 = 0;
        let mut plans = Vec::with_capacity(commands.len());
        for (index, c) in commands.iter().enumerate() {
            let target = c.target();
            let (plan, count) = match target.kind() {
                TargetType::Server => (Plan::Server, 1),
                TargetType::Agent => {
                    let id = AgentId::parse(target.id(), "target.id")
                        .map_err(|e| e.under(&format!("commands[{index}]")))?;
                    let agent = self.ports.agents.get(&id).await?.ok_or_else(|| {
                        ExpansionError::UnknownAgent {
                            index,
                            agent: target.id().to_owned(),
                        }
                    })?;
                    (Plan::Agent(agent), 1)
                }
                TargetType::Group => {
                    let group = GroupName::parse(target.id(), "target.id")
                        .map_err(|e| e.under(&format!("commands[{index}]")))?;
                    let count = self.ports.agents.count(Some(group.clone())).await?;
                    if count == 0 {
                        return Err(ExpansionError::EmptyGroup {
                            index,
                            group: target.id().to_owned(),
                        }
                        .into());
                    }
                    (Plan::Group(group, count), count)
                }
            };
            total += count;
            if total > limit {
                return Err(ExpansionError::TooManyOrders {
                    index,
                    count: total,
                    limit,
                }
                .into());
            }
            plans.push(plan);
        }
        Ok(plans)
    }

    /// Reads the group page by page and writes its orders in batches of `write_batch`, as a
    /// pipeline: while one full batch is written, the pages that fill the next one are read and
    /// expanded, so the registry's round trips and the order building hide behind the writes
    /// (one write at a time, in order). The last, partial batch stays in `writer` for
    /// [`Writer::flush`].
    async fn expand_group(
        &self,
        ex: &Expander<'_>,
        group: &GroupName,
        ids: &mut (dyn IdSource + Send),
        writer: &mut Writer<'_>,
        order_ids: &mut Vec<OrderId>,
    ) -> Result<(), StoreError> {
        let page = AgentPageRequest {
            group: Some(group.clone()),
            // A page of 0 would end the group at once: it would expand to no order at all.
            size: self.settings.expansion_page.max(1),
            after: None,
        };
        let batch = self.settings.write_batch.max(1);
        let mut next = Some(page.clone());
        let mut slot = 0u64;
        let mut writing: Vec<Order> = Vec::new();
        loop {
            let write = insert_batch(self, &writing);
            let fill = async {
                while writer.buffer.len() < batch {
                    let Some(request) = next.take() else { break };
                    let members = self.ports.agents.list(&request).await?;
                    for agent in &members.items {
                        writer.stage(ex.agent_order_at(slot, agent, ids), order_ids);
                        slot += 1;
                    }
                    next = members.next.map(|after| AgentPageRequest {
                        after: Some(after),
                        ..page.clone()
                    });
                }
                Ok::<_, StoreError>(())
            };
            let (written, filled) = tokio::join!(write, fill);
            written?;
            filled?;
            if writer.buffer.len() < batch {
                // The group has ended (`fill` stops early only then): the rest is the caller's.
                return Ok(());
            }
            writing.clear();
            writing.extend(writer.buffer.drain(..batch));
        }
    }
}

/// Writes `orders` (nothing when empty) and counts what was created.
async fn insert_batch(manager: &CommandManager, orders: &[Order]) -> Result<(), StoreError> {
    if orders.is_empty() {
        return Ok(());
    }
    let created = manager.ports.orders.insert(orders).await?;
    metrics::counter!(metric::ORDERS_CREATED.name).increment(created);
    Ok(())
}

/// Buffers expanded orders and writes them in batches.
pub(super) struct Writer<'a> {
    manager: &'a CommandManager,
    buffer: Vec<Order>,
    woken: Vec<Consumer>,
    /// Requests that have (or may have) orders in storage.
    pub(super) written: Vec<RequestId>,
}

impl<'a> Writer<'a> {
    pub(super) fn new(manager: &'a CommandManager) -> Self {
        Self {
            manager,
            buffer: Vec::with_capacity(manager.settings.write_batch),
            woken: Vec::new(),
            written: Vec::new(),
        }
    }

    pub(super) async fn push(
        &mut self,
        order: Order,
        ids: &mut Vec<OrderId>,
    ) -> Result<(), StoreError> {
        self.stage(order, ids);
        self.flush_full_batches().await
    }

    /// Buffers `order` without writing anything yet.
    pub(super) fn stage(&mut self, order: Order, ids: &mut Vec<OrderId>) {
        ids.push(*order.order_id());
        if let Some(consumer) = order.consumer() {
            self.woken.push(consumer);
        }
        self.buffer.push(order);
    }

    /// Writes every full batch of `write_batch` orders in the buffer; the rest waits.
    pub(super) async fn flush_full_batches(&mut self) -> Result<(), StoreError> {
        let batch = self.manager.settings.write_batch.max(1);
        while self.buffer.len() >= batch {
            insert_batch(self.manager, &self.buffer[..batch]).await?;
            self.buffer.drain(..batch);
        }
        Ok(())
    }

    pub(super) async fn flush(&mut self) -> Result<(), StoreError> {
        insert_batch(self.manager, &self.buffer).await?;
        self.buffer.clear();
        Ok(())
    }

    /// Storage failed midway. Without an idempotency key the caller cannot finish this request
    /// by retrying it, so the orders already written are removed; with one, they stay for the
    /// retry to complete (removing them could remove orders an earlier attempt acknowledged).
    /// Returns `error`, to answer with.
    pub(super) async fn abandon(self, error: StoreError, keyed: bool) -> StoreError {
        tracing::warn!(%error, "submit failed while writing orders");
        if !keyed {
            for request in &self.written {
                if let Err(e) = self.manager.ports.orders.delete_request(request).await {
                    tracing::error!(%request, error = %e, "could not remove the orders of a failed submit");
                }
            }
        }
        error
    }

    /// Wakes the consumers (agents, components) of the orders written, each once however many
    /// orders it got.
    pub(super) async fn notify(mut self) {
        self.woken.sort_unstable();
        self.woken.dedup();
        if let Err(e) = self.manager.ports.notifier.notify(&self.woken).await {
            tracing::warn!(error = %e, "could not notify other instances; their polls find the orders at the next re-check");
        }
    }
}
