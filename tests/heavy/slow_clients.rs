//! Thousands of slow clients (slowloris): each opens a connection, sends part of a request head
//! and then nothing. While they are held, `/healthz`, a submit and a long-poll are still served;
//! the server drops every one of them once the header timeout has passed, and the process's file
//! descriptors come back to what they were before the attack.
//!
//! The figures (connections held, time to drop them, latencies during the attack) are printed;
//! the checks are on behaviour only (no wall-clock upper bound).

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ONE_AT_A_TIME;
use crate::http::{Http, command, order_ids};
use crate::support::Service;

const ATTACKERS: usize = 4_000;
const HEADER_TIMEOUT_SECS: u64 = 20;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .expect("read /proc/<pid>/fd")
}

/// Polls `/proc` until `done` holds for the process's descriptor count (or gives up after
/// `patience`, answering the last count).
async fn wait_for_fds(pid: u32, patience: Duration, done: impl Fn(usize) -> bool) -> usize {
    let give_up = Instant::now() + patience;
    loop {
        let n = open_fds(pid);
        if done(n) || Instant::now() > give_up {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_slow_clients_are_dropped_while_others_are_served() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let header_timeout = HEADER_TIMEOUT_SECS.to_string();
    let service = Service::start(&[
        ("CM_STORAGE__BACKEND", "memory"),
        ("CM_HTTP__HEADER_READ_TIMEOUT_SECS", header_timeout.as_str()),
    ]);
    let pid = service.pid();
    let addr = service.base.trim_start_matches("http://").to_owned();
    let baseline = open_fds(pid);

    // The attack: part of a head on each connection, then silence.
    let attack_started = Instant::now();
    let mut attackers = Vec::with_capacity(ATTACKERS);
    for _ in 0..ATTACKERS {
        // Before the connection exists, so no earlier than the server's clock for it starts.
        let opened = Instant::now();
        let mut conn = TcpStream::connect(&addr).await.expect("connect");
        conn.write_all(b"POST /api/v1/commands HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("write");
        attackers.push((conn, opened));
    }
    let held = wait_for_fds(pid, Duration::from_secs(60), |n| n >= baseline + ATTACKERS).await;
    assert!(
        held >= baseline + ATTACKERS,
        "the service accepted only {} of {ATTACKERS} connections",
        held - baseline
    );
    println!(
        "slow clients: {ATTACKERS} partial heads held by the service after {:.2} s ({held} descriptors, {baseline} before)",
        attack_started.elapsed().as_secs_f64()
    );

    // Meanwhile: a health check, a registration, a long-poll and the submit that wakes it.
    let http = Http::new(Duration::from_secs(120));
    let healthz = http.get(&service.url("/healthz")).await.expect("healthz");
    assert_eq!(healthz.status, 200, "{:?}", healthz.body);
    let put = http
        .put(
            &service.url("/api/v1/agents/slow-a1"),
            &json!({"groups": ["g"]}),
        )
        .await
        .expect("register");
    assert!(matches!(put.status, 200 | 201), "{:?}", put.body);
    let poll = {
        let http = http.clone();
        let url = service.url("/api/v1/agents/slow-a1/poll?wait=60");
        tokio::spawn(async move { http.post(&url, &json!({})).await })
    };
    // The poll is parked once the gauge counts it.
    let metrics_url = service.url("/metrics");
    loop {
        let page = http.get(&metrics_url).await.expect("metrics");
        let text = page.body.as_str().unwrap_or_default().to_owned();
        if text
            .lines()
            .any(|l| l.starts_with("cm_long_polls_open ") && !l.ends_with(" 0"))
        {
            break;
        }
        tokio::task::yield_now().await;
    }
    let submit = http
        .post(
            &service.url("/api/v1/commands"),
            &json!({"commands": [command("slow-a1", 300, "slowloris")]}),
        )
        .await
        .expect("submit");
    assert_eq!(submit.status, 201, "{:?}", submit.body);
    let submitted = order_ids(&submit.body);
    let delivered = poll.await.expect("poll task").expect("poll");
    assert_eq!(delivered.status, 200, "{:?}", delivered.body);
    let got: Vec<String> = delivered.body["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| {
            o["command"]["order_id"]
                .as_str()
                .expect("order_id")
                .to_owned()
        })
        .collect();
    assert_eq!(got, submitted);
    // All of that happened while the attack was still held.
    let still_held = open_fds(pid);
    assert!(
        still_held >= baseline + ATTACKERS,
        "attackers were dropped before the checks ran: {still_held} descriptors"
    );
    println!(
        "slow clients: during the attack /healthz answered in {:.1} ms, a submit in {:.1} ms; the waiting poll returned its order",
        healthz.took.as_secs_f64() * 1e3,
        submit.took.as_secs_f64() * 1e3,
    );
    drop(http);

    // Every attacker is dropped by the server: end of stream, no answer, not before the timeout.
    let mut dropped_after = Vec::with_capacity(ATTACKERS);
    for (mut conn, opened) in attackers {
        let mut out = Vec::new();
        let _ = conn.read_to_end(&mut out).await;
        assert!(
            out.is_empty(),
            "an attacker got an answer: {}",
            String::from_utf8_lossy(&out)
        );
        dropped_after.push(opened.elapsed());
    }
    dropped_after.sort();
    let timeout = Duration::from_secs(HEADER_TIMEOUT_SECS);
    assert!(
        dropped_after[0] >= timeout,
        "dropped before the timeout: {:?}",
        dropped_after[0]
    );
    println!(
        "slow clients: all {ATTACKERS} dropped by the server {:.2}–{:.2} s after they connected (header timeout {HEADER_TIMEOUT_SECS} s)",
        dropped_after[0].as_secs_f64(),
        dropped_after[ATTACKERS - 1].as_secs_f64(),
    );

    let after = wait_for_fds(pid, Duration::from_secs(120), |n| n <= baseline).await;
    assert!(
        after <= baseline,
        "descriptors did not come back: {after}, {baseline} before"
    );
    println!("slow clients: descriptors back to {after} ({baseline} before the attack)");
    let _ = service.stop();
}
