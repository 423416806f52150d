//! The ground the fleet stands on, checked against real nats-servers:
//! `cluster::partition_of` files a tenant exactly where nats-server's
//! `partition(P, 1)` subject transform files its ingest messages; a
//! three-node cluster keeps an R3 stream and an R3 KV bucket writable
//! through the loss of a node, and `kv.create` behaves as a lease (refused
//! while the key lives, granted again once `max_age` has expired it); and
//! the worker binary serves on the cluster and stops on SIGTERM.
//!
//! It owns no worker logic; it must never stand in for nats-server (every
//! answer here comes from a real one) nor depend on timing beyond bounded
//! deadlines.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, kv, stream};
use common::cluster::{NatsCluster, WorkerProcess};
use common::NatsServer;
use serde_json::json;
use tenantvec::client::Client;
use tenantvec::cluster::partition_of;
use tenantvec::protocol::Verb;
use tenantvec::tenant::{TenantId, MAX_TENANT_LEN};

/// About 500 distinct valid tenant ids, the same on every run: short and
/// maximal lengths, digits first, `-` and `_` anywhere but first. Tenant ids
/// are lower case only (`TenantId::parse`), so no upper case is among them.
fn tenant_ids() -> Vec<String> {
    const FIRST: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    const REST: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut ids: Vec<String> = [
        "a",
        "z",
        "0",
        "9",
        "ab",
        "a-",
        "a_",
        "0-",
        "9_",
        "x--",
        "y__",
        "user-42",
        "user_42",
        "acme-corp",
        "acme_corp",
        "0000",
        "1234567890",
        "a-b_c-d_e",
        "tenant",
        "tenant-0",
        "tenant-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ids.push("a".repeat(MAX_TENANT_LEN));
    ids.push("9".repeat(MAX_TENANT_LEN));
    ids.push(format!("z{}", "-_".repeat((MAX_TENANT_LEN - 1) / 2)));
    ids.extend((0..100).map(|i| format!("user-{i}")));
    // A fixed xorshift seed: the ids are pseudo-random but never change, so
    // a failure names the same tenant on the next run.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    while ids.len() < 520 {
        // Every fourth id is 48 to 64 bytes long; the rest 1 to 16.
        let len = if next(4) == 0 {
            48 + next(17)
        } else {
            1 + next(16)
        };
        let mut id = String::with_capacity(len);
        id.push(FIRST[next(FIRST.len())] as char);
        while id.len() < len {
            id.push(REST[next(REST.len())] as char);
        }
        ids.push(id);
    }
    let mut seen = HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
    for id in &ids {
        assert!(
            TenantId::parse(id).is_ok(),
            "{id:?} is not a valid tenant id"
        );
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_of_agrees_with_the_nats_partition_transform() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let tenants = tenant_ids();
    assert!(tenants.len() >= 500, "only {} tenant ids", tenants.len());
    assert!(tenants.iter().any(|t| t.len() == MAX_TENANT_LEN));

    for p in [1u32, 3, 16, 64] {
        let name = format!("PARTITION_{p}");
        // One stream per P, deleted before the next: two streams cannot
        // both take `t.ingest.*`, and the subject shape is the ingest
        // stream's own.
        let stream = js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec!["t.ingest.*".into()],
                subject_transform: Some(stream::SubjectTransform {
                    source: "t.ingest.*".into(),
                    destination: format!("t.ingest.{{{{partition({p},1)}}}}.{{{{wildcard(1)}}}}"),
                }),
                // Only the stored subject matters; memory keeps the
                // 2,000 messages off the disk.
                storage: stream::StorageType::Memory,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));

        // Publish all, then collect the acks: pipelined, so P's round costs
        // one round trip per read, not two per tenant.
        let mut acks = Vec::with_capacity(tenants.len());
        for t in &tenants {
            let ack = js
                .publish(format!("t.ingest.{t}"), t.clone().into())
                .await
                .unwrap_or_else(|e| panic!("publish for {t}: {e}"));
            acks.push(ack);
        }
        let mut wrong = Vec::new();
        let mut partitions_seen = HashSet::new();
        for (t, ack) in tenants.iter().zip(acks) {
            let ack = ack.await.unwrap_or_else(|e| panic!("ack for {t}: {e}"));
            assert_eq!(ack.stream, name);
            let msg = stream
                .get_raw_message(ack.sequence)
                .await
                .unwrap_or_else(|e| panic!("read back {t} at {}: {e}", ack.sequence));
            assert_eq!(
                msg.payload.as_ref(),
                t.as_bytes(),
                "message {}",
                ack.sequence
            );
            let ours = partition_of(t, p);
            partitions_seen.insert(ours);
            let expected = format!("t.ingest.{ours}.{t}");
            if msg.subject.as_str() != expected {
                wrong.push(format!(
                    "{t}: stored as {}, expected {expected}",
                    msg.subject
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "P={p}: {} of {} tenants filed elsewhere than partition_of says, e.g.\n{}",
            wrong.len(),
            tenants.len(),
            wrong[..wrong.len().min(10)].join("\n")
        );
        // Every partition gets tenants (500 over at most 64), so the
        // comparison covered every remainder, not a few.
        assert_eq!(partitions_seen.len(), p as usize, "P={p}");
        js.delete_stream(&name)
            .await
            .unwrap_or_else(|e| panic!("delete {name}: {e}"));
    }
}

/// Retry `attempt` (each bounded by 2 s) until it succeeds or `limit`
/// passes; how long it took. Panics with the last error.
async fn within<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    limit: Duration,
    mut attempt: impl FnMut() -> F,
) -> (T, Duration) {
    let started = Instant::now();
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(2), attempt()).await {
            Ok(Ok(v)) => return (v, started.elapsed()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 2 s".to_owned(),
        };
        assert!(
            started.elapsed() < limit,
            "{what} did not succeed within {limit:?}; last error: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of `key` in the `leases` bucket, read from the bucket's
/// stream leader. Not `kv.get`: on an R3 bucket that is a direct get, which
/// any replica may answer, and a follower may not have applied the latest
/// write yet.
async fn holder(js: &jetstream::Context, key: &str) -> String {
    let msg = js
        .get_stream("KV_leases")
        .await
        .expect("the bucket's stream")
        .get_last_raw_message_by_subject(&format!("$KV.leases.{key}"))
        .await
        .unwrap_or_else(|e| panic!("read {key} from the leader: {e}"));
    String::from_utf8(msg.payload.to_vec()).expect("a UTF-8 value")
}

/// Every replica of `stream` is current and online, as its leader sees it.
async fn all_replicas_current(js: &jetstream::Context, stream: &str) -> Result<(), String> {
    let info = js
        .get_stream(stream)
        .await
        .map_err(|e| e.to_string())?
        .info()
        .await
        .map_err(|e| e.to_string())?
        .clone();
    let cluster = info.cluster.ok_or("no cluster info")?;
    if cluster.leader.is_none() {
        return Err("no leader".into());
    }
    let lagging: Vec<_> = cluster
        .replicas
        .iter()
        .filter(|r| !r.current || r.offline)
        .map(|r| r.name.clone())
        .collect();
    match (cluster.replicas.len(), lagging.is_empty()) {
        (2, true) => Ok(()),
        (n, _) => Err(format!("{n} replicas, not current: {lagging:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_keeps_streams_and_leases_through_a_node_loss() {
    let started = Instant::now();
    let mut cluster = NatsCluster::start(3).await;
    eprintln!("cluster ready in {:?}", started.elapsed());
    let js = jetstream::new(cluster.client().await);

    js.create_stream(stream::Config {
        name: "FLEET".into(),
        subjects: vec!["fleet.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("create an R3 stream");
    js.publish("fleet.a", "first".into())
        .await
        .expect("publish")
        .await
        .expect("ack from the R3 stream");
    let kv = js
        .create_key_value(kv::Config {
            bucket: "leases".into(),
            num_replicas: 3,
            max_age: Duration::from_secs(2),
            ..Default::default()
        })
        .await
        .expect("create an R3 KV bucket");
    for stream in ["FLEET", "KV_leases"] {
        let (_, took) = within(stream, Duration::from_secs(10), || {
            all_replicas_current(&js, stream)
        })
        .await;
        eprintln!("{stream}: three current replicas after {took:?}");
    }

    // A lease: create succeeds only while the key does not exist.
    let granted = Instant::now();
    kv.create("partition.0", "worker-a".into())
        .await
        .expect("the first create of a key");
    match kv.create("partition.0", "worker-b".into()).await {
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        other => panic!("a second create of a live key must fail as AlreadyExists: {other:?}"),
    }
    assert_eq!(holder(&js, "partition.0").await, "worker-a");
    // Nobody renews: max_age removes the key and create succeeds again.
    // Polled rather than slept, so the test also measures how late the
    // server expires it.
    within("a create after max_age", Duration::from_secs(10), || {
        kv.create("partition.0", "worker-b".into())
    })
    .await;
    let expired_after = granted.elapsed();
    eprintln!("lease expired and was taken again {expired_after:?} after it was granted");
    // The server stamps the message after `granted` was taken, so the key
    // cannot be gone sooner than max_age after it.
    assert!(expired_after >= Duration::from_secs(2), "{expired_after:?}");
    assert_eq!(holder(&js, "partition.0").await, "worker-b");

    // Kill the node that leads the lease bucket: the case where leases
    // must fail over, not just lose a follower.
    let info = js
        .get_stream("KV_leases")
        .await
        .expect("the bucket's stream")
        .info()
        .await
        .expect("its info")
        .clone();
    let leader = info.cluster.and_then(|c| c.leader).expect("a leader");
    let victim = cluster.node_index(&leader).expect("a node of ours");
    let fleet_leader = js
        .get_stream("FLEET")
        .await
        .expect("FLEET")
        .info()
        .await
        .expect("its info")
        .cluster
        .clone()
        .and_then(|c| c.leader);
    eprintln!("killing {leader} (leads KV_leases; FLEET is led by {fleet_leader:?})");
    cluster.kill(victim);

    // Both waits are bounded by 20 s: a follower waits 4 to 9 s for a lost
    // leader before it campaigns (minElectionTimeoutDefault and
    // maxElectionTimeoutDefault in nats-server's server/raft.go), so 20 s
    // allows a full timeout, a second election round and the answer. The
    // two groups elect side by side, so the second wait is mostly spent.
    //
    // With a message id: an attempt that timed out may still have been
    // stored, and the stream's duplicate window drops its retry, so the
    // count below is exact.
    let (_, took) = within(
        "a publish with one node down",
        Duration::from_secs(20),
        || async {
            let second = PublishMessage::build()
                .payload("second".into())
                .message_id("second");
            js.send_publish("fleet.a", second).await?.await
        },
    )
    .await;
    eprintln!("publish to FLEET succeeded {took:?} after the kill");
    let (_, took) = within(
        "a KV put with one node down",
        Duration::from_secs(20),
        || kv.put("partition.1", "worker-c".into()),
    )
    .await;
    eprintln!("KV put succeeded {took:?} after the publish");

    let restarted = Instant::now();
    cluster.restart(victim);
    for stream in ["FLEET", "KV_leases"] {
        within(stream, Duration::from_secs(20), || {
            all_replicas_current(&js, stream)
        })
        .await;
    }
    eprintln!(
        "{leader} restarted; all replicas current after {:?}",
        restarted.elapsed()
    );
    let fleet = js
        .get_stream("FLEET")
        .await
        .expect("FLEET")
        .info()
        .await
        .expect("info")
        .clone();
    assert_eq!(fleet.state.messages, 2);
    eprintln!("whole test: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_binary_serves_on_the_cluster_and_stops_on_sigterm() {
    let cluster = NatsCluster::start(3).await;
    let data = tempfile::tempdir().expect("temp dir");
    let worker = WorkerProcess::start(&cluster.url(), data.path(), vec![]);
    worker.wait_serving(Duration::from_secs(30));

    let settings = common::settings(&cluster.url(), data.path());
    let client = Client::connect(&settings).await.expect("client connects");
    let docs = json!({"documents": [{"doc_id": "d", "text": "t", "vector": common::vector(1, 8)}]});
    let upserted = client
        .tenant(Verb::Upsert, "alice", &docs)
        .await
        .expect("upsert");
    assert_eq!(upserted, json!({"upserted": 1}));
    let count = client
        .tenant(Verb::Count, "alice", &json!({}))
        .await
        .expect("count");
    assert_eq!(count, json!({"count": 1}));

    let status = worker.terminate();
    assert!(status.success(), "{status}; log:\n{}", worker.log());
    assert!(!worker.is_running());
    assert!(
        worker.log().contains("tenantvec worker stopped"),
        "{}",
        worker.log()
    );
}
