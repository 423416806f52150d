//! Backup, restore, export and import of a tenant, through a NATS Object
//! Store bucket (`TENANTVEC_BACKUP`, one per prefix).
//!
//! The worker does the reading and writing, inside the tenant's actor: an
//! export (`<p>.export.<tenant>`) and an import (`<p>.import.<tenant>`) are
//! each one job in the tenant's order, so a backup is a consistent point of
//! that tenant, and an import replaces the tenant between two of its
//! requests. An export pages through the store ([`TenantStore::scroll`]) and
//! streams [`format`] lines into the object through a bounded pipe; an
//! import reads the object twice, a line at a time: once to check all of it
//! (header, dimension, embedder, every line, the count) before anything
//! changes, then to load it through [`TenantStore::replace`]. Memory stays
//! bounded by a page and a pipe, whatever the tenant's size.
//!
//! A tenant's requests may only name objects under `<tenant>/`: backups are
//! `<tenant>/<name>`, the command line's temporary objects
//! `<tenant>/_export/…` and `<tenant>/_import/…`. Restoring one tenant's
//! backup into another is the operator's copy ([`cli`]), never a request.
//!
//! Owns the bucket's names and layout, the export and import jobs, and the
//! command line's side ([`cli`]). It must never collect a tenant in memory,
//! never change a tenant before the whole import has been checked, never
//! leave a partial object under a backup's name, and never touch another
//! tenant's objects on a tenant's request.

pub mod format;

use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::time::Instant;

use async_nats::jetstream::object_store::{self, ObjectMetadata, ObjectStore};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::crypto::sealed::{self, Opener, Sealer};
use crate::crypto::DataKey;
use crate::embed::record::EmbedderRecord;
use crate::embed::Embedding;
use crate::embed::Purpose;
use crate::protocol::{decode, Reply, ServiceError};
use crate::store::{Record, TenantStore};
use crate::tenant::TenantId;

use format::{decode_doc, decode_header, encode_doc, encode_header, Header};

/// Documents per page read from the store, and per batch written by an import.
const PAGE: usize = 512;
/// Bytes the export pipe holds between the store and the object.
const PIPE_BYTES: usize = 256 << 10;
/// The longest line an import reads; anything longer is refused.
const MAX_LINE: u64 = 8 << 20;

/// The backup bucket of a subject prefix: `TENANTVEC_BACKUP`, and for
/// another prefix `TENANTVEC_BACKUP_<PREFIX>` (as the ingest streams).
pub fn bucket_name(prefix: &str) -> String {
    format!("TENANTVEC_BACKUP{}", crate::names::name_suffix(prefix))
}

/// The bucket as the worker reaches it: handed to export and import
/// commands by the transport, used by their jobs on the blocking pool,
/// which wait on the transport's runtime for each step.
#[derive(Clone)]
pub struct Backups {
    client: async_nats::Client,
    bucket: String,
    /// Replicas of the bucket when the worker creates it (`nats.replicas`).
    replicas: usize,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for Backups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backups")
            .field("bucket", &self.bucket)
            .finish()
    }
}

impl Backups {
    /// Called on the transport's runtime.
    pub fn new(client: async_nats::Client, prefix: &str, replicas: usize) -> Self {
        Self {
            client,
            bucket: bucket_name(prefix),
            replicas,
            handle: tokio::runtime::Handle::current(),
        }
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.handle.block_on(f)
    }

    /// The bucket; made when `create` and missing.
    fn open(&self, create: bool) -> Result<ObjectStore, ServiceError> {
        let js = async_nats::jetstream::new(self.client.clone());
        let bucket = self.bucket.clone();
        let replicas = self.replicas;
        self.block_on(async move {
            match js.get_object_store(&bucket).await {
                Ok(store) => Ok(store),
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::context::ObjectStoreErrorKind::GetStore
                        && create =>
                {
                    js.create_object_store(object_store::Config {
                        bucket: bucket.clone(),
                        description: Some("tenantvec backups and exports".into()),
                        num_replicas: replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| {
                        ServiceError::unavailable(format!(
                            "cannot create the backup bucket {bucket} (JetStream enabled?): {e}"
                        ))
                    })
                }
                Err(e) => Err(ServiceError::bad_request(format!(
                    "no backup bucket {bucket} on this NATS server ({e}): nothing was backed up yet"
                ))),
            }
        })
    }

    /// Tell the asker how far the job is (best effort).
    fn progress(&self, subject: Option<&str>, phase: &str, done: u64, total: u64) {
        if let Some(subject) = subject {
            let body = json!({"phase": phase, "done": done, "total": total}).to_string();
            let _ = self.block_on(self.client.publish(subject.to_owned(), body.into()));
        }
    }
}

/// `<p>.export.<tenant>`: `{"object": "<tenant>/<name>", "progress": "_INBOX.…"}`.
#[derive(Debug)]
pub struct ExportRequest {
    pub object: String,
    pub progress: Option<String>,
    /// `tenants move`: the region the tenant leaves for. From this export
    /// on, the tenant's writes are refused here (retryably), so the export
    /// holds every write this region acknowledged.
    pub moving_to: Option<String>,
    /// Set by the transport ([`crate::command::Command::with_backups`]).
    pub backups: Option<Backups>,
}

/// `<p>.import.<tenant>`: `{"object": "<tenant>/<name>", "re_embed": false, "progress": …}`.
#[derive(Debug)]
pub struct ImportRequest {
    pub object: String,
    /// Embed the texts again with this worker's embedder, ignoring the
    /// export's vectors (to move a tenant to another model).
    pub re_embed: bool,
    pub progress: Option<String>,
    pub backups: Option<Backups>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    object: String,
    #[serde(default)]
    progress: Option<String>,
    #[serde(default)]
    re_embed: bool,
    #[serde(default)]
    moving_to: Option<String>,
}

fn body(raw: &[u8]) -> Result<Body, ServiceError> {
    let body: Body = decode(raw)?;
    if let Some(p) = &body.progress {
        // Progress goes to the asker's inbox only, never to a subject of
        // the service or of another tenant.
        let bad = |c: char| c == '*' || c == '>' || c.is_whitespace() || c.is_control();
        if !p.starts_with("_INBOX.") || p.chars().any(bad) {
            return Err(ServiceError::bad_request(
                "progress must be an inbox subject (_INBOX.…)",
            ));
        }
    }
    Ok(body)
}

/// An export request from its body; the bucket is attached later.
pub fn decode_export(raw: &[u8]) -> Result<ExportRequest, ServiceError> {
    let b = body(raw)?;
    if b.re_embed {
        return Err(ServiceError::bad_request("re_embed is for import"));
    }
    Ok(ExportRequest {
        object: b.object,
        progress: b.progress,
        moving_to: b.moving_to,
        backups: None,
    })
}

/// An import request from its body; the bucket is attached later.
pub fn decode_import(raw: &[u8]) -> Result<ImportRequest, ServiceError> {
    let b = body(raw)?;
    if b.moving_to.is_some() {
        return Err(ServiceError::bad_request("moving_to is for export"));
    }
    Ok(ImportRequest {
        object: b.object,
        re_embed: b.re_embed,
        progress: b.progress,
        backups: None,
    })
}

/// `object` must be `<tenant>/<name>`: a tenant reaches only its own objects.
pub fn check_object(tenant: &TenantId, object: &str) -> Result<(), ServiceError> {
    let rest = object
        .strip_prefix(tenant.as_str())
        .and_then(|r| r.strip_prefix('/'));
    let ok = rest.is_some_and(|r| {
        !r.is_empty()
            && r.len() <= 200
            && r.split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..")
            && r.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._:-/".contains(c))
    });
    if !ok {
        return Err(ServiceError::bad_request(format!(
            "object {object:?} is not one of tenant {tenant}'s: it must be \"{tenant}/<name>\", \
             the name of letters, digits and . _ : - /"
        )));
    }
    Ok(())
}

fn backups_of(backups: Option<Backups>) -> Result<Backups, ServiceError> {
    backups.ok_or_else(|| ServiceError::internal("an export or import without the backup bucket"))
}

/// The export job: header, then every document a page at a time, streamed
/// into the object; the object exists only if all of it was written.
pub fn export(
    store: &mut dyn TenantStore,
    embedding: &Embedding,
    request: Box<ExportRequest>,
    key: Option<&DataKey>,
) -> Result<Reply, ServiceError> {
    let request = *request;
    let (_, records, tenant) = embedding.parts();
    let backups = backups_of(request.backups)?;
    check_object(tenant, &request.object)?;
    let started = Instant::now();
    let dimension = store.dimension()?;
    let count = store.count(None)? as u64;
    let header = Header::new(tenant.as_str(), dimension, records.read(tenant)?, count);
    let bucket = backups.open(true)?;
    let name = request.object.clone();
    let exists = {
        let bucket = bucket.clone();
        let name = name.clone();
        backups.block_on(async move { bucket.info(&name).await.is_ok() })
    };
    if exists {
        return Err(ServiceError::bad_request(format!(
            "object {name} exists already in {}; choose another name",
            backups.bucket
        )));
    }
    let meta = ObjectMetadata {
        name: name.clone(),
        description: Some(format!("tenantvec export of tenant {tenant}")),
        metadata: HashMap::from([
            ("tenant".to_owned(), tenant.to_string()),
            ("count".to_owned(), count.to_string()),
            ("dimension".to_owned(), dimension.to_string()),
            (
                "format".to_owned(),
                format!("{}/{}", format::FORMAT, format::VERSION),
            ),
            (
                "sealed".to_owned(),
                match key {
                    Some(_) => "xchacha20poly1305-stream/1 (the tenant's data key)".to_owned(),
                    None => "no".to_owned(),
                },
            ),
        ]),
        ..Default::default()
    };
    let (mut writer, mut reader) = tokio::io::duplex(PIPE_BYTES);
    let put = {
        let bucket = bucket.clone();
        backups
            .handle
            .spawn(async move { bucket.put(meta, &mut reader).await })
    };
    let progress = request.progress.as_deref();
    // With the tenant's key, the object is sealed (crypto::sealed): what
    // is written below is its plaintext.
    let mut sealer = match key {
        Some(key) => {
            let (sealer, head) = Sealer::new(key, tenant.as_str())
                .map_err(|e| ServiceError::internal(format!("sealing object {name}: {e}")))?;
            Some((sealer, head))
        }
        None => None,
    };
    let mut raw = |bytes: &[u8]| {
        backups
            .block_on(writer.write_all(bytes))
            .map_err(|e| ServiceError::internal(format!("writing object {name}: {e}")))
    };
    if let Some((_, head)) = &sealer {
        raw(head)?;
    }
    let mut write = |bytes: &[u8]| match sealer.as_mut() {
        Some((sealer, _)) => {
            let sealed = sealer
                .push(bytes)
                .map_err(|e| ServiceError::internal(format!("sealing object {name}: {e}")))?;
            raw(&sealed)
        }
        None => raw(bytes),
    };
    let written = (|| {
        let head = encode_header(&header);
        write(&head)?;
        let (mut docs, mut bytes) = (0u64, head.len() as u64);
        let mut cursor: Option<String> = None;
        let mut buf = Vec::with_capacity(PAGE * 1024);
        loop {
            let page = store.scroll(cursor.as_deref(), PAGE)?;
            buf.clear();
            for r in &page.docs {
                encode_doc(r, &mut buf);
            }
            write(&buf)?;
            docs += page.docs.len() as u64;
            bytes += buf.len() as u64;
            backups.progress(progress, "export", docs, count);
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        if docs != count {
            return Err(ServiceError::internal(format!(
                "tenant {tenant}: counted {count} documents, paged through {docs}"
            )));
        }
        Ok((docs, bytes))
    })();
    let written = match (written, sealer.as_mut()) {
        (Ok(done), Some((sealer, _))) => sealer
            .finish()
            .map_err(|e| ServiceError::internal(format!("sealing object {name}: {e}")))
            .and_then(|last| raw(&last))
            .map(|()| done),
        (written, _) => written,
    };
    let _ = backups.block_on(writer.shutdown());
    drop(writer);
    let put = backups.block_on(put);
    let stored = match put {
        Ok(Ok(info)) => Ok(info),
        Ok(Err(e)) => Err(ServiceError::unavailable(format!(
            "storing object {} in {}: {e}",
            request.object, backups.bucket
        ))),
        Err(e) => Err(ServiceError::internal(format!(
            "storing object {}: {e}",
            request.object
        ))),
    };
    match (written, stored) {
        (Ok((docs, bytes)), Ok(info)) => Ok(Reply::Transfer(json!({
            "tenant": tenant.as_str(),
            "bucket": backups.bucket,
            "object": info.name,
            "documents": docs,
            "bytes": bytes,
            "dimension": dimension,
            "embedder": header.embedder,
            "exported_at": header.exported_at,
            "sealed": key.is_some(),
            "seconds": started.elapsed().as_secs_f64(),
        }))),
        (written, stored) => {
            // Whatever reached the bucket is not a whole export.
            let name = request.object.clone();
            let _ = backups.block_on(async move { bucket.delete(&name).await });
            Err(match (written, stored) {
                (Err(e), Ok(_)) | (Ok(_), Err(e)) => e,
                // The pipe broke because the put failed: its error says why.
                (Err(_), Err(e)) => e,
                (Ok(_), Ok(_)) => unreachable!(),
            })
        }
    }
}

/// An object read as lines from the blocking pool, each at most [`MAX_LINE`].
struct Lines {
    reader: std::io::BufReader<Box<dyn Read + Send>>,
    line: String,
    /// The number of the last line read (1-based).
    n: u64,
    object: String,
}

struct BlockingObject {
    object: object_store::Object,
    handle: tokio::runtime::Handle,
}

impl Read for BlockingObject {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let handle = self.handle.clone();
        handle.block_on(self.object.read(buf))
    }
}

impl Lines {
    /// The object's lines: opened with `key` when it is sealed.
    fn open(
        backups: &Backups,
        bucket: &ObjectStore,
        name: &str,
        key: Option<&DataKey>,
        tenant: &TenantId,
    ) -> Result<Self, ServiceError> {
        let object = {
            let bucket = bucket.clone();
            let name = name.to_owned();
            backups.block_on(async move { bucket.get(&name).await })
        }
        .map_err(|e| {
            ServiceError::bad_request(format!("no object {name} in {}: {e}", backups.bucket))
        })?;
        let mut object = BlockingObject {
            object,
            handle: backups.handle.clone(),
        };
        let mut head = Vec::new();
        (&mut object)
            .take(sealed::MAGIC.len() as u64)
            .read_to_end(&mut head)
            .map_err(|e| ServiceError::bad_request(format!("reading {name}: {e}")))?;
        let whole = Read::chain(std::io::Cursor::new(head.clone()), object);
        let reader: Box<dyn Read + Send> = match (sealed::is_sealed(&head), key) {
            (false, _) => Box::new(whole),
            (true, Some(key)) => {
                Box::new(Opener::new(whole, key, tenant.as_str()).map_err(|e| {
                    ServiceError::bad_request(format!("object {name} does not open: {e}"))
                })?)
            }
            (true, None) => {
                return Err(ServiceError::bad_request(format!(
                    "object {name} is sealed with tenant {tenant}'s data key (encryption at \
                     rest): restore it on a worker with encryption on and the master key \
                     that holds that key"
                )))
            }
        };
        Ok(Self {
            reader: std::io::BufReader::with_capacity(PIPE_BYTES, reader),
            line: String::new(),
            n: 0,
            object: name.to_owned(),
        })
    }

    /// The next line's number and text without its newline; `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, &str)>, ServiceError> {
        self.line.clear();
        let read = (&mut self.reader)
            .take(MAX_LINE)
            .read_line(&mut self.line)
            .map_err(|e| {
                ServiceError::bad_request(format!(
                    "reading {} after line {}: {e}",
                    self.object, self.n
                ))
            })?;
        if read == 0 {
            return Ok(None);
        }
        self.n += 1;
        if !self.line.ends_with('\n') && read as u64 >= MAX_LINE {
            return Err(ServiceError::bad_request(format!(
                "export line {} is longer than {MAX_LINE} bytes",
                self.n
            )));
        }
        Ok(Some((self.n, self.line.trim_end_matches(['\n', '\r']))))
    }
}

/// The import job: check the whole object, then replace the tenant's
/// documents with it.
pub fn import(
    store: &mut dyn TenantStore,
    embedding: &Embedding,
    request: Box<ImportRequest>,
    key: Option<&DataKey>,
) -> Result<Reply, ServiceError> {
    let request = *request;
    let (embedder, records, tenant) = embedding.parts();
    let backups = backups_of(request.backups)?;
    check_object(tenant, &request.object)?;
    let started = Instant::now();
    let progress = request.progress.as_deref();
    let bucket = backups.open(false)?;

    // Pass 1: everything checked, nothing changed.
    let mut lines = Lines::open(&backups, &bucket, &request.object, key, tenant)?;
    let first = lines
        .next()?
        .ok_or_else(|| ServiceError::bad_request(format!("object {} is empty", request.object)))?;
    let header = decode_header(first.1)?;
    let current = store.dimension()?;
    let worker_record = EmbedderRecord::of(embedder);
    let (check, dimension, record) = if request.re_embed {
        if worker_record.dimension != current {
            return Err(ServiceError::dimension_mismatch(format!(
                "this worker's embedder {:?} makes {} dimensions, tenant {tenant}'s store has {current}",
                worker_record.model, worker_record.dimension
            )));
        }
        (None, current, Some(worker_record))
    } else {
        if header.dimension != current {
            return Err(ServiceError::dimension_mismatch(format!(
                "the export has {} dimensions, tenant {tenant}'s store has {current}; nothing was changed",
                header.dimension
            )));
        }
        if let Some(theirs) = header.embedder.as_ref().filter(|r| **r != worker_record) {
            return Err(ServiceError::bad_request(format!(
                "the export's vectors were made by embedder {:?} ({} dimensions); this worker \
                 embeds with {:?} ({} dimensions), and text queries could not be compared with \
                 them. Import with re_embed (--re-embed) to embed the texts again; nothing was changed",
                theirs.model, theirs.dimension, worker_record.model, worker_record.dimension
            )));
        }
        (
            Some(header.dimension),
            header.dimension,
            header.embedder.clone(),
        )
    };
    let mut seen = 0u64;
    while let Some((n, line)) = lines.next()? {
        decode_doc(line, n, check)?;
        seen += 1;
        if seen.is_multiple_of(PAGE as u64) {
            backups.progress(progress, "check", seen, header.count);
        }
    }
    if seen != header.count {
        return Err(ServiceError::bad_request(format!(
            "the export says {} documents and holds {seen}: it is incomplete or corrupt; nothing was changed",
            header.count
        )));
    }
    drop(lines);

    // Pass 2: load.
    let replaced_count = store.count(None)?;
    let mut lines = Lines::open(&backups, &bucket, &request.object, key, tenant)?;
    lines.next()?;
    let mut loaded = 0u64;
    let mut next = || -> Result<Option<Vec<Record>>, ServiceError> {
        let mut batch = Vec::with_capacity(PAGE);
        while batch.len() < PAGE {
            let Some((n, line)) = lines.next()? else {
                break;
            };
            batch.push(decode_doc(line, n, check)?);
        }
        if batch.is_empty() {
            return Ok(None);
        }
        if check.is_none() {
            let texts: Vec<&str> = batch
                .iter()
                .map(|r| r.text.as_deref().unwrap_or(""))
                .collect();
            let vectors = embedder.embed(&texts, Purpose::Document)?;
            if vectors.len() != batch.len() {
                return Err(ServiceError::internal("the embedder made too few vectors"));
            }
            for (r, v) in batch.iter_mut().zip(vectors) {
                r.vector = v;
            }
        }
        loaded += batch.len() as u64;
        backups.progress(progress, "load", loaded, header.count);
        Ok(Some(batch))
    };
    let replaced = store.replace(dimension, &mut next)?;
    match &record {
        Some(r) => records.write_record(tenant, r)?,
        None => records.remove(tenant)?,
    }
    Ok(Reply::Transfer(json!({
        "tenant": tenant.as_str(),
        "object": request.object,
        "from_tenant": header.tenant,
        "exported_at": header.exported_at,
        "imported": header.count,
        "replaced": replaced_count,
        "atomic": replaced.atomic,
        "how": replaced.how,
        "re_embedded": request.re_embed,
        "embedder": record,
        "seconds": started.elapsed().as_secs_f64(),
    })))
}
