//! What only the edge store has: shard files, locks and the WAL, on real
//! shards on disk, no NATS. What every store must do is in `conformance.rs`.

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
