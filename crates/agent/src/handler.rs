//! Handlers: the allowlist (a directory of executables, names checked) and running one, with no
//! shell, bounded output and a timeout that kills.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// The exit code reported for a handler killed at its timeout (as `timeout(1)` does).
pub const TIMED_OUT: i16 = 124;
/// The exit code reported when there is no handler for the action (as a shell does).
pub const NO_HANDLER: i16 = 127;
/// The most characters of stdout reported as `data` (the API takes 65,536).
pub const MAX_DATA_CHARS: usize = 60_000;
/// The most characters of the last stderr line reported as `message` (the API takes 1,024).
pub const MAX_MESSAGE_CHARS: usize = 1000;
/// How many bytes of each stream are kept (the tail).
const KEEP_BYTES: usize = 256 * 1024;

/// Why an action has no handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The name is not `[A-Za-z0-9._-]+` or starts with a dot.
    BadName,
    /// No regular executable file of that name directly in the directory.
    Missing,
}

/// Whether `name` may name a handler: `[A-Za-z0-9._-]+`, at most 255 bytes, not starting with
/// a dot (so never `.`, `..`, a hidden file or a path).
#[must_use]
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The handler of `action` in `dir`: a regular file (a symbolic link is refused) with an
/// execute bit, directly in `dir`.
///
/// # Errors
/// [`Refused`] when the name is not allowed or there is no such executable.
pub fn resolve(dir: &Path, action: &str) -> Result<PathBuf, Refused> {
    if !valid_name(action) {
        return Err(Refused::BadName);
    }
    let path = dir.join(action);
    let meta = std::fs::symlink_metadata(&path).map_err(|_| Refused::Missing)?;
    if !meta.file_type().is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(Refused::Missing);
    }
    Ok(path)
}

/// What a handler run ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The exit code; [`TIMED_OUT`] when killed at the timeout; 128 + the signal when killed
    /// by one.
    pub code: i16,
    /// The last non-empty line of stderr, capped, without control characters.
    pub message: String,
    /// The tail of stdout, capped, valid UTF-8.
    pub data: String,
}

/// The environment and input of one run.
#[derive(Debug, Clone)]
pub struct Job {
    pub path: PathBuf,
    pub cwd: PathBuf,
    pub stdin: Vec<u8>,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
}

/// Reads `stream` to its end, keeping its last [`KEEP_BYTES`] bytes in `buf`.
async fn tail(mut stream: impl AsyncRead + Unpin, buf: Arc<Mutex<Vec<u8>>>) {
    let mut chunk = [0_u8; 8192];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut b = buf.lock().expect("tail buffer");
                b.extend_from_slice(&chunk[..n]);
                if b.len() > KEEP_BYTES {
                    let cut = b.len() - KEEP_BYTES;
                    b.drain(..cut);
                }
            }
        }
    }
}

/// Runs `job` (no shell: the file is executed directly) and waits for it, at most
/// `job.timeout`; at the timeout the handler and its process group are killed.
///
/// # Errors
/// The text of the failure when the handler could not be started.
pub async fn run(job: &Job) -> Result<Outcome, String> {
    let mut cmd = Command::new(&job.path);
    cmd.current_dir(&job.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: killed whole at the timeout, and a terminal's Ctrl-C goes to
        // the agent, which decides.
        .process_group(0)
        .kill_on_drop(true)
        .env_remove("CM_KEY")
        .env_remove("CM_TOKEN");
    for (k, v) in &job.env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", job.path.display()))?;
    let pid = child.id();
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        tokio::spawn(tail(child.stdout.take().expect("piped"), Arc::clone(&out))),
        tokio::spawn(tail(child.stderr.take().expect("piped"), Arc::clone(&err))),
    ];
    if let Some(mut stdin) = child.stdin.take() {
        let input = job.stdin.clone();
        // A handler that does not read its input must not block the agent.
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
    }
    let code = match tokio::time::timeout(job.timeout, child.wait()).await {
        Ok(Ok(status)) => exit_code(status),
        Ok(Err(e)) => return Err(format!("cannot wait for the handler: {e}")),
        Err(_) => {
            kill_group(pid);
            let _ = child.start_kill();
            let _ = child.wait().await;
            TIMED_OUT
        }
    };
    // Output is complete once the pipes close; a grandchild that kept them open (and was not
    // in the process group) is not waited for beyond a moment.
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
    }
    let data = text_tail(&out.lock().expect("tail buffer"), MAX_DATA_CHARS);
    let message = last_line(&err.lock().expect("tail buffer"));
    Ok(Outcome {
        code,
        message,
        data,
    })
}

/// Kills the process group `pid` leads (the handler and what it started), without `unsafe`:
/// through `kill(1)`.
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn exit_code(status: std::process::ExitStatus) -> i16 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => i16::try_from(c).unwrap_or(i16::MAX),
        (None, Some(s)) => i16::try_from(128 + s).unwrap_or(i16::MAX),
        (None, None) => -1,
    }
}

/// The last `max` characters of `bytes` as valid UTF-8 (invalid sequences replaced).
#[must_use]
pub fn text_tail(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let n = text.chars().count();
    if n <= max {
        text.into_owned()
    } else {
        text.chars().skip(n - max).collect()
    }
}

/// The last non-empty line of `bytes`, control characters replaced by spaces, at most
/// [`MAX_MESSAGE_CHARS`] characters.
#[must_use]
pub fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    line.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_may_name_a_handler() {
        for ok in ["restart", "a.b", "A-1_x", "x.."] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "", ".", "..", ".hidden", "a/b", "../x", "a b", "a\0b", "é", "a\\b",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(!valid_name(&"a".repeat(256)));
    }

    #[test]
    fn tails_are_capped_and_valid_utf8() {
        assert_eq!(text_tail(b"hello", 3), "llo");
        assert_eq!(text_tail("ééé".as_bytes(), 2), "éé");
        assert_eq!(text_tail(&[b'a', 0xff, b'b'], 10), "a\u{fffd}b");
        assert_eq!(last_line(b"one\ntwo\n\n  \n"), "two");
        assert_eq!(last_line(b"a\tb"), "a b");
        assert_eq!(last_line(&vec![b'x'; 5000]).len(), MAX_MESSAGE_CHARS);
    }
}
