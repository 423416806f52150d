//! The worker on the qdrant backend, end to end over NATS: requests and
//! ingest while the Qdrant server is away and after it returns, and several
//! workers sharing one server. A real nats-server always; a real Qdrant
//! server when `QDRANT_URL` names one (otherwise those tests print why and
//! pass as skipped). The unreachable-server test needs no server at all.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::{qdrant as server, vector, Harness};
use serde_json::{json, Value};
use tenantvec::config::{Backend, Layout, Settings};
use tenantvec::protocol::{AdminVerb, ErrorCode, Verb};

const DIM: usize = 8;

fn docs(prefix: &str, n: u64) -> Value {
    let docs: Vec<Value> = (0..n)
        .map(|i| json!({"doc_id": format!("{prefix}-{i}"), "vector": vector(i, DIM), "metadata": {"i": i}}))
        .collect();
    json!({ "documents": docs })
}

fn on_qdrant(s: &mut Settings, url: &str, space: &server::Space, layout: Layout) {
    s.store.backend = Backend::Qdrant;
    s.store.layout = layout;
    server::configure(s, url, space);
    s.store.qdrant_timeout = Duration::from_secs(3);
    s.ingest.backoff = vec![Duration::from_millis(200)];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_qdrant_is_answered_unavailable_and_the_worker_keeps_serving() {
    let nowhere = format!("http://127.0.0.1:{}", common::free_port());
    let space = server::Space::unused();
    let h = Harness::start_with(|s| on_qdrant(s, &nowhere, &space, Layout::PerTenant)).await;
    for verb in [Verb::Upsert, Verb::Search, Verb::Count] {
        let body = match verb {
            Verb::Upsert => docs("a", 2),
            Verb::Search => json!({"vector": vector(1, DIM)}),
            _ => json!({}),
        };
        let message = h.fails(verb, "t1", body, ErrorCode::Unavailable).await;
        assert!(message.contains("retry later"), "{message}");
    }
    // Bad input is still answered as such, and the admin side works.
    h.fails(
        Verb::Upsert,
        "t1",
        json!({"documents": 3}),
        ErrorCode::BadRequest,
    )
    .await;
    let stats = h.admin(AdminVerb::Stats, json!({})).await;
    assert_eq!(stats["backend"], "qdrant");
}

/// Writes through one worker are read through the other: with the qdrant
/// backend, workers on one prefix are interchangeable (the edge guard lets
/// them start), whichever of them NATS hands a request to.
async fn two_workers_share_one_server(layout: Layout) {
    let Some(url) = server::url_or_skip("two_workers_share_one_server") else {
        return;
    };
    let space = server::Space::new(&url);
    let mut h = Harness::start_with(|s| on_qdrant(s, &url, &space, layout)).await;
    let second_data = tempfile::tempdir().unwrap();
    let mut second = h.settings.clone();
    second.store.folder = second_data.path().to_owned();
    let other = tenantvec::worker::spawn(second.clone());
    common::wait_ready(&second, || other.is_finished()).await;

    for round in 0..10 {
        h.ok(Verb::Upsert, "shared-t", docs(&format!("r{round}"), 3))
            .await;
        let count = h.ok(Verb::Count, "shared-t", json!({})).await;
        assert_eq!(
            count["count"],
            3 * (round + 1),
            "read-your-writes across workers"
        );
    }
    let hits = h
        .ok(
            Verb::Search,
            "shared-t",
            json!({"vector": vector(2, DIM), "top_k": 3, "filter": {"i": 2}}),
        )
        .await;
    assert_eq!(hits["results"].as_array().unwrap().len(), 3);
    assert_eq!(h.ok(Verb::Count, "other-t", json!({})).await["count"], 0);
    h.ok(Verb::Drop, "shared-t", json!({})).await;
    assert_eq!(h.ok(Verb::Count, "shared-t", json!({})).await["count"], 0);
    other.stop().unwrap();
    h.stop_worker().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_one_server_per_tenant() {
    two_workers_share_one_server(Layout::PerTenant).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_one_server_shared() {
    two_workers_share_one_server(Layout::Shared).await
}

/// Qdrant goes away with ingest messages in the stream: they are nak'ed
/// (retried, never dead-lettered, never lost), requests are answered
/// `unavailable`, and when the server returns everything lands by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_waits_out_a_qdrant_outage() {
    let Some(url) = server::url_or_skip("ingest_waits_out_a_qdrant_outage") else {
        return;
    };
    let space = server::Space::new(&url);
    let proxy = server::Proxy::to(&url);
    let h = Harness::start_with(|s| on_qdrant(s, &proxy.url(), &space, Layout::PerTenant)).await;
    h.ok(Verb::Upsert, "outage", docs("before", 2)).await;
    proxy.cut();
    h.fails(
        Verb::Upsert,
        "outage",
        docs("during", 1),
        ErrorCode::Unavailable,
    )
    .await;

    let js = h.jetstream().await;
    for m in 0..5 {
        let body = serde_json::to_vec(&docs(&format!("m{m}"), 10)).unwrap();
        js.publish("tenantvec.ingest.outage", body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let stats = h
        .ingest_until(Duration::from_secs(30), "never retried", |s| {
            s["retried"].as_u64().unwrap_or(0) >= 2
        })
        .await;
    assert_eq!(stats["dead_lettered"], 0, "an outage is not poison");
    assert_eq!(stats["acked"], 0, "{stats}");

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match h.call(Verb::Count, "outage", json!({})).await {
            Ok(c) if c["count"] == 52 => break,
            other => assert!(Instant::now() < deadline, "not recovered: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = h.ingest_stats().await;
    assert_eq!(stats["acked"], 5, "{stats}");
    assert_eq!(stats["dead_lettered"], 0, "{stats}");
}

/// With `ingest.ordered`, one worker at a time takes ingest messages, so a
/// tenant's messages land in stream order even with two workers; when that
/// worker stops, the other takes over after `pin_timeout`. The partitions'
/// consumers made earlier without the setting give way to the single pinned
/// consumer on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_ingest_keeps_stream_order_across_two_workers() {
    let test = "ordered_ingest_keeps_stream_order_across_two_workers";
    let Some(url) = server::url_or_skip(test) else {
        return;
    };
    let space = server::Space::new(&url);
    // First without the setting: the partitions' consumers exist.
    let mut h = Harness::start_with(|s| on_qdrant(s, &url, &space, Layout::Shared)).await;
    h.stop_worker().unwrap();
    h.settings.ingest.ordered = true;
    h.settings.ingest.pin_timeout = Duration::from_secs(3);
    h.start_worker().await;
    let second_data = tempfile::tempdir().unwrap();
    let mut second = h.settings.clone();
    second.store.folder = second_data.path().to_owned();
    let other = tenantvec::worker::spawn(second.clone());
    common::wait_ready(&second, || other.is_finished()).await;

    let js = h.jetstream().await;
    let publish = |from: u64, to: u64| {
        let js = js.clone();
        async move {
            for i in from..to {
                // Every message replaces "latest" and adds one document.
                let body = json!({"documents": [
                    {"doc_id": "latest", "vector": vector(i, DIM), "metadata": {"i": i}},
                    {"doc_id": format!("m{i}"), "vector": vector(i, DIM)},
                ]});
                js.publish(
                    "tenantvec.ingest.ord",
                    serde_json::to_vec(&body).unwrap().into(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            }
        }
    };
    let info = js
        .get_stream("TENANTVEC_INGEST")
        .await
        .unwrap()
        .consumer_info("tenantvec-ingest")
        .await
        .unwrap();
    assert_eq!(
        info.config.priority_policy,
        jetstream::consumer::PriorityPolicy::PinnedClient,
        "the single consumer is pinned"
    );
    publish(0, 80).await;
    landed(&h, 80).await;

    // Stop one worker, then start a third and stop the first: the pin holder
    // stops at least once, and another takes over after the pin timeout.
    other.stop().unwrap();
    publish(80, 120).await;
    landed(&h, 120).await;
    let third_data = tempfile::tempdir().unwrap();
    let mut third = h.settings.clone();
    third.store.folder = third_data.path().to_owned();
    let third_worker = tenantvec::worker::spawn(third.clone());
    common::wait_ready(&third, || third_worker.is_finished()).await;
    h.stop_worker().unwrap();
    // Only the third answers PING now: it is serving.
    common::wait_ready(&third, || third_worker.is_finished()).await;
    publish(120, 160).await;
    landed(&h, 160).await;
    third_worker.stop().unwrap();
}

/// Wait until tenant `ord` holds `n + 1` documents and "latest" is from
/// message `n - 1`: every message landed, the last one last.
async fn landed(h: &Harness, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count = h.ok(Verb::Count, "ord", json!({})).await;
        if count["count"] == n + 1 {
            break;
        }
        assert!(Instant::now() < deadline, "not landed: {count}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = h.ok(Verb::Get, "ord", json!({"doc_ids": ["latest"]})).await;
    assert_eq!(got["documents"][0]["metadata"]["i"], n - 1, "{got}");
}
