//! Criterion micro-benchmarks of the pure rules: validating a command as the HTTP driver does,
//! expanding a group into orders (with [`Expander`], page by page, as the service's submit
//! does), serialising orders (their document form is what every backend
//! stores) and expiring them. `cargo xtask bench` runs them and summarises them in
//! `BENCHMARKS.md`; `cargo bench -p cm-domain` runs them alone.

use std::hint::black_box;

use chrono::{DateTime, TimeZone, Utc};
use cm_domain::{
    Action, Agent, AgentId, Command, Expander, GroupName, IdSource, IdempotencyKey, KeyedIds,
    Order, OrderId, RequestId, Source, Target, TargetType, Timeout,
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use uuid::Uuid;

/// Ids from a counter: the cheapest source, so expansion is measured, not id generation.
struct CountingIds(u128);

impl IdSource for CountingIds {
    fn request_id(&mut self, _index: usize) -> RequestId {
        self.0 += 1;
        RequestId::from_uuid(Uuid::from_u128(self.0))
    }

    fn order_id(&mut self, _request: &RequestId, _target: &str) -> OrderId {
        self.0 += 1;
        OrderId::from_uuid(Uuid::from_u128(self.0))
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap()
}

/// One command validated from its raw parts, field by field, as the request DTOs do.
fn validate(raw: &serde_json::Value) -> Command {
    let target = Target::new(
        TargetType::parse(raw["target"]["type"].as_str().unwrap()).unwrap(),
        raw["target"]["id"].as_str().unwrap(),
    )
    .unwrap();
    let action = Action::new(
        raw["action"]["name"].as_str().unwrap(),
        raw["action"]["args"].clone(),
        raw["action"]["version"].as_str().unwrap(),
    )
    .unwrap();
    Command::new(
        Source::parse(raw["source"].as_str().unwrap()).unwrap(),
        raw["user"].as_str().map(str::to_owned),
        target,
        action,
        Timeout::new(raw["timeout"].as_i64().unwrap()).unwrap(),
    )
    .unwrap()
}

fn raw_command(target_type: &str, id: &str) -> serde_json::Value {
    json!({
        "source": "users/services", "user": "admin",
        "target": {"type": target_type, "id": id},
        "action": {"name": "restart", "args": {"force": true, "paths": ["/etc"]}, "version": "v5"},
        "timeout": 100
    })
}

fn fleet(n: usize) -> Vec<Agent> {
    let group = GroupName::parse("Test", "g").unwrap();
    let other = GroupName::parse("Linux", "g").unwrap();
    (0..n)
        .map(|i| {
            Agent::new(
                AgentId::parse(&format!("agent-{i:06}"), "id").unwrap(),
                vec![group.clone(), other.clone()],
            )
        })
        .collect()
}

/// Group members per registry page: the service's default `expansion_page`.
const EXPANSION_PAGE: usize = 1_000;

/// A group's members as the registry hands them to the service, one page at a time.
fn pages(members: &[Agent]) -> Vec<Vec<Agent>> {
    members
        .chunks(EXPANSION_PAGE)
        .map(<[Agent]>::to_vec)
        .collect()
}

/// A group command's orders, built as `CommandManager::submit` builds them: a request id, an
/// [`Expander`] spread over the member count, then every page of members in turn, each member
/// in its rollout slot, staged for the write.
fn expand_group(command: &Command, pages: &[Vec<Agent>], ids: &mut dyn IdSource) -> Vec<Order> {
    let members: usize = pages.iter().map(Vec::len).sum();
    let ex = Expander::new(command, 0, ids.request_id(0), now()).spread_over(members as u64);
    let mut staged = Vec::with_capacity(members);
    let mut slot = 0;
    for page in pages {
        for agent in page {
            staged.push(ex.agent_order_at(slot, agent, ids));
            slot += 1;
        }
    }
    staged
}

fn validation(c: &mut Criterion) {
    let mut g = c.benchmark_group("validate");
    let one = raw_command("agent", "agent-000001");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one command", |b| b.iter(|| validate(black_box(&one))));
    let request: Vec<serde_json::Value> = (0..100)
        .map(|i| raw_command("agent", &format!("agent-{i:06}")))
        .collect();
    g.throughput(Throughput::Elements(100));
    g.bench_function("request of 100 commands", |b| {
        b.iter(|| black_box(&request).iter().map(validate).collect::<Vec<_>>());
    });
    g.bench_function("ids of 100 agents", |b| {
        b.iter(|| {
            (0..100)
                .map(|i| AgentId::parse(black_box(&format!("agent-{i:06}")), "id").unwrap())
                .collect::<Vec<_>>()
        });
    });
    g.finish();
}

fn expansion(c: &mut Criterion) {
    let mut g = c.benchmark_group("expand");
    g.sample_size(20);
    let command = validate(&raw_command("group", "Test"));
    for n in [1_000usize, 10_000] {
        let pages = pages(&fleet(n));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("group of {n}, counter ids"), |b| {
            b.iter(|| expand_group(black_box(&command), black_box(&pages), &mut CountingIds(0)));
        });
        let key = IdempotencyKey::parse("retry-42", "key").unwrap();
        g.bench_function(format!("group of {n}, keyed ids (UUID v5)"), |b| {
            b.iter(|| {
                expand_group(
                    black_box(&command),
                    black_box(&pages),
                    &mut KeyedIds::new(&key, "fingerprint"),
                )
            });
        });
    }
    g.finish();
}

fn documents(c: &mut Criterion) {
    let mut g = c.benchmark_group("orders");
    g.sample_size(20);
    let n = 10_000usize;
    let command = validate(&raw_command("group", "Test"));
    let orders = expand_group(&command, &pages(&fleet(n)), &mut CountingIds(0));
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("serialise 10000 documents", |b| {
        b.iter(|| {
            black_box(&orders)
                .iter()
                .map(|o| serde_json::to_vec(o).unwrap())
                .collect::<Vec<_>>()
        });
    });
    let docs: Vec<Vec<u8>> = orders
        .iter()
        .map(|o| serde_json::to_vec(o).unwrap())
        .collect();
    g.bench_function("parse 10000 documents", |b| {
        b.iter(|| {
            black_box(&docs)
                .iter()
                .map(|d| serde_json::from_slice::<cm_domain::Order>(d).unwrap())
                .collect::<Vec<_>>()
        });
    });
    let later = now() + chrono::Duration::seconds(101);
    g.bench_function("expire 10000 overdue orders", |b| {
        b.iter_batched(
            || orders.clone(),
            |orders| {
                orders
                    .iter()
                    .filter(|o| o.is_expired(later))
                    .map(|o| o.expire(later).unwrap())
                    .collect::<Vec<_>>()
            },
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

criterion_group!(benches, validation, expansion, documents);
criterion_main!(benches);
