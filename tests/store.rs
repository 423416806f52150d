//! The edge store on its own: real shards on disk, no NATS.

use std::sync::Arc;

use serde_json::Map;
use tenantvec::config::Settings;
use tenantvec::protocol::ErrorCode;
use tenantvec::store::edge::EdgeFactory;
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

#[test]
fn the_shared_store_is_one_worker_s_and_scopes_every_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::defaults();
    s.store.folder = dir.path().to_owned();
    s.store.dimension = 4;
    s.store.layout = tenantvec::config::Layout::Shared;
    let f = EdgeFactory::new(&s).unwrap();
    // A second worker on the same folder cannot open the shared shard.
    let err = EdgeFactory::new(&s)
        .err()
        .expect("the shared shard is locked");
    assert!(err.to_string().contains("another process"), "{err}");

    let (a, b) = (TenantId::parse("a").unwrap(), TenantId::parse("b").unwrap());
    let (mut sa, mut sb) = (f.open(&a), f.open(&b));
    sa.upsert(vec![record("same", [1.0, 0.0, 0.0, 0.0])])
        .unwrap();
    sb.upsert(vec![
        record("same", [0.0, 1.0, 0.0, 0.0]),
        record("other", [0.0, 0.0, 1.0, 0.0]),
    ])
    .unwrap();
    assert_eq!(sa.count(None).unwrap(), 1);
    assert_eq!(sb.count(None).unwrap(), 2);
    let got = sa.get(&["same".into(), "other".into()], true).unwrap();
    assert_eq!(got.len(), 1, "a sees only its own document");
    assert_eq!(
        got[0].vector.as_deref(),
        Some([1.0, 0.0, 0.0, 0.0].as_slice())
    );
    sb.drop_tenant().unwrap();
    assert_eq!(sb.count(None).unwrap(), 0);
    assert_eq!(sa.count(None).unwrap(), 1, "dropping b left a alone");
}

mod filter_semantics {
    //! Random metadata and random filters: the store's answer (count and
    //! search) equals the reference semantics of `Filter::matches`, in both
    //! layouts.
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};
    use tenantvec::filter::Filter;

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::sample::select(vec!["a", "b", "c"]).prop_map(|s| json!(s)),
            (0i64..4).prop_map(|n| json!(n)),
            prop::sample::select(vec![0.5f64, 1.0, 2.5]).prop_map(|f| json!(f)),
            any::<bool>().prop_map(|b| json!(b)),
        ]
    }

    fn metadata() -> impl Strategy<Value = Map<String, Value>> {
        let value = prop_oneof![
            3 => scalar(),
            1 => prop::collection::vec(scalar(), 0..3).prop_map(Value::Array),
        ];
        prop::collection::btree_map(prop::sample::select(vec!["k", "m", "n"]), value, 0..3)
            .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    fn condition() -> impl Strategy<Value = Value> {
        let bound = prop::sample::select(vec![0.0f64, 0.5, 1.0, 2.0, 3.0]);
        prop_oneof![
            scalar(),
            prop::collection::vec(scalar(), 1..4).prop_map(Value::Array),
            (
                prop::sample::select(vec!["gt", "gte", "lt", "lte"]),
                bound.clone(),
                prop::option::of((prop::sample::select(vec!["gt", "gte", "lt", "lte"]), bound))
            )
                .prop_map(|(op, b, other)| {
                    let mut r = serde_json::Map::new();
                    r.insert(op.into(), json!(b));
                    if let Some((op2, b2)) = other {
                        r.insert(op2.into(), json!(b2));
                    }
                    Value::Object(r)
                }),
        ]
    }

    fn filter() -> impl Strategy<Value = Value> {
        prop::collection::btree_map(prop::sample::select(vec!["k", "m", "n"]), condition(), 1..3)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    }

    fn check(
        layout: tenantvec::config::Layout,
        docs: Vec<Map<String, Value>>,
        filters: Vec<Value>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::defaults();
        s.store.folder = dir.path().to_owned();
        s.store.dimension = 4;
        s.store.layout = layout;
        let f = EdgeFactory::new(&s).unwrap();
        let mut store = f.open(&TenantId::parse("p").unwrap());
        let records: Vec<Record> = docs
            .iter()
            .enumerate()
            .map(|(i, m)| Record {
                doc_id: format!("d{i}"),
                text: None,
                metadata: m.clone(),
                vector: vec![1.0, i as f32, 0.5, 0.25],
            })
            .collect();
        store.upsert(records).unwrap();
        for fj in filters {
            let parsed = Filter::parse(&fj).unwrap();
            let want = docs.iter().filter(|m| parsed.matches(m)).count();
            assert_eq!(store.count(Some(&parsed)).unwrap(), want, "count {fj}");
            let hits = store
                .search(&SearchQuery {
                    vector: vec![1.0, 0.0, 0.0, 0.0],
                    top_k: 100,
                    filter: Some(parsed.clone()),
                    with_vectors: false,
                })
                .unwrap();
            assert_eq!(hits.len(), want, "search {fj}");
            assert!(
                hits.iter().all(|h| parsed.matches(&h.metadata)),
                "search {fj}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn per_tenant(docs in prop::collection::vec(metadata(), 1..25), filters in prop::collection::vec(filter(), 1..6)) {
            check(tenantvec::config::Layout::PerTenant, docs, filters);
        }

        #[test]
        fn shared(docs in prop::collection::vec(metadata(), 1..25), filters in prop::collection::vec(filter(), 1..6)) {
            check(tenantvec::config::Layout::Shared, docs, filters);
        }
    }
}
