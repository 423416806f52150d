//! A request or an ingest message of a tenant homed in another region: sent
//! there, and its answer relayed back.
//!
//! Owns the hop between regions. A request goes to
//! `<p>._region.<home>.<original subject>`, which the home region's workers
//! take as their own; an ingest message (a JetStream publish on
//! `<p>.ingest.<tenant>`, which no stream of a region takes) is published
//! to the home region's stream subject, `<p>.<home>.ingest.<tenant>`, and
//! the stream's acknowledgement goes back to the producer as it came, so
//! that the producer's ack means "stored in the home region". Both leave
//! through the relay in arrival order. It must never store a tenant's
//! message outside its home, and never leave a sender waiting on a region
//! that is gone: NATS answers a forward to a region without workers (its
//! servers down, or cut off) with "no responders", and the sender is
//! answered `unavailable`, naming the region, at once.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use super::placement::hops;
use super::{reply_now, Incoming, Shared, HEADER_HOPS};
use crate::names::{storage_prefix, Names};
use crate::protocol::{Addressed, ServiceError};
use crate::region::forward_prefix;

/// Send `request` to `region`, which holds its tenant.
pub(super) fn forward_request(
    request: Incoming,
    region: &str,
    shared: &Arc<Shared>,
    permit: OwnedSemaphorePermit,
) {
    let message = request.into_message();
    let subject = format!(
        "{}.{}",
        forward_prefix(&shared.settings.nats.prefix, region),
        message.subject
    );
    let mut headers = message.headers.clone().unwrap_or_default();
    headers.insert(HEADER_HOPS, (hops(&message) + 1).to_string().as_str());
    shared.metrics.region_forwarded(region, false);
    send(shared, subject, region, headers, message, permit);
}

/// Publish an ingest message of `tenant` (the token of its subject) to the
/// stream of its home `region`, headers and body as they came.
pub(super) fn forward_ingest(
    message: async_nats::Message,
    tenant: &str,
    region: &str,
    shared: &Arc<Shared>,
    permit: OwnedSemaphorePermit,
) {
    let names = Names::new(&storage_prefix(&shared.settings.nats.prefix, Some(region)));
    let subject = names.ingest_subject(tenant);
    let headers = message.headers.clone().unwrap_or_default();
    shared.metrics.region_forwarded(region, true);
    send(shared, subject, region, headers, message, permit);
}

fn send(
    shared: &Arc<Shared>,
    subject: String,
    region: &str,
    headers: async_nats::HeaderMap,
    message: async_nats::Message,
    permit: OwnedSemaphorePermit,
) {
    let Some(relay) = &shared.region_relay else {
        return;
    };
    relay.forward(subject, region, headers, message, permit, &shared.runtime);
}

/// Answer a forward to `region` that did not arrive (no worker listens
/// there) or was not answered in time: `unavailable`, naming the region; to
/// a producer, in the shape of a JetStream error, which its client raises.
pub(super) fn answer_unreached(
    message: async_nats::Message,
    region: &str,
    answered_late: bool,
    shared: &Arc<Shared>,
) {
    shared.metrics.region_unreachable(region);
    let tenant = crate::protocol::tenant_token(message.subject.as_str()).to_owned();
    let what = match answered_late {
        true => format!(
            "did not answer in {:?}",
            shared.settings.nats.request_timeout
        ),
        false => "is unreachable (no worker of it answers)".to_owned(),
    };
    let error = ServiceError::unavailable(format!(
        "tenant {tenant:?} lives in region {region}, which {what}; retry later"
    ));
    let addressed = shared.subjects.classify(message.subject.as_str());
    if addressed == Addressed::Stream {
        return refuse_publish(message, error.message, shared);
    }
    reply_now(
        Incoming::Bare(message, shared.client.clone()),
        shared,
        error,
    );
}

/// Answer a JetStream publish that no stream stored, as a stream answers
/// one it cannot take (status 503, which the producer's client raises).
pub(super) fn refuse_publish(message: async_nats::Message, description: String, shared: &Shared) {
    let Some(reply) = message.reply else {
        return;
    };
    let body = serde_json::json!({
        "error": {"code": 503, "err_code": 10000, "description": description},
    });
    let client = shared.client.clone();
    shared.runtime.spawn(async move {
        let _ = client.publish(reply, body.to_string().into()).await;
    });
}

/// Whether `message` was sent by a move to be served in this region,
/// whatever the directory says (its copy of the tenant is arriving here).
pub(super) fn served_here(message: &async_nats::Message) -> bool {
    message
        .headers
        .as_ref()
        .is_some_and(|h| h.get(HEADER_HERE).is_some())
}

/// The header a move puts on the requests it sends to one region's copy.
pub const HEADER_HERE: &str = "Tenantvec-Region-Here";

/// `subject` (an original one) asked of a worker of `region` on its region
/// subject, the reply once it is known not to be an error reply. A region
/// without workers is `unavailable`, naming it, at once.
pub(super) async fn request_in(
    shared: &Shared,
    region: &str,
    subject: &str,
    payload: bytes::Bytes,
    headers: async_nats::HeaderMap,
    timeout: std::time::Duration,
) -> Result<async_nats::Message, ServiceError> {
    let request = async_nats::Request::new()
        .payload(payload)
        .headers(headers)
        .timeout(Some(timeout));
    // Counted as a forward only when it leaves this region (a move also
    // asks its own region's copy).
    if shared.regions.as_ref().is_some_and(|r| r.own() != region) {
        shared.metrics.region_forwarded(region, false);
    }
    let unreachable = |what: String| {
        shared.metrics.region_unreachable(region);
        ServiceError::unavailable(format!("region {region} {what}; retry later"))
    };
    let forwarded = format!(
        "{}.{subject}",
        forward_prefix(&shared.settings.nats.prefix, region)
    );
    let reply = shared
        .client
        .send_request(forwarded, request)
        .await
        .map_err(|e| match e.kind() {
            async_nats::client::RequestErrorKind::NoResponders => {
                unreachable("is unreachable (no worker of it answers)".into())
            }
            _ => unreachable(format!("did not answer: {e}")),
        })?;
    super::reply::error_in(&reply, &format!("region {region}"))?;
    Ok(reply)
}

/// The worker's regions, or the refusal of an operation that needs them.
pub(super) fn regions_of(shared: &Shared) -> Result<&crate::region::Regions, ServiceError> {
    shared.regions.as_ref().ok_or_else(|| {
        ServiceError::bad_request("this deployment has no regions (worker.region is not set)")
    })
}

/// The backup bucket of `region` (this one's too, through its domain), if
/// it has one.
pub(super) async fn bucket(
    shared: &Shared,
    region: &str,
) -> Option<async_nats::jetstream::object_store::ObjectStore> {
    let js = async_nats::jetstream::with_domain(shared.client.clone(), region);
    let name =
        crate::backup::bucket_name(&storage_prefix(&shared.settings.nats.prefix, Some(region)));
    js.get_object_store(&name).await.ok()
}

/// Copy `object` from `from`'s backup bucket to `to`'s (made when missing).
pub(super) async fn copy_object(
    shared: &Shared,
    object: &str,
    from: &str,
    to: &str,
) -> Result<(), ServiceError> {
    let source = bucket(shared, from)
        .await
        .ok_or_else(|| ServiceError::internal(format!("region {from} has no backup bucket")))?;
    let js = async_nats::jetstream::with_domain(shared.client.clone(), to);
    let name = crate::backup::bucket_name(&storage_prefix(&shared.settings.nats.prefix, Some(to)));
    let target = match js.get_object_store(&name).await {
        Ok(b) => b,
        Err(_) => js
            .create_object_store(async_nats::jetstream::object_store::Config {
                bucket: name.clone(),
                description: Some("tenantvec backups and exports".into()),
                num_replicas: shared.settings.nats.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| ServiceError::unavailable(format!("region {to}'s backup bucket: {e}")))?,
    };
    let mut reader = source
        .get(object)
        .await
        .map_err(|e| ServiceError::internal(format!("reading {object} in region {from}: {e}")))?;
    target
        .put(object, &mut reader)
        .await
        .map_err(|e| ServiceError::unavailable(format!("copying {object} to region {to}: {e}")))?;
    Ok(())
}
