//! Opens the configured backend and hands back its ports: the only place that knows which
//! adapter is in use.

use std::sync::Arc;

use cm_adapter_memory::{MemoryAgents, MemoryComponents, MemoryOrders};
use cm_adapter_opensearch::OpenSearchBackend;
use cm_adapter_postgres::PostgresBackend;
use cm_adapter_sqlite::SqliteBackend;
use cm_ports::{
    AgentRegistry, Clock, ComponentRegistry, LocalNotifier, Notifier, OrderStore, Ports,
    RequestStore, StoreError, SystemClock,
};

use crate::config::{BackendKind, StorageConfig};

/// An opened backend: its ports, and how to close it.
pub(crate) struct Storage {
    pub(crate) ports: Ports,
    closer: Closer,
}

enum Closer {
    Nothing,
    Sqlite(SqliteBackend),
    Postgres(Box<PostgresBackend>),
    Opensearch(OpenSearchBackend),
}

impl Storage {
    pub(crate) async fn close(self) {
        match self.closer {
            Closer::Nothing => {}
            Closer::Sqlite(b) => b.close().await,
            Closer::Postgres(b) => b.close().await,
            Closer::Opensearch(b) => b.close().await,
        }
    }
}

/// The ports of `backend`'s stores, instrumented: every backend gets the same spans, failure
/// logs and `cm_store_operation_seconds{backend}` (`cm_ports::instrumented`).
fn ports(
    backend: BackendKind,
    (orders, requests): (Arc<dyn OrderStore>, Arc<dyn RequestStore>),
    (agents, components): (Arc<dyn AgentRegistry>, Arc<dyn ComponentRegistry>),
    notifier: Arc<dyn Notifier>,
) -> Ports {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Ports {
        orders,
        agents,
        components,
        requests,
        notifier,
        clock,
    }
    .instrumented(backend.name())
}

/// Opens the backend named by `storage.backend` (creating its schema when missing).
///
/// # Errors
/// The backend's [`StoreError`], or a message for a backend this build cannot open.
pub(crate) async fn open(storage: &StorageConfig) -> Result<Storage, StoreError> {
    match storage.backend {
        BackendKind::Memory => {
            let orders = MemoryOrders::new();
            let requests = Arc::new(orders.requests());
            Ok(Storage {
                ports: ports(
                    storage.backend,
                    (Arc::new(orders), requests),
                    (
                        Arc::new(MemoryAgents::new()),
                        Arc::new(MemoryComponents::new()),
                    ),
                    Arc::new(LocalNotifier::new()),
                ),
                closer: Closer::Nothing,
            })
        }
        BackendKind::Sqlite => {
            let b = SqliteBackend::open(&storage.sqlite).await?;
            Ok(Storage {
                ports: ports(
                    storage.backend,
                    (Arc::new(b.clone()), Arc::new(b.clone())),
                    (Arc::new(b.clone()), Arc::new(b.clone())),
                    Arc::new(LocalNotifier::new()),
                ),
                closer: Closer::Sqlite(b),
            })
        }
        BackendKind::Postgres => {
            let b = PostgresBackend::open(&storage.postgres).await?;
            let notifier = b.notifier().await?;
            Ok(Storage {
                ports: ports(
                    storage.backend,
                    (Arc::new(b.clone()), Arc::new(b.clone())),
                    (Arc::new(b.clone()), Arc::new(b.clone())),
                    Arc::new(notifier),
                ),
                closer: Closer::Postgres(Box::new(b)),
            })
        }
        BackendKind::Opensearch => {
            let b = OpenSearchBackend::open(&storage.opensearch).await?;
            let notifier = b.notifier();
            Ok(Storage {
                ports: ports(
                    storage.backend,
                    (Arc::new(b.clone()), Arc::new(b.clone())),
                    (Arc::new(b.clone()), Arc::new(b.clone())),
                    Arc::new(notifier),
                ),
                closer: Closer::Opensearch(b),
            })
        }
    }
}

/// Applies pending schema migrations of the configured backend; returns how many ran.
///
/// # Errors
/// The backend's [`StoreError`].
pub(crate) async fn migrate(storage: &StorageConfig) -> Result<usize, StoreError> {
    match storage.backend {
        BackendKind::Memory => Ok(0),
        BackendKind::Sqlite => SqliteBackend::migrate(&storage.sqlite).await,
        BackendKind::Postgres => PostgresBackend::migrate(&storage.postgres).await,
        BackendKind::Opensearch => OpenSearchBackend::migrate(&storage.opensearch).await,
    }
}
