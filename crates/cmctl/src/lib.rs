//! `cmctl`: the command manager's command line for operators (docs/cli.md).
//!
//! Human output by default (aligned tables), `--json` for scripts; errors on stderr. Exit
//! codes: 0 success, 1 the thing asked for failed (a request that ended with failed orders, or
//! stopped, cancelled or aborted), 2 a usage error or an error answered by the API (its
//! message is printed).

mod import;
mod render;
mod wait;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use cm_client::{
    Client, Credentials, NewCommand, OrderFilter, RateSpec, RequestFilter, ScheduleSpec, TargetRef,
};
use serde_json::{Value, json};

use crate::render::{Out, table};

/// Drives the command manager: submit commands to agents, groups and server components, follow
/// and steer requests, register agents.
#[derive(Debug, Parser)]
#[command(name = "cmctl", version, about, long_about = None)]
pub struct Cli {
    /// The command manager's URL.
    #[arg(
        long,
        env = "CM_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// A manager's bearer token (needed when the service has `auth.enabled`).
    #[arg(long, env = "CM_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A PEM file of CA certificates to trust for https URLs.
    #[arg(long, value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,
    /// Machine output: one JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Submit a command to an agent, a group or a server component; prints the request id.
    Submit(Box<Submit>),
    /// List requests, newest first.
    Requests {
        /// Only requests in this state (running, paused, completed, …).
        #[arg(long)]
        state: Option<String>,
        /// Only requests of this action.
        #[arg(long)]
        action: Option<String>,
        /// Only requests of this user.
        #[arg(long)]
        user: Option<String>,
        /// How many to list (at most 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one request: its record, counts and results.
    Request {
        id: String,
        /// Follow it until it finishes.
        #[arg(long)]
        watch: bool,
    },
    /// Hold a request's orders not handed out yet.
    Pause { id: String },
    /// Let a paused request's orders go out again.
    Resume { id: String },
    /// Cancel a request: its pending orders end `cancelled`.
    Cancel { id: String },
    /// Re-run the targets of a request whose order ended in a status.
    Retry {
        id: String,
        /// Which orders to re-run.
        #[arg(long, default_value = "failure", value_parser = ["failure", "success"])]
        status: String,
    },
    /// List orders, oldest first.
    Orders {
        /// Only orders of this request.
        #[arg(long)]
        request: Option<String>,
        /// Only orders of this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only orders in this status (pending, sent, in_progress, success, failure).
        #[arg(long)]
        status: Option<String>,
        /// How many to list (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// List agents, or register them.
    Agents(Agents),
    /// List server components, or register them.
    Servers(Servers),
}

/// `cmctl submit`.
#[derive(Debug, ClapArgs)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["agent", "group", "server"])))]
pub struct Submit {
    /// Target one agent.
    #[arg(long)]
    pub agent: Option<String>,
    /// Target every member of a group.
    #[arg(long)]
    pub group: Option<String>,
    /// Target a server component.
    #[arg(long)]
    pub server: Option<String>,
    /// The action's name: what the agent runs.
    pub action: String,
    /// The action's arguments: a JSON object or array.
    #[arg(long, default_value = "{}")]
    pub args: String,
    /// The window in which each order must be delivered (`300`, `90s`, `30m`, `2h`).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// When to start (RFC 3339).
    #[arg(long, value_name = "T")]
    pub start_at: Option<String>,
    /// Spread the orders over this window (`90s`, `30m`, `2h`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub rollout: Option<Duration>,
    /// At most this many orders out at once (`N` or `P%`).
    #[arg(long, value_name = "N|P%", value_parser = parse_limit)]
    pub max_concurrency: Option<Value>,
    /// Stop once more than this many orders failed (`N` or `P%`).
    #[arg(long, value_name = "N|P%", value_parser = parse_limit)]
    pub max_errors: Option<Value>,
    /// Makes a repeated submit safe (it is then also retried on a 503 or a broken connection).
    #[arg(long, value_name = "K")]
    pub idempotency_key: Option<String>,
    /// The user recorded with the request.
    #[arg(long, env = "USER")]
    pub user: Option<String>,
    /// Plan the submit and print what it would target; nothing is written.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
    /// Follow the request until it finishes, then print its results.
    #[arg(long)]
    pub wait: bool,
}

/// `cmctl agents`.
#[derive(Debug, ClapArgs)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Agents {
    /// Only members of this group.
    #[arg(long)]
    pub group: Option<String>,
    /// How many to list (at most 1000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    #[command(subcommand)]
    pub command: Option<AgentsCmd>,
}

#[derive(Debug, Subcommand)]
pub enum AgentsCmd {
    /// Register an agent (or replace its groups); prints its key once when it is new.
    Put {
        id: String,
        /// A group of the agent (repeat for more).
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Register agents from a file in batches of 10,000: CSV lines `id,group;group` or JSON
    /// lines `{"id": …, "groups": […]}`; `-` reads stdin.
    Import {
        file: String,
        /// Where to write the new agents' keys (`id,key` lines), created with mode 0600.
        #[arg(long, value_name = "FILE")]
        keys: PathBuf,
    },
    /// Issue a new key for an agent (the old one stops working).
    Key { id: String },
    /// Remove an agent from the registry.
    Delete { id: String },
}

/// `cmctl servers`.
#[derive(Debug, ClapArgs)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Servers {
    /// How many to list (at most 1000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    #[command(subcommand)]
    pub command: Option<ServersCmd>,
}

#[derive(Debug, Subcommand)]
pub enum ServersCmd {
    /// Register a server component; prints its key once when it is new.
    Put { name: String },
    /// Issue a new key for a component.
    Key { name: String },
    /// Remove a component.
    Delete { name: String },
}

/// `90s`, `30m`, `2h`, `1d`, or a number of seconds.
///
/// # Errors
/// The text of what is wrong.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 90s, 30m or 2h"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// A rate-control limit: a non-negative integer or `P%`.
///
/// # Errors
/// The text of what is wrong.
pub fn parse_limit(s: &str) -> Result<Value, String> {
    if let Some(p) = s.strip_suffix('%') {
        match p.parse::<u8>() {
            Ok(n) if n <= 100 => Ok(json!(s)),
            _ => Err(format!("{s:?}: a percentage is 0% to 100%")),
        }
    } else {
        s.parse::<u64>()
            .map(|n| json!(n))
            .map_err(|_| format!("{s:?} is not a number or a percentage such as 10%"))
    }
}

/// What a command ends with.
#[derive(Debug)]
pub(crate) enum Failed {
    /// The thing asked for failed (exit 1); the text is printed.
    Outcome(String),
    /// A usage or API error (exit 2).
    Error(String),
}

impl From<cm_client::Error> for Failed {
    fn from(e: cm_client::Error) -> Self {
        match &e {
            cm_client::Error::Api { body, status, .. } => {
                let field = body
                    .field
                    .as_ref()
                    .map(|f| format!(" (field {f})"))
                    .unwrap_or_default();
                Self::Error(format!(
                    "{} {}: {}{field}",
                    status.as_u16(),
                    body.code,
                    body.message
                ))
            }
            _ => Self::Error(e.to_string()),
        }
    }
}

pub(crate) type Res<T = ()> = Result<T, Failed>;

/// The binary's entry point.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cmctl: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed::Outcome(msg)) => {
            if !msg.is_empty() {
                eprintln!("cmctl: {msg}");
            }
            ExitCode::from(1)
        }
        Err(Failed::Error(msg)) => {
            eprintln!("cmctl: error: {msg}");
            ExitCode::from(2)
        }
    }
}

fn client(cli: &Cli) -> Res<Client> {
    let mut b = Client::builder(&cli.url).credentials(match &cli.token {
        Some(t) => Credentials::Bearer(t.clone()),
        None => Credentials::None,
    });
    if let Some(ca) = &cli.ca {
        let pem = std::fs::read(ca)
            .map_err(|e| Failed::Error(format!("cannot read {}: {e}", ca.display())))?;
        b = b.ca_pem(pem);
    }
    Ok(b.build()?)
}

async fn run(cli: Cli) -> Res {
    let c = client(&cli)?;
    let out = Out::new(cli.json);
    match cli.command {
        Cmd::Submit(s) => submit(&c, &out, *s).await,
        Cmd::Requests {
            state,
            action,
            user,
            limit,
        } => {
            let page = c
                .requests(&RequestFilter {
                    state,
                    action,
                    user,
                    size: Some(limit),
                    ..RequestFilter::default()
                })
                .await?;
            out.requests(&page.items);
            Ok(())
        }
        Cmd::Request { id, watch } => {
            if watch {
                wait::follow(&c, &out, &id).await
            } else {
                let r = c.request(&id).await?;
                let groups = c.results(&id).await?;
                out.request(&r, &groups);
                Ok(())
            }
        }
        Cmd::Pause { id } => {
            out.request_line(&c.pause(&id).await?);
            Ok(())
        }
        Cmd::Resume { id } => {
            out.request_line(&c.resume(&id).await?);
            Ok(())
        }
        Cmd::Cancel { id } => {
            let p = c.cancel_request(&id).await?;
            if out.json {
                out.print_json(&p);
            } else {
                println!(
                    "{}: cancelled; {} orders: {} pending, {} sent, {} in progress, {} success, {} failure",
                    p.request_id, p.total, p.pending, p.sent, p.in_progress, p.success, p.failure
                );
            }
            Ok(())
        }
        Cmd::Retry { id, status } => {
            let s = c.retry_request(&id, Some(&status)).await?;
            out.submitted(&s);
            Ok(())
        }
        Cmd::Orders {
            request,
            agent,
            status,
            limit,
        } => {
            let page = c
                .orders(&OrderFilter {
                    request_id: request,
                    agent_id: agent,
                    status,
                    size: Some(limit),
                    ..OrderFilter::default()
                })
                .await?;
            out.orders(&page.items);
            Ok(())
        }
        Cmd::Agents(a) => agents(&c, &out, a).await,
        Cmd::Servers(s) => servers(&c, &out, s).await,
    }
}

async fn submit(c: &Client, out: &Out, s: Submit) -> Res {
    let target = match (&s.agent, &s.group, &s.server) {
        (Some(a), _, _) => TargetRef::agent(a),
        (_, Some(g), _) => TargetRef::group(g),
        (_, _, Some(sv)) => TargetRef::server(sv),
        _ => return Err(Failed::Error("give --agent, --group or --server".into())),
    };
    let args: Value = serde_json::from_str(&s.args)
        .map_err(|e| Failed::Error(format!("--args is not JSON: {e}")))?;
    let mut cmd = NewCommand::new(target, &s.action);
    cmd.action.args = args;
    cmd.user = s.user.filter(|u| !u.is_empty());
    cmd.timeout = u32::try_from(s.timeout.as_secs()).unwrap_or(u32::MAX);
    if s.start_at.is_some() || s.rollout.is_some() {
        cmd.schedule = Some(ScheduleSpec {
            start_at: s.start_at,
            rollout_secs: s.rollout.map(|d| d.as_secs()),
        });
    }
    if s.max_concurrency.is_some() || s.max_errors.is_some() {
        cmd.rate_control = Some(RateSpec {
            max_concurrency: s.max_concurrency,
            max_errors: s.max_errors,
        });
    }
    let commands = [cmd];
    if s.dry_run {
        let plan = c.dry_run(&commands).await?;
        if out.json {
            out.print_json(&plan);
        } else {
            for p in &plan.plans {
                println!(
                    "would target {} (nothing written); first: {}",
                    p.targets,
                    p.sample.join(", ")
                );
            }
        }
        return Ok(());
    }
    let submitted = c.submit(&commands, s.idempotency_key.as_deref()).await?;
    let Some(request) = submitted.requests.first() else {
        return Err(Failed::Error("the service answered no request".into()));
    };
    if !s.wait {
        out.submitted(&submitted);
        return Ok(());
    }
    if !out.json {
        println!("{}", request.request_id);
    }
    wait::follow(c, out, &request.request_id).await
}

async fn agents(c: &Client, out: &Out, a: Agents) -> Res {
    match a.command {
        None => {
            let page = c.agents(a.group.as_deref(), Some(a.limit), None).await?;
            if out.json {
                out.print_json(&json!({"agents": page.items, "next": page.next}));
            } else {
                let rows = page
                    .items
                    .iter()
                    .map(|x| {
                        vec![
                            x.id().to_string(),
                            x.groups()
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(","),
                        ]
                    })
                    .collect::<Vec<_>>();
                table(&["ID", "GROUPS"], &rows);
            }
            Ok(())
        }
        Some(AgentsCmd::Put { id, groups }) => {
            let r = c.put_agent(&id, &groups).await?;
            if out.json {
                out.print_json(&r);
            } else if let Some(key) = &r.key {
                eprintln!("registered {}; its key, shown only this once:", r.id);
                println!("{key}");
            } else {
                println!("updated {} (its key is unchanged)", r.id);
            }
            Ok(())
        }
        Some(AgentsCmd::Import { file, keys }) => import::run(c, out, &file, &keys).await,
        Some(AgentsCmd::Key { id }) => {
            let k = c.rotate_agent_key(&id).await?;
            if out.json {
                out.print_json(&k);
            } else {
                println!("{}", k.key);
            }
            Ok(())
        }
        Some(AgentsCmd::Delete { id }) => {
            c.delete_agent(&id).await?;
            if out.json {
                out.print_json(&json!({"deleted": id}));
            } else {
                println!("deleted {id}");
            }
            Ok(())
        }
    }
}

async fn servers(c: &Client, out: &Out, s: Servers) -> Res {
    match s.command {
        None => {
            let page = c.servers(Some(s.limit), None).await?;
            if out.json {
                out.print_json(&json!({"servers": page.items, "next": page.next}));
            } else {
                let rows: Vec<Vec<String>> = page.items.into_iter().map(|n| vec![n]).collect();
                table(&["COMPONENT"], &rows);
            }
            Ok(())
        }
        Some(ServersCmd::Put { name }) => {
            let r = c.put_server(&name).await?;
            if out.json {
                out.print_json(&r);
            } else if let Some(key) = &r.key {
                eprintln!("registered {}; its key, shown only this once:", r.component);
                println!("{key}");
            } else {
                println!(
                    "{} was registered already (its key is unchanged)",
                    r.component
                );
            }
            Ok(())
        }
        Some(ServersCmd::Key { name }) => {
            let r = c.rotate_server_key(&name).await?;
            if out.json {
                out.print_json(&r);
            } else {
                println!("{}", r.key.unwrap_or_default());
            }
            Ok(())
        }
        Some(ServersCmd::Delete { name }) => {
            c.delete_server(&name).await?;
            if out.json {
                out.print_json(&json!({"deleted": name}));
            } else {
                println!("deleted {name}");
            }
            Ok(())
        }
    }
}

/// Whether stderr is a terminal (progress bars are drawn only then).
pub(crate) fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("2w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn limits_are_counts_or_percentages() {
        assert_eq!(parse_limit("10"), Ok(json!(10)));
        assert_eq!(parse_limit("5%"), Ok(json!("5%")));
        assert!(parse_limit("101%").is_err());
        assert!(parse_limit("x").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        Cli::command_check();
        let cli = Cli::try_parse_from([
            "cmctl",
            "submit",
            "--group",
            "web",
            "restart",
            "--rollout",
            "30m",
            "--max-concurrency",
            "10%",
            "--wait",
        ])
        .unwrap();
        let Cmd::Submit(s) = cli.command else {
            panic!("submit")
        };
        assert_eq!(s.group.as_deref(), Some("web"));
        assert_eq!(s.rollout, Some(Duration::from_secs(1800)));
        assert!(s.wait);
        // A target is required, and only one.
        assert!(Cli::try_parse_from(["cmctl", "submit", "restart"]).is_err());
        assert!(
            Cli::try_parse_from(["cmctl", "submit", "--agent", "a", "--group", "g", "x"]).is_err()
        );
        let cli = Cli::try_parse_from([
            "cmctl", "agents", "put", "a1", "--group", "g", "--group", "h",
        ])
        .unwrap();
        let Cmd::Agents(Agents {
            command: Some(AgentsCmd::Put { groups, .. }),
            ..
        }) = cli.command
        else {
            panic!("agents put")
        };
        assert_eq!(groups, ["g", "h"]);
    }

    impl Cli {
        fn command_check() {
            use clap::CommandFactory;
            Self::command().debug_assert();
        }
    }
}
