//! The noisy-neighbour phases of `tenantvec bench`: what one tenant's flood
//! costs another tenant.
//!
//! Owns two measurements, each taken with and without the load in one run
//! against one worker, so the ratio compares like with like on whatever
//! machine runs it: a victim tenant searching at a steady rate while a
//! flooding tenant sends large upserts and `top_k` 1000 searches from many
//! pipelining clients (request-reply); and a victim's single ingest message
//! while another tenant's backlog of documents waits in the JetStream
//! ingest stream. It makes its own synthetic tenants and vectors (no
//! workload files), and must never count a figure it did not measure here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde_json::{json, Value};

use super::{percentiles, quantile};
use tenantvec::client::Client;
use tenantvec::config::Settings;
use tenantvec::protocol::{ErrorBody, ErrorCode, Verb, HEADER_ERROR_CODE};

const VICTIM: &str = "nn-victim";
const FLOOD: &str = "nn-flood";
const INGEST_VICTIM: &str = "nn-ingest-victim";
const BACKLOG: &str = "nn-backlog";

/// How hard the flood pushes; also on the command line of `tenantvec bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct NoisyOptions {
    /// Flooding clients (each its own NATS connection).
    #[arg(long, default_value_t = 16)]
    pub flood_clients: usize,
    /// Requests each flooding client keeps in flight (16 × 96: past the
    /// default `limits.tenant_queue` of 1,000).
    #[arg(long, default_value_t = 96)]
    pub flood_depth: usize,
    /// How long a flooding client waits before it uses a slot again after a
    /// `rate_limited` or `unavailable` reply, in ms, as a client library's
    /// retry would (0: at once, a hostile client that costs the worker and
    /// nats-server the bandwidth of every refused body).
    #[arg(long, default_value_t = 100)]
    pub flood_backoff_ms: u64,
    /// Documents per flood upsert.
    #[arg(long, default_value_t = 200)]
    pub flood_batch: usize,
    /// Documents of the flooding tenant before the flood (its searches scan them).
    #[arg(long, default_value_t = 20_000)]
    pub flood_docs: usize,
    /// Victim searches per second.
    #[arg(long, default_value_t = 50)]
    pub victim_rate: u32,
    /// Victim searches in each half (without and with the flood).
    #[arg(long, default_value_t = 500)]
    pub victim_searches: usize,
    /// Documents of the ingest backlog (0: skip the ingest phase).
    #[arg(long, default_value_t = 100_000)]
    pub backlog_docs: usize,
}

/// A deterministic unit vector, each component rounded to four decimals:
/// a short JSON number (as f64: an f32 would print its binary expansion
/// through `serde_json::Value`), so 200 documents of 384 dimensions fit
/// NATS's default 1 MiB payload.
fn vector(seed: u64, dim: usize) -> Vec<f64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f64> = (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f64 / (1u64 << 24) as f64) - 0.5
        })
        .collect();
    let n = v
        .iter()
        .map(|a| a * a)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    v.iter_mut().for_each(|a| *a = (*a / n * 1e4).round() / 1e4);
    v
}

fn docs_body(tenant: &str, from: usize, n: usize, dim: usize, seed: u64) -> Bytes {
    let documents: Vec<Value> = (from..from + n)
        .map(|i| {
            json!({
                "doc_id": format!("{tenant}-{i}"),
                "text": format!("document {i} of {tenant}"),
                "metadata": {"n": i, "kind": if i % 2 == 0 { "even" } else { "odd" }},
                "vector": vector(seed ^ i as u64, dim),
            })
        })
        .collect();
    Bytes::from(serde_json::to_vec(&json!({ "documents": documents })).unwrap_or_default())
}

/// The error code of a reply, if it is an error.
fn error_code(msg: &async_nats::Message) -> Option<ErrorCode> {
    msg.headers.as_ref()?.get(HEADER_ERROR_CODE)?;
    serde_json::from_slice::<ErrorBody>(&msg.payload)
        .map(|b| b.error.code)
        .ok()
        .or(Some(ErrorCode::Internal))
}

/// Load `n` documents into `tenant`, `batch` at a time.
async fn load(
    client: &Client,
    tenant: &str,
    n: usize,
    batch: usize,
    dim: usize,
) -> anyhow::Result<()> {
    let subject = client.subjects().tenant(Verb::Upsert, tenant);
    let mut from = 0;
    while from < n {
        let k = batch.min(n - from);
        client
            .request_bytes(subject.clone(), docs_body(tenant, from, k, dim, 7))
            .await?;
        from += k;
    }
    Ok(())
}

/// What the victim measured: its searches' latencies and errors, and the
/// bare NATS round trips (an echo of the same body) taken between them.
struct Victim {
    searches: Vec<Duration>,
    errors: Vec<String>,
    echoes: Vec<Duration>,
}

/// The victim's paced searches: `n` at `rate` per second, each timed from
/// its send; errors counted by code. After each, the same body to `echo`
/// (a bare responder on a connection of its own): what NATS and the machine
/// alone cost at that moment, with no worker in the path.
async fn victim_searches(
    victim: &async_nats::Client,
    subject: &str,
    echo: &str,
    n: usize,
    rate: u32,
    dim: usize,
) -> anyhow::Result<Victim> {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = tokio::time::Instant::now();
    let mut out = Victim {
        searches: Vec::with_capacity(n),
        errors: Vec::new(),
        echoes: Vec::with_capacity(n),
    };
    for i in 0..n {
        tokio::time::sleep_until(start + period * i as u32).await;
        let body = Bytes::from(serde_json::to_vec(
            &json!({"vector": vector(1000 + i as u64, dim), "top_k": 10}),
        )?);
        let t0 = Instant::now();
        match victim.request(subject.to_owned(), body.clone()).await {
            Ok(reply) => match error_code(&reply) {
                None => out.searches.push(t0.elapsed()),
                Some(code) => out.errors.push(code.as_str().to_owned()),
            },
            Err(e) => out.errors.push(format!("request: {e}")),
        }
        let t0 = Instant::now();
        if victim.request(echo.to_owned(), body).await.is_ok() {
            out.echoes.push(t0.elapsed());
        }
    }
    Ok(out)
}

/// [`victim_searches`] on a thread, a runtime and NATS connections of their
/// own. On the runtime of the flooding clients, in this same process, the
/// victim's replies would wait behind their tasks, and the figure would
/// measure the benchmark's own scheduling, not the worker's; a real victim
/// is another program.
async fn victim_apart(
    nats: &tenantvec::config::NatsSettings,
    subject: &str,
    n: usize,
    rate: u32,
    dim: usize,
) -> anyhow::Result<Victim> {
    let (nats, subject) = (nats.clone(), subject.to_owned());
    let thread = std::thread::Builder::new()
        .name("bench-victim".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let victim = tenantvec::transport::connect(&nats).await?;
                let responder = tenantvec::transport::connect(&nats).await?;
                let echo = responder.new_inbox();
                let mut requests = responder.subscribe(echo.clone()).await?;
                responder.flush().await?;
                let answering = tokio::spawn(async move {
                    while let Some(m) = requests.next().await {
                        if let Some(reply) = m.reply {
                            let _ = responder.publish(reply, m.payload).await;
                        }
                    }
                });
                let measured = victim_searches(&victim, &subject, &echo, n, rate, dim).await;
                answering.abort();
                measured
            })
        })?;
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the victim's thread panicked"))?
}

#[derive(Default)]
struct FloodCounts {
    ok: AtomicU64,
    rate_limited: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
    upserted_docs: AtomicU64,
    searches: AtomicU64,
    /// What the first request that failed otherwise said.
    first_other: std::sync::Mutex<Option<String>>,
}

/// What every flooding client shares.
struct Flood {
    upsert: String,
    search: String,
    bodies: Arc<Vec<Bytes>>,
    query: Bytes,
    opts: NoisyOptions,
    counts: Arc<FloodCounts>,
    stop: Arc<AtomicBool>,
}

/// One flooding client: alternately an upsert of `bodies` and a `top_k`
/// 1000 search, `depth` requests in flight, until `stop`.
async fn flood_client(nats: async_nats::Client, flood: Arc<Flood>) {
    let Flood {
        upsert,
        search,
        bodies,
        query,
        opts,
        counts,
        stop,
    } = &*flood;
    let mut in_flight = FuturesUnordered::new();
    let mut i = 0usize;
    loop {
        while !stop.load(Ordering::Relaxed) && in_flight.len() < opts.flood_depth {
            let is_upsert = i.is_multiple_of(2);
            let (subject, body) = match is_upsert {
                true => (upsert.clone(), bodies[i / 2 % bodies.len()].clone()),
                false => (search.clone(), query.clone()),
            };
            let nats = nats.clone();
            let backoff = Duration::from_millis(opts.flood_backoff_ms);
            in_flight.push(async move {
                let outcome = nats.request(subject, body).await;
                let refused =
                    outcome.as_ref().ok().and_then(error_code).is_some_and(|c| {
                        matches!(c, ErrorCode::RateLimited | ErrorCode::Unavailable)
                    });
                if refused && !backoff.is_zero() {
                    tokio::time::sleep(backoff).await;
                }
                (is_upsert, outcome)
            });
            i += 1;
        }
        let Some((is_upsert, outcome)) = in_flight.next().await else {
            return;
        };
        let counter = match outcome.as_ref().map(error_code) {
            Ok(None) => {
                match is_upsert {
                    true => counts
                        .upserted_docs
                        .fetch_add(opts.flood_batch as u64, Ordering::Relaxed),
                    false => counts.searches.fetch_add(1, Ordering::Relaxed),
                };
                &counts.ok
            }
            Ok(Some(ErrorCode::RateLimited)) => &counts.rate_limited,
            Ok(Some(ErrorCode::Unavailable)) => &counts.unavailable,
            other => {
                let mut first = counts.first_other.lock().unwrap_or_else(|p| p.into_inner());
                if first.is_none() {
                    *first = Some(match other {
                        Ok(code) => format!("{code:?}"),
                        Err(e) => e.to_string(),
                    });
                }
                &counts.other
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The request-reply phase: victim searches without, then with, the flood.
pub async fn request_reply(settings: &Settings, opts: &NoisyOptions) -> anyhow::Result<Value> {
    let dim = settings.store.dimension;
    let loader = Client::connect(settings).await?;
    eprintln!(
        "bench: noisy neighbour: loading {} documents into {FLOOD}",
        opts.flood_docs
    );
    // Where the server puts each of the two: with request partitions, the
    // figure only means something when they are apart.
    let nats = loader.nats();
    let mut mapped = nats
        .subscribe(format!("{}.count.*.*", settings.nats.prefix))
        .await?;
    tenantvec::transport::partitions::settled(nats, Duration::from_secs(5)).await?;
    load(&loader, VICTIM, 2000, 100, dim).await?;
    load(
        &loader,
        FLOOD,
        opts.flood_docs,
        opts.flood_batch.max(1),
        dim,
    )
    .await?;
    let mut partition_of = serde_json::Map::new();
    for tenant in [VICTIM, FLOOD] {
        let count = loader.subjects().tenant(Verb::Count, tenant);
        loader
            .request_bytes(count, Bytes::from_static(b"{}"))
            .await?;
    }
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), mapped.next()).await {
        let mut tokens = m.subject.as_str().rsplit('.');
        if let (Some(k), Some(tenant)) = (tokens.next(), tokens.next()) {
            partition_of.insert(tenant.to_owned(), json!(k.parse::<u64>().ok()));
        }
    }
    drop(mapped);

    // The victim is a client of its own (`victim_apart`).
    let victim_subject = loader.subjects().tenant(Verb::Search, VICTIM);
    eprintln!(
        "bench: noisy neighbour: victim alone, {} searches at {}/s",
        opts.victim_searches, opts.victim_rate
    );
    let alone = victim_apart(
        &settings.nats,
        &victim_subject,
        opts.victim_searches,
        opts.victim_rate,
        dim,
    )
    .await?;

    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..8)
            .map(|k| {
                let from = (k * opts.flood_batch) % opts.flood_docs.max(1);
                docs_body(FLOOD, from, opts.flood_batch.max(1), dim, 100 + k as u64)
            })
            .collect(),
    );
    let query = Bytes::from(serde_json::to_vec(
        &json!({"vector": vector(5, dim), "top_k": 1000}),
    )?);
    let counts = Arc::new(FloodCounts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let flood = Arc::new(Flood {
        upsert: loader.subjects().tenant(Verb::Upsert, FLOOD),
        search: loader.subjects().tenant(Verb::Search, FLOOD),
        bodies,
        query,
        opts: opts.clone(),
        counts: counts.clone(),
        stop: stop.clone(),
    });
    let mut flooders = Vec::new();
    for _ in 0..opts.flood_clients.max(1) {
        let nats = tenantvec::transport::connect(&settings.nats).await?;
        flooders.push(tokio::spawn(flood_client(nats, flood.clone())));
    }
    eprintln!(
        "bench: noisy neighbour: victim under a flood of {} clients x {} in flight",
        opts.flood_clients, opts.flood_depth
    );
    // Let the flood reach its steady state before the victim's clock runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flood_started = Instant::now();
    let before = counts.ok.load(Ordering::Relaxed);
    let flooded = victim_apart(
        &settings.nats,
        &victim_subject,
        opts.victim_searches,
        opts.victim_rate,
        dim,
    )
    .await?;
    let seconds = flood_started.elapsed().as_secs_f64();
    let during = counts.ok.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = f.await;
    }
    let p99 = |xs: &[Duration]| quantile(xs, 0.99);
    let ratio = |alone: &[Duration], flooded: &[Duration]| match (p99(alone), p99(flooded)) {
        (Some(a), Some(f)) if a > 0.0 => json!(f / a),
        _ => Value::Null,
    };
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let victim_errors = [alone.errors, flooded.errors].concat();
    Ok(json!({
        "victim_p99_ratio": ratio(&alone.searches, &flooded.searches),
        "echo_p99_ratio": ratio(&alone.echoes, &flooded.echoes),
        "victim_alone_ms": percentiles(alone.searches),
        "victim_flooded_ms": percentiles(flooded.searches),
        "echo_alone_ms": percentiles(alone.echoes),
        "echo_flooded_ms": percentiles(flooded.echoes),
        "request_partitions": settings.nats.request_partitions,
        "partition_of": partition_of,
        "victim_errors": victim_errors.len(),
        "victim_error_codes": victim_errors,
        "flood": {
            "clients": opts.flood_clients, "depth": opts.flood_depth,
            "backoff_ms_after_refusal": opts.flood_backoff_ms,
            "batch_docs": opts.flood_batch, "tenant_docs": opts.flood_docs,
            "ok": load(&counts.ok), "ok_per_s_while_measured": during as f64 / seconds,
            "rate_limited": load(&counts.rate_limited),
            "unavailable": load(&counts.unavailable), "other_errors": load(&counts.other),
            "first_other_error": counts.first_other.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            "upserted_docs": load(&counts.upserted_docs),
            "searches_top_k_1000": load(&counts.searches),
        },
        "victim_rate_per_s": opts.victim_rate,
    }))
}

/// Publish `docs` documents of `tenant` to the ingest stream, 100 a message.
async fn publish_backlog(
    js: &async_nats::jetstream::Context,
    subject: &str,
    tenant: &str,
    docs: usize,
    dim: usize,
) -> anyhow::Result<()> {
    let mut acks = FuturesUnordered::new();
    let mut from = 0;
    while from < docs {
        let k = 100.min(docs - from);
        let ack = js
            .publish(subject.to_owned(), docs_body(tenant, from, k, dim, 11))
            .await?;
        acks.push(std::future::IntoFuture::into_future(ack));
        while acks.len() >= 64 {
            if let Some(a) = acks.next().await {
                a?;
            }
        }
        from += k;
    }
    while let Some(a) = acks.next().await {
        a?;
    }
    Ok(())
}

/// Publish one document of the ingest victim and time until `get` finds it.
async fn one_ingest(
    client: &Client,
    js: &async_nats::jetstream::Context,
    subject: &str,
    i: usize,
    dim: usize,
) -> anyhow::Result<Duration> {
    let doc_id = format!("{INGEST_VICTIM}-{i}");
    let t0 = Instant::now();
    js.publish(subject.to_owned(), docs_body(INGEST_VICTIM, i, 1, dim, 3))
        .await?
        .await?;
    let get = client.subjects().tenant(Verb::Get, INGEST_VICTIM);
    let body = Bytes::from(serde_json::to_vec(&json!({ "doc_ids": [doc_id] }))?);
    loop {
        let found = client.request_bytes(get.clone(), body.clone()).await?;
        if found["documents"].as_array().is_some_and(|d| !d.is_empty()) {
            return Ok(t0.elapsed());
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "the ingest victim's message was not applied within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The ingest phase, the first half: with the worker stopped, a backlog of
/// `backlog_docs` documents for one tenant is published; returns once the
/// stream holds it. [`ingest_measure`] runs after the worker has started.
pub async fn ingest_backlog(settings: &Settings, opts: &NoisyOptions) -> anyhow::Result<()> {
    let client = Client::connect(settings).await?;
    let js = async_nats::jetstream::new(client.nats().clone());
    let names = tenantvec::names::Names::new(client.subjects().prefix());
    eprintln!(
        "bench: noisy neighbour (ingest): publishing a backlog of {} documents for {BACKLOG}",
        opts.backlog_docs
    );
    publish_backlog(
        &js,
        &names.ingest_subject(BACKLOG),
        BACKLOG,
        opts.backlog_docs,
        settings.store.dimension,
    )
    .await
}

/// The ingest phase, the second half: the victim's single messages while the
/// backlog is being applied (one every 200 ms until it is gone), then as
/// many alone.
pub async fn ingest_measure(settings: &Settings) -> anyhow::Result<Value> {
    let dim = settings.store.dimension;
    let client = Client::connect(settings).await?;
    let js = async_nats::jetstream::new(client.nats().clone());
    let names = tenantvec::names::Names::new(client.subjects().prefix());
    let subject = names.ingest_subject(INGEST_VICTIM);
    // Filed under its partition too when the worker runs in a fleet.
    let backlog_filters = names.stored_filters(BACKLOG);
    let mut stream = js.get_stream(&names.ingest_stream).await?;
    let started = Instant::now();
    let mut behind = Vec::new();
    let mut i = 0;
    loop {
        let mut pending = 0;
        for filter in &backlog_filters {
            pending += tenantvec::client::pending_on(&mut stream, filter)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if pending == 0 {
            break;
        }
        behind.push(one_ingest(&client, &js, &subject, i, dim).await?);
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained = started.elapsed().as_secs_f64();
    let mut alone = Vec::new();
    for _ in 0..behind.len().max(10) {
        alone.push(one_ingest(&client, &js, &subject, i, dim).await?);
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let max = |xs: &[Duration]| xs.iter().max().map(|d| d.as_secs_f64() * 1000.0);
    Ok(json!({
        "victim_alone_ms": percentiles(alone.clone()),
        "victim_behind_backlog_ms": percentiles(behind.clone()),
        "victim_alone_max_ms": max(&alone),
        "victim_behind_backlog_max_ms": max(&behind),
        "backlog_drained_seconds": drained,
    }))
}
