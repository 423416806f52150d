//! The tenant registry against a real nats-server: tenants created, listed
//! (page by page, by prefix), shown, changed and deleted through the command
//! line and the client; a setting changed on an active tenant holds on its
//! next request; `tenants.auto_create = false` refuses an unknown tenant and
//! writes nothing; a data folder of before keeps its limits and embedder;
//! and two writers of one record never lose each other's change.

mod common;

use common::Harness;
use serde_json::{json, Value};
use tenantvec::client::tenants;
use tenantvec::client::ClientError;
use tenantvec::protocol::{ErrorCode, TenantsOp, Verb};
use tenantvec::registry::{Registry, TenantRecord};
use tenantvec::tenant::TenantId;

fn docs(n: usize) -> Value {
    let docs: Vec<Value> = (0..n)
        .map(|i| json!({"doc_id": format!("d{i}"), "text": format!("note number {i} about running")}))
        .collect();
    json!({ "documents": docs })
}

/// `tenantvec <args>` against the harness's worker.
fn run_cli(h: &Harness, args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::tenantvec_bin())
        .args(args)
        .env("NATS_URL", h.nats.url())
        .env("RUST_LOG", "error")
        .output()
        .expect("run tenantvec")
}

/// [`run_cli`] that must succeed: its stdout.
fn cli(h: &Harness, args: &[&str]) -> String {
    let out = run_cli(h, args);
    assert!(
        out.status.success(),
        "tenantvec {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// [`run_cli`] that must fail: its stderr.
fn cli_fails(h: &Harness, args: &[&str]) -> String {
    let out = run_cli(h, args);
    assert!(!out.status.success(), "tenantvec {args:?} succeeded");
    String::from_utf8(out.stderr).expect("utf-8 output")
}

fn search_hits(reply: &Value) -> usize {
    reply["results"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_created_listed_shown_changed_and_deleted() {
    let h = Harness::start().await;
    for t in ["alba", "alice", "alma", "bob", "carol"] {
        let shown: Value = serde_json::from_str(&cli(&h, &["tenants", "create", t])).unwrap();
        assert_eq!(shown["id"], t);
        assert_eq!(shown["state"], "idle");
    }
    assert!(cli_fails(&h, &["tenants", "create", "bob"]).contains("exists already"));
    // A first write creates a tenant too (tenants.auto_create, the default).
    h.ok(Verb::Upsert, "dave", docs(7)).await;

    // Every tenant, two per page: four requests, in id order.
    let all: Vec<Value> =
        serde_json::from_str(&cli(&h, &["tenants", "list", "--page", "2", "--json"])).unwrap();
    let ids: Vec<&str> = all.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["alba", "alice", "alma", "bob", "carol", "dave"]);
    let al = tenants::list(&h.client, Some("al"), None, 1).await.unwrap();
    assert_eq!(al.len(), 3);
    assert!(al
        .iter()
        .all(|r| r["id"].as_str().unwrap().starts_with("al")));
    let active = tenants::list(&h.client, None, Some("active"), 100)
        .await
        .unwrap();
    assert_eq!(active.len(), 1, "dave's actor is in the pool: {active:?}");
    assert_eq!(active[0]["id"], "dave");
    let table = cli(&h, &["tenants", "list", "--id-prefix", "b"]);
    assert!(table.lines().nth(1).unwrap().starts_with("bob"), "{table}");

    // A setting changed on an active tenant holds on its next request.
    assert_eq!(
        search_hits(
            &h.ok(Verb::Search, "dave", json!({"query": "running"}))
                .await
        ),
        5
    );
    let changed: Value = serde_json::from_str(&cli(
        &h,
        &["tenants", "set", "dave", "top_k=2", "max_documents=7"],
    ))
    .unwrap();
    assert_eq!(changed["settings"]["top_k"], 2);
    assert_eq!(
        search_hits(
            &h.ok(Verb::Search, "dave", json!({"query": "running"}))
                .await
        ),
        2
    );
    h.fails(
        Verb::Upsert,
        "dave",
        json!({"documents": [{"doc_id": "x", "text": "one more"}]}),
        ErrorCode::QuotaExceeded,
    )
    .await;
    cli(
        &h,
        &[
            "tenants",
            "set",
            "dave",
            "top_k=default",
            "max_documents=default",
        ],
    );
    assert_eq!(
        search_hits(
            &h.ok(Verb::Search, "dave", json!({"query": "running"}))
                .await
        ),
        5
    );
    assert!(cli_fails(&h, &["tenants", "set", "dave", "top_k=0"]).contains("top_k"));
    assert!(cli_fails(&h, &["tenants", "set", "dave", "quota=3"]).contains("unknown setting"));

    // A closed tenant's record has its figures.
    h.admin(
        tenantvec::protocol::AdminVerb::Evict,
        json!({"tenant": "dave"}),
    )
    .await;
    let shown: Value = serde_json::from_str(&cli(&h, &["tenants", "show", "dave"])).unwrap();
    assert_eq!(shown["state"], "idle");
    assert_eq!(shown["documents"], 7);
    assert!(shown["bytes"].as_u64().unwrap() > 0, "{shown}");
    assert_eq!(shown["embedder"]["model"], "hashing");
    assert!(shown["last_active"].is_string());

    // Delete: the data and the record.
    let deleted: Value = serde_json::from_str(&cli(&h, &["tenants", "delete", "dave"])).unwrap();
    assert_eq!(deleted, json!({"deleted": "dave"}));
    assert!(!h.tenant_dir("dave").join("vector_store").exists());
    match tenants::one(&h.client, TenantsOp::Show, "dave", None).await {
        Err(ClientError::Service(e)) => assert_eq!(e.code, ErrorCode::UnknownTenant),
        other => panic!("expected unknown_tenant, got {other:?}"),
    }
    assert!(cli_fails(&h, &["tenants", "delete", "dave"]).contains("unknown_tenant"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_create_an_unknown_tenant_is_refused_and_nothing_is_written() {
    let h = Harness::start_with(|s| s.tenants.auto_create = false).await;
    let message = h
        .fails(Verb::Upsert, "ghost", docs(2), ErrorCode::UnknownTenant)
        .await;
    assert!(message.contains("tenants create ghost"), "{message}");
    h.fails(
        Verb::Search,
        "ghost",
        json!({"query": "x"}),
        ErrorCode::UnknownTenant,
    )
    .await;
    assert!(!h.tenant_dir("ghost").exists(), "nothing of ghost on disk");

    // Created by an operator, it is served at once (its actor was active).
    let mut settings = serde_json::Map::new();
    settings.insert("max_documents".into(), json!(3));
    tenants::one(&h.client, TenantsOp::Create, "ghost", Some(settings))
        .await
        .unwrap();
    h.ok(Verb::Upsert, "ghost", docs(3)).await;
    h.fails(Verb::Upsert, "ghost", docs(4), ErrorCode::QuotaExceeded)
        .await;
    assert_eq!(
        h.ok(Verb::Count, "ghost", json!({})).await,
        json!({"count": 3})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_folder_of_before_keeps_its_limits_and_its_embedder() {
    // Written by a worker without the registry: tenant.json and embedder.json.
    let mut h = Harness::start_with(|s| s.tenants.registry = false).await;
    let config = h.tenant_dir("old").join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("tenant.json"),
        r#"{"max_documents": 4, "top_k": 2}"#,
    )
    .unwrap();
    h.ok(Verb::Upsert, "old", docs(4)).await;
    assert!(h
        .tenant_dir("old")
        .join("vector_store/embedder.json")
        .exists());
    h.stop_worker().unwrap();

    // The same folder under a worker with the registry.
    h.settings.tenants.registry = true;
    h.start_worker().await;
    assert_eq!(
        search_hits(&h.ok(Verb::Search, "old", json!({"query": "running"})).await),
        2
    );
    h.fails(
        Verb::Upsert,
        "old",
        json!({"documents": [{"doc_id": "x", "text": "five"}]}),
        ErrorCode::QuotaExceeded,
    )
    .await;
    let shown = tenants::one(&h.client, TenantsOp::Show, "old", None)
        .await
        .unwrap();
    assert_eq!(
        shown["settings"],
        json!({"top_k": 2, "max_documents": 4, "max_rps": null})
    );
    assert_eq!(shown["embedder"]["model"], "hashing");
    assert_eq!(shown["embedder"]["dimension"], 8);
    // Only the tenant of before is registered: nothing was walked for it.
    let listed = tenants::list(&h.client, None, None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
}

/// `tenants import-files` makes the records of a whole data folder of
/// before at once, and run again finds them made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_files_registers_every_tenant_of_a_folder_of_before() {
    let mut h = Harness::start_with(|s| s.tenants.registry = false).await;
    for (i, t) in ["a1", "b2", "c3"].iter().enumerate() {
        let config = h.tenant_dir(t).join("config");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(
            config.join("tenant.json"),
            format!(r#"{{"max_documents": {}}}"#, 10 + i),
        )
        .unwrap();
        h.ok(Verb::Upsert, t, docs(2)).await;
    }
    // Not tenants: a file, a folder whose name is no tenant id, an empty one.
    std::fs::write(h.data.path().join("notes.txt"), "x").unwrap();
    std::fs::create_dir_all(h.data.path().join("Not A Tenant")).unwrap();
    std::fs::create_dir_all(h.data.path().join("empty")).unwrap();
    h.stop_worker().unwrap();
    h.settings.tenants.registry = true;
    h.start_worker().await;

    let import = |h: &Harness| {
        let out = std::process::Command::new(common::tenantvec_bin())
            .args(["tenants", "import-files"])
            .env("NATS_URL", h.nats.url())
            .env("VECTOR_STORE_FOLDER", h.data.path())
            .env("RUST_LOG", "error")
            .output()
            .expect("run tenantvec");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let first = import(&h);
    assert_eq!(
        (
            &first["imported"],
            &first["registered"],
            &first["empty"],
            &first["other"]
        ),
        (&json!(3), &json!(0), &json!(1), &json!(2)),
        "{first:#}"
    );
    let again = import(&h);
    assert_eq!(
        (&again["imported"], &again["registered"]),
        (&json!(0), &json!(3)),
        "{again:#}"
    );
    let listed = tenants::list(&h.client, None, None, 10).await.unwrap();
    let ids: Vec<&str> = listed.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, ["a1", "b2", "c3"]);
    assert_eq!(listed[1]["settings"]["max_documents"], 11);
    assert_eq!(listed[2]["embedder"]["dimension"], 8);
    // The worker's index learnt of records another process made.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stats = h
            .admin(tenantvec::protocol::AdminVerb::Stats, json!({}))
            .await;
        if stats["registry"]["tenants"] == 3 {
            assert_eq!(stats["registry"]["complete"], true);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the index never counted the imported tenants: {stats:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_of_one_record_never_lose_a_change() {
    let h = Harness::start().await;
    let js = h.jetstream().await;
    let a = Registry::open(&js, &h.settings.nats.prefix, 1)
        .await
        .unwrap();
    let b = Registry::open(&js, &h.settings.nats.prefix, 1)
        .await
        .unwrap();
    let t = TenantId::parse("shared").unwrap();
    a.create(&TenantRecord::new(&t, "2026-12-07T00:00:00Z"))
        .await
        .unwrap();
    // One writer records activity, the other an operator's settings, at once.
    let activity = async {
        for i in 0..25u64 {
            a.update("shared", |r| {
                r.closed(Some(i), None, None, &format!("t{i}"));
                Ok(())
            })
            .await
            .unwrap();
        }
    };
    let operator = async {
        for i in 1..=25u64 {
            b.update("shared", |r| {
                r.settings.max_documents = Some(i);
                Ok(())
            })
            .await
            .unwrap();
        }
    };
    tokio::join!(activity, operator);
    let record = a.get("shared").await.unwrap().unwrap().record;
    assert_eq!(record.documents, Some(24), "the last activity is kept");
    assert_eq!(
        record.settings.max_documents,
        Some(25),
        "the last setting is kept"
    );
    assert_eq!(record.last_active.as_deref(), Some("t24"));
}
