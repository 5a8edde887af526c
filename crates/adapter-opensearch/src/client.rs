//! The HTTP conversation with OpenSearch: JSON in, JSON out, over the `opensearch` crate's
//! transport (connection pool, TLS, basic authentication, timeouts).

use std::sync::Arc;
use std::time::Duration;

use cm_ports::StoreError;
use opensearch::OpenSearch;
use opensearch::auth::Credentials;
use opensearch::cert::CertificateValidation;
use opensearch::http::Method;
use opensearch::http::Url;
use opensearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use opensearch::http::request::Body;
use opensearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::error::OsError;
use crate::settings::{OpenSearchSettings, redact_url};

/// One answer: its status and its JSON body (`Null` when empty).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

impl Answer {
    pub(crate) const fn is_success(&self) -> bool {
        self.status >= 200 && self.status < 300
    }

    /// The body of a 2xx answer; any other status becomes an [`OsError`].
    pub(crate) fn into_ok(self) -> Result<Value, OsError> {
        if self.is_success() {
            Ok(self.body)
        } else {
            Err(OsError::from_answer(self.status, &self.body))
        }
    }
}

/// A client of one OpenSearch cluster. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Http {
    client: OpenSearch,
    /// One permit per request in flight: the connection pool never grows past it.
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http").finish_non_exhaustive()
    }
}

impl Http {
    /// A client for `settings.url` (nothing is sent yet).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] naming the setting when the URL or TLS setup is unusable.
    pub(crate) fn new(settings: &OpenSearchSettings) -> Result<Self, StoreError> {
        let url = Url::parse(&settings.url).map_err(|e| {
            StoreError::Unavailable(format!(
                "storage.opensearch.url {} is not a URL: {e}",
                redact_url(&settings.url)
            ))
        })?;
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(Duration::from_secs(settings.request_timeout_secs.max(1)))
            // The cluster sits next to the service; an HTTP(S)_PROXY meant for the internet
            // must not capture it.
            .disable_proxy();
        if let Some(user) = &settings.username {
            builder = builder.auth(Credentials::Basic(
                user.clone(),
                settings.password.clone().unwrap_or_default(),
            ));
        }
        if settings.insecure_tls {
            builder = builder.cert_validation(CertificateValidation::None);
        }
        let transport = builder.build().map_err(|e| {
            StoreError::Unavailable(format!("cannot set up the opensearch client: {e}"))
        })?;
        Ok(Self {
            client: OpenSearch::new(transport),
            in_flight: Arc::new(Semaphore::new(settings.max_connections.max(1) as usize)),
        })
    }

    /// Sends one request and reads its answer, whatever its status. The body is taken by
    /// value and turned into text at once: a query's `Value` tree is many times the size of
    /// its text, and a request may wait a while for a connection (thousands of polls claiming
    /// at once, `max_connections` at a time).
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Answer, OsError> {
        let body = body.map(|b| b.to_string());
        self.send(method, path, query, body, "application/json")
            .await
    }

    /// A request whose answer must be 2xx.
    pub(crate) async fn ok(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Value, OsError> {
        self.call(method, path, query, body).await?.into_ok()
    }

    /// Sends one request and returns its status and raw body, whatever its status.
    pub(crate) async fn send_raw<B: Body>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<B>,
        content_type: &'static str,
    ) -> Result<(u16, Vec<u8>), OsError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        let query = (!query.is_empty()).then_some(query);
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| OsError::Transport("the client is closed".to_owned()))?;
        let response = self
            .client
            .send(method, path, headers, query, body, None)
            .await
            .map_err(|e| OsError::Transport(e.to_string()))?;
        let status = response.status_code().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| OsError::Transport(e.to_string()))?;
        Ok((status, bytes.into()))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<String>,
        content_type: &'static str,
    ) -> Result<Answer, OsError> {
        let (status, bytes) = self
            .send_raw(method, path, query, body, content_type)
            .await?;
        let body = if bytes.trim_ascii().is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                OsError::Decode(format!(
                    "{method:?} {path} answered {status} with non-JSON: {e}"
                ))
            })?
        };
        Ok(Answer { status, body })
    }
}
