//! The store conformance suite: one set of tests that every backend and
//! layout must pass the same way (edge/per_tenant, edge/shared,
//! qdrant/per_tenant, qdrant/shared), through the `TenantStore` trait alone.
//!
//! The edge store runs always, on real shards in a temp folder. The qdrant
//! store runs against the real Qdrant server named by `QDRANT_URL`, each test
//! in collections of its own prefix; without `QDRANT_URL` those tests pass
//! as skipped and print why (`--nocapture` shows it).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tempfile::TempDir;
use tenantvec::config::{Backend, Layout, Settings};
use tenantvec::filter::Filter;
use tenantvec::protocol::ErrorCode;
use tenantvec::store::edge::EdgeFactory;
use tenantvec::store::qdrant::QdrantFactory;
use tenantvec::store::{AppliedMark, Record, SearchQuery, Selector, StoreFactory, TenantStore};
use tenantvec::tenant::TenantId;

use common::qdrant as server;

/// Vector dimension of every store in the suite.
const DIM: usize = 4;

/// Store settings of a test: its data folder, [`DIM`], `backend`, `layout`.
fn settings(data: &TempDir, backend: Backend, layout: Layout) -> Settings {
    let mut s = Settings::defaults();
    s.store.folder = data.path().to_owned();
    s.store.dimension = DIM;
    s.store.backend = backend;
    s.store.layout = layout;
    s
}

/// One backend and layout under test, with what it needs kept alive.
struct Subject {
    factory: Arc<dyn StoreFactory>,
    _data: TempDir,
    _space: Option<server::Space>,
}

impl Subject {
    /// `None` (after printing why) when the backend cannot run here.
    fn new(test: &str, backend: Backend, layout: Layout) -> Option<Self> {
        let data = tempfile::tempdir().expect("temp dir");
        let mut s = settings(&data, backend, layout);
        let (factory, space): (Arc<dyn StoreFactory>, _) = match backend {
            Backend::Edge => (Arc::new(EdgeFactory::new(&s).expect("edge factory")), None),
            Backend::Qdrant => {
                let url = server::url_or_skip(test)?;
                let space = server::Space::new(&url);
                server::configure(&mut s, &url, &space);
                (
                    Arc::new(QdrantFactory::new(&s).expect("qdrant factory")),
                    Some(space),
                )
            }
        };
        Some(Self {
            factory,
            _data: data,
            _space: space,
        })
    }

    fn store(&self, tenant: &str) -> Box<dyn TenantStore> {
        self.factory
            .open(&TenantId::parse(tenant).expect("tenant id"))
    }
}

/// Declare `<name>::{edge_per_tenant, edge_shared, qdrant_per_tenant,
/// qdrant_shared}`, each running `fn <name>(&Subject)`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            fn run(backend: Backend, layout: Layout, case: &str) {
                let test = format!("{}::{case}", stringify!($name));
                if let Some(subject) = Subject::new(&test, backend, layout) {
                    super::$name(&subject);
                }
            }
            #[test]
            fn edge_per_tenant() { run(Backend::Edge, Layout::PerTenant, "edge_per_tenant") }
            #[test]
            fn edge_shared() { run(Backend::Edge, Layout::Shared, "edge_shared") }
            #[test]
            fn qdrant_per_tenant() { run(Backend::Qdrant, Layout::PerTenant, "qdrant_per_tenant") }
            #[test]
            fn qdrant_shared() { run(Backend::Qdrant, Layout::Shared, "qdrant_shared") }
        }
    )*};
}

conformance!(
    upsert_replaces_by_doc_id,
    get_answers_in_request_order,
    delete_by_ids_counts_what_existed,
    delete_by_filter_counts_what_matched,
    search_ranks_by_cosine_and_limits,
    a_tenant_without_data_reads_empty,
    drop_erases_one_tenant_only,
    wrong_dimension_is_refused,
    a_large_upsert_lands_whole,
    filters_match_brute_force,
    tenants_stay_isolated,
    the_applied_mark_is_kept_with_its_write_and_nowhere_in_sight,
);

fn record(id: &str, vector: [f32; DIM], meta: Value) -> Record {
    Record {
        doc_id: id.into(),
        text: Some(format!("text of {id}")),
        metadata: meta.as_object().cloned().unwrap_or_default(),
        vector: vector.to_vec(),
    }
}

fn ids<T>(items: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|i| id(i).to_owned()).collect()
}

fn search(store: &mut dyn TenantStore, v: [f32; DIM], k: usize, f: Option<Value>) -> Vec<String> {
    let hits = store
        .search(&SearchQuery {
            vector: v.to_vec(),
            top_k: k,
            filter: f.map(|f| Filter::parse(&f).expect("filter")),
            with_vectors: false,
        })
        .expect("search");
    ids(&hits, |h| &h.doc_id)
}

fn filter(f: Value) -> Filter {
    Filter::parse(&f).expect("filter")
}

fn normalised(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn upsert_replaces_by_doc_id(s: &Subject) {
    let mut st = s.store("alpha");
    st.upsert(vec![
        record("a", [1.0, 0.0, 0.0, 0.0], json!({"v": 1})),
        record("b", [0.0, 1.0, 0.0, 0.0], json!({"v": 1})),
    ])
    .unwrap();
    assert_eq!(st.count(None).unwrap(), 2);
    let mut newer = record("a", [0.0, 0.0, 3.0, 4.0], json!({"v": 2}));
    newer.text = None;
    st.upsert(vec![newer]).unwrap();
    assert_eq!(st.count(None).unwrap(), 2, "a replace adds nothing");
    let got = st.get(&["a".into()], true).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].metadata,
        json!({"v": 2}).as_object().cloned().unwrap()
    );
    assert_eq!(got[0].text, None, "the whole document is replaced");
    let v = got[0].vector.clone().expect("vector asked for");
    // Cosine stores may keep the vector normalised; the direction is what counts.
    for (x, y) in normalised(&v).iter().zip(normalised(&[0.0, 0.0, 3.0, 4.0])) {
        assert!((x - y).abs() < 1e-5, "{v:?}");
    }
    assert_eq!(st.count(Some(&filter(json!({"v": 1})))).unwrap(), 1);
    st.close().unwrap();
    // Durable: a new handle sees the same.
    let mut again = s.store("alpha");
    assert_eq!(again.count(None).unwrap(), 2);
}

fn get_answers_in_request_order(s: &Subject) {
    let mut st = s.store("beta");
    st.upsert(vec![
        record(
            "x",
            [1.0, 0.0, 0.0, 0.0],
            json!({"tag": "red", "n": [1, 2]}),
        ),
        record("y", [0.0, 1.0, 0.0, 0.0], json!({})),
        record(
            "z",
            [0.0, 0.0, 1.0, 0.0],
            json!({"deep": {"a": [true, null]}}),
        ),
    ])
    .unwrap();
    let want: Vec<String> = vec!["z".into(), "missing".into(), "x".into()];
    let got = st.get(&want, false).unwrap();
    assert_eq!(ids(&got, |d| &d.doc_id), vec!["z", "x"]);
    assert!(
        got.iter().all(|d| d.vector.is_none()),
        "no vectors unless asked"
    );
    assert_eq!(got[0].text.as_deref(), Some("text of z"));
    assert_eq!(
        Value::Object(got[0].metadata.clone()),
        json!({"deep": {"a": [true, null]}}),
        "metadata comes back as it went in"
    );
    assert_eq!(
        Value::Object(got[1].metadata.clone()),
        json!({"tag": "red", "n": [1, 2]})
    );
    assert!(st.get(&[], true).unwrap().is_empty());
}

fn delete_by_ids_counts_what_existed(s: &Subject) {
    let mut st = s.store("gamma");
    st.upsert(vec![
        record("a", [1.0, 0.0, 0.0, 0.0], json!({})),
        record("b", [0.0, 1.0, 0.0, 0.0], json!({})),
        record("c", [0.0, 0.0, 1.0, 0.0], json!({})),
    ])
    .unwrap();
    let n = st
        .delete(&Selector::Ids(vec![
            "a".into(),
            "a".into(),
            "nope".into(),
            "c".into(),
        ]))
        .unwrap();
    assert_eq!(n, 2, "duplicates and missing ids are not counted");
    assert_eq!(st.count(None).unwrap(), 1);
    assert!(st.get(&["a".into(), "c".into()], false).unwrap().is_empty());
    assert_eq!(st.delete(&Selector::Ids(vec!["a".into()])).unwrap(), 0);
}

fn delete_by_filter_counts_what_matched(s: &Subject) {
    let mut st = s.store("delta");
    st.upsert(
        (0..10)
            .map(|i| {
                record(
                    &format!("d{i}"),
                    [1.0, i as f32, 0.0, 0.0],
                    json!({"i": i, "even": i % 2 == 0}),
                )
            })
            .collect(),
    )
    .unwrap();
    let n = st
        .delete(&Selector::Filter(filter(
            json!({"even": true, "i": {"gte": 4}}),
        )))
        .unwrap();
    assert_eq!(n, 3, "d4, d6, d8");
    assert_eq!(st.count(None).unwrap(), 7);
    assert_eq!(st.count(Some(&filter(json!({"even": true})))).unwrap(), 2);
    assert_eq!(
        st.delete(&Selector::Filter(filter(json!({"i": {"gt": 100}}))))
            .unwrap(),
        0
    );
}

fn search_ranks_by_cosine_and_limits(s: &Subject) {
    let mut st = s.store("eps");
    let docs: Vec<Record> = (0..20)
        .map(|i| {
            let a = i as f32 * 0.07;
            record(
                &format!("p{i}"),
                [a.cos(), a.sin(), 0.0, 0.0],
                json!({"i": i}),
            )
        })
        .collect();
    st.upsert(docs).unwrap();
    let hits = st
        .search(&SearchQuery {
            vector: vec![1.0, 0.0, 0.0, 0.0],
            top_k: 5,
            filter: None,
            with_vectors: true,
        })
        .unwrap();
    assert_eq!(
        ids(&hits, |h| &h.doc_id),
        vec!["p0", "p1", "p2", "p3", "p4"]
    );
    for (i, h) in hits.iter().enumerate() {
        let want = (i as f32 * 0.07).cos();
        assert!(
            (h.score - want).abs() < 1e-4,
            "score {} vs cosine {want}",
            h.score
        );
        assert!(h.vector.is_some(), "vectors when asked");
        assert_eq!(h.text.as_deref(), Some(format!("text of p{i}").as_str()));
    }
    assert_eq!(
        search(
            &mut *st,
            [1.0, 0.0, 0.0, 0.0],
            3,
            Some(json!({"i": {"gte": 10}}))
        ),
        vec!["p10", "p11", "p12"]
    );
    assert_eq!(search(&mut *st, [0.0, 1.0, 0.0, 0.0], 100, None).len(), 20);
}

fn a_tenant_without_data_reads_empty(s: &Subject) {
    let mut st = s.store("nobody");
    assert_eq!(st.dimension().unwrap(), DIM);
    assert_eq!(st.count(None).unwrap(), 0);
    assert_eq!(st.count(Some(&filter(json!({"k": "v"})))).unwrap(), 0);
    assert!(search(&mut *st, [1.0, 0.0, 0.0, 0.0], 5, None).is_empty());
    assert!(st.get(&["a".into()], true).unwrap().is_empty());
    assert_eq!(st.delete(&Selector::Ids(vec!["a".into()])).unwrap(), 0);
    assert_eq!(
        st.delete(&Selector::Filter(filter(json!({"k": "v"}))))
            .unwrap(),
        0
    );
    st.drop_tenant().unwrap();
    st.close().unwrap();
}

fn drop_erases_one_tenant_only(s: &Subject) {
    let (mut a, mut b) = (s.store("keep"), s.store("gone"));
    a.upsert(vec![record(
        "same",
        [1.0, 0.0, 0.0, 0.0],
        json!({"t": "a"}),
    )])
    .unwrap();
    b.upsert(vec![
        record("same", [0.0, 1.0, 0.0, 0.0], json!({"t": "b"})),
        record("other", [0.0, 0.0, 1.0, 0.0], json!({"t": "b"})),
    ])
    .unwrap();
    b.drop_tenant().unwrap();
    assert_eq!(b.count(None).unwrap(), 0);
    assert!(b.get(&["same".into()], false).unwrap().is_empty());
    assert_eq!(
        a.count(None).unwrap(),
        1,
        "dropping one tenant left the other"
    );
    b.drop_tenant().unwrap(); // idempotent
                              // A dropped tenant can start again.
    b.upsert(vec![record("new", [0.0, 0.0, 0.0, 1.0], json!({}))])
        .unwrap();
    assert_eq!(b.count(None).unwrap(), 1);
    assert_eq!(
        a.get(&["same".into()], false).unwrap()[0].metadata["t"],
        "a"
    );
}

/// The applied mark of ingest: written with its documents, read back by a
/// store opened afresh (another worker, after a crash), never seen by a
/// count, a search, a get, an export or a delete by filter, left by a
/// request's upsert, kept by an import, gone with `drop`, and one per tenant.
fn the_applied_mark_is_kept_with_its_write_and_nowhere_in_sight(s: &Subject) {
    let mark = |seq| AppliedMark::new("STREAM@1".into(), seq);
    let mut a = s.store("marked");
    assert_eq!(a.applied_mark().unwrap(), None);
    a.write(
        vec![
            record("one", [1.0, 0.0, 0.0, 0.0], json!({"k": 1})),
            record("two", [0.0, 1.0, 0.0, 0.0], json!({"k": 2})),
        ],
        Some(&mark(7)),
    )
    .unwrap();
    a.close().unwrap();
    let mut a = s.store("marked");
    assert_eq!(a.applied_mark().unwrap(), Some(mark(7)), "read back afresh");
    assert_eq!(a.count(None).unwrap(), 2);
    let not_one = filter(json!({"k": [2, 3]}));
    assert_eq!(a.count(Some(&not_one)).unwrap(), 1);
    let mut found = search(a.as_mut(), [0.5, 0.5, 0.5, 0.5], 10, None);
    found.sort();
    assert_eq!(
        found,
        vec!["one".to_owned(), "two".to_owned()],
        "no search finds it"
    );
    let page = a.scroll(None, 100).unwrap();
    assert_eq!(
        ids(&page.docs, |r| &r.doc_id).len(),
        2,
        "an export holds documents only"
    );
    // A request's upsert leaves the mark; a later one moves it.
    a.upsert(vec![record("three", [0.0, 0.0, 1.0, 0.0], json!({"k": 3}))])
        .unwrap();
    assert_eq!(a.applied_mark().unwrap(), Some(mark(7)));
    a.write(vec![], Some(&mark(9))).unwrap();
    assert_eq!(a.applied_mark().unwrap(), Some(mark(9)), "a mark alone");
    assert_eq!(a.count(None).unwrap(), 3);
    // A delete by a filter that matches everything else leaves the mark.
    let everything_but = filter(json!({"k": [2, 3]}));
    assert_eq!(
        a.delete(&Selector::Filter(everything_but)).unwrap(),
        2,
        "documents only"
    );
    assert_eq!(a.applied_mark().unwrap(), Some(mark(9)));
    // An import replaces the documents and keeps the mark.
    let mut batches = vec![vec![record("new", [0.0, 0.0, 0.0, 1.0], json!({}))]].into_iter();
    a.replace(DIM, &mut || Ok(batches.next())).unwrap();
    assert_eq!(a.count(None).unwrap(), 1);
    assert_eq!(a.applied_mark().unwrap(), Some(mark(9)));
    // One mark per tenant.
    let mut b = s.store("unmarked");
    b.upsert(vec![record("x", [1.0, 0.0, 0.0, 0.0], json!({}))])
        .unwrap();
    assert_eq!(b.applied_mark().unwrap(), None);
    assert_eq!(b.count(None).unwrap(), 1);
    a.drop_tenant().unwrap();
    assert_eq!(a.applied_mark().unwrap(), None, "gone with drop");
    assert_eq!(a.count(None).unwrap(), 0);
}

fn wrong_dimension_is_refused(s: &Subject) {
    let mut st = s.store("zeta");
    st.upsert(vec![record("a", [1.0, 0.0, 0.0, 0.0], json!({}))])
        .unwrap();
    let bad = Record {
        vector: vec![1.0, 0.0, 0.0],
        ..record("b", [0.0; DIM], json!({}))
    };
    let err = st
        .upsert(vec![record("c", [0.0, 1.0, 0.0, 0.0], json!({})), bad])
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::DimensionMismatch, "{err:?}");
    assert_eq!(
        st.count(None).unwrap(),
        1,
        "nothing of a refused batch is written"
    );
    let err = st
        .search(&SearchQuery {
            vector: vec![1.0; DIM + 1],
            top_k: 3,
            filter: None,
            with_vectors: false,
        })
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::DimensionMismatch, "{err:?}");
}

/// An upsert larger than one request part of the qdrant store (12 MB of
/// text here, against 8 MiB parts) lands whole.
fn a_large_upsert_lands_whole(s: &Subject) {
    let mut st = s.store("big");
    let text = "x".repeat(300_000);
    let records: Vec<Record> = (0..40)
        .map(|i| Record {
            text: Some(text.clone()),
            ..record(&format!("b{i}"), [1.0, i as f32, 0.0, 0.0], json!({"i": i}))
        })
        .collect();
    st.upsert(records).unwrap();
    assert_eq!(st.count(None).unwrap(), 40);
    let got = st.get(&["b0".into(), "b39".into()], false).unwrap();
    assert_eq!(ids(&got, |d| &d.doc_id), vec!["b0", "b39"]);
    assert!(got.iter().all(|d| d.text.as_deref() == Some(text.as_str())));
}

// ---- filters against a brute-force answer ----

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

/// The three kinds: a value, a list of values (any of), a range (one or two bounds).
fn condition() -> impl Strategy<Value = Value> {
    let bound = prop::sample::select(vec![0.0f64, 0.5, 1.0, 2.0, 3.0]);
    let op = || prop::sample::select(vec!["gt", "gte", "lt", "lte"]);
    prop_oneof![
        scalar(),
        prop::collection::vec(scalar(), 1..4).prop_map(Value::Array),
        (op(), bound.clone(), prop::option::of((op(), bound))).prop_map(|(op, b, other)| {
            let mut r = Map::new();
            r.insert(op.into(), json!(b));
            if let Some((op2, b2)) = other {
                r.insert(op2.into(), json!(b2));
            }
            Value::Object(r)
        }),
    ]
}

fn wire_filter() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(vec!["k", "m", "n"]), condition(), 1..3)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

/// Proptest cases: fewer against a server, where every case is a round trip
/// or several (and, per tenant, a collection).
fn cases(s: &Subject, edge: u32) -> u32 {
    if s.factory.backend() == "edge" {
        edge
    } else {
        edge / 2
    }
}

fn filters_match_brute_force(s: &Subject) {
    let n = std::cell::Cell::new(0u32);
    let config = ProptestConfig {
        cases: cases(s, 24),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let strategy = (
        prop::collection::vec(metadata(), 1..25),
        prop::collection::vec(wire_filter(), 1..6),
    );
    proptest::test_runner::TestRunner::new(config)
        .run(&strategy, |(docs, filters)| {
            n.set(n.get() + 1);
            let mut st = s.store(&format!("f{}", n.get()));
            let records = docs
                .iter()
                .enumerate()
                .map(|(i, m)| Record {
                    doc_id: format!("d{i}"),
                    text: None,
                    metadata: m.clone(),
                    vector: vec![1.0, i as f32, 0.5, 0.25],
                })
                .collect();
            st.upsert(records).unwrap();
            for fj in filters {
                let parsed = Filter::parse(&fj).unwrap();
                let want: HashSet<String> = docs
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| parsed.matches(m))
                    .map(|(i, _)| format!("d{i}"))
                    .collect();
                prop_assert_eq!(st.count(Some(&parsed)).unwrap(), want.len(), "count {}", fj);
                let got: HashSet<String> =
                    search(&mut *st, [1.0, 0.0, 0.0, 0.0], 100, Some(fj.clone()))
                        .into_iter()
                        .collect();
                prop_assert_eq!(&got, &want, "search {}", fj);
            }
            st.drop_tenant().unwrap();
            Ok(())
        })
        .unwrap();
}

// ---- isolation between tenants over random interleavings ----

#[derive(Debug, Clone)]
enum Op {
    Upsert(usize, Vec<(u8, u8)>),
    DeleteIds(usize, Vec<u8>),
    DeleteColor(usize, u8),
    Drop(usize),
}

const TENANTS: [&str; 3] = ["iso-a", "iso-b", "iso-c"];

fn op() -> impl Strategy<Value = Op> {
    let t = 0..TENANTS.len();
    prop_oneof![
        4 => (t.clone(), prop::collection::vec((0u8..6, 0u8..3), 1..5)).prop_map(|(t, d)| Op::Upsert(t, d)),
        2 => (t.clone(), prop::collection::vec(0u8..6, 1..4)).prop_map(|(t, d)| Op::DeleteIds(t, d)),
        1 => (t.clone(), 0u8..3).prop_map(|(t, c)| Op::DeleteColor(t, c)),
        1 => t.prop_map(Op::Drop),
    ]
}

/// Each tenant's documents (`doc_id` -> color) after every step equal a
/// model of that tenant alone: same doc ids in every tenant, so a leak
/// of a write, delete or drop into another tenant shows.
fn tenants_stay_isolated(s: &Subject) {
    let config = ProptestConfig {
        cases: cases(s, 16),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let round = std::cell::Cell::new(0u32);
    proptest::test_runner::TestRunner::new(config)
        .run(&prop::collection::vec(op(), 1..14), |ops| {
            round.set(round.get() + 1);
            let names: Vec<String> = TENANTS
                .iter()
                .map(|t| format!("{t}{}", round.get()))
                .collect();
            let mut stores: Vec<Box<dyn TenantStore>> = names.iter().map(|t| s.store(t)).collect();
            let mut model: Vec<BTreeMap<String, u8>> = vec![BTreeMap::new(); TENANTS.len()];
            for op in &ops {
                match op {
                    Op::Upsert(t, docs) => {
                        let records = docs
                            .iter()
                            .map(|(d, c)| {
                                let v = [1.0, f32::from(*d), f32::from(*c), 0.5];
                                record(&format!("doc{d}"), v, json!({"color": c}))
                            })
                            .collect();
                        stores[*t].upsert(records).unwrap();
                        for (d, c) in docs {
                            model[*t].insert(format!("doc{d}"), *c);
                        }
                    }
                    Op::DeleteIds(t, docs) => {
                        let ids: Vec<String> = docs.iter().map(|d| format!("doc{d}")).collect();
                        let unique: HashSet<&String> = ids.iter().collect();
                        let want = unique
                            .iter()
                            .filter(|d| model[*t].contains_key(**d))
                            .count();
                        let n = stores[*t].delete(&Selector::Ids(ids.clone())).unwrap();
                        prop_assert_eq!(n, want, "{:?}", op);
                        for d in &ids {
                            model[*t].remove(d);
                        }
                    }
                    Op::DeleteColor(t, c) => {
                        let want = model[*t].values().filter(|v| *v == c).count();
                        let n = stores[*t]
                            .delete(&Selector::Filter(filter(json!({"color": c}))))
                            .unwrap();
                        prop_assert_eq!(n, want, "{:?}", op);
                        model[*t].retain(|_, v| v != c);
                    }
                    Op::Drop(t) => {
                        stores[*t].drop_tenant().unwrap();
                        model[*t].clear();
                    }
                }
                for (t, st) in stores.iter_mut().enumerate() {
                    let want: Vec<String> = model[t].keys().cloned().collect();
                    prop_assert_eq!(
                        st.count(None).unwrap(),
                        want.len(),
                        "{} after {:?}",
                        names[t],
                        op
                    );
                    let mut got = search(&mut **st, [1.0, 0.0, 0.0, 0.0], 100, None);
                    got.sort();
                    prop_assert_eq!(&got, &want, "{} after {:?}", names[t], op);
                    let docs = st.get(&want, false).unwrap();
                    for d in &docs {
                        prop_assert_eq!(
                            d.metadata["color"].as_u64(),
                            model[t].get(&d.doc_id).map(|c| u64::from(*c)),
                            "{} after {:?}",
                            names[t],
                            op
                        );
                    }
                }
            }
            for st in &mut stores {
                st.drop_tenant().unwrap();
            }
            Ok(())
        })
        .unwrap();
}

// ---- the qdrant backend when its server is away ----

/// A Qdrant server that does not answer: every call is `unavailable`
/// (retry later), quickly, and nothing panics. Runs always: nothing listens
/// on the port.
#[test]
fn an_unreachable_qdrant_is_unavailable() {
    for layout in [Layout::PerTenant, Layout::Shared] {
        let data = tempfile::tempdir().unwrap();
        let mut s = settings(&data, Backend::Qdrant, layout);
        s.store.qdrant_url = format!("http://127.0.0.1:{}", common::free_port());
        let factory = QdrantFactory::new(&s).expect("a factory needs no server");
        let mut st = factory.open(&TenantId::parse("t").unwrap());
        let started = std::time::Instant::now();
        let err = st
            .upsert(vec![record("a", [1.0, 0.0, 0.0, 0.0], json!({}))])
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");
        assert!(err.message.contains("retry"), "{}", err.message);
        assert_eq!(st.count(None).unwrap_err().code, ErrorCode::Unavailable);
        let err = st
            .search(&SearchQuery {
                vector: vec![1.0; DIM],
                top_k: 1,
                filter: None,
                with_vectors: false,
            })
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Unavailable);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "refused connections fail fast"
        );
    }
}

/// The server goes away, or hangs, and comes back: calls fail `unavailable`
/// meanwhile (a hung server within `qdrant_timeout`) and succeed again
/// after, with the same factory and store.
#[test]
fn the_qdrant_store_recovers_when_the_server_returns() {
    let Some(url) = server::url_or_skip("the_qdrant_store_recovers_when_the_server_returns") else {
        return;
    };
    let space = server::Space::new(&url);
    let proxy = server::Proxy::to(&url);
    let data = tempfile::tempdir().unwrap();
    let mut s = settings(&data, Backend::Qdrant, Layout::PerTenant);
    server::configure(&mut s, &proxy.url(), &space);
    s.store.qdrant_timeout = std::time::Duration::from_secs(1);
    let factory = QdrantFactory::new(&s).unwrap();
    let mut st = factory.open(&TenantId::parse("r").unwrap());
    st.upsert(vec![record("a", [1.0, 0.0, 0.0, 0.0], json!({}))])
        .unwrap();
    let mut written = 1;
    for (outage, cause) in [
        (server::Proxy::cut as fn(&server::Proxy), "cut"),
        (server::Proxy::stall, "stall"),
    ] {
        outage(&proxy);
        let started = std::time::Instant::now();
        let err = st
            .upsert(vec![record("b", [0.0, 1.0, 0.0, 0.0], json!({}))])
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Unavailable, "{cause}: {err:?}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(8),
            "{cause}: answered within the timeout, not hung: {:?}",
            started.elapsed()
        );
        proxy.restore();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        written += 1;
        let doc = format!("after-{cause}");
        loop {
            match st.upsert(vec![record(&doc, [0.0, 0.0, 1.0, 0.0], json!({}))]) {
                Ok(()) => break,
                Err(e)
                    if e.code == ErrorCode::Unavailable && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                Err(e) => panic!("{cause}: no recovery: {e:?}"),
            }
        }
    }
    // "b" may or may not have landed (a stalled request can be applied
    // after the client gave up); the documents after each outage have.
    let count = st.count(None).unwrap();
    assert!(count == written || count == written + 1, "{count}");
    assert_eq!(space.collections(), vec![format!("{}r", space.prefix)]);
}

/// A server that wants an API key refuses a wrong one, and the error says
/// what to check. Runs when the server under test has a key (`QDRANT_API_KEY`).
#[test]
fn a_wrong_qdrant_api_key_is_named_in_the_error() {
    let test = "a_wrong_qdrant_api_key_is_named_in_the_error";
    let Some(url) = server::url_or_skip(test) else {
        return;
    };
    if server::api_key().is_none() {
        return server::skip(test, "QDRANT_API_KEY is not set: the server wants no key");
    }
    let space = server::Space::new(&url);
    let data = tempfile::tempdir().unwrap();
    let mut s = settings(&data, Backend::Qdrant, Layout::PerTenant);
    server::configure(&mut s, &url, &space);
    s.store.qdrant_api_key = tenantvec::config::Secret::new("not-the-key");
    let mut st = QdrantFactory::new(&s)
        .unwrap()
        .open(&TenantId::parse("k").unwrap());
    let err = st
        .upsert(vec![record("a", [1.0, 0.0, 0.0, 0.0], json!({}))])
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal, "{err:?}");
    assert!(err.message.contains("QDRANT_API_KEY"), "{}", err.message);
    assert!(
        !err.message.contains("not-the-key"),
        "the key is never shown"
    );
}

/// A shared collection left without its tenant index (a worker stopped
/// between making it and indexing it) gets the index on the next write.
#[test]
fn a_shared_collection_missing_its_tenant_index_gets_it() {
    let test = "a_shared_collection_missing_its_tenant_index_gets_it";
    let Some(url) = server::url_or_skip(test) else {
        return;
    };
    let space = server::Space::new(&url);
    space.create_bare("_shared", DIM as u64);
    assert_eq!(space.payload_index("_shared", "tenant"), None);
    let data = tempfile::tempdir().unwrap();
    let mut s = settings(&data, Backend::Qdrant, Layout::Shared);
    server::configure(&mut s, &url, &space);
    let factory = QdrantFactory::new(&s).unwrap();
    let mut st = factory.open(&TenantId::parse("a").unwrap());
    st.upsert(vec![record("x", [1.0, 0.0, 0.0, 0.0], json!({}))])
        .unwrap();
    let index = space
        .payload_index("_shared", "tenant")
        .expect("tenant index");
    assert!(index.contains("is_tenant: Some(true)"), "{index}");
}
