//! Backend servers a test owns: a PostgreSQL or OpenSearch it can stop and start again on the
//! same data directory and port, run through `cargo xtask postgres|opensearch --port P --data
//! DIR`.
//!
//! The xtask binary comes from `CM_XTASK_BIN` (`cargo xtask test` exports its own path), else
//! from `$CARGO run -q -p xtask --`. xtask runs the server until its standard input closes, so
//! closing our end stops the server (and when this process dies, the pipe closes by itself).
//! [`OwnedServer`] does that when dropped, also when a test panics.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a server may take to be ready (OpenSearch builds its launcher on first use).
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a clean stop may take before xtask is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Postgres,
    OpenSearch,
}

impl Kind {
    fn subcommand(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::OpenSearch => "opensearch",
        }
    }
}

/// A directory removed when dropped; searchable by every user (the PostgreSQL server runs as
/// `postgres` when the tests run as root).
pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    pub(crate) fn new(label: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("cm-heavy-{label}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).expect("create a scratch directory");
        let mut perms = std::fs::metadata(&dir).expect("metadata").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&dir, perms).expect("chmod the scratch directory");
        Self(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port for a server that must get the same port again after a restart: outside Linux's
/// ephemeral range (32768–60999), so no outgoing connection takes it while the server is down.
fn stable_port() -> u16 {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    for i in 0..2_000u32 {
        let port = 21_000 + ((seed.wrapping_add(i.wrapping_mul(7_919))) % 11_000) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 21000..32000");
}

pub(crate) fn xtask_command() -> Command {
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

/// A backend server of one test, on a fixed port and data directory, that the test stops and
/// starts at will. Stopped when dropped.
pub(crate) struct OwnedServer {
    kind: Kind,
    port: u16,
    data: PathBuf,
    url: String,
    running: Option<(Child, ChildStdin)>,
    /// What xtask printed on standard error, for failure messages.
    stderr: Arc<Mutex<Vec<String>>>,
}

impl OwnedServer {
    /// Starts a server with its data in `data` (created on first start, reused afterwards).
    pub(crate) fn start(kind: Kind, data: PathBuf) -> Self {
        let mut server = Self {
            kind,
            port: stable_port(),
            data,
            url: String::new(),
            running: None,
            stderr: Arc::default(),
        };
        server.start_again();
        server
    }

    /// The URL xtask printed: `postgres://postgres@127.0.0.1:P/postgres` or
    /// `http://127.0.0.1:P`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Starts the stopped server again, on the same port and data; returns how long it took.
    pub(crate) fn start_again(&mut self) -> Duration {
        assert!(self.running.is_none(), "the server is running already");
        let started = Instant::now();
        let mut cmd = xtask_command();
        cmd.arg(self.kind.subcommand())
            .args(["--port", &self.port.to_string(), "--data"])
            .arg(&self.data)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run xtask");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::clone(&self.stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("[xtask] {line}");
                }
                lines
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        let prefix = format!("{} ready ", self.kind.subcommand());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix(&prefix) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        // Held from here on: dropping `self` stops whatever started.
        self.running = Some((child, stdin));
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(url) => self.url = url,
            Err(_) => {
                self.stop();
                panic!(
                    "{} on port {} was not ready within {READY_TIMEOUT:?}; xtask said:\n{}",
                    self.kind.subcommand(),
                    self.port,
                    self.stderr
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .join("\n")
                );
            }
        }
        started.elapsed()
    }

    /// Stops the server cleanly (xtask stops it when its input ends) and waits for it; returns
    /// how long that took.
    pub(crate) fn stop(&mut self) -> Duration {
        let started = Instant::now();
        if let Some((mut child, stdin)) = self.running.take() {
            drop(stdin);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if started.elapsed() > STOP_TIMEOUT => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        started.elapsed()
    }
}

impl Drop for OwnedServer {
    fn drop(&mut self) {
        self.stop();
    }
}
