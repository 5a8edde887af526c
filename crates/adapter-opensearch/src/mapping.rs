//! The index template and mappings: Wazuh's `wazuh-commands*` template (docs/operations.md), plus
//! mappings for the fields this service adds, and the agents index. Created when missing,
//! extended (never changed) when present.

use cm_ports::StoreError;
use opensearch::http::Method;
use serde_json::{Value, json};

use crate::client::Http;
use crate::error::{OsError, kind};
use crate::settings::OpenSearchSettings;

/// `type: keyword` with Wazuh's `ignore_above`.
fn keyword() -> Value {
    json!({"type": "keyword", "ignore_above": 1024})
}

fn date() -> Value {
    json!({"type": "date"})
}

/// The `properties` of an order document (docs/orders.md), `agent.id` included: Wazuh's template
/// leaves it to dynamic mapping (text), but claims filter on it.
#[must_use]
pub(crate) fn order_properties() -> Value {
    json!({
        "@timestamp": date(),
        "delivery_timestamp": date(),
        "agent": {"properties": {"id": keyword(), "groups": keyword()}},
        "command": {"properties": {
            "source": keyword(),
            "user": keyword(),
            "target": {"properties": {"type": keyword(), "id": keyword()}},
            "action": {"properties": {
                "name": keyword(),
                "args": {"type": "object"},
                "version": keyword()
            }},
            "timeout": {"type": "short"},
            "status": keyword(),
            "result": {"properties": {
                "code": {"type": "short"},
                "message": keyword(),
                "data": keyword()
            }},
            "request_id": keyword(),
            "order_id": keyword(),
            // Beyond Wazuh's layout: scheduling, delivery and retention bookkeeping.
            "not_before": date(),
            "sent_at": date(),
            "deliveries": {"type": "integer"},
            "redeliver_at": date(),
            "result_deadline": date(),
            "finished_at": date(),
            "retry_of": keyword()
        }}
    })
}

/// The settings of the orders (and archive) indices: Wazuh's template settings.
#[must_use]
pub(crate) fn order_index_settings() -> Value {
    json!({"index": {
        "number_of_shards": 1,
        "number_of_replicas": 0,
        "refresh_interval": "5s",
        "query.default_field": [
            "command.source",
            "command.target.type",
            "command.status",
            "command.action.name"
        ]
    }})
}

/// The composable index template `<orders_index>` for `<orders_index>*` (and the archive
/// index when its name does not start with the orders index's).
#[must_use]
pub(crate) fn orders_template(settings: &OpenSearchSettings) -> Value {
    let mut patterns = vec![format!("{}*", settings.orders_index)];
    if !settings.archive_index.starts_with(&settings.orders_index) {
        patterns.push(settings.archive_index.clone());
    }
    json!({
        "index_patterns": patterns,
        // The most specific pattern wins where several deployments share a cluster.
        "priority": 100 + settings.orders_index.len(),
        "template": {
            "settings": order_index_settings(),
            "mappings": {
                "date_detection": false,
                "dynamic": true,
                "properties": order_properties()
            }
        },
        "_meta": {"managed_by": "command-manager"}
    })
}

/// The fields of the agents index this service reads and writes. Wazuh's other agent fields
/// (`name`, `key`, `host`, …) are left to whoever writes them; our key hash lives outside
/// Wazuh's `agent` object.
fn agent_properties() -> Value {
    json!({
        "agent": {"properties": {"id": keyword(), "groups": keyword()}},
        "command_manager": {"properties": {"key_hash": {"type": "keyword", "index": false}}}
    })
}

/// The name of the template covering the orders indices.
pub(crate) fn template_name(settings: &OpenSearchSettings) -> String {
    settings.orders_index.clone()
}

/// The field to filter and sort on for a keyword `path` of an existing index: the field itself
/// when mapped as `keyword` (or not mapped yet), its `.keyword` sub-field when dynamic mapping
/// made it `text` (as in indices the Wazuh plugin created, whose template does not map
/// `agent.id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeywordField {
    Unmapped,
    Keyword,
    TextWithKeyword,
}

pub(crate) fn keyword_field(mapping: &Value, path: &str) -> Result<KeywordField, String> {
    let mut node = mapping;
    for part in path.split('.') {
        node = &node["properties"][part];
    }
    match node["type"].as_str() {
        None if node.is_null() => Ok(KeywordField::Unmapped),
        Some("keyword") => Ok(KeywordField::Keyword),
        Some("text") if node["fields"]["keyword"]["type"] == "keyword" => {
            Ok(KeywordField::TextWithKeyword)
        }
        other => Err(format!(
            "{path} is mapped as {}, not keyword",
            other.unwrap_or("an object")
        )),
    }
}

/// Removes `path` from a `properties` tree (so a mapping update leaves an existing field alone).
fn remove_path(properties: &mut Value, path: &str) {
    let parts: Vec<&str> = path.split('.').collect();
    let mut node = properties;
    for part in &parts[..parts.len() - 1] {
        node = &mut node[*part]["properties"];
    }
    if let Some(map) = node.as_object_mut() {
        map.remove(parts[parts.len() - 1]);
    }
}

/// Where the keyword fields this adapter queries live, as found in the existing indices.
#[derive(Debug, Clone)]
pub(crate) struct Fields {
    /// `agent.id` of the orders index.
    pub(crate) order_agent: String,
    /// `agent.id` and `agent.groups` of the agents index.
    pub(crate) agent_id: String,
    pub(crate) agent_groups: String,
}

/// What [`ensure`] did.
#[derive(Debug)]
pub(crate) struct Ensured {
    pub(crate) created: usize,
    pub(crate) fields: Fields,
}

async fn exists(http: &Http, path: &str) -> Result<bool, OsError> {
    let answer = http.call(Method::Head, path, &[], None).await?;
    match answer.status {
        200 => Ok(true),
        404 => Ok(false),
        status => Err(OsError::from_answer(status, &answer.body)),
    }
}

/// Creates `index` with `body` unless it exists; `true` when this call created it.
async fn create_index(http: &Http, index: &str, body: &Value) -> Result<bool, OsError> {
    if exists(http, &format!("/{index}")).await? {
        return Ok(false);
    }
    match http
        .ok(Method::Put, &format!("/{index}"), &[], Some(body.clone()))
        .await
    {
        Ok(_) => Ok(true),
        // Another instance created it meanwhile.
        Err(e) if e.is_kind(kind::INDEX_EXISTS) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Adds our fields to an existing index's mapping, leaving the `keyword_paths` that the index
/// already maps (as keyword, or as text with a keyword sub-field) alone. Returns, per path, the
/// field to query.
async fn extend_mapping(
    http: &Http,
    index: &str,
    mut properties: Value,
    keyword_paths: &[&str],
) -> Result<Vec<String>, StoreError> {
    let answer = http
        .ok(Method::Get, &format!("/{index}/_mapping"), &[], None)
        .await?;
    let mapping = answer
        .as_object()
        .and_then(|m| m.values().next())
        .map(|v| v["mappings"].clone())
        .unwrap_or(Value::Null);
    let mut fields = Vec::new();
    for path in keyword_paths {
        let field = keyword_field(&mapping, path)
            .map_err(|why| StoreError::Corrupt(format!("index {index}: {why}")))?;
        match field {
            KeywordField::Unmapped | KeywordField::Keyword => fields.push((*path).to_owned()),
            KeywordField::TextWithKeyword => {
                remove_path(&mut properties, path);
                fields.push(format!("{path}.keyword"));
            }
        }
    }
    http.ok(
        Method::Put,
        &format!("/{index}/_mapping"),
        &[],
        Some(json!({"properties": properties})),
    )
    .await
    .map_err(|e| match e {
        OsError::Status {
            status: 400,
            reason,
            ..
        } => StoreError::Corrupt(format!(
            "index {index} has a mapping this service cannot use: {reason}"
        )),
        other => other.into(),
    })?;
    Ok(fields)
}

/// Puts the orders template (creating or updating it) and creates the orders, archive and
/// agents indices when missing; indices that exist get our fields added to their mapping.
pub(crate) async fn ensure(http: &Http, s: &OpenSearchSettings) -> Result<Ensured, StoreError> {
    let mut created = 0;
    let template = template_name(s);
    let template_path = format!("/_index_template/{template}");
    if !exists(http, &template_path).await? {
        created += 1;
    }
    http.ok(Method::Put, &template_path, &[], Some(orders_template(s)))
        .await
        .map_err(|e| match e {
            OsError::Status {
                status: 400,
                reason,
                ..
            } => StoreError::Corrupt(format!("cannot put index template {template}: {reason}")),
            other => other.into(),
        })?;

    let mut order_agent = "agent.id".to_owned();
    for index in [&s.orders_index, &s.archive_index] {
        // The template gives a new index its settings and mappings.
        if create_index(http, index, &json!({})).await? {
            created += 1;
        } else {
            let fields = extend_mapping(http, index, order_properties(), &["agent.id"]).await?;
            if index == &s.orders_index {
                order_agent = fields[0].clone();
            }
        }
    }

    let agents_body = json!({
        "settings": {"index": {"number_of_shards": 1}},
        "mappings": {"dynamic": true, "properties": agent_properties()}
    });
    let (agent_id, agent_groups) = if create_index(http, &s.agents_index, &agents_body).await? {
        created += 1;
        ("agent.id".to_owned(), "agent.groups".to_owned())
    } else {
        let fields = extend_mapping(
            http,
            &s.agents_index,
            agent_properties(),
            &["agent.id", "agent.groups"],
        )
        .await?;
        (fields[0].clone(), fields[1].clone())
    };
    Ok(Ensured {
        created,
        fields: Fields {
            order_agent,
            agent_id,
            agent_groups,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_with_a_keyword_sub_field_are_queried_through_it() {
        let mapping = json!({"properties": {"agent": {"properties": {
            "id": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}},
            "groups": {"type": "keyword"},
            "name": {"type": "long"}
        }}}});
        assert_eq!(
            keyword_field(&mapping, "agent.id"),
            Ok(KeywordField::TextWithKeyword)
        );
        assert_eq!(
            keyword_field(&mapping, "agent.groups"),
            Ok(KeywordField::Keyword)
        );
        assert_eq!(
            keyword_field(&mapping, "agent.version"),
            Ok(KeywordField::Unmapped)
        );
        assert!(keyword_field(&mapping, "agent.name").is_err());
    }

    #[test]
    fn an_existing_field_is_left_out_of_the_mapping_update() {
        let mut props = order_properties();
        remove_path(&mut props, "agent.id");
        assert!(props["agent"]["properties"].get("id").is_none());
        assert_eq!(props["agent"]["properties"]["groups"], keyword());
    }

    #[test]
    fn the_template_covers_a_differently_named_archive() {
        let s = OpenSearchSettings {
            archive_index: "old-commands".into(),
            ..OpenSearchSettings::default()
        };
        assert_eq!(
            orders_template(&s)["index_patterns"],
            json!(["wazuh-commands*", "old-commands"])
        );
        assert_eq!(
            orders_template(&OpenSearchSettings::default())["index_patterns"],
            json!(["wazuh-commands*"])
        );
    }
}
