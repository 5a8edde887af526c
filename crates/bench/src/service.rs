//! One running `command-manager` process: started with `CM_` settings on a free loopback port,
//! its JSON log kept for inspection, its memory and CPU read from `/proc`, stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// How long the service may take to print its `listening` line.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a SIGTERM may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running service process.
#[derive(Debug)]
pub(crate) struct Service {
    name: String,
    child: Child,
    base: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Service {
    /// Starts `binary serve` with `env` on top of an environment without any `CM_` variable or
    /// `RUST_LOG`, listening on a free port of 127.0.0.1, and waits for its `listening` line.
    pub(crate) fn start(name: &str, binary: &Path, env: &[(String, String)]) -> Result<Self> {
        let mut cmd = Command::new(binary);
        cmd.arg("serve");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CM_") {
                cmd.env_remove(key);
            }
        }
        cmd.env_remove("RUST_LOG")
            .env("CM_HTTP__LISTEN", "127.0.0.1:0")
            .env("CM_LOG__FORMAT", "json")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let streams: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().context("no stdout")?),
            Box::new(child.stderr.take().context("no stderr")?),
        ];
        for stream in streams {
            let logs = Arc::clone(&logs);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("BENCH_LOG").is_some() {
                        eprintln!("[service] {line}");
                    }
                    logs.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line);
                }
            });
        }
        let mut service = Self {
            name: name.to_owned(),
            child,
            base: String::new(),
            logs,
        };
        let started = Instant::now();
        loop {
            if let Some(address) = service
                .find_log(0, |v| v["message"] == "listening")
                .and_then(|(_, v)| v["address"].as_str().map(str::to_owned))
            {
                service.base = format!("http://{address}");
                return Ok(service);
            }
            if let Ok(Some(status)) = service.child.try_wait() {
                bail!(
                    "{name}: the service exited ({status}) before listening:\n{}",
                    service.log_text()
                );
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "{name}: the service did not listen within {START_TIMEOUT:?}:\n{}",
                    service.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many log lines were printed so far: a cursor for [`Self::wait_log`].
    pub(crate) fn log_len(&self) -> usize {
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The first JSON log line at or after `from` that `pred` accepts, with its index.
    fn find_log(&self, from: usize, pred: impl Fn(&Value) -> bool) -> Option<(usize, Value)> {
        let logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        logs.iter()
            .enumerate()
            .skip(from)
            .filter_map(|(i, l)| serde_json::from_str::<Value>(l).ok().map(|v| (i, v)))
            .find(|(_, v)| pred(v))
    }

    /// Waits for a JSON log line at or after `from` that `pred` accepts; returns it and the
    /// cursor just past it.
    pub(crate) async fn wait_log(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<(usize, Value)> {
        let started = Instant::now();
        loop {
            if let Some((i, v)) = self.find_log(from, &pred) {
                return Ok((i + 1, v));
            }
            if started.elapsed() > timeout {
                bail!("{}: no log line {what} within {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log_text(&self) -> String {
        let logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        let tail = logs.len().saturating_sub(40);
        logs[tail..].join("\n")
    }

    /// Resident memory (`VmRSS`), in bytes.
    pub(crate) fn rss_bytes(&self) -> Result<u64> {
        rss_bytes(self.pid())
    }

    /// User plus system CPU time consumed so far, in clock ticks.
    pub(crate) fn cpu_ticks(&self) -> Result<u64> {
        cpu_ticks(self.pid())
    }

    /// SIGTERM, then waits for the exit (killing the process if it takes too long).
    pub(crate) fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        if self.child.try_wait().ok().flatten().is_some() {
            return Ok(());
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(anyhow!("{}: the service exited with {status}", self.name))
                };
            }
            if started.elapsed() > STOP_TIMEOUT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{}: the service did not stop on SIGTERM; killed", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `VmRSS` of process `pid`, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kib * 1024)
}

/// `utime + stime` of process `pid` (fields 14 and 15 of `/proc/PID/stat`), in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know of).
pub(crate) fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).expect("rss") > 0);
        assert!(cpu_ticks(pid).is_ok());
    }
}
