//! A throwaway OpenSearch for tests, one node or a cluster of several (`--nodes N`): the launcher in `xtask/opensearch-node` (real
//! OpenSearch 2.19 jars from Maven Central, see its README) built with Maven when its build is
//! missing or older than its sources, then started on 127.0.0.1 in a fresh temporary data
//! directory. [`OpenSearchServer`] stops the node and removes the directory when dropped; the
//! node also exits by itself when our end of its standard input closes (this process died),
//! and a small watchdog process then removes the directory.
//!
//! A cluster of N nodes on base port P (see [`Cluster`]): node i (1-based) serves HTTP on
//! P+i-1 and transport on P+N+i-1, its data in `DIR/node-i`; the nodes find each other through
//! those transport ports (`discovery.seed_hosts`) and the first start elects a cluster manager
//! among all of them (`cluster.initial_cluster_manager_nodes`). `--cluster-node i/N` runs node
//! i alone, with the same ports and data: how a test brings back a node it killed.

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
/// The heap of each node of a cluster (three share a small machine).
const CLUSTER_HEAP: &str = "384m";
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
    start_node(port, data, HEAP, &[])
}

/// [`start`] with `heap` and `extra` launcher arguments (a cluster node's name and settings).
fn start_node(
    port: Option<u16>,
    data: Option<PathBuf>,
    heap: &str,
    extra: &[String],
) -> Result<OpenSearchServer, String> {
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
    cmd.args([format!("-Xms{heap}"), format!("-Xmx{heap}")]);
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
        .args(extra)
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

/// The layout of a cluster of `nodes` nodes on base port `port` (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cluster {
    pub(crate) nodes: u16,
    pub(crate) port: u16,
}

impl Cluster {
    fn http_port(self, node: u16) -> u16 {
        self.port + node - 1
    }

    fn transport_port(self, node: u16) -> u16 {
        self.port + self.nodes + node - 1
    }

    /// The launcher arguments of node `node` (1-based).
    fn arguments(self, node: u16) -> Vec<String> {
        let seeds: Vec<String> = (1..=self.nodes)
            .map(|i| format!("127.0.0.1:{}", self.transport_port(i)))
            .collect();
        let names: Vec<String> = (1..=self.nodes).map(|i| format!("node-{i}")).collect();
        let setting = |kv: String| ["-E".to_owned(), kv];
        let mut args = vec![
            "--cluster-name".to_owned(),
            format!("cm-cluster-{}", self.port),
            "--node-name".to_owned(),
            format!("node-{node}"),
        ];
        for kv in [
            "discovery.type=zen".to_owned(),
            format!("transport.port={}", self.transport_port(node)),
            format!("discovery.seed_hosts={}", seeds.join(",")),
            format!("cluster.initial_cluster_manager_nodes={}", names.join(",")),
        ] {
            args.extend(setting(kv));
        }
        args
    }

    /// Node `node`'s data directory under `data`.
    fn data(data: Option<&Path>, node: u16) -> Option<PathBuf> {
        data.map(|d| d.join(format!("node-{node}")))
    }

    /// Starts node `node` (1-based) on its ports, with its data under `data` (a fresh temporary
    /// directory of its own when `None`).
    fn start_node(self, node: u16, data: Option<&Path>) -> Result<OpenSearchServer, String> {
        start_node(
            Some(self.http_port(node)),
            Self::data(data, node),
            CLUSTER_HEAP,
            &self.arguments(node),
        )
        .map_err(|e| format!("node {node} of {}: {e}", self.nodes))
    }

    /// Starts every node at once (a cluster forms once most of them are up).
    fn start(self, data: Option<&Path>) -> Result<Vec<OpenSearchServer>, String> {
        let started: Vec<Result<OpenSearchServer, String>> = std::thread::scope(|scope| {
            let starts: Vec<_> = (1..=self.nodes)
                .map(|node| scope.spawn(move || self.start_node(node, data)))
                .collect();
            starts
                .into_iter()
                .map(|s| {
                    s.join()
                        .unwrap_or_else(|_| Err("a start panicked".to_owned()))
                })
                .collect()
        });
        // On any failure, the nodes that started stop as they are dropped here.
        started.into_iter().collect()
    }
}

/// A base port with the `2 * nodes` ports after it free, outside Linux's ephemeral range
/// (32768–60999) so that no outgoing connection takes one while its node is down.
fn free_base(nodes: u16) -> Result<u16, String> {
    let seed = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    let free = |p: u16| std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, p)).is_ok();
    for i in 0..2_000_u32 {
        let base = 21_000 + (seed.wrapping_add(i.wrapping_mul(7_919)) % 11_000) as u16;
        if (base..base + 2 * nodes).all(free) {
            return Ok(base);
        }
    }
    Err(format!(
        "no {} free ports in a row in 21000..32000",
        2 * nodes
    ))
}

/// What `cargo xtask opensearch` was asked for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Args {
    port: Option<u16>,
    data: Option<PathBuf>,
    nodes: Option<u16>,
    /// `--cluster-node i/N`: (i, N).
    cluster_node: Option<(u16, u16)>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut out = Args::default();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--nodes" => {
                let value = it.next().ok_or("--nodes needs a number")?;
                let n = value
                    .parse::<u16>()
                    .ok()
                    .filter(|n| (1..=9).contains(n))
                    .ok_or_else(|| format!("--nodes {value:?}: a number from 1 to 9"))?;
                out.nodes = Some(n);
            }
            "--cluster-node" => {
                let value = it.next().ok_or("--cluster-node needs i/N")?;
                let parsed = value
                    .split_once('/')
                    .and_then(|(i, n)| Some((i.parse::<u16>().ok()?, n.parse::<u16>().ok()?)))
                    .filter(|&(i, n)| (1..=9).contains(&n) && (1..=n).contains(&i))
                    .ok_or_else(|| {
                        format!("--cluster-node {value:?}: i/N with 1 <= i <= N <= 9")
                    })?;
                out.cluster_node = Some(parsed);
            }
            _ => rest.push(arg.clone()),
        }
    }
    (out.port, out.data) = process::server_args("opensearch", &rest)?;
    if out.cluster_node.is_some() {
        if out.nodes.is_some() {
            return Err("--cluster-node and --nodes exclude each other".to_owned());
        }
        if out.port.is_none() || out.data.is_none() {
            return Err(
                "--cluster-node needs the cluster's --port and --data (those it was started with)"
                    .to_owned(),
            );
        }
    }
    Ok(out)
}

/// `cargo xtask opensearch [--port P] [--data DIR] [--nodes N | --cluster-node i/N]`: runs a
/// node, or the N nodes of a cluster (base port P), or node i of such a cluster, in the
/// foreground until Ctrl-C or the end of standard input; prints one ready line per node.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let args = parse(args)?;
    let started = Instant::now();
    let servers = match (args.nodes, args.cluster_node) {
        (None | Some(1), None) => vec![start(args.port, args.data)?],
        (Some(nodes), None) => {
            let port = match args.port {
                Some(p) => p,
                None => free_base(nodes)?,
            };
            Cluster { nodes, port }.start(args.data.as_deref())?
        }
        (_, Some((node, nodes))) => {
            let port = args.port.ok_or("--cluster-node needs --port")?;
            vec![Cluster { nodes, port }.start_node(node, args.data.as_deref())?]
        }
    };
    for server in &servers {
        println!("{READY_PREFIX}{}", server.url());
    }
    let urls: Vec<&str> = servers.iter().map(OpenSearchServer::url).collect();
    eprintln!(
        "started in {:.1?}; export OPENSEARCH_URL={} ; stop with Ctrl-C or end of input (Ctrl-D)",
        started.elapsed(),
        urls.join(",")
    );
    process::wait_for_end_of_input();
    // Stopped together: each gets its SIGTERM from its own thread.
    std::thread::scope(|scope| {
        for server in servers {
            scope.spawn(move || drop(server));
        }
    });
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
    fn a_cluster_gives_each_node_its_ports_and_names_all_of_them() {
        let c = Cluster {
            nodes: 3,
            port: 21_000,
        };
        assert_eq!((c.http_port(1), c.http_port(3)), (21_000, 21_002));
        assert_eq!((c.transport_port(1), c.transport_port(3)), (21_003, 21_005));
        let args = c.arguments(2).join(" ");
        assert!(args.contains("--node-name node-2"), "{args}");
        assert!(args.contains("--cluster-name cm-cluster-21000"), "{args}");
        assert!(args.contains("-E transport.port=21004"), "{args}");
        assert!(
            args.contains(
                "-E discovery.seed_hosts=127.0.0.1:21003,127.0.0.1:21004,127.0.0.1:21005"
            ),
            "{args}"
        );
        assert!(
            args.contains("-E cluster.initial_cluster_manager_nodes=node-1,node-2,node-3"),
            "{args}"
        );
    }

    #[test]
    fn cluster_arguments_are_parsed_and_checked() {
        let args = |a: &[&str]| parse(&a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(
            args(&["--nodes", "3", "--port", "21000"]),
            Ok(Args {
                port: Some(21_000),
                nodes: Some(3),
                ..Args::default()
            })
        );
        assert_eq!(
            args(&["--cluster-node", "2/3", "--port", "21000", "--data", "/d"]),
            Ok(Args {
                port: Some(21_000),
                data: Some(PathBuf::from("/d")),
                cluster_node: Some((2, 3)),
                ..Args::default()
            })
        );
        assert!(args(&["--cluster-node", "2/3", "--port", "21000"]).is_err());
        assert!(args(&["--cluster-node", "4/3", "--port", "1", "--data", "/d"]).is_err());
        assert!(args(&["--nodes", "0"]).is_err());
        assert!(args(&["--nodes", "3", "--cluster-node", "1/3"]).is_err());
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
