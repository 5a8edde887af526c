//! [`AgentRegistry`] over the agents index (`wazuh-agents`): documents
//! `{"agent": {"id", "groups", …Wazuh's other fields}, "command_manager": {"key_hash"}}` with the
//! agent id as `_id`. Our writes touch `agent.id`, `agent.groups` and `command_manager` only
//! (partial `_update`s), so whatever else Wazuh keeps there survives.
//!
//! **Visibility.** Writes do not refresh the index (a refresh per registration made registering
//! a fleet one agent at a time take minutes). The reads that search instead refresh it first:
//! `count` and the first page of `list` (where a group expansion and a listing start) always,
//! unless a refresh started after they were called, so they see every agent write that
//! finished before, through this instance or any other (a refresh with nothing to do costs a
//! fraction of a millisecond); later pages when this instance wrote agents since the last
//! refresh, or it is older than the poll interval. `get` and `key_hash` are realtime reads.

use async_trait::async_trait;
use cm_domain::{Agent, AgentId, GroupName, KeyHash};
use cm_ports::{AgentPageRequest, AgentRegistry, Page, StoreError, Upserted};
use opensearch::http::Method;
use serde::Serialize;
use serde_json::{Value, json};

use crate::bulk::{Applied, ItemOutcome, Meta, Need, Op, Ops};
use crate::error::{OsError, corrupt, kind};
use crate::mapping::{Fields, document_with, value_at};
use crate::visibility::Fresh;
use crate::{MAX_WINDOW, OpenSearchBackend};

/// `agent.groups` as Wazuh may write it: a list, one string, or nothing.
fn groups_of(value: &Value, id: &str) -> Result<Vec<GroupName>, StoreError> {
    let raw: Vec<&Value> = match value {
        Value::Null => Vec::new(),
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    raw.into_iter()
        .map(|g| {
            let name = g
                .as_str()
                .ok_or_else(|| corrupt(format!("agent {id}: a group that is not a string: {g}")))?;
            GroupName::parse(name, Fields::AGENT_GROUPS)
                .map_err(|e| corrupt(format!("agent {id}: group {name:?}: {}", e.message())))
        })
        .collect()
}

/// An agent from its document's `_source`.
fn agent_of(source: &Value, doc_id: &str) -> Result<Agent, StoreError> {
    let raw_id = value_at(source, Fields::AGENT_ID)
        .as_str()
        .unwrap_or(doc_id);
    let id = AgentId::parse(raw_id, Fields::AGENT_ID)
        .map_err(|e| corrupt(format!("agent document {doc_id}: {}", e.message())))?;
    Ok(Agent::new(
        id,
        groups_of(value_at(source, Fields::AGENT_GROUPS), raw_id)?,
    ))
}

/// The partial document of an upsert: only the fields this service owns in Wazuh's layout,
/// `{"doc": {"agent": {"id", "groups"}}, "doc_as_upsert": true}`.
#[derive(Serialize)]
struct UpsertBody<'a> {
    doc: UpsertDoc<'a>,
    doc_as_upsert: bool,
}

#[derive(Serialize)]
struct UpsertDoc<'a> {
    agent: UpsertAgent<'a>,
}

#[derive(Serialize)]
struct UpsertAgent<'a> {
    id: &'a AgentId,
    groups: &'a [GroupName],
}

fn upsert_body(agent: &Agent) -> UpsertBody<'_> {
    UpsertBody {
        doc: UpsertDoc {
            agent: UpsertAgent {
                id: agent.id(),
                groups: agent.groups(),
            },
        },
        doc_as_upsert: true,
    }
}

impl OpenSearchBackend {
    fn group_query(&self, group: Option<&GroupName>) -> Value {
        match group {
            Some(g) => json!({"bool": {"filter": [
                {"term": {&self.inner.fields.agent_groups: g.as_str()}}
            ]}}),
            None => json!({"match_all": {}}),
        }
    }

    fn agent_path(&self, id: &AgentId) -> String {
        format!("/{}/_doc/{}", self.inner.agents, id.as_str())
    }

    /// Records a finished agent write (whatever its outcome): the next listing refreshes.
    fn wrote_agents(&self) {
        self.inner.agents_visibility.wrote();
    }

    /// The `_source` of an agent's document (only `includes`), when it exists.
    async fn agent_source(
        &self,
        id: &AgentId,
        includes: &str,
    ) -> Result<Option<Value>, StoreError> {
        let answer = self
            .http()
            .call(
                Method::Get,
                &self.agent_path(id),
                &[("_source_includes", includes)],
                None,
            )
            .await?;
        match answer.status {
            200 => Ok(Some(answer.body["_source"].clone())),
            404 if answer.body["found"] == false => Ok(None),
            status => Err(OsError::from_answer(status, &answer.body).into()),
        }
    }
}

#[async_trait]
impl AgentRegistry for OpenSearchBackend {
    async fn upsert(&self, agent: &Agent) -> Result<Upserted, StoreError> {
        let body = serde_json::to_value(upsert_body(agent)).map_err(corrupt)?;
        let answer = self
            .http()
            .ok(
                Method::Post,
                &format!("/{}/_update/{}", self.inner.agents, agent.id().as_str()),
                &[("retry_on_conflict", "5")],
                Some(body),
            )
            .await;
        self.wrote_agents();
        let body = answer?;
        Ok(if body["result"] == "created" {
            Upserted::Created
        } else {
            Upserted::Updated
        })
    }

    async fn upsert_many(&self, agents: &[Agent]) -> Result<u64, StoreError> {
        if agents.is_empty() {
            return Ok(0);
        }
        let mut ops = Ops::with_capacity(agents.len(), 160);
        for a in agents {
            let meta = Meta::new(&self.inner.agents, a.id()).retry_on_conflict(5);
            ops.push(Op::Update, &meta, Some(&upsert_body(a)))?;
        }
        let outcomes = self.bulk(&ops, Need::Results).await;
        self.wrote_agents();
        let outcomes = outcomes?;
        let mut created = 0;
        for (a, outcome) in agents.iter().zip(&outcomes) {
            match outcome {
                ItemOutcome::Done {
                    result: Some(Applied::Created),
                } => created += 1,
                ItemOutcome::Done { .. } => {}
                other => {
                    return Err(StoreError::Unavailable(format!(
                        "agent {} was not registered: {}",
                        a.id(),
                        other.describe()
                    )));
                }
            }
        }
        Ok(created)
    }

    async fn set_key_hash(&self, id: &AgentId, hash: &KeyHash) -> Result<bool, StoreError> {
        // No search reads the key hash (`key_hash` is a realtime GET): nothing to refresh for.
        let answer = self
            .http()
            .call(
                Method::Post,
                &format!("/{}/_update/{}", self.inner.agents, id.as_str()),
                &[("retry_on_conflict", "5")],
                Some(json!({"doc": document_with(Fields::KEY_HASH, json!(hash))})),
            )
            .await?;
        match answer.status {
            200 => Ok(true),
            404 if OsError::from_answer(404, &answer.body).is_kind(kind::DOCUMENT_MISSING) => {
                Ok(false)
            }
            status => Err(OsError::from_answer(status, &answer.body).into()),
        }
    }

    async fn key_hash(&self, id: &AgentId) -> Result<Option<KeyHash>, StoreError> {
        let Some(source) = self.agent_source(id, Fields::KEY_HASH).await? else {
            return Ok(None);
        };
        match value_at(&source, Fields::KEY_HASH).as_str() {
            None => Ok(None),
            Some(raw) => KeyHash::parse(raw, Fields::KEY_HASH)
                .map(Some)
                .map_err(|e| corrupt(format!("agent {id}: key hash: {}", e.message()))),
        }
    }

    async fn get(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        self.agent_source(id, &[Fields::AGENT_ID, Fields::AGENT_GROUPS].join(","))
            .await?
            .map(|source| agent_of(&source, id.as_str()))
            .transpose()
    }

    async fn delete(&self, id: &AgentId) -> Result<bool, StoreError> {
        let answer = self
            .http()
            .call(Method::Delete, &self.agent_path(id), &[], None)
            .await;
        self.wrote_agents();
        let answer = answer?;
        match answer.status {
            200 => Ok(true),
            404 if answer.body["result"] == "not_found" => Ok(false),
            status => Err(OsError::from_answer(status, &answer.body).into()),
        }
    }

    async fn list(&self, page: &AgentPageRequest) -> Result<Page<Agent, AgentId>, StoreError> {
        if page.size == 0 {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        // A listing (or a group expansion) starts from what every instance registered before
        // it; its later pages need only this instance's writes meanwhile.
        self.make_agents_fresh(if page.after.is_none() {
            Fresh::Always
        } else {
            Fresh::IfDirtyOrOlder(self.inner.poll_interval)
        })
        .await?;
        let id_field = &self.inner.fields.agent_id;
        let mut body = json!({
            "size": page.size.min(MAX_WINDOW),
            "track_total_hits": false,
            "_source": [Fields::AGENT_ID, Fields::AGENT_GROUPS],
            "sort": [{id_field: "asc"}],
            "query": self.group_query(page.group.as_ref())
        });
        if let Some(after) = &page.after {
            body["search_after"] = json!([after.as_str()]);
        }
        let answer = self
            .http()
            .ok(
                Method::Post,
                &format!("/{}/_search", self.inner.agents),
                &[],
                Some(body),
            )
            .await?;
        let hits = crate::search_hits(answer)?;
        let items = hits
            .iter()
            .map(|hit| agent_of(&hit["_source"], hit["_id"].as_str().unwrap_or_default()))
            .collect::<Result<Vec<Agent>, StoreError>>()?;
        Ok(Page::read(items, page.size, |a| a.id().clone()))
    }

    async fn count(&self, group: Option<GroupName>) -> Result<u64, StoreError> {
        // Every agent registered before, through any instance (a group submit counts its
        // members right after their registration).
        self.make_agents_fresh(Fresh::Always).await?;
        let answer = self
            .http()
            .ok(
                Method::Post,
                &format!("/{}/_count", self.inner.agents),
                &[],
                Some(json!({"query": self.group_query(group.as_ref())})),
            )
            .await?;
        answer["count"]
            .as_u64()
            .ok_or_else(|| corrupt(format!("_count answer without count: {answer}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wazuh_agent_documents_decode_whatever_else_they_hold() {
        let doc = json!({"agent": {
            "id": "001", "name": "web-1", "groups": ["default", "linux"], "type": "endpoint",
            "version": "v5.0.0", "status": "active", "key": "secret", "host": {"ip": "10.0.0.1"}
        }});
        let a = agent_of(&doc, "001").unwrap();
        assert_eq!(a.id().as_str(), "001");
        assert_eq!(
            a.groups().iter().map(GroupName::as_str).collect::<Vec<_>>(),
            ["default", "linux"]
        );
        let single = json!({"agent": {"id": "002", "groups": "default"}});
        assert_eq!(agent_of(&single, "002").unwrap().groups().len(), 1);
        let none = json!({"agent": {"id": "003"}});
        assert!(agent_of(&none, "003").unwrap().groups().is_empty());
        assert!(agent_of(&json!({"agent": {"id": "a b"}}), "x").is_err());
    }
}
