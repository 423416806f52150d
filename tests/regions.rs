//! Regions: a hub and two regions on loopback, each region a nats-server
//! with a JetStream domain of its own, its data folder and a worker. Every
//! tenant has a home region that alone holds its data; any client reaches
//! any tenant from any region; losing a region costs only its tenants.

mod common;

use std::time::{Duration, Instant};

use common::regions::{files_containing, World};
use common::{json_output, vector};
use serde_json::{json, Value};
use tenantvec::client::{Client, ClientError};
use tenantvec::protocol::{AdminVerb, ErrorCode, Verb};

const DIM: usize = 8;

fn doc(id: &str, version: u64, note: &str) -> Value {
    json!({
        "doc_id": id,
        "vector": vector(version, DIM),
        "text": note,
        "metadata": {"v": version, "note": note},
    })
}

/// The version of `id` the tenant holds, `None` without it.
async fn version_of(client: &Client, tenant: &str, id: &str) -> Option<u64> {
    let reply = client
        .tenant(Verb::Get, tenant, &json!({"doc_ids": [id]}))
        .await
        .unwrap_or_else(|e| panic!("get {tenant}/{id}: {e}"));
    reply["documents"]
        .as_array()
        .and_then(|ds| ds.first())
        .and_then(|d| d["metadata"]["v"].as_u64())
}

async fn count(client: &Client, tenant: &str) -> u64 {
    client
        .tenant(Verb::Count, tenant, &json!({}))
        .await
        .unwrap_or_else(|e| panic!("count {tenant}: {e}"))["count"]
        .as_u64()
        .expect("a count")
}

/// Publish an ingest message from a region's server, as any producer
/// would: the acknowledgement, whose domain says where it was stored.
async fn ingest(
    url: &str,
    tenant: &str,
    body: &Value,
) -> async_nats::jetstream::publish::PublishAck {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.expect("connect"));
    js.publish(
        format!("tenantvec.ingest.{tenant}"),
        serde_json::to_vec(body).unwrap().into(),
    )
    .await
    .expect("publish")
    .await
    .unwrap_or_else(|e| panic!("ingest for {tenant} not stored: {e}"))
}

async fn wait_for(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_region_reaches_every_tenants_home_and_ingest_is_stored_there() {
    let mut world = World::start(&["eu", "us"], 1).await;
    // alice: made from eu, homed there by default; bob: made from eu for us.
    let made = json_output(&mut world.region("eu").cli(&["tenants", "create", "alice"]));
    assert_eq!(made["home_region"], "eu", "{made}");
    let made = json_output(
        &mut world
            .region("eu")
            .cli(&["tenants", "create", "bob", "--region", "us"]),
    );
    assert_eq!(made["home_region"], "us", "{made}");
    let homes = [("alice", "eu"), ("bob", "us")];
    let clients = [
        ("eu", world.region("eu").client().await),
        ("us", world.region("us").client().await),
    ];
    for (from, client) in &clients {
        for (tenant, home) in homes {
            let shown = client
                .request(
                    client
                        .subjects()
                        .tenants(tenantvec::protocol::TenantsOp::Show),
                    &json!({"tenant": tenant}),
                )
                .await
                .expect("show");
            assert_eq!(shown["home_region"], home, "from {from}: {shown}");
        }
    }

    // Requests from both regions, in turn, for both tenants: all answered,
    // in order.
    let mut version = 0;
    for round in 0..3 {
        for (from, client) in &clients {
            version += 1;
            for (tenant, _) in homes {
                let note = format!("{tenant} round {round} from {from}");
                client
                    .tenant(
                        Verb::Upsert,
                        tenant,
                        &json!({"documents": [doc("d", version, &note)]}),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("upsert {tenant} from {from}: {e}"));
                assert_eq!(version_of(client, tenant, "d").await, Some(version));
                let found = client
                    .tenant(
                        Verb::Search,
                        tenant,
                        &json!({"vector": vector(version, DIM), "top_k": 1}),
                    )
                    .await
                    .expect("search");
                assert_eq!(found["results"][0]["doc_id"], "d", "{found}");
            }
        }
    }

    // Ingest from both regions for both tenants: each stored in its
    // tenant's home (the ack's domain), applied once, in order.
    let mut sent = 0;
    for (from, _) in &clients {
        let url = world.region(from).url();
        for (tenant, home) in homes {
            for k in 0..5 {
                sent += 1;
                let body = json!({"documents": [
                    doc("i", sent, "ingested"),
                    doc(&format!("m{sent}"), sent, "ingested"),
                ]});
                let ack = ingest(&url, tenant, &body).await;
                assert_eq!(ack.domain, home, "{tenant} from {from}, message {k}");
            }
        }
    }
    let eu = &clients[0].1;
    wait_for(
        "every ingest message applied",
        Duration::from_secs(30),
        async || count(eu, "alice").await == 12 && count(eu, "bob").await == 12,
    )
    .await;
    // The last message of each tenant was published last, from us.
    assert_eq!(version_of(eu, "alice", "i").await, Some(sent - 5));
    assert_eq!(version_of(eu, "bob", "i").await, Some(sent));

    // Each tenant's files are in its home's data folder only.
    for (tenant, home) in homes {
        for r in &world.regions {
            let there = r.data.path().join(tenant).exists();
            assert_eq!(there, r.name == home, "{tenant}'s folder in {}", r.name);
        }
    }
    // The stats of a region count every region's tenants.
    let stats = eu.admin(AdminVerb::Stats, &json!({})).await.expect("stats");
    assert_eq!(stats["regions"]["region"], "eu", "{stats}");
    assert_eq!(
        stats["regions"]["tenants"],
        json!({"eu": 1, "us": 1}),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_data_is_written_only_in_its_home_region() {
    let mut world = World::start(&["eu", "us"], 1).await;
    json_output(
        &mut world
            .region("eu")
            .cli(&["tenants", "create", "bob", "--region", "us"]),
    );
    json_output(
        &mut world
            .region("us")
            .cli(&["tenants", "create", "alice", "--region", "eu"]),
    );
    let marker = |t: &str| format!("residency-marker-of-{t}-5f1c");
    let eu = world.region("eu").client().await;
    let us = world.region("us").client().await;
    for (tenant, client) in [("bob", &eu), ("alice", &us)] {
        let m = marker(tenant);
        // A request and an ingest message, both from the other region, and
        // a message that cannot be applied (a dead letter).
        client
            .tenant(
                Verb::Upsert,
                tenant,
                &json!({"documents": [doc("r", 1, &m)]}),
            )
            .await
            .expect("upsert");
        let from = if tenant == "bob" { "eu" } else { "us" };
        let url = world.region(from).url();
        ingest(&url, tenant, &json!({"documents": [doc("j", 2, &m)]})).await;
        ingest(
            &url,
            tenant,
            &json!({"documents": [{"doc_id": "bad", "vector": [1.0], "text": m}]}),
        )
        .await;
    }
    wait_for(
        "both tenants' ingest applied",
        Duration::from_secs(30),
        async || count(&eu, "bob").await == 2 && count(&us, "alice").await == 2,
    )
    .await;
    // A backup of each, made in its home.
    for (tenant, home) in [("bob", "us"), ("alice", "eu")] {
        json_output(&mut world.region(home).cli(&[
            "backup",
            "--tenant",
            tenant,
            "--name",
            "residency",
        ]));
        let letters =
            json_output(&mut world.region(home).cli(&["deadletters", "--tenant", tenant]));
        assert_eq!(letters["count"], 1, "{tenant}: {letters}");
    }
    for (tenant, home) in [("bob", "us"), ("alice", "eu")] {
        let m = marker(tenant);
        for r in &world.regions {
            let data = files_containing(r.data.path(), m.as_bytes());
            let stored = files_containing(r.jetstream_dir(), m.as_bytes());
            if r.name == home {
                // The control: the scan finds what is there (the dead
                // letter and the backup, at least).
                assert!(
                    !stored.is_empty(),
                    "{tenant}'s marker not found in its home {home}"
                );
            } else {
                assert!(
                    data.is_empty(),
                    "{tenant}'s data in region {}: {data:?}",
                    r.name
                );
                assert!(
                    stored.is_empty(),
                    "{tenant}'s data in region {}'s JetStream: {stored:?}",
                    r.name
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_region_costs_only_its_tenants_and_nothing_acknowledged() {
    let mut world = World::start(&["eu", "us"], 1).await;
    json_output(&mut world.region("eu").cli(&["tenants", "create", "alice"]));
    json_output(&mut world.region("us").cli(&["tenants", "create", "bob"]));
    let eu = world.region("eu").client().await;
    wait_for(
        "eu's directory knows bob",
        Duration::from_secs(10),
        async || {
            let stats = eu.admin(AdminVerb::Stats, &json!({})).await.expect("stats");
            stats["regions"]["tenants"]["us"] == 1
        },
    )
    .await;
    let mut acked = 0;
    for v in 1..=20 {
        for t in ["alice", "bob"] {
            eu.tenant(
                Verb::Upsert,
                t,
                &json!({"documents": [doc("d", v, "before")]}),
            )
            .await
            .unwrap_or_else(|e| panic!("upsert {t} v{v}: {e}"));
        }
        acked = v;
    }

    world.region("us").lose();
    // eu's tenant: nothing fails. us's: unavailable, naming the region, at once.
    let mut failed = 0;
    for v in 1..=30 {
        if eu
            .tenant(
                Verb::Upsert,
                "alice",
                &json!({"documents": [doc("d", acked + v, "during")]}),
            )
            .await
            .is_err()
        {
            failed += 1;
        }
        if v % 10 == 0 {
            let asked = Instant::now();
            match eu
                .tenant(Verb::Get, "bob", &json!({"doc_ids": ["d"]}))
                .await
            {
                Err(ClientError::Service(e)) => {
                    assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
                    assert!(e.message.contains("region us"), "{}", e.message);
                }
                other => panic!("bob while us is gone: {other:?}"),
            }
            assert!(
                asked.elapsed() < Duration::from_secs(2),
                "answered in {:?}",
                asked.elapsed()
            );
            let js = async_nats::jetstream::new(
                async_nats::connect(world.region("eu").url()).await.unwrap(),
            );
            let asked = Instant::now();
            let stored = js
                .publish(
                    "tenantvec.ingest.bob",
                    serde_json::to_vec(&json!({"documents": [doc("x", 1, "lost")]}))
                        .unwrap()
                        .into(),
                )
                .await
                .expect("publish")
                .await;
            assert!(
                stored.is_err(),
                "an ingest message for bob stored while us is gone"
            );
            assert!(
                asked.elapsed() < Duration::from_secs(2),
                "ingest refused in {:?}",
                asked.elapsed()
            );
        }
    }
    assert_eq!(
        failed, 0,
        "requests of eu's tenant failed while us was gone"
    );
    assert_eq!(version_of(&eu, "alice", "d").await, Some(acked + 30));

    // us returns: bob serves again, with everything acknowledged.
    {
        let us = world.region("us");
        us.nats.restart();
        us.start_worker(Vec::new());
    }
    world.wait_joined(2).await;
    assert_eq!(version_of(&eu, "bob", "d").await, Some(acked));
    assert_eq!(count(&eu, "bob").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_tenant_under_load_loses_and_reorders_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let mut world = World::start(&["eu", "us"], 1).await;
    json_output(&mut world.region("eu").cli(&["tenants", "create", "carol"]));
    let stop = Arc::new(AtomicBool::new(false));
    let (upserted, ingested) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Requests from eu, each retried until acknowledged.
    let writer = {
        let client = world.region("eu").client().await;
        let (stop, upserted) = (stop.clone(), upserted.clone());
        tokio::spawn(async move {
            let mut v = 0;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                let body = json!({"documents": [doc("d", v, "request")]});
                loop {
                    match client.tenant(Verb::Upsert, "carol", &body).await {
                        Ok(_) => break,
                        Err(ClientError::Service(e)) if e.code == ErrorCode::Unavailable => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("upsert v{v}: {e}"),
                    }
                }
                upserted.store(v, Ordering::Relaxed);
            }
        })
    };
    // Ingest from us, each message published again until stored.
    let producer = {
        let url = world.region("us").url();
        let (stop, ingested) = (stop.clone(), ingested.clone());
        tokio::spawn(async move {
            let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
            let mut v = 0;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                let body = json!({"documents": [doc("i", v, "ingest"), doc(&format!("m{v}"), v, "ingest")]});
                let payload: bytes::Bytes = serde_json::to_vec(&body).unwrap().into();
                loop {
                    let stored = match js.publish("tenantvec.ingest.carol", payload.clone()).await {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    };
                    if stored {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                ingested.store(v, Ordering::Relaxed);
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let moved = json_output(
        &mut world
            .region("eu")
            .cli(&["tenants", "move", "carol", "--region", "us"]),
    );
    assert_eq!(moved["moved"], "carol", "{moved}");
    assert_eq!(moved["erased"], true, "{moved}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    producer.await.unwrap();
    let (last_upsert, last_ingest) = (
        upserted.load(Ordering::Relaxed),
        ingested.load(Ordering::Relaxed),
    );
    assert!(last_upsert > 0 && last_ingest > 0);

    let eu = world.region("eu").client().await;
    wait_for(
        "every acknowledged write applied in us",
        Duration::from_secs(60),
        async || count(&eu, "carol").await == 2 + last_ingest,
    )
    .await;
    assert_eq!(
        version_of(&eu, "carol", "d").await,
        Some(last_upsert),
        "the last acknowledged upsert"
    );
    assert_eq!(
        version_of(&eu, "carol", "i").await,
        Some(last_ingest),
        "the last acknowledged ingest"
    );
    let shown = eu
        .request(
            eu.subjects().tenants(tenantvec::protocol::TenantsOp::Show),
            &json!({"tenant": "carol"}),
        )
        .await
        .expect("show");
    assert_eq!(shown["home_region"], "us", "{shown}");
    assert!(
        shown["state"] == "idle" || shown["state"] == "active",
        "{shown}"
    );
    assert!(
        !world
            .region("eu")
            .data
            .path()
            .join("carol")
            .join("vector_store")
            .exists(),
        "the old copy is erased"
    );
    assert!(world.region("us").data.path().join("carol").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_restores_the_dr_copy_which_wins_when_the_old_home_returns() {
    let mut world = World::start(&["eu", "us"], 1).await;
    let made = json_output(&mut world.region("eu").cli(&[
        "tenants",
        "create",
        "dave",
        "--dr-region",
        "us",
    ]));
    assert_eq!(made["dr_region"], "us", "{made}");
    let eu = world.region("eu").client().await;
    for v in 1..=5 {
        eu.tenant(
            Verb::Upsert,
            "dave",
            &json!({"documents": [doc("d", v, "backed up")]}),
        )
        .await
        .expect("upsert");
    }
    let backup = json_output(
        &mut world
            .region("eu")
            .cli(&["backup", "--tenant", "dave", "--name", "b1"]),
    );
    assert_eq!(backup["dr_copy"], "us", "{backup}");
    // After the backup: lost in a failover, as the README says.
    eu.tenant(
        Verb::Upsert,
        "dave",
        &json!({"documents": [doc("d", 6, "after the backup")]}),
    )
    .await
    .expect("upsert");
    // While its home answers, a failover is refused.
    let refused = world
        .region("us")
        .cli(&["tenants", "failover", "dave"])
        .output()
        .expect("run");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("answers"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    world.region("eu").lose();
    let done = json_output(&mut world.region("us").cli(&["tenants", "failover", "dave"]));
    assert_eq!(done["to"], "us", "{done}");
    assert_eq!(done["backup"], "dave/b1", "{done}");
    let us = world.region("us").client().await;
    assert_eq!(
        version_of(&us, "dave", "d").await,
        Some(5),
        "served from the backup"
    );
    us.tenant(
        Verb::Upsert,
        "dave",
        &json!({"documents": [doc("d", 7, "after the failover")]}),
    )
    .await
    .expect("upsert in us");

    // eu returns: the failed-over copy is the home, for eu's clients too.
    {
        let eu = world.region("eu");
        eu.nats.restart();
        eu.start_worker(Vec::new());
    }
    world.wait_joined(2).await;
    let eu = world.region("eu").client().await;
    wait_for(
        "eu sees the failover",
        Duration::from_secs(60),
        async || {
            let stats = eu.admin(AdminVerb::Stats, &json!({})).await.expect("stats");
            stats["regions"]["unlinked"]
                .as_array()
                .is_some_and(Vec::is_empty)
        },
    )
    .await;
    assert_eq!(version_of(&eu, "dave", "d").await, Some(7));
    let shown = eu
        .request(
            eu.subjects().tenants(tenantvec::protocol::TenantsOp::Show),
            &json!({"tenant": "dave"}),
        )
        .await
        .expect("show");
    assert_eq!(shown["home_region"], "us", "{shown}");
    assert_eq!(shown["home_epoch"], 1, "{shown}");
}

/// The cost of a request and of an ingest ack for a tenant homed in the
/// other region against one homed in the asker's, interleaved in one run.
/// A measurement, not a check: `cargo test --release --test regions --
/// --ignored --nocapture cross_region_cost` prints the figures for
/// BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it by name"]
async fn cross_region_cost() {
    const ROUNDS: usize = 2000;
    let mut world = World::start(&["eu", "us"], 1).await;
    json_output(&mut world.region("eu").cli(&["tenants", "create", "near"]));
    json_output(
        &mut world
            .region("eu")
            .cli(&["tenants", "create", "far", "--region", "us"]),
    );
    let eu = world.region("eu").client().await;
    let docs: Vec<Value> = (0..200)
        .map(|i| doc(&format!("d{i}"), i, "bench"))
        .collect();
    for t in ["near", "far"] {
        eu.tenant(Verb::Upsert, t, &json!({"documents": docs}))
            .await
            .expect("upsert");
    }
    let js =
        async_nats::jetstream::new(async_nats::connect(world.region("eu").url()).await.unwrap());
    let mut requests: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut acks: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    // Two passes, each interleaving the tenants: a search right behind an
    // ingest message of its tenant would wait for that message's write.
    for round in 0..(ROUNDS + 200) {
        for (k, t) in ["near", "far"].into_iter().enumerate() {
            let started = Instant::now();
            eu.tenant(
                Verb::Search,
                t,
                &json!({"vector": vector(round as u64, DIM), "top_k": 5}),
            )
            .await
            .expect("search");
            if round >= 200 {
                requests[k].push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    for round in 0..(ROUNDS + 200) {
        for (k, t) in ["near", "far"].into_iter().enumerate() {
            let body = serde_json::to_vec(&json!({"documents": [doc("i", round as u64, "bench")]}))
                .unwrap();
            let started = Instant::now();
            js.publish(format!("tenantvec.ingest.{t}"), body.into())
                .await
                .expect("publish")
                .await
                .expect("stored");
            if round >= 200 {
                acks[k].push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!(
        "machine: {} cores, {cpu}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{ROUNDS} of each, interleaved, from a client of region eu (ms):");
    println!("| what | same region p50 | p99 | other region p50 | p99 |");
    println!("| --- | --- | --- | --- | --- |");
    for (what, v) in [("search request", &mut requests), ("ingest ack", &mut acks)] {
        let [near, far] = v;
        println!(
            "| {what} | {:.3} | {:.3} | {:.3} | {:.3} |",
            pct(near, 0.5),
            pct(near, 0.99),
            pct(far, 0.5),
            pct(far, 0.99)
        );
    }
}
