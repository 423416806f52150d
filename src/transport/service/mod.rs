//! The request-reply endpoint, served through the NATS Services API.
//!
//! Owns the one subscription that takes every request (tenant verbs and
//! admin verbs alike), the order in which requests reach the supervisor, the
//! bound on requests in flight, and the reply format: JSON bodies, and for
//! errors the `{"error": …}` body plus the Services API error headers. It
//! must never wait on a store (it hands commands to the tenant's actor or
//! the supervisor through the [`Router`], and the actor sends the reply
//! through a [`Responder`]), never reorder two requests of one tenant, and never
//! leave a request unanswered: every request ends in a reply, an unknown verb
//! too. The one exception is a message on a stream subject (ingest, dead
//! letters), which is not a request at all: JetStream answers it.
//!
//! Why one subscription on `<p>.*.*` rather than one endpoint per verb:
//! async-nats hands each subscription's messages to a channel of its own, so
//! with an endpoint per verb an upsert and a delete that a client pipelined
//! reach us on two channels, and which one is read first is up to the
//! scheduler (tokio tends to run the task woken last). Per-tenant order then
//! holds only within a verb, and a delete can overtake the upsert it follows.
//! One subscription keeps the server's delivery order, and [`dispatch`]
//! keeps it on: it decodes and routes each request before it takes the next,
//! and only the wait for the outcome runs in a task of its own. The costs:
//! `<p>.*.*` also matches the JetStream ingest subject, so the worker
//! receives a copy of every ingest publish and drops it; and decoding runs
//! on this one task rather than on as many tasks as there are requests.
//!
//! With request partitions (`nats.request_partitions`, see
//! [`crate::transport::partitions`]) the server maps each tenant's requests
//! to one of several subjects, and each is taken here the same way, on a
//! connection and a task of its own: one tenant's flood then queues on its
//! partition's connection only. Admin verbs stay on the endpoint.

mod admin;
mod disaster;
mod moving;
mod placement;
mod region;
mod reply;
mod tenants;

use admin::admin;
use placement::{forward, hops, park};
use reply::{reply_now, Responder};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::{Service, ServiceExt};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cluster::{Cluster, Place};
use crate::command::{Envelope, ReplyTo};
use crate::config::Settings;
use crate::metrics::IngestCounters;
use crate::metrics::Metrics;
use crate::protocol::{
    unknown_verb, Addressed, AdminVerb, ServiceError, Subjects, TenantsOp, VectorEncoding, Verb,
    SERVICE_NAME,
};
use crate::region::{Home, Regions};
use crate::registry::Registry;
use crate::router::Router;
use crate::tenant::TenantId;
use crate::transport::backlog::SharedBacklog;
use crate::transport::decode::command;
use crate::transport::discovery::{META_BACKEND, META_CLUSTER, META_PREFIX, META_REGION};
use crate::transport::partitions;
use crate::transport::relay::{self, Relay};

/// The Services API name of the one endpoint.
const ENDPOINT_NAME: &str = "requests";
/// The Services API name of the registry's operations.
const TENANTS_ENDPOINT_NAME: &str = "tenants";

/// Shared by the endpoint task and every reply task.
struct Shared {
    settings: Settings,
    subjects: Subjects,
    router: Router,
    /// The runtime a reply falls back to when it cannot go out at once.
    runtime: tokio::runtime::Handle,
    /// One permit per request in flight; none left means `unavailable`.
    in_flight: Arc<Semaphore>,
    /// Requests in flight per tenant; past `limits.tenant_queue`, that
    /// tenant's requests are answered `rate_limited`.
    backlog: SharedBacklog,
    /// The ingest figures, when this worker consumes the ingest stream.
    ingest: Option<Arc<IngestCounters>>,
    /// Numbers requests for their log spans.
    next_request: AtomicU64,
    metrics: Arc<Metrics>,
    /// The backup bucket, handed to export and import commands.
    backups: crate::backup::Backups,
    /// With `cluster.enabled`: who serves each partition.
    cluster: Option<Arc<Cluster>>,
    /// Answers raw messages (forwarded ones).
    client: async_nats::Client,
    /// Forwards requests to their partition's owner and relays the replies.
    relay: Option<Arc<Relay>>,
    /// The tenant registry (`tenants.registry`).
    registry: Option<Registry>,
    /// With regions (`worker.region`): where each tenant lives.
    regions: Option<Regions>,
    /// Sends requests and ingest messages to their tenant's home region and
    /// relays the answers.
    region_relay: Option<Arc<Relay>>,
}

/// The running endpoint; [`Serving::drain`] stops it and waits for the
/// requests in flight.
pub struct Serving {
    service: Service,
    task: JoinHandle<()>,
    /// One task per request partition (`nats.request_partitions`).
    partitioned: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    relaying: Option<JoinHandle<()>>,
    /// The registry's operations (`<p>.admin.tenants.*`).
    tenants: JoinHandle<()>,
    /// Requests forwarded to this region (`<p>._region.<region>.>`).
    from_regions: Option<JoinHandle<()>>,
    region_relaying: Option<JoinHandle<()>>,
}

/// A request as it reached this worker: from the service's endpoint, or a
/// bare message (from a request partition's subscription, forwarded by
/// another worker, or a forward of ours that came back undelivered), its
/// subject the original and its reply subject the client's.
enum Incoming {
    Service(async_nats::service::Request),
    /// The message, and the connection to answer it on.
    Bare(async_nats::Message, async_nats::Client),
}

impl Incoming {
    fn message(&self) -> &async_nats::Message {
        match self {
            Incoming::Service(r) => &r.message,
            Incoming::Bare(m, _) => m,
        }
    }

    fn into_message(self) -> async_nats::Message {
        match self {
            Incoming::Service(r) => r.message,
            Incoming::Bare(m, _) => m,
        }
    }
}

/// A header on forwarded requests: how many times they were forwarded, so
/// that views of the owners that disagree during a hand-over cannot bounce
/// a request for ever.
const HEADER_HOPS: &str = "Tenantvec-Hops";
/// Most forwards of one request; past it the request waits for the owners
/// to settle where it is.
const MAX_HOPS: u32 = 3;
/// The wait a tenant whose queue is full is told to take before a retry:
/// about what a few of its queued requests take to be answered.
const BACKLOG_RETRY_AFTER: Duration = Duration::from_millis(100);

/// Subscribe the endpoint and start serving. `$SRV.PING.tenantvec` answers
/// from here on.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    client: async_nats::Client,
    settings: &Settings,
    router: Router,
    backend: &str,
    ingest: Option<Arc<IngestCounters>>,
    metrics: Arc<Metrics>,
    cluster: Option<Arc<Cluster>>,
    partitions: Vec<async_nats::Client>,
    registry: Option<Registry>,
    regions: Option<Regions>,
    shutdown: CancellationToken,
) -> anyhow::Result<Serving> {
    let subjects = Subjects::new(&settings.nats.prefix);
    let metadata = HashMap::from([
        (META_BACKEND.to_owned(), backend.to_owned()),
        (META_PREFIX.to_owned(), settings.nats.prefix.clone()),
        (META_REGION.to_owned(), settings.worker.region.clone()),
        (
            META_CLUSTER.to_owned(),
            cluster.as_ref().map_or(String::new(), |c| c.member.clone()),
        ),
    ]);
    let service = client
        .service_builder()
        .description("multi-tenant vector store: one isolated store per tenant")
        .metadata(metadata)
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the NATS service: {e}"))?;

    // The endpoint's info lists what its wildcard serves.
    let verbs: Vec<String> = Verb::ALL
        .iter()
        .map(|v| subjects.tenant(*v, "<tenant>"))
        .chain(AdminVerb::ALL.iter().map(|v| subjects.admin(*v)))
        .collect();
    let subject = subjects.requests();
    let endpoint = service
        .endpoint_builder()
        .name(ENDPOINT_NAME)
        .metadata(HashMap::from([("verbs".to_owned(), verbs.join(" "))]))
        .add(subject.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe {subject}: {e}"))?;
    let tenants_subject = subjects.tenants_requests();
    let tenants_endpoint = service
        .endpoint_builder()
        .name(TENANTS_ENDPOINT_NAME)
        .metadata(HashMap::from([(
            "verbs".to_owned(),
            TenantsOp::ALL
                .iter()
                .map(|op| subjects.tenants(*op))
                .collect::<Vec<_>>()
                .join(" "),
        )]))
        .add(tenants_subject.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe {tenants_subject}: {e}"))?;
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        subjects,
        router,
        runtime: tokio::runtime::Handle::current(),
        in_flight: Arc::new(Semaphore::new(settings.limits.max_in_flight)),
        backlog: SharedBacklog::new(settings.limits.tenant_queue),
        ingest,
        next_request: AtomicU64::new(1),
        metrics,
        backups: crate::backup::Backups::new(
            client.clone(),
            &settings.storage_prefix(),
            settings.nats.replicas,
        ),
        cluster: cluster.clone(),
        client: client.clone(),
        relay: cluster
            .as_ref()
            .map(|_| Arc::new(Relay::new(client.clone()))),
        registry,
        region_relay: regions
            .as_ref()
            .map(|_| Arc::new(Relay::new(client.clone()))),
        regions: regions.clone(),
    });
    let region_relaying = match &shared.region_relay {
        Some(relay) => {
            let replies = relay.subscribe().await?;
            let (unreached, late) = (shared.clone(), shared.clone());
            Some(tokio::spawn(relay::run(
                relay.clone(),
                replies,
                settings.nats.request_timeout,
                |_| false,
                move |f| region::answer_unreached(f.message, &f.owner, false, &unreached),
                move |f| region::answer_unreached(f.message, &f.owner, true, &late),
            )))
        }
        None => None,
    };
    let from_regions = match &regions {
        Some(r) => {
            let subject = format!(
                "{}.>",
                crate::region::forward_prefix(&settings.nats.prefix, r.own())
            );
            let subscriber = client
                .queue_subscribe(subject.clone(), format!("{SERVICE_NAME}-region"))
                .await
                .map_err(|e| anyhow::anyhow!("cannot subscribe {subject}: {e}"))?;
            Some(tokio::spawn(serve_region(
                subscriber,
                shared.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let relaying = match &shared.relay {
        Some(relay) => {
            let replies = relay.subscribe().await?;
            let (reroute, expire) = (shared.clone(), shared.clone());
            let view = cluster.clone();
            Some(tokio::spawn(relay::run(
                relay.clone(),
                replies,
                settings.nats.request_timeout,
                move |f| {
                    let Some(cluster) = &view else {
                        return false;
                    };
                    let token = crate::protocol::tenant_token(f.message.subject.as_str());
                    !cluster.is_owner(token, &f.owner)
                },
                move |f| {
                    let Some(cluster) = reroute.cluster.clone() else {
                        return;
                    };
                    let incoming = Incoming::Bare(f.message, reroute.client.clone());
                    park(
                        incoming,
                        cluster,
                        reroute.clone(),
                        Some(f.owner),
                        Some(f.permit),
                    );
                },
                move |f| {
                    let incoming = Incoming::Bare(f.message, expire.client.clone());
                    reply_now(
                        incoming,
                        &expire,
                        ServiceError::unavailable(format!(
                            "worker {} did not answer the forwarded request (it stopped, or \
                             not in time); retry",
                            f.owner
                        )),
                    );
                },
            )))
        }
        None => None,
    };
    let forwarded = match &cluster {
        Some(c) => Some(
            client
                .subscribe(c.forward_inbox())
                .await
                .map_err(|e| anyhow::anyhow!("cannot subscribe {}: {e}", c.forward_inbox()))?,
        ),
        None => None,
    };
    // Each request partition on its connection, subscribed (the server
    // confirms it) before the service answers PING, like the endpoint.
    let mut partitioned = Vec::with_capacity(partitions.len());
    for (k, connection) in partitions.into_iter().enumerate() {
        let subject = partitions::subscription(&settings.nats.prefix, k);
        let subscriber = connection
            .subscribe(subject.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot subscribe {subject}: {e}"))?;
        partitions::settled(&connection, settings.nats.request_timeout).await?;
        partitioned.push(tokio::spawn(serve_partition(
            subscriber,
            connection,
            shared.clone(),
            shutdown.clone(),
        )));
    }
    let tenants = tokio::spawn(tenants::serve(
        tenants_endpoint,
        shared.clone(),
        shutdown.clone(),
    ));
    let task = tokio::spawn(serve(endpoint, forwarded, shared.clone(), shutdown));
    client.flush().await?;
    Ok(Serving {
        service,
        task,
        partitioned,
        shared,
        relaying,
        tenants,
        from_regions,
        region_relaying,
    })
}

impl Serving {
    /// Stop taking requests, then wait (up to `timeout`) until every request
    /// in flight has been answered.
    pub async fn drain(self, timeout: Duration) {
        let _ = self.task.await;
        let _ = self.tenants.await;
        if let Some(task) = self.from_regions {
            let _ = task.await;
        }
        for task in self.partitioned {
            let _ = task.await;
        }
        let max = self.shared.settings.limits.max_in_flight as u32;
        match tokio::time::timeout(timeout, self.shared.in_flight.acquire_many(max)).await {
            Ok(_) => tracing::info!("every request in flight was answered"),
            Err(_) => tracing::warn!(?timeout, "requests still in flight at the shutdown timeout"),
        }
        for relaying in [self.relaying, self.region_relaying].into_iter().flatten() {
            relaying.abort();
        }
        if let Err(e) = self.service.stop().await {
            tracing::debug!(error = %e, "stopping the service");
        }
    }
}

/// A body past this is decoded for long enough (a 600 KB upsert: about a
/// millisecond) that the serving task yields after it: tokio does not
/// preempt, and the next requests already waiting, other tenants' replies
/// and other partitions' tasks would otherwise wait for a run of them.
const LARGE_BODY: usize = 64 * 1024;

/// After a request of `size` bytes: let the runtime's other tasks run if it
/// was a large one ([`LARGE_BODY`]).
async fn pace(size: usize) {
    if size > LARGE_BODY {
        tokio::task::yield_now().await;
    }
}

/// Take requests until shutdown, then unsubscribe and answer what was
/// already delivered to us.
async fn serve(
    mut endpoint: async_nats::service::endpoint::Endpoint,
    mut forwarded: Option<async_nats::Subscriber>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let original = |mut m: async_nats::Message| {
        let cluster = shared.cluster.as_ref()?;
        m.subject = cluster.original_subject(m.subject.as_str())?.into();
        Some(Incoming::Bare(m, shared.client.clone()))
    };
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            next = endpoint.next() => match next {
                Some(request) => {
                    let size = request.message.payload.len();
                    dispatch(Incoming::Service(request), &shared);
                    pace(size).await;
                }
                None => return,
            },
            Some(m) = next_forwarded(&mut forwarded) => {
                if let Some(incoming) = original(m) {
                    dispatch(incoming, &shared);
                }
            }
        }
    }
    if let Err(e) = endpoint.stop().await {
        tracing::debug!(error = %e, "unsubscribing the endpoint");
    }
    if let Some(f) = forwarded.as_mut() {
        let _ = f.unsubscribe().await;
    }
    drain(&mut endpoint, |request| {
        dispatch(Incoming::Service(request), &shared)
    })
    .await;
    if let Some(f) = forwarded.as_mut() {
        drain(f, |m| {
            if let Some(incoming) = original(m) {
                dispatch(incoming, &shared);
            }
        })
        .await;
    }
}

/// After an unsubscribe: take what the server delivered before it saw it,
/// until 100 ms pass with nothing more.
async fn drain<S: futures::Stream + Unpin>(delivered: &mut S, mut take: impl FnMut(S::Item)) {
    while let Ok(Some(item)) =
        tokio::time::timeout(Duration::from_millis(100), delivered.next()).await
    {
        take(item);
    }
}

/// Take one request partition's requests (`<p>.*.*.<k>`, on a connection of
/// its own) until shutdown, then unsubscribe and answer what was already
/// delivered: [`serve`] for the requests the server mapped to partition k.
async fn serve_partition(
    subscriber: async_nats::Subscriber,
    connection: async_nats::Client,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let take = |mut m: async_nats::Message| {
        // Always a suffix: the subscription matched `<p>.*.*.<k>`.
        if let Some(original) = partitions::unpartitioned(m.subject.as_str()) {
            m.subject = original.into();
        }
        dispatch(Incoming::Bare(m, connection.clone()), &shared);
    };
    take_until(subscriber, shutdown, take).await;
}

/// Hand every message of `subscriber` to `take` until shutdown, then
/// unsubscribe and take what was already delivered.
async fn take_until(
    mut subscriber: async_nats::Subscriber,
    shutdown: CancellationToken,
    mut take: impl FnMut(async_nats::Message),
) {
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            next = subscriber.next() => match next {
                Some(m) => {
                    let size = m.payload.len();
                    take(m);
                    pace(size).await;
                }
                None => return,
            },
        }
    }
    let _ = subscriber.unsubscribe().await;
    drain(&mut subscriber, take).await;
}

/// Take the requests other regions forward to this one
/// (`<p>._region.<region>.<original subject>`) until shutdown, then
/// unsubscribe and answer what was already delivered: each is served as if
/// it had come to this region (the registry's operations too).
async fn serve_region(
    subscriber: async_nats::Subscriber,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let Some(own) = shared.regions.as_ref().map(|r| r.own().to_owned()) else {
        return;
    };
    let prefix = shared.settings.nats.prefix.clone();
    let take = |mut m: async_nats::Message| {
        let Some(original) = crate::region::original_subject(&prefix, &own, m.subject.as_str())
        else {
            return;
        };
        m.subject = original.to_owned().into();
        let incoming = Incoming::Bare(m, shared.client.clone());
        if tenants::is_tenants_subject(&shared.subjects, incoming.message().subject.as_str()) {
            tenants::handle(incoming, shared.clone());
        } else {
            dispatch(incoming, &shared);
        }
    };
    take_until(subscriber, shutdown, take).await;
}

/// The next forwarded message, or never without a subscription.
async fn next_forwarded(
    forwarded: &mut Option<async_nats::Subscriber>,
) -> Option<async_nats::Message> {
    match forwarded {
        Some(f) => f.next().await,
        None => futures::future::pending().await,
    }
}

/// The outcome of an admin request: resolves to the reply body.
type Pending = BoxFuture<'static, Result<Bytes, ServiceError>>;

/// Take one request, in arrival order. Everything that decides the order in
/// which a tenant's requests are applied happens here, before the next
/// request is taken: the in-flight permit, decoding, and the hand-over to
/// the tenant's actor or the supervisor (both queue at once). The reply is
/// sent by whoever makes the outcome: the tenant actor, through
/// [`Responder`], with no task of ours woken for it.
fn dispatch(request: Incoming, shared: &Arc<Shared>) {
    dispatch_with(request, shared, None)
}

/// [`dispatch`], with the in-flight permit a parked or re-routed request
/// already holds: taking a new one could fail while a stop drains (the drain
/// waits for every permit), and the request would be refused for nothing.
fn dispatch_with(
    request: Incoming,
    shared: &Arc<Shared>,
    mut carried: Option<OwnedSemaphorePermit>,
) {
    let mut permit = move || match carried.take() {
        Some(p) => Ok(p),
        None => shared.in_flight.clone().try_acquire_owned(),
    };
    // A clone (a reference count) so that the request can move on while
    // the subject's tokens are in use.
    let subject = request.message().subject.clone();
    let addressed = shared.subjects.classify(subject.as_str());
    if matches!(addressed, Addressed::Tenant(_, token) if partitions::is_probe(token)) {
        // A worker's start-up check of the request partitions
        // (`transport::partitions`), published without a reply subject.
        return;
    }
    if addressed == Addressed::Stream {
        // With regions, an ingest publish no stream takes: sent on to the
        // stream of its tenant's home region, whose ack answers it.
        if let Some(regions) = &shared.regions {
            if let Some(token) = shared.subjects.ingest_token(subject.as_str()) {
                if regions.in_transit(token) {
                    let refusal = format!(
                        "tenant {token:?} is moving between regions; publish again in a moment"
                    );
                    return region::refuse_publish(request.into_message(), refusal, shared);
                }
                let home = match regions.home_of(token) {
                    Home::Local => regions.own().to_owned(),
                    Home::Remote(r) => r,
                };
                let Ok(permit) = permit() else {
                    return region::answer_unreached(request.into_message(), &home, true, shared);
                };
                return region::forward_ingest(
                    request.into_message(),
                    token,
                    &home,
                    shared,
                    permit,
                );
            }
        }
        // Else a JetStream publish the stream stores (ingest) or keeps (dead
        // letters); its publisher waits for the stream's PubAck on this reply
        // subject, so any answer from us would be taken for it. Dropped
        // without a word.
        return;
    }
    // Every log line of the request carries its id and tenant token (Debug
    // formatting, so a hostile token cannot forge log lines).
    let span = tracing::info_span!(
        "request",
        request_id = shared.next_request.fetch_add(1, Ordering::Relaxed),
        tenant = ?match addressed {
            Addressed::Tenant(_, token) => token,
            _ => "",
        },
    );
    let mut responder = Responder {
        mark: shared.metrics.start(addressed),
        request,
        encoding: VectorEncoding::Array,
        runtime: shared.runtime.clone(),
        span: span.clone(),
        held: None,
    };
    // The tenant's own bound first: a tenant past it is refused before its
    // body is decoded and without taking a slot the others need. (An invalid
    // token takes no slot; it is refused below, with the parse's error.)
    let parsed = match addressed {
        Addressed::Tenant(_, token) => Some(TenantId::parse(token)),
        _ => None,
    };
    // With regions, the tenant's home region serves it.
    if let (Some(regions), Some(Ok(tenant))) = (&shared.regions, &parsed) {
        let message = responder.request.message();
        if hops(message) < MAX_HOPS && !region::served_here(message) {
            if let Home::Remote(home) = regions.home_of(tenant.as_str()) {
                let Ok(permit) = permit() else {
                    return responder.deliver(Err(busy(shared)));
                };
                return region::forward_request(responder.request, &home, shared, permit);
            }
        }
    }
    // With a fleet, the partition's owner serves the request; the entry
    // holds the partition here until the reply is out.
    let entry = match (&shared.cluster, &parsed) {
        (Some(cluster), Some(Ok(tenant))) => match cluster.place(tenant.as_str()) {
            Place::Local(entry) => Some(entry),
            Place::Remote(owner) if hops(responder.request.message()) < MAX_HOPS => {
                let Ok(permit) = permit() else {
                    return responder.deliver(Err(busy(shared)));
                };
                return forward(responder.request, &owner, cluster, shared, permit);
            }
            Place::Remote(_) | Place::Unowned => {
                let held = permit().ok();
                return park(
                    responder.request,
                    cluster.clone(),
                    shared.clone(),
                    None,
                    held,
                );
            }
        },
        _ => None,
    };
    let slot = match &parsed {
        Some(Ok(tenant)) => match shared.backlog.admit(tenant) {
            Some(slot) => Some(slot),
            None => {
                return responder.deliver(Err(ServiceError::rate_limited(format!(
                    "tenant {tenant} has {} requests in flight (limits.tenant_queue); retry later",
                    shared.settings.limits.tenant_queue
                ))
                .retry_after(BACKLOG_RETRY_AFTER)));
            }
        },
        _ => None,
    };
    let Ok(permit) = permit() else {
        return responder.deliver(Err(busy(shared)));
    };
    // Held until the reply is out, so [`Serving::drain`] waits for it.
    responder.held = Some((permit, slot, entry));
    let message = responder.request.message();
    match addressed {
        Addressed::Tenant(verb, token) => {
            let decoded = span.in_scope(|| {
                // Parsed above, for the tenant's bound.
                let tenant = parsed.unwrap_or_else(|| TenantId::parse(token))?;
                let command = command(verb, &message.payload, &shared.settings)?;
                Ok::<_, ServiceError>((tenant, command.with_backups(&shared.backups)))
            });
            match decoded {
                Ok((tenant, command)) => {
                    responder.encoding = command.vector_encoding();
                    // A backup of a tenant with a DR region is answered
                    // once it is copied there too.
                    if let Some(object) = disaster::backup_object(&command, shared) {
                        let reply = disaster::AfterBackup {
                            responder,
                            shared: shared.clone(),
                            tenant: tenant.clone(),
                            object,
                        };
                        return shared.router.route(Envelope {
                            tenant,
                            command,
                            reply: ReplyTo::direct(Box::new(reply)),
                            span,
                        });
                    }
                    shared.router.route(Envelope {
                        tenant,
                        command,
                        reply: ReplyTo::direct(Box::new(responder)),
                        span,
                    });
                }
                Err(e) => responder.deliver(Err(e)),
            }
        }
        Addressed::Admin(verb) => match admin(verb, &message.payload, shared) {
            Ok(pending) => {
                tokio::spawn(
                    async move {
                        let outcome = pending.await;
                        responder.deliver(outcome);
                    }
                    .instrument(span),
                );
            }
            Err(e) => responder.deliver(Err(e)),
        },
        Addressed::Stream | Addressed::Unknown => {
            let e = unknown_verb(message.subject.as_str());
            responder.deliver(Err(e));
        }
    }
}

/// A tenant active here takes its new record before the reply goes out,
/// so the asker's next request sees it; other workers of a fleet take it
/// from the registry's changes.
async fn pass_on(record: &crate::registry::TenantRecord, shared: &Shared) {
    let _ = shared
        .router
        .supervisor()
        .send(crate::supervisor::NewRecord(record.clone()))
        .await;
}

/// The refusal of a request past `limits.max_in_flight`.
fn busy(shared: &Shared) -> ServiceError {
    ServiceError::unavailable(format!(
        "the worker has {} requests in flight; retry later",
        shared.settings.limits.max_in_flight
    ))
}
