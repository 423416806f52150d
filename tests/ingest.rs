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
const STREAM: &str = common::INGEST_STREAM;

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

async fn pending(js: &jetstream::Context) -> u64 {
    common::ingest_left(js).await
}

async fn wait_drained(js: &jetstream::Context, limit: Duration) {
    common::wait_ingest_empty(js, limit, String::new).await
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
    let stats = h.ingest_stats().await;
    assert_eq!(stats["acked"], 100, "{stats}");
    assert_eq!(stats["documents"], 10_000);
    assert_eq!(stats["dead_lettered"], 0);
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
    assert_eq!(h.ingest_stats().await["dead_lettered"], 4);
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

/// Take the first `delays.len()` messages of `consumer` (as a worker that
/// then died would have held them) and hand each back to the stream after
/// its delay (`None`: at once).
async fn take_and_hand_back(
    consumer: &jetstream::consumer::PullConsumer,
    delays: &[Option<Duration>],
) {
    use async_nats::jetstream::AckKind;
    let mut taken = consumer
        .fetch()
        .max_messages(delays.len())
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let mut held = Vec::new();
    while let Some(m) = taken.next().await {
        held.push(m.unwrap());
    }
    assert_eq!(
        held.len(),
        delays.len(),
        "the test takes every message first"
    );
    for (m, delay) in held.iter().zip(delays) {
        m.ack_with(AckKind::Nak(*delay)).await.unwrap();
    }
}

/// A lane holding a tenant's messages with a gap between them (the message
/// between comes later, redelivered) applies only up to the gap and waits:
/// every message lands, in stream order. The test takes four messages on the
/// worker's own consumer, as a worker that then died would have held them,
/// and hands them back with delays: the first after 1 s, the third after
/// 5 s, the others at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_with_a_gap_waits_for_the_message_between() {
    use tenantvec::names::Names;
    use tenantvec::transport::ingest::ensure_streams;

    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let settings = common::settings(&nats.url(), data.path());
    let js = jetstream::new(tenantvec::transport::connect(&settings.nats).await.unwrap());
    let consumer = ensure_streams(&js, &Names::new(&settings.nats.prefix), &settings.ingest, 1)
        .await
        .unwrap()
        .expect("the worker's consumer");
    publish_versions(&js, "gap", &mut 0, 4).await;
    take_and_hand_back(
        &consumer,
        &[
            Some(Duration::from_secs(1)),
            None,
            Some(Duration::from_secs(5)),
            None,
        ],
    )
    .await;

    let worker = tenantvec::worker::spawn(settings.clone());
    common::wait_ready(&settings, || worker.is_finished()).await;
    wait_drained(&js, Duration::from_secs(60)).await;
    assert_versions(&settings, "gap", 4).await;
    drop(worker);
}

/// After a crash the dead worker's deliveries come back when their ack wait
/// ends, while newer messages reach the next worker at once as first
/// deliveries. A lane that has seen its tenant's oldest message must still
/// ask the stream before a newer one: here message 2 is held elsewhere (as a
/// dead worker would hold it) while message 1 is applied and message 3
/// arrives fresh. Before every batch asked, 3 was applied first and 2,
/// coming back after it, was taken for a settled duplicate and lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_message_waits_for_an_older_one_held_elsewhere() {
    use tenantvec::names::Names;

    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let mut settings = common::settings(&nats.url(), data.path());
    // One partition, so the test can hold a message of that one consumer.
    settings.cluster.partitions = 1;
    // A first worker makes the stream and the consumer, and stops.
    let first = tenantvec::worker::spawn(settings.clone());
    common::wait_ready(&settings, || first.is_finished()).await;
    first.stop().unwrap();

    let js = jetstream::new(tenantvec::transport::connect(&settings.nats).await.unwrap());
    let mut next = 0;
    publish_versions(&js, "late", &mut next, 2).await;
    let names = Names::partitioned(&settings.nats.prefix, 1);
    let (consumer_name, _) = names.partition_consumer(0);
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream(&names.ingest_stream)
        .await
        .unwrap()
        .get_consumer(&consumer_name)
        .await
        .unwrap();
    // Message 1 back at once, message 2 only after 5 s.
    take_and_hand_back(&consumer, &[None, Some(Duration::from_secs(5))]).await;

    let worker = tenantvec::worker::spawn(settings.clone());
    common::wait_ready(&settings, || worker.is_finished()).await;
    let c = tenantvec::client::Client::connect(&settings).await.unwrap();
    // Message 1 applied: `same` and d0.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.tenant(Verb::Count, "late", &json!({})).await.unwrap()["count"] != 2 {
        assert!(Instant::now() < deadline, "message 1 never landed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Message 3, a first delivery, while 2 is still away.
    publish_versions(&js, "late", &mut next, 1).await;
    wait_drained(&js, Duration::from_secs(60)).await;
    assert_versions(&settings, "late", 3).await;
    drop(worker);
}

/// Publish `n` more versions to tenant `tenant`: each message rewrites
/// document `same` and adds a document of its own.
async fn publish_versions(js: &jetstream::Context, tenant: &str, next: &mut u64, n: u64) {
    for _ in 0..n {
        let v = *next;
        *next += 1;
        let body = json!({"documents": [
            {"doc_id": "same", "vector": vector(v, DIM), "metadata": {"v": v}},
            {"doc_id": format!("d{v}"), "vector": vector(v, DIM)},
        ]});
        publish(js, tenant, serde_json::to_vec(&body).unwrap()).await;
    }
}

/// Every version up to `versions` landed and the last one won.
async fn assert_versions(settings: &tenantvec::config::Settings, tenant: &str, versions: u64) {
    let c = tenantvec::client::Client::connect(settings).await.unwrap();
    let count = c.tenant(Verb::Count, tenant, &json!({})).await.unwrap();
    assert_eq!(count["count"], versions + 1, "every message landed");
    let got = c
        .tenant(Verb::Get, tenant, &json!({"doc_ids": ["same"]}))
        .await
        .unwrap();
    assert_eq!(
        got["documents"][0]["metadata"]["v"],
        versions - 1,
        "the last version won"
    );
}

/// A prefix served by the single consumer (`ingest.ordered`) becomes a
/// fleet's, and then the single consumer's again, with messages waiting at
/// each switch. A work-queue stream refuses
/// consumers that overlap, so the fleet narrows the single consumer to the
/// subjects of before and drains it first; a single worker refuses to start
/// while a fleet's messages wait, and takes the prefix back once they are
/// applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_moves_to_a_fleet_and_back_without_losing_order() {
    tenantvec::init_tracing(&std::env::var("TEST_LOG").unwrap_or_else(|_| "error".into()));
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let mut single = common::settings(&nats.url(), data.path());
    // One worker pulls the single consumer only with `ingest.ordered`.
    single.ingest.ordered = true;
    single.ingest.pin_timeout = Duration::from_secs(2);
    let mut fleet = single.clone();
    fleet.ingest.ordered = false;
    fleet.cluster.enabled = true;
    fleet.cluster.partitions = 4;
    fleet.cluster.lease_ttl = Duration::from_secs(2);
    let js = jetstream::new(tenantvec::transport::connect(&single.nats).await.unwrap());
    let mut next = 0;

    // One worker makes the stream and its consumer; messages wait for it.
    let worker = tenantvec::worker::spawn(single.clone());
    common::wait_ready(&single, || worker.is_finished()).await;
    worker.stop().expect("the single worker stops");
    publish_versions(&js, "mig", &mut next, 10).await;

    // A fleet member: the ten from before first (before it serves), then
    // ten filed by partition.
    let member = tenantvec::worker::spawn(fleet.clone());
    common::wait_ready(&fleet, || member.is_finished()).await;
    publish_versions(&js, "mig", &mut next, 10).await;
    wait_drained(&js, Duration::from_secs(60)).await;
    assert_versions(&fleet, "mig", next).await;
    member.stop().expect("the fleet member stops");

    // Messages filed by partition wait: a single worker refuses to start.
    publish_versions(&js, "mig", &mut next, 5).await;
    let refused = tenantvec::worker::spawn(single.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !refused.is_finished() {
        assert!(Instant::now() < deadline, "the single worker started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let error = format!("{:#}", refused.stop().unwrap_err());
    assert!(error.contains("filed by partition"), "{error}");

    // A fleet member applies them; then one worker takes the prefix back.
    let member = tenantvec::worker::spawn(fleet.clone());
    common::wait_ready(&fleet, || member.is_finished()).await;
    wait_drained(&js, Duration::from_secs(60)).await;
    member.stop().expect("the fleet member stops");
    let worker = tenantvec::worker::spawn(single.clone());
    common::wait_ready(&single, || worker.is_finished()).await;
    publish_versions(&js, "mig", &mut next, 5).await;
    wait_drained(&js, Duration::from_secs(60)).await;
    assert_versions(&single, "mig", next).await;
    worker.stop().expect("the single worker stops");
}

/// `tenantvec ingest ARGS` against the harness's server; its JSON summary.
fn ingest_command(h: &Harness, args: &[&str]) -> Value {
    let mut all = vec!["ingest"];
    all.extend_from_slice(args);
    cli(h, &all)
}

/// Run the command line against the harness's nats-server; its JSON output.
fn cli(h: &Harness, args: &[&str]) -> Value {
    common::json_output(&mut common::cli_command(&h.nats.url(), args))
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
    let stats = h
        .ingest_until(Duration::from_secs(20), "never retried", |s| {
            s["retried"].as_u64().unwrap() >= 2
        })
        .await;
    assert_eq!(
        stats["dead_lettered"], 0,
        "a transient failure is not poison"
    );
    assert_eq!(pending(&js).await, 1, "the message waits in the stream");
    drop(lock);
    wait_drained(&js, Duration::from_secs(20)).await;
    assert_eq!(h.ok(Verb::Count, "busy", json!({})).await["count"], 6);
}

/// Busy processes beside the worker, so a burst meets a worker that is
/// momentarily slower than its producers, as on any shared host. Killed on drop.
struct Load(Vec<std::process::Child>);

impl Load {
    fn start(n: usize) -> Self {
        Self(
            (0..n)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("start a busy process")
                })
                .collect(),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `docs` documents `d0..` of one version: `metadata.v` = `version`.
fn versioned(docs: u64, version: u64, round: u64) -> Vec<u8> {
    versioned_dim(docs, version, round, DIM)
}

fn versioned_dim(docs: u64, version: u64, round: u64, dim: usize) -> Vec<u8> {
    let docs: Vec<Value> = (0..docs)
        .map(|i| {
            json!({"doc_id": format!("d{i}"), "vector": vector(i, dim),
                   "metadata": {"v": version, "round": round}})
        })
        .collect();
    serde_json::to_vec(&json!({ "documents": docs })).unwrap()
}

/// Wait until `acked + dead_lettered` reaches `settled`.
async fn wait_settled(h: &Harness, settled: u64, limit: Duration) -> Value {
    let what = format!("not {settled} settled");
    h.ingest_until(limit, &what, |s| {
        s["acked"].as_u64().unwrap() + s["dead_lettered"].as_u64().unwrap() >= settled
    })
    .await
}

/// Every document `d0..d<docs>` of `tenant` is at `version` of `round`.
async fn assert_latest(h: &Harness, tenant: &str, docs: u64, version: u64, round: u64) {
    let ids: Vec<String> = (0..docs).map(|i| format!("d{i}")).collect();
    let got = h.ok(Verb::Get, tenant, json!({ "doc_ids": ids })).await;
    let got = got["documents"].as_array().unwrap();
    assert_eq!(got.len() as u64, docs, "{tenant}: documents missing");
    let stale: Vec<String> = got
        .iter()
        .filter(|d| d["metadata"]["v"] != version || d["metadata"]["round"] != round)
        .map(|d| format!("{}@{}", d["doc_id"], d["metadata"]))
        .collect();
    assert!(
        stale.is_empty(),
        "{tenant}: {} documents left at an older version, e.g. {:?}",
        stale.len(),
        &stale[..stale.len().min(3)]
    );
}

/// The burst that used to leave documents at an older version: one tenant
/// rewriting the same documents 600 times, interleaved with 20 others,
/// published with plain core NATS publishes, on a loaded host, with a pool
/// small enough that tenants churn and real-sized vectors (256 dimensions:
/// a message of 150 documents is ~0.8 MB of JSON, so the worker is slower
/// than its producers). Every document ends at its latest version, and nothing
/// is delivered twice, since nothing failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_a_loaded_host_keeps_the_latest_version_and_redelivers_nothing() {
    const BIG: usize = 256;
    let _load = Load::start(4);
    let h = Harness::start_with(|s| {
        s.pool.size = 2;
        s.store.dimension = BIG;
    })
    .await;
    // A worker that answers PING has made its consumers (read at once,
    // this once failed under load: the partitions' consumers came after
    // the endpoint). The ack wait the server applies is the one
    // configured: with a server-side backoff, nats-server took its first
    // step (1 s) instead.
    let js = h.jetstream().await;
    let info = js
        .get_stream(STREAM)
        .await
        .unwrap()
        .consumer_info("tenantvec-ingest-p0")
        .await
        .unwrap();
    assert_eq!(info.config.ack_wait, h.settings.ingest.ack_wait);
    assert!(info.config.backoff.is_empty());
    let nats = h.nats().await;
    const ROUNDS: u64 = 3;
    const MESSAGES: u64 = 600;
    const DOCS: u64 = 150;
    for round in 0..ROUNDS {
        for i in 0..MESSAGES {
            let hot = versioned_dim(DOCS, i, round, BIG);
            nats.publish("tenantvec.ingest.hot", hot.into())
                .await
                .unwrap();
            let other = format!("tenantvec.ingest.n{}", i % 20);
            nats.publish(other, versioned_dim(5, i, round, BIG).into())
                .await
                .unwrap();
        }
        nats.flush().await.unwrap();
        let stats = wait_settled(&h, 2 * MESSAGES * (round + 1), Duration::from_secs(240)).await;
        assert_latest(&h, "hot", DOCS, MESSAGES - 1, round).await;
        for t in 0..20 {
            let last = MESSAGES - 20 + t;
            assert_latest(&h, &format!("n{t}"), 5, last, round).await;
        }
        assert_eq!(stats["redelivered"], 0, "round {round}: {stats}");
        assert_eq!(stats["dead_lettered"], 0, "round {round}: {stats}");
    }
}

/// A tenant's messages beyond its rate limit wait their turn: none is
/// applied after a later one, none is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_ingest_keeps_stream_order() {
    let h = Harness::start().await;
    let config = h.tenant_dir("slow").join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("tenant.json"), r#"{"max_rps": 20}"#).unwrap();
    let js = h.jetstream().await;
    for i in 0..100 {
        publish(&js, "slow", versioned(10, i, 0)).await;
    }
    let stats = wait_settled(&h, 100, Duration::from_secs(60)).await;
    assert_latest(&h, "slow", 10, 99, 0).await;
    assert_eq!(stats["dead_lettered"], 0, "{stats}");
    assert!(
        stats["retried"].as_u64().unwrap() > 0,
        "the limit was never met: {stats}"
    );
}

fn break_policy(h: &Harness, tenant: &str) {
    let config = h.tenant_dir(tenant).join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("tenant.json"), "{not json").unwrap();
}

/// The next dead-letter record, with the body it carries.
async fn next_dead_letter(letters: &mut async_nats::Subscriber) -> (Value, Vec<u8>) {
    use base64::Engine;
    let msg = tokio::time::timeout(Duration::from_secs(30), letters.next())
        .await
        .expect("a dead letter")
        .unwrap();
    let record: Value = serde_json::from_slice(&msg.payload).unwrap();
    let body = base64::engine::general_purpose::STANDARD
        .decode(record["body_base64"].as_str().expect("the body is kept"))
        .unwrap();
    (record, body)
}

/// `internal` is not retried forever: a tenant whose policy file is broken
/// has its message dead-lettered after `ingest.max_retries` tries, and the
/// other tenants are not held up meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_failures_are_dead_lettered_after_bounded_tries() {
    let h = Harness::start_with(|s| {
        s.ingest.max_retries = 3;
        s.ingest.backoff = vec![Duration::from_millis(50)];
    })
    .await;
    break_policy(&h, "broken");
    let nats = h.nats().await;
    let mut letters = nats.subscribe("tenantvec.deadletter.>").await.unwrap();
    nats.flush().await.unwrap();
    let js = jetstream::new(nats);
    let body = serde_json::to_vec(&docs("x", 2, 1)).unwrap();
    publish(&js, "broken", body.clone()).await;
    publish(&js, "fine", serde_json::to_vec(&docs("y", 3, 1)).unwrap()).await;
    let (record, kept) = next_dead_letter(&mut letters).await;
    assert_eq!(record["error"]["code"], "internal", "{record}");
    assert_eq!(kept, body, "the dead letter keeps the message");
    let stats = wait_settled(&h, 2, Duration::from_secs(20)).await;
    assert_eq!(stats["dead_lettered"], 1, "{stats}");
    assert_eq!(stats["retried"], 2, "three tries: {stats}");
    assert_eq!(h.ok(Verb::Count, "fine", json!({})).await["count"], 3);
    wait_drained(&js, Duration::from_secs(10)).await;
}

/// A message that reaches `max_deliver` and fails is dead-lettered (with its
/// body) and counted, not left in the stream where no worker would ever get
/// it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_at_max_deliver_is_dead_lettered() {
    let mut h = Harness::start_with(|s| {
        s.ingest.max_deliver = 3;
        s.ingest.max_retries = 1000;
        s.ingest.backoff = vec![Duration::from_millis(50)];
    })
    .await;
    h.stop_worker().unwrap();
    break_policy(&h, "poison");
    let nats = h.nats().await;
    let mut letters = nats.subscribe("tenantvec.deadletter.>").await.unwrap();
    nats.flush().await.unwrap();
    let js = jetstream::new(nats);
    let body = serde_json::to_vec(&docs("z", 1, 1)).unwrap();
    publish(&js, "poison", body.clone()).await;
    // Two deliveries that end in a nak, as two workers that died would.
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream(STREAM)
        .await
        .unwrap()
        .get_consumer(&format!(
            "tenantvec-ingest-p{}",
            tenantvec::cluster::partition_of("poison", h.settings.cluster.partitions)
        ))
        .await
        .unwrap();
    for delivery in 1..=2 {
        let mut batch = consumer
            .batch()
            .max_messages(1)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(10), batch.next())
            .await
            .expect("delivered")
            .unwrap()
            .unwrap();
        assert_eq!(msg.info().unwrap().delivered, delivery);
        msg.ack_with(jetstream::AckKind::Nak(None)).await.unwrap();
    }
    h.start_worker().await;
    let (record, kept) = next_dead_letter(&mut letters).await;
    assert_eq!(record["error"]["code"], "internal", "{record}");
    assert!(
        record["error"]["message"]
            .as_str()
            .unwrap()
            .contains("last delivery"),
        "{record}"
    );
    assert_eq!(kept, body);
    wait_drained(&js, Duration::from_secs(10)).await;
    let stats = h.ingest_stats().await;
    assert_eq!(stats["dead_lettered"], 1, "{stats}");
}

/// An operator's recovery: messages refused for a wrong dimension are listed
/// with their error, the worker is fixed (here: restarted with the
/// dimension the producer uses), and `deadletters replay` lands every
/// document, each record removed once its replay is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_once_the_cause_is_fixed() {
    let mut h = Harness::start().await;
    let js = h.jetstream().await;
    let four = |m: u64| {
        let docs: Vec<Value> = (0..3)
            .map(|i| json!({"doc_id": format!("m{m}-{i}"), "vector": vector(m * 10 + i, 4)}))
            .collect();
        serde_json::to_vec(&json!({ "documents": docs })).unwrap()
    };
    publish(&js, "late", four(1)).await;
    publish(&js, "late", four(2)).await;
    wait_settled(&h, 2, Duration::from_secs(30)).await;
    let listed = cli(&h, &["deadletters", "--tenant", "late"]);
    assert_eq!(listed["count"], 2, "{listed}");
    for row in listed["deadletters"].as_array().unwrap() {
        assert_eq!(row["error"]["code"], "dimension_mismatch", "{row}");
        assert_eq!(row["subject"], "tenantvec.ingest.late");
        assert_eq!(row["replayable"], true);
        assert!(row["time"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(cli(&h, &["deadletters", "--tenant", "other"])["count"], 0);

    h.stop_worker().unwrap();
    h.settings.store.dimension = 4;
    h.start_worker().await;
    let replayed = cli(&h, &["deadletters", "replay", "--tenant", "late"]);
    assert_eq!(replayed["replayed"], 2, "{replayed}");
    wait_settled(&h, 2, Duration::from_secs(30)).await;
    assert_eq!(h.ok(Verb::Count, "late", json!({})).await["count"], 6);
    assert_eq!(cli(&h, &["deadletters"])["count"], 0);
    wait_drained(&js, Duration::from_secs(10)).await;
}

/// What the worker's pulls ask for, and the lanes' stream reads, are bounded
/// by `ingest.pull_max_bytes`, so a server never has more than its
/// `max_pending` waiting on the worker's connection and never drops it as a
/// slow consumer, however much waits in the stream. The server here allows
/// 3 MiB per connection and messages of up to 256 KiB; 16 MB of ~205 KB
/// messages wait in the stream when the worker starts. Counted in messages alone (the
/// worker before this bound), each partition's consumer asked for 32 of
/// them at once, 6.5 MB; with 1 MB messages and the default 64 MiB limit
/// that drop cut the benchmark's ingest from ~15,000 to ~3,000 docs/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_stay_within_the_servers_slow_consumer_limit() {
    let dir = tempfile::tempdir().unwrap();
    let monitor = common::free_port();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!("max_payload: 262144\nmax_pending: 3145728\nhttp: \"127.0.0.1:{monitor}\"\n"),
    )
    .unwrap();
    let nats = NatsServer::start_with_config(conf);
    let data = tempfile::tempdir().unwrap();
    let mut settings = common::settings(&nats.url(), data.path());
    settings.cluster.partitions = 2;
    settings.ingest.pull_max_bytes = 1 << 20;
    // The backlog waits in the stream before the worker starts: while it
    // runs, its request subscription (`<p>.*.*`) also receives a copy of
    // every ingest publish, which no pull bounds (docs/ingest.md, "Pulls bounded in bytes").
    let js = jetstream::new(tenantvec::transport::connect(&settings.nats).await.unwrap());
    tenantvec::transport::ingest::ensure_streams(
        &js,
        &tenantvec::names::Names::partitioned(&settings.nats.prefix, 2),
        &settings.ingest,
        1,
    )
    .await
    .unwrap();
    let pad = "x".repeat(10_000);
    let mut acks = Vec::new();
    for m in 0..80u64 {
        let tenant = format!("big{}", m % 8);
        let docs: Vec<Value> = (0..20u64)
            .map(|i| {
                json!({"doc_id": format!("d{}-{i}", m / 8), "vector": vector(m * 20 + i, DIM),
                       "metadata": {"pad": pad}})
            })
            .collect();
        let body = serde_json::to_vec(&json!({ "documents": docs })).unwrap();
        assert!(body.len() > 200_000 && body.len() < 262_144);
        acks.push(
            js.publish(format!("tenantvec.ingest.{tenant}"), body.into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.expect("stored");
    }
    let worker = tenantvec::worker::spawn(settings.clone());
    common::wait_ready(&settings, || worker.is_finished()).await;
    wait_drained(&js, Duration::from_secs(120)).await;

    let c = tenantvec::client::Client::connect(&settings).await.unwrap();
    for t in 0..8 {
        let count = c
            .tenant(Verb::Count, &format!("big{t}"), &json!({}))
            .await
            .unwrap();
        assert_eq!(count["count"], 200, "tenant big{t}");
    }
    let varz: Value = tokio::task::spawn_blocking(move || {
        let body = ureq::get(format!("http://127.0.0.1:{monitor}/varz"))
            .call()
            .expect("the monitoring port answers")
            .body_mut()
            .read_to_string()
            .expect("varz");
        serde_json::from_str(&body).expect("varz is JSON")
    })
    .await
    .unwrap();
    assert_eq!(
        varz["slow_consumers"], 0,
        "the server dropped a connection as a slow consumer: {}",
        varz["slow_consumer_stats"]
    );
    drop(worker);
}
