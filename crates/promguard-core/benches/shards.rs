//! Rendezvous hashing of 10,000 nodes onto shards of monitors: the time to
//! assign them, the time to diff an added shard, and (printed once, before
//! the timings) the fraction of nodes that an added shard moves; then the
//! planner itself at 10,000 nodes: replanning a deployment of three shards
//! (two replicas each, a storage host) for a fourth, as `promguard plan`
//! does, with the nodes its `MoveNode` changes list.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use promguard_core::config::Config;
use promguard_core::shards::{assign_all, Assignment, ShardId, Shards};
use promguard_core::{planner, Change, HostName, State};

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

/// A config of `shards` shards of two replicas, a storage host and 10,000
/// nodes.
fn sharded_config(shards: &[&str]) -> Config {
    let list: Vec<String> = shards.iter().map(|s| format!("{s:?}")).collect();
    let text = format!(
        "[deployment]\nsubnet = \"10.0.0.0/16\"\n[monitor]\nreplicas = 2\nshards = [{}]\n[storage]\n[nodes]\ncount = {NODES}\n",
        list.join(", ")
    );
    Config::from_toml(&text, std::path::Path::new("bench.toml")).expect("a valid config")
}

fn bench_planner(c: &mut Criterion) {
    let three = sharded_config(&["a", "b", "c"]);
    let four = sharded_config(&["a", "b", "c", "d"]);
    let mut state: State = planner::plan(&three, None).expect("plans").next_state;
    for record in state.hosts.values_mut() {
        record.created = true;
    }
    let plan = planner::plan(&four, Some(&state)).expect("plans");
    let moved = plan
        .changes
        .iter()
        .filter(|c| matches!(c, Change::MoveNode { .. }))
        .count();
    let peers: Vec<usize> = plan.monitors().map(|m| m.peers.len()).collect();
    eprintln!(
        "planner, 3 -> 4 shards of 2 replicas, {NODES} nodes: {moved} nodes move ({:.2} %); peers per monitor {peers:?}",
        100.0 * moved as f64 / NODES as f64
    );
    let mut group = c.benchmark_group("planner-10k-nodes");
    group.sample_size(10);
    group.bench_function("replan 3 shards x 2 replicas for a 4th", |b| {
        b.iter(|| {
            planner::plan(&four, Some(&state))
                .expect("plans")
                .changes
                .len()
        })
    });
    group.bench_function("replan 3 shards x 2 replicas unchanged", |b| {
        b.iter(|| {
            planner::plan(&three, Some(&state))
                .expect("plans")
                .changes
                .len()
        })
    });
    // The same nodes behind one monitor, for comparison.
    let single = Config::from_toml(
        &format!("[deployment]\nsubnet = \"10.0.0.0/16\"\n[nodes]\ncount = {NODES}\n"),
        std::path::Path::new("bench.toml"),
    )
    .expect("a valid config");
    let mut single_state: State = planner::plan(&single, None).expect("plans").next_state;
    for record in single_state.hosts.values_mut() {
        record.created = true;
    }
    group.bench_function("replan one monitor unchanged", |b| {
        b.iter(|| {
            planner::plan(&single, Some(&single_state))
                .expect("plans")
                .changes
                .len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench, bench_planner);
criterion_main!(benches);
