//! The pool: eviction under load, TTL expiry, admin stops, and isolation
//! under random interleavings, all with read-your-writes checked.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::{vector, Harness};
use proptest::prelude::*;
use serde_json::{json, Value};
use tenantvec::config::Layout;
use tenantvec::protocol::{AdminVerb, Verb};

const DIM: usize = 8;

fn doc(tenant: &str, id: u64, seed: u64) -> Value {
    json!({"doc_id": format!("d{id}"), "vector": vector(seed, DIM),
           "metadata": {"owner": tenant, "seed": seed}})
}

async fn eviction_under_load_loses_nothing(layout: Layout) {
    let h = Harness::start_with(|s| {
        s.pool.size = 2;
        s.store.layout = layout;
    })
    .await;
    let tenants: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
    let rounds = 12u64;
    let tasks = tenants.iter().map(|t| {
        let h = &h;
        async move {
            for r in 0..rounds {
                let up = h
                    .ok(Verb::Upsert, t, json!({"documents": [doc(t, r, r + 1)]}))
                    .await;
                assert_eq!(up["upserted"], 1);
                // Read-your-writes, whatever happened to the actor meanwhile.
                let count = h.ok(Verb::Count, t, json!({})).await;
                assert_eq!(count["count"].as_u64(), Some(r + 1), "{t} round {r}");
                let got = h
                    .ok(Verb::Get, t, json!({"doc_ids": [format!("d{r}")]}))
                    .await;
                assert_eq!(got["documents"][0]["metadata"]["owner"], t.as_str());
                let found = h
                    .ok(
                        Verb::Search,
                        t,
                        json!({"vector": vector(r + 1, DIM), "top_k": 1}),
                    )
                    .await;
                assert_eq!(
                    found["results"][0]["doc_id"],
                    format!("d{r}"),
                    "{t} round {r}"
                );
            }
        }
    });
    let sampler = async {
        let mut max_size = 0;
        for _ in 0..50 {
            let stats = h.admin(AdminVerb::Stats, json!({})).await;
            max_size = max_size.max(stats["size"].as_u64().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        max_size
    };
    let (_, max_size) = tokio::join!(futures::future::join_all(tasks), sampler);
    assert!(max_size <= 2, "pool of 2 held {max_size} actors");
    let stats = h.admin(AdminVerb::Stats, json!({})).await;
    assert!(stats["evictions"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["size"].as_u64().unwrap() <= 2);
    assert_eq!(stats["max_size"], 2);
    let hits = stats["hits"].as_f64().unwrap();
    let misses = stats["misses"].as_f64().unwrap();
    assert!((stats["hit_rate"].as_f64().unwrap() - hits / (hits + misses)).abs() < 1e-9);
    // Everything is still there after all that churn.
    for t in &tenants {
        assert_eq!(h.ok(Verb::Count, t, json!({})).await["count"], rounds);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_actors_expire_after_the_ttl() {
    let h = Harness::start_with(|s| {
        s.pool.ttl = Duration::from_millis(400);
        s.pool.sweep_interval = Duration::from_millis(50);
    })
    .await;
    h.ok(
        Verb::Upsert,
        "idle",
        json!({"documents": [doc("idle", 1, 1)]}),
    )
    .await;
    let stats = h.admin(AdminVerb::Stats, json!({})).await;
    assert_eq!(stats["keys"], json!(["idle"]));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = h.admin(AdminVerb::Stats, json!({})).await;
        if stats["size"] == 0 {
            assert_eq!(stats["expirations"], 1);
            assert_eq!(stats["evictions"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "actor never expired: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The data stayed; the next request re-activates the tenant (a miss).
    let misses_before = h.admin(AdminVerb::Stats, json!({})).await["misses"].clone();
    assert_eq!(h.ok(Verb::Count, "idle", json!({})).await["count"], 1);
    let stats = h.admin(AdminVerb::Stats, json!({})).await;
    assert_eq!(
        stats["misses"].as_u64(),
        misses_before.as_u64().map(|m| m + 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_and_evict_stop_actors_and_keep_data() {
    let h = Harness::start_with(|s| {
        s.pool.ttl = Duration::from_millis(200);
        s.pool.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    for t in ["a1", "a2", "a3"] {
        h.ok(Verb::Upsert, t, json!({"documents": [doc(t, 1, 1)]}))
            .await;
    }
    assert_eq!(
        h.admin(AdminVerb::Evict, json!({"tenant": "a1"})).await,
        json!({"evicted": 1})
    );
    assert_eq!(
        h.admin(AdminVerb::Evict, json!({"tenant": "zz"})).await,
        json!({"evicted": 0})
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.admin(AdminVerb::Cleanup, json!({})).await,
        json!({"expired": 2})
    );
    let stats = h.admin(AdminVerb::Stats, json!({})).await;
    assert_eq!(stats["size"], 0);
    assert_eq!(stats["evictions"], 0, "admin stops are not evictions");
    assert_eq!(stats["expirations"], 2);
    for t in ["a1", "a2", "a3"] {
        assert_eq!(h.ok(Verb::Count, t, json!({})).await["count"], 1);
    }
    assert_eq!(
        h.admin(AdminVerb::Evict, json!({})).await,
        json!({"evicted": 3})
    );
    let bad = h
        .client
        .admin(AdminVerb::Evict, &json!({"tenant": "../x"}))
        .await;
    assert!(bad.is_err());
}

/// Shard lock files of stores under `root` that this process holds open:
/// one per open shard (the worker runs in-process).
fn open_shard_locks(root: &std::path::Path) -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.starts_with(root) && target.ends_with(".tenantvec.lock"))
        .count()
}

/// A burst over many cold tenants cannot pile up closing actors: at most
/// `2 × pool.size` actors hold a store (serving or closing), so at most that
/// many shards are open, and every request still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_stores_stay_bounded_under_a_burst_of_cold_tenants() {
    let h = Harness::start_with(|s| s.pool.size = 2).await;
    let bound = 4u64;
    let root = h.data.path().canonicalize().unwrap();
    let tenants: Vec<String> = (0..60).map(|i| format!("cold{i}")).collect();
    let rounds = 3u64;
    let done = std::sync::atomic::AtomicBool::new(false);
    let burst = async {
        let h = &h;
        let calls = tenants.iter().flat_map(|t| {
            (0..rounds).map(move |r| {
                let body = json!({"documents": [doc(t, r, r + 1)]});
                async move { (t, h.call(Verb::Upsert, t, body).await) }
            })
        });
        let outcomes = futures::future::join_all(calls).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        outcomes
    };
    let sampler = async {
        let (mut held, mut locks, mut waited) = (0u64, 0usize, 0u64);
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let stats = h.admin(AdminVerb::Stats, json!({})).await;
            held = held.max(stats["size"].as_u64().unwrap() + stats["closing"].as_u64().unwrap());
            locks = locks.max(open_shard_locks(&root));
            waited = waited.max(stats["waiting"].as_u64().unwrap());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (held, locks, waited)
    };
    let (outcomes, (held, locks, waited)) = tokio::join!(burst, sampler);
    for (t, outcome) in &outcomes {
        assert_eq!(
            outcome.as_ref().map(|v| v["upserted"].clone()).ok(),
            Some(json!(1)),
            "{t}: {outcome:?}"
        );
    }
    assert!(waited > 0, "the burst never had to wait for room");
    assert!(held <= bound, "{held} actors held a store, bound {bound}");
    assert!(
        locks as u64 <= bound,
        "{locks} shards open at once, bound {bound}"
    );
    for t in &tenants {
        assert_eq!(
            h.ok(Verb::Count, t, json!({})).await["count"],
            rounds,
            "{t}"
        );
    }
    let stats = h.admin(AdminVerb::Stats, json!({})).await;
    assert!(stats["size"].as_u64().unwrap() <= 2, "{stats}");
    assert_eq!(stats["waiting"], 0, "{stats}");
}

#[derive(Debug, Clone)]
enum Op {
    Upsert { tenant: usize, doc: u64, seed: u64 },
    Delete { tenant: usize, doc: u64 },
    Check { tenant: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 0..6u64, 1..1000u64).prop_map(|(tenant, doc, seed)| Op::Upsert { tenant, doc, seed }),
        1 => (0..4usize, 0..6u64).prop_map(|(tenant, doc)| Op::Delete { tenant, doc }),
        2 => (0..4usize).prop_map(|tenant| Op::Check { tenant }),
    ]
}

/// Random interleavings of writes to four tenants through a pool of two:
/// each tenant sees exactly its own documents, never another's.
async fn isolation_holds_under_random_interleavings(layout: Layout) {
    let h = Harness::start_with(|s| {
        s.pool.size = 2;
        s.store.layout = layout;
    })
    .await;
    let handle = tokio::runtime::Handle::current();
    let case = std::sync::atomic::AtomicU32::new(0);
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = tokio::task::block_in_place(|| {
        runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
            let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let names: Vec<String> = (0..4).map(|t| format!("c{case}-t{t}")).collect();
            handle.block_on(run_case(&h, &names, &ops));
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

async fn run_case(h: &Harness, names: &[String], ops: &[Op]) {
    // tenant -> doc -> seed: what each tenant must hold.
    let mut model: Vec<BTreeMap<u64, u64>> = vec![BTreeMap::new(); names.len()];
    for op in ops {
        match *op {
            Op::Upsert {
                tenant,
                doc: d,
                seed,
            } => {
                let t = &names[tenant];
                h.ok(Verb::Upsert, t, json!({"documents": [doc(t, d, seed)]}))
                    .await;
                model[tenant].insert(d, seed);
            }
            Op::Delete { tenant, doc: d } => {
                let t = &names[tenant];
                let reply = h
                    .ok(Verb::Delete, t, json!({"doc_ids": [format!("d{d}")]}))
                    .await;
                let existed = model[tenant].remove(&d).is_some();
                assert_eq!(reply["deleted"], u64::from(existed));
            }
            Op::Check { tenant } => check(h, &names[tenant], &model[tenant]).await,
        }
    }
    for (t, m) in names.iter().zip(&model) {
        check(h, t, m).await;
    }
}

async fn check(h: &Harness, tenant: &str, model: &BTreeMap<u64, u64>) {
    let count = h.ok(Verb::Count, tenant, json!({})).await;
    assert_eq!(
        count["count"].as_u64(),
        Some(model.len() as u64),
        "{tenant}"
    );
    let found = h
        .ok(
            Verb::Search,
            tenant,
            json!({"vector": vector(7, DIM), "top_k": 100}),
        )
        .await;
    let hits: HashSet<(String, u64)> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(
                r["metadata"]["owner"], tenant,
                "foreign document in {tenant}"
            );
            (
                r["doc_id"].as_str().unwrap().to_owned(),
                r["metadata"]["seed"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: HashSet<(String, u64)> = model.iter().map(|(d, s)| (format!("d{d}"), *s)).collect();
    assert_eq!(hits, want, "{tenant}");
}

both_layouts!(
    eviction_under_load_loses_nothing,
    isolation_holds_under_random_interleavings,
);
