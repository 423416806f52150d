//! What a per_tenant cold activation costs the store, without the worker:
//! a pool of open shards churned as the benchmark's Zipf phase churns it.
//! Each step opens a tenant that is not open, searches it once (the request
//! that caused the activation), and closes the least recently opened one
//! when the pool is full (the eviction that makes room).
//!
//!     cargo run --release --example activation_cost -- [TENANTS] [DOCS] [BATCH] [STEPS]
//!
//! TENANTS × DOCS documents of 384 dims, written in upserts of BATCH (as a
//! producer would send them), then STEPS activations with a pool of 10.
//! Prints the open + first search and the close, p50 / p99 / mean, all
//! measured in this run; run it under `perf record -g` to see where the
//! time goes. With `ACTIVATION_WITHOUT_WAL=1` every WAL file is deleted
//! after the writes, to show what reading the WAL adds to an open (only
//! reads follow, so nothing is numbered from the emptied WAL).

use std::collections::VecDeque;
use std::time::Instant;

use tenantvec::config::Settings;
use tenantvec::store::edge::EdgeFactory;
use tenantvec::store::{SearchQuery, StoreFactory, TenantStore};
use tenantvec::tenant::TenantId;

mod support;
use support::{records, vector};

/// The pool's size, as the benchmark's Zipf phase has it.
const POOL: usize = 10;

fn tenant(t: u64) -> TenantId {
    TenantId::parse(&format!("t{t}")).expect("a valid tenant id")
}

/// p50, p99 and mean of `ms`.
fn summary(ms: &mut [f64]) -> String {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    format!(
        "p50 {:.2} ms  p99 {:.2} ms  mean {:.2} ms",
        at(0.5),
        at(0.99),
        mean
    )
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let tenants = args.first().copied().unwrap_or(40).max(POOL as u64 + 1);
    let docs = args.get(1).copied().unwrap_or(1000).max(1);
    let batch = args.get(2).copied().unwrap_or(100).max(1);
    let steps = args.get(3).copied().unwrap_or(2000).max(1);
    let root = tempfile::tempdir().expect("a temp dir");
    let mut settings = Settings::defaults();
    settings.store.folder = root.path().to_owned();
    let factory = EdgeFactory::new(&settings).expect("the edge store");

    let started = Instant::now();
    for t in 0..tenants {
        let mut store = factory.open(&tenant(t));
        for from in (0..docs).step_by(batch as usize) {
            store
                .upsert(records(from..(from + batch).min(docs), t * 100_000))
                .expect("upsert");
        }
        store.close().expect("close");
    }
    println!(
        "activation cost: {tenants} tenants x {docs} docs in upserts of {batch}, written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    if std::env::var("ACTIVATION_WITHOUT_WAL").is_ok() {
        for t in 0..tenants {
            let wal = root.path().join(format!("t{t}/vector_store/wal"));
            for file in std::fs::read_dir(&wal).expect("the WAL folder").flatten() {
                std::fs::remove_file(file.path()).expect("remove a WAL file");
            }
        }
    }
    let mut pool: VecDeque<(u64, Box<dyn TenantStore>)> = VecDeque::new();
    let (mut opens, mut closes) = (Vec::new(), Vec::new());
    for step in 0..steps {
        // Every step a tenant that is not open: stride coprime to `tenants`.
        let t = (step * 7) % tenants;
        if pool.iter().any(|(open, _)| *open == t) {
            continue;
        }
        if pool.len() == POOL {
            let (_, mut evicted) = pool.pop_front().expect("a full pool");
            let started = Instant::now();
            evicted.close().expect("close");
            closes.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let started = Instant::now();
        let mut store = factory.open(&tenant(t));
        let hits = store
            .search(&SearchQuery {
                vector: vector(7_000_000 + step),
                top_k: 5,
                filter: None,
                with_vectors: false,
            })
            .expect("search");
        assert_eq!(hits.len(), 5.min(docs as usize));
        opens.push(started.elapsed().as_secs_f64() * 1000.0);
        pool.push_back((t, store));
    }
    println!(
        "open + first search: {}  ({} activations)",
        summary(&mut opens),
        opens.len()
    );
    println!("close of the evicted: {}", summary(&mut closes));
}
