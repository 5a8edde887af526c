//! Process plumbing shared by the xtask commands: cargo invocations, temporary directories, the
//! watchdog that outlives us, and the foreground mode of the throwaway servers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `cargo` (the one running us, when known), in the workspace root.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cmd.current_dir(crate::project_root());
    cmd
}

/// Runs `cmd` to completion; an error names `what` and the exit status.
pub(crate) fn run_status(cmd: &mut Command, what: &str) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// A new, empty directory `cm-<name>-<pid>-<nanos>` under the system's temporary directory.
pub(crate) fn temp_dir(name: &str) -> Result<PathBuf, String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("cm-{name}-{}-{nanos}", std::process::id()));
    fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// A shell in its own process group that outlives us: once this process is gone it sends
/// `signal` (when given) to `server_pid`, waits up to `grace_tenths` tenths of a second for it to
/// exit, kills it if it lingers, and removes `dir`. Nothing happens if `dir` is already gone (we
/// cleaned up ourselves).
pub(crate) fn spawn_watchdog(
    name: &str,
    server_pid: u32,
    dir: &Path,
    signal: Option<&str>,
    grace_tenths: u32,
) -> std::io::Result<Child> {
    const SCRIPT: &str = r#"
while kill -0 "$1" 2>/dev/null; do sleep 1; done
if [ -d "$3" ]; then
  [ -n "$4" ] && kill -"$4" "$2" 2>/dev/null
  i=0
  while kill -0 "$2" 2>/dev/null && [ $i -lt "$5" ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$2" 2>/dev/null
  rm -rf "$3"
fi
"#;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", SCRIPT, &format!("cm-{name}-watchdog")])
        .arg(std::process::id().to_string())
        .arg(server_pid.to_string())
        .arg(dir)
        .arg(signal.unwrap_or(""))
        .arg(grace_tenths.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn()
}

/// The `--port P` and `--data DIR` arguments of a throwaway server command.
pub(crate) fn server_args(
    command: &str,
    args: &[String],
) -> Result<(Option<u16>, Option<PathBuf>), String> {
    let mut port = None;
    let mut data = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--port" => {
                let value = it.next().ok_or("--port needs a value")?;
                port = Some(
                    value
                        .parse::<u16>()
                        .map_err(|_| format!("--port {value:?} is not a port number"))?,
                );
            }
            "--data" => {
                let value = it.next().ok_or("--data needs a directory")?;
                data = Some(PathBuf::from(value));
            }
            other => return Err(format!("{command}: unknown argument {other:?}")),
        }
    }
    Ok((port, data))
}

/// Blocks until standard input ends (Ctrl-D, or the pipe of a parent that went away). Ctrl-C
/// ends the whole process instead, and the server's watchdog cleans up after it.
pub(crate) fn wait_for_end_of_input() {
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
}

/// Ends `child`: sends it `signal` (its graceful shutdown), waits up to `timeout` for it to
/// exit, then kills it.
pub(crate) fn stop_child(child: &mut Child, signal: &str, timeout: Duration) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => sleep(Duration::from_millis(50)),
        }
    }
}
