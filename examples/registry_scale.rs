//! The tenant registry at scale: how long it takes to create N records, to
//! read every key once (`kv.keys()`, and the stream's subject listing), to
//! read every record into a worker's index (as a
//! worker does at start, in the background), to list every tenant page by
//! page as `tenants.list` does (from the index, and by scanning the keys as
//! it does until the index is complete), and how large the bucket is on
//! disk.
//!
//!     cargo run --release --example registry_scale -- TENANTS [PAGE]
//!
//! Runs against the nats-server the settings name (`NATS_URL`), with
//! JetStream, under its own prefix (`TENANTVEC_PREFIX`, default
//! `registry_scale`, whose bucket it empties first). PAGE is the records per
//! page (1..=1000, default 1000). Prints what it measured in this run.

use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use tenantvec::config::Settings;
use tenantvec::registry::{record, Registry, TenantRecord};
use tenantvec::tenant::TenantId;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (tenants, page) = match args.as_slice() {
        [n] => (n.parse::<usize>()?, 1000),
        [n, p] => (n.parse::<usize>()?, p.parse::<usize>()?),
        _ => anyhow::bail!("usage: registry_scale TENANTS [PAGE]"),
    };
    let mut settings = Settings::load(None, Vec::new())?;
    if std::env::var_os("TENANTVEC_PREFIX").is_none() {
        settings.nats.prefix = "registry_scale".into();
    }
    let client = async_nats::connect(&settings.nats.url).await?;
    let js = async_nats::jetstream::new(client);
    let bucket = tenantvec::names::tenants_bucket(&settings.nats.prefix);
    let _ = js.delete_key_value(&bucket).await;
    let registry = Registry::open(&js, &settings.nats.prefix, 1).await?;

    // Create: 256 creates in flight, as many workers would make them.
    let started = Instant::now();
    let now = record::now();
    futures::stream::iter(0..tenants)
        .map(|i| {
            let registry = registry.clone();
            let now = now.clone();
            async move {
                let id = TenantId::parse(&format!("user-{i:07}"))?;
                let made = registry.create(&TenantRecord::new(&id, &now)).await?;
                anyhow::ensure!(made.is_some(), "user-{i:07} existed already");
                anyhow::Ok(())
            }
        })
        .buffer_unordered(256)
        .try_collect::<Vec<()>>()
        .await?;
    let create = started.elapsed();

    let started = Instant::now();
    let ids = registry.ids().await?;
    let scan = started.elapsed();
    anyhow::ensure!(
        ids.len() == tenants,
        "{} ids for {tenants} tenants",
        ids.len()
    );

    // The other way to list keys: the stream's subjects, from its info (in
    // pages the server cuts).
    let started = Instant::now();
    let mut subjects = js
        .get_stream(format!("KV_{bucket}"))
        .await?
        .info_with_subjects(">")
        .await?;
    let mut by_subjects = 0usize;
    while let Some(subject) = subjects.next().await {
        subject?;
        by_subjects += 1;
    }
    let subject_list = started.elapsed();
    anyhow::ensure!(
        by_subjects == tenants,
        "{by_subjects} subjects for {tenants}"
    );

    // The index, as a worker reads it at start.
    let started = Instant::now();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let (registry, shutdown) = (registry.clone(), shutdown.clone());
        async move { registry.follow(|_| {}, shutdown).await }
    });
    while !registry.index().is_complete() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let indexed = started.elapsed();
    anyhow::ensure!(
        registry.index().len() == tenants,
        "index complete with {} of {tenants}",
        registry.index().len()
    );

    // Every page as tenants.list answers it with the index complete.
    let started = Instant::now();
    let (mut cursor, mut listed) = (None::<String>, 0);
    loop {
        let (page_ids, next) = registry
            .page("", cursor.as_deref(), page, |_, _| true)
            .await?;
        let page_ids: Vec<&str> = page_ids.iter().map(String::as_str).collect();
        listed += registry.records(&page_ids).await?.len();
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let list_indexed = started.elapsed();
    anyhow::ensure!(listed == tenants, "listed {listed} of {tenants}");
    shutdown.cancel();

    // Every page as tenants.list answers it before the index is complete:
    // the ids, then the page's records.
    let started = Instant::now();
    let (mut cursor, mut pages, mut listed) = (None::<String>, 0, 0);
    loop {
        let ids = registry.ids().await?;
        let (page_ids, next) = record::page(&ids, "", cursor.as_deref(), page);
        listed += registry.records(&page_ids).await?.len();
        pages += 1;
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let list = started.elapsed();
    anyhow::ensure!(listed == tenants, "listed {listed} of {tenants}");

    let info = js
        .get_stream(format!("KV_{bucket}"))
        .await?
        .info()
        .await?
        .clone();
    println!(
        "{tenants} tenants: create {:.1} s ({:.0}/s, 256 in flight); one scan of every key {:.2} s; \
         the stream's subject listing {:.2} s; every record into the index {:.2} s; list in {pages} pages of {page} from the index: \
         {:.1} s ({:.3} s a page), by key scans: {:.1} s ({:.2} s a page); bucket {:.1} MB on disk",
        create.as_secs_f64(),
        tenants as f64 / create.as_secs_f64(),
        scan.as_secs_f64(),
        subject_list.as_secs_f64(),
        indexed.as_secs_f64(),
        list_indexed.as_secs_f64(),
        list_indexed.as_secs_f64() / pages as f64,
        list.as_secs_f64(),
        list.as_secs_f64() / pages as f64,
        info.state.bytes as f64 / 1e6,
    );
    js.delete_key_value(&bucket).await?;
    Ok(())
}
