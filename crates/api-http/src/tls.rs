//! Optional TLS termination with rustls (`[http.tls]`): the server configuration. The
//! connection layer (`conn`) completes each handshake in the connection's own task, within the
//! header read timeout, so a slow or silent client never holds up the accepts of others.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
