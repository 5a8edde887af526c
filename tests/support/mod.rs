//! Starts the real `command-manager` binary for end-to-end tests and talks to it over HTTP.

#![allow(dead_code, unreachable_pub)]

pub mod consumers;
pub mod rollout;
pub mod scenario;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// One running service process.
pub struct Service {
    child: Child,
    pub base: String,
    env: Vec<(String, String)>,
    logs: mpsc::Receiver<String>,
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_command-manager"))
}

impl Service {
    /// Starts the binary with `env` (on top of a clean `CM_` environment) on a free port and
    /// waits for its `listening` line.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::start_owned(env)
    }

    /// Starts the binary with `env` as [`Self::start`] does, from owned pairs (what
    /// [`Self::stop`] and [`Self::kill`] hand back, with changes).
    pub fn start_owned(env: Vec<(String, String)>) -> Self {
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .env("CM_HTTP__LISTEN", "127.0.0.1:0")
            .env("CM_LOG__FORMAT", "json")
            .env("CM_LOG__LEVEL", "info")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start command-manager");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("TEST_LOG").is_some() {
                        eprintln!("[service] {line}");
                    }
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        // Only the readers send: the channel ends when the process's output does.
        drop(tx);
        // Until the `listening` line, or until the process's output ends (it exited).
        let mut seen = Vec::new();
        loop {
            match rx.recv() {
                Ok(line) => {
                    let listening = serde_json::from_str::<Value>(&line)
                        .ok()
                        .filter(|v| v["message"] == "listening")
                        .and_then(|v| v["address"].as_str().map(str::to_owned));
                    if let Some(address) = listening {
                        return Self {
                            child,
                            base: format!("http://{address}"),
                            env,
                            logs: rx,
                        };
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "service did not start listening; its output:\n{}",
                        seen.join("\n")
                    );
                }
            }
        }
    }

    /// Stops the process with SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> Vec<(String, String)> {
        terminate(&self.child);
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "service exited with {status}");
        std::mem::take(&mut self.env)
    }

    /// Kills the process with SIGKILL (no clean shutdown: what a machine dying does) and
    /// returns its settings.
    pub fn kill(mut self) -> Vec<(String, String)> {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
        std::mem::take(&mut self.env)
    }

    /// Stops and starts the service again with the same settings.
    pub fn restart(self) -> Self {
        let env = self.stop();
        Self::start_owned(env)
    }

    /// The process id, to look at the process from outside (`/proc/<pid>/fd`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Log lines printed so far.
    pub fn drain_logs(&self) -> Vec<String> {
        self.logs.try_iter().collect()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
}

/// The longest `wait` a poll may ask for, and the `limits.max_poll_wait_secs` that allows it
/// (`("CM_LIMITS__MAX_POLL_WAIT_SECS", LONG_WAIT_SECS_TEXT)`). A poll given this wait that
/// returns with an order before it ended was woken, not ended by its wait (a poll looks in
/// storage once more when its wait ends).
pub const LONG_WAIT_SECS: u64 = 3600;
pub const LONG_WAIT_SECS_TEXT: &str = "3600";

/// The `cm_long_polls_open` gauge of the service: its polls parked, waiting for a wake-up.
pub async fn open_polls(c: &Client, svc: &Service) -> u64 {
    let (_, text) = c.get(&svc.url("/metrics")).await;
    text.as_str()
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("cm_long_polls_open "))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Waits until at least `n` polls of the service are parked.
pub async fn until_polls_open(c: &Client, svc: &Service, n: u64) {
    while open_polls(c, svc).await < n {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A small JSON client.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
}

impl Default for Client {
    fn default() -> Self {
        // ring, the workspace's one TLS crypto provider: a client panics without one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        }
    }
}

impl Client {
    /// A client without a request timeout, for a long-poll of [`LONG_WAIT_SECS`].
    pub fn patient() -> Self {
        Self {
            http: reqwest::Client::new(),
        }
    }

    pub async fn send(&self, method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, url: &str) -> (u16, Value) {
        self.send("GET", url, None).await
    }

    pub async fn post(&self, url: &str, body: Value) -> (u16, Value) {
        self.send("POST", url, Some(body)).await
    }

    pub async fn put(&self, url: &str, body: Value) -> (u16, Value) {
        self.send("PUT", url, Some(body)).await
    }
}
