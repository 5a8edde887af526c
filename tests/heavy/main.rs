//! The heavy tests: backend outages (`outage`) and several service instances on one backend
//! (`instances`), against real PostgreSQL and OpenSearch servers, and thousands of slow clients
//! against one service (`slow_clients`).
//!
//! Built only with the `heavy` feature: `cargo xtask test --heavy` runs them after starting the
//! shared servers (and exports `CM_TEST_POSTGRES_URL`, `OPENSEARCH_URL`, and `CM_XTASK_BIN`,
//! with which the outage and node-loss tests start servers of their own: `node_loss` runs a
//! three-node OpenSearch cluster and kills nodes of it). The tests take turns (one at a
//! time): each loads the two cores on its own, and its timing checks should not measure the
//! others.

#[path = "../support/mod.rs"]
mod support;

mod crash;
mod http;
mod instances;
mod node_loss;
mod outage;
mod rate_control;
mod servers;
mod slow_clients;

/// Held for the whole of each test: one heavy test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
