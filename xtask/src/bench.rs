//! `cargo xtask bench`: the benchmarks of issue 6, on every backend, into `BENCHMARKS.md`.
//!
//! Builds the release binaries (`command-manager` and the load generator `cm-bench`), runs the
//! criterion micro-benchmarks of `cm-domain`, then per backend starts what it needs (a throwaway
//! PostgreSQL or OpenSearch; the load generator makes the fresh SQLite file), runs `cm-bench run`
//! against the real binary, and stops it. Last, `cm-bench render` rewrites `BENCHMARKS.md` from
//! what this run measured. A backend that cannot be started is reported on the page as not
//! available, with the reason, instead of failing the whole run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{opensearch, postgres, process};

const USAGE: &str = "cargo xtask bench [--backend memory|sqlite|postgres|opensearch|all] [--quick]";

const BACKENDS: [&str; 4] = ["memory", "sqlite", "postgres", "opensearch"];

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut backend = "all".to_owned();
    let mut quick = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--backend" => {
                backend = it
                    .next()
                    .ok_or_else(|| format!("--backend needs a value\nusage: {USAGE}"))?
                    .clone();
            }
            other => {
                if let Some(value) = other.strip_prefix("--backend=") {
                    backend = value.to_owned();
                } else {
                    return Err(format!("unknown argument {other:?}\nusage: {USAGE}"));
                }
            }
        }
    }
    let backends: Vec<&str> = match backend.as_str() {
        "all" => BACKENDS.to_vec(),
        b if BACKENDS.contains(&b) => vec![b],
        other => return Err(format!("unknown backend {other:?}\nusage: {USAGE}")),
    };
    let command = {
        let mut c = format!("cargo xtask bench --backend {backend}");
        if quick {
            c.push_str(" --quick");
        }
        c
    };
    let started = Instant::now();
    let root = crate::project_root();
    let target = target_dir(&root);
    let release = target.join("release");
    let out_dir = target.join("bench");
    fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;

    println!("xtask: building the release binaries");
    process::run_status(
        process::cargo().args([
            "build",
            "--release",
            "-p",
            "command-manager",
            "-p",
            "cm-bench",
        ]),
        "the release build",
    )?;

    println!(
        "xtask: [{:.1} min] criterion micro-benchmarks of cm-domain",
        started.elapsed().as_secs_f64() / 60.0
    );
    let criterion = target.join("criterion");
    let _ = fs::remove_dir_all(&criterion);
    let mut bench = process::cargo();
    bench.args([
        "bench",
        "-p",
        "cm-domain",
        "--features",
        "bench",
        "--bench",
        "domain",
        "--",
    ]);
    if quick {
        bench.args(["--warm-up-time", "1", "--measurement-time", "2"]);
    }
    let criterion_ran = process::run_status(&mut bench, "the criterion benchmarks")
        .map_err(|e| eprintln!("xtask: {e}; the page will say they did not run"))
        .is_ok();

    let mut results = Vec::new();
    for name in backends {
        let out = out_dir.join(format!("{name}.json"));
        let _ = fs::remove_file(&out);
        println!(
            "xtask: [{:.1} min] benchmarking the {name} backend",
            started.elapsed().as_secs_f64() / 60.0
        );
        match measure(name, quick, &release, &out_dir, &out) {
            Ok(()) => {}
            Err(why) => {
                eprintln!("xtask: {name}: not available: {why}");
                write_unavailable(&out, name, quick, &why)?;
            }
        }
        results.push(out);
    }

    let page = root.join("BENCHMARKS.md");
    let mut render = Command::new(release.join("cm-bench"));
    render
        .arg("render")
        .arg("--out")
        .arg(&page)
        .args(["--command", &command])
        .args([
            "--total-secs",
            &format!("{:.0}", started.elapsed().as_secs_f64()),
        ]);
    if criterion_ran {
        render.arg("--criterion").arg(&criterion);
    }
    render.args(&results);
    process::run_status(&mut render, "rendering BENCHMARKS.md")?;
    println!(
        "xtask: wrote {} in {:.1} min",
        page.display(),
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// Starts what `backend` needs, runs the load generator against it, stops it.
fn measure(
    backend: &str,
    quick: bool,
    release: &Path,
    out_dir: &Path,
    out: &Path,
) -> Result<(), String> {
    let mut cmd = raised_open_files(&release.join("cm-bench"));
    cmd.args(["run", "--backend", backend])
        .arg("--binary")
        .arg(release.join("command-manager"))
        .arg("--out")
        .arg(out)
        .arg("--workdir")
        .arg(out_dir.join(format!("work-{backend}")));
    if quick {
        cmd.arg("--quick");
    }
    // Held until the run is over; dropping them stops the servers.
    let mut _pg = None;
    let mut _os = None;
    match backend {
        "postgres" => {
            let server = postgres::start(None)?;
            println!("xtask: started a throwaway PostgreSQL at {}", server.url());
            cmd.args(["--postgres-url", server.url()]);
            _pg = Some(server);
        }
        "opensearch" => {
            opensearch::check()?;
            let boot = Instant::now();
            let server = opensearch::start(None, None)?;
            println!(
                "xtask: started a throwaway OpenSearch at {} in {:.0?}",
                server.url(),
                boot.elapsed()
            );
            cmd.args(["--opensearch-url", server.url()]);
            _os = Some(server);
        }
        _ => {}
    }
    process::run_status(&mut cmd, &format!("the {backend} benchmarks"))?;
    if out.is_file() {
        Ok(())
    } else {
        Err(format!("cm-bench wrote no {}", out.display()))
    }
}

/// `program` run with its soft limit on open files raised to the hard limit (10,000 held
/// long-polls need that many descriptors, in the load generator and in the service it starts).
fn raised_open_files(program: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"ulimit -n "$(ulimit -H -n)" 2>/dev/null; exec "$0" "$@""#,
    ])
    .arg(program);
    cmd
}

/// The result file of a backend that could not be measured.
fn write_unavailable(out: &Path, backend: &str, quick: bool, why: &str) -> Result<(), String> {
    let json = format!(
        "{{\"backend\": \"{backend}\", \"quick\": {quick}, \"unavailable\": \"{}\"}}\n",
        json_escape(why)
    );
    fs::write(out, json).map_err(|e| format!("cannot write {}: {e}", out.display()))
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Where cargo puts build output: `CARGO_TARGET_DIR`, else `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        }
        _ => root.join("target"),
    }
}

#[cfg(test)]
mod tests {
    use super::json_escape;

    #[test]
    fn reasons_are_valid_json_strings() {
        assert_eq!(json_escape("a \"b\"\\\nc\t"), "a \\\"b\\\"\\\\\\nc\\u0009");
    }
}
