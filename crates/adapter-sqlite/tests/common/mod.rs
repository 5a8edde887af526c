//! A fresh SQLite database per test, in a temporary directory removed when the test's backend
//! is dropped.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use cm_adapter_sqlite::{SqliteBackend, SqliteSettings};
use cm_ports::testkit::Backend;
use cm_ports::{LocalNotifier, OrderStore};
use tempfile::TempDir;

/// Settings for a database file in `dir`.
pub fn settings_in(dir: &TempDir) -> SqliteSettings {
    SqliteSettings {
        path: dir.path().join("command-manager.db"),
        ..SqliteSettings::default()
    }
}

/// The conformance suite's backend: both ports on one fresh database file, whose directory
/// is removed when the last clone of the backend is dropped.
pub async fn backend() -> Backend {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Arc::new(
        SqliteBackend::open(&settings_in(&dir))
            .await
            .expect("open sqlite"),
    );
    Backend {
        orders: Arc::clone(&store) as Arc<dyn OrderStore>,
        agents: Arc::clone(&store) as Arc<dyn cm_ports::AgentRegistry>,
        requests: Arc::clone(&store) as Arc<dyn cm_ports::RequestStore>,
        components: store,
        notifier: Arc::new(LocalNotifier::new()),
        guard: Some(Arc::new(dir)),
    }
}
