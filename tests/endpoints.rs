//! Every endpoint against a real nats-server and real edge shards on disk.

mod common;

use std::collections::{BTreeSet, HashSet};

use common::{cosine, vector, Harness};
use serde_json::{json, Value};
use tenantvec::config::Layout;
use tenantvec::filter::Filter;
use tenantvec::protocol::{AdminVerb, ErrorCode, Verb};

const DIM: usize = 8;

async fn every_endpoint_happy_path(layout: Layout) {
    let h = Harness::start_with(|s| s.store.layout = layout).await;
    let docs = json!({"documents": [
        {"doc_id": "run", "text": "morning run in the park", "metadata": {"category": "sport"}},
        {"doc_id": "salad", "text": "green salad with lemon", "metadata": {"category": "food"}},
        {"doc_id": "sleep", "text": "sleep eight hours each night", "metadata": {"category": "health", "n": 3}},
    ]});
    assert_eq!(
        h.ok(Verb::Upsert, "alice", docs).await,
        json!({"upserted": 3})
    );
    assert_eq!(
        h.ok(Verb::Count, "alice", json!({})).await,
        json!({"count": 3})
    );

    let found = h
        .ok(Verb::Search, "alice", json!({"query": "a run in the park"}))
        .await;
    let results = found["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "default top_k is 5, three docs exist");
    assert_eq!(results[0]["doc_id"], "run");
    assert_eq!(results[0]["text"], "morning run in the park");
    assert_eq!(results[0]["metadata"], json!({"category": "sport"}));
    let scores: Vec<f64> = results
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "best first: {scores:?}"
    );

    let filtered = h
        .ok(
            Verb::Search,
            "alice",
            json!({"query": "run", "filter": {"category": "health"}, "top_k": 2}),
        )
        .await;
    assert_eq!(filtered["results"].as_array().unwrap().len(), 1);
    assert_eq!(filtered["results"][0]["doc_id"], "sleep");

    let got = h
        .ok(
            Verb::Get,
            "alice",
            json!({"doc_ids": ["sleep", "nope", "run"]}),
        )
        .await;
    let ids: Vec<&str> = got["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["doc_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["sleep", "run"], "request order, unknown ids left out");
    assert!(
        got["documents"][0].get("vector").is_none(),
        "vectors only when asked"
    );
    let with_vec = h
        .ok(
            Verb::Get,
            "alice",
            json!({"doc_ids": ["run"], "with_vectors": true}),
        )
        .await;
    assert_eq!(
        with_vec["documents"][0]["vector"].as_array().unwrap().len(),
        DIM
    );

    assert_eq!(
        h.ok(Verb::Delete, "alice", json!({"doc_ids": ["run", "nope"]}))
            .await,
        json!({"deleted": 1})
    );
    assert_eq!(
        h.ok(
            Verb::Delete,
            "alice",
            json!({"filter": {"category": "food"}})
        )
        .await,
        json!({"deleted": 1})
    );
    assert_eq!(
        h.ok(Verb::Count, "alice", json!({})).await,
        json!({"count": 1})
    );
    assert_eq!(
        h.ok(Verb::Count, "alice", json!({"filter": {"n": {"gte": 3}}}))
            .await,
        json!({"count": 1})
    );
    assert_eq!(
        h.ok(Verb::Drop, "alice", json!({})).await,
        json!({"dropped": true})
    );
    assert_eq!(
        h.ok(Verb::Count, "alice", json!({})).await,
        json!({"count": 0})
    );

    let stats = h.admin(AdminVerb::Stats, json!({})).await;
    for key in [
        "hits",
        "misses",
        "evictions",
        "expirations",
        "size",
        "max_size",
        "ttl_seconds",
        "keys",
        "hit_rate",
    ] {
        assert!(stats.get(key).is_some(), "stats lack {key}: {stats}");
    }
    assert_eq!(stats["max_size"], 10);
    assert_eq!(stats["ttl_seconds"], 3600.0);
    assert_eq!(
        h.admin(AdminVerb::Cleanup, json!({})).await,
        json!({"expired": 0})
    );
    let evicted = h.admin(AdminVerb::Evict, json!({})).await;
    assert!(evicted["evicted"].as_u64().is_some());
    let mut h = h;
    h.stop_worker().expect("worker stops cleanly");
}

async fn upserting_a_doc_id_again_replaces_it(layout: Layout) {
    let h = Harness::start_with(|s| s.store.layout = layout).await;
    let v1 = vector(1, DIM);
    let v2 = vector(2, DIM);
    h.ok(
        Verb::Upsert,
        "bob",
        json!({"documents": [{"doc_id": "d", "text": "first", "vector": v1}]}),
    )
    .await;
    // Twice in one request: the last one wins; and a later request replaces.
    h.ok(
        Verb::Upsert,
        "bob",
        json!({"documents": [
            {"doc_id": "d", "text": "second", "vector": v1},
            {"doc_id": "d", "text": "third", "vector": v2, "metadata": {"v": 3}},
        ]}),
    )
    .await;
    assert_eq!(
        h.ok(Verb::Count, "bob", json!({})).await,
        json!({"count": 1})
    );
    let got = h.ok(Verb::Get, "bob", json!({"doc_ids": ["d"]})).await;
    assert_eq!(got["documents"][0]["text"], "third");
    assert_eq!(got["documents"][0]["metadata"], json!({"v": 3}));
    let hit = h
        .ok(Verb::Search, "bob", json!({"vector": v2, "top_k": 1}))
        .await;
    assert!((hit["results"][0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_has_a_clear_reply() {
    let h = Harness::start().await;
    use ErrorCode::*;
    for bad in ["Alice", "-x", "_x", "a%b"] {
        h.fails(Verb::Search, bad, json!({"query": "x"}), InvalidTenant)
            .await;
    }
    let long = "a".repeat(65);
    h.fails(Verb::Count, &long, json!({}), InvalidTenant).await;

    let raw = h
        .client
        .request("tenantvec.search.carol".into(), &json!("not an object"))
        .await;
    assert!(matches!(raw, Err(tenantvec::client::ClientError::Service(e)) if e.code == BadRequest));
    h.fails(
        Verb::Search,
        "carol",
        json!({"query": "x", "bogus": 1}),
        BadRequest,
    )
    .await;
    h.fails(
        Verb::Search,
        "carol",
        json!({"query": "x", "filter": {}}),
        BadRequest,
    )
    .await;
    h.fails(
        Verb::Search,
        "carol",
        json!({"query": "x", "filter": {"a": {"near": 1}}}),
        BadRequest,
    )
    .await;
    h.fails(
        Verb::Upsert,
        "carol",
        json!({"documents": [{"doc_id": "", "text": "x"}]}),
        BadRequest,
    )
    .await;
    h.fails(Verb::Delete, "carol", json!({}), BadRequest).await;

    h.ok(
        Verb::Upsert,
        "carol",
        json!({"documents": [{"doc_id": "a", "vector": vector(1, DIM)}]}),
    )
    .await;
    let msg = h
        .fails(
            Verb::Upsert,
            "carol",
            json!({"documents": [{"doc_id": "b", "vector": vector(1, DIM + 1)}]}),
            DimensionMismatch,
        )
        .await;
    assert!(msg.contains("9") && msg.contains("8"), "{msg}");
    h.fails(
        Verb::Search,
        "carol",
        json!({"vector": vector(1, 3)}),
        DimensionMismatch,
    )
    .await;

    h.fails(
        Verb::Search,
        "carol",
        json!({"query": "x", "top_k": 1001}),
        TooLarge,
    )
    .await;
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"doc_id": format!("d{i}"), "text": "x"}))
        .collect();
    h.fails(Verb::Upsert, "carol", json!({"documents": many}), TooLarge)
        .await;

    // A file where the tenant's folder should be: the store refuses to use
    // it, the request fails as `internal`, and the worker keeps serving.
    std::fs::write(h.tenant_dir("dave"), b"not a folder").unwrap();
    h.fails(Verb::Count, "dave", json!({}), Internal).await;
    assert_eq!(
        h.ok(Verb::Count, "carol", json!({})).await,
        json!({"count": 1})
    );

    // The error headers of the NATS Services API, beside the JSON body.
    let nats = h.nats().await;
    let reply = nats
        .request("tenantvec.count.NOPE", "{}".into())
        .await
        .unwrap();
    let headers = reply.headers.expect("error headers");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").unwrap().as_str(),
        "400"
    );
    assert!(headers
        .get("Nats-Service-Error")
        .unwrap()
        .as_str()
        .contains("tenant"));
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["error"]["code"], "invalid_tenant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_in_flight_bound_replies_unavailable() {
    let h = Harness::start_with(|s| s.limits.max_in_flight = 1).await;
    let docs: Vec<Value> = (0..200)
        .map(|i| json!({"doc_id": format!("d{i}"), "vector": vector(i, DIM)}))
        .collect();
    let body = json!({"documents": docs});
    let calls = (0..40).map(|i| {
        h.call(
            Verb::Upsert,
            if i % 2 == 0 { "x" } else { "y" },
            body.clone(),
        )
    });
    let outcomes = futures::future::join_all(calls).await;
    let unavailable = outcomes
        .iter()
        .filter(|o| matches!(o, Err(tenantvec::client::ClientError::Service(e)) if e.code == ErrorCode::Unavailable))
        .count();
    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
    assert!(
        unavailable > 0,
        "40 concurrent requests against a bound of 1"
    );
    assert_eq!(ok + unavailable, 40, "every request answered: {outcomes:?}");
    // And the worker still serves.
    assert_eq!(h.ok(Verb::Count, "x", json!({})).await["count"], 200);
}

/// Metadata for doc `i`: every kind of value the filters compare.
fn metadata(i: u64) -> Value {
    let cats = ["health", "finance", "sport", "travel", "food"];
    let mut m = json!({
        "category": cats[(i % 5) as usize],
        "n": i % 10,
        "score": (i % 7) as f64 / 2.0,
        "tags": [format!("t{}", i % 3), format!("t{}", i % 4)],
        "flag": i.is_multiple_of(2),
    });
    if i.is_multiple_of(11) {
        m["category"] = json!(1); // a number where others hold strings
    }
    if i.is_multiple_of(13) {
        m.as_object_mut().unwrap().remove("n");
    }
    m
}

async fn filters_agree_with_brute_force(layout: Layout) {
    let h = Harness::start_with(|s| s.store.layout = layout).await;
    let n = 300u64;
    let docs: Vec<Value> = (0..n)
        .map(|i| json!({"doc_id": format!("d{i}"), "vector": vector(i, DIM), "metadata": metadata(i)}))
        .collect();
    h.ok(Verb::Upsert, "erin", json!({"documents": docs})).await;

    let filters = [
        json!({"category": "health"}),
        json!({"category": ["sport", "food"]}),
        json!({"category": 1}),
        json!({"category": ["health", 1]}),
        json!({"n": {"gte": 2, "lt": 5}}),
        json!({"n": {"gt": 7}}),
        // Both lower (or both upper) bounds: the tighter one decides.
        json!({"n": {"gte": 5, "gt": 1}}),
        json!({"n": {"lt": 3, "lte": 8}}),
        json!({"n": 4}),
        json!({"n": [1, 8]}),
        json!({"score": {"lte": 1.0}}),
        json!({"score": 1.5}),
        json!({"tags": "t2"}),
        json!({"tags": ["t0", "t3"]}),
        json!({"flag": true}),
        json!({"flag": false, "category": "finance"}),
        json!({"category": "sport", "n": {"gte": 0, "lte": 9}, "tags": "t1"}),
        json!({"missing": "x"}),
    ];
    let query = vector(9999, DIM);
    for f in &filters {
        let parsed = Filter::parse(f).unwrap();
        let expected: BTreeSet<String> = (0..n)
            .filter(|i| parsed.matches(metadata(*i).as_object().unwrap()))
            .map(|i| format!("d{i}"))
            .collect();
        let count = h.ok(Verb::Count, "erin", json!({"filter": f})).await;
        assert_eq!(
            count["count"].as_u64().unwrap() as usize,
            expected.len(),
            "count {f}"
        );
        let found = h
            .ok(
                Verb::Search,
                "erin",
                json!({"vector": query, "top_k": 1000, "filter": f}),
            )
            .await;
        let got: BTreeSet<String> = found["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["doc_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got, expected, "search {f}");
        // top_k of them, best first, are the brute-force best.
        let top = h
            .ok(
                Verb::Search,
                "erin",
                json!({"vector": query, "top_k": 5, "filter": f}),
            )
            .await;
        let mut ranked: Vec<(f32, String)> = expected
            .iter()
            .map(|id| {
                let i: u64 = id[1..].parse().unwrap();
                (cosine(&query, &vector(i, DIM)), id.clone())
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        let want: Vec<String> = ranked.into_iter().take(5).map(|(_, id)| id).collect();
        let got: Vec<String> = top["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["doc_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got, want, "top 5 {f}");
    }
    // Delete by filter removes exactly the matching documents.
    let f = json!({"n": {"lt": 3}});
    let parsed = Filter::parse(&f).unwrap();
    let matching = (0..n)
        .filter(|i| parsed.matches(metadata(*i).as_object().unwrap()))
        .count();
    let deleted = h.ok(Verb::Delete, "erin", json!({"filter": f})).await;
    assert_eq!(deleted["deleted"].as_u64().unwrap() as usize, matching);
    let left = h.ok(Verb::Count, "erin", json!({})).await;
    assert_eq!(
        left["count"].as_u64().unwrap() as usize,
        n as usize - matching
    );
}

async fn drop_removes_the_tenant_folder_and_reads_create_nothing(layout: Layout) {
    let h = Harness::start_with(|s| s.store.layout = layout).await;
    // Reads of a tenant with no data answer from nothing and create nothing.
    assert_eq!(
        h.ok(Verb::Count, "frank", json!({})).await,
        json!({"count": 0})
    );
    let empty = h
        .ok(Verb::Search, "frank", json!({"query": "anything"}))
        .await;
    assert_eq!(empty, json!({"results": []}));
    assert_eq!(
        h.ok(Verb::Get, "frank", json!({"doc_ids": ["a"]})).await,
        json!({"documents": []})
    );
    assert!(
        !h.tenant_dir("frank").exists(),
        "a read created the tenant folder"
    );

    h.ok(
        Verb::Upsert,
        "frank",
        json!({"documents": [{"doc_id": "a", "text": "hello world"}]}),
    )
    .await;
    match layout {
        Layout::PerTenant => assert!(h.tenant_dir("frank").join("vector_store").is_dir()),
        Layout::Shared => assert!(
            !h.tenant_dir("frank").exists(),
            "shared layout made a folder"
        ),
    }
    // A neighbour that must survive the drop.
    h.ok(
        Verb::Upsert,
        "grace",
        json!({"documents": [{"doc_id": "a", "text": "hello world"}]}),
    )
    .await;
    assert_eq!(
        h.ok(Verb::Drop, "frank", json!({})).await,
        json!({"dropped": true})
    );
    assert_eq!(
        h.ok(Verb::Count, "grace", json!({})).await,
        json!({"count": 1})
    );
    assert!(!h.tenant_dir("frank").exists(), "drop left the folder");
    assert_eq!(
        h.ok(Verb::Drop, "frank", json!({})).await,
        json!({"dropped": true})
    );
    assert_eq!(
        h.ok(Verb::Count, "frank", json!({})).await,
        json!({"count": 0})
    );
    // And the tenant can start over.
    h.ok(
        Verb::Upsert,
        "frank",
        json!({"documents": [{"doc_id": "b", "text": "again"}]}),
    )
    .await;
    assert_eq!(
        h.ok(Verb::Count, "frank", json!({})).await,
        json!({"count": 1})
    );
}

async fn tenants_never_see_each_other(layout: Layout) {
    let h = Harness::start_with(|s| s.store.layout = layout).await;
    for (tenant, base) in [("ann", 0u64), ("ben", 1000)] {
        let docs: Vec<Value> = (0..20)
            .map(|i| {
                json!({"doc_id": format!("d{i}"), "vector": vector(base + i, DIM),
                       "metadata": {"owner": tenant}})
            })
            .collect();
        h.ok(Verb::Upsert, tenant, json!({"documents": docs})).await;
    }
    for tenant in ["ann", "ben"] {
        let found = h
            .ok(
                Verb::Search,
                tenant,
                json!({"vector": vector(5, DIM), "top_k": 100}),
            )
            .await;
        let owners: HashSet<&str> = found["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["metadata"]["owner"].as_str().unwrap())
            .collect();
        assert_eq!(owners, HashSet::from([tenant]));
        assert_eq!(found["results"].as_array().unwrap().len(), 20);
    }
    // Same doc_id, different tenants: two documents.
    h.ok(Verb::Delete, "ann", json!({"doc_ids": ["d1"]})).await;
    assert_eq!(h.ok(Verb::Count, "ann", json!({})).await["count"], 19);
    assert_eq!(h.ok(Verb::Count, "ben", json!({})).await["count"], 20);
}

both_layouts!(
    every_endpoint_happy_path,
    upserting_a_doc_id_again_replaces_it,
    filters_agree_with_brute_force,
    drop_removes_the_tenant_folder_and_reads_create_nothing,
    tenants_never_see_each_other,
);

/// A client that pipelines requests (publishes without waiting for replies)
/// sees each tenant's applied in the order it sent them, across verbs: an
/// upsert then a delete of one document leaves it deleted, the last of
/// several upserts of one document wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_of_a_tenant_apply_in_send_order() {
    pipelined_requests_apply_in_order(1, 10).await;
}

/// The same over 30 tenants through a pool of 2: requests wait for room and
/// for closing actors, and still keep their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_keep_their_order_through_a_churning_pool() {
    pipelined_requests_apply_in_order(30, 2).await;
}

async fn pipelined_requests_apply_in_order(tenants: u64, pool: usize) {
    let h = Harness::start_with(|s| s.pool.size = pool).await;
    let nats = h.nats().await;
    let inbox = nats.new_inbox();
    let mut replies = nats.subscribe(format!("{inbox}.*")).await.unwrap();
    let n = 300u64;
    let versioned = 7u64;
    let tenant = |k: u64| format!("pipe{}", k % tenants);
    // Per k, to tenant k % tenants: upsert d<k>, upsert e<k % 7> at
    // version k, delete d<k>.
    let mut sent = Vec::new();
    for k in 0..n {
        let requests = [
            (
                Verb::Upsert,
                json!({"documents": [{"doc_id": format!("d{k}"), "vector": vector(k, DIM)}]}),
            ),
            (
                Verb::Upsert,
                json!({"documents": [{"doc_id": format!("e{}", k % versioned),
                    "vector": vector(k, DIM), "metadata": {"v": k}}]}),
            ),
            (Verb::Delete, json!({"doc_ids": [format!("d{k}")]})),
        ];
        for (verb, body) in requests {
            let i = sent.len();
            nats.publish_with_reply(
                format!("tenantvec.{}.{}", verb.as_str(), tenant(k)),
                format!("{inbox}.{i}"),
                body.to_string().into(),
            )
            .await
            .unwrap();
            sent.push(verb);
        }
    }
    nats.flush().await.unwrap();
    let mut got: Vec<Option<Value>> = vec![None; sent.len()];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    for _ in 0..sent.len() {
        let msg = tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut replies))
            .await
            .expect("every request answered within 60 s")
            .unwrap();
        let i: usize = msg.subject.rsplit('.').next().unwrap().parse().unwrap();
        got[i] = Some(serde_json::from_slice(&msg.payload).unwrap());
    }
    let mut misordered = 0;
    for (i, (verb, reply)) in sent.iter().zip(&got).enumerate() {
        let reply = reply.as_ref().unwrap();
        match verb {
            Verb::Upsert => assert_eq!(reply, &json!({"upserted": 1}), "request {i}"),
            // Each delete follows its upsert, so it finds the document.
            _ => misordered += usize::from(reply != &json!({"deleted": 1})),
        }
    }
    assert_eq!(misordered, 0, "deletes applied before their upsert");
    for t in 0..tenants {
        let mine = |k: &u64| k % tenants == t;
        let ids: Vec<String> = (0..n).filter(mine).map(|k| format!("d{k}")).collect();
        assert_eq!(
            h.ok(Verb::Get, &tenant(t), json!({"doc_ids": ids})).await,
            json!({"documents": []}),
            "every d<k> was deleted after it was written"
        );
        let latest = h
            .ok(
                Verb::Search,
                &tenant(t),
                json!({"vector": vector(0, DIM), "top_k": 100}),
            )
            .await;
        let mut versions: Vec<(String, u64)> = latest["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let id = r["doc_id"].as_str().unwrap().to_owned();
                (id, r["metadata"]["v"].as_u64().unwrap())
            })
            .collect();
        versions.sort();
        let mut want: Vec<(String, u64)> = (0..versioned)
            .filter_map(|j| {
                let last = (0..n).filter(mine).filter(|k| k % versioned == j).max()?;
                Some((format!("e{j}"), last))
            })
            .collect();
        want.sort();
        assert_eq!(versions, want, "tenant {t}: each e<j> at its last version");
    }
}

/// Every subject under the prefix reaches the one endpoint: an unknown verb
/// gets a `bad_request` naming the verbs, while JetStream's subjects (ingest,
/// dead letters) are left to the streams: their publishers get the stream's
/// PubAck and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_verbs_are_refused_and_stream_subjects_left_alone() {
    let h = Harness::start().await;
    let nats = h.nats().await;
    let info = nats
        .request("$SRV.INFO.tenantvec", "".into())
        .await
        .unwrap();
    let info: Value = serde_json::from_slice(&info.payload).unwrap();
    // The one endpoint of every request, and the registry's operations.
    let endpoints: Vec<(&str, &str)> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["subject"].as_str().unwrap()))
        .collect();
    assert_eq!(endpoints.len(), 2, "{info}");
    assert!(endpoints.contains(&("requests", "tenantvec.*.*")), "{info}");
    assert!(
        endpoints.contains(&("tenants", "tenantvec.admin.tenants.*")),
        "{info}"
    );
    for subject in [
        "tenantvec.frobnicate.alice",
        "tenantvec.UPSERT.alice",
        "tenantvec.admin.bogus",
    ] {
        let reply = nats.request(subject, "{}".into()).await.unwrap();
        let headers = reply.headers.expect("error headers");
        assert_eq!(
            headers.get("Nats-Service-Error-Code").unwrap().as_str(),
            "400"
        );
        let body: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "{subject}");
        let message = body["error"]["message"].as_str().unwrap();
        for verb in ["upsert", "drop", "admin.stats", "admin.evict"] {
            assert!(message.contains(verb), "{subject}: {message}");
        }
    }

    let body = json!({"documents": [{"doc_id": "j1", "vector": vector(1, DIM)}]});
    for (subject, stream) in [
        ("tenantvec.ingest.alice", "TENANTVEC_INGEST"),
        ("tenantvec.deadletter.alice", "TENANTVEC_DEADLETTER"),
    ] {
        let inbox = nats.new_inbox();
        let mut replies = nats.subscribe(inbox.clone()).await.unwrap();
        nats.publish_with_reply(subject, inbox, body.to_string().into())
            .await
            .unwrap();
        nats.flush().await.unwrap();
        let mut got = Vec::new();
        while let Ok(Some(msg)) = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            futures::StreamExt::next(&mut replies),
        )
        .await
        {
            got.push(msg);
        }
        assert_eq!(got.len(), 1, "{subject}: one reply, the PubAck: {got:?}");
        assert!(got[0].headers.is_none(), "{subject}: {got:?}");
        let ack: Value = serde_json::from_slice(&got[0].payload).unwrap();
        assert_eq!(ack["stream"], stream, "{subject}: {ack}");
    }
    // And the ingest message lands.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while h.ok(Verb::Count, "alice", json!({})).await["count"] != 1 {
        assert!(std::time::Instant::now() < deadline, "ingest never landed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Vectors as base64 of little-endian f32 (the OpenAI API's
/// `encoding_format: "base64"`) mean the same as JSON arrays, in documents,
/// in searches and, when asked, in replies; a bad string gets its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base64_vectors_mean_the_same_as_arrays() {
    use tenantvec::vector::{from_base64, to_base64};
    let h = Harness::start_with(|_| {}).await;
    let (a, b) = (vector(1, DIM), vector(2, DIM));
    let docs = json!({"documents": [
        {"doc_id": "a", "vector": to_base64(&a)},
        {"doc_id": "b", "vector": b},
    ]});
    assert_eq!(h.ok(Verb::Upsert, "v", docs).await, json!({"upserted": 2}));
    let by_array = h
        .ok(Verb::Search, "v", json!({"vector": a, "top_k": 2}))
        .await;
    let by_base64 = h
        .ok(
            Verb::Search,
            "v",
            json!({"vector": to_base64(&a), "top_k": 2}),
        )
        .await;
    assert_eq!(by_array, by_base64);
    assert_eq!(by_array["results"][0]["doc_id"], "a");

    let got = h
        .ok(
            Verb::Get,
            "v",
            json!({"doc_ids": ["a", "b"], "with_vectors": true, "vector_encoding": "base64"}),
        )
        .await;
    let arrays = h
        .ok(
            Verb::Get,
            "v",
            json!({"doc_ids": ["a", "b"], "with_vectors": true}),
        )
        .await;
    for (enc, arr) in got["documents"]
        .as_array()
        .unwrap()
        .iter()
        .zip(arrays["documents"].as_array().unwrap())
    {
        let decoded = from_base64(enc["vector"].as_str().unwrap()).unwrap();
        let array: Vec<f32> = serde_json::from_value(arr["vector"].clone()).unwrap();
        assert_eq!(decoded, array, "the same f32s, bit for bit");
    }
    let hits = h
        .ok(
            Verb::Search,
            "v",
            json!({"vector": a, "with_vectors": true, "vector_encoding": "base64"}),
        )
        .await;
    assert!(hits["results"][0]["vector"].is_string(), "{hits}");

    let code = |r: Result<Value, tenantvec::client::ClientError>| match r {
        Err(tenantvec::client::ClientError::Service(e)) => e.code,
        other => panic!("expected an error reply, got {other:?}"),
    };
    // Three bytes: no f32 vector has that length.
    let short = h.call(Verb::Search, "v", json!({"vector": "AAAA"})).await;
    assert_eq!(code(short), ErrorCode::DimensionMismatch);
    let wrong_dim = h
        .call(
            Verb::Search,
            "v",
            json!({"vector": to_base64(&vector(3, DIM + 1))}),
        )
        .await;
    assert_eq!(code(wrong_dim), ErrorCode::DimensionMismatch);
    let not_base64 = h
        .call(Verb::Search, "v", json!({"vector": "not base64!"}))
        .await;
    assert_eq!(code(not_base64), ErrorCode::BadRequest);
    let bad_encoding = h
        .call(
            Verb::Get,
            "v",
            json!({"doc_ids": ["a"], "vector_encoding": "hex"}),
        )
        .await;
    assert_eq!(code(bad_encoding), ErrorCode::BadRequest);
}
