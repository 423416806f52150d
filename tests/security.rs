//! Isolation enforced by the NATS server itself, with the example
//! configuration in config/nats-server.conf.

mod common;

use std::path::Path;
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
        Err(ClientError::Other(_)) | Err(ClientError::NoWorker { .. })
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_server_keeps_each_tenant_to_its_own_subjects() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nats-server.conf");
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
