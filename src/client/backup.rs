//! The command line's side of backups: it asks a worker to export or
//! import (showing the job's progress on stderr), moves files in and out of
//! the bucket, lists backups, and copies a backup to another tenant for
//! `restore --as`. It reads and writes the bucket directly, and the tenants'
//! stores only through a worker's requests.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::object_store::{ObjectInfo, ObjectMetadata, ObjectStore};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backup::bucket_name;
use crate::client::{Client, ClientError};
use crate::protocol::Verb;
use crate::tenant::TenantId;

/// How long the command line waits for an export or import job.
const JOB_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

fn other(e: impl std::fmt::Display) -> ClientError {
    ClientError::Other(anyhow::anyhow!("{e}"))
}

/// The bucket; made when `create`, else a clear error when missing.
pub(super) async fn bucket(client: &Client, create: bool) -> Result<ObjectStore, ClientError> {
    let name = bucket_name(client.storage_prefix());
    let js = async_nats::jetstream::new(client.nats().clone());
    match js.get_object_store(&name).await {
        Ok(b) => Ok(b),
        Err(_) if create => js
            .create_object_store(async_nats::jetstream::object_store::Config {
                bucket: name.clone(),
                description: Some("tenantvec backups and exports".into()),
                ..Default::default()
            })
            .await
            .map_err(|e| other(format!("cannot create the backup bucket {name}: {e}"))),
        Err(e) => Err(other(format!(
            "no backup bucket {name} on this NATS server ({e}): nothing was backed up yet"
        ))),
    }
}

/// A name for a temporary object of the command line.
fn temporary(tenant: &TenantId, kind: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{tenant}/_{kind}/{nanos}-{}", std::process::id())
}

/// A backup's name: given, or the UTC time now (`2026-11-30T12-00-00.123Z`).
pub(super) fn backup_name(name: Option<&str>) -> Result<String, ClientError> {
    let name = match name {
        Some(n) => n.to_owned(),
        None => humantime::format_rfc3339_millis(std::time::SystemTime::now())
            .to_string()
            .replace(':', "-"),
    };
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with(['_', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        return Err(other(format!(
            "backup name {name:?}: letters, digits and . _ - only, not starting with _ or ."
        )));
    }
    Ok(name)
}

pub(super) fn bar(len: u64, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Ask for an export or import job and show its progress until it answers.
async fn ask(
    client: &Client,
    verb: Verb,
    tenant: &TenantId,
    object: &str,
    re_embed: bool,
) -> Result<Value, ClientError> {
    let progress = bar(
        0,
        "{spinner} {msg} {bar:40} {pos}/{len} docs  {per_sec}  eta {eta}",
    );
    progress.set_message(format!("{} {tenant}", verb.as_str()));
    progress.enable_steady_tick(Duration::from_millis(200));
    let outcome = job(client, verb, tenant, object, re_embed, Some(&progress)).await;
    progress.finish_and_clear();
    outcome
}

/// An export or import job of one tenant into or from `object`, its
/// progress shown on `progress` when given.
pub(super) async fn job(
    client: &Client,
    verb: Verb,
    tenant: &TenantId,
    object: &str,
    re_embed: bool,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<Value, ClientError> {
    let inbox = client.nats().new_inbox();
    let mut updates = client
        .nats()
        .subscribe(inbox.clone())
        .await
        .map_err(other)?;
    let mut body = json!({"object": object, "progress": inbox});
    if re_embed {
        body["re_embed"] = json!(true);
    }
    let payload = serde_json::to_vec(&body).map_err(other)?;
    let subject = client.subjects().tenant(verb, tenant.as_str());
    let request = client.request_timeout(subject, payload.into(), JOB_TIMEOUT);
    tokio::pin!(request);
    loop {
        tokio::select! {
            reply = &mut request => break reply,
            Some(update) = updates.next() => {
                if let (Some(progress), Ok(u)) = (progress, serde_json::from_slice::<Value>(&update.payload)) {
                    let phase = u["phase"].as_str().unwrap_or("");
                    progress.set_message(format!("{phase} {tenant}"));
                    progress.set_length(u["total"].as_u64().unwrap_or(0));
                    progress.set_position(u["done"].as_u64().unwrap_or(0));
                }
            }
        }
    }
}

/// Stream an object into `out`, with a progress bar of its bytes.
async fn download(
    bucket: &ObjectStore,
    name: &str,
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> Result<u64, ClientError> {
    let mut object = bucket
        .get(name)
        .await
        .map_err(|e| other(format!("cannot read object {name}: {e}")))?;
    let progress = bar(
        object.info().size as u64,
        "{bar:40} {bytes}/{total_bytes}  {bytes_per_sec}",
    );
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = object
            .read(&mut buf)
            .await
            .map_err(|e| other(format!("reading object {name}: {e}")))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .await
            .map_err(|e| other(format!("writing the export: {e}")))?;
        total += n as u64;
        progress.set_position(total);
    }
    out.flush()
        .await
        .map_err(|e| other(format!("writing the export: {e}")))?;
    progress.finish_and_clear();
    Ok(total)
}

/// `tenantvec export --tenant T [FILE]`: the worker exports into a temporary
/// object, which is copied to FILE (stdout without one) and deleted.
pub async fn export(
    client: &Client,
    tenant: &TenantId,
    file: Option<&Path>,
    opener: Option<crate::crypto::DataKey>,
) -> Result<Value, ClientError> {
    let object = temporary(tenant, "export");
    let mut summary = ask(client, Verb::Export, tenant, &object, false).await?;
    let bucket = bucket(client, false).await?;
    let sealed = summary["sealed"].as_bool() == Some(true);
    let copied = async {
        match (file, opener) {
            (_, Some(key)) if sealed => {
                summary["sealed"] = json!(false);
                summary["opened"] = json!(true);
                download_opened(&bucket, &object, tenant, file, key).await
            }
            (Some(path), _) => {
                let mut out = tokio::fs::File::create(path)
                    .await
                    .map_err(|e| other(format!("cannot create {}: {e}", path.display())))?;
                download(&bucket, &object, &mut out).await
            }
            (None, _) => download(&bucket, &object, &mut tokio::io::stdout()).await,
        }
    }
    .await;
    let _ = bucket.delete(&object).await;
    copied?;
    summary["object"] = Value::Null;
    summary["file"] = json!(file.map(|f| f.display().to_string()));
    Ok(summary)
}

/// [`download`] of an object sealed with the tenant's data key, opened
/// here (`export --plaintext`): the plaintext is only ever in `file` (or
/// on stdout), never in the bucket. Every chunk is authenticated before it
/// is written.
async fn download_opened(
    bucket: &ObjectStore,
    name: &str,
    tenant: &TenantId,
    file: Option<&Path>,
    key: crate::crypto::DataKey,
) -> Result<u64, ClientError> {
    let object = bucket
        .get(name)
        .await
        .map_err(|e| other(format!("cannot read object {name}: {e}")))?;
    let input = tokio_util::io::SyncIoBridge::new(object);
    let tenant = tenant.to_string();
    let path = file.map(Path::to_owned);
    let copy = tokio::task::spawn_blocking(move || -> Result<u64, ClientError> {
        let mut opened = crate::crypto::sealed::Opener::new(input, &key, &tenant)
            .map_err(|e| other(format!("the export of tenant {tenant}: {e}")))?;
        let mut out: Box<dyn std::io::Write> = match &path {
            Some(p) => Box::new(
                std::fs::File::create(p)
                    .map_err(|e| other(format!("cannot create {}: {e}", p.display())))?,
            ),
            None => Box::new(std::io::stdout().lock()),
        };
        let n = std::io::copy(&mut opened, &mut out)
            .map_err(|e| other(format!("the export of tenant {tenant}: {e}")))?;
        out.flush()
            .map_err(|e| other(format!("writing the export: {e}")))?;
        Ok(n)
    });
    copy.await.map_err(other)?
}

/// `tenantvec import --tenant T FILE`: FILE goes into a temporary object,
/// the worker imports it, the object is deleted.
pub async fn import(
    client: &Client,
    tenant: &TenantId,
    file: &Path,
    re_embed: bool,
) -> Result<Value, ClientError> {
    let mut input = tokio::fs::File::open(file)
        .await
        .map_err(|e| other(format!("cannot open {}: {e}", file.display())))?;
    let bucket = bucket(client, true).await?;
    let object = temporary(tenant, "import");
    bucket
        .put(object.as_str(), &mut input)
        .await
        .map_err(|e| other(format!("cannot upload {}: {e}", file.display())))?;
    let outcome = ask(client, Verb::Import, tenant, &object, re_embed).await;
    let _ = bucket.delete(&object).await;
    let mut summary = outcome?;
    summary["object"] = Value::Null;
    summary["file"] = json!(file.display().to_string());
    Ok(summary)
}

/// `tenantvec backup --tenant T [--name N]`: the worker exports into
/// `T/<name>`, the UTC time by default.
pub async fn backup(
    client: &Client,
    tenant: &TenantId,
    name: Option<&str>,
) -> Result<Value, ClientError> {
    let name = backup_name(name)?;
    let mut summary = ask(
        client,
        Verb::Export,
        tenant,
        &format!("{tenant}/{name}"),
        false,
    )
    .await?;
    summary["name"] = json!(name);
    Ok(summary)
}

/// A backup as listed: tenant, name and the object's info.
pub(super) struct Listed {
    pub(super) tenant: String,
    pub(super) name: String,
    pub(super) info: ObjectInfo,
}

/// Every backup in the bucket (temporary objects and the marks of
/// `restore --all` left out), of `tenant` only when given; by tenant, then
/// oldest first.
pub(super) async fn listed(
    bucket: &ObjectStore,
    tenant: Option<&TenantId>,
) -> Result<Vec<Listed>, ClientError> {
    let mut list = bucket.list().await.map_err(other)?;
    let mut out = Vec::new();
    while let Some(info) = list.next().await {
        let info = info.map_err(other)?;
        let Some((t, name)) = info.name.split_once('/') else {
            continue;
        };
        if info.deleted
            || t.starts_with('_')
            || name.starts_with('_')
            || tenant.is_some_and(|want| want.as_str() != t)
        {
            continue;
        }
        out.push(Listed {
            tenant: t.to_owned(),
            name: name.to_owned(),
            info: info.clone(),
        });
    }
    out.sort_by(|a, b| {
        (&a.tenant, a.info.modified, &a.name).cmp(&(&b.tenant, b.info.modified, &b.name))
    });
    Ok(out)
}

/// `tenantvec backups [--tenant T]`.
pub async fn list(client: &Client, tenant: Option<&TenantId>) -> Result<Value, ClientError> {
    let bucket = bucket(client, false).await?;
    let rows: Vec<Value> = listed(&bucket, tenant)
        .await?
        .into_iter()
        .map(|l| {
            let mtime = serde_json::to_value(&l.info)
                .ok()
                .and_then(|v| v.get("mtime").cloned());
            json!({
                "tenant": l.tenant,
                "name": l.name,
                "bytes": l.info.size,
                "documents": l.info.metadata.get("count").and_then(|c| c.parse::<u64>().ok()),
                "dimension": l.info.metadata.get("dimension").and_then(|c| c.parse::<u64>().ok()),
                "modified": mtime,
            })
        })
        .collect();
    Ok(json!({
        "bucket": bucket_name(client.storage_prefix()),
        "count": rows.len(),
        "backups": rows,
    }))
}

/// `tenantvec restore --tenant T [--as U] [--at NAME]`: replace the
/// documents of T (or U) with T's backup NAME (its newest by default).
pub async fn restore(
    client: &Client,
    tenant: &TenantId,
    into: Option<&TenantId>,
    at: Option<&str>,
    re_embed: bool,
) -> Result<Value, ClientError> {
    let bucket = bucket(client, false).await?;
    let backups = listed(&bucket, Some(tenant)).await?;
    let chosen = match at {
        Some(name) => backups.iter().find(|b| b.name == name).ok_or_else(|| {
            let names: Vec<&str> = backups.iter().map(|b| b.name.as_str()).collect();
            other(format!(
                "tenant {tenant} has no backup {name:?}; its backups: {}",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ))
        })?,
        None => backups
            .last()
            .ok_or_else(|| other(format!("tenant {tenant} has no backup in the bucket")))?,
    };
    let source = format!("{tenant}/{}", chosen.name);
    let target = into.unwrap_or(tenant);
    let mut summary = if target == tenant {
        ask(client, Verb::Import, target, &source, re_embed).await?
    } else {
        // A tenant's request reaches only its own objects: copy first.
        let copy = temporary(target, "import");
        let mut object = bucket
            .get(&source)
            .await
            .map_err(|e| other(format!("cannot read {source}: {e}")))?;
        let meta = ObjectMetadata {
            name: copy.clone(),
            ..Default::default()
        };
        bucket
            .put(meta, &mut object)
            .await
            .map_err(|e| other(format!("cannot copy {source}: {e}")))?;
        let outcome = ask(client, Verb::Import, target, &copy, re_embed).await;
        let _ = bucket.delete(&copy).await;
        outcome?
    };
    summary["object"] = json!(source);
    summary["backup"] = json!(chosen.name);
    Ok(summary)
}
