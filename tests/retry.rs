//! The client's retries (`nats.retry_deadline`): a request that finds no
//! worker is tried again until one answers, and a `rate_limited` one waits
//! what the worker asks, so a client within its deadline sees neither;
//! with retries off, each failure comes back as it is, with the worker's
//! hint.

mod common;

use std::time::{Duration, Instant};

use common::Harness;
use serde_json::json;
use tenantvec::client::{tenants, Client, ClientError};
use tenantvec::protocol::{ErrorCode, TenantsOp, Verb};

async fn client(h: &Harness, retry_deadline: Duration) -> Client {
    let mut s = h.settings.clone();
    s.nats.retry_deadline = retry_deadline;
    Client::connect(&s).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_before_its_worker_starts_lands_once_it_is_up() {
    let mut h = Harness::start().await;
    h.stop_worker().unwrap();
    let once = client(&h, Duration::ZERO).await;
    assert!(matches!(
        once.tenant(Verb::Count, "alice", &json!({})).await,
        Err(ClientError::NoWorker { .. })
    ));
    let patient = client(&h, Duration::from_secs(30)).await;
    let asked = tokio::spawn(async move { patient.tenant(Verb::Count, "alice", &json!({})).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!asked.is_finished(), "no worker, and yet an answer");
    h.start_worker().await;
    let reply = tokio::time::timeout(Duration::from_secs(30), asked)
        .await
        .expect("the retried request never landed")
        .unwrap()
        .unwrap();
    assert_eq!(reply["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrying_client_waits_out_the_rate_limit_as_the_worker_asks() {
    let h = Harness::start().await;
    let settings = json!({"max_rps": 4}).as_object().cloned();
    tenants::one(&h.client, TenantsOp::Create, "paced", settings)
        .await
        .unwrap();
    // Retries off: refused, with how long until a token is back.
    let once = client(&h, Duration::ZERO).await;
    let mut refused = None;
    for _ in 0..50 {
        if let Err(ClientError::Service(e)) = once.tenant(Verb::Count, "paced", &json!({})).await {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("50 requests at once never hit a limit of 4 per second");
    assert_eq!(refused.code, ErrorCode::RateLimited);
    let hint = refused.retry_after_ms.expect("a retry hint");
    assert!((1..=250).contains(&hint), "{hint} ms at 4 per second");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Retries on: every request answered, paced by the worker's hints.
    let patient = client(&h, Duration::from_secs(10)).await;
    let started = Instant::now();
    for _ in 0..12 {
        let reply = patient
            .tenant(Verb::Count, "paced", &json!({}))
            .await
            .expect("a retrying client was refused");
        assert_eq!(reply["count"], 0);
    }
    // 12 at 4 per second, 4 of them at once from a full bucket.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "{took:?}");
}
