//! PostgreSQL over TLS, configured through the URL as libpq users do (`sslmode`,
//! `sslrootcert`): against a throwaway server of this test binary that speaks TLS only, with a
//! certificate made here (`cargo xtask postgres --tls DIR`), and against the shared test server
//! (`CM_TEST_POSTGRES_URL`), which speaks none.
//!
//! The certificates: a CA, the server's certificate signed by it for the host name `localhost`
//! only (so connecting to `127.0.0.1` is a name the certificate does not hold), and a second,
//! unrelated CA. The whole conformance suite also runs over `verify-full`.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cm_adapter_postgres::{PostgresBackend, PostgresSettings};
use cm_ports::StoreError;
use cm_ports::testkit::Backend;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use sqlx::{Connection, Executor};
use uuid::Uuid;

/// A directory removed when dropped, searchable by every user (the server runs as `postgres`
/// when the tests run as root, and must read what xtask copies from here).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(label: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "cm-pg-tls-{label}-{}-{nanos}-{}",
            std::process::id(),
            Uuid::now_v7().simple()
        ));
        std::fs::create_dir(&dir).expect("create a scratch directory");
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod the scratch directory");
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` into the file `name` here and returns its path.
    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write a file");
        path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA: its certificate in PEM, and what signs with it.
fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

/// The TLS-only server of this test binary, started once, and the CAs of the tests.
struct TlsServer {
    /// `postgres://postgres@localhost:P/postgres`.
    url: String,
    /// The CA that signed the server's certificate, in PEM.
    ca: String,
    /// A CA that signed nothing of the server's, in PEM.
    other_ca: String,
    /// xtask runs the server until its standard input ends: when this process exits, the pipe
    /// closes and the server stops.
    _control: Mutex<(Child, ChildStdin)>,
}

fn xtask_command() -> Command {
    match std::env::var_os("CM_XTASK_BIN").filter(|b| !b.is_empty()) {
        Some(bin) => Command::new(bin),
        None => {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["run", "-q", "-p", "xtask", "--"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            cmd
        }
    }
}

fn tls_server() -> &'static TlsServer {
    static SERVER: OnceLock<TlsServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let ca = certificate_authority("command-manager test CA");
        let other_ca = certificate_authority("an unrelated CA");
        let server_key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("server parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_cert = params
            .signed_by(&server_key, &ca)
            .expect("server certificate");

        // xtask copies the certificate and key next to the server (owned by the user that runs
        // it, the key 0600): this directory can go once the server is up.
        let files = ScratchDir::new("server");
        files.file("server.crt", &server_cert.pem());
        files.file("server.key", &server_key.serialize_pem());
        let mut child = xtask_command()
            .arg("postgres")
            .arg("--tls")
            .arg(files.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run xtask postgres --tls");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        // xtask gives up by itself when the server does not come up: the first line is the
        // URL, or its output ends.
        let ready = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("postgres ready ").map(str::to_owned));
        let Some(url) = ready else {
            let mut said = String::new();
            let _ = stderr.read_to_string(&mut said);
            panic!("xtask postgres --tls did not start a server:\n{said}");
        };
        // The certificate names `localhost`, not the address xtask prints.
        let url = url.trim().replacen("@127.0.0.1:", "@localhost:", 1);
        // Drained so that xtask never blocks writing to it.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        });
        TlsServer {
            url,
            ca: ca.pem(),
            other_ca: other_ca.pem(),
            _control: Mutex::new((child, stdin)),
        }
    })
}

/// `url` with `options` added to its query string.
fn with_options(url: &str, options: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{options}")
}

/// `url` with its host (`localhost`) replaced by `host`.
fn with_host(url: &str, host: &str) -> String {
    url.replacen("@localhost:", &format!("@{host}:"), 1)
}

fn settings(url: String) -> PostgresSettings {
    PostgresSettings {
        url,
        max_connections: 4,
        connect_timeout_secs: 10,
    }
}

/// The URL of a new database on the TLS server (made over `verify-full` with `ca`), with the
/// same options.
async fn fresh_tls_database(ca: &Path) -> String {
    let admin = with_options(
        &tls_server().url,
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let name = format!("cm_tls_{}", Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to the TLS server over verify-full");
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create the test database");
    let _ = conn.close().await;
    common::with_database(&admin, &name)
}

/// What opening the backend at `url` failed with.
async fn open_err(url: String) -> String {
    match PostgresBackend::open(&settings(url)).await {
        Ok(_) => panic!("the backend opened"),
        Err(e @ StoreError::Unavailable(_)) => {
            // What an operator reads at start-up (shown with --nocapture).
            eprintln!("open failed: {e}");
            e.to_string()
        }
        Err(other) => panic!("expected Unavailable, got {other:?}"),
    }
}

/// The backend over `verify-full` with the right CA, on a fresh database of the TLS server,
/// for the conformance suite: the CA file lives as long as the backend.
async fn tls_backend() -> Backend {
    let files = ScratchDir::new("ca");
    let ca = files.file("ca.pem", &tls_server().ca);
    let url = fresh_tls_database(&ca).await;
    let b = PostgresBackend::open(&settings(url))
        .await
        .expect("open over verify-full");
    let notifier = b.notifier().await.expect("notifier over TLS");
    Backend {
        orders: Arc::new(b.clone()),
        agents: Arc::new(b.clone()),
        requests: Arc::new(b.clone()),
        components: Arc::new(b),
        notifier: Arc::new(notifier),
        guard: Some(Arc::new(files)),
    }
}

mod conformance_over_verify_full {
    use super::tls_backend;

    cm_ports::conformance_suite!(tls_backend());
}

#[tokio::test]
async fn verify_full_with_the_right_ca_opens_and_the_server_refuses_plain_connections() {
    let files = ScratchDir::new("ca");
    let ca = files.file("ca.pem", &tls_server().ca);
    let url = fresh_tls_database(&ca).await;
    let backend = PostgresBackend::open(&settings(url.clone()))
        .await
        .unwrap_or_else(|e| panic!("open over verify-full: {e}"));
    drop(backend);
    // The server takes TCP connections only over TLS: the backend above spoke TLS.
    let plain = url.replace("sslmode=verify-full", "sslmode=disable");
    let err = open_err(plain).await;
    assert!(err.contains("no encryption"), "{err}");
}

#[tokio::test]
async fn a_certificate_signed_by_another_ca_fails_start_up_naming_the_cause() {
    let files = ScratchDir::new("ca");
    let right = files.file("ca.pem", &tls_server().ca);
    let wrong = files.file("other-ca.pem", &tls_server().other_ca);
    let url = fresh_tls_database(&right).await;
    for mode in ["verify-full", "verify-ca"] {
        let url = url
            .replace("sslmode=verify-full", &format!("sslmode={mode}"))
            .replace(&right.display().to_string(), &wrong.display().to_string());
        let err = open_err(url).await;
        assert!(
            err.contains("certificate is not signed by a trusted certificate authority")
                && err.contains(&format!("sslmode={mode}"))
                && err.contains("localhost:"),
            "{mode}: {err}"
        );
    }
}

#[tokio::test]
async fn a_host_name_the_certificate_does_not_hold_fails_verify_full_naming_it() {
    let files = ScratchDir::new("ca");
    let ca = files.file("ca.pem", &tls_server().ca);
    let url = fresh_tls_database(&ca).await;
    let err = open_err(with_host(&url, "127.0.0.1")).await;
    assert!(
        err.contains("not valid for the host name")
            && err.contains("127.0.0.1")
            && err.contains("localhost"),
        "{err}"
    );
    // verify-ca checks the chain, not the name (as libpq).
    let verify_ca =
        with_host(&url, "127.0.0.1").replace("sslmode=verify-full", "sslmode=verify-ca");
    PostgresBackend::open(&settings(verify_ca))
        .await
        .unwrap_or_else(|e| panic!("open over verify-ca by address: {e}"));
}

#[tokio::test]
async fn require_encrypts_without_verifying_unless_given_a_root_certificate() {
    let files = ScratchDir::new("ca");
    let right = files.file("ca.pem", &tls_server().ca);
    let wrong = files.file("other-ca.pem", &tls_server().other_ca);
    let url = fresh_tls_database(&right).await;
    let base = url.split_once('?').map_or(url.as_str(), |(head, _)| head);
    PostgresBackend::open(&settings(with_options(base, "sslmode=require")))
        .await
        .unwrap_or_else(|e| panic!("open over require: {e}"));
    // Without sslmode, prefer: TLS when the server offers it (this one insists).
    PostgresBackend::open(&settings(base.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("open with the default sslmode: {e}"));
    // libpq: require with a root certificate verifies the chain, as verify-ca.
    let err = open_err(with_options(
        base,
        &format!("sslmode=require&sslrootcert={}", wrong.display()),
    ))
    .await;
    assert!(
        err.contains("not signed by a trusted certificate authority")
            && err.contains("sslmode=verify-ca"),
        "{err}"
    );
}

#[tokio::test]
async fn require_against_a_server_without_tls_fails_clearly() {
    let url = with_options(&common::server_url(), "sslmode=require");
    let err = open_err(url).await;
    assert!(
        err.contains("does not support TLS") && err.contains("sslmode=require"),
        "{err}"
    );
}

#[tokio::test]
async fn prefer_falls_back_to_a_plain_connection_on_a_server_without_tls() {
    let settings = common::fresh_settings().await;
    let url = with_options(&settings.url, "sslmode=prefer");
    PostgresBackend::open(&PostgresSettings { url, ..settings })
        .await
        .unwrap_or_else(|e| panic!("open over prefer without TLS: {e}"));
}

#[tokio::test]
async fn a_root_certificate_that_cannot_be_read_is_named() {
    let url = with_options(
        &tls_server().url,
        "sslmode=verify-full&sslrootcert=/nonexistent/root.crt",
    );
    let err = open_err(url).await;
    assert!(
        err.contains("/nonexistent/root.crt") && err.contains("cannot be read"),
        "{err}"
    );
}
