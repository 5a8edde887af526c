//! The agents registry, as managers see it.

use cm_domain::{Agent, AgentId, GroupName};

use super::CommandManager;
use super::orders::MAX_PAGE_SIZE;
use crate::store::{AgentPageRequest, Page, StoreError, Upserted};

impl CommandManager {
    /// Registers an agent or replaces its groups.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    pub async fn put_agent(&self, agent: &Agent) -> Result<Upserted, StoreError> {
        self.ports.agents.upsert(agent).await
    }

    /// # Errors
    /// [`StoreError`] when storage fails.
    pub async fn agent(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        self.ports.agents.get(id).await
    }

    /// One page of agents (of `group` when given), by id; the page size is capped at 1000.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    pub async fn agents(
        &self,
        group: Option<&GroupName>,
        size: usize,
        after: Option<AgentId>,
    ) -> Result<Page<Agent, AgentId>, StoreError> {
        let page = AgentPageRequest {
            group: group.cloned(),
            size: size.clamp(1, MAX_PAGE_SIZE),
            after,
        };
        self.ports.agents.list(&page).await
    }

    /// Removes an agent from the registry; its orders stay. `false` when it was not registered.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    pub async fn delete_agent(&self, id: &AgentId) -> Result<bool, StoreError> {
        self.ports.agents.delete(id).await
    }
}
