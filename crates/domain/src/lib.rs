//! The pure rules of the command manager (docs/orders.md): validated commands, expansion into
//! orders, the order state machine, expiry and redelivery as functions of `now`, and the spread
//! of a rollout.
//!
//! Nothing here does I/O, reads a clock or draws randomness: time comes in as `now`, ids come in
//! through [`IdSource`]. Every function is total and unit-tested.

mod agent;
mod command;
mod consumer;
mod error;
mod expansion;
mod ids;
mod order;
mod policy;
mod request;
mod schedule;
pub mod time;

pub use agent::Agent;
pub use command::{
    Action, Command, KEYWORD_PATTERN, MAX_KEYWORD_LEN, REQUIRED_KEYWORD_PATTERN, Source, Target,
    TargetType, Timeout, check_text,
};
pub use consumer::Consumer;
pub use error::{ExpansionError, FieldError, TransitionError};
pub use expansion::Expander;
pub use ids::{
    AgentId, ComponentName, GroupName, IdSource, IdempotencyKey, KeyHash, KeyedIds, MAX_NAME_LEN,
    NAME_PATTERN, OrderId, RequestId,
};
pub use order::{
    AgentRef, CANCELLED, CommandResult, EXPIRED, ExpiryPatch, MAX_RESULT_DATA, NO_RESULT, NewOrder,
    Order, PendingEnd, Report, ReportOutcome, ReportStatus, SERVICE_RESULT_CODE, STOPPED, Status,
};
pub use policy::DeliveryPolicy;
pub use request::{
    ERROR_BUDGET_EXHAUSTED, HELD_TOO_LONG, Limit, RateControl, RecordedSchedule, RequestAction,
    RequestRecord, RequestState, RequestStateError, SUBMIT_NEVER_COMPLETED, StatusCounts, Step,
};
pub use schedule::{Rollout, Schedule};
