//! The whole command loop on the embedded default (SQLite) and in memory.

mod support;

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
async fn whole_command_loop_on_memory() {
    whole_command_loop(&[("CM_STORAGE__BACKEND", "memory")], false).await;
}
