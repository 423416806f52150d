//! Request partitions (`nats.request_partitions`): a real nats-server maps
//! tenant verbs to partitions, the worker serves each on a connection of its
//! own, and clients notice nothing; a worker whose setting disagrees with
//! the server's mapping refuses to start, saying what to change.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{vector, Harness, NatsServer};
use futures::StreamExt;
use serde_json::json;
use tenantvec::protocol::{AdminVerb, Verb};
use tenantvec::transport::partitions;

const DIM: usize = 8;
const PARTITIONS: usize = 4;

/// A nats-server configuration file in `dir`: `extra` (a mappings block, or
/// nothing).
fn config(dir: &tempfile::TempDir, extra: &str) -> PathBuf {
    let path = dir.path().join("nats.conf");
    std::fs::write(&path, extra).expect("write nats.conf");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_served_through_partitions_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let conf = config(&dir, &partitions::server_config("tenantvec", PARTITIONS));
    let h = Harness::start_on(NatsServer::start_with_config(conf), |s| {
        s.nats.request_partitions = PARTITIONS;
    })
    .await;

    // The server maps: a tenant's request arrives with its partition.
    let nats = h.nats().await;
    let mut seen = nats.subscribe("tenantvec.count.t0.*").await.unwrap();
    let mut probe = nats.subscribe("tenantvec.get.*.*").await.unwrap();
    // Both subscriptions taken by the server before any request is sent.
    partitions::settled(&nats, Duration::from_secs(5))
        .await
        .unwrap();
    h.ok(Verb::Count, "t0", json!({})).await;
    let mapped = tokio::time::timeout(Duration::from_secs(5), seen.next())
        .await
        .expect("the mapped subject")
        .unwrap();
    let k: usize = mapped
        .subject
        .as_str()
        .rsplit('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(k < PARTITIONS, "{}", mapped.subject);

    // Tenants over every partition, each served, each its own.
    let tenants: Vec<String> = (0..16).map(|i| format!("t{i}")).collect();
    let mut used = std::collections::BTreeSet::new();
    for (i, t) in tenants.iter().enumerate() {
        let docs: Vec<_> = (0..3)
            .map(|j| json!({"doc_id": format!("{t}-{j}"), "vector": vector((i * 10 + j) as u64, DIM)}))
            .collect();
        h.ok(Verb::Upsert, t, json!({"documents": docs})).await;
        let found = h
            .ok(
                Verb::Search,
                t,
                json!({"vector": vector((i * 10) as u64, DIM), "top_k": 1}),
            )
            .await;
        assert_eq!(found["results"][0]["doc_id"], format!("{t}-0"), "{found}");
        let got = h
            .ok(Verb::Get, t, json!({"doc_ids": [format!("{t}-1")]}))
            .await;
        assert_eq!(got["documents"].as_array().unwrap().len(), 1, "{t}: {got}");
        let m = tokio::time::timeout(Duration::from_secs(5), probe.next())
            .await
            .unwrap()
            .unwrap();
        used.insert(m.subject.as_str().rsplit('.').next().unwrap().to_owned());
        assert_eq!(h.ok(Verb::Count, t, json!({})).await["count"], 3, "{t}");
    }
    assert!(used.len() > 1, "16 tenants all in one partition: {used:?}");

    // A tenant's pipelined requests keep their order: each later write
    // wins, and the delete lands between them.
    let client = h.client.nats().clone();
    let subjects = h.client.subjects().clone();
    let mut pending = Vec::new();
    for v in 0..20u64 {
        let body = json!({"documents": [
            {"doc_id": "d", "vector": vector(v, DIM), "metadata": {"v": v}}
        ]});
        pending.push(client.request(
            subjects.tenant(Verb::Upsert, "order"),
            body.to_string().into(),
        ));
        if v == 9 {
            pending.push(client.request(
                subjects.tenant(Verb::Delete, "order"),
                json!({"doc_ids": ["d"]}).to_string().into(),
            ));
        }
    }
    for reply in futures::future::join_all(pending).await {
        let reply = reply.unwrap();
        assert!(reply.headers.is_none(), "{:?}", reply.payload);
    }
    let got = h.ok(Verb::Get, "order", json!({"doc_ids": ["d"]})).await;
    assert_eq!(got["documents"][0]["metadata"]["v"], 19, "{got}");

    // Admin verbs are not partitioned and still answer.
    let stats = h.client.admin(AdminVerb::Stats, &json!({})).await.unwrap();
    assert!(stats["size"].as_u64().unwrap() >= 1, "{stats}");

    // Nor is ingest: JetStream still stores and the worker applies it.
    let js = async_nats::jetstream::new(nats.clone());
    let body = json!({"documents": [{"doc_id": "j1", "vector": vector(99, DIM)}]});
    js.publish("tenantvec.ingest.t0", body.to_string().into())
        .await
        .unwrap()
        .await
        .expect("the stream stores the ingest message");
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.ok(Verb::Count, "t0", json!({})).await["count"] != 4 {
        assert!(Instant::now() < deadline, "ingest never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Start a worker on `nats` with `request_partitions` and return how its
/// start ended.
async fn start_error(nats: &NatsServer, request_partitions: usize) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut settings = common::settings(&nats.url(), data.path());
    settings.nats.request_partitions = request_partitions;
    let worker = tenantvec::worker::spawn(settings);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !worker.is_finished() {
        assert!(
            Instant::now() < deadline,
            "a worker with request_partitions = {request_partitions} started against a \
             server that disagrees"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    format!("{:#}", worker.stop().unwrap_err())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_disagrees_with_the_servers_mapping_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let mapped = NatsServer::start_with_config(config(
        &dir,
        &partitions::server_config("tenantvec", PARTITIONS),
    ));
    // Mapped server, worker without partitions: nobody would serve.
    let e = start_error(&mapped, 0).await;
    assert!(e.contains("nats.request_partitions is 0"), "{e}");
    let plain = NatsServer::start();
    // Partitions configured, server not mapped: the block to add, in full.
    let e = start_error(&plain, PARTITIONS).await;
    assert!(e.contains("does not map"), "{e}");
    assert!(
        e.contains(
            "\"tenantvec.upsert.*\": \"tenantvec.upsert.{{wildcard(1)}}.{{partition(4,1)}}\""
        ),
        "{e}"
    );
}
