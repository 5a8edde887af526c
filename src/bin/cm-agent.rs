//! The `cm-agent` binary: its code is the `cm-agent` crate (`crates/agent`, docs/agent.md).

fn main() -> std::process::ExitCode {
    cm_agent::main()
}
