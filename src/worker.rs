//! The worker: wires settings, NATS, the supervisor and the endpoints
//! together, and runs the graceful stop.
//!
//! Owns the order of start-up (connect, check for conflicting instances,
//! start the supervisor, create the ingest stream and consumer, subscribe,
//! pull) and of shutdown (stop taking requests and pulling, settle those in
//! flight, close every store, flush NATS). It must never hold
//! tenant state itself, and it must run inside an actix `System`, which
//! [`run_blocking`] and [`spawn`] provide.

use std::sync::Arc;
use std::thread;

use actix::Actor;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::supervisor::{Shutdown, Supervisor};
use crate::tenant_actor::TenantSetup;
use crate::transport;
use crate::transport::ingest::IngestCounters;

/// Serve until `shutdown` is cancelled, then stop gracefully.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = transport::connect(&settings.nats).await?;
    let factory = crate::store::factory(&settings)?;
    let embedder = crate::embed::from_settings(&settings)?;
    transport::discovery::ensure_compatible(
        &client,
        factory.backend(),
        &settings.nats.prefix,
        settings.nats.discovery_timeout,
    )
    .await?;

    let setup = Arc::new(TenantSetup {
        factory: factory.clone(),
        embedder,
        paths: crate::tenant::TenantPaths::new(&settings.store.folder),
        defaults: settings.tenants.clone(),
        default_top_k: settings.search.default_top_k,
        max_top_k: settings.limits.max_top_k,
    });
    let supervisor = Supervisor::new(
        settings.pool.size,
        settings.pool.ttl,
        settings.pool.sweep_every(),
        setup,
    )
    .start();
    // The stream and its consumer exist before the service answers PING.
    let ingest = if settings.ingest.enabled {
        let js = async_nats::jetstream::new(client.clone());
        let names = transport::ingest::Names::new(&settings.nats.prefix);
        let consumer = transport::ingest::ensure_streams(&js, &names, &settings.ingest)
            .await
            .map_err(|e| {
                e.context("durable ingest needs JetStream (nats-server -js); or set ingest.enabled = false")
            })?;
        Some((js, consumer, Arc::new(IngestCounters::default())))
    } else {
        None
    };
    let serving = transport::service::start(
        client.clone(),
        &settings,
        supervisor.clone(),
        factory.backend(),
        ingest.as_ref().map(|(_, _, counters)| counters.clone()),
        shutdown.clone(),
    )
    .await?;
    let ingesting = ingest.map(|(js, consumer, counters)| {
        transport::ingest::start(
            js,
            consumer,
            &settings,
            supervisor.clone(),
            counters,
            shutdown.clone(),
        )
    });
    tracing::info!(
        url = %settings.nats.display_url(),
        prefix = %settings.nats.prefix,
        backend = factory.backend(),
        data = %settings.store.folder.display(),
        pool_size = settings.pool.size,
        ttl = ?settings.pool.ttl,
        "tenantvec worker serving"
    );

    shutdown.cancelled().await;
    tracing::info!("stopping: no new requests; answering those in flight");
    let timeout = settings.worker.shutdown_timeout;
    match ingesting {
        Some(ingesting) => {
            tokio::join!(serving.drain(timeout), ingesting.drain(timeout));
        }
        None => serving.drain(timeout).await,
    }
    if let Err(e) = supervisor.send(Shutdown).await {
        tracing::error!(error = %e, "the supervisor stopped before closing the stores");
    }
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "flushing NATS at shutdown");
    }
    tracing::info!("tenantvec worker stopped");
    Ok(())
}

/// Run the worker on this thread, in its own actix system on a multi-thread
/// tokio runtime: actors live on this thread, the NATS transport on the
/// runtime's workers, and engine work on its blocking pool.
pub fn run_blocking(
    settings: Settings,
    shutdown: CancellationToken,
    listen_for_signals: bool,
) -> anyhow::Result<()> {
    let threads = match settings.worker.threads {
        0 => thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("tenantvec")
        .enable_all()
        .build()?;
    let system = actix_rt::System::with_tokio_rt(|| runtime);
    system.block_on(async move {
        if listen_for_signals {
            tokio::spawn(crate::shutdown::cancel_on_signal(shutdown.clone()));
        }
        run(settings, shutdown).await
    })
}

/// A worker running on a thread of its own; stopping it (or dropping the
/// handle) shuts it down gracefully and waits for it. Used by the tests and
/// the benchmark to run a worker in-process.
pub struct WorkerHandle {
    shutdown: CancellationToken,
    thread: Option<thread::JoinHandle<anyhow::Result<()>>>,
}

/// Start a worker on a new thread.
pub fn spawn(settings: Settings) -> WorkerHandle {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let thread = thread::Builder::new()
        .name("tenantvec-worker".into())
        .spawn(move || run_blocking(settings, token, false))
        .expect("spawning a thread");
    WorkerHandle {
        shutdown,
        thread: Some(thread),
    }
}

impl WorkerHandle {
    /// Whether the worker has already stopped (for instance, it failed to start).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Shut down gracefully and return how the worker ended.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.join()
    }

    fn join(&mut self) -> anyhow::Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the worker thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Err(e) = self.join() {
            tracing::error!(error = %e, "worker ended with an error");
        }
    }
}
