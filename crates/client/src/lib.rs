//! `cm-client`: an async client of the command manager's HTTP API (docs/api.md).
//!
//! One [`Client`] holds a base URL, one credential ([`Credentials`]) and a connection pool.
//! Every route has a method; answers are typed with the domain's shapes where the API renders
//! them ([`cm_domain::Order`], [`cm_domain::Agent`]) and with the structs of [`model`] where the
//! API's JSON is its own (a request with its counts, a result group, a submit's answer).
//!
//! Errors: an answer other than 2xx becomes [`Error::Api`] with the status and the API's error
//! body (`code`, `message`, `field`); a transport failure becomes [`Error::Transport`].
//!
//! Retries ([`RetryPolicy`]): a 503, or a connection that could not be made or broke, is retried
//! with exponential backoff and jitter, waiting at least the answer's `Retry-After` — but only
//! for requests that are safe to repeat: reads, polls, claims, result reports (repeating the
//! report an order already carries changes nothing) and submits that carry an
//! `Idempotency-Key`. Everything else fails at once, so a change is never made twice.
//!
//! TLS uses rustls with the ring provider (installed by [`install_crypto`], which
//! [`Client::new`] calls); a private CA is given with [`ClientBuilder::ca_pem`].

pub mod model;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cm_domain::{Agent, Order};
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub use crate::model::*;

/// Makes ring the process's TLS crypto provider, unless one is installed already.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Who the client is.
#[derive(Clone)]
pub enum Credentials {
    /// No `Authorization` header (a service with `auth.enabled = false`).
    None,
    /// A manager's or a relay's token: `Authorization: Bearer <token>`.
    Bearer(String),
    /// An agent's or a component's id and key: `Authorization: Basic base64(id:key)`.
    Basic { id: String, key: String },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are never printed.
        match self {
            Self::None => f.write_str("None"),
            Self::Bearer(_) => f.write_str("Bearer(…)"),
            Self::Basic { id, .. } => write!(f, "Basic({id}:…)"),
        }
    }
}

impl Credentials {
    fn header(&self) -> Option<HeaderValue> {
        let text = match self {
            Self::None => return None,
            Self::Bearer(t) => format!("Bearer {t}"),
            Self::Basic { id, key } => format!("Basic {}", STANDARD.encode(format!("{id}:{key}"))),
        };
        let mut v = HeaderValue::from_str(&text).ok()?;
        v.set_sensitive(true);
        Some(v)
    }
}

/// The error body the API answers with every failure.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct ApiErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service answered with an error status.
    #[error("{status}: {}", .body.message)]
    Api {
        status: StatusCode,
        body: ApiErrorBody,
        /// The answer's `Retry-After`, in seconds.
        retry_after: Option<u64>,
    },
    /// No answer: the connection failed, timed out or broke.
    #[error("cannot reach the service: {0}")]
    Transport(String),
    /// An answer that is not what the API promises.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// The client could not be built (a bad CA certificate, a bad URL).
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// The HTTP status, for an [`Error::Api`].
    #[must_use]
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's error code (`not_found`, `invalid_field`, …), for an [`Error::Api`].
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { body, .. } => Some(&body.code),
            _ => None,
        }
    }

    /// The field the API named, for an [`Error::Api`] that named one.
    #[must_use]
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Api { body, .. } => body.field.as_deref(),
            _ => None,
        }
    }

    fn retryable(&self) -> bool {
        match self {
            Self::Api { status, .. } => *status == StatusCode::SERVICE_UNAVAILABLE,
            Self::Transport(_) => true,
            Self::Decode(_) | Self::Config(_) => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How failed calls that are safe to repeat are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 = no retry.
    pub attempts: u32,
    /// The wait before the first retry; doubled for each further one.
    pub base: Duration,
    /// The longest wait between two attempts (a longer `Retry-After` is honoured still).
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            base: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    #[must_use]
    pub const fn none() -> Self {
        Self {
            attempts: 1,
            base: Duration::ZERO,
            max: Duration::ZERO,
        }
    }

    /// The wait before retry number `retry` (0-based): `base · 2^retry`, capped at `max`, with
    /// full jitter in its upper half, and never less than the server's `Retry-After`.
    #[must_use]
    pub fn delay(&self, retry: u32, retry_after: Option<u64>) -> Duration {
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(retry.min(20)))
            .min(self.max);
        let half = exp / 2;
        let jitter = half.mul_f64(jitter_fraction());
        let backoff = half + jitter;
        backoff.max(Duration::from_secs(retry_after.unwrap_or(0)))
    }
}

/// A number in [0, 1) that differs between calls and processes (no randomness crate needed
/// for spreading retries).
fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    #[allow(clippy::cast_precision_loss)]
    let f = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    f
}

/// Builds a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    base: String,
    credentials: Credentials,
    retry: RetryPolicy,
    timeout: Duration,
    ca_pem: Option<Vec<u8>>,
}

impl ClientBuilder {
    #[must_use]
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    #[must_use]
    pub const fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The longest a call may take, a long-poll's wait excluded (it is added to it).
    #[must_use]
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Trusts the CA certificates of this PEM besides the system's roots.
    #[must_use]
    pub fn ca_pem(mut self, pem: Vec<u8>) -> Self {
        self.ca_pem = Some(pem);
        self
    }

    /// # Errors
    /// [`Error::Config`] when the URL is not http(s) or the CA is not PEM certificates.
    pub fn build(self) -> Result<Client> {
        install_crypto();
        let base = self.base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config(format!(
                "the service URL must start with http:// or https://: {base}"
            )));
        }
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10));
        if let Some(pem) = &self.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Config(format!("the CA file is not PEM: {e}")))?;
            if certs.is_empty() {
                return Err(Error::Config("the CA file holds no certificate".into()));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b
            .build()
            .map_err(|e| Error::Config(format!("cannot build an HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            auth: self.credentials.header(),
            retry: self.retry,
            timeout: self.timeout,
        })
    }
}

/// A client of one service.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    auth: Option<HeaderValue>,
    retry: RetryPolicy,
    timeout: Duration,
}

/// Whether a call may be sent again after a 503 or a broken connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Safe {
    Yes,
    No,
}

/// One call: method, path, query, body, headers.
struct Call<'a> {
    method: Method,
    path: String,
    query: Vec<(&'a str, String)>,
    body: Option<Value>,
    idempotency_key: Option<&'a str>,
    safe: Safe,
    extra_timeout: Duration,
}

impl<'a> Call<'a> {
    fn new(method: Method, path: impl Into<String>) -> Self {
        let safe = if method == Method::GET {
            Safe::Yes
        } else {
            Safe::No
        };
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            idempotency_key: None,
            safe,
            extra_timeout: Duration::ZERO,
        }
    }

    fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }

    fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    fn safe(mut self) -> Self {
        self.safe = Safe::Yes;
        self
    }

    fn param(mut self, name: &'a str, value: Option<impl ToString>) -> Self {
        if let Some(v) = value {
            self.query.push((name, v.to_string()));
        }
        self
    }
}

/// Percent-encodes one path segment (ids may hold `:` and `@`).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A builder for a client of the service at `base` (`http://127.0.0.1:8080`).
    #[must_use]
    pub fn builder(base: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base: base.into(),
            credentials: Credentials::None,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(60),
            ca_pem: None,
        }
    }

    /// A client with the default retries and timeouts.
    ///
    /// # Errors
    /// As [`ClientBuilder::build`].
    pub fn new(base: impl Into<String>, credentials: Credentials) -> Result<Self> {
        Self::builder(base).credentials(credentials).build()
    }

    /// The service's base URL.
    #[must_use]
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send_once(&self, call: &Call<'_>) -> Result<reqwest::Response> {
        let url = format!("{}{}", self.base, call.path);
        let mut req = self
            .http
            .request(call.method.clone(), url)
            .timeout(self.timeout + call.extra_timeout);
        if !call.query.is_empty() {
            req = req.query(&call.query);
        }
        if let Some(a) = &self.auth {
            req = req.header(AUTHORIZATION, a.clone());
        }
        if let Some(k) = call.idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = &call.body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| Error::Transport(chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| serde_json::from_value::<ApiErrorBody>(v.get("error")?.clone()).ok())
            .unwrap_or_else(|| ApiErrorBody {
                code: "http".into(),
                message: format!(
                    "HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                ),
                field: None,
            });
        Err(Error::Api {
            status,
            body,
            retry_after,
        })
    }

    async fn send(&self, call: &Call<'_>) -> Result<reqwest::Response> {
        let attempts = if call.safe == Safe::Yes {
            self.retry.attempts.max(1)
        } else {
            1
        };
        let mut retry = 0;
        loop {
            match self.send_once(call).await {
                Err(e) if e.retryable() && retry + 1 < attempts => {
                    let after = match &e {
                        Error::Api { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    tokio::time::sleep(self.retry.delay(retry, after)).await;
                    retry += 1;
                }
                other => return other,
            }
        }
    }

    async fn json<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T> {
        let resp = self.send(&call).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Error::Transport(chain(&e)))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(format!("{}: {e}", call.path)))
    }

    async fn empty(&self, call: Call<'_>) -> Result<()> {
        self.send(&call).await.map(drop)
    }

    // ---- operations -------------------------------------------------------------------------

    /// `GET /healthz`.
    ///
    /// # Errors
    /// [`Error`] as for every call.
    pub async fn healthz(&self) -> Result<Value> {
        self.json(Call::get("/healthz")).await
    }

    /// `GET /readyz`: `Ok` when storage answers.
    ///
    /// # Errors
    /// [`Error::Api`] 503 when it does not.
    pub async fn readyz(&self) -> Result<Value> {
        self.json(Call::get("/readyz")).await
    }

    /// `GET /openapi.json`.
    ///
    /// # Errors
    /// [`Error`] as for every call.
    pub async fn openapi(&self) -> Result<Value> {
        self.json(Call::get("/openapi.json")).await
    }

    /// `GET /metrics`: the Prometheus text.
    ///
    /// # Errors
    /// [`Error`] as for every call.
    pub async fn metrics(&self) -> Result<String> {
        let resp = self.send(&Call::get("/metrics")).await?;
        resp.text().await.map_err(|e| Error::Transport(chain(&e)))
    }

    // ---- commands and requests --------------------------------------------------------------

    /// `POST /api/v1/commands`. Retried after a 503 or a broken connection only when
    /// `idempotency_key` is given (the service then never writes a request twice).
    ///
    /// # Errors
    /// [`Error::Api`] 400 naming the field, 422 (nothing to do), 503.
    pub async fn submit(
        &self,
        commands: &[NewCommand],
        idempotency_key: Option<&str>,
    ) -> Result<Submitted> {
        let mut call = Call::post("/api/v1/commands").body(json!({ "commands": commands }));
        call.idempotency_key = idempotency_key;
        if idempotency_key.is_some() {
            call = call.safe();
        }
        self.json(call).await
    }

    /// `POST /api/v1/commands?dry_run=true`: what a submit would do, nothing written.
    ///
    /// # Errors
    /// The errors the submit would answer.
    pub async fn dry_run(&self, commands: &[NewCommand]) -> Result<DryRun> {
        let call = Call::post("/api/v1/commands")
            .param("dry_run", Some("true"))
            .body(json!({ "commands": commands }))
            .safe();
        self.json(call).await
    }

    /// `POST /_plugins/_command_manager/commands`: the Wazuh plugin's route and answer.
    ///
    /// # Errors
    /// As [`Self::submit`].
    pub async fn submit_wazuh(
        &self,
        commands: &[NewCommand],
        idempotency_key: Option<&str>,
    ) -> Result<Value> {
        let mut call =
            Call::post("/_plugins/_command_manager/commands").body(json!({ "commands": commands }));
        call.idempotency_key = idempotency_key;
        if idempotency_key.is_some() {
            call = call.safe();
        }
        self.json(call).await
    }

    /// `GET /api/v1/requests`: one page, newest first.
    ///
    /// # Errors
    /// [`Error::Api`] 400 a filter out of its rule.
    pub async fn requests(&self, filter: &RequestFilter) -> Result<Page<RequestInfo>> {
        let call = Call::get("/api/v1/requests")
            .param("state", filter.state.as_deref())
            .param("action", filter.action.as_deref())
            .param("user", filter.user.as_deref())
            .param("source", filter.source.as_deref())
            .param("target_type", filter.target_type.as_deref())
            .param("target_id", filter.target_id.as_deref())
            .param("since", filter.since.as_deref())
            .param("until", filter.until.as_deref())
            .param("size", filter.size)
            .param("after", filter.after.as_deref());
        let p: RequestPage = self.json(call).await?;
        Ok(Page {
            items: p.requests,
            next: p.next,
        })
    }

    /// `GET /api/v1/requests/{id}`.
    ///
    /// # Errors
    /// [`Error::Api`] 404 unknown.
    pub async fn request(&self, id: &str) -> Result<RequestInfo> {
        self.json(Call::get(format!("/api/v1/requests/{}", seg(id))))
            .await
    }

    /// `GET /api/v1/requests/{id}/results`.
    ///
    /// # Errors
    /// [`Error::Api`] 404 unknown.
    pub async fn results(&self, id: &str) -> Result<Vec<ResultGroup>> {
        let r: Results = self
            .json(Call::get(format!("/api/v1/requests/{}/results", seg(id))))
            .await?;
        Ok(r.groups)
    }

    /// `GET /api/v1/requests/{id}/orders`: one page of its orders.
    ///
    /// # Errors
    /// [`Error::Api`] 404 unknown, 400 a parameter.
    pub async fn request_orders(
        &self,
        id: &str,
        status: Option<&str>,
        size: Option<u32>,
        after: Option<&str>,
    ) -> Result<Page<Order>> {
        let call = Call::get(format!("/api/v1/requests/{}/orders", seg(id)))
            .param("status", status)
            .param("size", size)
            .param("after", after);
        let p: OrderPage = self.json(call).await?;
        Ok(Page {
            items: p.orders,
            next: p.next,
        })
    }

    /// `POST /api/v1/requests/{id}/pause`. Retried (pausing twice is pausing).
    ///
    /// # Errors
    /// [`Error::Api`] 404, 409 finished or still being written.
    pub async fn pause(&self, id: &str) -> Result<RequestInfo> {
        self.json(Call::post(format!("/api/v1/requests/{}/pause", seg(id))).safe())
            .await
    }

    /// `POST /api/v1/requests/{id}/resume`. Retried (resuming twice is resuming).
    ///
    /// # Errors
    /// [`Error::Api`] 404, 409.
    pub async fn resume(&self, id: &str) -> Result<RequestInfo> {
        self.json(Call::post(format!("/api/v1/requests/{}/resume", seg(id))).safe())
            .await
    }

    /// `POST /api/v1/requests/{id}/cancel`: the counts after the change. Retried (the API
    /// says a cancel may be repeated).
    ///
    /// # Errors
    /// [`Error::Api`] 404, 409 still being written.
    pub async fn cancel_request(&self, id: &str) -> Result<Progress> {
        self.json(Call::post(format!("/api/v1/requests/{}/cancel", seg(id))).safe())
            .await
    }

    /// `POST /api/v1/requests/{id}/retry?status=…`: a new request re-running the targets whose
    /// order ended in `status` (`failure` when `None`). Never retried (it would run twice).
    ///
    /// # Errors
    /// [`Error::Api`] 404, 422 nothing to re-run.
    pub async fn retry_request(&self, id: &str, status: Option<&str>) -> Result<Submitted> {
        let call =
            Call::post(format!("/api/v1/requests/{}/retry", seg(id))).param("status", status);
        self.json(call).await
    }

    // ---- orders -----------------------------------------------------------------------------

    /// `GET /api/v1/orders`: one page, oldest first.
    ///
    /// # Errors
    /// [`Error::Api`] 400 a filter out of its rule.
    pub async fn orders(&self, filter: &OrderFilter) -> Result<Page<Order>> {
        let call = Call::get("/api/v1/orders")
            .param("status", filter.status.as_deref())
            .param("agent_id", filter.agent_id.as_deref())
            .param("target_type", filter.target_type.as_deref())
            .param("target_id", filter.target_id.as_deref())
            .param("request_id", filter.request_id.as_deref())
            .param("action", filter.action.as_deref())
            .param("since", filter.since.as_deref())
            .param("until", filter.until.as_deref())
            .param("size", filter.size)
            .param("after", filter.after.as_deref());
        let p: OrderPage = self.json(call).await?;
        Ok(Page {
            items: p.orders,
            next: p.next,
        })
    }

    /// `GET /api/v1/orders/{id}`.
    ///
    /// # Errors
    /// [`Error::Api`] 404.
    pub async fn order(&self, id: &str) -> Result<Order> {
        self.json(Call::get(format!("/api/v1/orders/{}", seg(id))))
            .await
    }

    /// `POST /api/v1/orders/{id}/cancel`. Not retried.
    ///
    /// # Errors
    /// [`Error::Api`] 404, 409 not pending.
    pub async fn cancel_order(&self, id: &str) -> Result<Order> {
        self.json(Call::post(format!("/api/v1/orders/{}/cancel", seg(id))))
            .await
    }

    // ---- agents -----------------------------------------------------------------------------

    /// `PUT /api/v1/agents/{id}`: registers or replaces its groups; `key` only for a new agent.
    /// Not retried: a key answered to a broken connection would be lost (a repeat is an
    /// update, answered without a key).
    ///
    /// # Errors
    /// [`Error::Api`] 400.
    pub async fn put_agent(&self, id: &str, groups: &[String]) -> Result<RegisteredAgent> {
        let call = Call::new(Method::PUT, format!("/api/v1/agents/{}", seg(id)))
            .body(json!({ "groups": groups }));
        self.json(call).await
    }

    /// `PUT /api/v1/agents`: registers up to 10,000 agents in one call; a key for each new one.
    /// Not retried (a key answered to a broken connection would be lost).
    ///
    /// # Errors
    /// [`Error::Api`] 400 naming the first bad item (`agents[17].id`); nothing written then.
    pub async fn put_agents(&self, agents: &[NewAgent]) -> Result<Vec<BulkRegistered>> {
        let call = Call::new(Method::PUT, "/api/v1/agents").body(json!({ "agents": agents }));
        let r: BulkAgents = self.json(call).await?;
        Ok(r.agents)
    }

    /// `POST /api/v1/agents/{id}/key`: a new key; the old one stops working.
    ///
    /// # Errors
    /// [`Error::Api`] 404.
    pub async fn rotate_agent_key(&self, id: &str) -> Result<IssuedKey> {
        self.json(Call::post(format!("/api/v1/agents/{}/key", seg(id))))
            .await
    }

    /// `GET /api/v1/agents/{id}`.
    ///
    /// # Errors
    /// [`Error::Api`] 404.
    pub async fn agent(&self, id: &str) -> Result<Agent> {
        self.json(Call::get(format!("/api/v1/agents/{}", seg(id))))
            .await
    }

    /// `GET /api/v1/agents`: one page by id.
    ///
    /// # Errors
    /// [`Error::Api`] 400.
    pub async fn agents(
        &self,
        group: Option<&str>,
        size: Option<u32>,
        after: Option<&str>,
    ) -> Result<Page<Agent>> {
        let call = Call::get("/api/v1/agents")
            .param("group", group)
            .param("size", size)
            .param("after", after);
        let p: AgentPage = self.json(call).await?;
        Ok(Page {
            items: p.agents,
            next: p.next,
        })
    }

    /// `DELETE /api/v1/agents/{id}`.
    ///
    /// # Errors
    /// [`Error::Api`] 404.
    pub async fn delete_agent(&self, id: &str) -> Result<()> {
        self.empty(Call::new(
            Method::DELETE,
            format!("/api/v1/agents/{}", seg(id)),
        ))
        .await
    }

    /// `POST /api/v1/agents/{id}/poll`: waits up to `wait` seconds for orders. Retried.
    ///
    /// # Errors
    /// [`Error::Api`] 401/403, 400 a bound, 503.
    pub async fn poll(&self, agent: &str, wait: u64, limit: u32) -> Result<Vec<Order>> {
        let mut call = Call::post(format!("/api/v1/agents/{}/poll", seg(agent)))
            .param("wait", Some(wait))
            .param("limit", Some(limit))
            .safe();
        call.extra_timeout = Duration::from_secs(wait);
        let p: Orders = self.json(call).await?;
        Ok(p.orders)
    }

    /// `POST /api/v1/orders/{id}/result`. Retried: repeating a report changes nothing.
    ///
    /// # Errors
    /// [`Error::Api`] 403, 404, 409.
    pub async fn report(&self, order_id: &str, report: &Report) -> Result<Order> {
        let call = Call::post(format!("/api/v1/orders/{}/result", seg(order_id)))
            .body(serde_json::to_value(report).map_err(|e| Error::Decode(e.to_string()))?)
            .safe();
        self.json(call).await
    }

    // ---- server components and relays -------------------------------------------------------

    /// `PUT /api/v1/servers/{name}`: `key` only when it was not registered.
    ///
    /// # Errors
    /// [`Error::Api`] 400.
    pub async fn put_server(&self, name: &str) -> Result<RegisteredServer> {
        self.json(Call::new(
            Method::PUT,
            format!("/api/v1/servers/{}", seg(name)),
        ))
        .await
    }

    /// `POST /api/v1/servers/{name}/key`.
    ///
    /// # Errors
    /// [`Error::Api`] 404.
    pub async fn rotate_server_key(&self, name: &str) -> Result<RegisteredServer> {
        self.json(Call::post(format!("/api/v1/servers/{}/key", seg(name))))
            .await
    }

    /// `GET /api/v1/servers`: one page of names.
    ///
    /// # Errors
    /// [`Error::Api`] 400.
    pub async fn servers(&self, size: Option<u32>, after: Option<&str>) -> Result<Page<String>> {
        let call = Call::get("/api/v1/servers")
            .param("size", size)
            .param("after", after);
        let p: ServerPage = self.json(call).await?;
        Ok(Page {
            items: p.servers,
            next: p.next,
        })
    }

    /// `DELETE /api/v1/servers/{name}`.
    ///
    /// # Errors
    /// [`Error::Api`] 404.
    pub async fn delete_server(&self, name: &str) -> Result<()> {
        self.empty(Call::new(
            Method::DELETE,
            format!("/api/v1/servers/{}", seg(name)),
        ))
        .await
    }

    /// `POST /api/v1/servers/{name}/poll`: a component's poll. Retried.
    ///
    /// # Errors
    /// As [`Self::poll`].
    pub async fn poll_server(&self, name: &str, wait: u64, limit: u32) -> Result<Vec<Order>> {
        let mut call = Call::post(format!("/api/v1/servers/{}/poll", seg(name)))
            .param("wait", Some(wait))
            .param("limit", Some(limit))
            .safe();
        call.extra_timeout = Duration::from_secs(wait);
        let p: Orders = self.json(call).await?;
        Ok(p.orders)
    }

    /// `POST /api/v1/relay/claim`. Retried.
    ///
    /// # Errors
    /// [`Error::Api`] 400, 403, 503.
    pub async fn relay_claim(&self, claim: &RelayClaim) -> Result<Vec<Order>> {
        let mut call = Call::post("/api/v1/relay/claim")
            .body(serde_json::to_value(claim).map_err(|e| Error::Decode(e.to_string()))?)
            .safe();
        call.extra_timeout = Duration::from_secs(claim.wait.unwrap_or(0));
        let p: Orders = self.json(call).await?;
        Ok(p.orders)
    }

    /// `POST /api/v1/results`: up to 1,000 reports, one outcome each. Retried.
    ///
    /// # Errors
    /// [`Error::Api`] 400, 503.
    pub async fn report_many(&self, results: &[BatchReport]) -> Result<Vec<BatchOutcome>> {
        let call = Call::post("/api/v1/results")
            .body(json!({ "results": results }))
            .safe();
        let r: BatchOutcomes = self.json(call).await?;
        Ok(r.results)
    }
}

/// The error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_honours_retry_after() {
        let p = RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let d0 = p.delay(0, None);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d3 = p.delay(3, None);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800));
            let d9 = p.delay(9, None);
            assert!(d9 <= Duration::from_secs(1));
            assert!(p.delay(0, Some(3)) >= Duration::from_secs(3));
        }
    }

    #[test]
    fn credentials_are_never_printed() {
        let c = Credentials::Basic {
            id: "a1".into(),
            key: "s3cret".into(),
        };
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!format!("{:?}", Credentials::Bearer("tok".into())).contains("tok"));
    }

    #[test]
    fn basic_credentials_encode_id_and_key() {
        let c = Credentials::Basic {
            id: "a:1".into(),
            key: "k".into(),
        };
        assert_eq!(
            c.header().unwrap().to_str().unwrap(),
            format!("Basic {}", STANDARD.encode("a:1:k"))
        );
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(seg("a:b@c.d_e-f"), "a%3Ab%40c.d_e-f");
    }
}
