//! The conformance suite every storage adapter runs against its real backend, and the
//! fixtures and doubles that tests of this workspace share.
//!
//! An adapter's test file calls [`conformance_suite!`](crate::conformance_suite) with an async
//! expression that builds a fresh, isolated [`Backend`] (its own database, file or index prefix);
//! the macro expands to one `#[tokio::test]` per case.

pub mod cases;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use cm_domain::{
    Action, Agent, AgentId, ComponentName, GroupName, NewOrder, Order, OrderId, RequestId, Source,
    Target, TargetType, Timeout,
};
use uuid::Uuid;

pub use crate::clock::MockClock;
pub use crate::notify::MockNotifier;
pub use crate::store::{
    MockAgentRegistry, MockComponentRegistry, MockOrderStore, MockRequestStore,
};
use crate::{
    AgentRegistry, Clock, CommandManager, ComponentRegistry, Notifier, OrderStore, Ports,
    RequestStore, Settings, SystemClock,
};

/// The ports one adapter provides, freshly isolated for one test.
#[derive(Clone)]
pub struct Backend {
    pub orders: Arc<dyn OrderStore>,
    pub agents: Arc<dyn AgentRegistry>,
    pub components: Arc<dyn ComponentRegistry>,
    /// The request records, in the same backend as `orders`.
    pub requests: Arc<dyn RequestStore>,
    pub notifier: Arc<dyn Notifier>,
    /// Whatever must live as long as the backend (a temporary directory, a database to drop).
    pub guard: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").finish_non_exhaustive()
    }
}

impl Backend {
    /// The use cases over this backend with the system clock.
    #[must_use]
    pub fn service(&self, settings: Settings) -> CommandManager {
        CommandManager::new(
            Ports {
                orders: Arc::clone(&self.orders),
                agents: Arc::clone(&self.agents),
                components: Arc::clone(&self.components),
                requests: Arc::clone(&self.requests),
                notifier: Arc::clone(&self.notifier),
                clock: Arc::new(SystemClock),
            },
            settings,
        )
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    #[must_use]
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Mutex::new(start))
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *t += chrono::Duration::from_std(by).expect("duration in range");
    }

    pub fn set(&self, to: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A fixed instant the cases count from.
#[must_use]
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

/// `t0()` plus `secs` seconds.
#[must_use]
pub fn at(secs: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(secs)
}

#[must_use]
pub fn agent_id(id: &str) -> AgentId {
    AgentId::parse(id, "agent").expect("valid agent id")
}

#[must_use]
pub fn component(name: &str) -> ComponentName {
    ComponentName::parse(name, "component").expect("valid component name")
}

#[must_use]
pub fn group(name: &str) -> GroupName {
    GroupName::parse(name, "group").expect("valid group name")
}

#[must_use]
pub fn agent(id: &str, groups: &[&str]) -> Agent {
    Agent::new(agent_id(id), groups.iter().map(|g| group(g)).collect())
}

/// A description of test orders, turned into [`Order`]s by [`OrderSpec::build`].
#[derive(Debug, Clone)]
pub struct OrderSpec {
    pub agent: Option<String>,
    pub groups: Vec<String>,
    pub action: String,
    pub args: serde_json::Value,
    pub source: Source,
    pub timeout: i64,
    pub created: DateTime<Utc>,
    pub not_before: Option<DateTime<Utc>>,
    pub request: RequestId,
    pub server: String,
    /// Rate control: the order's position and whether it starts held.
    pub position: Option<(u64, bool)>,
}

impl OrderSpec {
    /// Orders for `agent`, created at `t0()`, timeout 100 s, in a fresh request.
    #[must_use]
    pub fn agent(agent: &str) -> Self {
        Self {
            agent: Some(agent.to_owned()),
            groups: vec!["Test".to_owned()],
            action: "restart".to_owned(),
            args: serde_json::json!({}),
            source: Source::UsersServices,
            timeout: 100,
            created: t0(),
            not_before: None,
            request: RequestId::from_uuid(Uuid::now_v7()),
            server: String::new(),
            position: None,
        }
    }

    /// An order for a server component.
    #[must_use]
    pub fn server(component: &str) -> Self {
        Self {
            agent: None,
            server: component.to_owned(),
            ..Self::agent("unused")
        }
    }

    #[must_use]
    pub fn created(mut self, t: DateTime<Utc>) -> Self {
        self.created = t;
        self
    }

    #[must_use]
    pub fn timeout(mut self, secs: i64) -> Self {
        self.timeout = secs;
        self
    }

    #[must_use]
    pub fn not_before(mut self, t: DateTime<Utc>) -> Self {
        self.not_before = Some(t);
        self
    }

    /// Rate control: the order sits at `position` of its request, held back when `held`.
    #[must_use]
    pub fn position(mut self, position: u64, held: bool) -> Self {
        self.position = Some((position, held));
        self
    }

    #[must_use]
    pub fn request(mut self, r: RequestId) -> Self {
        self.request = r;
        self
    }

    #[must_use]
    pub fn action(mut self, name: &str, args: serde_json::Value) -> Self {
        self.action = name.to_owned();
        self.args = args;
        self
    }

    /// One order.
    #[must_use]
    pub fn build(&self) -> Order {
        let action = Action::new(&self.action, self.args.clone(), "v5").expect("valid action");
        let groups: Vec<GroupName> = self.groups.iter().map(|g| group(g)).collect();
        let agent = self.agent.as_deref().map(agent_id);
        let target = match &agent {
            Some(a) => Target::agent(a),
            None => Target::new(TargetType::Server, &self.server).expect("valid server"),
        };
        Order::new(NewOrder {
            order_id: OrderId::from_uuid(Uuid::now_v7()),
            request_id: self.request,
            source: self.source,
            user: Some("conformance"),
            target,
            agent: agent.as_ref().map(|a| (a, groups.as_slice())),
            action: &action,
            timeout: Timeout::new(self.timeout).expect("valid timeout"),
            now: self.created,
            not_before: self.not_before,
            retry_of: None,
            position: self.position,
        })
    }

    /// `n` orders sharing this spec's request.
    #[must_use]
    pub fn many(&self, n: usize) -> Vec<Order> {
        (0..n).map(|_| self.build()).collect()
    }
}

/// A poll wait no test comes near. A poll given this wait that returns with an order was woken
/// (by a notification, or because the order became due), not ended by its wait: a poll looks in
/// storage once more when its wait ends, so only how long it took tells the two apart, and an
/// hour is beyond any test on any machine. Use it with [`long_wait_settings`].
pub const LONG_WAIT: Duration = Duration::from_secs(3600);

/// Default settings that let a poll wait [`LONG_WAIT`].
#[must_use]
pub fn long_wait_settings() -> Settings {
    Settings {
        max_poll_wait: LONG_WAIT,
        ..Settings::default()
    }
}

/// Waits until a poll of `agent` is parked on its subscription ([`Notifier::polls_waiting`]),
/// so that the order the test creates next reaches the poll through a wake-up, not through the
/// poll's first look in storage. `poll` is the task running the poll.
///
/// # Panics
/// When `poll` ends before it waits (it found orders at once, or failed).
pub async fn until_poll_waits<T>(
    notifier: &dyn Notifier,
    agent: &AgentId,
    poll: &tokio::task::JoinHandle<T>,
) {
    let consumer = cm_domain::Consumer::Agent(agent.clone());
    while notifier.polls_waiting(&consumer) == 0 {
        assert!(
            !poll.is_finished(),
            "the poll of {agent} ended before it waited"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Expands to one `#[tokio::test]` per conformance case, each on a fresh backend built by
/// `$factory` (an async expression evaluating to a [`Backend`]).
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr) => {
        $crate::conformance_suite!(@cases $factory;
            inserted_orders_read_back_unchanged,
            unknown_order_is_none,
            inserting_the_same_orders_twice_creates_them_once,
            a_batch_mixing_known_and_new_orders_creates_only_the_new_ones,
            documents_keep_their_arguments_verbatim,
            claim_marks_pending_orders_sent_and_returns_them,
            claim_returns_at_most_limit_orders_oldest_first,
            claim_returns_only_the_agents_own_orders,
            claim_skips_orders_past_their_deadline,
            claim_skips_orders_before_their_not_before,
            claim_redelivers_unreported_orders_after_redeliver_after,
            claim_never_redelivers_orders_in_progress,
            next_due_is_the_earliest_scheduled_start_or_redelivery,
            cancel_pending_cancels_only_the_pending_orders_of_the_request,
            eight_concurrent_pollers_never_receive_the_same_order_twice,
            an_order_racing_between_expiry_and_delivery_ends_in_exactly_one_state,
            replace_applies_when_the_order_is_unchanged,
            replace_conflicts_when_the_order_changed_meanwhile,
            replace_of_an_unknown_order_is_not_found,
            concurrent_replacements_from_one_state_let_exactly_one_win,
            expire_due_fails_only_overdue_pending_orders,
            expire_due_drains_a_backlog_in_batches_of_the_limit,
            give_up_fails_delivered_orders_past_their_result_deadline,
            query_filters_by_every_field,
            query_time_bounds_are_since_inclusive_until_exclusive,
            query_cursor_pages_through_5000_orders_without_loss_or_repetition,
            progress_counts_orders_per_status,
            progress_of_an_unknown_request_is_zero,
            retention_deletes_only_finished_orders_older_than_the_cutoff,
            retention_archives_finished_orders_out_of_the_stream,
            delete_request_removes_every_order_of_the_request,
            ping_succeeds_on_a_reachable_backend,
            upsert_creates_then_updates_an_agent,
            unknown_agent_is_none,
            deleting_an_agent_reports_whether_it_existed,
            group_members_are_paged_in_id_order,
            listing_without_a_group_pages_every_agent,
            upsert_many_registers_in_bulk_and_counts_the_new_ones,
            an_agents_key_hash_is_kept_across_upserts_and_deleted_with_the_agent,
            a_key_hash_for_an_unknown_agent_is_not_stored,
            many_key_hashes_are_stored_at_once_for_registered_agents_only,
            registered_tells_which_ids_are_agents_in_one_call,
            a_20000_agent_group_expands_completely,
            notify_wakes_a_subscribed_poll,
            notify_for_another_agent_does_not_wake,
            long_poll_returns_as_soon_as_an_order_is_submitted,
            long_poll_returns_a_scheduled_order_when_it_becomes_due,
            retried_submit_with_the_same_idempotency_key_creates_nothing,
            request_progress_follows_delivery_and_reports,
            a_rollout_hands_out_orders_slot_by_slot_and_a_request_cancel_stops_the_rest,
            a_retry_re_runs_only_the_targets_that_ended_in_the_status_linked_to_the_request,
            array_and_object_args_are_kept_verbatim_on_every_backend,
            claim_for_many_consumers_takes_their_orders_oldest_first_and_no_others,
            component_orders_are_delivered_only_to_their_component,
            next_due_for_many_consumers_is_the_earliest_among_them,
            concurrent_relays_and_polls_never_receive_one_order_twice,
            a_relay_claim_racing_an_expiry_ends_in_exactly_one_state,
            notify_wakes_a_subscription_for_many_consumers,
            a_component_registers_once_and_keeps_its_key_until_rotated,
            a_server_command_is_consumed_by_its_component_and_a_relay_reports_for_a_group,
            a_record_is_created_once_read_back_and_replaced_by_revision,
            records_are_listed_newest_first_filtered_and_paged_without_loss_or_repetition,
            unsettled_records_page_oldest_first_and_retention_purges_only_settled_ones,
            orders_of_a_request_go_out_only_while_its_record_delivers,
            held_orders_neither_go_out_nor_expire_until_released_lowest_position_first,
            progress_counts_errors_of_the_action_apart_from_service_ends,
            results_group_finished_orders_by_status_code_and_message_largest_first,
            a_submit_writes_its_record_with_the_orders_and_counts_match,
            a_capped_request_never_has_more_than_its_cap_out_and_completes,
            more_failures_than_the_budget_stop_the_request_and_end_the_rest,
            pause_holds_the_rest_and_resume_delivers_it,
            a_dry_run_plans_every_command_and_writes_nothing,
            a_submit_left_writing_is_never_delivered_and_is_aborted_after_the_grace,
            a_keyed_retry_completes_a_submit_that_died_midway_to_exactly_the_full_count,
            whole_requests_are_written_with_their_orders_and_a_stored_record_is_left_alone,
            concurrent_submits_each_answer_with_their_own_durable_request,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let backend: $crate::testkit::Backend = $factory.await;
                $crate::testkit::cases::$case(backend).await;
            }
        )*
    };
}
