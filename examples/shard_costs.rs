//! What a tenant's edge shard costs: create and open times, disk and memory
//! per shard, and a filtered search with and without a payload index, for
//! tenantvec's shard options and for the engine's defaults.
//!
//!     cargo run --release --example shard_costs -- [TENANTS] [DOCS_PER_TENANT]
//!
//! Prints one table; every figure is measured in this run on this machine.

use std::path::Path;
use std::time::Instant;

use qdrant_edge::{
    Condition, CreateIndex, Distance, EdgeConfig, EdgeShard, EdgeVectorParamsBuilder,
    FieldCondition, FieldIndexOperations, Filter, Match, NamedQuery, PayloadFieldSchema,
    PayloadSchemaType, PointId, PointInsertOperations, PointOperations, PointStruct,
    PointStructPersisted, QueryEnum, SearchRequest, UpdateOperation, ValueVariants, VectorInternal,
    WithPayloadInterface, WithVector, DEFAULT_VECTOR_NAME,
};
use serde_json::{json, Value};
use tenantvec::config::Settings;
use tenantvec::store::edge::EdgeFactory;
use tenantvec::store::{StoreFactory, TenantStore};
use tenantvec::tenant::TenantId;

mod support;
use support::{records, vector, DIM};

/// (RssAnon, RssFile) of this process in MiB.
fn rss() -> (f64, f64) {
    let m = tenantvec::memory::Memory::of(std::process::id());
    (m.anon, m.file)
}

/// (apparent bytes, allocated bytes) of everything below `dir`.
fn disk(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total.0 += m.len();
                total.1 += m.blocks() * 512;
            }
        }
    }
    total
}

fn default_shard(path: &Path) -> EdgeShard {
    let config = EdgeConfig::builder()
        .vector(
            DEFAULT_VECTOR_NAME,
            EdgeVectorParamsBuilder::new(DIM, Distance::Cosine).build(),
        )
        .build();
    std::fs::create_dir_all(path).unwrap();
    EdgeShard::new(path, config).unwrap()
}

fn upsert_raw(shard: &EdgeShard, n: u64, base: u64) {
    let points: Vec<PointStructPersisted> = (0..n)
        .map(|i| {
            let payload = json!({"doc_id": format!("d{i}"), "metadata": {"category": format!("c{}", i % 100)}});
            PointStructPersisted::from(PointStruct::new(PointId::NumId(i), vector(base + i), payload))
        })
        .collect();
    shard
        .update(UpdateOperation::PointOperation(
            PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
        ))
        .unwrap();
    shard.flush();
}

fn filtered_search_ms(shard: &EdgeShard, queries: u64) -> f64 {
    let started = Instant::now();
    for q in 0..queries {
        let filter = Filter::new_must(Condition::Field(FieldCondition::new_match(
            "metadata.category".parse().unwrap(),
            Match::new_value(ValueVariants::String(format!("c{}", q % 100))),
        )));
        let hits = shard
            .search(SearchRequest {
                query: QueryEnum::Nearest(NamedQuery {
                    query: VectorInternal::Dense(vector(1_000_000 + q)),
                    using: None,
                }),
                filter: Some(filter),
                params: None,
                limit: 5,
                offset: 0,
                with_payload: Some(WithPayloadInterface::Bool(true)),
                with_vector: Some(WithVector::Bool(false)),
                score_threshold: None,
            })
            .unwrap();
        assert!(!hits.is_empty());
    }
    started.elapsed().as_secs_f64() * 1000.0 / queries as f64
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let tenants = args.first().copied().unwrap_or(100);
    let docs = args.get(1).copied().unwrap_or(1000);
    if tenants < 3 || docs == 0 {
        eprintln!("shard_costs: TENANTS must be at least 3 and DOCS_PER_TENANT at least 1");
        std::process::exit(2);
    }
    let root = tempfile::tempdir().unwrap();
    println!(
        "shard costs: {tenants} tenants x {docs} docs, {DIM} dims, data in {}",
        root.path().display()
    );

    // --- tenantvec's options, through the store the worker uses.
    let mut settings = Settings::defaults();
    settings.store.folder = root.path().join("ours");
    let factory = EdgeFactory::new(&settings).unwrap();
    let mut stores: Vec<Box<dyn TenantStore>> = Vec::new();
    let before = rss();
    let started = Instant::now();
    for t in 0..tenants {
        let mut s = factory.open(&TenantId::parse(&format!("t{t}")).unwrap());
        s.upsert(records(0..1, t * 10_000)).unwrap();
        stores.push(s);
    }
    let create_ms = started.elapsed().as_secs_f64() * 1000.0 / tenants as f64;
    let empty_disk = disk(&root.path().join("ours/t0"));
    for (t, s) in stores.iter_mut().enumerate() {
        s.upsert(records(0..docs, t as u64 * 10_000)).unwrap();
    }
    for s in &mut stores {
        s.count(None).unwrap();
    }
    let open = rss();
    for s in &mut stores {
        s.close().unwrap();
    }
    let started = Instant::now();
    for s in &mut stores {
        s.count(None).unwrap();
    }
    let open_ms = started.elapsed().as_secs_f64() * 1000.0 / tenants as f64;
    let full_disk = disk(&root.path().join("ours/t0"));
    // A single-document upsert into an open shard: one update and one flush.
    let started = Instant::now();
    for i in 0..100 {
        stores[0].upsert(records(0..1, 5_000_000 + i)).unwrap();
    }
    let write_ms = started.elapsed().as_secs_f64() * 1000.0 / 100.0;
    // A 1000-document upsert: the same flush, spread over many documents.
    let started = Instant::now();
    stores[1].upsert(records(0..1000, 6_000_000)).unwrap();
    let batch_ms = started.elapsed().as_secs_f64() * 1000.0;
    println!(
        "ours     create {create_ms:6.2} ms/shard  open {open_ms:5.2} ms/shard  \
         empty shard {:.2} MiB apparent / {:.2} MiB allocated  \
         {docs}-doc shard {:.2} MiB allocated  RSS per open shard {:.3} MiB anon + {:.3} MiB file",
        empty_disk.0 as f64 / 1048576.0,
        empty_disk.1 as f64 / 1048576.0,
        full_disk.1 as f64 / 1048576.0,
        (open.0 - before.0) / tenants as f64,
        (open.1 - before.1) / tenants as f64,
    );
    println!(
        "ours     upsert of 1 doc {write_ms:.2} ms (update + flush); of 1000 docs {batch_ms:.1} ms ({:.0} docs/s)",
        1000.0 / (batch_ms / 1000.0)
    );
    // The engine's own time for one search of a 1000-document shard, as the
    // worker asks it (exact, top 5, payload returned).
    let query = |i: u64| tenantvec::store::SearchQuery {
        vector: vector(9_000_000 + i),
        top_k: 5,
        filter: None,
        with_vectors: false,
    };
    for i in 0..100 {
        stores[2].search(&query(i)).unwrap();
    }
    let started = Instant::now();
    for i in 0..2000 {
        stores[2].search(&query(i)).unwrap();
    }
    println!(
        "ours     search of a {docs}-doc shard, top 5: {:.3} ms (engine only, warm)",
        started.elapsed().as_secs_f64() * 1000.0 / 2000.0
    );
    drop(stores);

    // --- the engine's defaults (vectors in memory, 32 MiB WAL).
    let before = rss();
    let started = Instant::now();
    let mut shards = Vec::new();
    for t in 0..tenants {
        let path = root.path().join(format!("default/t{t}"));
        let shard = default_shard(&path);
        upsert_raw(&shard, 1, t * 10_000);
        shards.push(shard);
    }
    let create_ms = started.elapsed().as_secs_f64() * 1000.0 / tenants as f64;
    let empty_disk = disk(&root.path().join("default/t0"));
    for (t, shard) in shards.iter().enumerate() {
        upsert_raw(shard, docs, t as u64 * 10_000);
    }
    let open = rss();
    drop(shards);
    let started = Instant::now();
    let shards: Vec<EdgeShard> = (0..tenants)
        .map(|t| EdgeShard::load(&root.path().join(format!("default/t{t}")), None).unwrap())
        .collect();
    let open_ms = started.elapsed().as_secs_f64() * 1000.0 / tenants as f64;
    println!(
        "defaults create {create_ms:6.2} ms/shard  open {open_ms:5.2} ms/shard  \
         empty shard {:.2} MiB apparent / {:.2} MiB allocated  RSS per open shard {:.3} MiB anon + {:.3} MiB file",
        empty_disk.0 as f64 / 1048576.0,
        empty_disk.1 as f64 / 1048576.0,
        (open.0 - before.0) / tenants as f64,
        (open.1 - before.1) / tenants as f64,
    );
    drop(shards);

    // --- a filtered search (1% selective) on 10k points, without and with a keyword index.
    let path = root.path().join("filtered");
    let shard = default_shard(&path);
    let points: Vec<PointStructPersisted> = (0..10_000u64)
        .map(|i| {
            let payload: Value = json!({"metadata": {"category": format!("c{}", i % 100)}});
            PointStructPersisted::from(PointStruct::new(PointId::NumId(i), vector(i), payload))
        })
        .collect();
    shard
        .update(UpdateOperation::PointOperation(
            PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
        ))
        .unwrap();
    let without = filtered_search_ms(&shard, 200);
    shard
        .update(UpdateOperation::FieldIndexOperation(
            FieldIndexOperations::CreateIndex(CreateIndex {
                field_name: "metadata.category".parse().unwrap(),
                field_schema: Some(PayloadFieldSchema::FieldType(PayloadSchemaType::Keyword)),
            }),
        ))
        .unwrap();
    let with = filtered_search_ms(&shard, 200);
    println!(
        "filtered search, 10k points, 1% selective: {without:.3} ms without a payload index, {with:.3} ms with one"
    );
}
