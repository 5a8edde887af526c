//! The agents registry, as managers see it, and agents' keys.

use std::collections::HashSet;

use cm_domain::{Agent, AgentId, GroupName, KeyHash};

use super::CommandManager;
use super::orders::MAX_PAGE_SIZE;
use crate::auth::{AgentKey, hash_key, verify_key};
use crate::store::{AgentPageRequest, Page, StoreError, Upserted};

/// The outcome of [`CommandManager::put_agent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub upserted: Upserted,
    /// The agent's new key, issued only when the agent was created (`None` on an update, or in
    /// the rare case that the agent was deleted again before its key could be stored). It is
    /// shown once: only its hash is stored.
    pub key: Option<AgentKey>,
}

/// The most agents [`CommandManager::put_agents`] registers in one call.
pub const MAX_BULK_AGENTS: usize = 10_000;

/// One agent of [`CommandManager::put_agents`]: whether it was new, and its key if so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkRegistered {
    pub id: AgentId,
    pub created: bool,
    /// Shown once, only for a new agent (and `None` in the rare case that it was deleted again
    /// before its key could be stored).
    pub key: Option<AgentKey>,
}

impl CommandManager {
    /// Registers many agents at once (ids unique, at most [`MAX_BULK_AGENTS`]; the caller
    /// validates): one [`AgentRegistry::upsert_many`](crate::store::AgentRegistry::upsert_many)
    /// for all of them, then one
    /// [`AgentRegistry::set_key_hashes`](crate::store::AgentRegistry::set_key_hashes) with a key
    /// for each agent that was new. Answers in the order given.
    ///
    /// Which agents are new is read before the upsert, in one
    /// [`AgentRegistry::registered`](crate::store::AgentRegistry::registered); an agent registered by someone else
    /// between the read and the upsert is counted as new here and gets a fresh key (its first
    /// key stops working), as a key rotation would do.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails (the agents upserted before it stay registered; a
    /// repeat of the call then answers them as existing, without a key: rotate their keys), or
    /// [`StoreError::Unavailable`] when there is no randomness (nothing written).
    pub async fn put_agents(&self, agents: &[Agent]) -> Result<Vec<BulkRegistered>, StoreError> {
        // Keys are drawn before anything is written, so that no randomness failure leaves
        // agents without keys.
        let keys = agents
            .iter()
            .map(|_| AgentKey::generate())
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<AgentId> = agents.iter().map(|a| a.id().clone()).collect();
        let registered: HashSet<AgentId> = self
            .ports
            .agents
            .registered(&ids)
            .await?
            .into_iter()
            .collect();
        let existed: Vec<bool> = ids.iter().map(|id| registered.contains(id)).collect();
        self.ports.agents.upsert_many(agents).await?;
        let hashes: Vec<(AgentId, KeyHash)> = agents
            .iter()
            .zip(&keys)
            .zip(&existed)
            .filter(|(_, existed)| !**existed)
            .map(|((a, key), _)| (a.id().clone(), key.hash()))
            .collect();
        let stored = self.ports.agents.set_key_hashes(&hashes).await?;
        // Each new agent's key was stored, unless one was deleted again meanwhile: then find
        // out which, so that no key is handed out that does not work.
        let all_stored = stored == hashes.len() as u64;
        let mut stored_keys: Vec<Option<AgentKey>> = Vec::with_capacity(agents.len());
        for ((a, key), existed) in agents.iter().zip(keys).zip(&existed) {
            let kept = if *existed {
                None
            } else if all_stored {
                Some(key)
            } else {
                let hash = self.ports.agents.key_hash(a.id()).await?;
                (hash == Some(key.hash())).then_some(key)
            };
            stored_keys.push(kept);
        }
        let stored = stored_keys;
        Ok(agents
            .iter()
            .zip(existed)
            .zip(stored)
            .map(|((a, existed), key)| BulkRegistered {
                id: a.id().clone(),
                created: !existed,
                key,
            })
            .collect())
    }

    /// Registers an agent or replaces its groups. A new agent gets a key (its hash is stored);
    /// an existing one keeps its key.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails, or [`StoreError::Unavailable`] when the operating
    /// system provides no randomness for the key (nothing is written then).
    pub async fn put_agent(&self, agent: &Agent) -> Result<Registered, StoreError> {
        // Drawn before anything is written, so that a failure leaves no agent without a key.
        let key = AgentKey::generate()?;
        let upserted = self.ports.agents.upsert(agent).await?;
        let key = match upserted {
            Upserted::Updated => None,
            Upserted::Created => self
                .ports
                .agents
                .set_key_hash(agent.id(), &key.hash())
                .await?
                .then_some(key),
        };
        Ok(Registered { upserted, key })
    }

    /// Issues a new key for `id`, replacing its old one (which stops working at once), or its
    /// first one when it was registered without a key (by Wazuh directly, say). `None` when the
    /// agent is not registered.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails or there is no randomness; the old key then still
    /// works unless storage did change.
    pub async fn rotate_agent_key(&self, id: &AgentId) -> Result<Option<AgentKey>, StoreError> {
        let key = AgentKey::generate()?;
        let stored = self.ports.agents.set_key_hash(id, &key.hash()).await?;
        Ok(stored.then_some(key))
    }

    /// Whether `presented` is `id`'s key. `false` when the agent is unknown or has no key.
    /// The comparison is made in constant time, and an unknown agent costs the same hashing
    /// as a known one.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    pub async fn authenticate_agent(
        &self,
        id: &AgentId,
        presented: &str,
    ) -> Result<bool, StoreError> {
        match self.ports.agents.key_hash(id).await? {
            Some(stored) => Ok(verify_key(presented, &stored)),
            None => {
                let _ = verify_key(presented, &hash_key(""));
                Ok(false)
            }
        }
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

    /// Removes an agent (and its key) from the registry; its orders stay. `false` when it was
    /// not registered.
    ///
    /// # Errors
    /// [`StoreError`] when storage fails.
    pub async fn delete_agent(&self, id: &AgentId) -> Result<bool, StoreError> {
        self.ports.agents.delete(id).await
    }
}
