//! [`ComponentRegistry`] over the servers index (`wazuh-servers`): one document
//! `{"name", "key_hash"}` per component with its name as `_id`. Components are few and change
//! rarely, so every write refreshes the index (`refresh=true`) and listings see it at once;
//! `key_hash` is a realtime read by id.

use async_trait::async_trait;
use cm_domain::{ComponentName, KeyHash};
use cm_ports::{ComponentRegistry, Page, StoreError, Upserted};
use opensearch::http::Method;
use serde_json::json;

use crate::OpenSearchBackend;
use crate::error::{OsError, corrupt};

impl OpenSearchBackend {
    fn component_path(&self, op: &str, name: &ComponentName) -> String {
        format!("/{}/{op}/{}", self.inner.servers, name.as_str())
    }
}

#[async_trait]
impl ComponentRegistry for OpenSearchBackend {
    async fn register(&self, name: &ComponentName, hash: &KeyHash) -> Result<Upserted, StoreError> {
        let answer = self
            .http()
            .call(
                Method::Put,
                &self.component_path("_create", name),
                &[("refresh", "true")],
                Some(json!({"name": name.as_str(), "key_hash": hash.as_str()})),
            )
            .await?;
        match answer.status {
            200 | 201 => Ok(Upserted::Created),
            409 => Ok(Upserted::Updated),
            status => Err(OsError::from_answer(status, &answer.body).into()),
        }
    }

    async fn set_key_hash(&self, name: &ComponentName, hash: &KeyHash) -> Result<bool, StoreError> {
        let answer = self
            .http()
            .call(
                Method::Post,
                &self.component_path("_update", name),
                &[("refresh", "true")],
                Some(json!({"doc": {"key_hash": hash.as_str()}})),
            )
            .await?;
        match answer.status {
            200 | 201 => Ok(true),
            404 => Ok(false),
            status => Err(OsError::from_answer(status, &answer.body).into()),
        }
    }

    async fn key_hash(&self, name: &ComponentName) -> Result<Option<KeyHash>, StoreError> {
        let answer = self
            .http()
            .call(Method::Get, &self.component_path("_doc", name), &[], None)
            .await?;
        match answer.status {
            200 => {
                let raw = answer.body["_source"]["key_hash"]
                    .as_str()
                    .ok_or_else(|| corrupt(format!("component {name} has no key hash")))?;
                KeyHash::parse(raw, "key_hash")
                    .map(Some)
                    .map_err(|_| corrupt(format!("component {name} has a malformed key hash")))
            }
            404 => Ok(None),
            status => Err(OsError::from_answer(status, &answer.body).into()),
        }
    }

    async fn list(
        &self,
        after: Option<ComponentName>,
        size: usize,
    ) -> Result<Page<ComponentName, ComponentName>, StoreError> {
        let mut body = json!({
            "size": size.min(crate::MAX_WINDOW),
            "_source": ["name"],
            "track_total_hits": false,
            "sort": [{"name": "asc"}],
            "query": {"match_all": {}}
        });
        if let Some(a) = &after {
            body["search_after"] = json!([a.as_str()]);
        }
        let answer = self
            .http()
            .ok(
                Method::Post,
                &format!("/{}/_search", self.inner.servers),
                &[],
                Some(body),
            )
            .await?;
        let items = answer["hits"]["hits"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|hit| {
                let raw = hit["_source"]["name"].as_str().unwrap_or_default();
                ComponentName::parse(raw, "name")
                    .map_err(|_| corrupt(format!("malformed component name {raw:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::read(items, size, Clone::clone))
    }

    async fn delete(&self, name: &ComponentName) -> Result<bool, StoreError> {
        let answer = self
            .http()
            .call(
                Method::Delete,
                &self.component_path("_doc", name),
                &[("refresh", "true")],
                None,
            )
            .await?;
        match answer.status {
            200 => Ok(true),
            404 => Ok(false),
            status => Err(OsError::from_answer(status, &answer.body).into()),
        }
    }
}
