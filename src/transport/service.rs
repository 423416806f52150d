//! The request-reply endpoints, served through the NATS Services API.
//!
//! Owns one task per endpoint, the bound on requests in flight, and the reply
//! format: JSON bodies, and for errors the `{"error": …}` body plus the
//! Services API error headers. It must never wait on a store directly (it
//! hands commands to the supervisor and awaits a oneshot) and never leave a
//! request unanswered: every path through [`handle`] ends in a reply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use async_nats::service::{Service, ServiceExt};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Settings;
use crate::protocol::{
    decode, tenant_token, AdminVerb, EmptyRequest, ErrorBody, EvictRequest, Reply, ServiceError,
    Subjects, Verb, HEADER_ERROR, HEADER_ERROR_CODE, SERVICE_NAME,
};
use crate::supervisor::{Cleanup, Evict, GetStats, Route, Supervisor};
use crate::tenant::TenantId;
use crate::tenant_actor::Envelope;
use crate::transport::decode::command;
use crate::transport::discovery::{META_BACKEND, META_PREFIX};
use crate::transport::ingest::IngestCounters;

/// What an endpoint serves.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Tenant(Verb),
    Admin(AdminVerb),
}

/// Shared by every request task.
struct Shared {
    settings: Settings,
    supervisor: Addr<Supervisor>,
    /// One permit per request in flight; none left means `unavailable`.
    in_flight: Arc<Semaphore>,
    /// The ingest figures, when this worker consumes the ingest stream.
    ingest: Option<Arc<IngestCounters>>,
    /// Numbers requests for their log spans.
    next_request: AtomicU64,
}

/// The running endpoints; [`Serving::drain`] stops them and waits for the
/// requests in flight.
pub struct Serving {
    service: Service,
    tasks: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

/// Subscribe every endpoint and start serving. `$SRV.PING.tenantvec` answers
/// from here on.
pub async fn start(
    client: async_nats::Client,
    settings: &Settings,
    supervisor: Addr<Supervisor>,
    backend: &str,
    ingest: Option<Arc<IngestCounters>>,
    shutdown: CancellationToken,
) -> anyhow::Result<Serving> {
    let subjects = Subjects::new(&settings.nats.prefix);
    let metadata = HashMap::from([
        (META_BACKEND.to_owned(), backend.to_owned()),
        (META_PREFIX.to_owned(), settings.nats.prefix.clone()),
    ]);
    let service = client
        .service_builder()
        .description("multi-tenant vector store: one isolated store per tenant")
        .metadata(metadata)
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the NATS service: {e}"))?;

    let shared = Arc::new(Shared {
        settings: settings.clone(),
        supervisor,
        in_flight: Arc::new(Semaphore::new(settings.limits.max_in_flight)),
        ingest,
        next_request: AtomicU64::new(1),
    });
    let mut endpoints = Vec::new();
    for verb in Verb::ALL {
        endpoints.push((
            Endpoint::Tenant(verb),
            verb.as_str().to_owned(),
            subjects.tenant_wildcard(verb),
        ));
    }
    for verb in AdminVerb::ALL {
        endpoints.push((
            Endpoint::Admin(verb),
            format!("admin-{}", verb.as_str()),
            subjects.admin(verb),
        ));
    }
    let mut tasks = Vec::new();
    for (kind, name, subject) in endpoints {
        let endpoint = service
            .endpoint_builder()
            .name(name)
            .add(subject.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot subscribe {subject}: {e}"))?;
        tasks.push(tokio::spawn(serve_endpoint(
            kind,
            endpoint,
            shared.clone(),
            shutdown.clone(),
        )));
    }
    client.flush().await?;
    Ok(Serving {
        service,
        tasks,
        shared,
    })
}

impl Serving {
    /// Stop taking requests, then wait (up to `timeout`) until every request
    /// in flight has been answered.
    pub async fn drain(self, timeout: Duration) {
        for task in self.tasks {
            let _ = task.await;
        }
        let max = self.shared.settings.limits.max_in_flight as u32;
        match tokio::time::timeout(timeout, self.shared.in_flight.acquire_many(max)).await {
            Ok(_) => tracing::info!("every request in flight was answered"),
            Err(_) => tracing::warn!(?timeout, "requests still in flight at the shutdown timeout"),
        }
        if let Err(e) = self.service.stop().await {
            tracing::debug!(error = %e, "stopping the service");
        }
    }
}

/// Take requests until shutdown, then unsubscribe and answer what was
/// already delivered to us.
async fn serve_endpoint(
    kind: Endpoint,
    mut endpoint: async_nats::service::endpoint::Endpoint,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            next = endpoint.next() => match next {
                Some(request) => dispatch(kind, request, &shared),
                None => return,
            },
        }
    }
    if let Err(e) = endpoint.stop().await {
        tracing::debug!(error = %e, "unsubscribing an endpoint");
    }
    // Requests the server delivered before it saw the unsubscribe.
    while let Ok(Some(request)) =
        tokio::time::timeout(Duration::from_millis(100), endpoint.next()).await
    {
        dispatch(kind, request, &shared);
    }
}

fn dispatch(kind: Endpoint, request: async_nats::service::Request, shared: &Arc<Shared>) {
    let permit = shared.in_flight.clone().try_acquire_owned();
    let shared = shared.clone();
    // Every log line of the request carries its id and tenant token (Debug
    // formatting, so a hostile token cannot forge log lines).
    let span = tracing::info_span!(
        "request",
        request_id = shared.next_request.fetch_add(1, Ordering::Relaxed),
        tenant = ?tenant_token(request.message.subject.as_str()),
    );
    let task = async move {
        let outcome = match &permit {
            Ok(_) => handle(kind, &request, &shared).await,
            Err(_) => Err(ServiceError::unavailable(format!(
                "the worker has {} requests in flight; retry later",
                shared.settings.limits.max_in_flight
            ))),
        };
        respond(&request, outcome).await;
        // The permit is held until the reply is out, so drain() waits for it.
        drop(permit);
    };
    tokio::spawn(task.instrument(span));
}

async fn handle(
    kind: Endpoint,
    request: &async_nats::service::Request,
    shared: &Shared,
) -> Result<Bytes, ServiceError> {
    let message = &request.message;
    match kind {
        Endpoint::Tenant(verb) => {
            let tenant = TenantId::parse(tenant_token(message.subject.as_str()))?;
            let command = command(verb, &message.payload, &shared.settings)?;
            let (reply, outcome) = oneshot::channel();
            shared.supervisor.do_send(Route(Envelope {
                tenant: tenant.clone(),
                command,
                reply,
                span: tracing::Span::current(),
            }));
            let reply: Reply = outcome.await.map_err(|_| {
                tracing::error!(%tenant, ?verb, "request lost its reply channel");
                ServiceError::internal("the tenant's job failed; see the worker log")
            })??;
            to_json(&reply)
        }
        Endpoint::Admin(verb) => admin(verb, &message.payload, shared).await,
    }
}

async fn admin(verb: AdminVerb, body: &[u8], shared: &Shared) -> Result<Bytes, ServiceError> {
    let unavailable = |e: actix::MailboxError| {
        ServiceError::unavailable(format!("the supervisor is not running: {e}"))
    };
    match verb {
        AdminVerb::Stats => {
            decode::<EmptyRequest>(body)?;
            let mut stats = shared
                .supervisor
                .send(GetStats)
                .await
                .map_err(unavailable)?;
            stats.ingest = shared.ingest.as_ref().map(|c| c.snapshot());
            to_json(&stats)
        }
        AdminVerb::Cleanup => {
            decode::<EmptyRequest>(body)?;
            let n = shared.supervisor.send(Cleanup).await.map_err(unavailable)?;
            to_json(&serde_json::json!({ "expired": n }))
        }
        AdminVerb::Evict => {
            let req = decode::<EvictRequest>(body)?;
            let tenant = req.tenant.as_deref().map(TenantId::parse).transpose()?;
            let n = shared
                .supervisor
                .send(Evict(tenant))
                .await
                .map_err(unavailable)?;
            to_json(&serde_json::json!({ "evicted": n }))
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Bytes, ServiceError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ServiceError::internal(format!("cannot encode the reply: {e}")))
}

/// Send the reply. Errors carry the JSON body and the Services API headers;
/// they are sent as a normal message (async-nats would send an error reply
/// with an empty body), so the service's own error counter stays at zero and
/// `admin.stats` is where failures are seen.
async fn respond(request: &async_nats::service::Request, outcome: Result<Bytes, ServiceError>) {
    let sent = match outcome {
        Ok(body) => request.respond(Ok(body)).await,
        Err(error) => {
            if error.code == crate::protocol::ErrorCode::Internal {
                tracing::error!(subject = %request.message.subject, %error, "request failed");
            } else {
                tracing::debug!(subject = %request.message.subject, %error, "request refused");
            }
            let mut headers = async_nats::HeaderMap::new();
            let text: String = error
                .message
                .chars()
                .map(|c| {
                    if c.is_ascii() && !c.is_ascii_control() {
                        c
                    } else {
                        ' '
                    }
                })
                .collect();
            headers.insert(HEADER_ERROR, text.as_str());
            headers.insert(HEADER_ERROR_CODE, error.code.status().to_string().as_str());
            let body = serde_json::to_vec(&ErrorBody { error }).unwrap_or_default();
            request.respond_with_headers(Ok(body.into()), headers).await
        }
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "reply not sent (no reply subject, or disconnected)");
    }
}
