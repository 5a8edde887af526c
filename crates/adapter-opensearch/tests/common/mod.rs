//! What the OpenSearch tests share: a unique index prefix per test on the node named by
//! `OPENSEARCH_URL`, removed again when the test's backend is dropped.

// Each test binary uses part of this module.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use cm_adapter_opensearch::{OpenSearchBackend, OpenSearchSettings};
use cm_ports::testkit::Backend;
use opensearch::OpenSearch;
use opensearch::http::Method;
use opensearch::http::headers::HeaderMap;
use opensearch::http::transport::Transport;
use serde_json::Value;
use uuid::Uuid;

/// The node's URL; fails the test loudly when none is configured.
pub fn node_url() -> String {
    std::env::var("OPENSEARCH_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "the OpenSearch tests need a node: run them with `cargo xtask test`, or start \
                 one with `cargo xtask opensearch` and set OPENSEARCH_URL to the URL it prints"
            )
        })
}

/// Settings of indices made for this test only: `t<uuid>-wazuh-commands`, …
pub fn fresh_settings() -> OpenSearchSettings {
    let prefix = format!("t{}", Uuid::now_v7().simple());
    OpenSearchSettings {
        url: node_url(),
        orders_index: format!("{prefix}-wazuh-commands"),
        agents_index: format!("{prefix}-wazuh-agents"),
        archive_index: format!("{prefix}-wazuh-commands-archive"),
        servers_index: format!("{prefix}-wazuh-servers"),
        requests_index: format!("{prefix}-wazuh-commands-requests"),
        request_timeout_secs: 60,
        ..OpenSearchSettings::default()
    }
}

/// Plain requests to the node, for looking at what the adapter wrote.
#[derive(Clone)]
pub struct Raw {
    client: OpenSearch,
}

impl Raw {
    pub fn new() -> Self {
        // ring, the workspace's one TLS crypto provider: a client panics without one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let transport = Transport::single_node(&node_url()).expect("a URL");
        Self {
            client: OpenSearch::new(transport),
        }
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(Value::to_string);
        let response = self
            .client
            .send::<String, ()>(method, path, HeaderMap::new(), None, body, None)
            .await
            .expect("request to the node");
        let status = response.status_code().as_u16();
        let text = response.text().await.expect("answer");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.send(Method::Get, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }
}

/// Deletes a test's indices and template when dropped (from a thread of its own: `Drop` runs
/// inside the test's runtime, which must not be blocked on).
#[derive(Debug)]
pub struct Cleanup {
    settings: OpenSearchSettings,
}

impl Cleanup {
    pub fn new(settings: &OpenSearchSettings) -> Self {
        Self {
            settings: settings.clone(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let s = self.settings.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let raw = Raw::new();
                let indices = format!(
                    "/{},{},{},{},{}?ignore_unavailable=true",
                    s.orders_index,
                    s.agents_index,
                    s.archive_index,
                    s.servers_index,
                    s.requests_index
                );
                raw.send(Method::Delete, &indices, None).await;
                for template in [&s.orders_index, &s.requests_index] {
                    raw.send(
                        Method::Delete,
                        &format!("/_index_template/{template}"),
                        None,
                    )
                    .await;
                }
            });
        });
        let _ = done.join();
    }
}

/// A backend on fresh indices, opened.
pub async fn open_fresh() -> (OpenSearchBackend, OpenSearchSettings, Arc<Cleanup>) {
    let settings = fresh_settings();
    let cleanup = Arc::new(Cleanup::new(&settings));
    let backend = OpenSearchBackend::open(&settings).await.expect("open");
    (backend, settings, cleanup)
}

/// The ports of a backend on fresh indices, with its notifier; the indices go with the last
/// clone.
pub async fn backend() -> Backend {
    let (b, _, cleanup) = open_fresh().await;
    Backend {
        orders: Arc::new(b.clone()),
        agents: Arc::new(b.clone()),
        components: Arc::new(b.clone()),
        requests: Arc::new(b.clone()),
        notifier: Arc::new(b.notifier()),
        guard: Some(cleanup),
    }
}
