//! The client side of the protocol, for people and scripts.
//!
//! Owns talking to a worker over NATS as any client would (requests on
//! `<prefix>.<verb>.<tenant>`, errors read from the reply) and the bulk
//! upload of a `docs.jsonl` file in batches that fit the server's payload
//! limit. It must never reach into the worker's internals: everything it does
//! goes over the wire.

pub mod backup;
pub mod backup_all;
pub mod deadletter;
pub mod regions;
pub mod retry;
pub mod tenants;

use std::collections::{HashMap, VecDeque};
use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::config::Settings;
use crate::protocol::{AdminVerb, ErrorBody, ServiceError, Subjects, Verb, HEADER_ERROR_CODE};
use crate::tenant::TenantId;

/// `raw` as a tenant id, or the `invalid_tenant` error the worker would
/// give, with the rule, before anything is sent.
pub fn check_tenant(raw: &str) -> Result<TenantId, ClientError> {
    TenantId::parse(raw).map_err(|mut e| {
        if !e.message.contains("must match") {
            e.message = format!(
                "{} (tenant ids must match [a-z0-9][a-z0-9_-]{{0,63}})",
                e.message
            );
        }
        ClientError::Service(e)
    })
}

/// What went wrong on the client side of a request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The worker answered with an error.
    #[error("{0}")]
    Service(ServiceError),
    #[error("no tenantvec worker answers on {subject} (is one running with prefix {prefix:?}?)")]
    NoWorker { subject: String, prefix: String },
    #[error("no reply on {subject} in time (nats.request_timeout): the worker is busy or gone")]
    TimedOut { subject: String },
    #[error("{0}")]
    Other(#[from] anyhow::Error),
}

pub struct Client {
    nats: async_nats::Client,
    subjects: Subjects,
    /// How long after its first try a request safe to repeat is tried
    /// again while its failure may pass ([`retry`]).
    retry_deadline: std::time::Duration,
    storage: String,
}

impl Client {
    /// The NATS connection, for callers that speak NATS directly (the benchmark).
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The prefix the deployment's streams and buckets are named from
    /// ([`Settings::storage_prefix`]): with regions, those of the region
    /// whose NATS servers this client is connected to.
    pub fn storage_prefix(&self) -> &str {
        &self.storage
    }

    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        crate::protocol::check_prefix(&settings.nats.prefix).map_err(anyhow::Error::msg)?;
        Ok(Self {
            nats: crate::transport::connect(&settings.nats).await?,
            subjects: Subjects::new(&settings.nats.prefix),
            storage: settings.storage_prefix(),
            retry_deadline: settings.nats.retry_deadline,
        })
    }

    /// Send one request and decode its reply, turning error replies into
    /// [`ClientError::Service`].
    pub async fn request(
        &self,
        subject: String,
        body: &impl serde::Serialize,
    ) -> Result<Value, ClientError> {
        let payload = Bytes::from(serde_json::to_vec(body).map_err(anyhow::Error::from)?);
        self.request_bytes(subject, payload).await
    }

    /// [`Client::request`] with a body already serialised.
    pub async fn request_bytes(
        &self,
        subject: String,
        payload: Bytes,
    ) -> Result<Value, ClientError> {
        self.request_with(subject, async_nats::Request::new().payload(payload))
            .await
    }

    /// [`Client::request_bytes`] waiting up to `timeout` for the reply (a
    /// long job: export, import).
    pub async fn request_timeout(
        &self,
        subject: String,
        payload: Bytes,
        timeout: std::time::Duration,
    ) -> Result<Value, ClientError> {
        let request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        self.request_with(subject, request).await
    }

    async fn request_with(
        &self,
        subject: String,
        request: async_nats::Request,
    ) -> Result<Value, ClientError> {
        let reply = match self.nats.send_request(subject.clone(), request).await {
            Ok(reply) => reply,
            Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                return Err(ClientError::NoWorker {
                    subject,
                    prefix: self.subjects.prefix().to_owned(),
                })
            }
            Err(e) if e.kind() == async_nats::client::RequestErrorKind::TimedOut => {
                return Err(ClientError::TimedOut { subject })
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
        check_tenant(tenant)?;
        let subject = self.subjects.tenant(verb, tenant);
        self.request_as(retry::Request::Tenant(verb), subject, body)
            .await
    }

    pub async fn admin(&self, verb: AdminVerb, body: &Value) -> Result<Value, ClientError> {
        let subject = self.subjects.admin(verb);
        self.request_as(retry::Request::Admin(verb), subject, body)
            .await
    }

    /// [`Client::request`] of a `kind` of request, tried again while its
    /// failure may pass, if it is safe to send twice: after a jittered wait
    /// (at least what a `rate_limited` reply asks for), as long as the next
    /// try starts within `nats.retry_deadline` of the first.
    pub async fn request_as(
        &self,
        kind: retry::Request,
        subject: String,
        body: &impl serde::Serialize,
    ) -> Result<Value, ClientError> {
        let payload = Bytes::from(serde_json::to_vec(body).map_err(anyhow::Error::from)?);
        let started = Instant::now();
        let mut tries = 0u32;
        loop {
            let error = match self.request_bytes(subject.clone(), payload.clone()).await {
                Ok(reply) => return Ok(reply),
                Err(e) => e,
            };
            tries += 1;
            let (passes, hint) = retry::may_pass(&error);
            if !passes || !retry::safe_to_repeat(kind) {
                return Err(error);
            }
            let wait = retry::wait(tries, retry::jitter(), hint);
            if started.elapsed() + wait > self.retry_deadline {
                return Err(error);
            }
            tracing::debug!(%subject, tries, ?wait, %error, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Upload a `docs.jsonl` file (one document per line) to `tenant` with
    /// `upsert` requests, one batch at a time, each acknowledged once durable.
    pub async fn upsert_file(
        &self,
        tenant: &str,
        file: &Path,
        max_documents: usize,
    ) -> Result<Value, ClientError> {
        check_tenant(tenant)?;
        let started = Instant::now();
        let mut batches =
            DocBatches::open(file, Some(tenant), max_documents, self.max_batch_bytes())?;
        let (mut upserted, mut requests) = (0u64, 0u64);
        while let Some((_, batch)) = batches.next_batch()? {
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

    /// Publish a `docs.jsonl` file to the durable ingest subject of `tenant`,
    /// or of each line's own tenant when `tenant` is `None`: JetStream
    /// publishes with at most [`MAX_OUTSTANDING_ACKS`] acks awaited at once,
    /// of at most [`MAX_OUTSTANDING_BYTES`] together, and a progress bar on
    /// a terminal; then, unless `wait` is false, a wait until the workers
    /// have committed and acked every message published.
    pub async fn ingest_file(
        &self,
        tenant: Option<&str>,
        file: &Path,
        max_documents: usize,
        wait: bool,
    ) -> Result<Value, ClientError> {
        use futures::stream::FuturesUnordered;
        use futures::StreamExt;

        if let Some(tenant) = tenant {
            check_tenant(tenant)?;
        }
        let js = async_nats::jetstream::new(self.nats.clone());
        let names = crate::names::Names::new(self.subjects.prefix());
        let progress = indicatif::ProgressBar::new(count_lines(file)?);
        progress.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bar:40} {pos}/{len} docs  {per_sec}  eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let started = Instant::now();
        let mut batches = DocBatches::open(file, tenant, max_documents, self.max_batch_bytes())?;
        let mut outstanding = FuturesUnordered::new();
        let mut outstanding_bytes = 0usize;
        let (mut published, mut messages) = (0u64, 0u64);
        let mut tenants = std::collections::BTreeSet::new();
        let settle = |acked: Result<_, async_nats::jetstream::context::PublishError>| {
            acked.map(|_| ()).map_err(|e| {
                ClientError::Other(anyhow::anyhow!("JetStream did not store a message: {e}"))
            })
        };
        while let Some((tenant, batch)) = batches.next_batch()? {
            let subject = names.ingest_subject(&tenant);
            let n = batch.len() as u64;
            let body = serde_json::to_vec(&DocumentsBody { documents: &batch })
                .map_err(anyhow::Error::from)?;
            let size = body.len();
            let ack = js
                .publish(subject.clone(), body.into())
                .await
                .map_err(|e| anyhow::anyhow!("cannot publish to {subject}: {e}"))?;
            outstanding.push(async move { (ack.await, size) });
            outstanding_bytes += size;
            while outstanding.len() >= MAX_OUTSTANDING_ACKS
                || outstanding_bytes >= MAX_OUTSTANDING_BYTES
            {
                if let Some((acked, size)) = outstanding.next().await {
                    outstanding_bytes -= size;
                    settle(acked)?;
                }
            }
            tenants.insert(tenant);
            published += n;
            messages += 1;
            progress.set_position(published + batches.skipped);
        }
        while let Some((acked, _)) = outstanding.next().await {
            settle(acked)?;
        }
        let publish_seconds = started.elapsed().as_secs_f64();
        progress.finish_and_clear();
        let mut summary = json!({
            "tenants": tenants.len(),
            "published": published,
            "messages": messages,
            "skipped_other_tenants": batches.skipped,
            "publish_seconds": publish_seconds,
            "publish_docs_per_second": rate(published, publish_seconds),
        });
        if wait {
            // A fleet's stream files messages under their partition too.
            let filters = match tenant {
                Some(t) => names.stored_filters(t).to_vec(),
                None => vec![names.all_stored()],
            };
            self.wait_drained(&js, &names.ingest_stream, &filters)
                .await?;
            let seconds = started.elapsed().as_secs_f64();
            summary["committed_seconds"] = json!(seconds);
            summary["committed_docs_per_second"] = json!(rate(published, seconds));
        }
        Ok(summary)
    }

    /// Wait until the ingest stream holds no message on `subjects`: with a
    /// work-queue stream, that is when workers have acked them all.
    async fn wait_drained(
        &self,
        js: &async_nats::jetstream::Context,
        stream: &str,
        subjects: &[String],
    ) -> Result<(), ClientError> {
        let mut stream = js
            .get_stream(stream)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open stream {stream}: {e}"))?;
        let spinner = indicatif::ProgressBar::new_spinner();
        loop {
            let mut pending = 0;
            for subject in subjects {
                pending += pending_on(&mut stream, subject).await?;
            }
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

    pub fn max_batch_bytes(&self) -> usize {
        // Leave room for the envelope and the NATS headers.
        self.nats
            .server_info()
            .max_payload
            .saturating_sub(4096)
            .max(1024)
    }

    async fn send_batch(&self, tenant: &str, documents: Vec<RawDoc>) -> Result<u64, ClientError> {
        let body = DocumentsBody {
            documents: &documents,
        };
        let reply = self
            .request_as(
                retry::Request::Tenant(Verb::Upsert),
                self.subjects.tenant(Verb::Upsert, tenant),
                &body,
            )
            .await?;
        Ok(reply["upserted"].as_u64().unwrap_or(0))
    }
}

/// JetStream publish acks awaited at once by `ingest_file`.
const MAX_OUTSTANDING_ACKS: usize = 64;

/// The most bytes `ingest_file` has published and not seen acked. Each
/// worker's request subscription receives a copy of every ingest publish
/// (`<p>.*.*` matches the ingest subject), pushed as fast as we publish; 64
/// messages near the 1 MB `max_payload` would be nats-server's default
/// slow-consumer limit (64 MiB) on that connection.
const MAX_OUTSTANDING_BYTES: usize = 16 << 20;

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

/// A document as read from a file: its top-level fields, each kept as the
/// JSON text it was. The client only needs the `"tenant"` field; leaving
/// vectors unparsed makes a bulk upload several times cheaper on the CPU.
pub type RawDoc = HashMap<String, Box<serde_json::value::RawValue>>;

/// The body of an upsert or ingest message, written without re-parsing.
#[derive(serde::Serialize)]
pub struct DocumentsBody<'a> {
    pub documents: &'a [RawDoc],
}

/// A `docs.jsonl` file read as batches of documents, each within the
/// per-request document limit and the payload limit. For one tenant, lines
/// naming another `"tenant"` are skipped (and counted), so a multi-tenant file
/// loads one tenant at a time; for all tenants (`tenant` is `None`), every
/// line must name its tenant and batches are made per tenant.
pub struct DocBatches {
    lines: std::iter::Enumerate<std::io::Lines<std::io::BufReader<std::fs::File>>>,
    file: std::path::PathBuf,
    tenant: Option<String>,
    max_documents: usize,
    max_bytes: usize,
    /// Per tenant: the batch being filled and its size in bytes.
    filling: HashMap<String, (Vec<RawDoc>, usize)>,
    ready: VecDeque<(String, Vec<RawDoc>)>,
    pub skipped: u64,
}

impl DocBatches {
    pub fn open(
        file: &Path,
        tenant: Option<&str>,
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
            tenant: tenant.map(str::to_owned),
            max_documents: max_documents.max(1),
            max_bytes,
            filling: HashMap::new(),
            ready: VecDeque::new(),
            skipped: 0,
        })
    }

    /// The next full batch and its tenant; at the end, the partial ones.
    pub fn next_batch(&mut self) -> Result<Option<(String, Vec<RawDoc>)>, ClientError> {
        while self.ready.is_empty() {
            let Some((n, line)) = self.lines.next() else {
                let rest: Vec<_> = self.filling.drain().map(|(t, (b, _))| (t, b)).collect();
                self.ready
                    .extend(rest.into_iter().filter(|(_, b)| !b.is_empty()));
                break;
            };
            let where_ = || format!("{}:{}", self.file.display(), n + 1);
            let line = line.map_err(|e| anyhow::anyhow!("reading {}: {e}", where_()))?;
            if line.trim().is_empty() {
                continue;
            }
            let mut doc: RawDoc = serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("{}: not a JSON document: {e}", where_()))?;
            let named: Option<String> = doc
                .remove("tenant")
                .and_then(|raw| serde_json::from_str(raw.get()).ok());
            let tenant = match (&self.tenant, named) {
                (Some(want), Some(t)) if *want != t => {
                    self.skipped += 1;
                    continue;
                }
                (Some(want), _) => want.clone(),
                (None, Some(t)) => {
                    // Refused here rather than dead-lettered by the worker.
                    check_tenant(&t).map_err(|e| anyhow::anyhow!("{}: {e}", where_()))?;
                    t
                }
                (None, None) => {
                    return Err(anyhow::anyhow!(
                        "{}: no \"tenant\" field; name the tenant with --tenant",
                        where_()
                    )
                    .into())
                }
            };
            let size = line.len() + 1;
            let (batch, bytes) = self.filling.entry(tenant.clone()).or_default();
            if !batch.is_empty()
                && (batch.len() >= self.max_documents || *bytes + size > self.max_bytes)
            {
                self.ready.push_back((tenant, std::mem::take(batch)));
                *bytes = 0;
            }
            batch.push(doc);
            *bytes += size;
        }
        Ok(self.ready.pop_front())
    }
}
