//! The client side of the protocol, for people and scripts.
//!
//! Owns talking to a worker over NATS as any client would (requests on
//! `<prefix>.<verb>.<tenant>`, errors read from the reply) and the bulk
//! upload of a `docs.jsonl` file in batches that fit the server's payload
//! limit. It must never reach into the worker's internals: everything it does
//! goes over the wire.

use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::config::Settings;
use crate::protocol::{AdminVerb, ErrorBody, ServiceError, Subjects, Verb, HEADER_ERROR_CODE};

/// What went wrong on the client side of a request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The worker answered with an error.
    #[error("{0}")]
    Service(ServiceError),
    #[error("no tenantvec worker answers on {subject} (is one running with prefix {prefix:?}?)")]
    NoWorker { subject: String, prefix: String },
    #[error("{0}")]
    Other(#[from] anyhow::Error),
}

pub struct Client {
    nats: async_nats::Client,
    subjects: Subjects,
}

impl Client {
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            nats: crate::transport::connect(&settings.nats).await?,
            subjects: Subjects::new(&settings.nats.prefix),
        })
    }

    /// Send one request and decode its reply, turning error replies into
    /// [`ClientError::Service`].
    pub async fn request(&self, subject: String, body: &Value) -> Result<Value, ClientError> {
        let payload = Bytes::from(serde_json::to_vec(body).map_err(anyhow::Error::from)?);
        let reply = match self.nats.request(subject.clone(), payload).await {
            Ok(reply) => reply,
            Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                return Err(ClientError::NoWorker {
                    subject,
                    prefix: self.subjects.prefix().to_owned(),
                })
            }
            Err(e) => return Err(anyhow::anyhow!("request on {subject} failed: {e}").into()),
        };
        let is_error = reply
            .headers
            .as_ref()
            .is_some_and(|h| h.get(HEADER_ERROR_CODE).is_some());
        if is_error {
            let body: ErrorBody = serde_json::from_slice(&reply.payload)
                .map_err(|e| anyhow::anyhow!("unreadable error reply: {e}"))?;
            return Err(ClientError::Service(body.error));
        }
        serde_json::from_slice(&reply.payload)
            .map_err(|e| anyhow::anyhow!("unreadable reply: {e}").into())
    }

    pub async fn tenant(
        &self,
        verb: Verb,
        tenant: &str,
        body: &Value,
    ) -> Result<Value, ClientError> {
        self.request(self.subjects.tenant(verb, tenant), body).await
    }

    pub async fn admin(&self, verb: AdminVerb, body: &Value) -> Result<Value, ClientError> {
        self.request(self.subjects.admin(verb), body).await
    }

    /// Upload a `docs.jsonl` file (one document per line) to `tenant`.
    ///
    /// Lines that name another `"tenant"` are skipped, so a multi-tenant
    /// file can be loaded one tenant at a time. Batches stay under both the
    /// per-request document limit and the server's `max_payload`.
    pub async fn upsert_file(
        &self,
        tenant: &str,
        file: &Path,
        max_documents: usize,
    ) -> Result<Value, ClientError> {
        let reader = std::io::BufReader::new(
            std::fs::File::open(file)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.display()))?,
        );
        // Leave room for the envelope and the NATS headers.
        let max_bytes = (self.nats.server_info().max_payload)
            .saturating_sub(4096)
            .max(1024);
        let started = Instant::now();
        let (mut batch, mut batch_bytes) = (Vec::new(), 0usize);
        let (mut upserted, mut requests, mut skipped) = (0u64, 0u64, 0u64);
        for (n, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let mut doc: Value = serde_json::from_str(&line).map_err(|e| {
                anyhow::anyhow!("{}:{}: not a JSON document: {e}", file.display(), n + 1)
            })?;
            if let Some(obj) = doc.as_object_mut() {
                match obj.remove("tenant") {
                    Some(Value::String(t)) if t != tenant => {
                        skipped += 1;
                        continue;
                    }
                    _ => {}
                }
            }
            let size = line.len();
            if !batch.is_empty() && (batch.len() >= max_documents || batch_bytes + size > max_bytes)
            {
                upserted += self.send_batch(tenant, std::mem::take(&mut batch)).await?;
                requests += 1;
                batch_bytes = 0;
            }
            batch.push(doc);
            batch_bytes += size + 1;
        }
        if !batch.is_empty() {
            upserted += self.send_batch(tenant, batch).await?;
            requests += 1;
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(json!({
            "tenant": tenant,
            "upserted": upserted,
            "requests": requests,
            "skipped_other_tenants": skipped,
            "seconds": seconds,
            "docs_per_second": if seconds > 0.0 { upserted as f64 / seconds } else { 0.0 },
        }))
    }

    async fn send_batch(&self, tenant: &str, documents: Vec<Value>) -> Result<u64, ClientError> {
        let reply = self
            .tenant(Verb::Upsert, tenant, &json!({ "documents": documents }))
            .await?;
        Ok(reply["upserted"].as_u64().unwrap_or(0))
    }
}
