//! A steady warm-search load on a running worker, for profiling the request
//! path (`perf record -p <worker pid>` while it runs) and for comparing
//! settings on the same data.
//!
//!     cargo run --release --example warm_load -- QUERIES.jsonl CLIENTS SECONDS
//!
//! QUERIES.jsonl is the benchmark workload's `queries.jsonl` (tenant,
//! vector, top_k, filter per line). The worker is the one the settings name
//! (`NATS_URL`, `TENANTVEC_PREFIX`, ...), serving the workload's tenants with
//! a pool large enough to keep every queried tenant open: each is activated
//! once first, then CLIENTS tasks on one connection search in a loop for
//! SECONDS. Prints the searches per second, measured in this run.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde_json::{json, Value};
use tenantvec::client::Client;
use tenantvec::config::Settings;
use tenantvec::protocol::Verb;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, clients, seconds] = args.as_slice() else {
        anyhow::bail!("usage: warm_load QUERIES.jsonl CLIENTS SECONDS");
    };
    let clients: usize = clients.parse().context("CLIENTS")?;
    let seconds: u64 = seconds.parse().context("SECONDS")?;
    let settings = Settings::load(None, Vec::new())?;
    let client = Arc::new(Client::connect(&settings).await?);
    let mut queries = Vec::new();
    for line in std::fs::read_to_string(file)?.lines() {
        let q: Value = serde_json::from_str(line)?;
        let tenant = q["tenant"].as_str().context("a query without a tenant")?;
        let body = json!({"vector": q["vector"], "top_k": q["top_k"], "filter": q["filter"]});
        queries.push((tenant.to_owned(), Bytes::from(serde_json::to_vec(&body)?)));
    }
    anyhow::ensure!(!queries.is_empty(), "{file} holds no queries");
    let mut active = HashSet::new();
    for (tenant, _) in &queries {
        if active.insert(tenant.clone()) {
            client.tenant(Verb::Count, tenant, &json!({})).await?;
        }
    }
    let queries = Arc::new(queries);
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients.max(1) {
        let (client, queries, done) = (client.clone(), queries.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while Instant::now() < deadline {
                let (tenant, body) = &queries[i % queries.len()];
                let subject = client.subjects().tenant(Verb::Search, tenant);
                client.request_bytes(subject, body.clone()).await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += clients;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let searches = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{clients} clients, {} tenants open: {searches} searches in {elapsed:.1} s = {:.0} QPS",
        active.len(),
        searches as f64 / elapsed
    );
    Ok(())
}
