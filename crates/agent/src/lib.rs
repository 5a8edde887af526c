//! `cm-agent`: a reference agent (docs/agent.md). It long-polls the command manager for its
//! orders, forever, and runs one handler per order: `DIR/<action>`, a regular executable file
//! directly in the handler directory, with no shell, the order's `args` as JSON on stdin, and
//! reports `in_progress`, then `success` or `failure` with the exit code, the last line of
//! stderr and the tail of stdout. An order it already ran is never run again (its result is
//! reported again); SIGTERM stops it cleanly.

pub mod handler;
pub mod state;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use cm_client::{Client, Credentials, Error, Report, RetryPolicy};
use cm_domain::Order;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::handler::{Job, NO_HANDLER, Refused};
use crate::state::{Entry, State};

/// The exit code reported for a handler the agent killed when it was stopped (128 + SIGTERM).
pub const INTERRUPTED: i16 = 143;

/// Runs a handler for each order of one agent and reports what it did.
#[derive(Debug, Clone, Parser)]
#[command(name = "cm-agent", version, about, long_about = None)]
pub struct Args {
    /// The command manager's URL.
    #[arg(long, env = "CM_URL")]
    pub url: String,
    /// This agent's id, as registered.
    #[arg(long, env = "CM_AGENT_ID")]
    pub id: String,
    /// The agent's key (prefer --key-file: a command line is visible to other users).
    #[arg(
        long,
        env = "CM_KEY",
        conflicts_with = "key_file",
        hide_env_values = true,
        // Keys are URL-safe base64: one may start with `-`.
        allow_hyphen_values = true
    )]
    pub key: Option<String>,
    /// A file holding the agent's key (surrounding white space ignored).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// The handler directory: the action NAME runs DIR/NAME.
    #[arg(long, value_name = "DIR")]
    pub handlers: PathBuf,
    /// Where the agent remembers the orders it ran, across restarts (in memory only without).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How many handlers run at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_parallel: u32,
    /// A handler's time limit in seconds; at it the handler is killed and code 124 reported.
    #[arg(long, value_name = "S", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_default: u64,
    /// How long a poll waits for an order, in seconds (the service's limit applies).
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub poll_wait: u64,
    /// How long state entries are kept, in seconds (default 7 days).
    #[arg(long, value_name = "S", default_value_t = 7 * 24 * 3600)]
    pub state_max_age: u64,
    /// On SIGTERM, how long running handlers may finish, in seconds, before they are killed
    /// (and reported as failed with code 143).
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub grace: u64,
    /// A PEM file of CA certificates to trust for https URLs.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// The binary's entry point.
#[must_use]
pub fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cm-agent: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async move {
        let agent = match Agent::new(&args) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("cm-agent: {e}");
                return ExitCode::from(2);
            }
        };
        agent.run(terminated()).await;
        ExitCode::SUCCESS
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn log(msg: &str) {
    eprintln!("cm-agent: {msg}");
}

/// One agent: its client, handler directory, settings and memory.
#[derive(Debug)]
pub struct Agent {
    client: Client,
    id: String,
    handlers: PathBuf,
    state: State,
    max_parallel: usize,
    timeout: Duration,
    poll_wait: u64,
    state_max_age: Duration,
    grace: Duration,
    /// Orders whose handler runs in this process now.
    running: Mutex<HashSet<String>>,
}

impl Agent {
    /// # Errors
    /// The text of what is wrong with the settings.
    pub fn new(args: &Args) -> Result<Arc<Self>, String> {
        let key = match (&args.key, &args.key_file) {
            (Some(k), _) => k.trim().to_owned(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read the key file {}: {e}", f.display()))?
                .trim()
                .to_owned(),
            (None, None) => return Err("give the agent's key: --key or --key-file".into()),
        };
        if key.is_empty() {
            return Err("the agent's key is empty".into());
        }
        let meta = std::fs::metadata(&args.handlers)
            .map_err(|e| format!("handler directory {}: {e}", args.handlers.display()))?;
        if !meta.is_dir() {
            return Err(format!(
                "handler directory {}: not a directory",
                args.handlers.display()
            ));
        }
        let handlers = std::fs::canonicalize(&args.handlers)
            .map_err(|e| format!("handler directory {}: {e}", args.handlers.display()))?;
        let mut builder = Client::builder(&args.url)
            .credentials(Credentials::Basic {
                id: args.id.clone(),
                key,
            })
            // The agent retries by itself, forever, with its own backoff.
            .retry(RetryPolicy {
                attempts: 3,
                base: Duration::from_millis(200),
                max: Duration::from_secs(5),
            });
        if let Some(ca) = &args.ca {
            let pem =
                std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
            builder = builder.ca_pem(pem);
        }
        let client = builder.build().map_err(|e| e.to_string())?;
        let state = State::open(args.state_dir.clone()).map_err(|e| {
            format!(
                "state directory {}: {e}",
                args.state_dir
                    .as_deref()
                    .unwrap_or_else(|| ".".as_ref())
                    .display()
            )
        })?;
        Ok(Arc::new(Self {
            client,
            id: args.id.clone(),
            handlers,
            state,
            max_parallel: args.max_parallel as usize,
            timeout: Duration::from_secs(args.timeout_default),
            poll_wait: args.poll_wait,
            state_max_age: Duration::from_secs(args.state_max_age),
            grace: Duration::from_secs(args.grace),
            running: Mutex::new(HashSet::new()),
        }))
    }

    /// Polls and runs until `shutdown` resolves; then takes no more orders, lets running
    /// handlers finish for the grace period, kills the rest and reports them.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let slots = Arc::new(Semaphore::new(self.max_parallel));
        let mut tasks = JoinSet::new();
        let mut backoff = Duration::from_millis(500);
        let mut last_prune = None::<tokio::time::Instant>;
        log(&format!("agent {} polling {}", self.id, self.client.base()));
        loop {
            if last_prune.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
                let removed = self.state.prune(self.state_max_age);
                if removed > 0 {
                    log(&format!("pruned {removed} old state entries"));
                }
                last_prune = Some(tokio::time::Instant::now());
            }
            while tasks.try_join_next().is_some() {}
            // Take only as many orders as there are free slots; wait for one when none is.
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    () = &mut shutdown => break,
                    _ = tasks.join_next() => continue,
                }
            }
            let limit = u32::try_from(free).unwrap_or(u32::MAX).min(100);
            let polled = tokio::select! {
                () = &mut shutdown => break,
                r = self.client.poll(&self.id, self.poll_wait, limit) => r,
            };
            match polled {
                Ok(orders) => {
                    backoff = Duration::from_millis(500);
                    for order in orders {
                        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                            break;
                        };
                        let me = Arc::clone(&self);
                        tasks.spawn(async move {
                            me.handle(order).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    log(&format!("poll failed, retrying in {backoff:?}: {e}"));
                    let wait = match &e {
                        Error::Api {
                            retry_after: Some(s),
                            ..
                        } => backoff.max(Duration::from_secs(*s)),
                        _ => backoff,
                    };
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        log("stopping: no more orders taken");
        let finished = tokio::time::timeout(self.grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            // Dropping the tasks kills their handlers (kill on drop).
            tasks.shutdown().await;
            let left: Vec<String> = self.running.lock().expect("running").drain().collect();
            for order_id in left {
                let report = Report {
                    status: "failure".into(),
                    code: INTERRUPTED,
                    message: "interrupted: the agent was stopped while the handler ran".into(),
                    data: String::new(),
                };
                self.remember(&order_id, &report);
                if let Err(e) = self.client.report(&order_id, &report).await {
                    log(&format!("order {order_id}: cannot report: {e}"));
                }
            }
        }
        log("stopped");
    }

    fn remember(&self, order_id: &str, r: &Report) {
        let entry = Entry::Done {
            status: r.status.clone(),
            code: r.code,
            message: r.message.clone(),
            data: r.data.clone(),
        };
        if let Err(e) = self.state.put(order_id, &entry) {
            log(&format!("order {order_id}: cannot write state: {e}"));
        }
    }

    /// One delivered order, from the check of the state to the final report.
    async fn handle(&self, order: Order) {
        let order_id = order.order_id().to_string();
        if !self
            .running
            .lock()
            .expect("running")
            .insert(order_id.clone())
        {
            // Redelivered while its handler still runs here: the running one will report.
            return;
        }
        self.handle_once(&order, &order_id).await;
        self.running.lock().expect("running").remove(&order_id);
    }

    async fn handle_once(&self, order: &Order, order_id: &str) {
        match self.state.get(order_id) {
            Some(Entry::Done {
                status,
                code,
                message,
                data,
            }) => {
                log(&format!("order {order_id}: ran already, reporting again"));
                self.report_final(
                    order_id,
                    &Report {
                        status,
                        code,
                        message,
                        data,
                    },
                )
                .await;
                return;
            }
            Some(Entry::Started) => {
                // Started by an earlier process that stopped before the handler ended: never
                // run twice, report that it was interrupted.
                let report = Report {
                    status: "failure".into(),
                    code: INTERRUPTED,
                    message: "interrupted: the agent stopped while the handler ran; not run again"
                        .into(),
                    data: String::new(),
                };
                self.remember(order_id, &report);
                self.report_final(order_id, &report).await;
                return;
            }
            None => {}
        }
        let action = order.action().name();
        let path = match handler::resolve(&self.handlers, action) {
            Ok(p) => p,
            Err(why) => {
                let message = match why {
                    Refused::BadName => format!("no handler: {action:?} is not a handler name"),
                    Refused::Missing => format!("no handler for action {action:?}"),
                };
                let report = Report {
                    status: "failure".into(),
                    code: NO_HANDLER,
                    message: handler::last_line(message.as_bytes()),
                    data: String::new(),
                };
                log(&format!("order {order_id}: {}", report.message));
                self.remember(order_id, &report);
                self.report_final(order_id, &report).await;
                return;
            }
        };
        let started = Report {
            status: "in_progress".into(),
            code: 0,
            message: String::new(),
            data: String::new(),
        };
        match self.client.report(order_id, &started).await {
            Ok(_) => {}
            // Finished already (expired, cancelled) or not ours: nothing to run.
            Err(e) if matches!(e.status().map(|s| s.as_u16()), Some(403 | 404 | 409)) => {
                log(&format!("order {order_id}: not run: {e}"));
                return;
            }
            Err(e) => log(&format!(
                "order {order_id}: cannot report in_progress, running anyway: {e}"
            )),
        }
        if let Err(e) = self.state.put(order_id, &Entry::Started) {
            log(&format!(
                "order {order_id}: cannot write state, not running: {e}"
            ));
            return;
        }
        let job = Job {
            path,
            cwd: self.handlers.clone(),
            stdin: serde_json::to_vec(order.action().args()).unwrap_or_default(),
            env: vec![
                ("CM_ORDER_ID".into(), order_id.to_owned()),
                ("CM_REQUEST_ID".into(), order.request_id().to_string()),
                ("CM_ACTION".into(), action.to_owned()),
                ("CM_AGENT_ID".into(), self.id.clone()),
            ],
            timeout: self.timeout,
        };
        log(&format!("order {order_id}: running {action}"));
        let report = match handler::run(&job).await {
            Ok(o) => Report {
                status: if o.code == 0 { "success" } else { "failure" }.into(),
                code: o.code,
                message: if o.code == handler::TIMED_OUT && o.message.is_empty() {
                    format!("timed out after {}s", self.timeout.as_secs())
                } else {
                    o.message
                },
                data: o.data,
            },
            Err(e) => Report {
                status: "failure".into(),
                code: 126,
                message: handler::last_line(e.as_bytes()),
                data: String::new(),
            },
        };
        log(&format!(
            "order {order_id}: {} (code {})",
            report.status, report.code
        ));
        self.remember(order_id, &report);
        self.report_final(order_id, &report).await;
    }

    /// Reports a final result, retrying with backoff until the service takes it or refuses
    /// it for good (the order ended otherwise, or is unknown).
    async fn report_final(&self, order_id: &str, report: &Report) {
        let mut backoff = Duration::from_millis(500);
        for _ in 0..20 {
            match self.client.report(order_id, report).await {
                Ok(_) => return,
                Err(e) if e.status().is_some_and(|s| s.is_client_error()) => {
                    log(&format!("order {order_id}: report refused: {e}"));
                    return;
                }
                Err(e) => {
                    log(&format!("order {order_id}: report failed, retrying: {e}"));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        log(&format!(
            "order {order_id}: giving up reporting; it is reported again when redelivered"
        ));
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Args;

    #[test]
    fn a_key_may_start_with_a_hyphen() {
        let a = Args::try_parse_from([
            "cm-agent",
            "--url",
            "http://127.0.0.1:8080",
            "--id",
            "a1",
            "--key",
            "-lX_9",
            "--handlers",
            "/tmp",
        ])
        .unwrap();
        assert_eq!(a.key.as_deref(), Some("-lX_9"));
    }
}
