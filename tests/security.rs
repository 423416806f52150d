//! Isolation enforced by the NATS server itself, with the example
//! configuration in config/nats-server.conf.

mod common;

use std::time::Duration;

use common::{wait_ready, NatsServer};
use serde_json::json;
use tenantvec::client::{Client, ClientError};
use tenantvec::config::{Secret, Settings};
use tenantvec::protocol::{AdminVerb, Verb};

fn as_user(base: &Settings, user: &str, password: &str) -> Settings {
    let mut s = base.clone();
    s.nats.user = user.into();
    s.nats.password = Secret::new(password);
    s.nats.inbox_prefix = format!("_INBOX_{user}");
    s.nats.request_timeout = Duration::from_secs(1);
    s
}

/// Refused by the server: the request never reaches a worker, so no reply
/// comes (the server tells the client "Permissions Violation" out of band).
fn refused(outcome: Result<serde_json::Value, ClientError>) -> bool {
    matches!(
        outcome,
        Err(ClientError::Other(_))
            | Err(ClientError::NoWorker { .. })
            | Err(ClientError::TimedOut { .. })
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_server_keeps_each_tenant_to_its_own_subjects() {
    let conf = common::project_dir().join("config/nats-server.conf");
    let nats = NatsServer::start_with_config(conf);
    let data = tempfile::tempdir().unwrap();
    let base = common::settings(&nats.url(), data.path());
    let worker_settings = {
        let mut s = base.clone();
        s.nats.user = "worker".into();
        s.nats.password = Secret::new("worker-secret");
        s
    };
    let worker = tenantvec::worker::spawn(worker_settings.clone());
    wait_ready(&worker_settings, || worker.is_finished()).await;

    let alice = Client::connect(&as_user(&base, "alice", "alice-secret"))
        .await
        .unwrap();
    let bob = Client::connect(&as_user(&base, "bob", "bob-secret"))
        .await
        .unwrap();
    let admin = Client::connect(&as_user(&base, "admin", "admin-secret"))
        .await
        .unwrap();

    // Each tenant's own requests work.
    let doc = json!({"documents": [{"doc_id": "a1", "text": "morning run"}]});
    assert_eq!(
        alice.tenant(Verb::Upsert, "alice", &doc).await.unwrap()["upserted"],
        1
    );
    let found = alice
        .tenant(Verb::Search, "alice", &json!({"query": "run"}))
        .await
        .unwrap();
    assert_eq!(found["results"][0]["doc_id"], "a1");
    assert_eq!(
        bob.tenant(Verb::Count, "bob", &json!({})).await.unwrap()["count"],
        0
    );

    // Another tenant's subjects and the admin subjects are refused by the server.
    assert!(refused(alice.tenant(Verb::Upsert, "bob", &doc).await));
    assert!(refused(
        alice
            .tenant(Verb::Search, "bob", &json!({"query": "run"}))
            .await
    ));
    assert!(refused(
        bob.tenant(Verb::Get, "alice", &json!({"doc_ids": ["a1"]}))
            .await
    ));
    assert!(refused(alice.admin(AdminVerb::Stats, &json!({})).await));
    assert!(refused(bob.admin(AdminVerb::Evict, &json!({})).await));

    // Nothing reached bob's store; the operator sees the pool.
    assert_eq!(
        admin.tenant(Verb::Count, "bob", &json!({})).await.unwrap()["count"],
        0
    );
    let stats = admin.admin(AdminVerb::Stats, &json!({})).await.unwrap();
    assert!(stats["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k == "alice"));

    // A wrong password does not connect.
    assert!(Client::connect(&as_user(&base, "alice", "wrong"))
        .await
        .is_err());
    worker.stop().unwrap();
}

fn write_policy(h: &common::Harness, tenant: &str, json: &str) {
    let dir = h.tenant_dir(tenant).join("config");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tenant.json"), json).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_rates_and_tenant_defaults() {
    use tenantvec::protocol::ErrorCode;
    let h = common::Harness::start_with(|s| s.tenants.max_documents = 5).await;
    let docs = |from: u32, to: u32| {
        let docs: Vec<_> = (from..to)
            .map(|i| json!({"doc_id": format!("d{i}"), "text": format!("note {i}")}))
            .collect();
        json!({ "documents": docs })
    };
    // The global quota: 5 documents.
    h.ok(Verb::Upsert, "small", docs(0, 5)).await;
    let msg = h
        .fails(Verb::Upsert, "small", docs(5, 6), ErrorCode::QuotaExceeded)
        .await;
    assert!(msg.contains("quota is 5"), "{msg}");
    // Replacing what it holds is no new document.
    h.ok(Verb::Upsert, "small", docs(0, 5)).await;
    assert_eq!(h.ok(Verb::Count, "small", json!({})).await["count"], 5);

    // tenant.json raises the quota and sets the tenant's top_k.
    write_policy(&h, "big", r#"{"max_documents": 8, "top_k": 2}"#);
    h.ok(Verb::Upsert, "big", docs(0, 8)).await;
    h.fails(Verb::Upsert, "big", docs(8, 9), ErrorCode::QuotaExceeded)
        .await;
    let found = h.ok(Verb::Search, "big", json!({"query": "note"})).await;
    assert_eq!(found["results"].as_array().unwrap().len(), 2);

    // A rate limit: 2 requests a second, the third at once is refused.
    write_policy(&h, "slow", r#"{"max_rps": 2}"#);
    let mut limited = 0;
    for _ in 0..6 {
        if let Err(ClientError::Service(e)) = h.call(Verb::Count, "slow", json!({})).await {
            assert_eq!(e.code, ErrorCode::RateLimited);
            limited += 1;
        }
    }
    assert!(limited >= 3, "{limited} of 6 refused");
    let nats = h.nats().await;
    let reply = nats
        .request("tenantvec.count.slow", "{}".into())
        .await
        .unwrap();
    assert_eq!(
        reply
            .headers
            .unwrap()
            .get("Nats-Service-Error-Code")
            .unwrap()
            .as_str(),
        "429"
    );

    // A broken policy file fails the tenant's requests, not open.
    write_policy(&h, "broken", "{not json");
    let msg = h
        .fails(Verb::Count, "broken", json!({}), ErrorCode::Internal)
        .await;
    assert!(msg.contains("tenant.json"), "{msg}");
}

/// `drop` erases a tenant's documents, never the operator's `tenant.json`:
/// a tenant cannot lift its own quota by dropping itself and starting over.
async fn drop_keeps_the_operator_s_policy(layout: tenantvec::config::Layout) {
    use tenantvec::protocol::ErrorCode;
    let h = common::Harness::start_with(|s| s.store.layout = layout).await;
    let docs = |from: u32, to: u32| {
        let docs: Vec<_> = (from..to)
            .map(|i| json!({"doc_id": format!("d{i}"), "text": format!("note {i}")}))
            .collect();
        json!({ "documents": docs })
    };
    let policy = r#"{"max_documents": 2}"#;
    write_policy(&h, "capped", policy);
    h.ok(Verb::Upsert, "capped", docs(0, 2)).await;
    h.fails(Verb::Upsert, "capped", docs(2, 3), ErrorCode::QuotaExceeded)
        .await;

    h.ok(Verb::Drop, "capped", json!({})).await;
    assert_eq!(h.ok(Verb::Count, "capped", json!({})).await["count"], 0);
    let file = h.tenant_dir("capped").join("config/tenant.json");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), policy);
    assert!(!h.tenant_dir("capped").join("vector_store").exists());

    // A new activation reads the policy again: the quota still holds.
    h.admin(AdminVerb::Evict, json!({"tenant": "capped"})).await;
    h.fails(Verb::Upsert, "capped", docs(0, 3), ErrorCode::QuotaExceeded)
        .await;
    h.ok(Verb::Upsert, "capped", docs(0, 2)).await;
    assert_eq!(h.ok(Verb::Count, "capped", json!({})).await["count"], 2);
}

both_layouts!(drop_keeps_the_operator_s_policy);
