//! The explanatory text of `BENCHMARKS.md`: how each scenario is measured, and, for each
//! missed target, what limits it (from the numbers of the run, plus what profiling found).

use crate::render::{
    DELIVERY_TWO_P99_TARGET_MS, EXPIRY_RATIO_TARGET, FANOUT_RATIO_TARGET, OPEN_POLLS_RSS_TARGET_MB,
    OPEN_POLLS_SECS_TARGET, RELAY_P99_TARGET_MS, count, delivery_p99_target_ms, throughput_target,
};
use crate::results::BackendRun;
use crate::stats::median;

/// How the numbers are made, for readers who want to trust them.
pub(crate) const METHOD: &str = "\
## How it is measured

- The service is the release build of `command-manager`, started by the load generator with \
`CM_` variables on 127.0.0.1 (one instance `A`; a second instance `B` on the same store for \
delivery across instances; an instance `E` whose scheduler drains the expiry backlog). The load \
generator (`crates/bench`, the `cm-bench` binary) talks to it over HTTP/1.1 with `reqwest`; it \
depends on no adapter and not on the HTTP driver. Both run on the same machine, so they share \
its cores.
- Raw baselines use the backend's own client library (`sqlx` for SQLite and PostgreSQL, the \
`opensearch` crate) against the very table or index the service uses, with the service's \
durability settings: SQLite in WAL mode with `synchronous = FULL`, the same PostgreSQL server \
(the throwaway one runs with `fsync = off`, for the service and the baseline alike), OpenSearch \
without refresh. Turning documents into columns happens before the clock starts.
- Agents are registered before any measurement, through the bulk route `PUT /api/v1/agents` \
(batches of 10,000, 4 at a time) on every backend; registration is timed and reported \
(\"registered N agents in S s\"), as the target of bulk registration, not as a scenario.
- Every percentile is nearest-rank over all samples; nothing is discarded except the 5 warm-up \
rounds of the delivery scenario.
- Delivery is measured as an agent sees it in real use: with at least 100,000 orders pending \
for other agents in the stream (topped up with fan-outs over the fleet first; the table says how \
many), and each sample split at the submit's `201`, so the submit's own latency and the wait \
after it are told apart.
- Speed is measured here, never by timed tests: the test suite has no timing assertions.

";

/// One sentence per missed target: the numbers, and what limits it.
pub(crate) fn misses(cols: &[&BackendRun]) -> Vec<String> {
    let memory_fanout = |agents: u64| {
        cols.iter()
            .find(|r| r.backend == "memory")
            .and_then(|r| r.fanout.iter().find(|f| f.agents == agents))
            .filter(|f| !f.ours_secs.is_empty())
            .map(|f| median(&f.ours_secs))
    };
    let mut out = Vec::new();
    let mut rss_misses = Vec::new();
    for r in cols {
        for f in &r.fanout {
            if r.backend == "memory" || f.ours_secs.is_empty() || f.raw_secs.is_empty() {
                continue;
            }
            let (ours, raw) = (median(&f.ours_secs), median(&f.raw_secs));
            if ours / raw <= FANOUT_RATIO_TARGET {
                continue;
            }
            let mut s = format!(
                "**{} fan-out of {} agents**: {:.3} s against {:.3} s raw ({:.2}×, target \
                 {FANOUT_RATIO_TARGET}×).",
                r.backend,
                count(f.agents as f64),
                ours,
                raw,
                ours / raw
            );
            if let Some(mem) = memory_fanout(f.agents) {
                s.push_str(&format!(
                    " The memory backend takes {mem:.3} s for the same fan-out: that much is \
                     spent outside storage (HTTP, reading the registry page by page, building \
                     and serialising the orders, the response with every order id)."
                ));
            }
            if let Some(read) = f.group_read_secs {
                s.push_str(&format!(
                    " Reading the members through the API, 1,000 a page as the expansion \
                     does, takes {read:.3} s on its own."
                ));
            }
            s.push(' ');
            s.push_str(fanout_limit(&r.backend));
            out.push(s);
        }
        let target = delivery_p99_target_ms(&r.backend);
        if let Some(d) = r.delivery.iter().find(|d| d.topology == "one instance")
            && d.latency.p99_ms >= target
        {
            out.push(format!(
                "**{} delivery**: p99 {:.1} ms (target {target} ms), p50 {:.1} ms, max {:.1} ms. \
                 {}",
                r.backend,
                d.latency.p99_ms,
                d.latency.p50_ms,
                d.latency.max_ms,
                delivery_limit(&r.backend)
            ));
        }
        if r.backend == "postgres"
            && let Some(d) = r.delivery.iter().find(|d| d.topology == "two instances")
            && d.latency.p99_ms >= DELIVERY_TWO_P99_TARGET_MS
        {
            out.push(format!(
                "**{} delivery across two instances**: p99 {:.1} ms (target \
                 {DELIVERY_TWO_P99_TARGET_MS} ms), p50 {:.1} ms. {}",
                r.backend,
                d.latency.p99_ms,
                d.latency.p50_ms,
                delivery_limit(&r.backend)
            ));
        }
        if let Some(relay) = &r.relay
            && relay.wake.p99_ms >= RELAY_P99_TARGET_MS
        {
            out.push(format!(
                "**{} relay wake-up**: p99 {:.1} ms for a claim naming {} agents (target \
                 {RELAY_P99_TARGET_MS} ms), p50 {:.1} ms. {}",
                r.backend,
                relay.wake.p99_ms,
                relay.agents,
                relay.wake.p50_ms,
                delivery_limit(&r.backend)
            ));
        }
        if let Some(t) = &r.throughput {
            let rate = t.orders as f64 / t.secs;
            let target = throughput_target(&r.backend);
            if rate < target {
                out.push(format!(
                    "**{} submit throughput**: {} orders/s with {} clients (target {}), p50 \
                     {:.1} ms and p99 {:.1} ms a submit. {}",
                    r.backend,
                    count(rate),
                    t.clients,
                    count(target),
                    t.latency.p50_ms,
                    t.latency.p99_ms,
                    throughput_limit(&r.backend)
                ));
            }
        }
        if let Some(o) = &r.open_polls {
            let mb = o.rss_holding_bytes as f64 / 1e6;
            if mb >= OPEN_POLLS_RSS_TARGET_MB {
                rss_misses.push(format!(
                    "{} {mb:.0} MB ({:.0} KB a poll)",
                    r.backend,
                    (o.rss_holding_bytes.saturating_sub(o.rss_before_bytes)) as f64
                        / o.polls as f64
                        / 1e3
                ));
            }
            if o.established_secs >= OPEN_POLLS_SECS_TARGET {
                out.push(format!(
                    "**{} reconnect storm**: {} long-polls all admitted after {:.1} s (target \
                     {OPEN_POLLS_SECS_TARGET} s). {}",
                    r.backend,
                    count(o.polls as f64),
                    o.established_secs,
                    storm_limit(&r.backend)
                ));
            }
            if o.refused > 0 {
                out.push(format!(
                    "**{} open long-polls** (not a target, but worth knowing): {} polls were \
                     refused with 503 while the 10,000 opened (the service answers 503 when its \
                     storage refuses or times out), {:.0} s until all were held.",
                    r.backend, o.refused, o.established_secs
                ));
            }
        }
        if let Some(e) = &r.expiry {
            let x = e.ours_secs / e.raw_secs;
            if x > EXPIRY_RATIO_TARGET {
                out.push(format!(
                    "**{} expiry drain**: {} overdue orders in {:.3} s against {:.3} s raw \
                     ({x:.2}×, target {EXPIRY_RATIO_TARGET}×). {}",
                    r.backend,
                    count(e.orders as f64),
                    e.ours_secs,
                    e.raw_secs,
                    expiry_limit(&r.backend)
                ));
            }
        }
    }
    if !rss_misses.is_empty() {
        out.push(format!(
            "**open long-polls**: resident memory while holding 10,000 idle polls: {} (target \
             {OPEN_POLLS_RSS_TARGET_MB} MB). {OPEN_POLLS_MEMORY}",
            rss_misses.join(", ")
        ));
    }
    out
}

/// What limits the submit throughput of one backend.
fn throughput_limit(backend: &str) -> &'static str {
    match backend {
        "opensearch" => {
            "Concurrent submits are grouped (group commit), and a group costs three `_bulk` \
             requests in a row (the records `writing`, the orders, the records committed by \
             script), each durable in the translog before the next: with 32 clients a group \
             can hold at most 32 submits, so the rate is bounded by 32 over three bulk round \
             trips of a JVM sharing the two cores with the service and the load generator."
        }
        _ => {
            "Concurrent submits are grouped (group commit): one transaction (one statement on \
             PostgreSQL) and one fsync carry every submit queued while the previous group was \
             written, so storage is no longer paid per submit. What is left per submit is \
             CPU: the HTTP request and its JSON, validation, the agent's lookup, building the \
             order and its record, and the answer, on two cores shared with the backend and \
             the load generator's 32 clients."
        }
    }
}

/// What limits the admission of a reconnect storm on one backend.
fn storm_limit(_backend: &str) -> &'static str {
    "An opening poll subscribes, then looks in storage once before it waits. Polls that open \
     while another is looking share that look: one `OrderStore::first_due` query (a `GROUP \
     BY` over the agents' indexes in SQL, one search with a `terms` aggregation on OpenSearch) \
     answers up to 1,000 of them, and only the agents with an order deliverable now claim. \
     Before that, each poll made a claim and a `next_due` of its own (on OpenSearch two \
     searches, on SQLite a write transaction): a quick run on this machine went from 25.5 s \
     to 3.4 s on OpenSearch, 4.4 s to 2.3 s on SQLite and 6.0 s to 3.9 s on PostgreSQL. What \
     remains is the ramp itself (the load generator keeps at most 1,000 polls unanswered) and \
     HTTP on two cores shared with the backend and the load generator."
}

/// What limits the expiry drain on one backend (profiled), and what was fixed.
fn expiry_limit(_backend: &str) -> &'static str {
    "Each batch of `limits.maintenance_batch` (1,000) is one statement \
    that merges the domain's expiry patch into the selected documents (until this change every \
    batch was read, decoded, expired in Rust, encoded and written back: 1.8–2.8× raw). The \
    statement costs what the raw update does: on PostgreSQL 100,000 overdue orders expire in \
    2.95 s as 100 prepared batches through `psql` against 3.38 s for the raw `UPDATE` on the \
    same table (batches of 5,000: 3.10 s against 2.76 s). Two things are left beyond it: each \
    batch restarts its index scan past the entries of the rows it just expired (4.6 ms of the \
    61st batch's 34 ms: `EXPLAIN (ANALYZE, BUFFERS)`), and the service's own round trips, \
    commits and the scheduler's other jobs share the two cores with the backend. One fix came \
    from the plans: repeating the candidates' condition outside the locking `SELECT` made \
    PostgreSQL's generic plan of the prepared statement hash-join every overdue row (125 ms \
    instead of 28 ms a batch with 40,000 left). OpenSearch pays a refresh and an \
    `_update_by_query` set-up per batch (batches of 5,000 drained 10,000 in 2.0 s against 3.8 s \
    with 1,000 in one quick run)."
}

/// What the held polls' memory is made of (profiled), and what was fixed.
const OPEN_POLLS_MEMORY: &str = "Profiled with `valgrind --tool=massif` (1,000 held polls): \
    the heap while holding them is about 35 KB a poll on the memory backend and 37.5 KB on \
    OpenSearch, of which hyper's read buffer per connection (grown to 16 KB) and its connection \
    state (8 KB, its header write buffer) are the largest parts, then the boxed futures of the \
    middleware stack and the task. Two fixes came from profiling: one shared route table \
    instead of a copy per connection (`cm_api_http::serve` serves `into_make_service()`; 14 KB \
    a poll), and OpenSearch request bodies turned into text before waiting for a connection \
    (the heap peak of 1,000 polls opening went from 56 MB to 37.5 MB: each claim's query, a \
    `serde_json::Value` tree, had been held while thousands of claims queued for \
    `max_connections`). What the SQL and OpenSearch backends held beyond the memory backend \
    was freed memory the allocator kept after the burst of opening claims (the same with \
    jemalloc, `LD_PRELOAD` experiment: memory backend 301 MB, OpenSearch 373 MB). Coalescing \
    the first looks of opening polls (one `first_due` query for up to 1,000 of them instead of \
    a claim and a `next_due` each) shrank that burst: in a quick run PostgreSQL went from \
    303 MB to 266 MB, OpenSearch from 296 MB to 282 MB and SQLite from 272 MB to 268 MB, \
    beside 264 MB on the memory backend, which has no such burst: about 23 KB a held poll, \
    hyper's per-connection buffers the largest part, and those its HTTP/1 server builder \
    cannot shrink (hyper 1.12: `max_buf_size` only caps growth, reads reserve 8 KB at a time, \
    and the 8 KB header write buffer is allocated when the connection opens). Fewer glibc \
    arenas (`MALLOC_ARENA_MAX=2`) changed nothing (266 MB against 263 MB on the memory \
    backend).";

/// What limits the fan-out of one backend against its raw write.
fn fanout_limit(backend: &str) -> &'static str {
    match backend {
        "memory" => {
            "The memory baseline is a `HashMap` insert of ready-made documents, which no \
             service reached over HTTP can approach: the ratio says how much the request \
             path costs, not how the store performs."
        }
        "sqlite" => {
            "The service writes the fan-out in batches of `limits.write_batch` (2,000) orders, \
             each its own durable transaction (a WAL `fsync` each: five where the raw write has \
             one), reading and expanding the pages of the next batch while one is written; it \
             also builds every order and serialises it twice (into the table and into the 201 \
             with its 10,000 ids), which the raw write of ready-made documents does not."
        }
        "postgres" => {
            "A 10,000-agent fan-out is 5 write transactions (`limits.write_batch` = 2,000 \
             orders, as eight 250-row `INSERT … SELECT FROM UNNEST` each, plain inserts that \
             fall back to `ON CONFLICT DO NOTHING` only when an id exists) and 10 reads of \
             1,000 group members, those of the next batch read and expanded while one is \
             written; the raw write is one transaction (or one `COPY`) of ready-made documents, \
             while the service also builds every order, serialises it for `jsonb` and for the \
             201, and binds 14 column arrays. The service and PostgreSQL share the two cores."
        }
        "opensearch" => {
            "The service writes through `_bulk` in batches of `limits.write_batch` (2,000) \
             documents serialised straight into the request body, reading and expanding the \
             next batch's pages (searches of the agents index) while one is written; the raw \
             write sends two 5,000-document bulks of ready-made text. Batches of 5,000 made no \
             clear difference (1.96× in one run against 1.62× with 2,000). Both sides speed up \
             over the five repetitions as the JVM warms (see the table). The OpenSearch JVM, \
             the service and the load generator share the two cores."
        }
        _ => "",
    }
}

/// What limits delivery latency on one backend.
fn delivery_limit(backend: &str) -> &'static str {
    match backend {
        "opensearch" => {
            "A submit writes through `_bulk` and the woken poll claims with a search plus a \
             realtime `_mget` of what this instance wrote since the last refresh, then a \
             conditional write: three round trips to a JVM that shares the two cores with the \
             service and the load generator. Across instances a waiting poll hears of an order \
             when its instance's watch next looks (once per \
             `storage.opensearch.poll_interval_ms`, 1 s)."
        }
        "postgres" => POSTGRES_DELIVERY,
        _ => {
            "On this shared two-core machine the tail is set by scheduling: the service, the \
             load generator and the backend compete for the same cores."
        }
    }
}

/// What the PostgreSQL delivery figures are made of, measured with 100,000 orders pending.
const POSTGRES_DELIVERY: &str = "Measured with 100,000 orders pending for other agents (quick \
    run, load average 7 on the two cores from other builds): one instance p50 4.0–5.1 ms, p99 \
    23–25 ms from the submit; after the submit's `201` only p50 1.0–1.1 ms, p99 9.5–11.4 ms; the \
    submit's own latency p50 3.7–4.0 ms, p99 17–24 ms. Two instances: 7.5–8.3 / 33 ms from the \
    submit, 1.7–2.1 / 17–18 ms after the `201`. So most of the tail is the submit itself (its \
    request record and order written and committed before the `201`), not the wake-up or the \
    claim. The stream's size does not slow the claim or `next_due`: `EXPLAIN (ANALYZE, \
    BUFFERS)` of their generic plans with 100,000 pending read `orders_open_by_agent` (a bitmap \
    scan, 24–53 buffers, 0.24–0.29 ms) and `orders_pending_by_agent_available` (4 buffers, \
    0.06–0.2 ms), so no index was added. The 36 ms median of the issue is not reproduced on \
    this code: the tail left is the two shared cores, which the service, PostgreSQL, the load \
    generator and other work take turns on.";
