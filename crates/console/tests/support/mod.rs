//! The browser harness: a console served in-process on 127.0.0.1:0 over the memory backend,
//! and headless Chromium driven over WebDriver by a chromedriver this harness starts on a free
//! port. Shared by the browser tests and `cargo xtask screenshots` (the `screenshots` example).
//!
//! `cargo xtask test` finds chromedriver and Chromium and passes them in `CM_CHROMEDRIVER` and
//! `CM_CHROMIUM`; without them, `chromedriver` and `chromium` on `PATH` are used, and when
//! those are missing the harness fails naming what to install.

#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cm_adapter_memory::{MemoryAgents, MemoryComponents, MemoryOrders};
use cm_console::{Access, Console, ConsoleSettings};
use cm_domain::{
    Action, Agent, AgentId, Command as Cmd, GroupName, OrderId, Report, ReportStatus, RequestId,
    Source, Target, TargetType, Timeout,
};
use cm_ports::{
    CommandManager, LocalNotifier, Ports, Reporter, Settings, SubmitRequest, SystemClock,
};
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

/// What to install when the browser is missing.
pub const INSTALL: &str = "apt-get install -y chromium chromium-driver";
pub const MANAGER_TOKEN: &str = "console-test-manager-token";

/// A console over the memory backend, served on 127.0.0.1:0.
pub struct Served {
    pub base: String,
    pub manager: CommandManager,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn manager() -> CommandManager {
    let orders = Arc::new(MemoryOrders::new());
    let requests = Arc::new(orders.requests());
    CommandManager::new(
        Ports {
            orders,
            agents: Arc::new(MemoryAgents::new()),
            components: Arc::new(MemoryComponents::new()),
            requests,
            notifier: Arc::new(LocalNotifier::new()),
            clock: Arc::new(SystemClock),
        },
        Settings::default(),
    )
}

/// Serves the console over a fresh memory backend; with `auth`, a login with
/// [`MANAGER_TOKEN`] is needed.
pub async fn serve(auth: bool) -> Served {
    let manager = manager();
    let access = Access {
        auth_enabled: auth,
        manager_tokens: vec![MANAGER_TOKEN.to_owned()],
        tls: false,
    };
    let settings = ConsoleSettings {
        refresh_ms: 300,
        ..ConsoleSettings::default()
    };
    let router = cm_console::router(Console::new(manager.clone(), settings, access));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.expect("console serves");
    });
    Served {
        base: format!("http://{addr}"),
        manager,
        task,
    }
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn agent(&self, id: &str, groups: &[&str]) {
        let agent = Agent::new(
            AgentId::parse(id, "id").expect("agent id"),
            groups
                .iter()
                .map(|g| GroupName::parse(g, "group").expect("group"))
                .collect(),
        );
        self.manager
            .put_agent(&agent)
            .await
            .expect("agent registered");
    }

    /// Submits `action` to `group` (as `user`) and answers its request id.
    pub async fn submit(&self, group: &str, action: &str, user: &str, args: Value) -> RequestId {
        let command = Cmd::new(
            Source::UsersServices,
            Some(user.to_owned()),
            Target::new(TargetType::Group, group).expect("target"),
            Action::new(action, args, "v1").expect("action"),
            Timeout::new(300).expect("timeout"),
        )
        .expect("command");
        self.manager
            .submit(SubmitRequest {
                commands: vec![command],
                idempotency: None,
            })
            .await
            .expect("submitted")[0]
            .request_id
    }

    /// `agent` takes its orders and reports each with `status`, `code` and `message`.
    pub async fn report_all(
        &self,
        agent: &str,
        status: ReportStatus,
        code: i64,
        message: &str,
    ) -> Vec<OrderId> {
        let id = AgentId::parse(agent, "id").expect("agent id");
        let orders = self
            .manager
            .poll(&id, 100, Duration::ZERO)
            .await
            .expect("poll");
        let report =
            Report::new(status, code, message, "{\"out\": \"<b>bold</b>\"}").expect("report");
        let mut done = Vec::new();
        for o in orders {
            self.manager
                .report(o.order_id(), &report, &Reporter::Anyone)
                .await
                .expect("report accepted");
            done.push(*o.order_id());
        }
        done
    }
}

/// chromedriver, started on a free port, ended when dropped (its Chromium with it).
pub struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    /// Ends chromedriver and every Chromium it started (they share its process group), also
    /// when a test failed before closing its session.
    fn drop(&mut self) {
        let group = self.child.id();
        if group > 1 {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{group}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

fn given_or_path(var: &str, names: &[&str]) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => names.iter().find_map(|n| on_path(n)),
    }
}

fn free_port() -> u16 {
    let l = StdListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind a free port");
    l.local_addr().expect("local address").port()
}

impl Driver {
    pub fn start() -> Self {
        let Some(path) = given_or_path("CM_CHROMEDRIVER", &["chromedriver"]) else {
            panic!(
                "chromedriver is missing: the console's browser tests need headless Chromium \
                 and its driver: {INSTALL} (or set CM_CHROMEDRIVER and CM_CHROMIUM)"
            );
        };
        let port = free_port();
        let child = Command::new(&path)
            .arg(format!("--port={port}"))
            // A group of its own, which its Chromium processes join: see `Drop`.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e} ({INSTALL})", path.display()));
        Self { child, port }
    }

    /// A new browser session in a fresh profile, its window `width`×`height`.
    pub async fn browser(&mut self, width: u32, height: u32) -> (Client, tempfile::TempDir) {
        let profile = tempfile::tempdir().expect("profile directory");
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        args.push(format!("--window-size={width},{height}"));
        let mut options = json!({ "args": args });
        if let Some(chromium) = given_or_path("CM_CHROMIUM", &["chromium", "chromium-browser"]) {
            options["binary"] = json!(chromium.display().to_string());
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".to_owned(), options);
        let url = format!("http://127.0.0.1:{}", self.port);
        // chromedriver takes a moment to listen: try until it answers, as long as it runs.
        let client = loop {
            let mut builder =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            builder.capabilities(caps.clone());
            match builder.connect(&url).await {
                Ok(c) => break c,
                Err(e) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!(
                            "chromedriver exited ({status}) before a session started: {e} ({INSTALL})"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        client
            .set_window_size(width, height)
            .await
            .expect("window size");
        (client, profile)
    }
}

/// Waits until `script` (a function body returning a boolean) is true in the page, checking
/// every 100 ms.
pub async fn wait_for(client: &Client, script: &str) {
    loop {
        match client.execute(script, vec![]).await {
            Ok(Value::Bool(true)) => return,
            Ok(_) => {}
            Err(e) => panic!("script failed: {e}\n{script}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The page's visible text.
pub async fn text(client: &Client) -> String {
    match client
        .execute(
            "return document.body ? document.body.innerText : '';",
            vec![],
        )
        .await
    {
        Ok(Value::String(s)) => s,
        other => panic!("page text: {other:?}"),
    }
}
