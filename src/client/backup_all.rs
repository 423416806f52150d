//! `backup --all` and `restore --all`: every tenant of the registry backed
//! up under one name, or every tenant with a backup restored, a few tenants
//! at a time under one progress bar, and resumable: the same command run
//! again skips the tenants already done.
//!
//! Owns which tenants a run takes and how it knows one is done. A backup's
//! own object `T/<name>` is its mark (an object of the bucket is listed
//! only once it is whole); a restore leaves a mark object
//! `_restore/<run>/<T>` after each tenant (tenant ids never start with `_`,
//! so a mark is never taken for a backup). It must never stop a run at one
//! tenant's failure: failures are listed at the end, the command fails, and
//! running it again retries them alone.

use std::collections::BTreeMap;

use async_nats::jetstream::object_store::ObjectStore;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::client::backup::{backup_name, bar, bucket, job, listed};
use crate::client::{tenants, Client, ClientError};
use crate::protocol::{Verb, MAX_TENANTS_PAGE};
use crate::tenant::TenantId;

/// Tenants a run works on at once unless told otherwise.
pub const DEFAULT_PARALLEL: usize = 4;
/// Failures named in a run's error (all of them are in its summary).
const NAMED_FAILURES: usize = 10;

/// How one tenant of a run ended.
enum Outcome {
    /// Done by this run: its documents.
    Done(u64),
    /// Done by an earlier run of the same name.
    AlreadyDone,
    Failed(String),
}

/// The bucket holds `object`, whole.
async fn holds(bucket: &ObjectStore, object: &str) -> bool {
    matches!(bucket.info(object).await, Ok(info) if !info.deleted)
}

/// Run `work` on every tenant, `parallel` at once, under one progress bar;
/// the run's summary, or its failures as an error.
async fn run<'a, F, Fut>(
    what: &str,
    name: &str,
    tenants: Vec<TenantId>,
    parallel: usize,
    work: F,
) -> Result<Value, ClientError>
where
    F: Fn(TenantId) -> Fut,
    Fut: std::future::Future<Output = (TenantId, Outcome)> + 'a,
{
    let progress = bar(
        tenants.len() as u64,
        "{spinner} {msg} {bar:40} {pos}/{len} tenants  {per_sec}  eta {eta}",
    );
    progress.set_message(format!("{what} {name}"));
    progress.enable_steady_tick(std::time::Duration::from_millis(200));
    let total = tenants.len();
    let mut outcomes = futures::stream::iter(tenants)
        .map(work)
        .buffer_unordered(parallel.max(1));
    let (mut done, mut already, mut documents) = (0u64, 0u64, 0u64);
    let mut failed = BTreeMap::new();
    while let Some((tenant, outcome)) = outcomes.next().await {
        match outcome {
            Outcome::Done(n) => {
                done += 1;
                documents += n;
            }
            Outcome::AlreadyDone => already += 1,
            Outcome::Failed(e) => {
                progress.println(format!("{what} {tenant}: {e}"));
                failed.insert(tenant.to_string(), e);
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let summary = json!({
        "name": name,
        "tenants": total,
        "done": done,
        "already_done": already,
        "documents": documents,
        "failed": failed,
    });
    if failed.is_empty() {
        return Ok(summary);
    }
    let named: Vec<String> = failed
        .iter()
        .take(NAMED_FAILURES)
        .map(|(t, e)| format!("  {t}: {e}"))
        .collect();
    Err(anyhow::anyhow!(
        "{what} {name}: {} of {total} tenants failed:\n{}{}\nrun the same command again to \
         retry them (the tenants done are skipped)",
        failed.len(),
        named.join("\n"),
        if failed.len() > NAMED_FAILURES {
            format!("\n  … and {} more", failed.len() - NAMED_FAILURES)
        } else {
            String::new()
        }
    )
    .into())
}

fn ids(records: &[Value]) -> Vec<TenantId> {
    records
        .iter()
        .filter_map(|r| r["id"].as_str())
        .filter_map(|id| TenantId::parse(id).ok())
        .collect()
}

/// `tenantvec backup --all [--name N] [--id-prefix P]`: every tenant of
/// the registry (whose id starts with P) backed up as `T/<N>`; N is the
/// UTC time unless given, and the same command with `--name N` finishes an
/// interrupted run.
pub async fn backup_all(
    client: &Client,
    name: Option<&str>,
    id_prefix: Option<&str>,
    parallel: usize,
) -> Result<Value, ClientError> {
    let name = backup_name(name)?;
    let bucket = bucket(client, true).await?;
    let tenants = ids(&tenants::list(client, id_prefix, None, MAX_TENANTS_PAGE).await?);
    eprintln!(
        "backup {name}: {} tenants; if it is interrupted, `tenantvec backup --all --name {name}` \
         finishes it",
        tenants.len()
    );
    let (bucket, name_ref) = (&bucket, name.as_str());
    run("backup", &name, tenants, parallel, |tenant| async move {
        let object = format!("{tenant}/{name_ref}");
        let outcome = if holds(bucket, &object).await {
            Outcome::AlreadyDone
        } else {
            match job(client, Verb::Export, &tenant, &object, false, None).await {
                Ok(summary) => Outcome::Done(summary["documents"].as_u64().unwrap_or(0)),
                Err(e) => Outcome::Failed(e.to_string()),
            }
        };
        (tenant, outcome)
    })
    .await
}

/// What `restore --all` restores.
#[derive(Debug, Default)]
pub struct RestoreAll<'a> {
    /// The backups of this name (a `backup --all` run's); each tenant's
    /// newest when `None`.
    pub at: Option<&'a str>,
    /// The run's name, which marks what it did (a rerun with the same name
    /// skips it): `at`, or the UTC time, unless given.
    pub run: Option<&'a str>,
    /// Only tenants whose id starts with this.
    pub id_prefix: Option<&'a str>,
    pub parallel: usize,
    pub re_embed: bool,
}

/// `tenantvec restore --all [--at N] [--run R]`: every tenant with a
/// backup (of name N) gets its documents back from it.
pub async fn restore_all(client: &Client, options: RestoreAll<'_>) -> Result<Value, ClientError> {
    let bucket = bucket(client, false).await?;
    let run_name = backup_name(options.run.or(options.at))?;
    // Each tenant's chosen backup: listed oldest first, so the last wins.
    let mut chosen: BTreeMap<String, String> = BTreeMap::new();
    for backup in listed(&bucket, None).await? {
        let wanted = options.at.is_none_or(|at| at == backup.name);
        let prefixed = options
            .id_prefix
            .is_none_or(|p| backup.tenant.starts_with(p));
        if wanted && prefixed {
            chosen.insert(backup.tenant, backup.name);
        }
    }
    let tenants: Vec<TenantId> = chosen
        .keys()
        .filter_map(|t| TenantId::parse(t).ok())
        .collect();
    eprintln!(
        "restore {run_name}: {} tenants; if it is interrupted, `tenantvec restore --all --run \
         {run_name}{}` finishes it",
        tenants.len(),
        options.at.map(|a| format!(" --at {a}")).unwrap_or_default(),
    );
    let (bucket, chosen, run_ref) = (&bucket, &chosen, run_name.as_str());
    let re_embed = options.re_embed;
    let mut summary = run(
        "restore",
        &run_name,
        tenants,
        options.parallel,
        |tenant| async move {
            let mark = format!("_restore/{run_ref}/{tenant}");
            let backup = &chosen[tenant.as_str()];
            let outcome = if holds(bucket, &mark).await {
                Outcome::AlreadyDone
            } else {
                let source = format!("{tenant}/{backup}");
                match job(client, Verb::Import, &tenant, &source, re_embed, None).await {
                    Ok(summary) => {
                        let note = json!({"backup": backup, "imported": summary["imported"]});
                        let body = note.to_string().into_bytes();
                        match bucket.put(mark.as_str(), &mut body.as_slice()).await {
                            Ok(_) => Outcome::Done(summary["imported"].as_u64().unwrap_or(0)),
                            Err(e) => Outcome::Failed(format!(
                                "restored, but its mark {mark} was not written ({e}); a rerun \
                                     restores it again"
                            )),
                        }
                    }
                    Err(e) => Outcome::Failed(e.to_string()),
                }
            };
            (tenant, outcome)
        },
    )
    .await?;
    summary["at"] = json!(options.at);
    Ok(summary)
}
