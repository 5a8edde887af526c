//! The HTTP conversation with OpenSearch: JSON in, JSON out, over a `reqwest` client (connection
//! pool, TLS, basic authentication, timeouts). Not the `opensearch` crate's transport: its TLS
//! options exist only with its `rustls-tls` feature, which compiles a second TLS crypto provider
//! (aws-lc-rs) beside the ring the rest of the service uses.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use cm_ports::StoreError;
use opensearch::http::Method;
use reqwest::Url;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::error::OsError;
use crate::metric;
use crate::settings::{OpenSearchSettings, redact_url};

/// Header lines an answer may carry. OpenSearch 2.x (with `task_resource_tracking.enabled`, its
/// default) adds a `TASK_RESOURCE_USAGE` header, about 230 bytes, for every scroll batch of a
/// `_update_by_query` or `_delete_by_query` (opensearch-project/OpenSearch#18245). hyper's
/// default of 100 header lines refused the answer of any such request over 100 batches, the
/// deletion of a 100,000-order request among them. The bytes stay bounded by hyper's read
/// buffer (about 400 KB, some 1,700 batches); the by-query requests that can be large ask for
/// batches of [`BY_QUERY_BATCH`] documents to stay well under it.
const MAX_ANSWER_HEADERS: usize = 10_000;

/// `scroll_size` of the by-query requests whose documents have no bound (all the orders of
/// one request): 1,700 batches of it are 8.5 million documents.
pub(crate) const BY_QUERY_BATCH: &str = "5000";

/// The first wait before a dead node is checked again; doubled after each failed check.
const FIRST_CHECK: Duration = Duration::from_millis(250);
/// The longest wait between two checks of a dead node.
const LAST_CHECK: Duration = Duration::from_secs(15);
/// How long a health check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

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

/// When a request that failed on one node may be sent to another.
///
/// Only a request whose second copy cannot be misread is sent twice:
///
/// * [`Retry::Always`] — after any failure (connection refused or reset, timeout, 502/503/504):
///   reads (`GET`, `HEAD`, `_search`, `_mget`, `_count`), refreshes, putting an index template
///   (the same body twice leaves the same template), `_create/<id>` of a request record (a copy
///   that finds the first one's document answers 409, which `RequestStore::create` reads as
///   "already there", and the submit then carries on from the stored record), and a `_bulk`
///   whose every item is a `create` with the order id or an unconditional `index` of a whole
///   document (see [`crate::bulk`]): a repeated `create` answers 409 per item, which
///   `OrderStore::insert` reads as "already stored" — the contract's "inserting the same orders
///   twice creates them once".
/// * [`Retry::Unsent`] — only when no node received it (the connection could not be made):
///   every other write. Conditional writes (`if_seq_no`/`if_primary_term`: claims, results,
///   expiry, replacements of orders and records) are NOT sent again once a node may have
///   received them: a copy of a write that applied answers 409, and the callers read 409 as
///   "someone else changed it" — a claim would then leave out an order it has just marked
///   `sent`, which would wait for its redelivery with no poll holding it. Deletes (their
///   `found`/`not_found` is reported) and `_delete_by_query` (its count is reported) likewise.
///   Such a write fails with [`OsError::Transport`] (the service answers 503) and the caller's
///   client retries the whole operation, as after any outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    Always,
    Unsent,
}

impl Retry {
    /// The policy of a request, from its method and path (see [`Retry`]); `_bulk` is
    /// [`Retry::Unsent`] unless its caller says otherwise.
    fn of(method: Method, path: &str) -> Self {
        if matches!(method, Method::Get | Method::Head) {
            return Self::Always;
        }
        let path = path.trim_end_matches('/');
        let last = path.rsplit('/').next().unwrap_or_default();
        let read_or_same = matches!(last, "_search" | "_mget" | "_count" | "_refresh");
        let create = path.contains("/_create/");
        let template = method == Method::Put && path.starts_with("/_index_template/");
        if read_or_same || create || template {
            Self::Always
        } else {
            Self::Unsent
        }
    }
}

/// A client of one OpenSearch cluster, over one or more of its nodes (see [`Pool`]). Cheap to
/// clone.
#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    pool: Arc<Pool>,
    /// Basic-authentication user and password.
    credentials: Option<(String, String)>,
    /// One permit per request in flight: the connection pool never grows past it.
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http").finish_non_exhaustive()
    }
}

/// The nodes requests go to: round robin over those alive.
///
/// A node is marked dead when it cannot be reached (connection refused or reset, timeout), or
/// when it answers 502 or 504, or 503 without an OpenSearch error body (a load balancer or
/// proxy with no node behind it; a node's own 503 — no primary for a shard, a cluster block —
/// is the cluster's state, which another node would report alike). A dead node is left out
/// and checked in the background (`GET /`, after 250 ms, then twice as long each time up to
/// 15 s); it is used again as soon as it answers. While every node is dead, requests go to the
/// one dead longest (the likeliest to be back), so the service never refuses a request for
/// want of a node while one might be up.
struct Pool {
    nodes: RwLock<Vec<Arc<Node>>>,
    next: AtomicUsize,
    /// For the background checks (their own timeout).
    client: reqwest::Client,
    credentials: Option<(String, String)>,
}

/// One node of the pool.
struct Node {
    /// The node's URL, ending in `/` so that a path joins under it.
    base: Url,
    /// `host:port`: the `node` label of the metrics and logs (no credentials).
    label: String,
    /// When it was marked dead; `None` while alive.
    dead_since: Mutex<Option<Instant>>,
    /// Whether a background check of it is running.
    checking: Mutex<bool>,
    /// Requests sent to it (what `cm_opensearch_requests_total{node}` counts).
    sent: std::sync::atomic::AtomicU64,
}

impl Node {
    fn new(url: &str) -> Result<Self, String> {
        let mut base =
            Url::parse(url).map_err(|e| format!("{} is not a URL: {e}", redact_url(url)))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let label = format!(
            "{}:{}",
            base.host_str().unwrap_or_default(),
            base.port_or_known_default().unwrap_or_default()
        );
        Ok(Self {
            base,
            label,
            dead_since: Mutex::new(None),
            checking: Mutex::new(false),
            sent: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn dead_since(&self) -> Option<Instant> {
        *self
            .dead_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Pool {
    fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The next node to try, leaving out those `tried`: the next alive one in turn, else the
    /// one dead longest.
    fn pick(&self, tried: &[usize]) -> Option<(usize, Arc<Node>)> {
        let nodes = self.nodes();
        let n = nodes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let untried = |i: &usize| !tried.contains(i);
        (0..n)
            .map(|k| (start + k) % n)
            .filter(untried)
            .find(|&i| nodes[i].dead_since().is_none())
            .or_else(|| {
                (0..n)
                    .filter(untried)
                    .min_by_key(|&i| nodes[i].dead_since())
            })
            .map(|i| (i, Arc::clone(&nodes[i])))
    }

    fn alive(&self) -> usize {
        self.nodes()
            .iter()
            .filter(|n| n.dead_since().is_none())
            .count()
    }

    fn report_alive(&self) {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(metric::NODES_ALIVE.name).set(self.alive() as f64);
    }

    /// Marks `node` alive again (after it answered).
    fn revive(&self, node: &Node) {
        let was_dead = node
            .dead_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .is_some();
        if was_dead {
            tracing::info!(node = %node.label, "opensearch node answers again");
            self.report_alive();
        }
    }

    /// Marks `node` dead (when alive) and starts its background check (when none runs).
    fn kill(self: &Arc<Self>, node: &Arc<Node>, why: &str) {
        {
            let mut dead = node
                .dead_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if dead.is_none() {
                *dead = Some(Instant::now());
                tracing::warn!(node = %node.label, cause = %why, "opensearch node left out");
            }
        }
        self.report_alive();
        // One node: nothing to spread over, and its requests check it themselves.
        if self.nodes().len() < 2 {
            return;
        }
        {
            let mut checking = node.checking.lock().unwrap_or_else(PoisonError::into_inner);
            if *checking {
                return;
            }
            *checking = true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            *node.checking.lock().unwrap_or_else(PoisonError::into_inner) = false;
            return;
        };
        runtime.spawn(check(Arc::downgrade(self), Arc::clone(node)));
    }

    /// Adds the nodes at `urls` that the pool does not hold yet; returns how many it added.
    fn add(&self, urls: &[String]) -> usize {
        let mut nodes = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
        let mut added = 0;
        for url in urls {
            let Ok(node) = Node::new(url) else { continue };
            if nodes.iter().all(|n| n.base != node.base) {
                tracing::info!(node = %node.label, "opensearch node discovered");
                nodes.push(Arc::new(node));
                added += 1;
            }
        }
        added
    }
}

/// Checks a dead node with growing pauses until it answers (then marks it alive) or the pool
/// is gone.
async fn check(pool: Weak<Pool>, node: Arc<Node>) {
    let mut pause = FIRST_CHECK;
    loop {
        tokio::time::sleep(pause).await;
        let Some(pool) = pool.upgrade() else { return };
        if node.dead_since().is_none() {
            // A request found it alive meanwhile.
            break;
        }
        let mut request = pool.client.get(node.base.clone()).timeout(CHECK_TIMEOUT);
        if let Some((user, password)) = &pool.credentials {
            request = request.basic_auth(user, Some(password));
        }
        let answered = match request.send().await {
            Ok(response) => !matches!(response.status().as_u16(), 502..=504),
            Err(_) => false,
        };
        if answered {
            pool.revive(&node);
            break;
        }
        pause = (pause * 2).min(LAST_CHECK);
    }
    *node.checking.lock().unwrap_or_else(PoisonError::into_inner) = false;
}

/// What one attempt on one node came to.
enum Attempt {
    /// An answer from the cluster (any status).
    Answered(u16, Vec<u8>),
    /// No node received the request.
    Unsent(String),
    /// The node may have received it, and its outcome is unknown.
    Unknown(String),
}

impl Http {
    /// A client for the nodes of `settings` (nothing is sent yet).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] naming the setting when a URL or the TLS setup is unusable.
    pub(crate) fn new(settings: &OpenSearchSettings) -> Result<Self, StoreError> {
        let key = if settings.urls.is_empty() {
            "url"
        } else {
            "urls"
        };
        let nodes = settings
            .node_urls()
            .into_iter()
            .map(|url| Node::new(url).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Unavailable(format!("storage.opensearch.{key}: {e}")))?;
        install_tls_provider();
        let build = |timeout: Duration| {
            reqwest::Client::builder()
                .timeout(timeout)
                // The cluster sits next to the service; an HTTP(S)_PROXY meant for the
                // internet must not capture it.
                .no_proxy()
                .danger_accept_invalid_certs(settings.insecure_tls)
                .http1_max_headers(MAX_ANSWER_HEADERS)
                .build()
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot set up the opensearch client: {e}"))
                })
        };
        let client = build(Duration::from_secs(settings.request_timeout_secs.max(1)))?;
        let credentials = settings
            .username
            .as_ref()
            .map(|user| (user.clone(), settings.password.clone().unwrap_or_default()));
        let pool = Arc::new(Pool {
            nodes: RwLock::new(nodes),
            next: AtomicUsize::new(0),
            client: build(CHECK_TIMEOUT)?,
            credentials: credentials.clone(),
        });
        pool.report_alive();
        Ok(Self {
            client,
            pool,
            credentials,
            in_flight: Arc::new(Semaphore::new(settings.max_connections.max(1) as usize)),
        })
    }

    /// Adds the cluster's nodes with HTTP (`GET _nodes/http`, their `publish_address`, with
    /// the scheme of the first configured URL) to the pool; returns how many it added.
    ///
    /// # Errors
    /// When the cluster cannot list its nodes.
    pub(crate) async fn discover(&self) -> Result<usize, OsError> {
        let answer = self.ok(Method::Get, "/_nodes/http", &[], None).await?;
        let scheme = self
            .pool
            .nodes()
            .first()
            .map_or_else(|| "http".to_owned(), |n| n.base.scheme().to_owned());
        let urls: Vec<String> = answer["nodes"]
            .as_object()
            .into_iter()
            .flat_map(|nodes| nodes.values())
            .filter_map(|node| node["http"]["publish_address"].as_str())
            // `host/ip:port` or `ip:port`.
            .map(|address| address.rsplit('/').next().unwrap_or(address))
            .map(|address| format!("{scheme}://{address}"))
            .collect();
        let added = self.pool.add(&urls);
        self.pool.report_alive();
        Ok(added)
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

    /// Sends one request and returns its status and raw body, whatever its status; sent again
    /// to another node as [`Retry::of`] its method and path allows.
    pub(crate) async fn send_raw<B: Into<Vec<u8>>>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<B>,
        content_type: &'static str,
    ) -> Result<(u16, Vec<u8>), OsError> {
        let retry = Retry::of(method, path);
        self.send_raw_with(method, path, query, body, content_type, retry)
            .await
    }

    /// [`Self::send_raw`] with the caller's [`Retry`] policy.
    pub(crate) async fn send_raw_with<B: Into<Vec<u8>>>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<B>,
        content_type: &'static str,
        retry: Retry,
    ) -> Result<(u16, Vec<u8>), OsError> {
        let relative = path.trim_start_matches('/');
        let method = match method {
            Method::Get => reqwest::Method::GET,
            Method::Put => reqwest::Method::PUT,
            Method::Post => reqwest::Method::POST,
            Method::Delete => reqwest::Method::DELETE,
            Method::Head => reqwest::Method::HEAD,
        };
        // Built once against the first node; each attempt is a cheap copy (the body is shared)
        // pointed at its node.
        let first = self
            .pool
            .nodes()
            .first()
            .map(|n| n.base.clone())
            .ok_or_else(|| OsError::Transport("no opensearch node configured".to_owned()))?;
        let url = first
            .join(relative)
            .map_err(|e| OsError::Transport(format!("{path} is not a path: {e}")))?;
        let mut request = self
            .client
            .request(method, url)
            .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
            .header(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.body(body.into());
        }
        let template = request
            .build()
            .map_err(|e| OsError::Transport(format!("cannot build the request: {e}")))?;
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| OsError::Transport("the client is closed".to_owned()))?;
        let mut tried = Vec::new();
        loop {
            // Every attempt but the first is made only while a node is left untried.
            let Some((index, node)) = self.pool.pick(&tried) else {
                return Err(OsError::Transport("no opensearch node to try".to_owned()));
            };
            tried.push(index);
            let mut attempt = template.try_clone().ok_or_else(|| {
                OsError::Transport("the request body cannot be resent".to_owned())
            })?;
            let mut url = node
                .base
                .join(relative)
                .map_err(|e| OsError::Transport(format!("{path} is not a path: {e}")))?;
            url.set_query(template.url().query());
            *attempt.url_mut() = url;
            node.sent.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(metric::REQUESTS.name, "node" => node.label.clone()).increment(1);
            let outcome = self.attempt(attempt).await;
            let failure = match outcome {
                Attempt::Answered(status, bytes) => {
                    if node_failed(status, &bytes) {
                        self.pool.kill(&node, &format!("answered {status}"));
                        if retry == Retry::Always && self.can_retry(&tried) {
                            metrics::counter!(metric::RETRIES.name).increment(1);
                            continue;
                        }
                    } else {
                        self.pool.revive(&node);
                    }
                    return Ok((status, bytes));
                }
                Attempt::Unsent(why) => {
                    self.pool.kill(&node, &why);
                    if self.can_retry(&tried) {
                        metrics::counter!(metric::RETRIES.name).increment(1);
                        continue;
                    }
                    why
                }
                Attempt::Unknown(why) => {
                    self.pool.kill(&node, &why);
                    if retry == Retry::Always && self.can_retry(&tried) {
                        metrics::counter!(metric::RETRIES.name).increment(1);
                        continue;
                    }
                    why
                }
            };
            return Err(OsError::Transport(format!("{}: {failure}", node.label)));
        }
    }

    /// Whether a node is left that this request has not tried.
    fn can_retry(&self, tried: &[usize]) -> bool {
        tried.len() < self.pool.nodes().len()
    }

    async fn attempt(&self, request: reqwest::Request) -> Attempt {
        let response = match self.client.execute(request).await {
            Ok(response) => response,
            Err(e) if e.is_connect() => return Attempt::Unsent(transport_error(&e)),
            Err(e) => return Attempt::Unknown(transport_error(&e)),
        };
        let status = response.status().as_u16();
        match response.bytes().await {
            Ok(bytes) => Attempt::Answered(status, bytes.into()),
            Err(e) => Attempt::Unknown(transport_error(&e)),
        }
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

/// Whether an answer says the node (or the proxy in front of it) failed rather than the
/// cluster: 502 and 504, and 503 without an OpenSearch error body.
fn node_failed(status: u16, body: &[u8]) -> bool {
    match status {
        502 | 504 => true,
        503 => serde_json::from_slice::<Value>(body).map_or(true, |v| v.get("error").is_none()),
        _ => false,
    }
}

/// Makes ring the process's TLS crypto provider, unless one is installed already (the binary
/// installs it at start-up). The workspace compiles no other provider, and a reqwest client
/// panics when it is built without one.
pub(crate) fn install_tls_provider() {
    // An error means a provider is installed already: the one to use.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A transport error with its causes: reqwest's own message is only "error sending request".
fn transport_error(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    //! The client's TLS: a local HTTPS endpoint with a self-signed certificate stands in for a
    //! secured cluster's TLS layer (what is checked is the handshake, not OpenSearch).

    use std::sync::Arc;

    use rustls::ServerConfig;
    use rustls::crypto::ring;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;

    /// Serves HTTPS on a free port with a fresh self-signed certificate for `localhost`; every
    /// request is answered `200 {"cluster_name":"tls"}` and its head is sent on the channel.
    async fn https_node() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .expect("server certificate");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (heads, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let heads = heads.clone();
                tokio::spawn(async move {
                    // A refused handshake (an untrusting client) ends here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0_u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                    let body = r#"{"cluster_name":"tls"}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (format!("https://localhost:{port}"), received)
    }

    fn settings(url: String, insecure_tls: bool) -> OpenSearchSettings {
        OpenSearchSettings {
            url,
            username: Some("admin".to_owned()),
            password: Some("secret".to_owned()),
            insecure_tls,
            ..OpenSearchSettings::default()
        }
    }

    /// The node the crate's tests run against (`cargo xtask test` starts one).
    fn real_node() -> String {
        std::env::var("OPENSEARCH_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .expect("OPENSEARCH_URL: the pool's tests need a real node (`cargo xtask test`)")
            .trim_end_matches('/')
            .to_owned()
    }

    /// A port nothing listens on (yet).
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    }

    /// What a [`proxy`] does with each connection.
    #[derive(Clone, Copy)]
    enum Proxying {
        /// Passes it on to the node: a node of the cluster as far as the client can tell.
        Forward,
        /// Reads the request's head and closes the connection: a node that died under a
        /// request it received (its outcome unknown to the client).
        DieUnderRequest,
    }

    /// A TCP proxy on `port` (a free one when 0) to the real node; counts its connections.
    async fn proxy(port: u16, mode: Proxying) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let target = real_node();
        let target = target.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let target = target.clone();
                tokio::spawn(async move {
                    match mode {
                        Proxying::Forward => {
                            let Ok(mut node) = tokio::net::TcpStream::connect(&target).await else {
                                return;
                            };
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
                        }
                        Proxying::DieUnderRequest => {
                            let mut head = Vec::new();
                            let mut buf = [0_u8; 1024];
                            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                                match client.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => head.extend_from_slice(&buf[..n]),
                                }
                            }
                            drop(client);
                        }
                    }
                });
            }
        });
        (format!("http://127.0.0.1:{port}"), connections)
    }

    fn cluster(urls: Vec<String>) -> Http {
        Http::new(&OpenSearchSettings {
            urls,
            ..OpenSearchSettings::default()
        })
        .expect("client")
    }

    #[tokio::test]
    async fn a_node_that_refuses_connections_is_left_out_and_requests_reach_the_others() {
        let down = format!("http://127.0.0.1:{}", closed_port());
        let (up, reached) = proxy(0, Proxying::Forward).await;
        let http = cluster(vec![down, up]);

        // Even a write that must not be repeated once received: no node received it.
        let (status, _) = http
            .send_raw_with(
                Method::Get,
                "/",
                &[],
                None::<Vec<u8>>,
                "application/json",
                Retry::Unsent,
            )
            .await
            .expect("the request reached the node that is up");
        assert_eq!(status, 200);
        assert_eq!(http.pool.alive(), 1, "the node that refused is left out");

        let nodes = http.pool.nodes();
        let sent = |i: usize| nodes[i].sent.load(Ordering::SeqCst);
        let before = (sent(0), sent(1));
        for _ in 0..4 {
            http.ok(Method::Get, "/", &[], None)
                .await
                .expect("answered");
        }
        assert_eq!(sent(0), before.0, "nothing more goes to the node left out");
        assert_eq!(sent(1), before.1 + 4, "requests go to the node alive");
        assert!(reached.load(Ordering::SeqCst) >= 1);
    }

    #[tokio::test]
    async fn a_read_is_sent_to_another_node_when_one_dies_under_it() {
        let (dying, received) = proxy(0, Proxying::DieUnderRequest).await;
        let (up, _) = proxy(0, Proxying::Forward).await;
        let http = cluster(vec![dying, up]);

        // A search of indices nobody creates: one over every index would fail (503) while
        // another test's new index has no started shard yet.
        let answer = http
            .call(
                Method::Post,
                "/cm-pool-never-created-*/_search",
                &[],
                Some(serde_json::json!({"size": 0})),
            )
            .await
            .expect("the search was answered by the other node");

        assert_eq!(answer.status, 200);
        assert_eq!(
            received.load(Ordering::SeqCst),
            1,
            "the first node got it first"
        );
    }

    #[tokio::test]
    async fn a_write_whose_outcome_is_unknown_is_not_sent_to_another_node() {
        let (dying, received) = proxy(0, Proxying::DieUnderRequest).await;
        let (up, reached) = proxy(0, Proxying::Forward).await;
        let http = cluster(vec![dying, up]);

        // A conditional write: were it applied, a copy would answer 409 and be misread.
        let refused = http
            .call(
                Method::Put,
                "/cm-pool-never-written/_doc/x",
                &[("if_seq_no", "0"), ("if_primary_term", "1")],
                Some(serde_json::json!({})),
            )
            .await;

        assert!(matches!(refused, Err(OsError::Transport(_))), "{refused:?}");
        assert_eq!(received.load(Ordering::SeqCst), 1);
        assert_eq!(
            reached.load(Ordering::SeqCst),
            0,
            "not sent to the other node"
        );
    }

    #[tokio::test]
    async fn a_node_left_out_is_used_again_once_it_answers() {
        let port = closed_port();
        let (up, _) = proxy(0, Proxying::Forward).await;
        let http = cluster(vec![format!("http://127.0.0.1:{port}"), up]);
        http.ok(Method::Get, "/", &[], None)
            .await
            .expect("answered");
        assert_eq!(http.pool.alive(), 1);

        // The node comes up on its address; the background check finds it.
        let (_, reached) = proxy(port, Proxying::Forward).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while http.pool.alive() < 2 {
            assert!(Instant::now() < deadline, "the node was not used again");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let back = http.pool.nodes()[0].sent.load(Ordering::SeqCst);
        for _ in 0..4 {
            http.ok(Method::Get, "/", &[], None)
                .await
                .expect("answered");
        }
        assert_eq!(
            http.pool.nodes()[0].sent.load(Ordering::SeqCst),
            back + 2,
            "round robin over both nodes again"
        );
        assert!(reached.load(Ordering::SeqCst) >= 1, "the check reached it");
    }

    #[tokio::test]
    async fn a_by_query_answer_with_a_header_per_batch_is_read() {
        // OpenSearch adds a `TASK_RESOURCE_USAGE` header per scroll batch: 150 batches of one
        // document are 150 header lines, more than an HTTP client takes by default.
        let http = cluster(vec![real_node()]);
        let index = format!("cm-headers-{}", std::process::id());
        let mut bulk = String::new();
        for i in 0..150 {
            bulk.push_str(&format!(
                "{{\"create\":{{\"_index\":\"{index}\",\"_id\":\"{i}\"}}}}\n"
            ));
            bulk.push_str("{\"n\":0}\n");
        }
        let (status, _) = http
            .send_raw(
                Method::Post,
                "/_bulk",
                &[("refresh", "true")],
                Some(bulk),
                "application/x-ndjson",
            )
            .await
            .expect("bulk");
        assert_eq!(status, 200);

        let answer = http
            .ok(
                Method::Post,
                &format!("/{index}/_update_by_query"),
                &[("scroll_size", "1"), ("conflicts", "proceed")],
                Some(serde_json::json!({"script": {"source": "ctx._source.n = 1"}})),
            )
            .await;
        http.call(Method::Delete, &format!("/{index}"), &[], None)
            .await
            .expect("index deleted");

        let answer = answer.expect("the answer with a header line per batch is read");
        assert_eq!(answer["updated"], 150, "{answer}");
        assert_eq!(answer["batches"], 150, "{answer}");
    }

    #[tokio::test]
    async fn discovery_adds_the_nodes_the_cluster_lists() {
        // Configured through a proxy: the node's own address is one more.
        let (through, _) = proxy(0, Proxying::Forward).await;
        let http = cluster(vec![through]);

        let added = http.discover().await.expect("the cluster lists its nodes");

        assert_eq!(added, 1);
        let nodes = http.pool.nodes();
        assert_eq!(nodes.len(), 2);
        let own = Url::parse(&real_node()).expect("OPENSEARCH_URL is a URL");
        assert_eq!(
            nodes[1].base.port(),
            own.port(),
            "the node's publish address"
        );
        assert_eq!(
            http.discover().await.expect("listed again"),
            0,
            "no node twice"
        );
    }

    #[test]
    fn with_every_node_left_out_the_one_left_out_longest_is_tried_first() {
        let http = cluster(vec![
            "http://127.0.0.1:1".to_owned(),
            "http://127.0.0.1:2".to_owned(),
            "http://127.0.0.1:3".to_owned(),
        ]);
        let nodes = http.pool.nodes();
        let now = Instant::now();
        for (node, ago) in nodes.iter().zip([5, 9, 1]) {
            *node.dead_since.lock().unwrap() = Some(now - Duration::from_secs(ago));
        }
        let order: Vec<usize> = {
            let mut tried = Vec::new();
            while let Some((i, _)) = http.pool.pick(&tried) {
                tried.push(i);
            }
            tried
        };
        assert_eq!(order, vec![1, 0, 2]);
    }

    #[test]
    fn reads_and_creates_may_be_repeated_and_conditional_writes_may_not() {
        for (method, path, retry) in [
            (Method::Get, "/wazuh-commands/_doc/a", Retry::Always),
            (Method::Head, "/wazuh-commands", Retry::Always),
            (Method::Post, "/wazuh-commands/_search", Retry::Always),
            (Method::Post, "/wazuh-commands/_mget", Retry::Always),
            (Method::Post, "/wazuh-commands/_refresh", Retry::Always),
            (
                Method::Put,
                "/wazuh-commands-requests/_create/r",
                Retry::Always,
            ),
            (
                Method::Put,
                "/_index_template/wazuh-commands",
                Retry::Always,
            ),
            (Method::Put, "/wazuh-commands/_doc/a", Retry::Unsent),
            (Method::Post, "/_bulk", Retry::Unsent),
            (Method::Delete, "/wazuh-agents/_doc/a", Retry::Unsent),
            (
                Method::Post,
                "/wazuh-commands/_delete_by_query",
                Retry::Unsent,
            ),
        ] {
            assert_eq!(Retry::of(method, path), retry, "{method:?} {path}");
        }
    }

    #[test]
    fn a_proxy_without_a_node_fails_the_node_and_a_node_without_a_primary_does_not() {
        assert!(node_failed(502, b"Bad Gateway"));
        assert!(node_failed(504, b""));
        assert!(node_failed(503, b"<html>no upstream</html>"));
        assert!(!node_failed(
            503,
            br#"{"error":{"type":"unavailable_shards_exception"},"status":503}"#
        ));
        assert!(!node_failed(409, b"{}"));
    }

    #[tokio::test]
    async fn an_https_cluster_with_a_self_signed_certificate_is_reached_when_insecure_tls_is_on() {
        let (url, mut heads) = https_node().await;
        let http = Http::new(&settings(url, true)).expect("client");

        let answer = http
            .call(Method::Get, "/", &[("pretty", "false")], None)
            .await
            .expect("an answer over TLS");

        assert_eq!(answer.status, 200);
        assert_eq!(answer.body["cluster_name"], "tls");
        let head = heads.recv().await.expect("the request reached the node");
        assert!(
            head.starts_with("GET /?pretty=false HTTP/1.1\r\n"),
            "{head}"
        );
        // admin:secret
        assert!(
            head.to_ascii_lowercase()
                .contains("authorization: basic ywrtaw46c2vjcmv0\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn an_https_cluster_whose_certificate_is_not_trusted_is_unreachable() {
        let (url, _heads) = https_node().await;
        let http = Http::new(&settings(url, false)).expect("client");

        let refused = http.call(Method::Get, "/", &[], None).await;

        match refused {
            Err(OsError::Transport(message)) => {
                assert!(message.to_lowercase().contains("certificate"), "{message}");
            }
            other => panic!("expected a transport error, got {other:?}"),
        }
    }
}
