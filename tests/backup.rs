//! Export, import, backup and restore, end to end: a real nats-server with
//! JetStream (the backup bucket is a NATS Object Store), a worker, and the
//! command line's functions. On both layouts of the edge store, and on the
//! qdrant backend when `QDRANT_URL` names a server.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{qdrant as server, vector, Harness};
use serde_json::{json, Value};
use tenantvec::backup::format;
use tenantvec::client::backup as cli;
use tenantvec::client::ClientError;
use tenantvec::config::{Backend, Layout, Settings};
use tenantvec::protocol::{ErrorCode, Verb};
use tenantvec::tenant::TenantId;

const DIM: usize = 8;
const DOCS: u64 = 300;

fn tenant(t: &str) -> TenantId {
    TenantId::parse(t).unwrap()
}

async fn load(h: &Harness, t: &str, n: u64) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let docs: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({
                    "doc_id": format!("d{i}"),
                    "text": format!("document {i}, \"quoted\"\nsecond line"),
                    "metadata": {"i": i, "group": format!("g{}", i % 3), "tags": ["x", i]},
                    "vector": vector(*i, DIM),
                })
            })
            .collect();
        h.ok(Verb::Upsert, t, json!({ "documents": docs })).await;
    }
}

/// What a tenant answers: its count, and searches with and without a filter
/// (ids, scores, texts, metadata and vectors).
async fn answers(h: &Harness, t: &str) -> Value {
    let mut out = vec![h.ok(Verb::Count, t, json!({})).await];
    for q in 0..4u64 {
        let mut body =
            json!({"vector": vector(10_000 + q, DIM), "top_k": 10, "with_vectors": true});
        if q % 2 == 1 {
            body["filter"] = json!({"group": "g1"});
        }
        out.push(h.ok(Verb::Search, t, body).await);
    }
    Value::Array(out)
}

fn service_error(result: Result<Value, ClientError>) -> tenantvec::protocol::ServiceError {
    match result {
        Err(ClientError::Service(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Export to a file, drop, import: the same answers. Backup, change the
/// tenant, restore: the same answers again; restore into another tenant too.
async fn round_trip(configure: impl FnOnce(&mut Settings)) {
    let h = Harness::start_with(configure).await;
    load(&h, "alice", DOCS).await;
    let before = answers(&h, "alice").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alice.jsonl");

    let exported = cli::export(&h.client, &tenant("alice"), Some(&file), None)
        .await
        .unwrap();
    assert_eq!(exported["documents"], DOCS, "{exported}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count() as u64, DOCS + 1);
    let header = format::decode_header(text.lines().next().unwrap()).unwrap();
    assert_eq!((header.dimension, header.count), (DIM, DOCS));

    h.ok(Verb::Drop, "alice", json!({})).await;
    assert_eq!(h.ok(Verb::Count, "alice", json!({})).await["count"], 0);
    let imported = cli::import(&h.client, &tenant("alice"), &file, false)
        .await
        .unwrap();
    assert_eq!(imported["imported"], DOCS, "{imported}");
    assert_eq!(answers(&h, "alice").await, before, "after export → import");

    let backup = cli::backup(&h.client, &tenant("alice"), Some("first"))
        .await
        .unwrap();
    assert_eq!(backup["documents"], DOCS, "{backup}");
    // Changed after the backup: a document more, some fewer.
    load(&h, "alice", DOCS + 5).await;
    h.ok(
        Verb::Delete,
        "alice",
        json!({"doc_ids": ["d1", "d2", "d3"]}),
    )
    .await;
    assert_ne!(answers(&h, "alice").await, before);
    let restored = cli::restore(&h.client, &tenant("alice"), None, None, false)
        .await
        .unwrap();
    assert_eq!(restored["backup"], "first", "{restored}");
    assert_eq!(restored["replaced"], DOCS + 2, "{restored}");
    assert_eq!(answers(&h, "alice").await, before, "after backup → restore");

    let copied = cli::restore(
        &h.client,
        &tenant("alice"),
        Some(&tenant("bob")),
        Some("first"),
        false,
    )
    .await
    .unwrap();
    assert_eq!(copied["tenant"], "bob", "{copied}");
    assert_eq!(
        answers(&h, "bob").await,
        before,
        "restored as another tenant"
    );

    let listed = cli::list(&h.client, Some(&tenant("alice"))).await.unwrap();
    assert_eq!(
        listed["count"], 1,
        "temporary objects are not listed: {listed}"
    );
    assert_eq!(listed["backups"][0]["documents"], DOCS);
    // Unknown names and tenants without backups are said so.
    let e = cli::restore(&h.client, &tenant("alice"), None, Some("nope"), false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no backup \"nope\""), "{e}");
    let e = cli::restore(&h.client, &tenant("carol"), None, None, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("has no backup"), "{e}");
}

async fn edge_round_trip(layout: Layout) {
    round_trip(|s| s.store.layout = layout).await;
}

/// A backup restored by a new worker on a new, empty data folder.
async fn restore_into_a_fresh_worker(layout: Layout) {
    let mut h = Harness::start_with(|s| s.store.layout = layout).await;
    load(&h, "alice", DOCS).await;
    let before = answers(&h, "alice").await;
    cli::backup(&h.client, &tenant("alice"), None)
        .await
        .unwrap();
    h.stop_worker().unwrap();
    let fresh = tempfile::tempdir().unwrap();
    h.settings.store.folder = fresh.path().to_owned();
    h.start_worker().await;
    assert_eq!(h.ok(Verb::Count, "alice", json!({})).await["count"], 0);
    let restored = cli::restore(&h.client, &tenant("alice"), None, None, false)
        .await
        .unwrap();
    assert_eq!(restored["imported"], DOCS, "{restored}");
    assert_eq!(answers(&h, "alice").await, before);
    h.stop_worker().unwrap();
}

/// Corrupt, truncated, foreign-dimension and foreign-model files are
/// refused with a clear error, and the tenant is left as it was.
async fn bad_files_change_nothing(layout: Layout) {
    let h = Harness::start_with(|s| s.store.layout = layout).await;
    load(&h, "alice", DOCS).await;
    let before = answers(&h, "alice").await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jsonl");
    cli::export(&h.client, &tenant("alice"), Some(&good), None)
        .await
        .unwrap();
    let lines: Vec<String> = std::fs::read_to_string(&good)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let write = |name: &str, lines: &[String]| {
        let path = dir.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };
    let import = |path: std::path::PathBuf| {
        let client = &h.client;
        async move { cli::import(client, &tenant("alice"), &path, false).await }
    };

    // A line broken near the end: found before anything changed.
    let mut corrupt = lines.clone();
    let n = corrupt.len() - 2;
    let half = corrupt[n].len() / 2;
    corrupt[n].truncate(half);
    let e = service_error(import(write("corrupt.jsonl", &corrupt)).await);
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains(&format!("line {}", n + 1)), "{e}");

    // The last document's vector of another length.
    let mut short = lines.clone();
    let last = short.len() - 1;
    let w = format::encode_vector(&vector(1, DIM + 1));
    short[last] = short[last].replace(&extract_vector(&short[last]), &w);
    let e = service_error(import(write("short.jsonl", &short)).await);
    assert_eq!(e.code, ErrorCode::DimensionMismatch, "{e}");

    // A whole file of another dimension.
    let mut header: Value = serde_json::from_str(&lines[0]).unwrap();
    header["dimension"] = json!(DIM * 2);
    header["embedder"] = Value::Null;
    let mut foreign = vec![header.to_string()];
    for (i, line) in lines[1..].iter().enumerate() {
        let old = extract_vector(line);
        foreign.push(line.replace(&old, &format::encode_vector(&vector(i as u64, DIM * 2))));
    }
    let e = service_error(import(write("foreign.jsonl", &foreign)).await);
    assert_eq!(e.code, ErrorCode::DimensionMismatch, "{e}");
    assert!(e.message.contains("nothing was changed"), "{e}");

    // Truncated: fewer lines than the header says.
    let e = service_error(import(write("truncated.jsonl", &lines[..lines.len() - 10])).await);
    assert!(e.message.contains("incomplete"), "{e}");

    // Another embedder's vectors.
    let mut header: Value = serde_json::from_str(&lines[0]).unwrap();
    header["embedder"] = json!({"model": "another-model", "dimension": DIM});
    let mut other_model = lines.clone();
    other_model[0] = header.to_string();
    let e = service_error(import(write("model.jsonl", &other_model)).await);
    assert!(
        e.message.contains("another-model") && e.message.contains("re-embed"),
        "{e}"
    );

    // Not an export at all, and an empty file.
    let e = service_error(import(write("other.jsonl", &[r#"{"doc_id": "a"}"#.into()])).await);
    assert!(e.message.contains("not a tenantvec export"), "{e}");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let e = service_error(import(empty).await);
    assert!(e.message.contains("empty"), "{e}");

    assert_eq!(
        answers(&h, "alice").await,
        before,
        "a refused import changed the tenant"
    );
    // And a good file still imports afterwards.
    cli::import(&h.client, &tenant("alice"), &good, false)
        .await
        .unwrap();
    assert_eq!(answers(&h, "alice").await, before);
}

fn extract_vector(line: &str) -> String {
    let v: Value = serde_json::from_str(line).unwrap();
    v["vector"].as_str().unwrap().to_owned()
}

both_layouts!(
    edge_round_trip,
    restore_into_a_fresh_worker,
    bad_files_change_nothing
);

/// A tenant's request names only its own objects; progress goes only to an inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_reaches_only_its_own_objects() {
    let h = Harness::start().await;
    load(&h, "alice", 3).await;
    cli::backup(&h.client, &tenant("alice"), Some("b1"))
        .await
        .unwrap();
    for object in [
        "alice/b1",
        "../alice/b1",
        "bobx/b1",
        "bob/../alice/b1",
        "bob/",
    ] {
        let e = h
            .fails(
                Verb::Import,
                "bob",
                json!({"object": object}),
                ErrorCode::BadRequest,
            )
            .await;
        assert!(
            e.contains("is not one of tenant bob's") || e.contains("no object"),
            "{object}: {e}"
        );
    }
    let e = h
        .fails(
            Verb::Export,
            "alice",
            json!({"object": "alice/b2", "progress": "tenantvec.upsert.bob"}),
            ErrorCode::BadRequest,
        )
        .await;
    assert!(e.contains("inbox"), "{e}");
    // A backup's name is never overwritten.
    let e = cli::backup(&h.client, &tenant("alice"), Some("b1"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exists already"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_embedding_makes_the_worker_s_vectors_from_the_texts() {
    let h = Harness::start().await;
    let docs: Vec<Value> = (0..20)
        .map(|i| json!({"doc_id": format!("t{i}"), "text": format!("walk number {i} in the park")}))
        .collect();
    h.ok(Verb::Upsert, "alice", json!({ "documents": docs }))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.jsonl");
    cli::export(&h.client, &tenant("alice"), Some(&file), None)
        .await
        .unwrap();
    // As if another model had made them: refused, unless re-embedded.
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut header: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(header["embedder"]["model"], "hashing");
    header["embedder"]["model"] = json!("old-model");
    lines[0] = header.to_string();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let search = json!({"query": "walk number 3 in the park", "top_k": 1});
    let before = h.ok(Verb::Search, "alice", search.clone()).await;
    service_error(cli::import(&h.client, &tenant("alice"), &file, false).await);
    let done = cli::import(&h.client, &tenant("alice"), &file, true)
        .await
        .unwrap();
    assert_eq!(done["re_embedded"], true, "{done}");
    assert_eq!(done["embedder"]["model"], "hashing", "{done}");
    assert_eq!(h.ok(Verb::Search, "alice", search).await, before);
}

/// The command line says what is wrong before asking anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_without_a_bucket_says_so() {
    let h = Harness::start().await;
    let e = cli::list(&h.client, None).await.unwrap_err();
    assert!(
        e.to_string().contains("no backup bucket TENANTVEC_BACKUP"),
        "{e}"
    );
}

fn on_qdrant(s: &mut Settings, url: &str, space: &server::Space, layout: Layout) {
    s.store.backend = Backend::Qdrant;
    s.store.layout = layout;
    server::configure(s, url, space);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_round_trip() {
    let Some(url) = server::url_or_skip("qdrant_round_trip") else {
        return;
    };
    for layout in [Layout::PerTenant, Layout::Shared] {
        let space = server::Space::new(&url);
        round_trip(|s| on_qdrant(s, &url, &space, layout)).await;
    }
}

/// Resident memory of a process, from /proc: (RssAnon, VmRSS) in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("RssAnon:"), field("VmRSS:"))
}

/// Write an export of `n` documents of `dim` dimensions, a line at a time.
fn write_export(path: &Path, n: u64, dim: usize) {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    out.write_all(&format::encode_header(&format::Header::new(
        "big", dim, None, n,
    )))
    .unwrap();
    let mut line = Vec::new();
    for i in 0..n {
        line.clear();
        let Value::Object(metadata) = json!({"i": i, "group": format!("g{}", i % 10)}) else {
            unreachable!()
        };
        let record = tenantvec::store::Record {
            doc_id: format!("doc-{i}"),
            text: Some(format!("document number {i}")),
            metadata,
            vector: vector(i, dim),
        };
        format::encode_doc(&record, &mut line);
        out.write_all(&line).unwrap();
    }
    out.flush().unwrap();
}

/// 100,000 documents backed up with the worker's memory flat: the worker
/// runs as a child process, its resident memory sampled while it exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_tenant_is_backed_up_in_flat_memory() {
    const N: u64 = 100_000;
    const DIM64: usize = 64;
    tenantvec::init_tracing("error");
    let nats = common::NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let mut worker = Some(common::spawn_worker_binary(&nats, data.path(), DIM64));
    let mut settings = common::settings(&nats.url(), data.path());
    settings.store.dimension = DIM64;
    let pid = worker.as_ref().unwrap().id();
    common::wait_ready(&settings, || false).await;
    let client = tenantvec::client::Client::connect(&settings).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.jsonl");
    write_export(&file, N, DIM64);
    let file_bytes = std::fs::metadata(&file).unwrap().len();

    let started = Instant::now();
    let imported = cli::import(&client, &tenant("big"), &file, false)
        .await
        .unwrap();
    let import_seconds = started.elapsed().as_secs_f64();
    assert_eq!(imported["imported"], N, "{imported}");
    let count = client.tenant(Verb::Count, "big", &json!({})).await.unwrap();
    assert_eq!(count["count"], N);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let peak = std::sync::Arc::new(std::sync::Mutex::new(before));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = rss_kib(pid);
                let mut p = peak.lock().unwrap();
                *p = (p.0.max(now.0), p.1.max(now.1));
                drop(p);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let started = Instant::now();
    let backup = cli::backup(&client, &tenant("big"), Some("large"))
        .await
        .unwrap();
    let backup_seconds = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = *peak.lock().unwrap();
    assert_eq!(backup["documents"], N, "{backup}");
    let object_bytes = backup["bytes"].as_u64().unwrap();
    println!(
        "100k x {DIM64}d: file {} MiB, import {import_seconds:.1} s; backup {backup_seconds:.1} s, \
         object {} MiB; worker RssAnon {} -> peak {} MiB (+{} MiB), VmRSS {} -> peak {} MiB",
        file_bytes >> 20,
        object_bytes >> 20,
        before.0 >> 10,
        peak.0 >> 10,
        (peak.0.saturating_sub(before.0)) >> 10,
        before.1 >> 10,
        peak.1 >> 10,
    );
    // Collecting the tenant would take more than the object's size in heap.
    let grown = peak.0.saturating_sub(before.0) * 1024;
    assert!(
        grown < object_bytes / 2,
        "the worker's heap grew by {} MiB exporting a {} MiB object",
        grown >> 20,
        object_bytes >> 20
    );
    common::kill(&mut worker);
}

/// `tenantvec <args>` against the harness's NATS server, as a child.
fn cli_command(h: &Harness, args: &[&str]) -> std::process::Command {
    common::cli_command(&h.nats.url(), args)
}

/// [`cli_command`] run to its end, which must be a success: its output.
fn cli_json(h: &Harness, args: &[&str]) -> Value {
    common::json_output(&mut cli_command(h, args))
}

/// `backup --all` killed half-way and run again backs every tenant of the
/// registry up once; `restore --all` into a fresh worker and data folder
/// answers every search as before, and run again restores nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_all_resumes_and_restore_all_gives_the_same_answers() {
    const TENANTS: usize = 30;
    let mut h = Harness::start().await;
    let names: Vec<String> = (0..TENANTS).map(|i| format!("user-{i:02}")).collect();
    let mut before = Vec::new();
    for t in &names {
        load(&h, t, 120).await;
        before.push(answers(&h, t).await);
    }

    // Interrupted: killed once a few tenants are done.
    let mut child = cli_command(
        &h,
        &["backup", "--all", "--name", "nightly", "--parallel", "1"],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("run tenantvec backup --all");
    let js = h.jetstream().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let bucket = loop {
        if let Ok(b) = js
            .get_object_store(tenantvec::backup::bucket_name(&h.settings.nats.prefix))
            .await
        {
            break b;
        }
        assert!(Instant::now() < deadline, "no backup bucket made");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    while bucket.info("user-03/nightly").await.is_err() {
        assert!(Instant::now() < deadline, "backup --all made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let first = cli::list(&h.client, None).await.unwrap()["count"]
        .as_u64()
        .unwrap();
    assert!(
        (4..TENANTS as u64).contains(&first),
        "killed after {first} of {TENANTS}: not half-way"
    );

    let rerun = cli_json(&h, &["backup", "--all", "--name", "nightly"]);
    assert_eq!(rerun["tenants"], TENANTS, "{rerun:#}");
    assert!(
        rerun["already_done"].as_u64().unwrap() >= first,
        "{rerun:#}"
    );
    assert_eq!(
        rerun["done"].as_u64().unwrap() + rerun["already_done"].as_u64().unwrap(),
        TENANTS as u64,
        "{rerun:#}"
    );
    let listed = cli::list(&h.client, None).await.unwrap();
    let backups = listed["backups"].as_array().unwrap();
    assert_eq!(backups.len(), TENANTS, "every tenant once: {listed:#}");
    for (b, t) in backups.iter().zip(&names) {
        assert_eq!((&b["tenant"], &b["name"]), (&json!(t), &json!("nightly")));
        assert_eq!(b["documents"], 120);
    }

    // A fresh worker and data folder on the same NATS (registry and bucket).
    h.stop_worker().unwrap();
    let fresh = tempfile::tempdir().unwrap();
    h.settings.store.folder = fresh.path().to_owned();
    h.start_worker().await;
    assert_eq!(h.ok(Verb::Count, "user-00", json!({})).await["count"], 0);
    let restored = cli_json(&h, &["restore", "--all", "--at", "nightly"]);
    assert_eq!(
        (&restored["done"], &restored["documents"]),
        (&json!(TENANTS), &json!(TENANTS * 120)),
        "{restored:#}"
    );
    for (t, expected) in names.iter().zip(&before) {
        assert_eq!(&answers(&h, t).await, expected, "{t} answers otherwise");
    }
    let again = cli_json(&h, &["restore", "--all", "--at", "nightly"]);
    assert_eq!(
        (&again["done"], &again["already_done"]),
        (&json!(0), &json!(TENANTS)),
        "{again:#}"
    );
    // The marks of the restore are no backups.
    assert_eq!(cli::list(&h.client, None).await.unwrap()["count"], TENANTS);
    h.stop_worker().unwrap();
}
