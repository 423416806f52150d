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

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use tenantvec::client::Client;
use tenantvec::config::Settings;
use tenantvec::protocol::{AdminVerb, Verb};

pub mod embedding;
mod latency;
pub mod noisy;
mod passes;
mod process;
mod report;
mod workload;

pub use report::table;

use latency::{percentiles, quantile};
use passes::{floor, ingest_jetstream, ingest_upsert, search_pass};
use process::{wait_ready, TempData, WorkerProcess};
use report::machine;
use workload::{base64_docs, read_queries, read_truth};

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
