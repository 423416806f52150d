//! What only the edge store has: shard files, locks and the WAL, on real
//! shards on disk, no NATS. What every store must do is in `conformance.rs`.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use tenantvec::config::{Layout, Settings};
use tenantvec::filter::Filter;
use tenantvec::protocol::ErrorCode;
use tenantvec::store::edge::EdgeFactory;
use tenantvec::store::payload::IndexPolicy;
use tenantvec::store::shard::{Shard, ShardOptions};
use tenantvec::store::{Record, SearchQuery, StoreFactory};
use tenantvec::tenant::TenantId;

fn factory(root: &std::path::Path) -> Arc<dyn StoreFactory> {
    let mut s = Settings::defaults();
    s.store.folder = root.to_owned();
    s.store.dimension = 4;
    Arc::new(EdgeFactory::new(&s).unwrap())
}

fn record(id: &str, v: [f32; 4]) -> Record {
    Record {
        doc_id: id.into(),
        text: None,
        metadata: Map::new(),
        vector: v.to_vec(),
    }
}

#[test]
fn a_shard_is_never_open_twice() {
    let dir = tempfile::tempdir().unwrap();
    let f = factory(dir.path());
    let t = TenantId::parse("solo").unwrap();
    let mut first = f.open(&t);
    first
        .upsert(vec![record("a", [1.0, 0.0, 0.0, 0.0])])
        .unwrap();
    // A second handle on the same tenant is refused while the first is open.
    let mut second = f.open(&t);
    let err = second.count(None).unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{}", err.message);
    // Once the first is closed, the second opens and sees the data.
    first.close().unwrap();
    assert_eq!(second.count(None).unwrap(), 1);
}

#[test]
fn writes_survive_a_handle_dropped_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let f = factory(dir.path());
    let t = TenantId::parse("crash").unwrap();
    let mut s = f.open(&t);
    s.upsert(vec![
        record("a", [1.0, 0.0, 0.0, 0.0]),
        record("b", [0.0, 1.0, 0.0, 0.0]),
    ])
    .unwrap();
    drop(s);
    let mut again = f.open(&t);
    assert_eq!(again.count(None).unwrap(), 2);
    let hits = again
        .search(&SearchQuery {
            vector: vec![0.0, 1.0, 0.0, 0.0],
            top_k: 1,
            filter: None,
            with_vectors: false,
        })
        .unwrap();
    assert_eq!(hits[0].doc_id, "b");
    assert!((hits[0].score - 1.0).abs() < 1e-5);
}

#[cfg(unix)]
#[test]
fn a_symlinked_tenant_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("mallory")).unwrap();
    let f = factory(dir.path());
    let mut s = f.open(&TenantId::parse("mallory").unwrap());
    let err = s
        .upsert(vec![record("a", [1.0, 0.0, 0.0, 0.0])])
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal);
    assert!(s.drop_tenant().is_err());
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "wrote through the link"
    );
}

/// The WAL is compacted on close, and operations keep their order across
/// reopenings: a later write still replaces an earlier one.
#[test]
fn the_wal_stays_small_and_later_writes_still_win() {
    let dir = tempfile::tempdir().unwrap();
    let f = factory(dir.path());
    let t = TenantId::parse("wal").unwrap();
    let wal = dir.path().join("wal/vector_store/wal");
    let closed_segments = |wal: &std::path::Path| {
        std::fs::read_dir(wal)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("closed-")
            })
            .count()
    };
    let mut most_before_close = 0;
    for round in 0..12u32 {
        let mut s = f.open(&t);
        // Enough data per round to fill more than one WAL segment.
        let batch: Vec<Record> = (0..3000)
            .map(|i| {
                let mut r = record(&format!("d{i}"), [1.0, round as f32, i as f32, 1.0]);
                r.text = Some(format!("round {round} {}", "x".repeat(1000)));
                r
            })
            .collect();
        s.upsert(batch).unwrap();
        let got = s.get(&["d7".to_owned()], false).unwrap();
        let text = got[0].text.clone().unwrap_or_default();
        assert!(
            text.starts_with(&format!("round {round} ")),
            "round {round}"
        );
        most_before_close = most_before_close.max(closed_segments(&wal));
        s.close().unwrap();
        let closed = closed_segments(&wal);
        assert!(
            closed <= 1,
            "round {round}: {closed} closed WAL segments kept"
        );
    }
    assert!(
        most_before_close >= 2,
        "the WAL never had anything to compact"
    );
    let mut s = f.open(&t);
    assert_eq!(s.count(None).unwrap(), 3000);
    let got = s.get(&["d2999".to_owned()], false).unwrap();
    assert!(got[0]
        .text
        .as_deref()
        .unwrap_or_default()
        .starts_with("round 11 "));
}

/// The shared shard is one worker's: a second factory on the same folder
/// cannot open it. (How it scopes tenants is in the conformance suite.)
#[test]
fn the_shared_store_is_one_worker_s() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::defaults();
    s.store.folder = dir.path().to_owned();
    s.store.dimension = 4;
    s.store.layout = tenantvec::config::Layout::Shared;
    let _first = EdgeFactory::new(&s).unwrap();
    let err = EdgeFactory::new(&s)
        .err()
        .expect("the shared shard is locked");
    assert!(err.to_string().contains("another process"), "{err}");
}

fn shard_options() -> ShardOptions {
    ShardOptions {
        dimension: 4,
        wal_capacity: 1 << 20,
        vectors_on_disk: true,
        indexes: IndexPolicy::new(&[], 16),
        min_free_bytes: 0,
    }
}

/// The payload indexes of the shard in `dir`, read once its store is closed.
fn indexes_on_disk(dir: &std::path::Path) -> Vec<String> {
    let shard = Shard::open(dir, &shard_options(), false, "test")
        .unwrap()
        .expect("the shard exists");
    let keys = shard.indexed_keys("test").unwrap();
    shard.close("test").unwrap();
    keys
}

fn metadata(pairs: &[(String, Value)]) -> Map<String, Value> {
    pairs.iter().cloned().collect()
}

/// In the shared layout a tenant chooses filter keys for a shard every
/// tenant uses: indexes made on demand stop at the cap, and filters on keys
/// past it still answer right (unindexed), for that tenant and others.
#[test]
fn payload_indexes_stop_at_the_cap_and_filters_still_work() {
    const KEYS: usize = 64;
    const CAP: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::defaults();
    s.store.folder = dir.path().to_owned();
    s.store.dimension = 4;
    s.store.layout = Layout::Shared;
    s.store.max_payload_indexes = CAP;
    let f = EdgeFactory::new(&s).unwrap();
    let mut noisy = f.open(&TenantId::parse("noisy").unwrap());
    let mut quiet = f.open(&TenantId::parse("quiet").unwrap());
    // Even keys hold strings, odd keys numbers: keyword and float indexes.
    let value = |i: usize, j: usize| -> Value {
        let v = (i * (j + 1)) % 5;
        if j.is_multiple_of(2) {
            Value::from(format!("v{v}"))
        } else {
            Value::from(v)
        }
    };
    let docs: Vec<Record> = (0..40)
        .map(|i| Record {
            metadata: metadata(
                &(0..KEYS)
                    .map(|j| (format!("k{j}"), value(i, j)))
                    .collect::<Vec<_>>(),
            ),
            ..record(&format!("d{i}"), [1.0, i as f32, 0.5, 0.0])
        })
        .collect();
    noisy.upsert(docs.clone()).unwrap();
    quiet
        .upsert(vec![
            Record {
                metadata: metadata(&[("k63".into(), json!(3)), ("k0".into(), json!("v0"))]),
                ..record("q1", [1.0, 0.0, 0.0, 0.0])
            },
            Record {
                metadata: metadata(&[("k63".into(), json!(1)), ("k0".into(), json!("v0"))]),
                ..record("q2", [0.0, 1.0, 0.0, 0.0])
            },
        ])
        .unwrap();

    for j in 0..KEYS {
        let cond = if j.is_multiple_of(2) {
            json!({ format!("k{j}"): "v1" })
        } else {
            json!({ format!("k{j}"): {"gte": 2} })
        };
        let filter = Filter::parse(&cond).unwrap();
        let want = docs.iter().filter(|d| filter.matches(&d.metadata)).count();
        assert_eq!(noisy.count(Some(&filter)).unwrap(), want, "k{j}");
    }
    // Another tenant's filtered search on a key past the cap, and on one
    // with an index: right answers, its own documents only.
    let hits = quiet
        .search(&SearchQuery {
            vector: vec![1.0, 0.0, 0.0, 0.0],
            top_k: 10,
            filter: Some(Filter::parse(&json!({"k63": {"gte": 2}, "k0": "v0"})).unwrap()),
            with_vectors: false,
        })
        .unwrap();
    let ids: Vec<&str> = hits.iter().map(|h| h.doc_id.as_str()).collect();
    assert_eq!(ids, ["q1"]);

    drop((noisy, quiet, f));
    let keys = indexes_on_disk(&dir.path().join("_shared/vector_store"));
    let on_demand = keys.iter().filter(|k| k.starts_with("metadata.")).count();
    assert_eq!(on_demand, CAP, "{keys:?}");
    assert!(keys.iter().any(|k| k == "tenant"), "{keys:?}");
}

/// With an allow-list, only the listed keys ever get an index.
#[test]
fn only_allowed_keys_get_a_payload_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::defaults();
    s.store.folder = dir.path().to_owned();
    s.store.dimension = 4;
    s.store.indexed_keys = vec!["color".into()];
    let f = EdgeFactory::new(&s).unwrap();
    let mut st = f.open(&TenantId::parse("listed").unwrap());
    st.upsert(vec![
        Record {
            metadata: metadata(&[("color".into(), json!("red")), ("size".into(), json!(2))]),
            ..record("a", [1.0, 0.0, 0.0, 0.0])
        },
        Record {
            metadata: metadata(&[("color".into(), json!("red")), ("size".into(), json!(3))]),
            ..record("b", [0.0, 1.0, 0.0, 0.0])
        },
    ])
    .unwrap();
    let both = Filter::parse(&json!({"color": "red", "size": 3, "shape": ["x", "y"]})).unwrap();
    assert_eq!(st.count(Some(&both)).unwrap(), 0);
    let two = Filter::parse(&json!({"color": "red", "size": {"lt": 3}})).unwrap();
    assert_eq!(st.count(Some(&two)).unwrap(), 1);
    st.close().unwrap();
    assert_eq!(
        indexes_on_disk(&dir.path().join("listed/vector_store")),
        ["metadata.color"]
    );
}

/// `drop` erases the tenant's shard and keeps what the operator put in its
/// folder; a folder with nothing else in it goes.
#[test]
fn drop_keeps_the_tenant_s_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let f = factory(dir.path());
    let t = TenantId::parse("kept").unwrap();
    let config = dir.path().join("kept/config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("tenant.json"), r#"{"max_documents": 1}"#).unwrap();
    let mut s = f.open(&t);
    s.upsert(vec![record("a", [1.0, 0.0, 0.0, 0.0])]).unwrap();
    s.drop_tenant().unwrap();
    assert!(!dir.path().join("kept/vector_store").exists());
    assert_eq!(
        std::fs::read_to_string(config.join("tenant.json")).unwrap(),
        r#"{"max_documents": 1}"#
    );
    assert_eq!(s.count(None).unwrap(), 0);

    let mut plain = f.open(&TenantId::parse("plain").unwrap());
    plain
        .upsert(vec![record("a", [1.0, 0.0, 0.0, 0.0])])
        .unwrap();
    plain.drop_tenant().unwrap();
    assert!(!dir.path().join("plain").exists());
}

/// What the applied mark costs a group commit of ingest (BENCHMARKS.md):
/// the same writes of 8 documents to one per-tenant shard, alternately
/// without the mark and with it (the mark read back first, as the tenant's
/// actor does before each batch of ingest), in one run on one shard.
#[test]
#[ignore = "a measurement; run it by name"]
fn applied_mark_cost() {
    const ROUNDS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let f = factory(dir.path());
    let mut store = f.open(&TenantId::parse("costly").unwrap());
    let batch = |round: usize| -> Vec<Record> {
        (0..8)
            .map(|i| {
                record(
                    &format!("d{}", (round * 8 + i) % 512),
                    [1.0, i as f32, 0.5, 0.0],
                )
            })
            .collect()
    };
    let (mut plain, mut marked) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let started = std::time::Instant::now();
        if round % 2 == 0 {
            store.upsert(batch(round)).unwrap();
            plain.push(started.elapsed());
        } else {
            let mark = tenantvec::store::AppliedMark::new("S@1".into(), round as u64);
            let _ = store.applied_mark().unwrap();
            store.write(batch(round), Some(&mark)).unwrap();
            marked.push(started.elapsed());
        }
    }
    let pct = |v: &mut Vec<std::time::Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3
    };
    eprintln!(
        "group commit of 8 documents, {} each: without the mark p50 {:.3} ms p99 {:.3} ms; \
         with it (read, then written with the documents) p50 {:.3} ms p99 {:.3} ms",
        ROUNDS / 2,
        pct(&mut plain, 0.5),
        pct(&mut plain, 0.99),
        pct(&mut marked, 0.5),
        pct(&mut marked, 0.99),
    );
}
