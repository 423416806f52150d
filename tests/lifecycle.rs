//! The worker's life: restart with data kept, SIGTERM with work in flight,
//! the guard against a second edge worker, and the command-line client.

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use common::{tenantvec_bin, vector, Harness, NatsServer};
use serde_json::{json, Value};
use tenantvec::client::ClientError;
use tenantvec::protocol::Verb;

const DIM: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_restart() {
    let mut h = Harness::start().await;
    let docs: Vec<Value> = (0..50)
        .map(|i| {
            json!({"doc_id": format!("d{i}"), "text": format!("note number {i}"),
                        "vector": vector(i, DIM), "metadata": {"i": i}})
        })
        .collect();
    h.ok(Verb::Upsert, "keep", json!({"documents": docs})).await;
    h.ok(Verb::Count, "keep", json!({"filter": {"i": {"lt": 10}}}))
        .await;
    h.stop_worker().expect("clean stop");
    h.start_worker().await;
    assert_eq!(h.ok(Verb::Count, "keep", json!({})).await["count"], 50);
    let got = h.ok(Verb::Get, "keep", json!({"doc_ids": ["d7"]})).await;
    assert_eq!(got["documents"][0]["text"], "note number 7");
    assert_eq!(got["documents"][0]["metadata"], json!({"i": 7}));
    let found = h
        .ok(
            Verb::Search,
            "keep",
            json!({"vector": vector(7, DIM), "top_k": 1, "filter": {"i": {"lt": 10}}}),
        )
        .await;
    assert_eq!(found["results"][0]["doc_id"], "d7");
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_work_in_flight_then_exits_zero() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let settings = common::settings(&nats.url(), data.path());
    let mut child = common::spawn_worker_binary(&nats, data.path(), DIM);
    common::wait_ready(&settings, || false).await;
    let client = tenantvec::client::Client::connect(&settings).await.unwrap();

    // Many large upserts queue up behind each other per tenant ...
    let requests = (0..24u64).map(|r| {
        let tenant = format!("s{}", r % 3);
        let docs: Vec<Value> = (0..300)
            .map(|i| json!({"doc_id": format!("r{r}-{i}"), "vector": vector(r * 1000 + i, DIM)}))
            .collect();
        let client = &client;
        async move {
            let body = json!({"documents": docs});
            (
                tenant.clone(),
                client.tenant(Verb::Upsert, &tenant, &body).await,
            )
        }
    });
    // ... and SIGTERM arrives while they are being worked on.
    let terminate = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        sigterm(&child);
    };
    let (outcomes, ()) = tokio::join!(futures::future::join_all(requests), terminate);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "worker exit status {status}");

    let mut acked = std::collections::HashMap::<String, u64>::new();
    for (tenant, outcome) in &outcomes {
        match outcome {
            Ok(reply) => {
                *acked.entry(tenant.clone()).or_default() += reply["upserted"].as_u64().unwrap()
            }
            // Sent after the worker unsubscribed: nobody took it, so nothing was lost.
            Err(ClientError::NoWorker { .. }) => {}
            Err(e) => panic!("request failed during shutdown: {e}"),
        }
    }
    assert!(!acked.is_empty(), "no request was in flight at SIGTERM");

    // Every acknowledged write is on disk.
    let mut child = common::spawn_worker_binary(&nats, data.path(), DIM);
    common::wait_ready(&settings, || false).await;
    for (tenant, n) in &acked {
        let count = client
            .tenant(Verb::Count, tenant, &json!({}))
            .await
            .unwrap();
        assert_eq!(count["count"].as_u64(), Some(*n), "{tenant}");
    }
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_edge_worker_on_the_same_prefix_refuses_to_start() {
    let h = Harness::start().await;
    let other = tempfile::tempdir().unwrap();
    let mut settings = common::settings(&h.nats.url(), other.path());
    settings.nats.discovery_timeout = Duration::from_millis(500);
    let err = tenantvec::worker::spawn(settings.clone())
        .stop()
        .expect_err("a second edge worker must not start");
    assert!(err.to_string().contains("already serves"), "{err}");
    // Another prefix is fine.
    settings.nats.prefix = "other".into();
    let second = tenantvec::worker::spawn(settings.clone());
    common::wait_ready(&settings, || second.is_finished()).await;
    second.stop().expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_client() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docs.jsonl");
    let lines: Vec<String> = [
        json!({"tenant": "cli-a", "doc_id": "1", "text": "walk the dog in the morning", "metadata": {"category": "health"}}),
        json!({"tenant": "cli-a", "doc_id": "2", "text": "buy groceries for the week", "metadata": {"category": "food"}}),
        json!({"tenant": "cli-b", "doc_id": "3", "text": "walk to work", "metadata": {"category": "health"}}),
    ]
    .iter()
    .map(Value::to_string)
    .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();

    let run = |args: &[&str]| {
        let out = Command::new(tenantvec_bin())
            .args(args)
            .env("NATS_URL", h.nats.url())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run the client");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let file = file.to_str().unwrap();
    let (code, out, err) = run(&["upsert", "--tenant", "cli-a", file]);
    assert_eq!(code, Some(0), "{err}");
    let summary: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["upserted"], 2);
    assert_eq!(summary["skipped_other_tenants"], 1);
    let (code, _, err) = run(&["upsert", "--tenant", "cli-b", file]);
    assert_eq!(code, Some(0), "{err}");

    let (code, out, err) = run(&["search", "--tenant", "cli-a", "--top-k", "1", "walk"]);
    assert_eq!(code, Some(0), "{err}");
    let found: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(found["results"][0]["doc_id"], "1");
    let (_, out, _) = run(&[
        "search",
        "--tenant",
        "cli-b",
        "--filter",
        r#"{"category": "health"}"#,
        "walk",
    ]);
    let found: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["doc_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["3"], "tenant b sees only its own document");

    let (code, out, _) = run(&["stats"]);
    assert_eq!(code, Some(0));
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["size"], 2);

    // Errors from the worker: one clear line, non-zero exit.
    let (code, out, err) = run(&["search", "--tenant", "Bad", "x"]);
    assert_eq!(code, Some(1));
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: invalid_tenant"), "{err}");
}
