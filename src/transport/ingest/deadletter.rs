//! Dead letters: the record of a message that can never succeed, stored
//! with its whole body (so it can be replayed), then the message
//! terminated.
//!
//! Owns the record's shape. It must never terminate a message whose record
//! was not stored first, nor (with encryption on) store a body in the
//! clear: it is sealed with the tenant's data key ([`super::sealing`]).

use std::sync::atomic::Ordering;

use async_nats::jetstream::{self, AckKind};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::Serialize;

use crate::protocol::{tenant_token, ServiceError};
use crate::tenant::TenantId;

use super::confirm;
use super::sealing::{is_sealed, keep_body, KeptBody, SEALED_HEADER};
use super::Shared;

/// The dead-letter record of a message that can never succeed. The body is
/// kept whole (base64: it may not even be UTF-8) because terminating the
/// message removes it from the work-queue stream.
#[derive(Debug, Serialize)]
pub(super) struct DeadLetter<'a> {
    subject: &'a str,
    stream_seq: u64,
    error: &'a ServiceError,
    /// When the worker gave up on it (RFC 3339, UTC).
    time: String,
    /// The message's headers, each with its values, when it had any.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    headers: std::collections::BTreeMap<String, Vec<String>>,
    /// Absent when withheld (encryption on, no tenant to seal it for).
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    /// With encryption on: the body is sealed with the tenant's data key
    /// (and its headers carry the sealed header, so a replay of it is
    /// opened by the worker that applies it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    sealed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_withheld: Option<&'static str>,
}

/// Store a dead-letter record (with the message's body, so it can be
/// replayed), then terminate the message. Returns whether both happened;
/// when the record cannot be stored the message stays, so it is never lost.
pub(super) async fn dead_letter(
    shared: &Shared,
    message: &jetstream::Message,
    tenant: Option<&TenantId>,
    stream_seq: u64,
    error: &ServiceError,
) -> bool {
    let subject = shared.names.deadletter_subject(tenant);
    let already_sealed = is_sealed(message.headers.as_ref());
    let kept = match keep_body(
        shared.tenancy.keys.as_ref(),
        tenant,
        &message.payload,
        already_sealed,
    )
    .await
    {
        Ok(kept) => kept,
        Err(e) => {
            tracing::warn!(%subject, error = %e, "cannot seal a dead letter's body now; retrying the message later");
            return false;
        }
    };
    let mut headers: std::collections::BTreeMap<String, Vec<String>> = message
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .map(|(name, values)| {
            let values = values.iter().map(|v| v.as_str().to_owned()).collect();
            (name.to_string(), values)
        })
        .collect();
    // The subject the producer published to, which a replay publishes to
    // again (the stream files it by partition, one token longer).
    let published = shared.names.ingest_subject(tenant_token(&message.subject));
    let (body_base64, body_withheld) = match &kept {
        KeptBody::AsIs => (Some(BASE64.encode(&message.payload)), None),
        KeptBody::Sealed(sealed) => {
            headers.insert(SEALED_HEADER.to_owned(), vec!["1".to_owned()]);
            (Some(BASE64.encode(sealed)), None)
        }
        KeptBody::Withheld => (
            None,
            Some("encryption is on and the subject names no tenant whose key could seal it"),
        ),
    };
    let record = DeadLetter {
        subject: &published,
        stream_seq,
        error,
        time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        headers,
        body_base64,
        sealed: already_sealed || matches!(kept, KeptBody::Sealed(_)),
        body_withheld,
    };
    let body = match serde_json::to_vec(&record) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a dead-letter record");
            return false;
        }
    };
    let stored = match shared.js.publish(subject.clone(), body.into()).await {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match stored {
        Ok(()) => {
            shared
                .counters
                .dead_lettered
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(subject = %message.subject, stream_seq, %error, "ingest message dead-lettered");
            if !confirm(message, AckKind::Term).await {
                tracing::warn!("term not confirmed; the message will be dead-lettered again");
                return false;
            }
            true
        }
        Err(e) => {
            tracing::error!(%subject, error = %e, "cannot store a dead-letter record; retrying the message later");
            false
        }
    }
}
