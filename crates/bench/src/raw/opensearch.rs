//! OpenSearch: the service's orders index, through the `opensearch` client.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use opensearch::OpenSearch;
use opensearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use opensearch::http::transport::Transport;
use opensearch::http::{Method, StatusCode};
use serde_json::{Value, json};

use super::{Timed, expired_result, format_millis};

/// Documents per `_bulk` request.
const CHUNK: usize = 5000;
/// `scroll_size` of the by-query requests: the most one batch may hold (the index's
/// `max_result_window`). Besides being the fastest, fewer batches keep the answer's headers few:
/// OpenSearch adds a `TASK_RESOURCE_USAGE` header per batch (opensearch-project/OpenSearch#18245)
/// and the `opensearch` crate's client refuses an answer with over 100 header lines.
const SCROLL_SIZE: &str = "10000";
/// Longest one request may take (bulk requests of thousands of documents on a busy node).
const TIMEOUT: Duration = Duration::from_secs(600);

/// A client of the node, and the orders index.
#[derive(Debug)]
pub(crate) struct OpenSearchRaw {
    client: OpenSearch,
    index: String,
}

impl OpenSearchRaw {
    pub(crate) fn connect(url: &str, index: &str) -> Result<Self> {
        let transport = Transport::single_node(url).context("OpenSearch URL")?;
        Ok(Self {
            client: OpenSearch::new(transport),
            index: index.to_owned(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<String>,
        content_type: &'static str,
    ) -> Result<Value> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        let resp = self
            .client
            .send(method, path, headers, Some(query), body, Some(TIMEOUT))
            .await
            .with_context(|| format!("OpenSearch {path}"))?;
        let status = resp.status_code();
        let text = resp.text().await?;
        if status != StatusCode::OK && status != StatusCode::CREATED {
            bail!(
                "OpenSearch {path}: HTTP {status}: {}",
                &text[..text.len().min(500)]
            );
        }
        Ok(serde_json::from_str(&text)?)
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Value> {
        self.call(
            method,
            path,
            query,
            body.map(|b| b.to_string()),
            "application/json",
        )
        .await
    }

    pub(crate) async fn version(&self) -> Result<String> {
        let info = self.json(Method::Get, "/", &[], None).await?;
        Ok(format!(
            "OpenSearch {}",
            info["version"]["number"].as_str().unwrap_or("?")
        ))
    }

    /// `_bulk` `create` requests of [`CHUNK`] documents, the order id as `_id`, one after the
    /// other; no refresh (as the service writes).
    pub(crate) async fn write(&self, docs: &[Value]) -> Result<Timed> {
        let mut bodies = Vec::new();
        for chunk in docs.chunks(CHUNK) {
            let mut body = String::with_capacity(chunk.len() * 1000);
            for doc in chunk {
                let id = doc["command"]["order_id"]
                    .as_str()
                    .context("a document without command.order_id")?;
                body.push_str(&json!({"create": {"_index": self.index, "_id": id}}).to_string());
                body.push('\n');
                body.push_str(&doc.to_string());
                body.push('\n');
            }
            bodies.push(body);
        }
        let started = Instant::now();
        let mut written = 0;
        for body in bodies {
            let resp = self
                .call(
                    Method::Post,
                    "/_bulk",
                    &[],
                    Some(body),
                    "application/x-ndjson",
                )
                .await?;
            let items = resp["items"].as_array().context("_bulk: no items")?;
            written += items
                .iter()
                .filter(|i| i["create"]["status"].as_u64() == Some(201))
                .count() as u64;
        }
        Ok(Timed {
            elapsed: started.elapsed(),
            method: format!("`_bulk` `create` requests of {CHUNK} documents, one after the other"),
            rows: written,
        })
    }

    async fn refresh(&self) -> Result<()> {
        self.json(
            Method::Post,
            &format!("/{}/_refresh", self.index),
            &[],
            None,
        )
        .await
        .map(drop)
    }

    pub(crate) async fn count_request(&self, request_id: &str) -> Result<u64> {
        self.refresh().await?;
        let resp = self
            .json(
                Method::Post,
                &format!("/{}/_count", self.index),
                &[],
                Some(json!({"query": {"term": {"command.request_id": request_id}}})),
            )
            .await?;
        resp["count"].as_u64().context("_count: no count")
    }

    /// Untimed: the request's orders back to pending, and a refresh. Timed: one
    /// `_update_by_query` of every overdue pending order.
    pub(crate) async fn expire(&self, request_id: &str, now: DateTime<Utc>) -> Result<Timed> {
        self.refresh().await?;
        self.json(
            Method::Post,
            &format!("/{}/_update_by_query", self.index),
            &[
                ("conflicts", "proceed"),
                ("refresh", "true"),
                ("scroll_size", SCROLL_SIZE),
            ],
            Some(json!({
                "query": {"term": {"command.request_id": request_id}},
                "script": {"lang": "painless", "source":
                    "ctx._source.command.status = 'pending'; \
                     ctx._source.command.remove('result'); \
                     ctx._source.command.remove('finished_at');"},
            })),
        )
        .await?;
        let started = Instant::now();
        let resp = self
            .json(
                Method::Post,
                &format!("/{}/_update_by_query", self.index),
                &[("conflicts", "proceed"), ("scroll_size", SCROLL_SIZE)],
                Some(json!({
                    "query": {"bool": {"filter": [
                        {"term": {"command.status": "pending"}},
                        {"range": {"delivery_timestamp": {"lte": now.timestamp_millis()}}},
                    ]}},
                    "script": {"lang": "painless",
                        "source": "ctx._source.command.status = 'failure'; \
                                   ctx._source.command.result = params.result; \
                                   ctx._source.command.finished_at = params.finished;",
                        "params": {"result": expired_result(), "finished": format_millis(now)}},
                })),
            )
            .await?;
        Ok(Timed {
            elapsed: started.elapsed(),
            method: "one `_update_by_query` (painless script, batches of 10,000) of every overdue \
                     pending order"
                .to_owned(),
            rows: resp["updated"].as_u64().unwrap_or(0),
        })
    }
}
