//! Rendezvous hashing of 10,000 nodes onto shards of monitors: the time to
//! assign them, the time to diff an added shard, and (printed once, before
//! the timings) the fraction of nodes that an added shard moves.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use promguard_core::shards::{assign_all, Assignment, ShardId, Shards};
use promguard_core::HostName;

const NODES: usize = 10_000;

fn shards(n: usize) -> Shards {
    Shards::new((1..=n).map(|i| ShardId::new(&format!("shard-{i}")).expect("valid shard id")))
        .expect("distinct shards")
}

fn nodes(n: usize) -> Vec<HostName> {
    (1..=n)
        .map(|i| HostName::new(&format!("promguard-node-{i}")).expect("valid host name"))
        .collect()
}

/// Prints, for n → n+1 shards, the fraction of the nodes that moved, the
/// ideal 1/(n+1), and whether every move went to the new shard.
fn print_fractions_moved(nodes: &[HostName]) {
    for n in [3, 4, 9] {
        let before = assign_all(&shards(n), nodes);
        let after = assign_all(&shards(n + 1), nodes);
        let moves = Assignment::moves(&before, &after);
        let new = ShardId::new(&format!("shard-{}", n + 1)).expect("valid shard id");
        let only_to_new = moves.iter().all(|m| m.to == new);
        eprintln!(
            "shards {n} -> {}: {} of {} nodes moved ({:.2} %, ideal 1/{} = {:.2} %), all to the new shard: {only_to_new}",
            n + 1,
            moves.len(),
            nodes.len(),
            100.0 * moves.len() as f64 / nodes.len() as f64,
            n + 1,
            100.0 / (n + 1) as f64,
        );
    }
}

fn bench(c: &mut Criterion) {
    let nodes = nodes(NODES);
    print_fractions_moved(&nodes);
    let (three, four) = (shards(3), shards(4));
    let mut group = c.benchmark_group("shards-10k-nodes");
    group.bench_function("assign to 3 shards", |b| {
        b.iter(|| assign_all(&three, &nodes))
    });
    group.bench_function("assign to 4 shards", |b| {
        b.iter(|| assign_all(&four, &nodes))
    });
    let before = assign_all(&three, &nodes);
    group.bench_function("add a 4th shard (assign to 4 + moves from 3)", |b| {
        b.iter(|| Assignment::moves(&before, &assign_all(&four, &nodes)).len())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
