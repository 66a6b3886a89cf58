//! Placement benchmarks, each beside its baseline in the same run (`make bench`):
//! - lookup: actor id (16 bytes) -> owning member, beside the bare XXH3 of the id and beside the raw
//!   `anchorhash` crate lookup of the same id; `single` is a chain of dependent lookups (latency),
//!   `batch` 1024 independent ones (throughput, per element);
//! - plan: a full re-plan of 65,536 shards after one member joins, beside the crate's 65,536 lookups.

use aether_core::crd::Strategy;
use aether_core::plan::{MemberInput, PlanSpec, plan};
use aether_core::route::RouteTable;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::collections::BTreeSet;
use std::hint::black_box;
use xxhash_rust::xxh3::{Xxh3DefaultBuilder, xxh3_64};

const SHARDS: u32 = 65_536;
const BATCH: usize = 1024;

fn ids() -> Vec<String> {
    // 16-byte ids, like a UUID's raw width.
    (0..BATCH).map(|i| format!("actor-{i:010}")).collect()
}

fn members(n: u32) -> Vec<MemberInput> {
    (0..n)
        .map(|i| MemberInput::active(format!("app-{i}")))
        .collect()
}

fn spec(n: u32, strategy: Strategy) -> PlanSpec {
    PlanSpec {
        shards: SHARDS,
        capacity: 2 * n,
        strategy,
    }
}

fn crate_table(n: u32) -> anchorhash::AnchorHash<&'static str, u32, Xxh3DefaultBuilder> {
    anchorhash::Builder::with_hasher(Xxh3DefaultBuilder)
        .with_resources(0..n)
        .build((2 * n) as u16)
}

fn lookup(c: &mut Criterion) {
    let ids = ids();
    let ids: Vec<&'static str> = ids
        .into_iter()
        .map(|s| &*Box::leak(s.into_boxed_str()))
        .collect();
    for n in [10u32, 100, 1000] {
        let p = plan(
            None,
            &BTreeSet::new(),
            &members(n),
            &spec(n, Strategy::AnchorHash),
        )
        .expect("plans");
        let table = RouteTable::new(p.shards, &p.members, &p.shard_map);
        let oracle = crate_table(n);

        let mut g = c.benchmark_group(format!("lookup/single/{n}"));
        g.bench_function("aether", |b| {
            let mut i = 0usize;
            b.iter(|| {
                let owner = table.owner(ids[i % BATCH]).unwrap_or(0);
                i = i.wrapping_add(owner as usize + 1);
                owner
            });
        });
        g.bench_function("bare_hash", |b| {
            let mut i = 0usize;
            b.iter(|| {
                let h = xxh3_64(ids[i % BATCH].as_bytes());
                i = i.wrapping_add((h & 1) as usize + 1);
                h
            });
        });
        g.bench_function("anchorhash_crate", |b| {
            let mut i = 0usize;
            b.iter(|| {
                let owner = oracle.get_resource(ids[i % BATCH]).copied().unwrap_or(0);
                i = i.wrapping_add(owner as usize + 1);
                owner
            });
        });
        g.finish();

        let mut g = c.benchmark_group(format!("lookup/batch/{n}"));
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function("aether", |b| {
            b.iter(|| {
                ids.iter()
                    .map(|id| table.owner(black_box(id)).unwrap_or(0))
                    .sum::<u32>()
            });
        });
        g.bench_function("bare_hash", |b| {
            b.iter(|| {
                ids.iter()
                    .fold(0u64, |acc, id| acc ^ xxh3_64(black_box(id).as_bytes()))
            });
        });
        g.bench_function("anchorhash_crate", |b| {
            b.iter(|| {
                ids.iter()
                    .map(|id| oracle.get_resource(black_box(id)).copied().unwrap_or(0))
                    .sum::<u32>()
            });
        });
        g.finish();
    }
}

fn planning(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan/65536");
    g.sample_size(20);
    for n in [10u32, 100, 1000] {
        for strategy in [Strategy::AnchorHash, Strategy::Balanced] {
            let spec = spec(n, strategy);
            let before = plan(None, &BTreeSet::new(), &members(n - 1), &spec).expect("plans");
            let after = members(n);
            g.bench_with_input(BenchmarkId::new(format!("{strategy:?}"), n), &n, |b, _| {
                b.iter(|| plan(Some(&before), &BTreeSet::new(), &after, &spec).expect("plans"));
            });
        }
        let oracle: anchorhash::AnchorHash<u32, u32, Xxh3DefaultBuilder> =
            anchorhash::Builder::with_hasher(Xxh3DefaultBuilder)
                .with_resources(0..n)
                .build((2 * n) as u16);
        g.bench_with_input(
            BenchmarkId::new("anchorhash_crate_lookups", n),
            &n,
            |b, _| {
                b.iter(|| {
                    (0..SHARDS)
                        .map(|s| oracle.get_resource(s).copied().unwrap_or(0))
                        .fold(0u32, u32::wrapping_add)
                });
            },
        );
    }
    g.finish();
}

criterion_group!(benches, lookup, planning);
criterion_main!(benches);
