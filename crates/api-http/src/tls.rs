//! Optional TLS termination with rustls (`[http.tls]`): a [`Listener`] that accepts TCP
//! connections and completes each handshake in its own task, so a slow or silent client never
//! holds up the accepts of others.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

/// The certificate and key the server presents (`[http.tls]`, `CM_HTTP__TLS__CERT_PATH`,
/// `CM_HTTP__TLS__KEY_PATH`). When absent the server speaks plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file: the server's certificate first, then any intermediates.
    pub cert_path: PathBuf,
    /// PEM file: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

/// The longest a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Completed handshakes waiting for the server to take them.
const BACKLOG: usize = 128;
/// Handshakes in progress at once; a connection beyond it is closed at once.
const MAX_HANDSHAKES: usize = 1024;

fn at(setting: &str, path: &Path, why: impl std::fmt::Display) -> String {
    format!("{setting} {}: {why}", path.display())
}

/// The rustls configuration of `tls` (crypto provider: ring; HTTP/1.1 over ALPN).
///
/// # Errors
/// A message naming `http.tls.cert_path` or `http.tls.key_path` when a file cannot be read,
/// holds no certificate or key, or the key does not belong to the certificate.
pub(crate) fn server_config(tls: &TlsSettings) -> Result<Arc<ServerConfig>, String> {
    const CERT: &str = "http.tls.cert_path";
    const KEY: &str = "http.tls.key_path";
    let certs = CertificateDer::pem_file_iter(&tls.cert_path)
        .map_err(|e| at(CERT, &tls.cert_path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| at(CERT, &tls.cert_path, e))?;
    if certs.is_empty() {
        return Err(at(
            CERT,
            &tls.cert_path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_path).map_err(|e| at(KEY, &tls.key_path, e))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("http.tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "{KEY} {}: does not fit the certificate of {CERT} {}: {e}",
                tls.key_path.display(),
                tls.cert_path.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections and hands out those whose TLS handshake completed.
#[derive(Debug)]
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp`; the accept task ends when the listener is dropped.
    ///
    /// # Errors
    /// The error of reading `tcp`'s local address.
    pub(crate) fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(BACKLOG);
        tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), tx));
        Ok(Self { ready, local })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, peer) = tokio::select! {
            () = ready.closed() => return,
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&handshakes).try_acquire_owned() else {
            tracing::debug!(%peer, "too many tls handshakes in progress: connection closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
            }
        });
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task only ends once this receiver is gone; never resolve otherwise.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
