//! The HTTP conversation with OpenSearch: JSON in, JSON out, over a `reqwest` client (connection
//! pool, TLS, basic authentication, timeouts). Not the `opensearch` crate's transport: its TLS
//! options exist only with its `rustls-tls` feature, which compiles a second TLS crypto provider
//! (aws-lc-rs) beside the ring the rest of the service uses.

use std::sync::Arc;
use std::time::Duration;

use cm_ports::StoreError;
use opensearch::http::Method;
use reqwest::Url;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
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
    client: reqwest::Client,
    /// The node, ending in `/` so that a path joins under it.
    base: Url,
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

impl Http {
    /// A client for `settings.url` (nothing is sent yet).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] naming the setting when the URL or TLS setup is unusable.
    pub(crate) fn new(settings: &OpenSearchSettings) -> Result<Self, StoreError> {
        let mut base = Url::parse(&settings.url).map_err(|e| {
            StoreError::Unavailable(format!(
                "storage.opensearch.url {} is not a URL: {e}",
                redact_url(&settings.url)
            ))
        })?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        install_tls_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.request_timeout_secs.max(1)))
            // The cluster sits next to the service; an HTTP(S)_PROXY meant for the internet
            // must not capture it.
            .no_proxy()
            .danger_accept_invalid_certs(settings.insecure_tls)
            .build()
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot set up the opensearch client: {e}"))
            })?;
        let credentials = settings
            .username
            .as_ref()
            .map(|user| (user.clone(), settings.password.clone().unwrap_or_default()));
        Ok(Self {
            client,
            base,
            credentials,
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
    pub(crate) async fn send_raw<B: Into<Vec<u8>>>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<B>,
        content_type: &'static str,
    ) -> Result<(u16, Vec<u8>), OsError> {
        let url = self
            .base
            .join(path.trim_start_matches('/'))
            .map_err(|e| OsError::Transport(format!("{path} is not a path: {e}")))?;
        let method = match method {
            Method::Get => reqwest::Method::GET,
            Method::Put => reqwest::Method::PUT,
            Method::Post => reqwest::Method::POST,
            Method::Delete => reqwest::Method::DELETE,
            Method::Head => reqwest::Method::HEAD,
        };
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
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| OsError::Transport("the client is closed".to_owned()))?;
        let response = request
            .send()
            .await
            .map_err(|e| OsError::Transport(transport_error(&e)))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| OsError::Transport(transport_error(&e)))?;
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
