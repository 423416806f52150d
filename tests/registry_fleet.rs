//! The tenant registry in a fleet, on a real 3-node NATS cluster (the
//! registry's bucket with 3 replicas): two workers writing one tenant's
//! record at once (the owner its figures each time the tenant's actor
//! closes, the other an operator's `tenants set`) lose neither's change;
//! and with JetStream away (two of three nodes down, so no quorum) a worker
//! keeps serving its active tenants with no failed request, and afterwards
//! every record is as it was, none made twice.
//!
//! Workers are the release binary, run as processes.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{NatsCluster, WorkerProcess};
use serde_json::{json, Value};
use tenantvec::client::{tenants, Client};
use tenantvec::protocol::{TenantsOp, Verb};

fn doc(i: u64) -> Value {
    json!({"doc_id": format!("d{i}"), "text": format!("note {i}"), "vector": common::vector(i, 8)})
}

fn worker(url: &str, data: &std::path::Path, env: &[(&str, &str)]) -> WorkerProcess {
    let env = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .chain([
            ("TENANTVEC_REPLICAS".to_owned(), "3".to_owned()),
            ("RUST_LOG".to_owned(), "info,async_nats=warn".to_owned()),
        ])
        .collect();
    let w = WorkerProcess::start(url, data, env);
    w.wait_serving(Duration::from_secs(60));
    w
}

async fn record(client: &Client, tenant: &str) -> Value {
    tenants::one(client, TenantsOp::Show, tenant, None)
        .await
        .unwrap_or_else(|e| panic!("tenants show {tenant}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_writing_one_record_lose_neither_change() {
    let nats = NatsCluster::start(3).await;
    let data = tempfile::tempdir().unwrap();
    // A short idle time: the owner closes the tenant's actor (and writes
    // its figures into the record) a moment after each write.
    let env = [
        ("TENANTVEC_CLUSTER", "true"),
        ("VECTOR_STORE_TTL_SECONDS", "300ms"),
    ];
    let w1 = worker(
        &nats.node_url(0),
        data.path(),
        &[env[0], env[1], ("TENANTVEC_MEMBER", "w1")],
    );
    let w2 = worker(
        &nats.node_url(1),
        data.path(),
        &[env[0], env[1], ("TENANTVEC_MEMBER", "w2")],
    );
    let settings = common::settings(&nats.node_url(2), std::path::Path::new("."));
    let client = Client::connect(&settings).await.unwrap();

    let writes = async {
        for i in 0..24u64 {
            client
                .tenant(Verb::Upsert, "shared", &json!({"documents": [doc(i)]}))
                .await
                .unwrap();
            // Long enough, now and then, for the actor to close.
            tokio::time::sleep(Duration::from_millis(150 + 70 * (i % 5))).await;
        }
    };
    let last_set = AtomicU64::new(0);
    let operator = async {
        // The record exists after the first write (however long that takes
        // on a busy machine: the actor's start, the record, the shard).
        let deadline = Instant::now() + Duration::from_secs(20);
        while tenants::one(&client, TenantsOp::Show, "shared", None)
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the first write made no record");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for i in 1..=60u64 {
            let mut set = serde_json::Map::new();
            set.insert("max_documents".into(), json!(1000 + i));
            tenants::one(&client, TenantsOp::Set, "shared", Some(set))
                .await
                .unwrap();
            last_set.store(1000 + i, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    };
    tokio::join!(writes, operator);
    // The last close writes the last figures.
    let deadline = Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let shown = record(&client, "shared").await;
        if shown["documents"] == json!(24) && shown["state"] == "idle" {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "the record never showed the last figures: {shown:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        shown["settings"]["max_documents"],
        json!(last_set.load(Ordering::Relaxed)),
        "the operator's last setting was lost: {shown:#}"
    );
    assert!(shown["last_active"].is_string(), "{shown:#}");
    drop((w1, w2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_jetstream_away_active_tenants_keep_serving_and_no_setting_is_lost() {
    let mut nats = NatsCluster::start(3).await;
    let data = tempfile::tempdir().unwrap();
    let w = worker(&nats.node_url(0), data.path(), &[]);
    let settings = common::settings(&nats.node_url(0), std::path::Path::new("."));
    let client = Arc::new(Client::connect(&settings).await.unwrap());
    let names: Vec<String> = (0..4).map(|i| format!("active-{i}")).collect();
    let mut created = Vec::new();
    for (i, t) in names.iter().enumerate() {
        let mut set = serde_json::Map::new();
        set.insert("max_documents".into(), json!(500 + i));
        let made = tenants::one(&client, TenantsOp::Create, t, Some(set))
            .await
            .unwrap();
        created.push(made["created"].clone());
        client
            .tenant(Verb::Upsert, t, &json!({"documents": [doc(0)]}))
            .await
            .unwrap();
    }

    // Steady load on the active tenants: searches and writes.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let ok = Arc::new(AtomicU64::new(0));
    let load = {
        let (client, stop, failures, ok, names) = (
            client.clone(),
            stop.clone(),
            failures.clone(),
            ok.clone(),
            names.clone(),
        );
        tokio::spawn(async move {
            let mut i = 1u64;
            while !stop.load(Ordering::Relaxed) {
                let t = &names[(i % 4) as usize];
                let outcome = if i.is_multiple_of(2) {
                    client
                        .tenant(Verb::Upsert, t, &json!({"documents": [doc(i)]}))
                        .await
                } else {
                    client
                        .tenant(
                            Verb::Search,
                            t,
                            &json!({"vector": common::vector(i, 8), "top_k": 3}),
                        )
                        .await
                };
                match outcome {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(format!("{t}: {e}")),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    nats.kill(1);
    nats.kill(2);
    let away = Instant::now();
    // JetStream is away indeed: a registry write (needing a quorum; reads
    // may still be served by the one replica left) answers `unavailable`.
    let same = serde_json::Map::from_iter([("max_documents".to_owned(), json!(500))]);
    let refused = loop {
        match tenants::one(&client, TenantsOp::Set, &names[0], Some(same.clone())).await {
            Err(e) => break e.to_string(),
            Ok(_) => {
                assert!(
                    away.elapsed() < Duration::from_secs(20),
                    "JetStream still answers with 2 of 3 nodes down"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    eprintln!("with JetStream away, tenants set: {refused}");
    let before = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = ok.load(Ordering::Relaxed) - before;
    nats.restart(1);
    nats.restart(2);
    let back = nats.wait_jetstream(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "requests answered: {} in all, {during} in 4 s with JetStream away; back after {back:?}",
        ok.load(Ordering::Relaxed)
    );
    assert!(during > 20, "the load stalled while JetStream was away");
    assert!(
        failures.is_empty(),
        "{} requests of active tenants failed: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        w.log()
    );
    for (i, t) in names.iter().enumerate() {
        let shown = record(&client, t).await;
        assert_eq!(
            shown["settings"]["max_documents"],
            json!(500 + i),
            "{shown:#}"
        );
        assert_eq!(shown["created"], created[i], "a second record: {shown:#}");
    }
    let listed = tenants::list(&client, Some("active-"), None, 100)
        .await
        .unwrap();
    assert_eq!(listed.len(), 4);
}
