//! Expansion: one command becomes one order per concrete target.

use chrono::{DateTime, Utc};

use crate::agent::Agent;
use crate::command::{Command, Target, TargetType};
use crate::error::ExpansionError;
use crate::ids::{IdSource, RequestId};
use crate::order::{NewOrder, Order};
use crate::schedule::Rollout;

/// Builds the orders of one command. Members of a group are fed page by page, so a group of
/// any size expands without being held in memory at once.
///
/// The command's [`crate::Schedule`] decides each order's `not_before`: order `slot` of
/// [`Self::spread_over`]'s `n` starts at [`Rollout::not_before`]`(slot, n)`.
#[derive(Debug, Clone)]
pub struct Expander<'a> {
    command: &'a Command,
    index: usize,
    request_id: RequestId,
    now: DateTime<Utc>,
    retry_of: Option<RequestId>,
    rollout: Rollout,
    orders: u64,
    /// Rate control: orders get positions, and those at or beyond this one start held.
    released: Option<u64>,
}

impl<'a> Expander<'a> {
    /// `index` is the command's position in its request (named in errors); `now` becomes the
    /// orders' `@timestamp`.
    #[must_use]
    pub fn new(
        command: &'a Command,
        index: usize,
        request_id: RequestId,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            command,
            index,
            request_id,
            now,
            retry_of: None,
            rollout: command.schedule().rollout(now),
            orders: 1,
            released: None,
        }
    }

    /// How many orders the command expands to (a group's member count): the rollout window is
    /// shared evenly among them. Default 1.
    #[must_use]
    pub const fn spread_over(mut self, orders: u64) -> Self {
        self.orders = orders;
        self
    }

    /// Rate control (docs/rollout.md): each order carries its slot as its position, and the
    /// orders in slots from `released` on start held.
    #[must_use]
    pub const fn hold_from(mut self, released: u64) -> Self {
        self.released = Some(released);
        self
    }

    /// Marks the orders as a re-run of an earlier request.
    #[must_use]
    pub fn retry_of(mut self, earlier: RequestId) -> Self {
        self.retry_of = Some(earlier);
        self
    }

    #[must_use]
    pub const fn request_id(&self) -> &RequestId {
        &self.request_id
    }

    #[must_use]
    pub const fn index(&self) -> usize {
        self.index
    }

    /// The order of `agent` (an agent target): the first slot of the rollout.
    #[must_use]
    pub fn agent_order(&self, agent: &Agent, ids: &mut dyn IdSource) -> Order {
        self.agent_order_at(0, agent, ids)
    }

    /// The order of `agent` in rollout slot `slot` (0-based position among the command's
    /// orders; the members of a group in expansion order). Its target becomes
    /// `{type: agent, id}` and it carries the agent's id and groups.
    #[must_use]
    pub fn agent_order_at(&self, slot: u64, agent: &Agent, ids: &mut dyn IdSource) -> Order {
        let order_id = ids.order_id(&self.request_id, agent.id().as_str());
        self.order(Target::agent(agent.id()), Some(agent), order_id, slot)
    }

    /// The single order of a server target.
    #[must_use]
    pub fn server_order(&self, ids: &mut dyn IdSource) -> Order {
        let order_id = ids.order_id(&self.request_id, self.command.target().id());
        self.order(self.command.target().clone(), None, order_id, 0)
    }

    fn order(
        &self,
        target: Target,
        agent: Option<&Agent>,
        order_id: crate::OrderId,
        slot: u64,
    ) -> Order {
        let c = self.command;
        Order::new(NewOrder {
            order_id,
            request_id: self.request_id,
            source: c.source(),
            user: c.user(),
            target,
            agent: agent.map(|a| (a.id(), a.groups())),
            action: c.action(),
            timeout: c.timeout(),
            now: self.now,
            // `Order::new` keeps it only when it lies after `now`.
            not_before: Some(self.rollout.not_before(slot, self.orders)),
            retry_of: self.retry_of,
            position: self.released.map(|released| (slot, slot >= released)),
        })
    }

    /// The error for a target that turned out to have no agents.
    #[must_use]
    pub fn nothing_to_expand(&self) -> ExpansionError {
        let id = self.command.target().id().to_owned();
        match self.command.target().kind() {
            TargetType::Group => ExpansionError::EmptyGroup {
                index: self.index,
                group: id,
            },
            TargetType::Agent | TargetType::Server => ExpansionError::UnknownAgent {
                index: self.index,
                agent: id,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::command::{Action, Source, Timeout};
    use crate::ids::{AgentId, GroupName, IdempotencyKey, KeyedIds};
    use crate::order::Status;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap()
    }

    fn agent(id: &str, groups: &[&str]) -> Agent {
        Agent::new(
            AgentId::parse(id, "id").unwrap(),
            groups
                .iter()
                .map(|g| GroupName::parse(g, "g").unwrap())
                .collect(),
        )
    }

    fn command(kind: TargetType, id: &str) -> Command {
        Command::new(
            Source::UsersServices,
            None,
            Target::new(kind, id).unwrap(),
            Action::new("restart", json!({}), "v5").unwrap(),
            Timeout::new(100).unwrap(),
        )
        .unwrap()
    }

    fn ids() -> KeyedIds {
        KeyedIds::new(&IdempotencyKey::parse("k", "k").unwrap(), "b")
    }

    /// The members of group `Test`, in the order the registry pages them.
    fn members() -> Vec<Agent> {
        vec![agent("a1", &["Test"]), agent("a2", &["Test", "X"])]
    }

    /// The expander of command `index` of a request, with its request id drawn from `ids`, as
    /// the service makes it.
    fn expander<'a>(command: &'a Command, index: usize, ids: &mut dyn IdSource) -> Expander<'a> {
        Expander::new(command, index, ids.request_id(index), now())
    }

    /// A group's orders as the service builds them: the expander spread over the member count,
    /// then each page of members in turn, slot after slot.
    fn group_orders(command: &Command, pages: &[&[Agent]], ids: &mut dyn IdSource) -> Vec<Order> {
        let members: usize = pages.iter().map(|p| p.len()).sum();
        let ex = expander(command, 0, ids).spread_over(members as u64);
        let mut slot = 0;
        let mut orders = Vec::new();
        for page in pages {
            for member in *page {
                orders.push(ex.agent_order_at(slot, member, ids));
                slot += 1;
            }
        }
        orders
    }

    #[test]
    fn group_command_expands_to_one_order_per_member() {
        let orders = group_orders(
            &command(TargetType::Group, "Test"),
            &[&members()],
            &mut ids(),
        );
        let agents: Vec<_> = orders
            .iter()
            .map(|o| o.agent_id().unwrap().as_str())
            .collect();
        assert_eq!(agents, ["a1", "a2"]);
        for o in &orders {
            assert_eq!(o.target().kind(), TargetType::Agent);
            assert_eq!(o.target().id(), o.agent_id().unwrap().as_str());
            assert_eq!(o.status(), Status::Pending);
        }
        assert_eq!(orders[1].agent().unwrap().groups().len(), 2);
    }

    #[test]
    fn orders_of_one_command_share_the_request_id_and_have_their_own_order_ids() {
        let orders = group_orders(
            &command(TargetType::Group, "Test"),
            &[&members()],
            &mut ids(),
        );
        assert_eq!(orders[0].request_id(), orders[1].request_id());
        assert_ne!(orders[0].order_id(), orders[1].order_id());
    }

    #[test]
    fn agent_command_carries_the_agents_groups() {
        let cmd = command(TargetType::Agent, "a2");
        let mut ids = ids();
        let order = expander(&cmd, 0, &mut ids).agent_order(&agent("a2", &["Test", "X"]), &mut ids);
        assert_eq!(order.agent_id().unwrap().as_str(), "a2");
        assert_eq!(order.agent().unwrap().groups()[1].as_str(), "X");
        assert_eq!(order.target(), cmd.target());
    }

    #[test]
    fn server_command_expands_to_one_order_without_agent() {
        let cmd = command(TargetType::Server, "indexer");
        let mut ids = ids();
        let order = expander(&cmd, 0, &mut ids).server_order(&mut ids);
        assert!(order.agent().is_none());
        assert_eq!(order.target().kind(), TargetType::Server);
        assert_eq!(order.target().id(), "indexer");
    }

    #[test]
    fn unknown_agent_is_an_error_naming_the_command_index() {
        let cmd = command(TargetType::Agent, "nope");
        let err = expander(&cmd, 3, &mut ids()).nothing_to_expand();
        assert_eq!(err.index(), 3);
        assert!(matches!(err, ExpansionError::UnknownAgent { .. }));
    }

    #[test]
    fn empty_group_is_an_error_naming_the_command_index() {
        let cmd = command(TargetType::Group, "Empty");
        let err = expander(&cmd, 1, &mut ids()).nothing_to_expand();
        assert_eq!(
            err,
            ExpansionError::EmptyGroup {
                index: 1,
                group: "Empty".into()
            }
        );
        assert!(err.to_string().starts_with("commands[1]"));
    }

    #[test]
    fn keyed_expansion_is_deterministic() {
        let cmd = command(TargetType::Group, "Test");
        let a = group_orders(&cmd, &[&members()], &mut ids());
        let b = group_orders(&cmd, &[&members()], &mut ids());
        let ids_of = |v: &[Order]| v.iter().map(|o| *o.order_id()).collect::<Vec<_>>();
        assert_eq!(ids_of(&a), ids_of(&b));
    }

    #[test]
    fn a_group_read_in_pages_expands_as_it_would_in_one() {
        let schedule = crate::Schedule::parse(None, Some(10)).unwrap();
        let cmd = command(TargetType::Group, "Test").with_schedule(schedule);
        let fleet: Vec<Agent> = (0..5).map(|i| agent(&format!("a{i}"), &["Test"])).collect();
        let whole = group_orders(&cmd, &[&fleet], &mut ids());
        let paged = group_orders(&cmd, &[&fleet[..2], &fleet[2..4], &fleet[4..]], &mut ids());
        assert_eq!(whole, paged);
    }

    #[test]
    fn a_scheduled_group_spreads_its_orders_over_the_window_and_counts_deadlines_from_them() {
        let start = now() + chrono::Duration::seconds(60);
        let schedule = crate::Schedule::parse(Some("2026-11-27T10:01:00Z"), Some(10)).unwrap();
        let fleet: Vec<Agent> = (0..4).map(|i| agent(&format!("a{i}"), &["Test"])).collect();
        let orders = group_orders(
            &command(TargetType::Group, "Test").with_schedule(schedule),
            &[&fleet[..3], &fleet[3..]],
            &mut ids(),
        );
        let starts: Vec<_> = orders.iter().map(|o| o.not_before().unwrap()).collect();
        let ms = chrono::Duration::milliseconds;
        assert_eq!(
            starts,
            [start, start + ms(2500), start + ms(5000), start + ms(7500)]
        );
        for o in &orders {
            assert_eq!(o.created_at(), now());
            assert_eq!(o.available_from(), o.not_before().unwrap());
            assert_eq!(
                o.delivery_deadline(),
                o.not_before().unwrap() + chrono::Duration::seconds(100)
            );
        }
    }

    #[test]
    fn an_unscheduled_command_is_deliverable_at_once() {
        let orders = group_orders(
            &command(TargetType::Group, "Test"),
            &[&members()],
            &mut ids(),
        );
        assert!(orders.iter().all(|o| o.not_before().is_none()));
        assert!(orders.iter().all(|o| o.available_from() == now()));
    }

    #[test]
    fn a_rollout_from_now_leaves_the_first_order_without_not_before() {
        let schedule = crate::Schedule::parse(None, Some(10)).unwrap();
        let orders = group_orders(
            &command(TargetType::Group, "Test").with_schedule(schedule),
            &[&members()],
            &mut ids(),
        );
        assert_eq!(orders[0].not_before(), None, "due at once");
        assert_eq!(
            orders[1].not_before(),
            Some(now() + chrono::Duration::seconds(5))
        );
    }

    #[test]
    fn a_retry_carries_the_request_it_retries() {
        let cmd = command(TargetType::Agent, "a1");
        let earlier = RequestId::from_uuid(uuid::Uuid::from_u128(7));
        let ex = Expander::new(&cmd, 0, ids().request_id(0), now()).retry_of(earlier);
        let order = ex.agent_order(&agent("a1", &["Test"]), &mut ids());
        assert_eq!(order.retry_of(), Some(&earlier));
    }
}
