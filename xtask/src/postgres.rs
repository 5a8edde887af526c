//! A throwaway PostgreSQL server for tests: `initdb` into a temporary directory, `postgres`
//! listening on 127.0.0.1 only, durability switched off for speed. [`PgServer`] stops the
//! server and removes the directory when dropped; a small watchdog process does the same if
//! this process dies without dropping it (Ctrl-C, a killed test run). [`start_with`] can keep
//! the cluster in a directory of the caller's instead, to stop and start a server on the same
//! data (the outage tests do), and can serve TLS with a certificate of the caller's (the TLS
//! tests do): [`TLS_CERT`] and [`TLS_KEY`] of a directory, copied next to the server with the
//! owner and mode PostgreSQL demands of a key, and TCP connections without TLS refused, as a
//! managed service that forces TLS would.
//!
//! PostgreSQL refuses to run as root. When we are root, the directory is handed to the
//! `postgres` system user (created by Debian's `postgresql` package) and the server binaries
//! run as that user through `setpriv` (which `exec`s, so the process we hold is the server
//! itself).

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::process;

/// The unprivileged user that runs the server when we are root.
const SERVER_USER: &str = "postgres";
/// How long the server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The server's certificate (chain) in PEM, in the directory given to `--tls`.
pub(crate) const TLS_CERT: &str = "server.crt";
/// The server's private key in PEM, in the directory given to `--tls`.
pub(crate) const TLS_KEY: &str = "server.key";

const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, postgres) not found on PATH or \
    in /usr/lib/postgresql/*/bin: install them with `apt-get install -y postgresql`";

/// A running throwaway server.
#[derive(Debug)]
pub(crate) struct PgServer {
    url: String,
    dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    /// `postgres -c` settings of TLS, when it serves TLS.
    tls_settings: Vec<String>,
    server: Option<Child>,
    watchdog: Option<Child>,
}

impl PgServer {
    /// `postgres://postgres@127.0.0.1:<port>/postgres`: the superuser, trusted, on the
    /// maintenance database (tests create their own databases from here).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // SIGINT is PostgreSQL's "fast shutdown": roll back, close connections, exit.
            process::stop_child(&mut server, "INT", STOP_TIMEOUT);
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Succeeds when the PostgreSQL server binaries are installed.
///
/// # Errors
/// What to install.
pub(crate) fn check() -> Result<(), String> {
    find_bin_dir()
        .map(|_| ())
        .ok_or_else(|| INSTALL_HINT.to_owned())
}

/// Starts a server on 127.0.0.1: on `port`, or on a free port when `None`.
///
/// # Errors
/// A message saying what is missing or what failed (with the server's log).
pub(crate) fn start(port: Option<u16>) -> Result<PgServer, String> {
    start_with(port, None, None)
}

/// As [`start`], with the cluster in `data` when given: initialised there when `data` holds
/// none yet, reused as it is otherwise, and kept when the server stops (only the temporary
/// directory of the socket and log is removed). When we are root, [`SERVER_USER`] must be
/// able to reach `data` (every parent directory searchable). With `tls`, a directory holding
/// [`TLS_CERT`] and [`TLS_KEY`], the server speaks TLS with them and refuses TCP connections
/// without it.
///
/// # Errors
/// As [`start`]; also when `data` cannot be created or handed to [`SERVER_USER`], or the
/// certificate and key cannot be copied.
pub(crate) fn start_with(
    port: Option<u16>,
    data: Option<&Path>,
    tls: Option<&Path>,
) -> Result<PgServer, String> {
    let bin = find_bin_dir().ok_or_else(|| INSTALL_HINT.to_owned())?;
    let as_root = is_root();
    let data = match data {
        Some(d) => {
            fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            // Absolute: the server binaries run in the temporary directory.
            Some(fs::canonicalize(d).map_err(|e| format!("{}: {e}", d.display()))?)
        }
        None => None,
    };
    let dir = process::temp_dir("postgres")?;
    // From here on, dropping `server` cleans up.
    let mut server = PgServer {
        url: String::new(),
        data: data.clone().unwrap_or_else(|| dir.join("data")),
        dir,
        bin,
        tls_settings: Vec::new(),
        server: None,
        watchdog: None,
    };
    if as_root {
        let status = Command::new("chown")
            .arg(format!("{SERVER_USER}:"))
            .arg(&server.dir)
            .status()
            .map_err(|e| format!("cannot run chown: {e}"))?;
        if !status.success() {
            return Err(format!(
                "cannot hand {} to user {SERVER_USER} (running as root, and PostgreSQL refuses \
                 root): is the `postgresql` package installed? ({INSTALL_HINT})",
                server.dir.display()
            ));
        }
    }
    if as_root && let Some(data) = &data {
        let status = Command::new("chown")
            .arg(format!("{SERVER_USER}:"))
            .arg(data)
            .status()
            .map_err(|e| format!("cannot run chown: {e}"))?;
        if !status.success() {
            return Err(format!(
                "cannot hand {} to user {SERVER_USER}",
                data.display()
            ));
        }
    }
    if !server.data.join("PG_VERSION").is_file() {
        initdb(&server, as_root)?;
    }
    if let Some(tls) = tls {
        server.tls_settings = install_tls(&server.dir, tls, as_root)?;
    }
    let attempts = if port.is_some() { 1 } else { 3 };
    let mut last_error = String::new();
    for _ in 0..attempts {
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        match spawn_server(&mut server, port, as_root) {
            Ok(()) => {
                server.url = format!("postgres://{SERVER_USER}@127.0.0.1:{port}/postgres");
                return Ok(server);
            }
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// Copies the certificate and key of `from` into `dir` (the server's own directory), owned by
/// the user that runs the server and the key readable by it alone (PostgreSQL refuses a key
/// others can read), writes an `hba_file` that lets TCP clients in only over TLS, and returns
/// the `-c` settings that use them.
fn install_tls(dir: &Path, from: &Path, as_root: bool) -> Result<Vec<String>, String> {
    let cert = dir.join(TLS_CERT);
    let key = dir.join(TLS_KEY);
    let hba = dir.join("pg_hba_tls.conf");
    for (name, to) in [(TLS_CERT, &cert), (TLS_KEY, &key)] {
        let source = from.join(name);
        fs::copy(&source, to).map_err(|e| {
            format!(
                "--tls {}: cannot copy {}: {e} (the directory must hold {TLS_CERT} and                  {TLS_KEY}, in PEM)",
                from.display(),
                source.display()
            )
        })?;
    }
    fs::write(
        &hba,
        "# Written by xtask: TCP only over TLS.\n\
         local all all trust\n\
         hostssl all all 127.0.0.1/32 trust\n",
    )
    .map_err(|e| format!("cannot write {}: {e}", hba.display()))?;
    let mode = |path: &Path, mode: u32| {
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(|e| format!("cannot chmod {}: {e}", path.display()))
    };
    mode(&cert, 0o644)?;
    mode(&key, 0o600)?;
    mode(&hba, 0o644)?;
    if as_root {
        let status = Command::new("chown")
            .arg(format!("{SERVER_USER}:"))
            .args([&cert, &key, &hba])
            .status()
            .map_err(|e| format!("cannot run chown: {e}"))?;
        if !status.success() {
            return Err(format!(
                "cannot hand the TLS files in {} to user {SERVER_USER}",
                dir.display()
            ));
        }
    }
    Ok(vec![
        "ssl=on".to_owned(),
        format!("ssl_cert_file={}", cert.display()),
        format!("ssl_key_file={}", key.display()),
        format!("hba_file={}", hba.display()),
    ])
}

/// The directory of `initdb` and `postgres`: from `PATH` (resolving symlinks, so Debian's
/// `/usr/lib/postgresql/<v>/bin` is found), else the newest `/usr/lib/postgresql/<v>/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    let has_all = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    let from_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("initdb"))
            .find(|p| p.is_file())
            .and_then(|p| fs::canonicalize(p).ok())
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .filter(|d| has_all(d))
    });
    from_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .filter(|(_, d)| has_all(d))
            .collect();
        versions.sort();
        versions.pop().map(|(_, d)| d)
    })
}

fn is_root() -> bool {
    // std has no geteuid: read it from /proc (Linux), else ask `id`.
    if let Ok(status) = fs::read_to_string("/proc/self/status")
        && let Some(line) = status.lines().find(|l| l.starts_with("Uid:"))
    {
        // Uid: real effective saved fs
        return line.split_whitespace().nth(2) == Some("0");
    }
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))
}

/// A command for one of the server binaries, run as [`SERVER_USER`] when we are root.
fn server_command(s: &PgServer, program: &str, as_root: bool) -> Command {
    let program = s.bin.join(program);
    let mut cmd = if as_root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            SERVER_USER,
            "--regid",
            SERVER_USER,
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    };
    // The server user may not be allowed into the caller's working directory.
    cmd.current_dir(&s.dir);
    cmd.env("LC_ALL", "C").env_remove("PGDATA");
    cmd
}

fn initdb(s: &PgServer, as_root: bool) -> Result<(), String> {
    let out = server_command(s, "initdb", as_root)
        .arg("--pgdata")
        .arg(&s.data)
        .args([
            "--username",
            SERVER_USER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
            "--no-instructions",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if as_root {
                format!("cannot run initdb through setpriv: {e} ({INSTALL_HINT})")
            } else {
                format!("cannot run initdb: {e} ({INSTALL_HINT})")
            }
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn spawn_server(s: &mut PgServer, port: u16, as_root: bool) -> Result<(), String> {
    let log_path = s.dir.join(format!("postgres-{port}.log"));
    let log = fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot share the log file: {e}"))?;
    let mut cmd = server_command(s, "postgres", as_root);
    cmd.arg("-D").arg(&s.data);
    cmd.args(["-p", &port.to_string()]);
    cmd.arg("-k").arg(&s.dir);
    for setting in [
        "listen_addresses=127.0.0.1",
        "fsync=off",
        "synchronous_commit=off",
        "full_page_writes=off",
        "max_connections=300",
        "shared_buffers=128MB",
        "log_min_messages=warning",
    ] {
        cmd.args(["-c", setting]);
    }
    for setting in &s.tls_settings {
        cmd.args(["-c", setting]);
    }
    // Its own process group: Ctrl-C in the terminal reaches us (and the watchdog cleans up),
    // not the server directly.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))?;
    let pid = child.id();
    s.server = Some(child);
    s.watchdog = process::spawn_watchdog("postgres", pid, &s.dir, Some("INT"), 200).ok();

    let started = Instant::now();
    loop {
        if let Some(server) = s.server.as_mut()
            && let Ok(Some(status)) = server.try_wait()
        {
            s.server = None;
            if let Some(mut w) = s.watchdog.take() {
                let _ = w.kill();
                let _ = w.wait();
            }
            return Err(format!(
                "postgres exited ({status}) before accepting connections:\n{}",
                fs::read_to_string(&log_path).unwrap_or_default()
            ));
        }
        if is_ready(s, port) {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            s.stop();
            return Err(format!(
                "postgres did not accept connections within {READY_TIMEOUT:?}:\n{}",
                fs::read_to_string(&log_path).unwrap_or_default()
            ));
        }
        sleep(Duration::from_millis(100));
    }
}

/// Ready once `postmaster.pid` says so (line 8 is the status PostgreSQL 10+ writes) and the
/// port takes connections.
fn is_ready(s: &PgServer, port: u16) -> bool {
    let status_ready = fs::File::open(s.data.join("postmaster.pid"))
        .map(|f| {
            BufReader::new(f)
                .lines()
                .nth(7)
                .and_then(Result::ok)
                .is_some_and(|l| l.trim() == "ready")
        })
        .unwrap_or(false);
    status_ready && std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// `cargo xtask postgres [--port P] [--data DIR] [--tls DIR]`: runs a server in the
/// foreground until Ctrl-C or the end of standard input; with `--data`, on the cluster in DIR
/// (initialised on first use, kept and reused: stop and start it again on the same data); with
/// `--tls`, speaking TLS only, with the [`TLS_CERT`] and [`TLS_KEY`] of DIR.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut tls = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--tls" {
            let dir = it.next().ok_or("--tls needs a directory")?;
            tls = Some(PathBuf::from(dir));
        } else {
            rest.push(arg.clone());
        }
    }
    let (port, data) = process::server_args("postgres", &rest)?;
    let server = start_with(port, data.as_deref(), tls.as_deref())?;
    println!("postgres ready {}", server.url());
    eprintln!(
        "export CM_TEST_POSTGRES_URL={} ; stop with Ctrl-C or end of input (Ctrl-D)",
        server.url()
    );
    process::wait_for_end_of_input();
    drop(server);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_server_takes_connections_and_is_gone_once_dropped() {
        let server = start(None).unwrap_or_else(|e| panic!("{e}"));
        let port: u16 = server
            .url()
            .rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .and_then(|p| p.parse().ok())
            .expect("a port in the URL");
        assert!(server.url().starts_with("postgres://postgres@127.0.0.1:"));
        assert!(std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok());
        let dir = server.dir.clone();
        assert!(dir.join("data").join("PG_VERSION").is_file());
        drop(server);
        assert!(!dir.exists(), "the data directory is removed");
        assert!(
            std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
            "the server is stopped"
        );
    }

    fn psql(server: &PgServer, sql: &str) -> String {
        let out = Command::new(server.bin.join("psql"))
            .args(["--no-psqlrc", "-At", "-d", server.url(), "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[test]
    fn a_server_on_a_data_directory_starts_again_on_the_same_data() {
        // Searchable by the server user (a plain temporary directory may not be).
        let parent = process::temp_dir("postgres").expect("temporary directory");
        let data = parent.join("cluster");
        let port = free_port().expect("a free port");
        let first = start_with(Some(port), Some(&data), None).unwrap_or_else(|e| panic!("{e}"));
        psql(
            &first,
            "CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)",
        );
        drop(first);
        assert!(data.join("PG_VERSION").is_file(), "the cluster is kept");
        let second = start_with(Some(port), Some(&data), None).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            second.url().contains(&format!(":{port}/")),
            "{}",
            second.url()
        );
        assert_eq!(psql(&second, "SELECT n FROM kept"), "42");
        drop(second);
        let _ = fs::remove_dir_all(&parent);
    }
}
