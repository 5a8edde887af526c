//! A fresh SQLite database per test, in a temporary directory removed when the test's backend
//! is dropped.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cm_adapter_sqlite::{SqliteBackend, SqliteSettings};
use cm_domain::{Agent, AgentId, DeliveryPolicy, GroupName, Order, OrderId, RequestId};
use cm_ports::testkit::Backend;
use cm_ports::{
    AgentPageRequest, AgentRegistry, Batch, LocalNotifier, OrderCursor, OrderFilter,
    OrderPageRequest, OrderStore, Page, ReplaceError, RetentionMode, StatusCounts, StoreError,
    Upserted,
};
use tempfile::TempDir;

/// Settings for a database file in `dir`.
pub fn settings_in(dir: &TempDir) -> SqliteSettings {
    SqliteSettings {
        path: dir.path().join("command-manager.db"),
        ..SqliteSettings::default()
    }
}

/// The conformance suite's backend: both ports on one fresh database file.
pub async fn backend() -> Backend {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteBackend::open(&settings_in(&dir))
        .await
        .expect("open sqlite");
    let shared = Arc::new(TempBackend { store, _dir: dir });
    Backend {
        orders: Arc::clone(&shared) as Arc<dyn OrderStore>,
        agents: shared,
        notifier: Arc::new(LocalNotifier::new()),
    }
}

/// A [`SqliteBackend`] that owns the directory its file lives in.
#[derive(Debug)]
pub struct TempBackend {
    store: SqliteBackend,
    _dir: TempDir,
}

#[async_trait]
impl OrderStore for TempBackend {
    async fn insert(&self, orders: &[Order]) -> Result<u64, StoreError> {
        self.store.insert(orders).await
    }

    async fn get(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        OrderStore::get(&self.store, id).await
    }

    async fn query(
        &self,
        filter: &OrderFilter,
        page: &OrderPageRequest,
    ) -> Result<Page<Order, OrderCursor>, StoreError> {
        self.store.query(filter, page).await
    }

    async fn claim(
        &self,
        agent: &AgentId,
        limit: usize,
        now: DateTime<Utc>,
        policy: &DeliveryPolicy,
    ) -> Result<Vec<Order>, StoreError> {
        self.store.claim(agent, limit, now, policy).await
    }

    async fn replace(&self, current: &Order, next: &Order) -> Result<(), ReplaceError> {
        self.store.replace(current, next).await
    }

    async fn expire_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Batch, StoreError> {
        self.store.expire_due(now, limit).await
    }

    async fn give_up_unreported(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        self.store.give_up_unreported(now, limit).await
    }

    async fn purge_finished(
        &self,
        cutoff: DateTime<Utc>,
        mode: RetentionMode,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        self.store.purge_finished(cutoff, mode, limit).await
    }

    async fn get_archived(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        self.store.get_archived(id).await
    }

    async fn progress(&self, request: &RequestId) -> Result<StatusCounts, StoreError> {
        self.store.progress(request).await
    }

    async fn delete_request(&self, request: &RequestId) -> Result<u64, StoreError> {
        self.store.delete_request(request).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }
}

#[async_trait]
impl AgentRegistry for TempBackend {
    async fn upsert(&self, agent: &Agent) -> Result<Upserted, StoreError> {
        self.store.upsert(agent).await
    }

    async fn upsert_many(&self, agents: &[Agent]) -> Result<u64, StoreError> {
        self.store.upsert_many(agents).await
    }

    async fn get(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        AgentRegistry::get(&self.store, id).await
    }

    async fn delete(&self, id: &AgentId) -> Result<bool, StoreError> {
        self.store.delete(id).await
    }

    async fn list(&self, page: &AgentPageRequest) -> Result<Page<Agent, AgentId>, StoreError> {
        self.store.list(page).await
    }

    async fn count(&self, group: Option<GroupName>) -> Result<u64, StoreError> {
        self.store.count(group).await
    }
}
