//! Errors of the pure rules. Each names what a caller needs to act on.

use crate::OrderId;
use crate::order::Status;

/// A value broke its rule. `field` is a path relative to the value being parsed
/// (`target.type`); callers prefix it with where the value sits (`commands[1].`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    field: String,
    message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The path of the offending field.
    #[must_use]
    pub fn field(&self) -> &str {
        &self.field
    }

    /// Why the value was refused.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Places this error under `prefix`: `timeout` under `commands[2]` is `commands[2].timeout`.
    #[must_use]
    pub fn under(self, prefix: &str) -> Self {
        let field = if self.field.is_empty() {
            prefix.to_owned()
        } else if self.field.starts_with('[') {
            format!("{prefix}{}", self.field)
        } else {
            format!("{prefix}.{}", self.field)
        };
        Self { field, ..self }
    }
}

/// A command did not expand into any order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpansionError {
    #[error("commands[{index}]: agent {agent} is not registered")]
    UnknownAgent { index: usize, agent: String },
    #[error("commands[{index}]: group {group} has no agents")]
    EmptyGroup { index: usize, group: String },
    #[error("commands[{index}]: expands to {count} orders, more than the limit of {limit}")]
    TooManyOrders {
        index: usize,
        count: u64,
        limit: u64,
    },
}

impl ExpansionError {
    /// The index of the command, in its request, that failed to expand.
    #[must_use]
    pub fn index(&self) -> usize {
        match self {
            Self::UnknownAgent { index, .. }
            | Self::EmptyGroup { index, .. }
            | Self::TooManyOrders { index, .. } => *index,
        }
    }
}

/// The state machine does not allow this step from the order's current status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("order {order_id} is {status}: it cannot be {attempted}")]
pub struct TransitionError {
    pub order_id: OrderId,
    pub status: Status,
    pub attempted: &'static str,
}
