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

/// A `properties` tree mapping each dotted path of `fields` to its mapping.
fn properties<'a>(fields: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    let mut tree = json!({});
    for (path, mapping) in fields {
        let (parents, name) = path.rsplit_once('.').unwrap_or(("", path));
        let mut node = &mut tree;
        for part in parents.split('.').filter(|p| !p.is_empty()) {
            node = &mut node[part]["properties"];
        }
        node[name] = mapping;
    }
    tree
}

/// The `properties` of an order document (the layout of docs/orders.md), `agent.id` included:
/// Wazuh's template leaves it to dynamic mapping (text), but claims filter on it.
#[must_use]
pub(crate) fn order_properties() -> Value {
    properties([
        (Fields::CREATED, date()),
        (Fields::DELIVERY_DEADLINE, date()),
        (Fields::AGENT_ID, keyword()),
        (Fields::AGENT_GROUPS, keyword()),
        (Fields::SOURCE, keyword()),
        ("command.user", keyword()),
        (Fields::TARGET_TYPE, keyword()),
        (Fields::TARGET_ID, keyword()),
        (Fields::ACTION_NAME, keyword()),
        // Stored, never indexed: arguments are an object or an array of any values (docs/orders.md),
        // and no two orders' arguments can conflict in the mapping.
        (
            Fields::ACTION_ARGS,
            json!({"type": "object", "enabled": false}),
        ),
        ("command.action.version", keyword()),
        ("command.timeout", json!({"type": "short"})),
        (Fields::STATUS, keyword()),
        (Fields::RESULT_CODE, json!({"type": "short"})),
        (Fields::RESULT_MESSAGE, keyword()),
        ("command.result.data", keyword()),
        (Fields::REQUEST_ID, keyword()),
        (Fields::ORDER_ID, keyword()),
        // Beyond Wazuh's layout: scheduling, delivery and retention bookkeeping.
        (Fields::NOT_BEFORE, date()),
        ("command.sent_at", date()),
        ("command.deliveries", json!({"type": "integer"})),
        (Fields::REDELIVER_AT, date()),
        (Fields::RESULT_DEADLINE, date()),
        (Fields::FINISHED_AT, date()),
        ("command.retry_of", keyword()),
        // Rate control (docs/rollout.md); orders written before have neither: a missing
        // `held` is false, and queries say so (`must_not: held true`).
        (Fields::POSITION, json!({"type": "long"})),
        (Fields::HELD, json!({"type": "boolean"})),
    ])
}

/// The `properties` of a request record (the serde form of `RequestRecord`, docs/requests.md):
/// what listings filter and sort on as keywords and dates, the counts as numbers (whether they
/// exist says whether the record is settled), the rate control stored without indexing (a
/// limit is a number or a percentage string).
#[must_use]
pub(crate) fn request_properties() -> Value {
    let count = || json!({"type": "long"});
    properties([
        (Fields::RECORD_ID, keyword()),
        (Fields::RECORD_CREATED, date()),
        (Fields::RECORD_SOURCE, keyword()),
        (Fields::RECORD_USER, keyword()),
        (Fields::RECORD_TARGET_TYPE, keyword()),
        (Fields::RECORD_TARGET_ID, keyword()),
        (Fields::RECORD_ACTION, keyword()),
        ("action.version", keyword()),
        ("timeout", json!({"type": "integer"})),
        ("schedule.start_at", date()),
        ("schedule.rollout_secs", json!({"type": "long"})),
        ("rate_control", json!({"type": "object", "enabled": false})),
        ("retry_of", keyword()),
        (Fields::RECORD_STATE, keyword()),
        ("state_reason", keyword()),
        (Fields::RECORD_FINISHED, date()),
        ("total", count()),
        ("released", count()),
        ("held_since", date()),
        ("counts.pending", count()),
        ("counts.sent", count()),
        ("counts.in_progress", count()),
        ("counts.success", count()),
        ("counts.failure", count()),
        ("counts.errors", count()),
        ("updated_at", date()),
        (Fields::RECORD_REVISION, count()),
    ])
}

/// The composable index template `<requests_index>` for exactly that index. Its priority is
/// above that of any orders template whose pattern (`<orders_index>*`) covers the name, so the
/// requests index gets this mapping alone even under the default names (`wazuh-commands` and
/// `wazuh-commands-requests`).
#[must_use]
pub(crate) fn requests_template(settings: &OpenSearchSettings) -> Value {
    json!({
        "index_patterns": [settings.requests_index],
        "priority": 101 + settings.requests_index.len(),
        "template": {
            "settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0}},
            "mappings": {
                "date_detection": false,
                // Fields a later version adds are kept in `_source`, not indexed.
                "dynamic": false,
                "properties": request_properties()
            }
        },
        "_meta": {"managed_by": "command-manager"}
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
            Fields::SOURCE,
            Fields::TARGET_TYPE,
            Fields::STATUS,
            Fields::ACTION_NAME
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
    properties([
        (Fields::AGENT_ID, keyword()),
        (Fields::AGENT_GROUPS, keyword()),
        (Fields::KEY_HASH, json!({"type": "keyword", "index": false})),
    ])
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

/// The field paths this adapter maps, queries, sorts on and reads, each spelled once: the
/// associated constants are the paths of the documents; the struct holds the keyword fields to
/// query as found in the existing indices (the path itself, or its `.keyword` sub-field).
#[derive(Debug, Clone)]
pub(crate) struct Fields {
    /// `agent.id` of the orders index.
    pub(crate) order_agent: String,
    /// `agent.id` and `agent.groups` of the agents index.
    pub(crate) agent_id: String,
    pub(crate) agent_groups: String,
    /// Whether the orders index indexes `command.action.args` (an index made by an earlier
    /// template, the Wazuh plugin's included): then arrays of scalars cannot be stored there.
    pub(crate) args_indexed: bool,
}

impl Fields {
    /// An order's creation (`Order::created_at`), the first key of the stream's order.
    pub(crate) const CREATED: &str = "@timestamp";
    /// The deadline for delivery.
    pub(crate) const DELIVERY_DEADLINE: &str = "delivery_timestamp";
    /// The agent of an order; the id of an agent document.
    pub(crate) const AGENT_ID: &str = "agent.id";
    /// The groups of an agent document (and of an order's agent).
    pub(crate) const AGENT_GROUPS: &str = "agent.groups";
    pub(crate) const SOURCE: &str = "command.source";
    pub(crate) const TARGET_TYPE: &str = "command.target.type";
    pub(crate) const TARGET_ID: &str = "command.target.id";
    pub(crate) const ACTION_ARGS: &str = "command.action.args";
    pub(crate) const ACTION_NAME: &str = "command.action.name";
    pub(crate) const STATUS: &str = "command.status";
    pub(crate) const REQUEST_ID: &str = "command.request_id";
    pub(crate) const ORDER_ID: &str = "command.order_id";
    pub(crate) const NOT_BEFORE: &str = "command.not_before";
    pub(crate) const REDELIVER_AT: &str = "command.redeliver_at";
    pub(crate) const RESULT_DEADLINE: &str = "command.result_deadline";
    pub(crate) const FINISHED_AT: &str = "command.finished_at";
    pub(crate) const RESULT_CODE: &str = "command.result.code";
    pub(crate) const RESULT_MESSAGE: &str = "command.result.message";
    /// Rate control: an order's position in its request, and whether it is held back.
    pub(crate) const POSITION: &str = "command.position";
    pub(crate) const HELD: &str = "command.held";
    /// The fields of a request record (the requests index).
    pub(crate) const RECORD_ID: &str = "request_id";
    pub(crate) const RECORD_CREATED: &str = "created_at";
    pub(crate) const RECORD_SOURCE: &str = "source";
    pub(crate) const RECORD_USER: &str = "user";
    pub(crate) const RECORD_TARGET_TYPE: &str = "target.type";
    pub(crate) const RECORD_TARGET_ID: &str = "target.id";
    pub(crate) const RECORD_ACTION: &str = "action.name";
    pub(crate) const RECORD_STATE: &str = "state";
    pub(crate) const RECORD_FINISHED: &str = "finished_at";
    pub(crate) const RECORD_REVISION: &str = "revision";
    /// Present once a record is settled (its frozen counts).
    pub(crate) const RECORD_COUNTS: &str = "counts";
    /// The hash of an agent's key, outside Wazuh's `agent` object.
    pub(crate) const KEY_HASH: &str = "command_manager.key_hash";
}

/// The value at a dotted `path` of a document's `_source` (`Null` when absent).
pub(crate) fn value_at<'a>(source: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(source, |node, part| &node[part])
}

/// The partial document holding `value` at a dotted `path` and nothing else.
pub(crate) fn document_with(path: &str, value: Value) -> Value {
    path.rsplit('.')
        .fold(value, |inner, part| json!({part: inner}))
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

/// Puts the requests template (creating or updating it) and creates the requests index when
/// missing, or adds our fields to its mapping; returns how many of both it created.
async fn ensure_requests(http: &Http, s: &OpenSearchSettings) -> Result<usize, StoreError> {
    let mut created = 0;
    let path = format!("/_index_template/{}", s.requests_index);
    if !exists(http, &path).await? {
        created += 1;
    }
    http.ok(Method::Put, &path, &[], Some(requests_template(s)))
        .await
        .map_err(|e| match e {
            OsError::Status {
                status: 400,
                reason,
                ..
            } => StoreError::Corrupt(format!(
                "cannot put index template {}: {reason}",
                s.requests_index
            )),
            other => other.into(),
        })?;
    if create_index(http, &s.requests_index, &json!({})).await? {
        created += 1;
    } else {
        extend_mapping(http, &s.requests_index, request_properties(), &[]).await?;
    }
    Ok(created)
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

    let mut order_agent = Fields::AGENT_ID.to_owned();
    for index in [&s.orders_index, &s.archive_index] {
        // The template gives a new index its settings and mappings.
        if create_index(http, index, &json!({})).await? {
            created += 1;
        } else {
            // An existing index keeps the `args` mapping it has (OpenSearch cannot turn indexing
            // of an object off in place): orders its mapping cannot take get a 400 naming the
            // field, and the README says how to reindex into a new index.
            let mut properties = order_properties();
            remove_path(&mut properties, Fields::ACTION_ARGS);
            let fields = extend_mapping(http, index, properties, &[Fields::AGENT_ID]).await?;
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
        (Fields::AGENT_ID.to_owned(), Fields::AGENT_GROUPS.to_owned())
    } else {
        let fields = extend_mapping(
            http,
            &s.agents_index,
            agent_properties(),
            &[Fields::AGENT_ID, Fields::AGENT_GROUPS],
        )
        .await?;
        (fields[0].clone(), fields[1].clone())
    };
    let args_indexed = {
        let answer = http
            .ok(
                Method::Get,
                &format!("/{}/_mapping", s.orders_index),
                &[],
                None,
            )
            .await?;
        let mapping = answer
            .as_object()
            .and_then(|m| m.values().next())
            .map(|v| v["mappings"].clone())
            .unwrap_or(Value::Null);
        let args = Fields::ACTION_ARGS
            .split('.')
            .fold(&mapping, |node, part| &node["properties"][part]);
        args["enabled"] != json!(false)
    };
    created += ensure_requests(http, s).await?;
    let servers_body = json!({
        "settings": {"index": {"number_of_shards": 1}},
        "mappings": {"dynamic": "strict", "properties": {
            "name": keyword(),
            "key_hash": {"type": "keyword", "index": false}
        }}
    });
    if create_index(http, &s.servers_index, &servers_body).await? {
        created += 1;
    }
    Ok(Ensured {
        created,
        fields: Fields {
            order_agent,
            agent_id,
            agent_groups,
            args_indexed,
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

    /// The mapping of `path` in a `properties` tree.
    fn mapping_of<'a>(properties: &'a Value, path: &str) -> &'a Value {
        let (parents, name) = path.rsplit_once('.').unwrap_or(("", path));
        let parent = parents
            .split('.')
            .filter(|p| !p.is_empty())
            .fold(properties, |node, part| &node[part]["properties"]);
        &parent[name]
    }

    #[test]
    fn every_order_field_the_adapter_queries_is_mapped_with_its_type() {
        let props = order_properties();
        for (path, kind) in [
            (Fields::CREATED, "date"),
            (Fields::DELIVERY_DEADLINE, "date"),
            (Fields::AGENT_ID, "keyword"),
            (Fields::AGENT_GROUPS, "keyword"),
            (Fields::SOURCE, "keyword"),
            (Fields::TARGET_TYPE, "keyword"),
            (Fields::TARGET_ID, "keyword"),
            (Fields::ACTION_NAME, "keyword"),
            (Fields::STATUS, "keyword"),
            (Fields::REQUEST_ID, "keyword"),
            (Fields::ORDER_ID, "keyword"),
            (Fields::NOT_BEFORE, "date"),
            (Fields::REDELIVER_AT, "date"),
            (Fields::RESULT_DEADLINE, "date"),
            (Fields::FINISHED_AT, "date"),
            (Fields::POSITION, "long"),
            (Fields::HELD, "boolean"),
        ] {
            assert_eq!(mapping_of(&props, path)["type"], kind, "{path}");
        }
        let args = &props["command"]["properties"]["action"]["properties"]["args"];
        assert_eq!(args["type"], "object");
        assert_eq!(
            args["enabled"], false,
            "stored, not indexed: arrays fit too"
        );
        let records = request_properties();
        for (path, kind) in [
            (Fields::RECORD_ID, "keyword"),
            (Fields::RECORD_CREATED, "date"),
            (Fields::RECORD_SOURCE, "keyword"),
            (Fields::RECORD_USER, "keyword"),
            (Fields::RECORD_TARGET_TYPE, "keyword"),
            (Fields::RECORD_TARGET_ID, "keyword"),
            (Fields::RECORD_ACTION, "keyword"),
            (Fields::RECORD_STATE, "keyword"),
            (Fields::RECORD_FINISHED, "date"),
            (Fields::RECORD_REVISION, "long"),
        ] {
            assert_eq!(mapping_of(&records, path)["type"], kind, "{path}");
        }
        assert!(records[Fields::RECORD_COUNTS]["properties"].is_object());
        let agents = agent_properties();
        assert_eq!(mapping_of(&agents, Fields::AGENT_ID)["type"], "keyword");
        assert_eq!(mapping_of(&agents, Fields::KEY_HASH)["index"], false);
    }

    #[test]
    fn a_dotted_path_reads_and_writes_the_nested_document() {
        let doc = document_with(Fields::KEY_HASH, json!("h"));
        assert_eq!(doc, json!({"command_manager": {"key_hash": "h"}}));
        assert_eq!(value_at(&doc, Fields::KEY_HASH), "h");
        assert!(value_at(&doc, Fields::AGENT_ID).is_null());
    }

    #[test]
    fn an_existing_field_is_left_out_of_the_mapping_update() {
        let mut props = order_properties();
        remove_path(&mut props, Fields::AGENT_ID);
        assert!(props["agent"]["properties"].get("id").is_none());
        assert_eq!(props["agent"]["properties"]["groups"], keyword());
    }

    #[test]
    fn the_requests_template_wins_over_the_orders_template_that_covers_it() {
        let s = OpenSearchSettings::default();
        assert!(s.requests_index.starts_with(&s.orders_index));
        let requests = requests_template(&s);
        assert_eq!(requests["index_patterns"], json!([s.requests_index]));
        assert!(requests["priority"].as_u64() > orders_template(&s)["priority"].as_u64());
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
