//! The timed passes: the bare NATS round trip as the floor, ingest by
//! upsert and by JetStream, and a search pass with C clients.
//!
//! Owns what each pass times and how. It must never count a request it did
//! not see answered.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde_json::{json, Value};

use super::latency::percentiles;
use super::workload::Prepared;
use super::BenchOptions;
use tenantvec::client::{Client, DocBatches, DocumentsBody};
use tenantvec::protocol::Verb;

/// The floor: an echo responder in this process, asked with query-sized
/// bodies and answering with a search-reply-sized body.
pub(super) async fn floor(
    client: &Client,
    queries: &[Prepared],
    opts: &BenchOptions,
) -> anyhow::Result<Value> {
    let nats = client.nats().clone();
    let subject = format!("{}.bench.echo", client.subjects().prefix());
    let mut sub = nats.subscribe(subject.clone()).await?;
    let reply_body = Bytes::from(vec![b' '; 1200]);
    let responder = {
        let nats = nats.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if let Some(reply) = msg.reply {
                    let _ = nats.publish(reply, reply_body.clone()).await;
                }
            }
        })
    };
    nats.flush().await?;
    let mut lat = Vec::with_capacity(opts.samples);
    for i in 0..opts.samples {
        let body = queries[i % queries.len()].body.clone();
        let t0 = Instant::now();
        nats.request(subject.clone(), body).await?;
        lat.push(t0.elapsed());
    }
    let n = opts.samples * 2;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..opts.clients)
        .map(|_| {
            let (nats, subject, next) = (nats.clone(), subject.clone(), next.clone());
            let bodies: Vec<Bytes> = queries.iter().take(64).map(|q| q.body.clone()).collect();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<(), anyhow::Error>(());
                    }
                    nats.request(subject.clone(), bodies[i % bodies.len()].clone())
                        .await?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let qps = n as f64 / started.elapsed().as_secs_f64();
    responder.abort();
    Ok(json!({"latency_ms": percentiles(lat), "qps_concurrent": qps}))
}

/// Every document of `file` through JetStream, waiting until the worker
/// has committed them; the client's figures and the seconds it all took.
pub(super) async fn ingest_jetstream(client: &Client, file: &Path) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut js = client.ingest_file(None, file, 1000, true).await?;
    js["seconds"] = json!(started.elapsed().as_secs_f64());
    Ok(js)
}

/// Every document of the workload by `upsert` requests, `clients` in flight.
pub(super) async fn ingest_upsert(
    client: &Client,
    workload: &Path,
    opts: &BenchOptions,
) -> anyhow::Result<Value> {
    let file = workload.join("docs.jsonl");
    let mut batches = DocBatches::open(&file, None, 1000, client.max_batch_bytes())?;
    let mut in_flight = FuturesUnordered::new();
    let (mut docs, mut requests) = (0u64, 0u64);
    let started = Instant::now();
    while let Some((tenant, batch)) = batches.next_batch()? {
        let subject = client.subjects().tenant(Verb::Upsert, &tenant);
        let body = serde_json::to_vec(&DocumentsBody { documents: &batch })?;
        in_flight.push(async move {
            client
                .request_bytes(subject, Bytes::from(body))
                .await
                .map(|v| v["upserted"].as_u64().unwrap_or(0))
        });
        while in_flight.len() >= opts.clients.max(1) {
            if let Some(r) = in_flight.next().await {
                docs += r?;
                requests += 1;
            }
        }
    }
    while let Some(r) = in_flight.next().await {
        docs += r?;
        requests += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(
        json!({"docs": docs, "requests": requests, "seconds": seconds,
              "docs_per_s": docs as f64 / seconds, "in_flight": opts.clients}),
    )
}

/// Send every query in workload order with `clients` concurrent clients.
/// With one client and `pool` given, each query is also classed as warm or
/// cold by replaying the pool's LRU on the client side.
pub(super) async fn search_pass(
    client: &Client,
    queries: &[Prepared],
    truth: &HashMap<u64, Vec<String>>,
    clients: usize,
    pool: Option<usize>,
) -> anyhow::Result<Value> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let next = next.clone();
        tasks.push(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(q) = queries.get(i) else {
                    return Ok::<_, anyhow::Error>(out);
                };
                let subject = client.subjects().tenant(Verb::Search, &q.tenant);
                let t0 = Instant::now();
                let reply = client.request_bytes(subject, q.body.clone()).await?;
                out.push((i, t0.elapsed(), reply));
            }
        });
    }
    let mut results: Vec<(usize, Duration, Value)> = futures::future::try_join_all(tasks)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let seconds = started.elapsed().as_secs_f64();
    results.sort_by_key(|r| r.0);

    let (mut rec_u, mut rec_f, mut leaks) = (Vec::new(), Vec::new(), 0usize);
    let (mut all, mut warm, mut cold) = (Vec::new(), Vec::new(), Vec::new());
    let mut lru: VecDeque<&str> = VecDeque::new();
    for (i, latency, reply) in &results {
        let q = &queries[*i];
        let ids: Vec<&str> = reply["results"]
            .as_array()
            .map(|a| a.iter().filter_map(|h| h["doc_id"].as_str()).collect())
            .unwrap_or_default();
        leaks += ids
            .iter()
            .filter(|id| !id.starts_with(&format!("{}-", q.tenant)))
            .count();
        let want = truth.get(&q.qid).cloned().unwrap_or_default();
        let recall = if want.is_empty() {
            1.0
        } else {
            want.iter().filter(|w| ids.contains(&w.as_str())).count() as f64 / want.len() as f64
        };
        if q.filtered {
            rec_f.push(recall)
        } else {
            rec_u.push(recall)
        }
        all.push(*latency);
        if let Some(size) = pool {
            let hit = lru.iter().position(|t| *t == q.tenant);
            match hit {
                Some(p) => {
                    lru.remove(p);
                    warm.push(*latency);
                }
                None => {
                    if lru.len() >= size {
                        lru.pop_front();
                    }
                    cold.push(*latency);
                }
            }
            lru.push_back(&q.tenant);
        }
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let mut out = json!({
        "clients": clients,
        "queries": results.len(),
        "seconds": seconds,
        "qps": results.len() as f64 / seconds,
        "latency_ms": percentiles(all),
        "recall_unfiltered": mean(&rec_u),
        "recall_filtered": mean(&rec_f),
        "filtered_queries": rec_f.len(),
        "isolation_violations": leaks,
    });
    if pool.is_some() {
        out["cold_activations"] = json!(cold.len());
        out["warm_latency_ms"] = percentiles(warm);
        out["cold_latency_ms"] = percentiles(cold);
    }
    Ok(out)
}
