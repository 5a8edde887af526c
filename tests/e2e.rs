//! The whole command loop on the embedded default (SQLite) and in memory, and rollout control
//! of a 1,000-agent fleet on SQLite.

mod support;

use support::consumers::components_and_relays;
use support::rollout::staggered_rollout_cancel_and_retry;
use support::scenario::whole_command_loop;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_command_loop_on_sqlite_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("orders.db");
    let path = path.to_str().expect("utf-8 path");
    whole_command_loop(
        &[
            ("CM_STORAGE__BACKEND", "sqlite"),
            ("CM_STORAGE__SQLITE__PATH", path),
        ],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_and_relays_consume_their_orders_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("orders.db");
    let path = path.to_str().expect("utf-8 path");
    components_and_relays(&[
        ("CM_STORAGE__BACKEND", "sqlite"),
        ("CM_STORAGE__SQLITE__PATH", path),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_and_relays_consume_their_orders_on_memory() {
    components_and_relays(&[("CM_STORAGE__BACKEND", "memory")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_command_loop_on_memory() {
    whole_command_loop(&[("CM_STORAGE__BACKEND", "memory")], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staggered_rollout_to_1000_agents_on_sqlite_can_be_cancelled_and_its_failures_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("orders.db");
    let path = path.to_str().expect("utf-8 path");
    let timings = staggered_rollout_cancel_and_retry(&[
        ("CM_STORAGE__BACKEND", "sqlite"),
        ("CM_STORAGE__SQLITE__PATH", path),
    ])
    .await;
    println!("rollout on sqlite: {timings:?}");
}
