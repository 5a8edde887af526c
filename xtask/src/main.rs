//! Developer automation: `cargo xtask <command>` (see `cargo xtask help`).
//!
//! Kept small and quick to compile: the standard library, and serde_json to read `cargo metadata`.

mod bench;
mod browser;
mod fuzz;
mod lint;
mod opensearch;
mod postgres;
mod process;
mod schemathesis;
mod test;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const HELP: &str = "\
cargo xtask <command>

commands:
  lint        every check CI makes before the tests: cargo fmt --check, the architecture of the
              crate graph (xtask/src/lint.rs), cargo clippy on every target and feature
  test        run every test, starting and stopping the backends they need
              [--heavy] [-- <arguments for cargo test>]
  postgres    run a throwaway PostgreSQL in the foreground [--port P] [--data DIR] [--tls DIR];
              prints `postgres ready <URL>`; with --data its cluster is kept in DIR and reused;
              with --tls it serves TLS only, with DIR/server.crt and DIR/server.key
  opensearch  run a throwaway single-node OpenSearch in the foreground [--port P] [--data DIR];
              prints `opensearch ready <URL>`
  fuzz        fuzz request parsing and domain validation [--secs N] [--target T]
              (needs nightly and cargo-fuzz; not part of CI)
  bench       benchmarks of every backend, side by side, into BENCHMARKS.md
              [--backend memory|sqlite|postgres|opensearch|all] [--quick]
  screenshots every console page at 1280x800 and 390x844 into docs/screenshots/ (needs
              chromium and chromium-driver)
  help        this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = args
        .split_first()
        .map_or(("help", &[][..]), |(c, r)| (c.as_str(), r));
    let result = match cmd {
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        "postgres" => postgres::run(rest),
        "bench" => bench::run(rest),
        "lint" => lint::run(rest),
        "test" => test::run(rest),
        "fuzz" => fuzz::run(rest),
        "screenshots" => browser::screenshots(rest),
        "opensearch" => opensearch::run(rest),
        other => Err(format!("unknown command {other:?}\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate's directory).
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}
