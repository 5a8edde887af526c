//! `BENCHMARKS.md`, written from the JSON results of `cm-bench run` and criterion's estimates.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::machine::Machine;
use crate::notes;
use crate::results::{BackendRun, Delivery};
use crate::stats::Latency;

/// The fan-out target (issue 18): ours within this factor of the raw write, with the request
/// record included in ours, at every size measured, on the backends with a raw write to match
/// (not memory, whose raw write is a `HashMap` insert).
pub(crate) const FANOUT_RATIO_TARGET: f64 = 1.3;
/// The delivery target: p99 on one instance under this many milliseconds, by backend.
pub(crate) fn delivery_p99_target_ms(backend: &str) -> f64 {
    if backend == "opensearch" { 25.0 } else { 10.0 }
}
/// The delivery target across two instances (PostgreSQL, which notifies): p99 under this.
pub(crate) const DELIVERY_TWO_P99_TARGET_MS: f64 = 20.0;
/// The relay's wake-up target (issue 13): p99 under this many milliseconds.
pub(crate) const RELAY_P99_TARGET_MS: f64 = 50.0;
/// The submit throughput target, orders/s with 32 clients, by backend.
pub(crate) fn throughput_target(backend: &str) -> f64 {
    if backend == "opensearch" {
        3_000.0
    } else {
        5_000.0
    }
}
/// The reconnect storm targets: every one of 10,000 polls admitted within this many seconds,
/// held in under this much resident memory.
pub(crate) const OPEN_POLLS_SECS_TARGET: f64 = 5.0;
pub(crate) const OPEN_POLLS_RSS_TARGET_MB: f64 = 250.0;
/// The expiry drain target: ours within this factor of the raw bulk update.
pub(crate) const EXPIRY_RATIO_TARGET: f64 = 1.5;

#[derive(Debug, clap::Args)]
pub(crate) struct RenderArgs {
    /// The page to write.
    #[arg(long)]
    out: PathBuf,
    /// The command that produced the results, quoted on the page.
    #[arg(long)]
    command: String,
    /// Criterion's output directory (`target/criterion`), when the micro-benchmarks ran.
    #[arg(long)]
    criterion: Option<PathBuf>,
    /// How long the whole command took, in seconds.
    #[arg(long)]
    total_secs: Option<f64>,
    /// Where the results come from, said in full, when they are not one run of `command`
    /// (e.g. one backend measured again after a fix).
    #[arg(long)]
    provenance: Option<String>,
    /// The results of `cm-bench run`, one file per backend.
    results: Vec<PathBuf>,
}

pub(crate) fn render(args: &RenderArgs) -> Result<()> {
    let mut runs = Vec::new();
    for path in &args.results {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let run: BackendRun = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a result of cm-bench run", path.display()))?;
        runs.push(run);
    }
    let criterion = match &args.criterion {
        Some(dir) => criterion_estimates(dir),
        None => Vec::new(),
    };
    let page = page(args, &runs, &criterion);
    std::fs::write(&args.out, page).with_context(|| format!("cannot write {}", args.out.display()))
}

fn page(args: &RenderArgs, runs: &[BackendRun], criterion: &[Estimate]) -> String {
    let mut p = String::new();
    let quick = runs.iter().any(|r| r.quick);
    let _ = writeln!(p, "# Benchmarks\n");
    let origin = args.provenance.clone().unwrap_or_else(|| {
        format!(
            "Every number on this page comes from one run of `{}`{}, which rewrote this page.",
            args.command,
            args.total_secs
                .map(|s| format!(" (it took {:.1} minutes)", s / 60.0))
                .unwrap_or_default()
        )
    });
    let _ = writeln!(
        p,
        "{origin} \
         Rerun it to measure your machine: it builds the release binaries, starts the backends \
         it needs (a throwaway PostgreSQL and OpenSearch, a fresh SQLite file), drives the real \
         `command-manager` binary over HTTP with the load generator `crates/bench`, and times \
         each backend's raw speed beside it through the same client library.{}\n",
        if quick {
            " This was a `--quick` run: smaller sizes and shorter periods than the full run \
             (fan-out of 10,000 only, 5 s of submits, 200 deliveries, 5 s of holding, expiry \
             of 10,000)."
        } else {
            ""
        }
    );
    machine_section(&mut p, runs);
    targets_section(&mut p, runs);
    fanout_section(&mut p, runs);
    throughput_section(&mut p, runs);
    delivery_section(&mut p, runs);
    open_polls_section(&mut p, runs);
    expiry_section(&mut p, runs);
    relay_section(&mut p, runs);
    requests_section(&mut p, runs);
    criterion_section(&mut p, criterion);
    p.push_str(notes::METHOD);
    settings_section(&mut p, runs);
    p
}

fn machine_section(p: &mut String, runs: &[BackendRun]) {
    let m = Machine::detect();
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let version = |backend: &str| {
        runs.iter()
            .find(|r| r.backend == backend)
            .and_then(|r| r.version.clone())
            .unwrap_or_else(|| "not measured".to_owned())
    };
    let _ = writeln!(p, "## Machine and versions\n");
    let _ = writeln!(p, "| | |\n|---|---|");
    let _ = writeln!(p, "| CPU | {} ({} cores) |", m.cpu, m.cores);
    let _ = writeln!(p, "| memory | {:.1} GiB |", m.memory_gib);
    let _ = writeln!(p, "| OS | {} |", m.os);
    let _ = writeln!(p, "| Rust | {rustc} |");
    let _ = writeln!(p, "| SQLite | {} |", version("sqlite"));
    let _ = writeln!(p, "| PostgreSQL | {} |", version("postgres"));
    let _ = writeln!(p, "| OpenSearch | {} |", version("opensearch"));
    let _ = writeln!(
        p,
        "| load average (1, 5, 15 min) before → after each backend | {} |",
        runs.iter()
            .map(|r| format!("{}: {} → {}", r.backend, r.load_before, r.load_after))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        p,
        "| when | {} |\n",
        runs.first().map_or("", |r| r.started_at.as_str())
    );
    let busy = runs
        .iter()
        .filter_map(|r| r.load_before.split(' ').next()?.parse::<f64>().ok())
        .any(|l| l > 0.5);
    if busy {
        let _ = writeln!(
            p,
            "The machine was not idle (see the load averages): the service, the load generator \
             and the backend share its cores with whatever else ran, so these numbers are \
             noisier and slower than on a quiet machine.\n"
        );
    }
}

/// The columns of every table: the backends measured, in a fixed order.
fn columns(runs: &[BackendRun]) -> Vec<&BackendRun> {
    let order = ["memory", "sqlite", "postgres", "opensearch"];
    let mut cols: Vec<&BackendRun> = runs.iter().collect();
    cols.sort_by_key(|r| order.iter().position(|o| *o == r.backend).unwrap_or(9));
    cols
}

fn header(p: &mut String, first: &str, cols: &[&BackendRun]) {
    let _ = write!(p, "| {first} |");
    for c in cols {
        let _ = write!(p, " {} |", c.backend);
    }
    let _ = write!(p, "\n|---|");
    for _ in cols {
        p.push_str("---:|");
    }
    p.push('\n');
}

/// One table row; a backend without the value shows why.
fn row(
    p: &mut String,
    label: &str,
    cols: &[&BackendRun],
    scenario: &str,
    value: impl Fn(&BackendRun) -> Option<String>,
) {
    let _ = write!(p, "| {label} |");
    for c in cols {
        let cell = value(c).unwrap_or_else(|| missing(c, scenario));
        let _ = write!(p, " {cell} |");
    }
    p.push('\n');
}

fn missing(run: &BackendRun, scenario: &str) -> String {
    if run.unavailable.is_some() {
        "not available".to_owned()
    } else if run.errors.contains_key(scenario) {
        "failed (see below)".to_owned()
    } else {
        "—".to_owned()
    }
}

/// Why cells are empty: whole backends, then failed scenarios.
fn failures(p: &mut String, cols: &[&BackendRun], scenario: &str) {
    if cols.iter().any(|c| c.errors.contains_key(scenario)) {
        p.push('\n');
    }
    for c in cols {
        if let Some(e) = c.errors.get(scenario) {
            let _ = writeln!(p, "- {} failed: `{}`", c.backend, one_line(e));
        }
    }
}

fn one_line(s: &str) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 400 {
        format!("{}…", s.chars().take(400).collect::<String>())
    } else {
        s
    }
}

fn secs(s: f64) -> String {
    if s < 0.01 {
        format!("{:.2} ms", s * 1e3)
    } else if s < 10.0 {
        format!("{s:.3} s")
    } else {
        format!("{s:.1} s")
    }
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

/// A whole number with thousands separators.
pub(crate) fn count(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn ratio(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}×")
    } else if x >= 10.0 {
        format!("{x:.1}×")
    } else {
        format!("{x:.2}×")
    }
}

/// Seconds with three decimals, without a unit.
fn secs_plain(s: f64) -> String {
    format!("{s:.3}")
}

fn mark(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// Median of the fan-out repetitions of `agents`: (ours, raw).
fn fanout_medians(run: &BackendRun, agents: u64) -> Option<(f64, f64)> {
    let f = run.fanout.iter().find(|f| f.agents == agents)?;
    if f.ours_secs.is_empty() || f.raw_secs.is_empty() {
        return None;
    }
    Some((
        crate::stats::median(&f.ours_secs),
        crate::stats::median(&f.raw_secs),
    ))
}

fn targets_section(p: &mut String, runs: &[BackendRun]) {
    let cols = columns(runs);
    let _ = writeln!(p, "## Targets\n");
    header(p, "target", &cols);
    let mut sizes: Vec<u64> = cols
        .iter()
        .flat_map(|r| r.fanout.iter().map(|f| f.agents))
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    for agents in sizes {
        row(
            p,
            &format!(
                "fan-out of {} agents within {FANOUT_RATIO_TARGET}× of the raw write, request \
                 record included",
                count(agents as f64)
            ),
            &cols,
            "fan-out",
            |r| {
                let (ours, raw) = fanout_medians(r, agents)?;
                let x = ours / raw;
                Some(if r.backend == "memory" {
                    format!("no target ({})", ratio(x))
                } else {
                    format!("{} ({})", mark(x <= FANOUT_RATIO_TARGET), ratio(x))
                })
            },
        );
    }
    row(
        p,
        "delivery p99 on one instance, under 10 ms (OpenSearch 25 ms)",
        &cols,
        "delivery latency",
        |r| {
            let d = r.delivery.iter().find(|d| d.topology == "one instance")?;
            Some(format!(
                "{} ({} ms)",
                mark(d.latency.p99_ms < delivery_p99_target_ms(&r.backend)),
                ms(d.latency.p99_ms)
            ))
        },
    );
    row(
        p,
        &format!(
            "delivery p99 across two PostgreSQL instances, under {DELIVERY_TWO_P99_TARGET_MS} ms"
        ),
        &cols,
        "delivery latency",
        |r| {
            let d = r.delivery.iter().find(|d| d.topology == "two instances")?;
            Some(if r.backend == "postgres" {
                format!(
                    "{} ({} ms)",
                    mark(d.latency.p99_ms < DELIVERY_TWO_P99_TARGET_MS),
                    ms(d.latency.p99_ms)
                )
            } else {
                format!("no target ({} ms)", ms(d.latency.p99_ms))
            })
        },
    );
    row(
        p,
        "submit throughput, 32 clients: 5,000 orders/s (OpenSearch 3,000)",
        &cols,
        "submit throughput",
        |r| {
            let t = r.throughput.as_ref()?;
            let rate = t.orders as f64 / t.secs;
            Some(format!(
                "{} ({})",
                mark(rate >= throughput_target(&r.backend)),
                count(rate)
            ))
        },
    );
    row(
        p,
        &format!(
            "10,000 long-polls opened at once, all admitted within {OPEN_POLLS_SECS_TARGET} s"
        ),
        &cols,
        "open long-polls",
        |r| {
            let o = r.open_polls.as_ref()?;
            Some(format!(
                "{} ({} s)",
                mark(o.established_secs < OPEN_POLLS_SECS_TARGET),
                secs_plain(o.established_secs)
            ))
        },
    );
    row(
        p,
        &format!("… and held in under {OPEN_POLLS_RSS_TARGET_MB} MB RSS"),
        &cols,
        "open long-polls",
        |r| {
            let o = r.open_polls.as_ref()?;
            let mb = o.rss_holding_bytes as f64 / 1e6;
            Some(format!(
                "{} ({mb:.0} MB)",
                mark(mb < OPEN_POLLS_RSS_TARGET_MB)
            ))
        },
    );
    row(
        p,
        &format!("expiry drain within {EXPIRY_RATIO_TARGET}× of the raw bulk update"),
        &cols,
        "expiry",
        |r| {
            let e = r.expiry.as_ref()?;
            let x = e.ours_secs / e.raw_secs;
            Some(format!(
                "{} ({}, {} orders)",
                mark(x <= EXPIRY_RATIO_TARGET),
                ratio(x),
                count(e.orders as f64)
            ))
        },
    );
    row(
        p,
        &format!("a relay's claim for 10,000 agents woken with p99 under {RELAY_P99_TARGET_MS} ms"),
        &cols,
        "relay",
        |r| {
            let w = r.relay.as_ref()?.wake;
            Some(format!(
                "{} ({} ms)",
                mark(w.p99_ms < RELAY_P99_TARGET_MS),
                ms(w.p99_ms)
            ))
        },
    );
    p.push('\n');
    for c in &cols {
        if let Some(why) = &c.unavailable {
            let _ = writeln!(
                p,
                "- **{}: not available in this run**, so it has no numbers on this page: `{}`",
                c.backend,
                one_line(why)
            );
        }
    }
    let misses = notes::misses(&cols);
    if !misses.is_empty() {
        let _ = writeln!(p, "\n### Where a target is missed, and what limits it\n");
        for m in misses {
            let _ = writeln!(p, "- {m}");
        }
    }
    p.push('\n');
}

fn fanout_section(p: &mut String, runs: &[BackendRun]) {
    let cols = columns(runs);
    let _ = writeln!(
        p,
        "## 1. Fan-out: one request to a group, until every order is durable\n"
    );
    let _ = writeln!(
        p,
        "One `POST /api/v1/commands` targeting a group, timed until its `201` (sent once every \
         order is written; the count is then checked through the API and in the backend \
         itself). Beside it, in the same run, the same documents (read back through the API, \
         under fresh ids) written by the backend's fastest raw path into the same table or \
         index. The first size is repeated 5 times (medians shown); ratio = time ours / time \
         raw. \"Paging the group\" is the time to read the group's members through \
         `GET /api/v1/agents?group=` 1,000 at a time, as the expansion reads the registry: the \
         reading share of a fan-out.\n"
    );
    let mut sizes: Vec<u64> = runs
        .iter()
        .flat_map(|r| r.fanout.iter().map(|f| f.agents))
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() {
        sizes.push(10_000);
    }
    for n in sizes {
        header(p, &format!("{} agents", count(n as f64)), &cols);
        row(p, "ours: submit → 201", &cols, "fan-out", |r| {
            fanout_medians(r, n).map(|(o, _)| secs(o))
        });
        row(p, "ours: orders/s", &cols, "fan-out", |r| {
            fanout_medians(r, n).map(|(o, _)| count(n as f64 / o))
        });
        row(p, "raw write", &cols, "fan-out", |r| {
            fanout_medians(r, n).map(|(_, w)| secs(w))
        });
        row(p, "raw: orders/s", &cols, "fan-out", |r| {
            fanout_medians(r, n).map(|(_, w)| count(n as f64 / w))
        });
        row(p, "ratio ours / raw", &cols, "fan-out", |r| {
            fanout_medians(r, n).map(|(o, w)| ratio(o / w))
        });
        row(
            p,
            "of ours: paging the group through the API",
            &cols,
            "fan-out",
            |r| {
                r.fanout
                    .iter()
                    .find(|f| f.agents == n)
                    .and_then(|f| f.group_read_secs)
                    .map(secs)
            },
        );
        row(
            p,
            "every repetition: ours / raw (s)",
            &cols,
            "fan-out",
            |r| {
                let f = r.fanout.iter().find(|f| f.agents == n)?;
                Some(
                    f.ours_secs
                        .iter()
                        .zip(&f.raw_secs)
                        .map(|(o, w)| format!("{o:.3} / {w:.3}"))
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            },
        );
        p.push('\n');
    }
    let _ = writeln!(p, "Raw write per backend:\n");
    for c in &cols {
        if let Some(f) = c.fanout.first() {
            let _ = writeln!(p, "- {}: {}", c.backend, f.raw_method);
        }
    }
    failures(p, &cols, "fan-out");
    p.push('\n');
}

fn throughput_section(p: &mut String, runs: &[BackendRun]) {
    let cols = columns(runs);
    let t = runs.iter().find_map(|r| r.throughput.as_ref());
    let _ = writeln!(
        p,
        "## 2. Submit throughput: single-agent commands from concurrent clients\n"
    );
    let _ = writeln!(
        p,
        "{} clients, each submitting one single-agent command after the other for {} s; \
         latency is one submit's, from sending to its `201`.\n",
        t.map_or(32, |t| t.clients),
        t.map_or_else(|| "N".to_owned(), |t| format!("{:.0}", t.secs))
    );
    header(p, "", &cols);
    row(p, "orders/s", &cols, "submit throughput", |r| {
        r.throughput
            .as_ref()
            .map(|t| count(t.orders as f64 / t.secs))
    });
    row(p, "p50 latency (ms)", &cols, "submit throughput", |r| {
        r.throughput.as_ref().map(|t| ms(t.latency.p50_ms))
    });
    row(p, "p99 latency (ms)", &cols, "submit throughput", |r| {
        r.throughput.as_ref().map(|t| ms(t.latency.p99_ms))
    });
    row(p, "orders / errors", &cols, "submit throughput", |r| {
        r.throughput
            .as_ref()
            .map(|t| format!("{} / {}", count(t.orders as f64), t.errors))
    });
    failures(p, &cols, "submit throughput");
    p.push('\n');
}

fn delivery_section(p: &mut String, runs: &[BackendRun]) {
    let cols = columns(runs);
    let n = if runs.iter().any(|r| r.quick) {
        200
    } else {
        1000
    };
    let _ = writeln!(
        p,
        "## 3. Delivery latency: submit → received by the agent's open long-poll\n"
    );
    let _ = writeln!(
        p,
        "An agent holds `POST /api/v1/agents/{{id}}/poll?wait=30` open; 25 ms later a manager \
         submits one order for it; measured from sending the submit until the poll's answer \
         with that order is received (\"submit → received\"), and from the submit's `201` \
         until then (\"201 → received\", 0 when the answer came first), beside the submit's \
         own latency. Before measuring, the stream is topped up with fan-outs over the fleet \
         until at least 100,000 orders for other agents are pending (the row \"pending\"), as \
         in real use. Up to {n} orders, one at a time (after 5 unmeasured), \
         for at most 45 s (150 s in a full run) per topology. \
         \"Two instances\": the poll on instance A, the submit to instance B of the same \
         store (backends that several instances share): PostgreSQL wakes the poll through \
         `LISTEN/NOTIFY`; OpenSearch, which cannot notify, through each instance's watch of the \
         orders index, once per `storage.opensearch.poll_interval_ms` (1 s by default).\n"
    );
    header(p, "milliseconds", &cols);
    row(
        p,
        "orders pending in the stream",
        &cols,
        "delivery latency",
        |r| {
            r.delivery
                .iter()
                .find_map(|d| d.pending)
                .map(|n| count(n as f64))
        },
    );
    type Pick = fn(&Delivery) -> Option<Latency>;
    let steps: [(&str, Pick); 3] = [
        ("submit → received", |d| Some(d.latency)),
        ("201 → received", |d| d.after_ack),
        ("submit → 201", |d| d.submit),
    ];
    for topology in ["one instance", "two instances"] {
        for (step, pick) in steps {
            row(
                p,
                &format!("{topology}, {step}: p50 / p99 / max"),
                &cols,
                "delivery latency",
                |r| {
                    r.delivery
                        .iter()
                        .find(|d| d.topology == topology)
                        .and_then(pick)
                        .map(|l| format!("{} / {} / {}", ms(l.p50_ms), ms(l.p99_ms), ms(l.max_ms)))
                },
            );
        }
    }
    failures(p, &cols, "delivery latency");
    p.push('\n');
}

fn open_polls_section(p: &mut String, runs: &[BackendRun]) {
    let cols = columns(runs);
    let _ = writeln!(p, "## 4. Open long-polls: idle agents held at once\n");
    let _ = writeln!(
        p,
        "10,000 registered agents without orders each hold one long-poll open, from 8 \
         loopback source addresses (127.0.0.2–9), asking to wait 300 s, opened in steps with \
         at most 1,000 sent but not yet counted open by the service (a poll refused with 503 \
         is retried a second later). Before them, the service's resident memory once it has \
         stopped falling after the registration (\"RSS before\": the allocator hands freed \
         memory back within about a second). Once the service's `cm_long_polls_open` gauge \
         counts all of them: its resident memory (`VmRSS`, highest sample) and CPU \
         (`utime + stime` from `/proc/PID/stat`) over the holding period; then up to 5 of them, \
         one at a time, get an order (submit → received; fewer when waking them takes over \
         20 s); then every client hangs up and the \
         gauge must return to zero.\n"
    );
    header(p, "", &cols);
    let o = |r: &BackendRun| r.open_polls.clone();
    row(
        p,
        "long-polls held (fewest counted during the hold)",
        &cols,
        "open long-polls",
        |r| {
            o(r).map(|o| {
                format!(
                    "{} ({})",
                    count(o.polls as f64),
                    count(o.fewest_open as f64)
                )
            })
        },
    );
    row(p, "all open after", &cols, "open long-polls", |r| {
        o(r).map(|o| secs(o.established_secs))
    });
    row(
        p,
        "polls refused with 503 while opening (retried)",
        &cols,
        "open long-polls",
        |r| o(r).map(|o| count(o.refused as f64)),
    );
    row(p, "RSS before (MB)", &cols, "open long-polls", |r| {
        o(r).map(|o| format!("{:.1}", o.rss_before_bytes as f64 / 1e6))
    });
    row(p, "RSS holding them (MB)", &cols, "open long-polls", |r| {
        o(r).map(|o| format!("{:.1}", o.rss_holding_bytes as f64 / 1e6))
    });
    row(p, "per held poll (KB)", &cols, "open long-polls", |r| {
        o(r).map(|o| {
            format!(
                "{:.1}",
                (o.rss_holding_bytes as f64 - o.rss_before_bytes as f64) / o.polls as f64 / 1e3
            )
        })
    });
    row(
        p,
        "CPU while holding (% of one core)",
        &cols,
        "open long-polls",
        |r| o(r).map(|o| format!("{:.1} % over {:.0} s", o.cpu_percent, o.hold_secs)),
    );
    row(
        p,
        "wake-up of one: p50 / max (ms)",
        &cols,
        "open long-polls",
        |r| o(r).map(|o| format!("{} / {}", ms(o.wake.p50_ms), ms(o.wake.max_ms))),
    );
    row(p, "released after hang-up", &cols, "open long-polls", |r| {
        o(r).map(|o| {
            o.released_secs
                .map_or_else(|| "**not within 60 s**".to_owned(), secs)
        })
    });
    failures(p, &cols, "open long-polls");
    p.push('\n');
}

fn expiry_section(p: &mut String, runs: &[BackendRun]) {
    let cols = columns(runs);
    let _ = writeln!(
        p,
        "## 5. Expiry drain: overdue pending orders expired by one scheduler run\n"
    );
    let _ = writeln!(
        p,
        "One group request with `timeout: 1` leaves N pending orders; once they are overdue, \
         one scheduler run expires them all (its duration is the `elapsed_ms` it logs; the \
         API then shows none pending). Beside it, the same rows put back to pending (untimed) \
         and expired by the backend's raw bulk update (target: within 1.5×). The service \
         works through the backlog `limits.maintenance_batch` (1,000) orders at a time, each \
         batch one conditional statement that applies the domain's expiry patch \
         (`Order::expiry_patch`) to the overdue pending orders it selects and locks (SQLite, \
         PostgreSQL: `UPDATE`; OpenSearch: `_update_by_query`, each document written only at \
         the version found), where the raw update is one statement for all of them.\n"
    );
    header(p, "", &cols);
    let e = |r: &BackendRun| r.expiry.clone();
    row(p, "overdue orders", &cols, "expiry drain", |r| {
        e(r).map(|e| count(e.orders as f64))
    });
    row(p, "ours: one scheduler run", &cols, "expiry drain", |r| {
        e(r).map(|e| secs(e.ours_secs))
    });
    row(p, "ours: orders/s", &cols, "expiry drain", |r| {
        e(r).map(|e| count(e.orders as f64 / e.ours_secs.max(1e-3)))
    });
    row(p, "raw bulk update", &cols, "expiry drain", |r| {
        e(r).map(|e| secs(e.raw_secs))
    });
    row(p, "ratio ours / raw", &cols, "expiry drain", |r| {
        e(r).map(|e| ratio(e.ours_secs / e.raw_secs))
    });
    p.push_str("\nRaw update per backend:\n\n");
    for c in &cols {
        if let Some(e) = &c.expiry {
            let _ = writeln!(p, "- {}: {}", c.backend, e.raw_method);
        }
    }
    failures(p, &cols, "expiry drain");
    p.push('\n');
}

fn relay_section(p: &mut String, runs: &[BackendRun]) {
    let cols = columns(runs);
    let _ = writeln!(
        p,
        "## 6. Relay: one claim for 10,000 agents, while their fan-out is written\n"
    );
    let _ = writeln!(
        p,
        "One relay names all 10,000 agents of a group in `POST /api/v1/relay/claim` (`limit` \
         1,000, `wait` the service's longest) and claims again as soon as a claim answers. \
         While its claim waits (counted in the service's `cm_relay_claims_open`), a manager \
         submits one command to the group: the fan-out is timed until its `201`, and, from the \
         same submit, the time until the relay has claimed every one of the 10,000 orders. The \
         relay then reports all 10,000 results through `POST /api/v1/results`, 1,000 a call \
         (timed), and the request must show them all `success`. Last, its wake-up, measured as \
         the single agent's poll of section 3 is: the claim for the 10,000 ids waits, then one \
         order is submitted for one of those agents (another each time); from sending the \
         submit until the claim's answer carrying it is received, one order at a time (after 5 \
         unmeasured), for at most 45 s (150 s in a full run). The single agent's figures of \
         section 3 are repeated beside it.\n"
    );
    header(p, "", &cols);
    let relay = |r: &BackendRun| r.relay.clone();
    row(
        p,
        "fan-out to the 10,000 while the relay claims: submit → 201",
        &cols,
        "relay",
        |r| relay(r).map(|x| secs(x.fanout_secs)),
    );
    row(
        p,
        "fan-out alone (section 1, median)",
        &cols,
        "fan-out",
        |r| fanout_medians(r, 10_000).map(|(o, _)| secs(o)),
    );
    row(
        p,
        "relay has claimed every order (from the submit)",
        &cols,
        "relay",
        |r| relay(r).map(|x| secs(x.claimed_secs)),
    );
    row(p, "claims that brought orders", &cols, "relay", |r| {
        relay(r).map(|x| count(x.claims as f64))
    });
    row(
        p,
        "reporting the 10,000 results, 1,000 a call",
        &cols,
        "relay",
        |r| relay(r).map(|x| secs(x.reported_secs)),
    );
    row(
        p,
        "relay's wake-up: p50 / p99 / max (ms)",
        &cols,
        "relay",
        |r| {
            relay(r).map(|x| {
                format!(
                    "{} / {} / {}",
                    ms(x.wake.p50_ms),
                    ms(x.wake.p99_ms),
                    ms(x.wake.max_ms)
                )
            })
        },
    );
    row(
        p,
        "single agent's poll (section 3, one instance): p50 / p99 / max (ms)",
        &cols,
        "delivery latency",
        |r| {
            r.delivery
                .iter()
                .find(|d| d.topology == "one instance")
                .map(|d| {
                    format!(
                        "{} / {} / {}",
                        ms(d.latency.p50_ms),
                        ms(d.latency.p99_ms),
                        ms(d.latency.max_ms)
                    )
                })
        },
    );
    row(p, "relay's wake-ups measured (late)", &cols, "relay", |r| {
        relay(r).map(|x| format!("{} ({})", count(x.wake.samples as f64), x.late))
    });
    failures(p, &cols, "relay");
    p.push('\n');
}

/// One criterion benchmark's estimates.
#[derive(Debug, Clone)]
struct Estimate {
    id: String,
    median_ns: f64,
    elements: Option<f64>,
}

/// Every `…/new/estimates.json` under `dir`, with the id from its `benchmark.json`.
fn criterion_estimates(dir: &Path) -> Vec<Estimate> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "new") {
                    if let Some(e) = estimate(&path) {
                        found.push(e);
                    }
                } else if path
                    .file_name()
                    .is_none_or(|n| n != "base" && n != "report")
                {
                    stack.push(path);
                }
            }
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

fn estimate(new: &Path) -> Option<Estimate> {
    let read = |name: &str| -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(new.join(name)).ok()?).ok()
    };
    let bench = read("benchmark.json")?;
    let est = read("estimates.json")?;
    Some(Estimate {
        id: bench["full_id"].as_str()?.to_owned(),
        median_ns: est["median"]["point_estimate"].as_f64()?,
        elements: bench["throughput"]["Elements"].as_f64(),
    })
}

fn criterion_section(p: &mut String, estimates: &[Estimate]) {
    let _ = writeln!(p, "## Domain micro-benchmarks (criterion)\n");
    if estimates.is_empty() {
        let _ = writeln!(p, "Not run.\n");
        return;
    }
    let _ = writeln!(
        p,
        "`crates/domain/benches/domain.rs` (`cargo bench -p cm-domain --features bench`), pure \
         functions without I/O: validating commands as the HTTP driver does, expanding a group \
         into orders (with counter ids, and with the UUID v5 ids of an idempotent submit), \
         serialising and parsing order documents, expiring orders. Median time per iteration.\n"
    );
    let _ = writeln!(
        p,
        "| benchmark | median | per element | elements/s |\n|---|---:|---:|---:|"
    );
    for e in estimates {
        let (per, rate) = match e.elements {
            Some(n) if n > 0.0 => (
                format!("{:.0} ns", e.median_ns / n),
                count(n / (e.median_ns / 1e9)),
            ),
            _ => ("—".to_owned(), "—".to_owned()),
        };
        let _ = writeln!(
            p,
            "| {} | {} | {per} | {rate} |",
            e.id,
            human_ns(e.median_ns)
        );
    }
    p.push('\n');
}

fn human_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

fn settings_section(p: &mut String, runs: &[BackendRun]) {
    let _ = writeln!(
        p,
        "## Agents registered before the scenarios (not timed as a result)\n"
    );
    for r in columns(runs) {
        if let Some(reg) = &r.registration {
            let _ = writeln!(
                p,
                "- {}: {} agents in {} through {}",
                r.backend,
                count(reg.agents as f64),
                secs(reg.secs),
                reg.method
            );
        }
    }
    p.push('\n');
    let _ = writeln!(p, "## Settings the benchmark gives the service\n");
    let _ = writeln!(
        p,
        "Beyond the backend's own (`CM_STORAGE__*`), everything else is the default:\n"
    );
    for r in columns(runs) {
        if !r.settings.is_empty() {
            let _ = writeln!(p, "- {}: `{}`", r.backend, r.settings.join("`, `"));
        }
    }
    p.push('\n');
}

fn requests_section(p: &mut String, runs: &[BackendRun]) {
    let cols = columns(runs);
    let _ = writeln!(
        p,
        "## 7. Requests as records: the listing and a results breakdown\n"
    );
    let _ = writeln!(
        p,
        "The page an operator opens first, `GET /api/v1/requests?size=50` (50 records, newest \
         first, each with the counts of its orders: live for a request still running, frozen \
         on the record once it is settled), read 50 times while the stream holds the orders \
         of every scenario before it, topped up with group fan-outs. Then the results \
         breakdown of the expiry drain's request (`GET /api/v1/requests/{{id}}/results`: its \
         finished orders grouped by status, code and message, with samples), 50 times. The \
         record a submit writes is inside the fan-out's figures of section 1.\n"
    );
    header(p, "", &cols);
    let q = |r: &BackendRun| r.requests.clone();
    row(p, "orders in the stream", &cols, "requests", |r| {
        q(r).map(|x| count(x.stream_orders as f64))
    });
    row(p, "requests in the stream", &cols, "requests", |r| {
        q(r).map(|x| count(x.requests as f64))
    });
    row(
        p,
        "listing of 50: p50 / p99 / max (ms)",
        &cols,
        "requests",
        |r| {
            q(r).map(|x| {
                format!(
                    "{} / {} / {}",
                    ms(x.list.p50_ms),
                    ms(x.list.p99_ms),
                    ms(x.list.max_ms)
                )
            })
        },
    );
    row(
        p,
        "orders in the broken-down request",
        &cols,
        "requests",
        |r| q(r).map(|x| count(x.breakdown_orders as f64)),
    );
    row(
        p,
        "results breakdown: p50 / p99 / max (ms)",
        &cols,
        "requests",
        |r| {
            q(r).map(|x| {
                format!(
                    "{} / {} / {}",
                    ms(x.breakdown.p50_ms),
                    ms(x.breakdown.p99_ms),
                    ms(x.breakdown.max_ms)
                )
            })
        },
    );
    failures(p, &cols, "requests");
    p.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_for_people() {
        assert_eq!(count(1_234_567.4), "1,234,567");
        assert_eq!(count(999.0), "999");
        assert_eq!(ratio(1.234), "1.23×");
        assert_eq!(ratio(42.0), "42.0×");
        assert_eq!(secs(0.0042), "4.20 ms");
        assert_eq!(secs(1.5), "1.500 s");
        assert_eq!(human_ns(1500.0), "1.50 µs");
    }

    fn latency(p50_ms: f64, p99_ms: f64) -> crate::stats::Latency {
        crate::stats::Latency {
            samples: 200,
            p50_ms,
            p99_ms,
            max_ms: p99_ms + 1.0,
        }
    }

    #[test]
    fn the_relay_is_shown_beside_the_fanout_and_the_single_agent_poll() {
        let run = BackendRun {
            backend: "sqlite".to_owned(),
            relay: Some(crate::results::Relay {
                agents: 10_000,
                limit: 1000,
                wait_secs: 600,
                fanout_secs: 1.25,
                claimed_secs: 1.5,
                claims: 12,
                reported_secs: 2.0,
                wake: latency(3.0, 60.0),
                late: 0,
            }),
            delivery: vec![crate::results::Delivery {
                topology: "one instance".to_owned(),
                latency: latency(2.0, 8.0),
                after_ack: Some(latency(1.0, 4.0)),
                submit: Some(latency(0.5, 2.0)),
                pending: Some(100_000),
                late: 0,
                slowest: Vec::new(),
            }],
            ..BackendRun::default()
        };
        let runs = [run];
        let mut p = String::new();
        relay_section(&mut p, &runs);
        assert!(p.contains("| relay has claimed every order (from the submit) | 1.500 s |"));
        assert!(
            p.contains("| fan-out to the 10,000 while the relay claims: submit → 201 | 1.250 s |")
        );
        assert!(p.contains("| relay's wake-up: p50 / p99 / max (ms) | 3.00 / 60.0 / 61.0 |"));
        assert!(p.contains("| 2.00 / 8.00 / 9.00 |"), "{p}");
        let mut d = String::new();
        delivery_section(&mut d, &runs);
        assert!(
            d.contains("| orders pending in the stream | 100,000 |"),
            "{d}"
        );
        assert!(
            d.contains("| one instance, submit → received: p50 / p99 / max | 2.00 / 8.00 / 9.00 |"),
            "{d}"
        );
        assert!(
            d.contains("| one instance, 201 → received: p50 / p99 / max | 1.00 / 4.00 / 5.00 |"),
            "{d}"
        );
        assert!(
            d.contains("| one instance, submit → 201: p50 / p99 / max | 0.50 / 2.00 / 3.00 |"),
            "{d}"
        );
        let mut t = String::new();
        targets_section(&mut t, &runs);
        assert!(t.contains("**missed** (60.0 ms)"), "{t}");
        assert!(t.contains("**sqlite relay wake-up**: p99 60.0 ms"), "{t}");
    }
}
