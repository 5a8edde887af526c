//! The service's configuration: defaults, then an optional TOML file, then `CM_` environment
//! variables (`CM_STORAGE__SQLITE__PATH` sets `storage.sqlite.path`). Unknown keys and values
//! out of range stop start-up with a message naming the key. Secrets are never printed.

use std::path::Path;
use std::time::Duration;

use cm_adapter_opensearch::OpenSearchSettings;
use cm_adapter_postgres::PostgresSettings;
use cm_adapter_sqlite::SqliteSettings;
use cm_api_http::{AuthSettings, HttpSettings};
use cm_ports::{RetentionMode, Settings};
use cm_scheduler::SchedulerSettings;
use serde::Deserialize;

/// Everything `command-manager` can be told.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    pub(crate) http: HttpSettings,
    /// `[auth]`: manager tokens; `CM_AUTH__MANAGER_TOKENS=token1,token2`.
    pub(crate) auth: AuthSettings,
    /// `[console]`: the operator console (docs/console.md), on by default.
    pub(crate) console: cm_console::ConsoleSettings,
    pub(crate) storage: StorageConfig,
    pub(crate) scheduler: SchedulerSettings,
    pub(crate) limits: LimitsConfig,
    pub(crate) delivery: DeliveryConfig,
    pub(crate) retention: RetentionConfig,
    pub(crate) log: LogConfig,
}

/// Which backend holds the orders stream and the agents registry, and its settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct StorageConfig {
    pub(crate) backend: BackendKind,
    pub(crate) sqlite: SqliteSettings,
    pub(crate) postgres: PostgresSettings,
    /// `[storage.opensearch]`: `CM_STORAGE__OPENSEARCH__URL`, `…__ORDERS_INDEX`, `…__AGENTS_INDEX`, …
    pub(crate) opensearch: OpenSearchSettings,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BackendKind {
    /// A SQLite file: the embedded default.
    #[default]
    Sqlite,
    /// Process memory: nothing survives a restart.
    Memory,
    Postgres,
    Opensearch,
}

impl BackendKind {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Memory => "memory",
            Self::Postgres => "postgres",
            Self::Opensearch => "opensearch",
        }
    }
}

/// Bounds on what one request may ask for, and batch sizes. The defaults are
/// [`Settings::default`]'s, the one place they are written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LimitsConfig {
    /// Most commands in one submit.
    pub(crate) max_commands: usize,
    /// Most orders one submit may expand into.
    pub(crate) max_orders_per_request: u64,
    /// How far ahead of now a command's `schedule.start_at` may lie, in seconds.
    pub(crate) max_schedule_ahead_secs: u64,
    /// Longest long-poll wait a client may ask for, in seconds.
    pub(crate) max_poll_wait_secs: u64,
    /// Most orders one poll returns.
    pub(crate) max_poll_limit: usize,
    /// Orders written per storage call while expanding.
    pub(crate) write_batch: usize,
    /// Agents read per page while expanding a group.
    pub(crate) expansion_page: usize,
    /// Orders changed per storage call by the scheduler's jobs.
    pub(crate) maintenance_batch: usize,
    /// A request held (paused, or waiting for a concurrency slot) longer than this many seconds
    /// is stopped (`held too long`); default 7 days.
    pub(crate) max_hold_secs: u64,
    /// A submit still writing this many seconds after its record last changed is taken for
    /// dead: its orders are removed and its request ends `aborted`; default 600.
    pub(crate) writing_grace_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let s = Settings::default();
        Self {
            max_commands: s.max_commands,
            max_orders_per_request: s.max_orders_per_request,
            max_schedule_ahead_secs: s.max_schedule_ahead.as_secs(),
            max_poll_wait_secs: s.max_poll_wait.as_secs(),
            max_poll_limit: s.max_poll_limit,
            write_batch: s.write_batch,
            expansion_page: s.expansion_page,
            maintenance_batch: s.maintenance_batch,
            max_hold_secs: s.max_hold.as_secs(),
            writing_grace_secs: s.writing_grace.as_secs(),
        }
    }
}

/// At-least-once delivery (docs/delivery.md). 0 turns a timer off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DeliveryConfig {
    /// A `sent` order without a report is handed out again after this many seconds.
    pub(crate) redeliver_after_secs: u64,
    /// A delivered order without a final result fails (`no result`) after this many seconds.
    pub(crate) result_timeout_secs: u64,
}

/// The defaults are [`cm_domain::DeliveryPolicy::default`]'s, the one place they are written.
impl Default for DeliveryConfig {
    fn default() -> Self {
        let policy = Settings::default().delivery;
        Self {
            redeliver_after_secs: secs_of(policy.redeliver_after),
            result_timeout_secs: secs_of(policy.result_timeout),
        }
    }
}

/// What happens to finished orders (docs/operations.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RetentionConfig {
    /// Finished orders older than this many seconds leave the stream; 0 keeps them forever.
    pub(crate) max_age_secs: u64,
    /// Move them to the archive instead of deleting them.
    pub(crate) archive: bool,
}

/// The defaults are [`Settings::default`]'s, the one place they are written.
impl Default for RetentionConfig {
    fn default() -> Self {
        let s = Settings::default();
        Self {
            max_age_secs: s.retention.map_or(0, |age| age.as_secs()),
            archive: s.retention_mode == RetentionMode::Archive,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LogConfig {
    pub(crate) format: LogFormat,
    /// A `tracing` filter (`info`, `command_manager=debug,info`); `RUST_LOG` overrides it.
    pub(crate) level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    #[default]
    Human,
    Json,
}

/// A setting that stops start-up.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub(crate) struct ConfigError(String);

fn bad(key: &str, why: &str) -> ConfigError {
    ConfigError(format!("{key}: {why}"))
}

/// A timer of `n` seconds, 0 turning it off.
fn secs(n: u64) -> Option<chrono::Duration> {
    (n > 0).then(|| chrono::Duration::seconds(i64::try_from(n).unwrap_or(i64::MAX)))
}

/// The inverse of [`secs`]: an optional timer as seconds, 0 when it is off.
fn secs_of(timer: Option<chrono::Duration>) -> u64 {
    timer.map_or(0, |d| u64::try_from(d.num_seconds()).unwrap_or(0))
}

impl Config {
    /// Layers defaults, `file` (when given) and the `CM_` environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the offending key.
    pub(crate) fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError(format!(
                    "--config {}: no such file",
                    file.display()
                )));
            }
            builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml));
        }
        // Only `CM_SECTION__KEY` variables are settings; others that share the prefix (such as
        // `CM_TEST_POSTGRES_URL` of the test harness) are not ours to refuse.
        let settings: config::Map<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("CM_") && k.contains("__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("CM")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("auth.manager_tokens")
                .with_list_parse_key("auth.relay_tokens")
                .with_list_parse_key("storage.opensearch.urls")
                .source(Some(settings)),
        );
        let raw = builder.build().map_err(|e| ConfigError(e.to_string()))?;
        let cfg: Self = raw
            .try_deserialize()
            .map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let positive = [
            ("limits.max_commands", l.max_commands as u64),
            ("limits.max_orders_per_request", l.max_orders_per_request),
            ("limits.max_poll_limit", l.max_poll_limit as u64),
            ("limits.write_batch", l.write_batch as u64),
            ("limits.expansion_page", l.expansion_page as u64),
            ("limits.maintenance_batch", l.maintenance_batch as u64),
            ("limits.max_hold_secs", l.max_hold_secs),
            ("limits.writing_grace_secs", l.writing_grace_secs),
            ("scheduler.interval_secs", self.scheduler.interval_secs),
            ("http.max_open_polls", self.http.max_open_polls as u64),
            (
                "http.header_read_timeout_secs",
                self.http.header_read_timeout_secs,
            ),
            ("http.idle_timeout_secs", self.http.idle_timeout_secs),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(bad(key, "must be at least 1"));
            }
        }
        if l.expansion_page > 10_000 {
            return Err(bad("limits.expansion_page", "must be at most 10000"));
        }
        if l.max_poll_limit > 1000 {
            return Err(bad("limits.max_poll_limit", "must be at most 1000"));
        }
        // A start beyond 10 years is no schedule anyone means, and keeps `now + horizon` in range.
        if l.max_schedule_ahead_secs > 10 * 366 * 24 * 3600 {
            return Err(bad(
                "limits.max_schedule_ahead_secs",
                "must be at most 316224000 (10 years)",
            ));
        }
        if l.max_poll_wait_secs > 3600 {
            return Err(bad("limits.max_poll_wait_secs", "must be at most 3600"));
        }
        if self.storage.backend == BackendKind::Sqlite
            && self.storage.sqlite.path.as_os_str().is_empty()
        {
            return Err(bad("storage.sqlite.path", "must not be empty"));
        }
        if self.storage.backend == BackendKind::Postgres && self.storage.postgres.url.is_empty() {
            return Err(bad("storage.postgres.url", "must not be empty"));
        }
        if self.storage.backend == BackendKind::Opensearch {
            self.storage.opensearch.validate().map_err(ConfigError)?;
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| bad("log.level", &e.to_string()))?;
        Ok(())
    }

    /// The use cases' settings.
    #[must_use]
    pub(crate) fn service_settings(&self) -> Settings {
        let l = &self.limits;
        Settings {
            max_commands: l.max_commands,
            max_orders_per_request: l.max_orders_per_request,
            max_schedule_ahead: Duration::from_secs(l.max_schedule_ahead_secs),
            write_batch: l.write_batch,
            expansion_page: l.expansion_page,
            delivery: cm_domain::DeliveryPolicy {
                redeliver_after: secs(self.delivery.redeliver_after_secs),
                result_timeout: secs(self.delivery.result_timeout_secs),
            },
            max_poll_wait: Duration::from_secs(l.max_poll_wait_secs),
            max_poll_limit: l.max_poll_limit,
            maintenance_batch: l.maintenance_batch,
            retention: (self.retention.max_age_secs > 0)
                .then(|| Duration::from_secs(self.retention.max_age_secs)),
            retention_mode: if self.retention.archive {
                RetentionMode::Archive
            } else {
                RetentionMode::Delete
            },
            max_hold: Duration::from_secs(l.max_hold_secs),
            writing_grace: Duration::from_secs(l.writing_grace_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_configuration_gives_the_use_cases_their_default_settings() {
        assert_eq!(Config::default().service_settings(), Settings::default());
    }

    #[test]
    fn the_default_delivery_timers_are_the_domain_policy() {
        let d = DeliveryConfig::default();
        assert_eq!(
            (secs(d.redeliver_after_secs), secs(d.result_timeout_secs)),
            {
                let p = cm_domain::DeliveryPolicy::default();
                (p.redeliver_after, p.result_timeout)
            }
        );
    }

    #[test]
    fn a_timer_turned_off_is_zero_seconds_and_back() {
        assert_eq!(secs_of(None), 0);
        assert_eq!(secs(0), None);
        assert_eq!(secs_of(secs(90)), 90);
    }
}
