//! The embedding path of the benchmark: documents sent as text for the
//! worker to embed, and searches by query text, when a remote embedder is
//! configured (`EMBEDDING_MODEL` other than `hashing`).
//!
//! Owns the synthetic notes and queries of this phase and its figures:
//! ingest docs/s through the embedder, and text-search latency with the
//! query cache missed (every query new) and hit (the same queries again). It
//! must never send a vector: the point is to measure the worker's embedding.

use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};

use tenantvec::client::Client;
use tenantvec::protocol::Verb;

const TENANTS: usize = 10;
const DOCS_PER_TENANT: usize = 200;
const DOCS_PER_REQUEST: usize = 100;
const QUERIES: usize = 200;

const MEALS: [&str; 5] = ["oats", "salmon", "pasta", "salad", "eggs"];
const DOINGS: [&str; 5] = [
    "ran 5 km",
    "slept 7 hours",
    "lifted weights",
    "felt calm",
    "walked the dog",
];
const WHEN: [&str; 4] = [
    "in the morning",
    "at noon",
    "in the evening",
    "late at night",
];

/// Note `i`: a short sentence a coaching app would keep.
fn note(i: usize) -> String {
    format!(
        "Day {}: {} {}, then ate {}",
        i,
        DOINGS[i % DOINGS.len()],
        WHEN[(i / 5) % WHEN.len()],
        MEALS[(i / 20) % MEALS.len()]
    )
}

/// Query `i`: distinct text each time (so the first pass misses the cache).
fn query(i: usize) -> String {
    format!(
        "when did I {} {} (question {i})",
        DOINGS[i % DOINGS.len()],
        WHEN[i % WHEN.len()]
    )
}

/// Ingest notes as text with `clients` requests in flight, then search by
/// text with one client, twice over the same queries.
pub async fn run(client: &Client, model: &str, clients: usize) -> anyhow::Result<Value> {
    let mut in_flight = FuturesUnordered::new();
    let started = Instant::now();
    let mut docs = 0usize;
    for t in 0..TENANTS {
        for first in (0..DOCS_PER_TENANT).step_by(DOCS_PER_REQUEST) {
            let tenant = format!("embed{t}");
            let batch: Vec<Value> = (first..first + DOCS_PER_REQUEST)
                .map(|i| json!({"doc_id": format!("n{i}"), "text": note(i)}))
                .collect();
            in_flight.push(async move {
                client
                    .tenant(Verb::Upsert, &tenant, &json!({ "documents": batch }))
                    .await
            });
            while in_flight.len() >= clients.max(1) {
                if let Some(r) = in_flight.next().await {
                    r?;
                    docs += DOCS_PER_REQUEST;
                }
            }
        }
    }
    while let Some(r) = in_flight.next().await {
        r?;
        docs += DOCS_PER_REQUEST;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut passes = Vec::new();
    for _ in 0..2 {
        let mut times = Vec::with_capacity(QUERIES);
        for i in 0..QUERIES {
            let tenant = format!("embed{}", i % TENANTS);
            let started = Instant::now();
            client
                .tenant(
                    Verb::Search,
                    &tenant,
                    &json!({"query": query(i), "top_k": 5}),
                )
                .await?;
            times.push(started.elapsed());
        }
        passes.push(super::percentiles(times));
    }
    let cached = passes.pop().unwrap_or(Value::Null);
    let first = passes.pop().unwrap_or(Value::Null);
    Ok(json!({
        "model": model,
        "ingest": {"docs": docs, "seconds": seconds, "docs_per_s": docs as f64 / seconds,
                   "docs_per_request": DOCS_PER_REQUEST, "in_flight": clients},
        "search_text": first,
        "search_text_cached": cached,
    }))
}
