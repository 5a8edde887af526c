//! The `cmctl` binary: its code is the `cmctl` crate (`crates/cmctl`, docs/cli.md).

fn main() -> std::process::ExitCode {
    cmctl::main()
}
