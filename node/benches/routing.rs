//! Routing one request on a node (`make bench`): [`Ownership::route`] at 1,024 and 65,536 shards
//! while a rebalance is pending (a third of the shards moving), beside what the node did per request
//! before `Ownership` existed (a clone of the whole routing view: plan message, route table and
//! pending moves, then the lookup) and beside the bare route-table lookup.

use aether_core::plan::{MemberInput, Move, PlanSpec, plan};
use aether_core::protocol::PlanMessage;
use aether_core::route::RouteTable;
use aether_core::types::Strategy;
use aether_node::ownership::{Ownership, Route};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::collections::{BTreeSet, HashMap};
use std::hint::black_box;

const IDS: usize = 1024;

fn members(n: usize) -> Vec<MemberInput> {
    (0..n)
        .map(|i| MemberInput::active(format!("app-{i}")))
        .collect()
}

/// The routing view the node cloned on every request before (`routing.rs`, removed).
#[derive(Clone)]
struct ClonedView {
    plan: PlanMessage,
    table: RouteTable,
    pending: HashMap<u32, String>,
}

impl ClonedView {
    fn owner(&self, shard: u32) -> Option<&str> {
        if let Some(from) = self.pending.get(&shard) {
            return Some(from);
        }
        let i = self.table.owner_of_shard(shard)?;
        self.plan.members.get(i as usize).map(|m| m.name.as_str())
    }
}

fn routing(c: &mut Criterion) {
    let ids: Vec<String> = (0..IDS).map(|i| format!("actor-{i:010}")).collect();
    for shards in [1_024u32, 65_536] {
        let spec = PlanSpec {
            shards,
            capacity: 8,
            strategy: Strategy::AnchorHash,
        };
        let two = plan(None, &BTreeSet::new(), &members(2), &spec).expect("plan");
        let three = plan(Some(&two), &BTreeSet::new(), &members(3), &spec).expect("plan");
        let msg = PlanMessage::new(&three, 4, 30);
        let mut own = Ownership::new("app-0");
        own.on_plan(PlanMessage::new(&two, 4, 30), []);
        own.on_plan(msg.clone(), []);
        let view = ClonedView {
            table: RouteTable::new(msg.shards, &msg.members, &msg.shard_map),
            pending: msg
                .moves
                .iter()
                .filter_map(|m: &Move| Some((m.shard, m.from.clone()?)))
                .collect(),
            plan: msg.clone(),
        };
        let mut group = c.benchmark_group(format!("route_{shards}"));
        group.bench_function(BenchmarkId::from_parameter("ownership"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % IDS;
                let local = matches!(own.route(black_box(&ids[i]), 0), Route::Local { .. });
                black_box(local)
            });
        });
        group.bench_function(BenchmarkId::from_parameter("clone_per_request"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % IDS;
                let v = black_box(&view).clone();
                let shard = v.table.shard(black_box(&ids[i]));
                black_box(v.owner(shard) == Some("app-0"))
            });
        });
        group.bench_function(BenchmarkId::from_parameter("bare_table"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % IDS;
                black_box(view.table.owner(black_box(&ids[i])))
            });
        });
        group.finish();
    }
}

criterion_group!(benches, routing);
criterion_main!(benches);
