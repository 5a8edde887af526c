//! TLS to the server, configured the way libpq users expect: `sslmode` and `sslrootcert` in the
//! URL (or `PGSSLMODE` / `PGSSLROOTCERT` in the environment), which sqlx reads. rustls on ring
//! speaks it; without `sslrootcert`, certificates are checked against the system's trust store.
//!
//! What this module adds to sqlx:
//! * libpq's rules sqlx lacks: `sslmode=require` with a root certificate given verifies the
//!   chain like `verify-ca` (libpq's backward-compatible reading), and `allow` (which sqlx
//!   treats as `disable`) becomes `prefer`, so a server that insists on TLS still gets it.
//! * A root certificate file that cannot be read, or holds no certificate, is refused before
//!   connecting, naming the file (sqlx would say only "No such file or directory").
//! * A failed handshake says what was wrong with the server's certificate (not signed by the
//!   trusted CA, not valid for the host name, expired) rather than an I/O error.

use std::borrow::Cow;

use cm_ports::StoreError;
use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// The `sslmode` value of `mode`, as libpq spells it.
pub(crate) fn mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// `options` (parsed by sqlx from `url`) with libpq's rules applied; refuses a root
/// certificate that cannot be used when the mode verifies certificates.
pub(crate) fn apply_libpq_rules(
    options: PgConnectOptions,
    url: &str,
) -> Result<PgConnectOptions, StoreError> {
    let root_cert = root_cert(url);
    let mode = match options.get_ssl_mode() {
        PgSslMode::Allow => PgSslMode::Prefer,
        PgSslMode::Require if root_cert.is_some() => PgSslMode::VerifyCa,
        other => other,
    };
    if matches!(mode, PgSslMode::VerifyCa | PgSslMode::VerifyFull)
        && let Some(root) = &root_cert
    {
        check_root_cert(root).map_err(|why| {
            StoreError::Unavailable(format!("storage.postgres.url: sslrootcert {why}"))
        })?;
    }
    Ok(options.ssl_mode(mode))
}

/// The root certificate the connection uses: the URL's last `sslrootcert` (or sqlx's
/// aliases), else `PGSSLROOTCERT` — the order sqlx reads them in.
fn root_cert(url: &str) -> Option<String> {
    let from_url = url
        .split_once('?')
        .map(|(_, query)| query)
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| matches!(*key, "sslrootcert" | "ssl-root-cert" | "ssl-ca"))
        .map(|(_, value)| percent_decode(value))
        .next_back();
    from_url.or_else(|| std::env::var("PGSSLROOTCERT").ok())
}

/// `value` with its `%XX` escapes (and `+` for a space, as in a query string) decoded.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why `root` (a file name, or certificates in PEM inline) cannot serve as the trusted CA.
fn check_root_cert(root: &str) -> Result<(), String> {
    let trimmed = root.trim();
    let pem: Cow<'_, str> = if trimmed.starts_with("-----BEGIN") {
        Cow::Borrowed(trimmed)
    } else {
        let bytes = std::fs::read(root).map_err(|e| format!("{root} cannot be read: {e}"))?;
        Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())
    };
    if pem.contains("-----BEGIN CERTIFICATE-----") {
        Ok(())
    } else {
        Err(format!(
            "{root} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ))
    }
}

/// What a TLS failure was, in words for an operator; `None` when `err` is not about TLS.
pub(crate) fn describe(err: &sqlx::Error) -> Option<String> {
    match err {
        // sqlx's words when the server answers the TLS request with "no".
        sqlx::Error::Tls(e) if e.to_string() == "server does not support TLS" => Some(
            "the server does not support TLS (turn `ssl` on at the server, or use sslmode=prefer \
             to fall back to an unencrypted connection)"
                .to_owned(),
        ),
        sqlx::Error::Tls(e) => Some(format!("TLS with the PostgreSQL server failed: {e}")),
        sqlx::Error::Io(io) => {
            let tls = io.get_ref()?.downcast_ref::<rustls::Error>()?;
            Some(describe_rustls(tls))
        }
        _ => None,
    }
}

fn describe_rustls(err: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(cert) = err else {
        return format!("the TLS handshake with the PostgreSQL server failed: {err}");
    };
    let what = match cert {
        C::UnknownIssuer => {
            "is not signed by a trusted certificate authority (the CA of sslrootcert, or the \
             system's trust store when sslrootcert is not given)"
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "is not valid for the host name connected to (sslmode=verify-full checks it; connect \
             by a name the certificate holds)"
        }
        C::Expired | C::ExpiredContext { .. } => "has expired",
        C::NotValidYet | C::NotValidYetContext { .. } => "is not valid yet",
        C::Revoked => "is revoked",
        C::BadSignature => "has a bad signature",
        _ => "was refused",
    };
    format!("the PostgreSQL server's TLS certificate {what}: {cert}")
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn rules(url: &str) -> Result<PgSslMode, StoreError> {
        let options = PgConnectOptions::from_str(url).expect("a valid URL");
        apply_libpq_rules(options, url).map(|o| o.get_ssl_mode())
    }

    #[test]
    fn the_url_names_the_mode_and_the_default_is_prefer() {
        // The default is libpq's, unless the environment sets one (PGSSLMODE).
        if std::env::var_os("PGSSLMODE").is_none() {
            assert!(matches!(
                rules("postgres://h/db").expect("options"),
                PgSslMode::Prefer
            ));
        }
        for (value, mode) in [
            ("disable", PgSslMode::Disable),
            ("prefer", PgSslMode::Prefer),
            ("require", PgSslMode::Require),
            ("verify-full", PgSslMode::VerifyFull),
        ] {
            let got = rules(&format!("postgres://h/db?sslmode={value}")).expect("options");
            assert_eq!(mode_name(got), mode_name(mode), "{value}");
        }
        assert_eq!(
            mode_name(rules("postgres://h/db?sslmode=allow").expect("options")),
            "prefer"
        );
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain() {
        let dir = std::env::temp_dir().join(format!("cm-pg-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = dir.join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let url = format!(
            "postgres://h/db?sslmode=require&sslrootcert={}",
            ca.display()
        );
        assert_eq!(mode_name(rules(&url).expect("options")), "verify-ca");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unreadable_or_empty_root_certificate_is_named() {
        let err = rules("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .expect_err("no such file");
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent/ca.pem") && text.contains("cannot be read"),
            "{text}"
        );
        let err = rules("postgres://h/db?sslmode=verify-ca&sslrootcert=/dev/null")
            .expect_err("no certificate");
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
        // Modes that do not verify do not read it (as libpq).
        assert!(rules("postgres://h/db?sslmode=prefer&sslrootcert=/nonexistent/ca.pem").is_ok());
    }

    #[test]
    fn percent_escapes_in_the_path_are_decoded() {
        assert_eq!(percent_decode("/a%20b/c%2Fd.pem"), "/a b/c/d.pem");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(
            root_cert("postgres://h/db?sslrootcert=%2Fetc%2Fca.pem&sslmode=verify-ca").as_deref(),
            Some("/etc/ca.pem")
        );
    }
}
