//! Durable ingest over JetStream: exactly once, through crashes of the
//! worker and of the NATS server, poison messages dead-lettered, per-tenant
//! order kept.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::{vector, Harness, NatsServer};
use futures::StreamExt;
use serde_json::{json, Value};
use tenantvec::protocol::{AdminVerb, Verb};

const DIM: usize = 8;
const STREAM: &str = "TENANTVEC_INGEST";

fn docs(prefix: &str, n: u64, seed: u64) -> Value {
    let docs: Vec<Value> = (0..n)
        .map(|i| json!({"doc_id": format!("{prefix}-{i}"), "vector": vector(seed + i, DIM)}))
        .collect();
    json!({ "documents": docs })
}

async fn publish(js: &jetstream::Context, tenant: &str, body: Vec<u8>) {
    js.publish(format!("tenantvec.ingest.{tenant}"), body.into())
        .await
        .expect("publish")
        .await
        .expect("stored by JetStream");
}

/// `total` messages of `per_message` documents each, spread over the
/// tenants `<prefix>0` to `<prefix>3`.
async fn publish_many(js: &jetstream::Context, prefix: &str, total: u64, per_message: u64) {
    for m in 0..total {
        let body = docs(&format!("m{m}"), per_message, m * per_message);
        let tenant = format!("{prefix}{}", m % 4);
        publish(js, &tenant, serde_json::to_vec(&body).unwrap()).await;
    }
}

/// Messages left in the ingest stream.
async fn pending(js: &jetstream::Context) -> u64 {
    match js.get_stream(STREAM).await {
        Ok(mut s) => match s.info().await {
            Ok(info) => info.state.messages,
            Err(_) => u64::MAX,
        },
        Err(_) => u64::MAX,
    }
}

async fn wait_drained(js: &jetstream::Context, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left = pending(js).await;
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} ingest messages never acked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_documents_land_exactly_once() {
    let h = Harness::start().await;
    let js = h.jetstream().await;
    for m in 0..100u64 {
        let tenant = format!("i{}", m % 10);
        let body = docs(&format!("m{m}"), 100, m * 100);
        publish(&js, &tenant, serde_json::to_vec(&body).unwrap()).await;
    }
    wait_drained(&js, Duration::from_secs(60)).await;
    for t in 0..10 {
        let count = h.ok(Verb::Count, &format!("i{t}"), json!({})).await;
        assert_eq!(count["count"], 1000, "tenant i{t}");
    }
    let stats = h.admin(AdminVerb::Stats, json!({})).await;
    assert_eq!(stats["ingest"]["acked"], 100, "{stats}");
    assert_eq!(stats["ingest"]["documents"], 10_000);
    assert_eq!(stats["ingest"]["dead_lettered"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_block_nothing() {
    let h = Harness::start().await;
    let nats = h.nats().await;
    let mut letters = nats.subscribe("tenantvec.deadletter.>").await.unwrap();
    nats.flush().await.unwrap();
    let js = jetstream::new(nats);

    publish(&js, "p1", b"{not json".to_vec()).await;
    publish(&js, "BAD", serde_json::to_vec(&docs("x", 1, 1)).unwrap()).await;
    let wrong_dim = json!({"documents": [{"doc_id": "w", "vector": vector(1, DIM + 3)}]});
    publish(&js, "p1", serde_json::to_vec(&wrong_dim).unwrap()).await;
    let no_text = json!({"documents": [{"doc_id": "n"}]});
    publish(&js, "p1", serde_json::to_vec(&no_text).unwrap()).await;
    publish(&js, "p1", serde_json::to_vec(&docs("good", 3, 10)).unwrap()).await;
    wait_drained(&js, Duration::from_secs(30)).await;

    let mut seen = Vec::new();
    for _ in 0..4 {
        let msg = tokio::time::timeout(Duration::from_secs(10), letters.next())
            .await
            .expect("a dead letter")
            .unwrap();
        let record: Value = serde_json::from_slice(&msg.payload).unwrap();
        assert!(record["stream_seq"].as_u64().unwrap() > 0);
        seen.push((
            msg.subject.to_string(),
            record["subject"].as_str().unwrap().to_owned(),
            record["error"]["code"].as_str().unwrap().to_owned(),
        ));
    }
    seen.sort();
    let mut want = vec![
        (
            "tenantvec.deadletter._invalid".to_owned(),
            "tenantvec.ingest.BAD".to_owned(),
            "invalid_tenant".to_owned(),
        ),
        (
            "tenantvec.deadletter.p1".into(),
            "tenantvec.ingest.p1".into(),
            "bad_request".into(),
        ),
        (
            "tenantvec.deadletter.p1".into(),
            "tenantvec.ingest.p1".into(),
            "bad_request".into(),
        ),
        (
            "tenantvec.deadletter.p1".into(),
            "tenantvec.ingest.p1".into(),
            "dimension_mismatch".into(),
        ),
    ];
    want.sort();
    assert_eq!(seen, want);
    // The good message behind them landed.
    assert_eq!(h.ok(Verb::Count, "p1", json!({})).await["count"], 3);
    // The records are kept in the dead-letter stream for an operator.
    let mut dl = js.get_stream("TENANTVEC_DEADLETTER").await.unwrap();
    assert_eq!(dl.info().await.unwrap().state.messages, 4);
    let stats = h.admin(AdminVerb::Stats, json!({})).await;
    assert_eq!(stats["ingest"]["dead_lettered"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tenant_order_is_stream_order() {
    order_is_stream_order(Harness::start().await).await
}

/// `ingest.ordered` (the pinned consumer) on one worker: the same. The
/// two-worker hand-over is in `qdrant_backend.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_ingest_on_one_worker() {
    let h = Harness::start_with(|s| {
        s.ingest.ordered = true;
        s.ingest.pin_timeout = Duration::from_secs(3);
    })
    .await;
    order_is_stream_order(h).await
}

/// 60 versions of one document of tenant `ord`, interleaved with another
/// tenant's messages: the last version wins, every other message lands.
async fn order_is_stream_order(h: Harness) {
    let js = h.jetstream().await;
    for v in 0..60u64 {
        let body = json!({"documents": [{"doc_id": "same", "vector": vector(v, DIM), "metadata": {"v": v}}]});
        // Another tenant's messages interleave.
        let other = json!({"documents": [{"doc_id": format!("o{v}"), "vector": vector(v, DIM)}]});
        publish(&js, "ord", serde_json::to_vec(&body).unwrap()).await;
        publish(&js, "other", serde_json::to_vec(&other).unwrap()).await;
    }
    wait_drained(&js, Duration::from_secs(30)).await;
    let got = h.ok(Verb::Get, "ord", json!({"doc_ids": ["same"]})).await;
    assert_eq!(got["documents"][0]["metadata"]["v"], 59);
    assert_eq!(h.ok(Verb::Count, "ord", json!({})).await["count"], 1);
    assert_eq!(h.ok(Verb::Count, "other", json!({})).await["count"], 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restart_mid_ingest_finishes_by_itself() {
    let mut h = Harness::start().await;
    let js = h.jetstream().await;
    let total = 120u64;
    publish_many(&js, "r", total, 200).await;
    // Restart the server while the worker is part-way through.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending(&js).await >= total {
        assert!(Instant::now() < deadline, "ingest never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.nats.restart();
    wait_drained(&js, Duration::from_secs(120)).await;
    for t in 0..4 {
        let count = h.ok(Verb::Count, &format!("r{t}"), json!({})).await;
        assert_eq!(
            count["count"].as_u64(),
            Some(total / 4 * 200),
            "tenant r{t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_ingest_loses_and_duplicates_nothing() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let settings = common::settings(&nats.url(), data.path());
    let mut worker = common::spawn_worker_binary(&nats, data.path(), DIM);
    common::wait_ready(&settings, || false).await;
    let client = tenantvec::transport::connect(&settings.nats).await.unwrap();
    let js = jetstream::new(client);
    let total = 200u64;
    publish_many(&js, "k", total, 250).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending(&js).await > total * 3 / 4 {
        assert!(Instant::now() < deadline, "ingest never progressed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.kill().expect("SIGKILL");
    worker.wait().unwrap();
    let left = pending(&js).await;
    assert!(
        left > 0,
        "the worker finished before it was killed; nothing tested"
    );

    let mut worker = common::spawn_worker_binary(&nats, data.path(), DIM);
    common::wait_ready(&settings, || false).await;
    wait_drained(&js, Duration::from_secs(120)).await;
    let c = tenantvec::client::Client::connect(&settings).await.unwrap();
    for t in 0..4 {
        let count = c
            .tenant(Verb::Count, &format!("k{t}"), &json!({}))
            .await
            .unwrap();
        assert_eq!(
            count["count"].as_u64(),
            Some(total / 4 * 250),
            "tenant k{t}"
        );
    }
    worker.kill().ok();
    worker.wait().ok();
}

/// `tenantvec ingest ARGS` against the harness's server; its JSON summary.
fn ingest_command(h: &Harness, args: &[&str]) -> Value {
    let out = Command::new(common::tenantvec_bin())
        .arg("ingest")
        .args(args)
        .env("NATS_URL", h.nats.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_command_publishes_and_waits() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docs.jsonl");
    let lines: Vec<String> = (0..2500u64)
        .map(|i| {
            json!({"tenant": if i % 5 == 0 { "other" } else { "cmd" }, "doc_id": format!("d{i}"),
                   "text": format!("document {i}"), "vector": vector(i, DIM)})
            .to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let file = file.to_str().unwrap();
    let summary = ingest_command(&h, &["--tenant", "cmd", file]);
    assert_eq!(summary["published"], 2000);
    assert_eq!(summary["skipped_other_tenants"], 500);
    assert!(summary["committed_docs_per_second"].as_f64().unwrap() > 0.0);
    // --wait is the default: the worker has committed everything by now.
    assert_eq!(h.ok(Verb::Count, "cmd", json!({})).await["count"], 2000);
    assert_eq!(h.ok(Verb::Count, "other", json!({})).await["count"], 0);

    // Every line to its own tenant; the repeated documents replace themselves.
    let summary = ingest_command(&h, &["--all-tenants", file]);
    assert_eq!(summary["published"], 2500);
    assert_eq!(summary["tenants"], 2);
    assert_eq!(h.ok(Verb::Count, "cmd", json!({})).await["count"], 2000);
    assert_eq!(h.ok(Verb::Count, "other", json!({})).await["count"], 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_until_it_succeeds() {
    let h = Harness::start_with(|s| {
        s.ingest.backoff = vec![Duration::from_millis(100)];
    })
    .await;
    let js = h.jetstream().await;
    // Create the tenant, then make its store unavailable: another process
    // (here, this test) holds the shard's lock.
    h.ok(Verb::Upsert, "busy", docs("first", 1, 1)).await;
    h.admin(AdminVerb::Evict, json!({"tenant": "busy"})).await;
    let lock_path = h.tenant_dir("busy").join("vector_store/.tenantvec.lock");
    let lock = std::fs::File::options()
        .write(true)
        .open(&lock_path)
        .unwrap();
    lock.try_lock().expect("the test takes the shard lock");

    publish(
        &js,
        "busy",
        serde_json::to_vec(&docs("later", 5, 100)).unwrap(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = h.admin(AdminVerb::Stats, json!({})).await;
        if stats["ingest"]["retried"].as_u64().unwrap() >= 2 {
            assert_eq!(
                stats["ingest"]["dead_lettered"], 0,
                "a transient failure is not poison"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never retried: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pending(&js).await, 1, "the message waits in the stream");
    drop(lock);
    wait_drained(&js, Duration::from_secs(20)).await;
    assert_eq!(h.ok(Verb::Count, "busy", json!({})).await["count"], 6);
}
