//! What the benchmarks ran on, read from `/proc` and `/etc/os-release`.

use std::fs;

/// Cores, memory, CPU model and operating system.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) cores: usize,
    pub(crate) memory_gib: f64,
    pub(crate) cpu: String,
    pub(crate) os: String,
}

impl Machine {
    pub(crate) fn detect() -> Self {
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        let memory_gib = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|kib| kib.parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let distro = fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|o| {
                o.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_owned())
            })
            .unwrap_or_else(|| std::env::consts::OS.to_owned());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_owned())
            .unwrap_or_default();
        Self {
            cores,
            memory_gib,
            cpu,
            os: format!("{distro}, Linux {kernel}"),
        }
    }
}

/// `/proc/loadavg`'s three load averages.
pub(crate) fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The soft limit on open files of this process (`/proc/self/limits`).
pub(crate) fn open_files_limit() -> Option<u64> {
    fs::read_to_string("/proc/self/limits").ok().and_then(|l| {
        l.lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_is_described() {
        let m = Machine::detect();
        assert!(m.cores >= 1);
        assert!(m.memory_gib > 0.0);
        assert!(open_files_limit().is_some());
        assert_eq!(load_average().split(' ').count(), 3);
    }
}
