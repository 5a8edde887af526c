//! An agent as the registry knows it.

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, GroupName};

/// One registered endpoint agent and the groups it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    id: AgentId,
    #[serde(default)]
    groups: Vec<GroupName>,
}

impl Agent {
    /// Duplicate group names are dropped; the first occurrence keeps its place.
    #[must_use]
    pub fn new(id: AgentId, groups: Vec<GroupName>) -> Self {
        let mut unique: Vec<GroupName> = Vec::with_capacity(groups.len());
        for g in groups {
            if !unique.contains(&g) {
                unique.push(g);
            }
        }
        Self { id, groups: unique }
    }

    #[must_use]
    pub const fn id(&self) -> &AgentId {
        &self.id
    }

    #[must_use]
    pub fn groups(&self) -> &[GroupName] {
        &self.groups
    }

    #[must_use]
    pub fn is_member_of(&self, group: &GroupName) -> bool {
        self.groups.contains(group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_groups_are_kept_once() {
        let g = |s| GroupName::parse(s, "g").unwrap();
        let a = Agent::new(
            AgentId::parse("a1", "id").unwrap(),
            vec![g("Test"), g("X"), g("Test")],
        );
        assert_eq!(a.groups(), &[g("Test"), g("X")]);
        assert!(a.is_member_of(&g("X")));
        assert!(!a.is_member_of(&g("Y")));
    }
}
