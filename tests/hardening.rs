//! Noisy neighbours and the client's own checks: a tenant past its
//! `limits.tenant_queue` is refused alone; the command line refuses an
//! invalid tenant or prefix before it connects to anything.

mod common;

use std::process::Command;

use common::{free_port, tenantvec_bin, vector, Harness};
use futures::future::join_all;
use serde_json::json;
use tenantvec::client::ClientError;
use tenantvec::protocol::{ErrorCode, Verb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_past_its_queue_is_refused_and_the_others_are_served() {
    let h = Harness::start_with(|s| s.limits.tenant_queue = 2).await;
    // A burst on one connection: the first opens the tenant's store while
    // the rest arrive, so the third and later find two in flight.
    let burst = (0..40).map(|i| {
        h.call(
            Verb::Upsert,
            "flood",
            json!({"documents": [{"doc_id": format!("d{i}"), "vector": vector(i, 8)}]}),
        )
    });
    let victim = h.call(Verb::Count, "victim", json!({}));
    let (outcomes, victim) = tokio::join!(join_all(burst), victim);
    let limited = outcomes
        .iter()
        .filter(|o| matches!(o, Err(ClientError::Service(e)) if e.code == ErrorCode::RateLimited))
        .count();
    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(limited + ok, outcomes.len(), "only refusals: {outcomes:?}");
    assert!(limited > 0, "the burst met its tenant's bound");
    assert!(ok >= 1, "what was admitted was applied");
    assert_eq!(victim.expect("the other tenant is served")["count"], 0);
    // The bound is on work in flight: once answered, the tenant is served.
    h.ok(Verb::Count, "flood", json!({})).await;
}

/// Run the client binary against a NATS URL where nothing listens: an
/// answer that names the rule proves it never needed the server.
fn client(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(tenantvec_bin())
        .args(args)
        .env("NATS_URL", format!("nats://127.0.0.1:{}", free_port()))
        .output()
        .expect("run tenantvec");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_command_line_checks_the_tenant_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docs.jsonl");
    std::fs::write(&file, "{\"doc_id\": \"a\", \"text\": \"x\"}\n").unwrap();
    let file = file.to_str().unwrap();
    for args in [
        vec!["search", "--tenant", "../bob", "x"],
        vec!["count", "--tenant", "Bob"],
        vec!["drop", "--tenant", ""],
        vec!["upsert", "--tenant", "a.b", file],
        vec!["ingest", "--tenant", "a*", file],
    ] {
        let (code, stderr) = client(&args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("invalid_tenant") && stderr.contains("[a-z0-9][a-z0-9_-]{0,63}"),
            "{args:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_of_every_tenant_checks_each_line_before_publishing_it() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all.jsonl");
    std::fs::write(
        &all,
        "{\"tenant\": \"../x\", \"doc_id\": \"a\", \"text\": \"x\"}\n",
    )
    .unwrap();
    let e = h
        .client
        .ingest_file(None, &all, 1000, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid_tenant") && e.contains(":1"), "{e}");
}

#[test]
fn the_command_line_checks_the_prefix_before_sending() {
    for prefix in ["a b", "a.*", "a..b", "x>"] {
        let (code, stderr) = client(&["--prefix", prefix, "count", "--tenant", "alice"]);
        assert_eq!(code, Some(2), "{prefix:?}: {stderr}");
        assert!(
            stderr.contains("nats.prefix") && stderr.contains("command line"),
            "{prefix:?}: {stderr}"
        );
    }
}
