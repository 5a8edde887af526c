//! A throwaway single-node OpenSearch for tests: the launcher in `xtask/opensearch-node` (real
//! OpenSearch 2.19 jars from Maven Central, see its README) built with Maven when its build is
//! missing or older than its sources, then started on 127.0.0.1 in a fresh temporary data
//! directory. [`OpenSearchServer`] stops the node and removes the directory when dropped; the
//! node also exits by itself when our end of its standard input closes (this process died),
//! and a small watchdog process then removes the directory.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use crate::process;

/// How long the node may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a clean shutdown may take before the node is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The line the launcher prints once HTTP is bound and the cluster is at least yellow.
const READY_PREFIX: &str = "opensearch ready ";
const MAIN_CLASS: &str = "com.wazuh.xtask.OpenSearchNode";
/// The heap the node gets (plenty for tests).
const HEAP: &str = "512m";
/// Where Maven puts its artifacts when set (`-Dmaven.repo.local`).
const MAVEN_REPO_VAR: &str = "CM_MAVEN_REPO";

const INSTALL_HINT: &str = "install Java 17 and Maven with \
    `apt-get install -y openjdk-17-jdk-headless maven` (the JDK, not only the JRE: the launcher \
    is compiled on first use)";

/// A running node.
#[derive(Debug)]
pub(crate) struct OpenSearchServer {
    url: String,
    /// The data directory; removed on drop when we made it.
    dir: PathBuf,
    owns_dir: bool,
    node: Option<Child>,
    /// Held open: the node exits when it closes (`--exit-on-stdin-close`).
    stdin: Option<ChildStdin>,
    watchdog: Option<Child>,
}

impl OpenSearchServer {
    /// `http://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    fn stop(&mut self) {
        if let Some(mut node) = self.node.take() {
            // SIGTERM: the launcher's shutdown hook closes the node and exits 0.
            process::stop_child(&mut node, "TERM", STOP_TIMEOUT);
        }
        self.stdin.take();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if self.owns_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for OpenSearchServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn launcher_dir() -> PathBuf {
    crate::project_root().join("xtask").join("opensearch-node")
}

fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Succeeds when the node can be started: `java` is installed, and so are `mvn` and `javac`
/// when the launcher still has to be built.
///
/// # Errors
/// What to install.
pub(crate) fn check() -> Result<(), String> {
    if !runs("java", "-version") {
        return Err(format!("`java` not found on PATH: {INSTALL_HINT}"));
    }
    if needs_build(&launcher_dir()) {
        if !runs("mvn", "-v") {
            return Err(format!(
                "`mvn` not found on PATH (the OpenSearch launcher must be built): {INSTALL_HINT}"
            ));
        }
        if !runs("javac", "-version") {
            return Err(format!(
                "`javac` not found on PATH (the OpenSearch launcher must be built): {INSTALL_HINT}"
            ));
        }
    }
    Ok(())
}

/// The newest modification time of `path` and, for a directory, of everything below it.
fn newest(path: &Path) -> Option<SystemTime> {
    let meta = fs::metadata(path).ok()?;
    let mut latest = meta.modified().ok()?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).ok()?.filter_map(Result::ok) {
            if let Some(t) = newest(&entry.path()) {
                latest = latest.max(t);
            }
        }
    }
    Some(latest)
}

/// The file written after each successful build: the build is current while it is newer than
/// `pom.xml` and every source.
fn stamp(dir: &Path) -> PathBuf {
    dir.join("target").join("opensearch-node.stamp")
}

fn needs_build(dir: &Path) -> bool {
    let target = dir.join("target");
    let built = [
        target.join("lib"),
        target.join("opensearch-node.jar"),
        stamp(dir),
    ];
    if built.iter().any(|p| !p.exists()) {
        return true;
    }
    let Ok(stamped) = fs::metadata(stamp(dir)).and_then(|m| m.modified()) else {
        return true;
    };
    [dir.join("pom.xml"), dir.join("src")]
        .iter()
        .filter_map(|p| newest(p))
        .any(|t| t > stamped)
}

/// `mvn -q -B -f xtask/opensearch-node/pom.xml package -DskipTests` (with
/// `-Dmaven.repo.local=$CM_MAVEN_REPO` when set), when the build is missing or stale.
fn build_if_needed(dir: &Path) -> Result<(), String> {
    if !needs_build(dir) {
        return Ok(());
    }
    check()?;
    eprintln!("xtask: building the OpenSearch launcher with Maven (first use downloads ~90 MB)");
    let mut mvn = Command::new("mvn");
    mvn.args(["-q", "-B", "-f"])
        .arg(dir.join("pom.xml"))
        .args(["package", "-DskipTests"]);
    if let Some(repo) = std::env::var_os(MAVEN_REPO_VAR).filter(|r| !r.is_empty()) {
        let mut arg = std::ffi::OsString::from("-Dmaven.repo.local=");
        arg.push(repo);
        mvn.arg(arg);
    }
    let out = mvn
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run mvn: {e} ({INSTALL_HINT})"))?;
    if !out.status.success() {
        return Err(format!(
            "building the OpenSearch launcher failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    fs::write(stamp(dir), b"built by cargo xtask\n")
        .map_err(|e| format!("cannot write {}: {e}", stamp(dir).display()))?;
    // A class-data-sharing archive made now cuts every later start-up by about a third (see
    // the launcher's README); best effort: the node starts without it too.
    let _ = fs::remove_file(cds_archive(dir));
    Ok(())
}

fn classpath(dir: &Path) -> String {
    let target = dir.join("target");
    format!(
        "{}:{}/*",
        target.join("opensearch-node.jar").display(),
        target.join("lib").display()
    )
}

fn cds_archive(dir: &Path) -> PathBuf {
    dir.join("target").join("opensearch-node.jsa")
}

/// Creates the class-data-sharing archive with one training start (about 8 s, once per
/// build); `false` when that failed (the node then starts without it).
fn ensure_cds_archive(dir: &Path) -> bool {
    let archive = cds_archive(dir);
    if archive.is_file() {
        return true;
    }
    let training = dir.join("target").join("cds-training");
    let _ = fs::remove_dir_all(&training);
    let ok = Command::new("java")
        .args(["-Xlog:disable", "-Xlog:all=error:stderr"])
        .arg(format!("-XX:ArchiveClassesAtExit={}", archive.display()))
        .args([format!("-Xms{HEAP}"), format!("-Xmx{HEAP}")])
        .arg("-cp")
        .arg(classpath(dir))
        .arg(MAIN_CLASS)
        .args(["--port", "0", "--data"])
        .arg(&training)
        .arg("--exit-when-ready")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = fs::remove_dir_all(&training);
    if !ok {
        let _ = fs::remove_file(&archive);
    }
    ok && archive.is_file()
}

/// Builds the launcher when needed and starts a node on 127.0.0.1: on `port` (a free one when
/// `None`), with its data in `data` (kept) or in a fresh temporary directory (removed when the
/// server is dropped).
///
/// # Errors
/// A message saying what is missing or what failed (with the node's output).
pub(crate) fn start(port: Option<u16>, data: Option<PathBuf>) -> Result<OpenSearchServer, String> {
    let launcher = launcher_dir();
    build_if_needed(&launcher)?;
    if !runs("java", "-version") {
        return Err(format!("`java` not found on PATH: {INSTALL_HINT}"));
    }
    let cds = ensure_cds_archive(&launcher);
    let (dir, owns_dir) = match data {
        Some(d) => {
            fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            (d, false)
        }
        None => (process::temp_dir("opensearch")?, true),
    };
    // From here on, dropping `server` cleans up.
    let mut server = OpenSearchServer {
        url: String::new(),
        dir,
        owns_dir,
        node: None,
        stdin: None,
        watchdog: None,
    };
    let log_path = server.dir.join("launcher-stderr.log");
    let log = fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;

    let mut cmd = Command::new("java");
    cmd.args([format!("-Xms{HEAP}"), format!("-Xmx{HEAP}")]);
    if cds {
        cmd.args(["-Xlog:disable", "-Xlog:all=warning:stderr"])
            .arg(format!(
                "-XX:SharedArchiveFile={}",
                cds_archive(&launcher).display()
            ));
    }
    cmd.arg("-cp")
        .arg(classpath(&launcher))
        .arg(MAIN_CLASS)
        .args(["--port", &port.unwrap_or(0).to_string(), "--data"])
        .arg(&server.dir)
        .arg("--exit-on-stdin-close");
    // Its own process group: Ctrl-C in a terminal reaches us, and the node then exits because
    // its standard input closes.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut node = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start java: {e} ({INSTALL_HINT})"))?;
    server.stdin = node.stdin.take();
    let stdout = node.stdout.take().expect("stdout is piped");
    let pid = node.id();
    server.node = Some(node);
    if owns_dir {
        server.watchdog = process::spawn_watchdog("opensearch", pid, &server.dir, None, 300).ok();
    }

    // Read stdout on a thread (and keep draining it, so the node never blocks on a full pipe).
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix(READY_PREFIX) {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let started = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(url) => {
                server.url = url;
                return Ok(server);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed without the ready line: the node is exiting.
                sleep(Duration::from_millis(500));
            }
        }
        let exited = server
            .node
            .as_mut()
            .and_then(|n| n.try_wait().ok().flatten());
        if let Some(status) = exited {
            server.node = None;
            return Err(format!(
                "opensearch exited ({status}) before it was ready; its output:\n{}",
                fs::read_to_string(&log_path).unwrap_or_default()
            ));
        }
        if started.elapsed() > READY_TIMEOUT {
            let output = fs::read_to_string(&log_path).unwrap_or_default();
            server.stop();
            return Err(format!(
                "opensearch was not ready within {READY_TIMEOUT:?}; its output:\n{output}"
            ));
        }
    }
}

/// `cargo xtask opensearch [--port P] [--data DIR]`: runs a node in the foreground until
/// Ctrl-C or the end of standard input.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let (port, data) = process::server_args("opensearch", args)?;
    let started = Instant::now();
    let server = start(port, data)?;
    println!("{READY_PREFIX}{}", server.url());
    eprintln!(
        "started in {:.1?}; export OPENSEARCH_URL={} ; stop with Ctrl-C or end of input (Ctrl-D)",
        started.elapsed(),
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
    fn a_started_node_answers_and_is_gone_once_dropped() {
        let server = start(None, None).unwrap_or_else(|e| panic!("{e}"));
        let port: u16 = server
            .url()
            .strip_prefix("http://127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .expect("http://127.0.0.1:<port>");
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        let dir = server.dir.clone();
        assert_eq!(
            fs::read_to_string(dir.join("ready")).expect("ready file"),
            server.url()
        );
        drop(server);
        assert!(!dir.exists(), "the data directory is removed");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the node is stopped"
        );
    }

    #[test]
    fn a_build_is_stale_without_its_stamp() {
        let dir = std::env::temp_dir().join(format!("cm-os-stamp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("target").join("lib")).unwrap();
        fs::create_dir_all(dir.join("src")).unwrap();
        fs::write(dir.join("pom.xml"), "<project/>").unwrap();
        fs::write(dir.join("target").join("opensearch-node.jar"), "").unwrap();
        assert!(needs_build(&dir));
        fs::write(stamp(&dir), "").unwrap();
        assert!(!needs_build(&dir));
        sleep(Duration::from_millis(20));
        fs::write(dir.join("src").join("New.java"), "class New {}").unwrap();
        assert!(needs_build(&dir), "a newer source makes the build stale");
        let _ = fs::remove_dir_all(&dir);
    }
}
