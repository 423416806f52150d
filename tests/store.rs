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
