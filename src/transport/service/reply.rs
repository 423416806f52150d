//! The reply to one request: its body or its error (the `{"error": …}`
//! body and the Services API error headers), sent from wherever the outcome
//! is made, and the request's metrics finished with it.
//!
//! Owns the reply's format. It must never leave a request unanswered, nor
//! answer one twice.

use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::{Incoming, Shared};
use crate::cluster::Entry;
use crate::command::{Outcome, Respond};
use crate::metrics::RequestMark;
use crate::protocol::{ErrorBody, ServiceError, VectorEncoding, HEADER_ERROR, HEADER_ERROR_CODE};
use crate::transport::backlog::Slot;

/// Answer `request` with `error` at once.
pub(super) fn reply_now(request: Incoming, shared: &Arc<Shared>, error: ServiceError) {
    let addressed = shared.subjects.classify(request.message().subject.as_str());
    Responder {
        mark: shared.metrics.start(addressed),
        request,
        encoding: VectorEncoding::Array,
        runtime: shared.runtime.clone(),
        span: tracing::Span::current(),
        held: None,
    }
    .deliver(Err(error));
}

/// The reply to one NATS request, sent from wherever its outcome is made.
pub(super) struct Responder {
    pub(super) request: Incoming,
    /// How the reply carries vectors.
    pub(super) encoding: VectorEncoding,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) span: tracing::Span,
    /// The in-flight permit, the tenant's slot and the partition's entry,
    /// released once sent.
    pub(super) held: Option<(OwnedSemaphorePermit, Option<Slot>, Option<Entry>)>,
    /// Counts and times the request once its reply is out.
    pub(super) mark: RequestMark,
}

impl Responder {
    /// Send the reply. Publishing only queues it for the connection's
    /// writer, so it is tried here, on the caller's thread, and completes at
    /// once unless that queue is full; then a task of the runtime waits for
    /// room. (A publish that did not complete sent nothing, so trying it
    /// again is safe.)
    pub(super) fn deliver(self, outcome: Result<Bytes, ServiceError>) {
        let code = outcome.as_ref().err().map(|e| e.code);
        let sent = {
            let _entered = self.span.enter();
            respond(&self.request, outcome.clone()).now_or_never()
        };
        match sent {
            Some(()) => self.finish(code),
            None => {
                let runtime = self.runtime.clone();
                let span = self.span.clone();
                runtime.spawn(
                    async move {
                        respond(&self.request, outcome).await;
                        self.finish(code);
                    }
                    .instrument(span),
                );
            }
        }
    }

    /// The reply is out: count it, then let go of the permit and the slot.
    fn finish(self, code: Option<crate::protocol::ErrorCode>) {
        let Responder { mark, held, .. } = self;
        mark.finish(code);
        drop(held);
    }
}

impl Respond for Responder {
    fn respond(self: Box<Self>, outcome: Outcome) {
        let body = outcome.and_then(|reply| {
            reply
                .encode(self.encoding)
                .map(Bytes::from)
                .map_err(|e| ServiceError::internal(format!("cannot encode the reply: {e}")))
        });
        self.deliver(body);
    }
}

/// Send the reply. Errors carry the JSON body and the Services API headers;
/// they are sent as a normal message (async-nats would send an error reply
/// with an empty body), so the service's own error counter stays at zero and
/// `admin.stats` is where failures are seen.
pub(super) async fn respond(request: &Incoming, outcome: Result<Bytes, ServiceError>) {
    let sent = match outcome {
        Ok(body) => send(request, body, None).await,
        Err(error) => {
            let subject = &request.message().subject;
            if error.code == crate::protocol::ErrorCode::Internal {
                tracing::error!(%subject, %error, "request failed");
            } else {
                tracing::debug!(%subject, %error, "request refused");
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
            send(request, body.into(), Some(headers)).await
        }
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "reply not sent (no reply subject, or disconnected)");
    }
}

/// Publish a reply: through the service for its own requests (which keeps
/// its statistics), straight to the client's reply subject for forwarded
/// ones.
pub(super) async fn send(
    request: &Incoming,
    body: Bytes,
    headers: Option<async_nats::HeaderMap>,
) -> Result<(), async_nats::Error> {
    match (request, headers) {
        (Incoming::Service(r), None) => r.respond(Ok(body)).await.map_err(Into::into),
        (Incoming::Service(r), Some(h)) => r
            .respond_with_headers(Ok(body), h)
            .await
            .map_err(Into::into),
        (Incoming::Bare(m, client), headers) => {
            let Some(reply) = m.reply.clone() else {
                return Ok(());
            };
            match headers {
                Some(h) => client.publish_with_headers(reply, h, body).await,
                None => client.publish(reply, body).await,
            }
            .map_err(Into::into)
        }
    }
}

/// The error a worker's reply carries, if it is an error reply (its
/// Services API error header set); `from` names who answered, for a body
/// that cannot be read.
pub(super) fn error_in(reply: &async_nats::Message, from: &str) -> Result<(), ServiceError> {
    let failed = reply
        .headers
        .as_ref()
        .is_some_and(|h| h.get(HEADER_ERROR_CODE).is_some());
    if !failed {
        return Ok(());
    }
    let body: ErrorBody = serde_json::from_slice(&reply.payload)
        .map_err(|e| ServiceError::internal(format!("{from}: an unreadable error reply: {e}")))?;
    Err(body.error)
}
