//! Who takes orders out of the stream: an agent, or a server component.

use std::fmt;

use crate::ids::{AgentId, ComponentName};

/// The consumer of an order (docs/delivery.md): the agent of an agent or group order, or the
/// component of a server order. Polls, relay claims and wake-ups are keyed by it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Consumer {
    Agent(AgentId),
    Component(ComponentName),
}

impl Consumer {
    /// The consumer's key in one text namespace for both kinds: `agent:<id>` or
    /// `server:<component>`. Notification payloads carry it.
    #[must_use]
    pub fn key(&self) -> String {
        match self {
            Self::Agent(a) => format!("agent:{a}"),
            Self::Component(c) => format!("server:{c}"),
        }
    }

    /// The consumer of a [`Self::key`]; `None` for any other text.
    #[must_use]
    pub fn from_key(raw: &str) -> Option<Self> {
        let (kind, id) = raw.split_once(':')?;
        match kind {
            "agent" => AgentId::parse(id, "").ok().map(Self::Agent),
            "server" => ComponentName::parse(id, "").ok().map(Self::Component),
            _ => None,
        }
    }
}

impl fmt::Display for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_keep_the_kinds_apart() {
        let a = Consumer::Agent(AgentId::parse("x:1", "id").unwrap());
        let c = Consumer::Component(ComponentName::parse("x:1", "id").unwrap());
        assert_ne!(a.key(), c.key());
        assert_eq!(Consumer::from_key(&a.key()), Some(a));
        assert_eq!(Consumer::from_key(&c.key()), Some(c));
        for bad in ["", "agent", "agent:", "group:g", "server:a b"] {
            assert_eq!(Consumer::from_key(bad), None, "{bad}");
        }
    }
}
