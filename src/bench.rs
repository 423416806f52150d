//! `tenantvec bench`: the benchmark, end to end over NATS, on the shared
//! multi-tenant workload (`docs.jsonl`, `queries.jsonl`, `truth.jsonl`).
//!
//! Owns the phases (the bare NATS round trip as the floor, ingest by upsert
//! and by JetStream, Zipf-ordered search with one and with C clients, warm
//! search, and the noisy-neighbour phases of [`noisy`]), their timing and
//! the report. It runs the worker it measures as a
//! child process (so the worker's memory is its own) and talks to it only over
//! NATS, like any client. It must never report a figure it did not measure in
//! this run.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use tenantvec::client::{Client, DocBatches, DocumentsBody};
use tenantvec::config::Settings;
use tenantvec::protocol::{AdminVerb, Verb};

pub mod embedding;
pub mod noisy;

/// What to run and how; also the command line of `tenantvec bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Folder with docs.jsonl, queries.jsonl, truth.jsonl, meta.json.
    #[arg(long, value_name = "DIR", required_unless_present_any = ["noisy_only", "embedding_only"])]
    pub workload: Option<PathBuf>,
    /// Run only the noisy-neighbour phases (synthetic tenants, no workload).
    #[arg(long)]
    pub noisy_only: bool,
    /// Run only the embedding path (needs EMBEDDING_MODEL other than hashing).
    #[arg(long, conflicts_with = "noisy_only")]
    pub embedding_only: bool,
    /// Leave out the noisy-neighbour phases.
    #[arg(long, conflicts_with = "noisy_only")]
    pub skip_noisy: bool,
    #[command(flatten)]
    pub noisy: noisy::NoisyOptions,
    /// Concurrent clients for the concurrent phases.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Data root of the worker (default: a new temp folder, removed after).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    pub pool_size: usize,
    /// Pool size of the warm phase (every queried tenant stays open).
    #[arg(long, default_value_t = 1000)]
    pub warm_pool_size: usize,
    /// Round trips measured for the floor.
    #[arg(long, default_value_t = 2000)]
    pub samples: usize,
    /// The data root already holds the workload: skip the ingest phases.
    #[arg(long)]
    pub skip_ingest: bool,
    /// Store layout of the worker under test.
    #[arg(long, value_enum, default_value = "per_tenant")]
    pub layout: tenantvec::config::Layout,
    /// Store backend of the worker under test; `qdrant` uses the server of
    /// QDRANT_URL (`store.qdrant_url`).
    #[arg(long, value_enum, default_value = "edge")]
    pub backend: tenantvec::config::Backend,
    /// Collection prefix of a qdrant run. Its collections are deleted before
    /// the ingest phases, and after the run when no `--data` is given.
    #[arg(long, default_value = "tvbench_")]
    pub collection_prefix: String,
}

#[derive(Deserialize)]
struct Query {
    qid: u64,
    tenant: String,
    top_k: usize,
    filter: Option<Value>,
    vector: Vec<f32>,
}

/// A query ready to send: its body serialised before any clock starts.
struct Prepared {
    qid: u64,
    tenant: String,
    filtered: bool,
    body: Bytes,
}

/// The worker under test, as a child process; stopped with SIGTERM on drop.
struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    fn start(
        settings: &Settings,
        opts: &BenchOptions,
        data: &Path,
        pool_size: usize,
    ) -> anyhow::Result<Self> {
        let layout = match opts.layout {
            tenantvec::config::Layout::PerTenant => "per_tenant",
            tenantvec::config::Layout::Shared => "shared",
        };
        let backend = match opts.backend {
            tenantvec::config::Backend::Edge => "edge",
            tenantvec::config::Backend::Qdrant => "qdrant",
        };
        let child = Command::new(std::env::current_exe()?)
            .args(["serve", "--prefix", &settings.nats.prefix])
            .env("NATS_URL", &settings.nats.url)
            .env("VECTOR_STORE_FOLDER", data)
            .env("VECTOR_STORE_POOL_SIZE", pool_size.to_string())
            .env("TENANTVEC_LAYOUT", layout)
            .env("TENANTVEC_BACKEND", backend)
            .env("QDRANT_URL", &settings.store.qdrant_url)
            .env("QDRANT_COLLECTION_PREFIX", &opts.collection_prefix)
            // Not the default metrics port, which a running worker may hold;
            // BENCH_METRICS_LISTEN gives one, to watch the worker's own
            // figures during a run.
            .env(
                "TENANTVEC_METRICS_LISTEN",
                std::env::var("BENCH_METRICS_LISTEN").unwrap_or_default(),
            )
            // BENCH_WORKER_LOG sets the worker's log filter, e.g. to time
            // shard opens with "warn,tenantvec::store=debug".
            .env(
                "RUST_LOG",
                std::env::var("BENCH_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Self { child })
    }

    /// Memory of the worker, in MiB.
    fn rss_mb(&self) -> Value {
        json!(tenantvec::memory::Memory::of(self.child.id()))
    }

    fn stop(mut self) -> anyhow::Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()?;
            let status = self.child.wait()?;
            anyhow::ensure!(status.success(), "the worker exited with {status}");
        }
        Ok(())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// Run every phase and return the report.
pub async fn run(settings: &Settings, opts: &BenchOptions) -> anyhow::Result<Value> {
    let mut _temp = None;
    let data = match &opts.data {
        Some(d) => d.clone(),
        None => {
            let temp = TempData::create()?;
            let path = temp.0.clone();
            _temp = Some(temp);
            path
        }
    };
    let client = Client::connect(settings).await?;
    if opts.embedding_only {
        let mut report = json!({
            "peer": "tenantvec",
            "version": env!("CARGO_PKG_VERSION"),
            "machine": machine(),
            "args": {"clients": opts.clients, "pool_size": opts.pool_size,
                     "layout": opts.layout, "backend": opts.backend, "data": data},
        });
        embedding_phase(settings, opts, &data, &client, &mut report).await?;
        anyhow::ensure!(
            !report["embedding"].is_null(),
            "--embedding-only needs EMBEDDING_MODEL set to a model (and OPENAI_BASE_URL)"
        );
        return Ok(report);
    }
    if opts.noisy_only {
        let mut report = json!({
            "peer": "tenantvec",
            "version": env!("CARGO_PKG_VERSION"),
            "machine": machine(),
            "args": {"pool_size": opts.pool_size, "layout": opts.layout,
                     "backend": opts.backend, "data": data},
        });
        noisy_phases(settings, opts, &data, &client, &mut report).await?;
        return Ok(report);
    }
    let workload = opts
        .workload
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--workload is needed"))?;
    let queries = read_queries(&workload.join("queries.jsonl"))?;
    let truth = read_truth(&workload.join("truth.jsonl"))?;
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(workload.join("meta.json")).unwrap_or_else(|_| "{}".into()),
    )?;
    let mut report = json!({
        "peer": "tenantvec",
        "version": env!("CARGO_PKG_VERSION"),
        "dataset": meta,
        "machine": machine(),
        "args": {"clients": opts.clients, "pool_size": opts.pool_size, "layout": opts.layout,
                 "backend": opts.backend,
                 "warm_pool_size": opts.warm_pool_size, "data": data},
    });

    eprintln!("bench: floor (bare NATS round trip)");
    report["floor"] = floor(&client, &queries, opts).await?;

    let on_qdrant = opts.backend == tenantvec::config::Backend::Qdrant;
    if on_qdrant {
        let version = tenantvec::store::qdrant::client(&settings.store)?
            .health_check()
            .await?
            .version;
        report["qdrant"] = json!({"url": tenantvec::config::redact_urls(&settings.store.qdrant_url),
                                  "version": version});
        if !opts.skip_ingest {
            clear_collections(settings, &opts.collection_prefix).await?;
        }
    }
    let worker = WorkerProcess::start(settings, opts, &data, opts.pool_size)?;
    wait_ready(&client).await?;
    if !opts.skip_ingest {
        eprintln!("bench: ingest by upsert request-reply (creates the tenants)");
        report["ingest_upsert"] = ingest_upsert(&client, &workload, opts).await?;
        eprintln!("bench: ingest by JetStream (replaces every document)");
        report["ingest_jetstream"] =
            ingest_jetstream(&client, &workload.join("docs.jsonl")).await?;
        // The same again with base64 vectors, the compact encoding a
        // producer holding OpenAI's `encoding_format: "base64"` would send;
        // the searches after it then run on what it wrote.
        let (docs, scratch) = base64_docs(&workload)?;
        eprintln!("bench: ingest by JetStream, base64 vectors (replaces every document)");
        let ingested = ingest_jetstream(&client, &docs).await;
        if scratch {
            let _ = std::fs::remove_file(&docs);
        }
        report["ingest_jetstream_base64"] = ingested?;
        report["ingest_worker_rss_mb"] = worker.rss_mb();
    }
    // A fresh worker, so the pool starts empty as the seed's does.
    worker.stop()?;
    let worker = WorkerProcess::start(settings, opts, &data, opts.pool_size)?;
    wait_ready(&client).await?;
    eprintln!("bench: Zipf search, pool of {}, 1 client", opts.pool_size);
    let mut search = search_pass(&client, &queries, &truth, 1, Some(opts.pool_size)).await?;
    search["pool"] = client.admin(AdminVerb::Stats, &json!({})).await?;
    search["worker_rss_mb"] = worker.rss_mb();
    report["search"] = search;
    eprintln!(
        "bench: Zipf search, pool of {}, {} clients",
        opts.pool_size, opts.clients
    );
    report["search_concurrent"] =
        search_pass(&client, &queries, &truth, opts.clients, None).await?;
    worker.stop()?;

    let worker = WorkerProcess::start(settings, opts, &data, opts.warm_pool_size)?;
    wait_ready(&client).await?;
    eprintln!("bench: warm search (every queried tenant active)");
    let tenants: HashSet<&str> = queries.iter().map(|q| q.tenant.as_str()).collect();
    let started = Instant::now();
    for t in &tenants {
        client.tenant(Verb::Count, t, &json!({})).await?;
    }
    let mut warm = search_pass(&client, &queries, &truth, 1, None).await?;
    warm["preload_seconds"] = json!(started.elapsed().as_secs_f64());
    warm["preloaded_tenants"] = json!(tenants.len());
    warm["worker_rss_mb"] = worker.rss_mb();
    report["warm"] = warm;
    // How warm search grows with clients: 1 (above), 2, then C.
    report["warm_two"] = search_pass(&client, &queries, &truth, 2, None).await?;
    report["warm_concurrent"] = search_pass(&client, &queries, &truth, opts.clients, None).await?;
    worker.stop()?;
    embedding_phase(settings, opts, &data, &client, &mut report).await?;
    if !opts.skip_noisy {
        noisy_phases(settings, opts, &data, &client, &mut report).await?;
    }
    if on_qdrant && _temp.is_some() {
        clear_collections(settings, &opts.collection_prefix).await?;
    }
    Ok(report)
}

/// The embedding path on a fresh worker, when a remote embedder is set.
async fn embedding_phase(
    settings: &Settings,
    opts: &BenchOptions,
    data: &Path,
    client: &Client,
    report: &mut Value,
) -> anyhow::Result<()> {
    let model = settings.embedding.model.trim();
    if model.is_empty() || model == tenantvec::embed::HASHING {
        return Ok(());
    }
    let worker = WorkerProcess::start(settings, opts, data, opts.pool_size)?;
    wait_ready(client).await?;
    eprintln!("bench: the embedding path ({model}): text in, text queries");
    report["embedding"] = embedding::run(client, model, opts.clients).await?;
    report["embedding"]["worker_rss_mb"] = worker.rss_mb();
    worker.stop()?;
    Ok(())
}

/// The noisy-neighbour phases, each on a fresh worker: request-reply, then
/// ingest (the backlog published while no worker runs, so it is all in the
/// stream when the worker starts).
async fn noisy_phases(
    settings: &Settings,
    opts: &BenchOptions,
    data: &Path,
    client: &Client,
    report: &mut Value,
) -> anyhow::Result<()> {
    let worker = WorkerProcess::start(settings, opts, data, opts.pool_size)?;
    wait_ready(client).await?;
    report["noisy_neighbour"] = noisy::request_reply(settings, &opts.noisy).await?;
    report["noisy_neighbour"]["worker_rss_mb"] = worker.rss_mb();
    worker.stop()?;
    if opts.noisy.backlog_docs > 0 {
        noisy::ingest_backlog(settings, &opts.noisy).await?;
        let worker = WorkerProcess::start(settings, opts, data, opts.pool_size)?;
        wait_ready(client).await?;
        eprintln!("bench: noisy neighbour (ingest): the victim's messages behind the backlog");
        let mut ingest = noisy::ingest_measure(settings).await?;
        ingest["backlog_docs"] = json!(opts.noisy.backlog_docs);
        report["noisy_ingest"] = ingest;
        worker.stop()?;
    }
    Ok(())
}

/// Delete the Qdrant collections whose names begin with `prefix`: what an
/// earlier run left, or what this run made.
async fn clear_collections(settings: &Settings, prefix: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !prefix.is_empty(),
        "--collection-prefix must not be empty: the bench deletes the collections under it"
    );
    let qdrant = tenantvec::store::qdrant::client(&settings.store)?;
    let names: Vec<String> = qdrant
        .list_collections()
        .await?
        .collections
        .into_iter()
        .map(|c| c.name)
        .filter(|n| n.starts_with(prefix))
        .collect();
    eprintln!(
        "bench: deleting {} qdrant collections under {prefix:?}",
        names.len()
    );
    for name in names {
        qdrant.delete_collection(name).await?;
    }
    Ok(())
}

/// A data root made for one run; removed (with the shards the run wrote,
/// often gigabytes) when the run ends, also when it fails.
struct TempData(PathBuf);

impl TempData {
    fn create() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("tenantvec-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempData {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Wait until the worker on our prefix answers (a PING could be answered
/// by a worker on another prefix).
async fn wait_ready(client: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = tokio::time::timeout(
            Duration::from_millis(500),
            client.admin(AdminVerb::Stats, &json!({})),
        )
        .await;
        if let Ok(Ok(_)) = stats {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the worker never answered PING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every line of a JSON-lines file, parsed.
fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    std::io::BufReader::new(file)
        .lines()
        .map(|line| Ok(serde_json::from_str(&line?)?))
        .collect()
}

fn read_queries(path: &Path) -> anyhow::Result<Vec<Prepared>> {
    read_jsonl::<Query>(path)?
        .into_iter()
        .map(|q| {
            let mut body = json!({"vector": q.vector, "top_k": q.top_k});
            if let Some(f) = &q.filter {
                body["filter"] = f.clone();
            }
            Ok(Prepared {
                qid: q.qid,
                tenant: q.tenant,
                filtered: q.filter.is_some(),
                body: Bytes::from(serde_json::to_vec(&body)?),
            })
        })
        .collect()
}

fn read_truth(path: &Path) -> anyhow::Result<HashMap<u64, Vec<String>>> {
    #[derive(Deserialize)]
    struct Truth {
        qid: u64,
        doc_ids: Vec<String>,
    }
    Ok(read_jsonl::<Truth>(path)?
        .into_iter()
        .map(|t| (t.qid, t.doc_ids))
        .collect())
}

/// Latencies in an HDR histogram: nanoseconds to 3 significant digits
/// (0.1% resolution), growing as needed.
fn histogram(xs: &[Duration]) -> hdrhistogram::Histogram<u64> {
    let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("3 significant digits are valid");
    for x in xs {
        let ns = u64::try_from(x.as_nanos()).unwrap_or(u64::MAX);
        // `record` grows the histogram to fit; `saturating_record` would
        // clamp to its current top (a new histogram's is 2 ns).
        if h.record(ns).is_err() {
            h.saturating_record(ns);
        }
    }
    h
}

/// The `q` quantile of latencies, in seconds; `None` for none.
fn quantile(xs: &[Duration], q: f64) -> Option<f64> {
    (!xs.is_empty()).then(|| histogram(xs).value_at_quantile(q) as f64 / 1e9)
}

/// p50/p95/p99/mean of latencies, in milliseconds.
fn percentiles(xs: Vec<Duration>) -> Value {
    if xs.is_empty() {
        return Value::Null;
    }
    let h = histogram(&xs);
    let ms = |ns: u64| ns as f64 / 1e6;
    json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p95": ms(h.value_at_quantile(0.95)),
        "p99": ms(h.value_at_quantile(0.99)),
        "mean": h.mean() / 1e6,
        "n": h.len(),
    })
}

/// The floor: an echo responder in this process, asked with query-sized
/// bodies and answering with a search-reply-sized body.
async fn floor(
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
async fn ingest_jetstream(client: &Client, file: &Path) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut js = client.ingest_file(None, file, 1000, true).await?;
    js["seconds"] = json!(started.elapsed().as_secs_f64());
    Ok(js)
}

/// The workload's documents with every vector as base64 of little-endian
/// f32, written once beside `docs.jsonl` (and again when that is newer; in
/// the temp folder when the workload's is read-only), so the encoding's
/// ingest is timed without the conversion, as a producer that holds base64
/// vectors already would see it. `true` with a file in the temp folder,
/// which the caller removes when done.
fn base64_docs(workload: &Path) -> anyhow::Result<(PathBuf, bool)> {
    use std::io::Write;
    let source = workload.join("docs.jsonl");
    let beside = workload.join("docs.base64.jsonl");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if matches!((modified(&beside), modified(&source)), (Some(t), Some(s)) if t >= s) {
        return Ok((beside, false));
    }
    let open = std::fs::File::open(&source)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", source.display()))?;
    let partial_of = |p: &Path| p.with_extension("jsonl.part");
    let (target, created, scratch) = match std::fs::File::create(partial_of(&beside)) {
        Ok(file) => (beside, file, false),
        Err(_) => {
            let name = format!("tenantvec-bench-{}.base64.jsonl", std::process::id());
            let target = std::env::temp_dir().join(name);
            let partial = partial_of(&target);
            let file = std::fs::File::create(&partial)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", partial.display()))?;
            (target, file, true)
        }
    };
    let partial = partial_of(&target);
    let mut out = std::io::BufWriter::new(created);
    for (n, line) in std::io::BufReader::new(open).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let doc = base64_doc(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", source.display(), n + 1))?;
        writeln!(out, "{doc}")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&partial, &target)?;
    Ok((target, scratch))
}

/// One document line with its `vector` array as base64; other fields as
/// they were.
fn base64_doc(line: &str) -> anyhow::Result<String> {
    let mut doc: serde_json::Map<String, Value> = serde_json::from_str(line)?;
    if let Some(Value::Array(numbers)) = doc.get("vector") {
        let vector = numbers
            .iter()
            .map(|x| x.as_f64().map(|x| x as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| anyhow::anyhow!("a vector holds something other than numbers"))?;
        let encoded = tenantvec::vector::to_base64(&vector);
        doc.insert("vector".into(), Value::String(encoded));
    }
    Ok(serde_json::to_string(&doc)?)
}

/// Every document of the workload by `upsert` requests, `clients` in flight.
async fn ingest_upsert(
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
async fn search_pass(
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

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1048576.0);
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": mem_gib,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

/// The human table of a report.
pub fn table(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.2}"));
    let pair = |a: &Value, b: &Value| format!("{} / {}", f(a), f(b));
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<46} {v}\n"));
    line(
        "floor: bare NATS round trip p50 ms",
        f(&r["floor"]["latency_ms"]["p50"]),
    );
    line(
        "floor: echo QPS, concurrent",
        f(&r["floor"]["qps_concurrent"]),
    );
    line(
        "ingest: upsert docs/s",
        f(&r["ingest_upsert"]["docs_per_s"]),
    );
    line(
        "ingest: JetStream docs/s (replace)",
        f(&r["ingest_jetstream"]["committed_docs_per_second"]),
    );
    line(
        "ingest: JetStream docs/s, base64 vectors",
        f(&r["ingest_jetstream_base64"]["committed_docs_per_second"]),
    );
    for (name, key) in [
        ("search (pool, 1 client)", "search"),
        ("search (pool, C clients)", "search_concurrent"),
        ("warm search (1 client)", "warm"),
        ("warm search (2 clients)", "warm_two"),
        ("warm search (C clients)", "warm_concurrent"),
    ] {
        let s = &r[key];
        line(&format!("{name}: QPS"), f(&s["qps"]));
        line(
            &format!("{name}: p50 / p95 / p99 ms"),
            format!(
                "{} / {} / {}",
                f(&s["latency_ms"]["p50"]),
                f(&s["latency_ms"]["p95"]),
                f(&s["latency_ms"]["p99"])
            ),
        );
        line(
            &format!("{name}: recall@k unfiltered / filtered"),
            pair(&s["recall_unfiltered"], &s["recall_filtered"]),
        );
    }
    line(
        "search: cold activations",
        r["search"]["cold_activations"].to_string(),
    );
    line(
        "search: cold p50 / p99 ms",
        pair(
            &r["search"]["cold_latency_ms"]["p50"],
            &r["search"]["cold_latency_ms"]["p99"],
        ),
    );
    line(
        "search: warm p50 / p99 ms",
        pair(
            &r["search"]["warm_latency_ms"]["p50"],
            &r["search"]["warm_latency_ms"]["p99"],
        ),
    );
    line("search: pool hit rate", f(&r["search"]["pool"]["hit_rate"]));
    line(
        "worker RSS MiB after search (pool)",
        f(&r["search"]["worker_rss_mb"]["current"]),
    );
    line(
        "worker RSS MiB, warm (all queried tenants open)",
        f(&r["warm"]["worker_rss_mb"]["current"]),
    );
    let n = &r["noisy_neighbour"];
    line(
        "noisy: victim alone p50 / p99 ms",
        pair(&n["victim_alone_ms"]["p50"], &n["victim_alone_ms"]["p99"]),
    );
    line(
        "noisy: victim under flood p50 / p99 ms",
        pair(
            &n["victim_flooded_ms"]["p50"],
            &n["victim_flooded_ms"]["p99"],
        ),
    );
    line(
        "noisy: victim p99 flooded / alone; errors",
        format!("{} ; {}", f(&n["victim_p99_ratio"]), n["victim_errors"]),
    );
    line(
        "noisy: bare NATS echo p99 alone / under flood ms",
        pair(&n["echo_alone_ms"]["p99"], &n["echo_flooded_ms"]["p99"]),
    );
    line(
        "noisy: request partitions; victim's / flood's",
        format!(
            "{} ; {} / {}",
            n["request_partitions"], n["partition_of"]["nn-victim"], n["partition_of"]["nn-flood"]
        ),
    );
    line(
        "noisy: flood ok / rate_limited / unavailable",
        format!(
            "{} / {} / {}",
            n["flood"]["ok"], n["flood"]["rate_limited"], n["flood"]["unavailable"]
        ),
    );
    let i = &r["noisy_ingest"];
    line(
        "noisy ingest: victim alone p50 / max ms",
        pair(&i["victim_alone_ms"]["p50"], &i["victim_alone_max_ms"]),
    );
    line(
        "noisy ingest: victim behind backlog p50 / max ms",
        pair(
            &i["victim_behind_backlog_ms"]["p50"],
            &i["victim_behind_backlog_max_ms"],
        ),
    );
    let e = &r["embedding"];
    if !e.is_null() {
        line("embedding: model", e["model"].to_string());
        line(
            "embedding: ingest docs/s (text)",
            f(&e["ingest"]["docs_per_s"]),
        );
        line(
            "embedding: text search p50 / p99 ms (cache missed)",
            pair(&e["search_text"]["p50"], &e["search_text"]["p99"]),
        );
        line(
            "embedding: text search p50 / p99 ms (cached)",
            pair(
                &e["search_text_cached"]["p50"],
                &e["search_text_cached"]["p99"],
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_are_those_of_the_latencies() {
        use std::time::Duration;
        let xs: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let p = super::percentiles(xs.clone());
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.002;
        assert!(close(p["p50"].as_f64().unwrap(), 0.5), "{p}");
        assert!(close(p["p99"].as_f64().unwrap(), 0.99), "{p}");
        assert!(close(p["mean"].as_f64().unwrap(), 0.5005), "{p}");
        assert_eq!(p["n"], 1000);
        assert!(close(super::quantile(&xs, 0.95).unwrap(), 0.000_95));
    }

    #[test]
    fn the_base64_workload_is_written_once_beside_the_original() {
        let dir = tempfile::tempdir().unwrap();
        let line = r#"{"tenant":"u1","doc_id":"d1","vector":[0.5,-1.25]}"#;
        std::fs::write(dir.path().join("docs.jsonl"), format!("{line}\n\n{line}\n")).unwrap();
        let (file, scratch) = super::base64_docs(dir.path()).unwrap();
        assert_eq!(file, dir.path().join("docs.base64.jsonl"));
        assert!(!scratch);
        let written = std::fs::read_to_string(&file).unwrap();
        assert_eq!(written.lines().count(), 2, "{written}");
        assert!(!dir.path().join("docs.base64.jsonl.part").exists());
        // Kept while the original is not newer.
        std::fs::write(&file, "kept\n").unwrap();
        assert_eq!(super::base64_docs(dir.path()).unwrap().0, file);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept\n");
    }

    #[test]
    fn a_documents_vector_becomes_base64_and_the_rest_stays() {
        let line = r#"{"tenant":"u1","doc_id":"d1","text":"walk","vector":[0.5,-1.25,3]}"#;
        let doc: serde_json::Value =
            serde_json::from_str(&super::base64_doc(line).unwrap()).unwrap();
        let vector = tenantvec::vector::from_base64(doc["vector"].as_str().unwrap()).unwrap();
        assert_eq!(vector, vec![0.5, -1.25, 3.0]);
        assert_eq!(doc["tenant"], "u1");
        assert_eq!(doc["text"], "walk");
        let bad = r#"{"doc_id":"d1","vector":[0.5,"x"]}"#;
        assert!(super::base64_doc(bad).is_err());
        let text_only = r#"{"doc_id":"d1","text":"walk"}"#;
        assert_eq!(super::base64_doc(text_only).unwrap(), text_only);
    }
}
