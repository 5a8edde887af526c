//! Submitting command requests: validation of the whole request, expansion, durable write.

use cm_domain::{
    Agent, AgentId, Command, Consumer, Expander, ExpansionError, FieldError, GroupName, IdSource,
    IdempotencyKey, KeyedIds, Order, OrderId, RequestId, RequestRecord, RequestState, TargetType,
};

use super::CommandManager;
use super::cas::CAS_ATTEMPTS;
use super::records::count_request;
use crate::clock::FreshIds;
use crate::metric;
use crate::store::{AgentPageRequest, ReplaceError, StoreError, WholeOutcome, WholeRequest};

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

/// What a dry run found for one command: how many orders it would expand to and a sample of
/// their target ids (up to [`DryRunPlan::SAMPLE`]: the agent, the component, or the group's
/// first members by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRunPlan {
    pub targets: u64,
    pub sample: Vec<String>,
}

impl DryRunPlan {
    pub const SAMPLE: usize = 10;
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

impl Plan {
    const fn orders(&self) -> u64 {
        match self {
            Self::Agent(_) | Self::Server => 1,
            Self::Group(_, n) => *n,
        }
    }
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
    ///
    /// Each command's request record is written first, in state `writing`, which no claim
    /// hands out orders of; it is committed (`running` or `scheduled`) once every order of the
    /// submit is durable, just before the answer. A submit that dies midway leaves its orders
    /// behind the gate: a retry with the same idempotency key completes it, otherwise the
    /// scheduler removes them after `writing_grace` and the request ends `aborted`.
    ///
    /// # Errors
    /// [`SubmitError`].
    #[tracing::instrument(skip_all, fields(commands = request.commands.len()))]
    pub async fn submit(
        &self,
        request: SubmitRequest,
    ) -> Result<Vec<SubmittedRequest>, SubmitError> {
        let n = request.commands.len();
        let now = self.ports.clock.now();
        let plans = self.validate_and_plan(&request.commands, now).await?;

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
        if let Some(out) = self
            .submit_whole(&request.commands, &plans, now, ids)
            .await?
        {
            return Ok(out);
        }
        let mut writer = Writer::new(self);
        let mut out = Vec::with_capacity(n);
        for (index, (command, plan)) in request.commands.iter().zip(plans).enumerate() {
            let request_id = ids.request_id(index);
            let record = RequestRecord::new(request_id, command, None, plan.orders(), now);
            let record = match self.open_record(record).await {
                Ok(r) => r,
                Err(e) => {
                    let written = writer.written.clone();
                    let e = writer.abandon(e, request.idempotency.is_some()).await;
                    return Err(refusal(e, &written));
                }
            };
            let mut ex = Expander::new(command, index, request_id, now);
            if record.rate_control().is_some() {
                ex = ex.hold_from(record.released());
            }
            writer.records.push(record);
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
        let totals: Vec<u64> = out.iter().map(|s| s.order_ids.len() as u64).collect();
        if let Err(e) = writer.commit(&totals).await {
            let written = writer.written.clone();
            let e = writer.abandon(e, request.idempotency.is_some()).await;
            return Err(refusal(e, &written));
        }
        writer.notify().await;
        Ok(out)
    }

    /// The fast path of a submit of at most `write_batch` orders (docs/requests.md): every
    /// order is built in memory, then each command's record, committed already, is written
    /// with its orders by one [`RequestStore::write_whole`], shared with the submits running
    /// beside it (group commit). `None` sends the submit down the step-by-step path: the
    /// submit is larger, the backend cannot write whole requests, or a record of this submit
    /// exists already (a retry with the same idempotency key, which that path completes).
    async fn submit_whole(
        &self,
        commands: &[Command],
        plans: &[Plan],
        now: chrono::DateTime<chrono::Utc>,
        ids: &mut (dyn IdSource + Send),
    ) -> Result<Option<Vec<SubmittedRequest>>, SubmitError> {
        let batch = self.settings.write_batch.max(1);
        if plans.iter().map(Plan::orders).sum::<u64>() > batch as u64 {
            return Ok(None);
        }
        let mut whole = Vec::with_capacity(plans.len());
        let mut woken = Vec::new();
        let mut out = Vec::with_capacity(plans.len());
        for (index, (command, plan)) in commands.iter().zip(plans).enumerate() {
            let request_id = ids.request_id(index);
            let opened = RequestRecord::new(request_id, command, None, plan.orders(), now);
            let mut ex = Expander::new(command, index, request_id, now);
            if opened.rate_control().is_some() {
                ex = ex.hold_from(opened.released());
            }
            let orders = match plan {
                Plan::Agent(agent) => vec![ex.agent_order(agent, ids)],
                Plan::Server => vec![ex.server_order(ids)],
                Plan::Group(group, members) => {
                    let ex = ex.spread_over(*members);
                    self.group_orders(&ex, group, ids).await?
                }
            };
            // A fresh record is `writing`, which always commits.
            let Ok(Some(record)) = opened.commit(orders.len() as u64, now) else {
                return Ok(None);
            };
            woken.extend(orders.iter().filter_map(Order::consumer));
            out.push(SubmittedRequest {
                request_id,
                order_ids: orders.iter().map(|o| *o.order_id()).collect(),
            });
            whole.push(WholeRequest {
                record,
                opened,
                orders,
            });
        }
        let states: Vec<RequestState> = whole.iter().map(|w| w.record.state()).collect();
        let outcomes = match self
            .group
            .write(
                &self.ports.requests,
                &self.ports.notifier,
                batch,
                whole,
                woken,
            )
            .await
        {
            Ok(Some(outcomes)) => outcomes,
            Ok(None) => return Ok(None),
            Err(e) => {
                let written: Vec<RequestId> = out.iter().map(|s| s.request_id).collect();
                return Err(refusal(e, &written));
            }
        };
        let mut created = 0;
        for (outcome, state) in outcomes.iter().zip(states) {
            if let WholeOutcome::Written { created: n } = outcome {
                // Written committed at once; still counted as entering `writing`, which counts
                // every submitted request (docs/operations.md).
                count_request(RequestState::Writing);
                count_request(state);
                created += n;
            }
        }
        metrics::counter!(metric::ORDERS_CREATED.name).increment(created);
        if outcomes.contains(&WholeOutcome::Exists) {
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// Every order of a group, its members read page by page.
    async fn group_orders(
        &self,
        ex: &Expander<'_>,
        group: &GroupName,
        ids: &mut (dyn IdSource + Send),
    ) -> Result<Vec<Order>, StoreError> {
        let mut page = AgentPageRequest {
            group: Some(group.clone()),
            size: self.settings.expansion_page.max(1),
            after: None,
        };
        let mut orders = Vec::new();
        let mut slot = 0u64;
        loop {
            let members = self.ports.agents.list(&page).await?;
            for agent in &members.items {
                orders.push(ex.agent_order_at(slot, agent, ids));
                slot += 1;
            }
            match members.next {
                Some(after) => page.after = Some(after),
                None => return Ok(orders),
            }
        }
    }

    /// Validates and plans `request` exactly as [`Self::submit`] would, and writes nothing:
    /// one plan per command with its order count and a sample of its targets.
    ///
    /// # Errors
    /// The [`SubmitError`] the submit would answer (never `Unavailable` for a write).
    pub async fn dry_run(&self, request: &SubmitRequest) -> Result<Vec<DryRunPlan>, SubmitError> {
        let now = self.ports.clock.now();
        let plans = self.validate_and_plan(&request.commands, now).await?;
        let mut out = Vec::with_capacity(plans.len());
        for (command, plan) in request.commands.iter().zip(plans) {
            let targets = plan.orders();
            let sample = match plan {
                Plan::Agent(agent) => vec![agent.id().as_str().to_owned()],
                Plan::Server => vec![command.target().id().to_owned()],
                Plan::Group(group, _) => self
                    .ports
                    .agents
                    .list(&AgentPageRequest {
                        group: Some(group),
                        size: DryRunPlan::SAMPLE,
                        after: None,
                    })
                    .await?
                    .items
                    .iter()
                    .map(|a| a.id().as_str().to_owned())
                    .collect(),
            };
            out.push(DryRunPlan { targets, sample });
        }
        Ok(out)
    }

    /// The checks of a submit before anything is written: the number of commands, every
    /// schedule against `now`, every target.
    async fn validate_and_plan(
        &self,
        commands: &[Command],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Plan>, SubmitError> {
        let n = commands.len();
        if n == 0 || n > self.settings.max_commands {
            return Err(FieldError::new(
                "commands",
                format!("must hold 1 to {} commands", self.settings.max_commands),
            )
            .into());
        }
        let horizon = chrono::Duration::from_std(self.settings.max_schedule_ahead)
            .unwrap_or(chrono::Duration::MAX);
        for (index, command) in commands.iter().enumerate() {
            command
                .schedule()
                .validate(now, horizon)
                .map_err(|e| SubmitError::TooFarAhead(e.under(&format!("commands[{index}]"))))?;
        }
        self.plan(commands).await
    }

    /// Writes `record` (state `writing`) before its orders. A record already stored under its
    /// id comes from an earlier attempt with the same idempotency key: one still `writing` or
    /// already committed is kept (this attempt completes it), an aborted one is written again.
    pub(super) async fn open_record(
        &self,
        record: RequestRecord,
    ) -> Result<RequestRecord, StoreError> {
        if self.ports.requests.create(&record).await? {
            count_request(RequestState::Writing);
            return Ok(record);
        }
        for _ in 0..CAS_ATTEMPTS {
            let Some(current) = self.ports.requests.get(record.request_id()).await? else {
                if self.ports.requests.create(&record).await? {
                    count_request(RequestState::Writing);
                    return Ok(record);
                }
                continue;
            };
            let Some(next) = current.rewrite(self.ports.clock.now()) else {
                return Ok(current);
            };
            match self.ports.requests.replace(&current, &next).await {
                Ok(()) => {
                    count_request(RequestState::Writing);
                    return Ok(next);
                }
                Err(ReplaceError::Conflict | ReplaceError::NotFound) => {}
                Err(ReplaceError::Store(e)) => return Err(e),
            }
        }
        Err(StoreError::Contention(
            "the request record kept changing while the submit opened it".to_owned(),
        ))
    }

    /// Commits `record` once its `total` orders are durable: `writing -> running | scheduled`.
    /// A record aborted meanwhile (the submit outlived `writing_grace`) fails the submit.
    pub(super) async fn commit_record(
        &self,
        record: &RequestRecord,
        total: u64,
    ) -> Result<(), StoreError> {
        let mut current = record.clone();
        for _ in 0..CAS_ATTEMPTS {
            let next = match current.commit(total, self.ports.clock.now()) {
                Ok(Some(next)) => next,
                Ok(None) => return Ok(()),
                Err(e) => {
                    return Err(StoreError::Unavailable(format!(
                        "{e}: the submit took longer than the writing grace period"
                    )));
                }
            };
            match self.ports.requests.replace(&current, &next).await {
                Ok(()) => {
                    count_request(next.state());
                    return Ok(());
                }
                Err(ReplaceError::Conflict) => {}
                Err(ReplaceError::NotFound) => {
                    return Err(StoreError::Unavailable(format!(
                        "the record of request {} disappeared during the submit",
                        record.request_id()
                    )));
                }
                Err(ReplaceError::Store(e)) => return Err(e),
            }
            current = self
                .ports
                .requests
                .get(record.request_id())
                .await?
                .ok_or_else(|| {
                    StoreError::Unavailable(format!(
                        "the record of request {} disappeared during the submit",
                        record.request_id()
                    ))
                })?;
        }
        Err(StoreError::Contention(
            "the request record kept changing during the commit".to_owned(),
        ))
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
            let write = insert_batch(self, &writing, writer.staged());
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

/// Writes `orders` (nothing when empty) and counts what was created. `staged` when every
/// record of the submit is still `writing`: nobody can claim them before the record's commit,
/// which is durable and comes before the answer, so their own flush can wait for it
/// ([`crate::OrderStore::insert_staged`]).
async fn insert_batch(
    manager: &CommandManager,
    orders: &[Order],
    staged: bool,
) -> Result<(), StoreError> {
    if orders.is_empty() {
        return Ok(());
    }
    let created = if staged {
        manager.ports.orders.insert_staged(orders).await?
    } else {
        manager.ports.orders.insert(orders).await?
    };
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
    /// Their records, as opened (state `writing`, or committed by an earlier attempt).
    pub(super) records: Vec<RequestRecord>,
}

impl<'a> Writer<'a> {
    pub(super) fn new(manager: &'a CommandManager) -> Self {
        Self {
            manager,
            buffer: Vec::with_capacity(manager.settings.write_batch),
            woken: Vec::new(),
            written: Vec::new(),
            records: Vec::new(),
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

    /// Whether the orders written now may be staged: every record opened so far is still
    /// `writing` (a keyed retry of a committed request writes durably at once, since its
    /// commit writes nothing).
    fn staged(&self) -> bool {
        self.records
            .iter()
            .all(|r| r.state() == RequestState::Writing)
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
            insert_batch(self.manager, &self.buffer[..batch], self.staged()).await?;
            self.buffer.drain(..batch);
        }
        Ok(())
    }

    pub(super) async fn flush(&mut self) -> Result<(), StoreError> {
        insert_batch(self.manager, &self.buffer, self.staged()).await?;
        self.buffer.clear();
        Ok(())
    }

    /// Storage failed midway. Without an idempotency key the caller cannot finish this request
    /// by retrying it, so the orders already written are removed; with one, they stay for the
    /// retry to complete (removing them could remove orders an earlier attempt acknowledged).
    /// Returns `error`, to answer with.
    ///
    /// Their records, still `writing`, keep every order behind the gate either way: without a
    /// key they end `aborted` here; with one, the retry commits them (or the scheduler aborts
    /// them after the grace period).
    pub(super) async fn abandon(self, error: StoreError, keyed: bool) -> StoreError {
        tracing::warn!(%error, "submit failed while writing orders");
        if !keyed {
            // Aborting removes the orders; a record committed already (a later commit of the
            // same submit failed) loses the compare-and-set and keeps its orders.
            for record in &self.records {
                if record.state() != RequestState::Writing {
                    continue;
                }
                if let Err(e) = self.manager.abort_record(record.clone()).await {
                    tracing::error!(request = %record.request_id(), error = %e, "could not abort the request of a failed submit; the scheduler will after the grace period");
                }
            }
        }
        error
    }

    /// Commits every record once all orders are durable; `totals` are the order counts by
    /// command.
    pub(super) async fn commit(&self, totals: &[u64]) -> Result<(), StoreError> {
        for (record, total) in self.records.iter().zip(totals) {
            self.manager.commit_record(record, *total).await?;
        }
        Ok(())
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
