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

    /// Upload a `docs.jsonl` file (one document per line) to `tenant` with
    /// `upsert` requests, one batch at a time, each acknowledged once durable.
    pub async fn upsert_file(
        &self,
        tenant: &str,
        file: &Path,
        max_documents: usize,
    ) -> Result<Value, ClientError> {
        let started = Instant::now();
        let mut batches = DocBatches::open(file, tenant, max_documents, self.max_batch_bytes())?;
        let (mut upserted, mut requests) = (0u64, 0u64);
        while let Some(batch) = batches.next_batch()? {
            upserted += self.send_batch(tenant, batch).await?;
            requests += 1;
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(json!({
            "tenant": tenant,
            "upserted": upserted,
            "requests": requests,
            "skipped_other_tenants": batches.skipped,
            "seconds": seconds,
            "docs_per_second": rate(upserted, seconds),
        }))
    }

    /// Publish a `docs.jsonl` file to `tenant`'s durable ingest subject:
    /// JetStream publishes with at most `max_outstanding` acks awaited at
    /// once, a progress bar on a terminal, then (unless `wait` is false) a
    /// wait until the worker has committed and acked every message of the
    /// tenant.
    pub async fn ingest_file(
        &self,
        tenant: &str,
        file: &Path,
        max_documents: usize,
        wait: bool,
    ) -> Result<Value, ClientError> {
        use futures::stream::FuturesUnordered;
        use futures::StreamExt;

        let js = async_nats::jetstream::new(self.nats.clone());
        let names = crate::transport::ingest::Names::new(self.subjects.prefix());
        let subject = names.ingest_subject(tenant);
        let total = count_lines(file)?;
        let progress = indicatif::ProgressBar::new(total);
        progress.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bar:40} {pos}/{len} docs  {per_sec}  eta {eta}  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let started = Instant::now();
        let mut batches = DocBatches::open(file, tenant, max_documents, self.max_batch_bytes())?;
        let mut outstanding = FuturesUnordered::new();
        let (mut published, mut messages) = (0u64, 0u64);
        let settle = |acked: Result<u64, async_nats::jetstream::context::PublishError>| {
            acked.map(|_| ()).map_err(|e| {
                ClientError::Other(anyhow::anyhow!("JetStream did not store a message: {e}"))
            })
        };
        while let Some(batch) = batches.next_batch()? {
            let n = batch.len() as u64;
            let body =
                serde_json::to_vec(&json!({ "documents": batch })).map_err(anyhow::Error::from)?;
            let ack = js
                .publish(subject.clone(), body.into())
                .await
                .map_err(|e| anyhow::anyhow!("cannot publish to {subject}: {e}"))?;
            outstanding.push(async move { ack.await.map(|_| n) });
            while outstanding.len() >= MAX_OUTSTANDING_ACKS {
                if let Some(acked) = outstanding.next().await {
                    settle(acked)?;
                }
            }
            published += n;
            messages += 1;
            progress.set_position(published + batches.skipped);
        }
        while let Some(acked) = outstanding.next().await {
            settle(acked)?;
        }
        let publish_seconds = started.elapsed().as_secs_f64();
        progress.finish_and_clear();
        let mut summary = json!({
            "tenant": tenant,
            "subject": subject,
            "published": published,
            "messages": messages,
            "skipped_other_tenants": batches.skipped,
            "publish_seconds": publish_seconds,
            "publish_docs_per_second": rate(published, publish_seconds),
        });
        if wait {
            self.wait_drained(&js, &names.ingest_stream, &subject)
                .await?;
            let seconds = started.elapsed().as_secs_f64();
            summary["committed_seconds"] = json!(seconds);
            summary["committed_docs_per_second"] = json!(rate(published, seconds));
        }
        Ok(summary)
    }

    /// Wait until the ingest stream holds no message on `subject`: with a
    /// work-queue stream, that is when workers have acked them all.
    async fn wait_drained(
        &self,
        js: &async_nats::jetstream::Context,
        stream: &str,
        subject: &str,
    ) -> Result<(), ClientError> {
        let mut stream = js
            .get_stream(stream)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open stream {stream}: {e}"))?;
        let spinner = indicatif::ProgressBar::new_spinner();
        loop {
            let pending = pending_on(&mut stream, subject).await?;
            if pending == 0 {
                spinner.finish_and_clear();
                return Ok(());
            }
            spinner.set_message(format!(
                "waiting for the worker: {pending} messages pending"
            ));
            spinner.tick();
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    fn max_batch_bytes(&self) -> usize {
        // Leave room for the envelope and the NATS headers.
        self.nats
            .server_info()
            .max_payload
            .saturating_sub(4096)
            .max(1024)
    }

    async fn send_batch(&self, tenant: &str, documents: Vec<Value>) -> Result<u64, ClientError> {
        let reply = self
            .tenant(Verb::Upsert, tenant, &json!({ "documents": documents }))
            .await?;
        Ok(reply["upserted"].as_u64().unwrap_or(0))
    }
}

/// JetStream publish acks awaited at once by `ingest_file`.
const MAX_OUTSTANDING_ACKS: usize = 64;

fn rate(n: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

fn count_lines(file: &Path) -> Result<u64, ClientError> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(file)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.display()))?,
    );
    Ok(reader.lines().count() as u64)
}

/// Messages of the ingest stream on `subject` (0 when none).
pub async fn pending_on(
    stream: &mut async_nats::jetstream::stream::Stream,
    subject: &str,
) -> Result<u64, ClientError> {
    use futures::TryStreamExt;
    let counts: Vec<(String, usize)> = stream
        .info_with_subjects(subject)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the ingest stream: {e}"))?
        .try_collect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the ingest stream: {e}"))?;
    Ok(counts.iter().map(|(_, n)| *n as u64).sum())
}

/// A `docs.jsonl` file read as batches of documents for one tenant: each
/// batch within the per-request document limit and the payload limit. Lines
/// naming another `"tenant"` are skipped (and counted), so a multi-tenant
/// file loads one tenant at a time.
struct DocBatches {
    lines: std::iter::Enumerate<std::io::Lines<std::io::BufReader<std::fs::File>>>,
    file: std::path::PathBuf,
    tenant: String,
    max_documents: usize,
    max_bytes: usize,
    carry: Option<(Value, usize)>,
    skipped: u64,
}

impl DocBatches {
    fn open(
        file: &Path,
        tenant: &str,
        max_documents: usize,
        max_bytes: usize,
    ) -> Result<Self, ClientError> {
        let reader = std::io::BufReader::new(
            std::fs::File::open(file)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.display()))?,
        );
        Ok(Self {
            lines: reader.lines().enumerate(),
            file: file.to_owned(),
            tenant: tenant.to_owned(),
            max_documents: max_documents.max(1),
            max_bytes,
            carry: None,
            skipped: 0,
        })
    }

    fn next_doc(&mut self) -> Result<Option<(Value, usize)>, ClientError> {
        if let Some(carried) = self.carry.take() {
            return Ok(Some(carried));
        }
        for (n, line) in self.lines.by_ref() {
            let line = line.map_err(|e| anyhow::anyhow!("reading {}: {e}", self.file.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let mut doc: Value = serde_json::from_str(&line).map_err(|e| {
                anyhow::anyhow!(
                    "{}:{}: not a JSON document: {e}",
                    self.file.display(),
                    n + 1
                )
            })?;
            if let Some(obj) = doc.as_object_mut() {
                match obj.remove("tenant") {
                    Some(Value::String(t)) if t != self.tenant => {
                        self.skipped += 1;
                        continue;
                    }
                    _ => {}
                }
            }
            return Ok(Some((doc, line.len() + 1)));
        }
        Ok(None)
    }

    fn next_batch(&mut self) -> Result<Option<Vec<Value>>, ClientError> {
        let (mut batch, mut bytes) = (Vec::new(), 0usize);
        while let Some((doc, size)) = self.next_doc()? {
            if !batch.is_empty()
                && (batch.len() >= self.max_documents || bytes + size > self.max_bytes)
            {
                self.carry = Some((doc, size));
                break;
            }
            batch.push(doc);
            bytes += size;
        }
        Ok((!batch.is_empty()).then_some(batch))
    }
}
