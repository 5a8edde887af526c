//! `cargo xtask lint`: every check CI makes before the tests, in order: formatting
//! (`cargo fmt --check`), the architecture of the crate graph (below), and clippy on every
//! target with every optional part on (the heavy tests, the criterion benchmarks) and warnings
//! denied.
//!
//! The architecture check reads the workspace's crates and their normal dependencies from
//! `cargo metadata` and holds them to the hexagon of ARCHITECTURE.md: the domain depends on no
//! other workspace crate and on nothing that does I/O or draws randomness; the ports on the
//! domain only; an adapter on the domain and the ports only; a driver never on an adapter; a
//! client-side crate (client, cli, agent) on the domain and other client-side crates only; the
//! load generator on no workspace crate (it measures the service from outside, over HTTP). Each
//! crate's role comes from [`ROLES`], by name: a new crate fails the check until it is given one.
//! Dev-dependencies are not held to the rules (a driver's tests use the in-memory adapter).

use std::fmt;
use std::process::Stdio;

use serde_json::Value;

use crate::process;

const USAGE: &str = "cargo xtask lint";

/// The features clippy turns on, so that code behind them is linted too: the heavy tests
/// (`tests/heavy/`) and the criterion benchmarks of `cm-domain`.
const CLIPPY_FEATURES: &str = "command-manager/heavy,cm-domain/bench";

/// What a crate is in the hexagon, which decides what it may depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// The pure rules: no workspace crate, no I/O, no clock or randomness crate.
    Domain,
    /// Port traits and use cases: the domain only.
    Ports,
    /// One backend behind the ports: the domain and the ports only.
    Adapter,
    /// Calls the use cases (HTTP, scheduler, console): never an adapter.
    Driver,
    /// Runs on the agents' or the operators' side (client library, cli, agent): the domain and
    /// other client-side crates only.
    ClientSide,
    /// Measures the service from outside, over HTTP: no workspace crate.
    Outside,
    /// Wires everything together (the binary) or automates the project (xtask): no rule.
    Assembly,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Domain => "domain",
            Self::Ports => "ports",
            Self::Adapter => "adapter",
            Self::Driver => "driver",
            Self::ClientSide => "client side",
            Self::Outside => "outside",
            Self::Assembly => "assembly",
        })
    }
}

/// Every workspace crate and its role. A new crate goes here (a client library, a cli or an
/// agent as [`Role::ClientSide`]; a console as [`Role::Driver`]).
pub(crate) const ROLES: &[(&str, Role)] = &[
    ("cm-domain", Role::Domain),
    ("cm-ports", Role::Ports),
    ("cm-adapter-memory", Role::Adapter),
    ("cm-adapter-sqlite", Role::Adapter),
    ("cm-adapter-postgres", Role::Adapter),
    ("cm-adapter-opensearch", Role::Adapter),
    ("cm-api-http", Role::Driver),
    ("cm-scheduler", Role::Driver),
    ("cm-console", Role::Driver),
    ("cm-bench", Role::Outside),
    ("cm-client", Role::ClientSide),
    ("cmctl", Role::ClientSide),
    ("cm-agent", Role::ClientSide),
    ("command-manager", Role::Assembly),
    ("xtask", Role::Assembly),
];

/// Crates the domain must not depend on: runtimes, networking, storage, configuration loading,
/// and randomness (the domain takes `now` and ids as arguments).
pub(crate) const NOT_IN_DOMAIN: &[&str] = &[
    "async-std",
    "axum",
    "config",
    "getrandom",
    "hyper",
    "hyper-util",
    "libsqlite3-sys",
    "mio",
    "opensearch",
    "postgres",
    "rand",
    "reqwest",
    "rusqlite",
    "rustls",
    "smol",
    "sqlx",
    "tokio",
    "tokio-postgres",
    "tokio-rustls",
    "tower",
    "tower-http",
    "ureq",
];

/// A workspace crate and the packages it depends on (normal dependencies only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Package {
    pub(crate) name: String,
    pub(crate) deps: Vec<String>,
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    if let Some(arg) = args.first() {
        return Err(format!("unknown argument {arg:?}\nusage: {USAGE}"));
    }
    require_tool("fmt", "rustfmt")?;
    require_tool("clippy", "clippy")?;

    let mut failed = Vec::new();

    println!("xtask: lint 1/3: cargo fmt --all -- --check");
    let mut fmt = process::cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    if let Err(e) = process::run_status(&mut fmt, "cargo fmt --check") {
        eprintln!("xtask: {e}: `cargo fmt --all` formats the code");
        failed.push("formatting");
    }

    println!("xtask: lint 2/3: architecture of the crate graph");
    if let Err(e) = architecture() {
        eprintln!("xtask: {e}");
        failed.push("architecture");
    }

    println!("xtask: lint 3/3: cargo clippy (every target, features {CLIPPY_FEATURES})");
    let mut clippy = process::cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        CLIPPY_FEATURES,
        "--",
        "-D",
        "warnings",
    ]);
    if let Err(e) = process::run_status(&mut clippy, "cargo clippy") {
        eprintln!("xtask: {e}");
        failed.push("clippy");
    }

    if failed.is_empty() {
        println!("xtask: lint passed");
        Ok(())
    } else {
        Err(format!("lint failed: {}", failed.join(", ")))
    }
}

/// Fails, with the command that installs it, when cargo's `subcommand` (a rustup component)
/// is missing.
fn require_tool(subcommand: &str, component: &str) -> Result<(), String> {
    let present = process::cargo()
        .args([subcommand, "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        Ok(())
    } else {
        Err(format!(
            "`cargo {subcommand}` is not installed: install it with `rustup component add {component}`"
        ))
    }
}

/// Checks the crate graph of the workspace; prints one line per breach and a summary.
fn architecture() -> Result<(), String> {
    let out = process::cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo metadata failed ({})", out.status));
    }
    let packages = packages(&out.stdout)?;
    let found = breaches(&packages)?;
    for breach in &found {
        println!("architecture: {breach}");
    }
    println!("architecture: {}", summary(&packages, found.len()));
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} breach(es) of the architecture (ARCHITECTURE.md)",
            found.len()
        ))
    }
}

/// The workspace's crates and their normal dependencies, from the JSON of `cargo metadata
/// --no-deps`.
pub(crate) fn packages(metadata: &[u8]) -> Result<Vec<Package>, String> {
    let json: Value =
        serde_json::from_slice(metadata).map_err(|e| format!("cargo metadata: {e}"))?;
    let list = json["packages"]
        .as_array()
        .ok_or("cargo metadata: no `packages` list")?;
    list.iter()
        .map(|p| {
            let name = p["name"]
                .as_str()
                .ok_or("cargo metadata: a package without a name")?
                .to_owned();
            let deps = p["dependencies"]
                .as_array()
                .ok_or_else(|| format!("cargo metadata: {name} has no `dependencies` list"))?
                .iter()
                // `kind` is null for a normal dependency, "dev" or "build" otherwise.
                .filter(|d| d["kind"].is_null())
                .filter_map(|d| d["name"].as_str().map(str::to_owned))
                .collect();
            Ok(Package { name, deps })
        })
        .collect()
}

/// The role of the workspace crate `name` in `table`.
fn role_in(table: &[(&str, Role)], name: &str) -> Result<Role, String> {
    table
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, r)| r)
        .ok_or_else(|| format!("no role for crate {name}: add it to ROLES in xtask/src/lint.rs"))
}

/// Every dependency of `packages` that breaks the hexagon, one sentence each, in crate order.
///
/// # Errors
/// A crate without a role in [`ROLES`].
pub(crate) fn breaches(packages: &[Package]) -> Result<Vec<String>, String> {
    breaches_in(ROLES, packages)
}

/// [`breaches`] with the roles of `table`.
fn breaches_in(table: &[(&str, Role)], packages: &[Package]) -> Result<Vec<String>, String> {
    let roles = packages
        .iter()
        .map(|p| Ok((p.name.as_str(), role_in(table, &p.name)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let role_of = |name: &str| roles.iter().find(|(n, _)| *n == name).map(|&(_, r)| r);
    let mut found = Vec::new();
    for (package, &(_, own)) in packages.iter().zip(&roles) {
        let mut deps = package.deps.clone();
        deps.sort();
        deps.dedup();
        for dep in &deps {
            let why = match (own, role_of(dep)) {
                (Role::Domain, Some(_)) => Some("the domain depends on no other workspace crate"),
                (Role::Domain, None) if NOT_IN_DOMAIN.contains(&dep.as_str()) => {
                    Some("the domain does no I/O and draws no randomness")
                }
                (Role::Ports, Some(r)) if r != Role::Domain => {
                    Some("the ports depend on the domain only")
                }
                (Role::Adapter, Some(r)) if r != Role::Domain && r != Role::Ports => {
                    Some("an adapter depends on the domain and the ports only")
                }
                (Role::Driver, Some(Role::Adapter)) => {
                    Some("a driver never depends on an adapter (the binary wires them)")
                }
                (Role::ClientSide, Some(r)) if r != Role::Domain && r != Role::ClientSide => {
                    Some("the client side depends on the domain and the client side only")
                }
                (Role::Outside, Some(_)) => {
                    Some("the load generator measures the service from outside, over HTTP")
                }
                _ => None,
            };
            if let Some(why) = why {
                found.push(format!("{} ({own}) depends on {dep}: {why}", package.name));
            }
        }
    }
    Ok(found)
}

/// `11 crates (domain 1, ports 1, …); 0 breaches`.
fn summary(packages: &[Package], breaches: usize) -> String {
    let mut counts: Vec<(Role, usize)> = Vec::new();
    for p in packages {
        if let Ok(r) = role_in(ROLES, &p.name) {
            match counts.iter_mut().find(|(c, _)| *c == r) {
                Some((_, n)) => *n += 1,
                None => counts.push((r, 1)),
            }
        }
    }
    let counts: Vec<String> = counts.iter().map(|(r, n)| format!("{r} {n}")).collect();
    format!(
        "{} crates ({}); {breaches} breach(es)",
        packages.len(),
        counts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, deps: &[&str]) -> Package {
        Package {
            name: name.to_owned(),
            deps: deps.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    /// The graph the workspace has today: every arrow of ARCHITECTURE.md's picture.
    fn hexagon() -> Vec<Package> {
        vec![
            pkg("cm-domain", &["chrono", "serde", "uuid", "criterion"]),
            pkg("cm-ports", &["cm-domain", "tokio", "getrandom"]),
            pkg("cm-adapter-memory", &["cm-domain", "cm-ports"]),
            pkg("cm-adapter-sqlite", &["cm-domain", "cm-ports", "sqlx"]),
            pkg("cm-adapter-postgres", &["cm-domain", "cm-ports", "sqlx"]),
            pkg("cm-adapter-opensearch", &["cm-ports", "reqwest"]),
            pkg("cm-api-http", &["cm-domain", "cm-ports", "axum"]),
            pkg("cm-scheduler", &["cm-ports", "tokio"]),
            pkg("cm-bench", &["reqwest", "sqlx"]),
            pkg(
                "command-manager",
                &["cm-adapter-memory", "cm-api-http", "cm-scheduler"],
            ),
            pkg("xtask", &["serde_json"]),
        ]
    }

    fn with(extra: Package) -> Vec<Package> {
        let mut all = hexagon();
        match all.iter_mut().find(|p| p.name == extra.name) {
            Some(p) => p.deps.extend(extra.deps),
            None => all.push(extra),
        }
        all
    }

    #[test]
    fn the_hexagon_as_drawn_has_no_breach() {
        assert_eq!(breaches(&hexagon()), Ok(vec![]));
    }

    #[test]
    fn the_domain_may_not_depend_on_a_workspace_crate_or_on_io_or_randomness() {
        let found = breaches(&with(pkg("cm-domain", &["cm-ports", "tokio", "rand"]))).unwrap();
        assert_eq!(
            found,
            [
                "cm-domain (domain) depends on cm-ports: the domain depends on no other \
                 workspace crate",
                "cm-domain (domain) depends on rand: the domain does no I/O and draws no \
                 randomness",
                "cm-domain (domain) depends on tokio: the domain does no I/O and draws no \
                 randomness",
            ]
        );
    }

    #[test]
    fn the_ports_may_depend_on_the_domain_only() {
        let found = breaches(&with(pkg("cm-ports", &["cm-adapter-sqlite"]))).unwrap();
        assert_eq!(
            found,
            ["cm-ports (ports) depends on cm-adapter-sqlite: the ports depend on the domain only"]
        );
    }

    #[test]
    fn an_adapter_may_not_depend_on_another_adapter_or_a_driver() {
        let found = breaches(&with(pkg(
            "cm-adapter-postgres",
            &["cm-adapter-memory", "cm-scheduler"],
        )))
        .unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("cm-adapter-postgres (adapter) depends on cm-adapter-memory"));
        assert!(found[1].starts_with("cm-adapter-postgres (adapter) depends on cm-scheduler"));
    }

    #[test]
    fn a_driver_may_not_depend_on_an_adapter() {
        let found = breaches(&with(pkg("cm-api-http", &["cm-adapter-memory"]))).unwrap();
        assert_eq!(
            found,
            [
                "cm-api-http (driver) depends on cm-adapter-memory: a driver never depends on \
                 an adapter (the binary wires them)"
            ]
        );
    }

    #[test]
    fn the_client_side_may_depend_on_the_domain_and_itself_only() {
        let table = [
            ("cm-domain", Role::Domain),
            ("cm-ports", Role::Ports),
            ("cm-api-http", Role::Driver),
            ("cm-client", Role::ClientSide),
            ("cm-agent", Role::ClientSide),
        ];
        let packages = [
            pkg("cm-domain", &[]),
            pkg("cm-ports", &["cm-domain"]),
            pkg("cm-api-http", &["cm-ports"]),
            pkg("cm-client", &["cm-domain", "reqwest"]),
            pkg(
                "cm-agent",
                &["cm-client", "cm-domain", "cm-ports", "cm-api-http"],
            ),
        ];
        assert_eq!(
            breaches_in(&table, &packages),
            Ok(vec![
                "cm-agent (client side) depends on cm-api-http: the client side depends on the \
                 domain and the client side only"
                    .to_owned(),
                "cm-agent (client side) depends on cm-ports: the client side depends on the \
                 domain and the client side only"
                    .to_owned(),
            ])
        );
    }

    #[test]
    fn the_load_generator_may_not_depend_on_a_workspace_crate() {
        let found = breaches(&with(pkg("cm-bench", &["cm-domain"]))).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("cm-bench (outside) depends on cm-domain"));
    }

    #[test]
    fn a_crate_without_a_role_fails_naming_where_to_add_it() {
        let err = breaches(&with(pkg("cm-newcomer", &["cm-ports"]))).unwrap_err();
        assert_eq!(
            err,
            "no role for crate cm-newcomer: add it to ROLES in xtask/src/lint.rs"
        );
    }

    #[test]
    fn only_normal_dependencies_are_read_from_cargo_metadata() {
        let metadata = br#"{"packages": [
            {"name": "cm-api-http", "dependencies": [
                {"name": "cm-ports", "kind": null},
                {"name": "cm-adapter-memory", "kind": "dev"},
                {"name": "cc", "kind": "build"}
            ]}
        ]}"#;
        assert_eq!(
            packages(metadata),
            Ok(vec![pkg("cm-api-http", &["cm-ports"])])
        );
    }

    #[test]
    fn the_summary_counts_crates_per_role() {
        assert_eq!(
            summary(&hexagon(), 0),
            "11 crates (domain 1, ports 1, adapter 4, driver 2, outside 1, assembly 2); \
             0 breach(es)"
        );
    }
}
