//! Planning and rendering at fleet scale: 10,000 nodes in a /16.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use promguard_core::config::Config;
use promguard_core::planner;
use promguard_wg::files::host_files as render_host;
use promguard_wg::Secrets;

fn config(nodes: usize) -> Config {
    let text = format!("[deployment]\nsubnet = \"10.0.0.0/16\"\n[nodes]\ncount = {nodes}\n");
    Config::from_toml(&text, Path::new("bench.toml")).expect("valid bench config")
}

fn bench(c: &mut Criterion) {
    let config = config(10_000);
    let mut group = c.benchmark_group("10k-nodes");
    group.sample_size(10);
    group.bench_function("plan (keys + addresses)", |b| {
        b.iter(|| planner::plan(&config, None).expect("plans"))
    });
    let plan = planner::plan(&config, None).expect("plans");
    let state = plan.next_state.clone();
    group.bench_function("replan against state", |b| {
        b.iter(|| planner::plan(&config, Some(&state)).expect("plans"))
    });
    group.bench_function("render every file of every host", |b| {
        b.iter(|| {
            plan.hosts
                .iter()
                .map(|h| render_host(h, Secrets::Include).len())
                .sum::<usize>()
        })
    });
    group.bench_function("plan + render (all 10,000 keys and files)", |b| {
        b.iter(|| {
            let plan = planner::plan(&config, None).expect("plans");
            plan.hosts
                .iter()
                .map(|h| render_host(h, Secrets::Include).len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
