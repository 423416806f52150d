//! The worker: wires settings, NATS, the supervisor and the endpoints
//! together, and runs the graceful stop.
//!
//! Owns the order of start-up (connect, check for conflicting instances,
//! start the supervisor, create the ingest stream and consumer, subscribe,
//! pull) and of shutdown (stop taking requests and pulling, settle those in
//! flight, close every store, flush NATS), and of the bound on that stop:
//! the whole of it, drains and closes alike, ends by
//! `worker.shutdown_timeout`, else the worker gives up with
//! [`StopTimedOut`], naming the tenants it left unfinished. It must never
//! hold tenant state itself, and it must run inside an actix `System`, which
//! [`run_blocking`] and [`spawn`] provide.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use actix::Actor;
use tokio_util::sync::CancellationToken;

use futures::future::BoxFuture;

use crate::cluster::Cluster;
use crate::config::Settings;
use crate::directory::Directory;
use crate::metrics::IngestCounters;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::supervisor::{EvictWhere, Shutdown, Supervisor, Unfinished};
use crate::tenant_actor::TenantSetup;
use crate::transport;

/// Serve until `shutdown` is cancelled, then stop gracefully.
pub async fn run(mut settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Bound before NATS is reached: a metrics.listen that cannot be served
    // stops the start at once.
    // The master key first: a worker that cannot open its tenants' keys
    // stops before it touches anything.
    let keys = encryption_keys(&settings)?;
    let metrics = Arc::new(Metrics::new(&settings));
    let _metrics_server = metrics.serve(&settings).await?;
    let client = transport::connect(&settings.nats).await?;
    // First: a remote embedder's probe may settle the store dimension.
    let embedder = {
        let mut s = settings.clone();
        let embedder = tokio::task::spawn_blocking(move || {
            crate::embed::from_settings(&mut s).map(|e| (e, s))
        })
        .await??;
        settings = embedder.1;
        metrics.timed_embedder(embedder.0)
    };
    let factory = metrics.timed_factory(crate::store::factory(&settings)?);
    transport::discovery::ensure_compatible(
        &client,
        factory.backend(),
        &settings.nats.prefix,
        &settings.worker.region,
        settings.nats.discovery_timeout,
        settings.cluster.enabled,
    )
    .await?;
    // The server's request-partition mapping and ours agree, else requests
    // would go unserved. The probes come back within a round trip; the wait
    // is for probes that never come (no permission), which only matters
    // with partitions configured.
    let partitions = settings.nats.request_partitions;
    let probe_wait = match partitions {
        0 => settings.nats.discovery_timeout,
        _ => settings.nats.discovery_timeout.max(Duration::from_secs(5)),
    };
    transport::partitions::check(&client, &settings.nats.prefix, partitions, probe_wait).await?;
    let mut request_connections = Vec::with_capacity(settings.nats.request_partitions);
    for k in 0..settings.nats.request_partitions {
        let role = format!("requests-{k}");
        request_connections.push(transport::connect(&extra_connection(&settings, &role)).await?);
    }
    let cluster = settings.cluster.enabled.then(|| {
        Arc::new(Cluster::new(
            &settings.nats.prefix,
            member_name(&settings.cluster.member),
            settings.cluster.partitions,
        ))
    });

    // The tenant registry: every tenant a record, read when its actor starts.
    let registry = match settings.tenants.registry {
        true => Some(
            crate::registry::Registry::open(
                &async_nats::jetstream::new(client.clone()),
                &settings.storage_prefix(),
                settings.nats.replicas,
            )
            .await
            .map(|r| r.in_region(settings.worker.region()))
            .map_err(|e| {
                e.context(
                    "the tenant registry needs JetStream (nats-server -js); \
                     or set tenants.registry = false",
                )
            })?,
        ),
        false => None,
    };
    // With encryption, the tenants' wrapped keys, and the master key
    // checked against those in use.
    let keys = match keys {
        Some(keyring) => {
            let store = crate::registry::keys::KeyStore::open(
                &async_nats::jetstream::new(client.clone()),
                &settings.storage_prefix(),
                settings.nats.replicas,
            )
            .await
            .map_err(|e| e.context("encryption.enabled needs JetStream for the tenants' keys"))?;
            let in_use = crate::registry::rotate::masters_in_use(
                &store,
                crate::registry::rotate::MASTER_SAMPLE,
            )
            .await
            .map_err(|e| anyhow::anyhow!("reading the tenants' keys: {e}"))?;
            crate::registry::rotate::check_master(keyring.fingerprint(), &in_use)
                .map_err(|e| anyhow::anyhow!(e))?;
            Some(crate::registry::keys::Keys { keyring, store })
        }
        None => None,
    };
    // With regions: the region's JetStream domain checked, and every
    // region's tenants read from the directory before the first request.
    let regions = match settings.worker.region() {
        Some(own) => Some(crate::region::open(&client, &settings, own, shutdown.clone()).await?),
        None => None,
    };
    let tenancy = transport::ingest::Tenancy {
        keys: keys.clone(),
        regions: regions.clone(),
    };
    let setup = Arc::new(TenantSetup {
        factory: factory.clone(),
        embedder,
        paths: crate::tenant::TenantPaths::new(&settings.store.folder),
        records: crate::embed::record::Records::new(
            crate::tenant::TenantPaths::new(&settings.store.folder),
            settings.store.backend == crate::config::Backend::Edge
                && settings.store.layout == crate::config::Layout::PerTenant,
        ),
        defaults: settings.tenants.clone(),
        default_top_k: settings.search.default_top_k,
        max_top_k: settings.limits.max_top_k,
        metrics: metrics.clone(),
        registry: registry.clone(),
        auto_create: settings.tenants.auto_create,
        keys: keys.clone(),
    });
    let directory = Arc::new(Directory::new(metrics.clone()));
    let supervisor = Supervisor::new(
        settings.pool.size,
        settings.pool.ttl,
        settings.pool.sweep_every(),
        setup,
        directory.clone(),
        actor_threads(&settings),
    )
    .start();
    let router = Router::new(directory, supervisor.clone());
    // The stream and its consumer exist before the service answers PING.
    let mut ingest_connection = None;
    let ingest = if settings.ingest.enabled {
        // A connection of its own. What the pulls bring is bounded
        // (`ingest.pull_max_bytes`), what the request subscription receives
        // is not (a flood of requests, or the copy of every ingest publish
        // that `<p>.*.*` also matches): should the server drop that
        // connection as a slow consumer, the acks and stream reads in flight
        // here are not lost with it.
        let connection = transport::connect(&extra_connection(&settings, "ingest")).await?;
        ingest_connection = Some(connection.clone());
        let js = async_nats::jetstream::new(connection);
        // A consumer per partition, so one tenant's backlog does not hold up
        // the others, on one worker too; `ingest.ordered` keeps the single
        // pinned consumer of before (several unclustered workers, one
        // pulling at a time).
        let names = if settings.ingest.partitioned() {
            crate::names::Names::partitioned(
                &settings.storage_prefix(),
                settings.cluster.partitions,
            )
        } else {
            crate::names::Names::new(&settings.storage_prefix())
        };
        let consumer = transport::ingest::ensure_streams(
            &js,
            &names,
            &settings.ingest,
            settings.nats.replicas,
        )
        .await
        .map_err(|e| {
            e.context(
                "durable ingest needs JetStream (nats-server -js); or set ingest.enabled = false",
            )
        })?;
        let counters = Arc::new(IngestCounters::default());
        let consumer = match consumer {
            // Partitions on a prefix the single consumer served: what it
            // left goes first.
            Some(consumer) if settings.ingest.partitioned() => {
                transport::ingest::apply_from_before(
                    js.clone(),
                    consumer,
                    &settings,
                    router.clone(),
                    counters.clone(),
                    tenancy.clone(),
                    &shutdown,
                )
                .await?;
                None
            }
            consumer => consumer,
        };
        if let Some(consumer) = &consumer {
            metrics.watch_ingest(counters.clone(), consumer.clone());
        }
        Some((js, consumer, counters))
    } else {
        None
    };
    // Ingest starts pulling before the endpoint answers: a worker that
    // answers PING has its consumers made (a test or a deploy check that
    // reads them right after start-up finds them).
    let ingest_counters = ingest.as_ref().map(|(_, _, counters)| counters.clone());
    let mut partition_ingest = None;
    let mut ingesting = None;
    if let Some((js, consumer, counters)) = ingest {
        // One worker: the single consumer. A fleet: the partitions'.
        if let Some(consumer) = consumer {
            ingesting = Some(transport::ingest::start(
                js.clone(),
                consumer,
                &settings,
                router.clone(),
                counters.clone(),
                tenancy.clone(),
                shutdown.clone(),
            ));
        }
        if settings.ingest.partitioned() {
            let partitions = Arc::new(transport::ingest::PartitionIngest::new(
                js,
                &settings,
                router.clone(),
                counters.clone(),
                tenancy.clone(),
            ));
            let pulled = partitions.clone();
            metrics.watch_partitions(counters, move || pulled.consumers());
            // Alone, the worker pulls every partition; in a fleet, those
            // whose lease it holds.
            if cluster.is_none() {
                partitions.start_all().await?;
            }
            partition_ingest = Some(partitions);
        }
    }
    // A fleet member keeps serving (forwarding) while it hands its
    // partitions over, so its endpoint stops only after that.
    let stop_serving = match &cluster {
        Some(_) => CancellationToken::new(),
        None => shutdown.clone(),
    };
    let serving = transport::service::start(
        client.clone(),
        &settings,
        router.clone(),
        factory.backend(),
        ingest_counters,
        metrics.clone(),
        cluster.clone(),
        request_connections.clone(),
        registry.clone(),
        regions,
        stop_serving.clone(),
    )
    .await?;
    if let Some(registry) = registry.clone() {
        let index = registry.index().clone();
        metrics.watch_registry(move || index.census(&[]));
        tokio::spawn(transport::record_changes::pass_on(
            registry,
            supervisor.clone(),
            shutdown.clone(),
        ));
    }
    // Joined last: from the first lease on, other workers forward this
    // one requests, and its endpoint already listens for them.
    let mut fleet = match &cluster {
        Some(cluster) => Some(
            crate::cluster::fleet::join(
                // A connection of its own: lease renewals must not queue
                // behind a flood of requests and replies on the main one.
                transport::connect(&extra_connection(&settings, "fleet")).await?,
                &settings,
                factory.backend(),
                cluster.clone(),
                Arc::new(Owner {
                    ingest: partition_ingest.clone(),
                    factory: factory.clone(),
                    supervisor: supervisor.clone(),
                    partitions: cluster.partitions,
                }),
            )
            .await?,
        ),
        None => None,
    };
    tracing::info!(
        url = %settings.nats.display_url(),
        prefix = %settings.nats.prefix,
        backend = factory.backend(),
        data = %settings.store.folder.display(),
        pool_size = settings.pool.size,
        ttl = ?settings.pool.ttl,
        member = cluster.as_ref().map_or("", |c| c.member.as_str()),
        "tenantvec worker serving"
    );

    shutdown.cancelled().await;
    tracing::info!("stopping: no new requests; answering those in flight");
    let timeout = settings.worker.shutdown_timeout;
    let stop = async {
        if let Some(fleet) = fleet.as_mut() {
            // Partition by partition: requests finish, ingest settles, stores
            // close, the lease goes to the next owner; meanwhile requests of
            // handed-over partitions are forwarded there.
            fleet.leave(timeout).await;
            stop_serving.cancel();
        }
        let ingest_drained = async {
            if let Some(ingesting) = ingesting {
                ingesting.drain(timeout).await;
            }
            if let Some(partitions) = &partition_ingest {
                partitions.stop_all().await;
            }
        };
        tokio::join!(serving.drain(timeout), ingest_drained);
        if let Some(fleet) = fleet {
            fleet.close().await;
        }
        if let Err(e) = supervisor.send(Shutdown).await {
            tracing::error!(error = %e, "the supervisor stopped before closing the stores");
        }
        // Replies go out on the connection their request came in on.
        let connections = std::iter::once(&client)
            .chain(&ingest_connection)
            .chain(&request_connections);
        for connection in connections {
            if let Err(e) = connection.flush().await {
                tracing::warn!(error = %e, "flushing NATS at shutdown");
            }
        }
    };
    if tokio::time::timeout(timeout, stop).await.is_err() {
        // The supervisor itself is never blocked by a store (engine work
        // runs on the blocking pool), so it can still say who is left; the
        // second bound is for a supervisor that is gone.
        let unfinished = tokio::time::timeout(Duration::from_secs(1), supervisor.send(Unfinished))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let unfinished: Vec<String> = unfinished.iter().map(ToString::to_string).collect();
        tracing::error!(
            ?timeout,
            tenants = ?unfinished,
            "shutdown timed out; these tenants' stores were not closed \
             (their unacked ingest messages are delivered again)"
        );
        return Err(StopTimedOut {
            timeout,
            unfinished,
        }
        .into());
    }
    tracing::info!("tenantvec worker stopped");
    Ok(())
}

/// The settings of one of the worker's extra connections (`fleet`, `ingest`,
/// `requests-<k>`):
/// the worker's own, named after the role (`<connection_name>-<role>`).
/// `encryption.enabled`: the master key, as the keyring of the prefix
/// (checked against the records once the registry is open).
fn encryption_keys(settings: &Settings) -> anyhow::Result<Option<crate::crypto::Keyring>> {
    if !settings.encryption.enabled {
        return Ok(None);
    }
    let master = crate::crypto::MasterKey::load(&settings.encryption.master_key_file)?;
    crate::store::create_data_folder(&settings.store.folder)?;
    if settings.encrypts_everything() {
        // The filesystem can encrypt (else the fix is named), before anything.
        crate::crypto::fscrypt::Fscrypt::open(&settings.store.folder)?;
        tracing::info!(master_key = %master.fingerprint(), "encryption at rest: every tenant's folder encrypted with its own key");
    } else {
        tracing::warn!(
            master_key = %master.fingerprint(),
            backend = ?settings.store.backend,
            layout = ?settings.store.layout,
            plaintext_metadata = ?settings.encryption.plaintext_metadata,
            "encryption at rest: each document's text and metadata sealed with its tenant's key; \
             the store sees vectors (and the metadata keys listed to filter on): only the edge \
             per_tenant layout encrypts everything (encryption.require_full refuses this)"
        );
    }
    Ok(Some(crate::crypto::Keyring::new(
        master,
        &settings.nats.prefix,
    )))
}

fn extra_connection(settings: &Settings, role: &str) -> crate::config::NatsSettings {
    let mut nats = settings.nats.clone();
    nats.connection_name = format!("{}-{role}", nats.connection_name);
    nats
}

/// This worker's name in the fleet: `cluster.member`, or the host name, the
/// process id and a random suffix (new at every start, so a restarted worker
/// is never taken for the one before it), as one subject token.
fn member_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let host: String = crate::cluster::fleet::host_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    let random = nuid::next();
    let random = &random.as_str()[random.len() - 6..];
    format!("{host}-{}-{random}", std::process::id())
}

/// What the owner of a partition starts and settles: its ingest consumer,
/// and its tenants' actors.
struct Owner {
    ingest: Option<Arc<transport::ingest::PartitionIngest>>,
    factory: Arc<dyn crate::store::StoreFactory>,
    supervisor: actix::Addr<Supervisor>,
    partitions: u32,
}

impl crate::cluster::fleet::Partitions for Owner {
    fn start(&self, partition: u32) -> BoxFuture<'static, anyhow::Result<()>> {
        let ingest = self.ingest.clone();
        Box::pin(async move {
            match ingest {
                Some(ingest) => ingest.start(partition).await,
                None => Ok(()),
            }
        })
    }

    fn settle(&self, partition: u32) -> BoxFuture<'static, ()> {
        let ingest = self.ingest.clone();
        let supervisor = self.supervisor.clone();
        let factory = self.factory.clone();
        let partitions = self.partitions;
        Box::pin(async move {
            if let Some(ingest) = ingest {
                ingest.stop(partition).await;
            }
            let ours = move |t: &crate::tenant::TenantId| {
                crate::partition::partition_of(t.as_str(), partitions) == partition
            };
            match supervisor.send(EvictWhere(Box::new(ours))).await {
                Ok(n) => tracing::debug!(partition, closed = n, "partition's stores closed"),
                Err(e) => {
                    tracing::error!(partition, error = %e, "cannot close a partition's stores")
                }
            }
            // Closing a shard flushes and may wait on the disk.
            let _ = tokio::task::spawn_blocking(move || factory.release_partition(partition)).await;
        })
    }
}

/// Threads for the runtime's workers and, as many again, for tenant actors:
/// `worker.threads`, or one per core.
fn actor_threads(settings: &Settings) -> usize {
    match settings.worker.threads {
        0 => thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    }
}

/// The stop did not end within `worker.shutdown_timeout`: some store call
/// did not return. Nothing acknowledged is lost (a reply or an ingest ack
/// goes out only after its write is durable); what was not acknowledged is
/// redelivered (ingest) or failed at the client (request-reply).
#[derive(Debug, thiserror::Error)]
#[error(
    "the shutdown did not end within {timeout:?}; tenants left unfinished: {}",
    if unfinished.is_empty() { "none (the NATS side did not finish)".to_owned() } else { unfinished.join(", ") }
)]
pub struct StopTimedOut {
    pub timeout: Duration,
    pub unfinished: Vec<String>,
}

/// Run the worker on this thread, in its own actix system on a multi-thread
/// tokio runtime: actors live on this thread, the NATS transport on the
/// runtime's workers, and engine work on its blocking pool.
///
/// With `listen_for_signals` (the `serve` command: the worker is the
/// process), SIGTERM or SIGINT starts the graceful stop and a second one
/// ends the process at once, with exit code 128 + the signal's number.
///
/// After a stop that timed out, the runtime is leaked rather than dropped:
/// dropping it waits for every blocking-pool thread, and one of them is in
/// the store call that did not return. The caller is about to exit.
pub fn run_blocking(
    settings: Settings,
    shutdown: CancellationToken,
    listen_for_signals: bool,
) -> anyhow::Result<()> {
    let threads = actor_threads(&settings);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("tenantvec")
        .enable_all()
        .build()?;
    let system = actix_rt::System::with_tokio_rt(|| runtime);
    let outcome = system.block_on(async move {
        if listen_for_signals {
            let token = shutdown.clone();
            tokio::spawn(async move {
                let (name, code) = crate::shutdown::second_signal(token).await;
                tracing::error!(
                    signal = name,
                    "second signal: exiting now, without closing the stores"
                );
                // The process's own exit, asked for by its operator; stores
                // left open are what a crash leaves, which they survive
                // (every acknowledged write is flushed).
                std::process::exit(code);
            });
        }
        run(settings, shutdown).await
    });
    if outcome
        .as_ref()
        .is_err_and(|e| e.downcast_ref::<StopTimedOut>().is_some())
    {
        std::mem::forget(system);
    }
    outcome
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
