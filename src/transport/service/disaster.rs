//! Disaster recovery, opt-in per tenant (its record's `dr_region`): each
//! backup of the tenant is copied to its DR region's backup bucket before
//! the backup is acknowledged, and `tenants failover T`, asked of a worker
//! of the DR region when the tenant's home is gone, restores it there from
//! its latest backup as its new home.
//!
//! Owns those two steps. It must never fail a tenant over while its home
//! answers (that is a move, and a failover would split it), never call a
//! backup done before its DR copy exists, and never let the old home win
//! when it returns: the failed-over record's `home_epoch` is one higher,
//! and every region resolves the tenant's home to it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use super::reply::Responder;
use super::Shared;
use crate::command::{Command, Outcome, Respond};
use crate::protocol::{Reply, ServiceError, Verb};
use crate::region::Home;
use crate::registry::{record, Registry, TenantRecord, TenantState};
use crate::tenant::TenantId;

/// How long a failover waits for the home region to answer a probe.
const PROBE: Duration = Duration::from_secs(2);

/// The object of an export that makes a backup (not a temporary export, a
/// move's or an import's: those are named `<tenant>/_<kind>/…`), when the
/// worker has regions.
pub(super) fn backup_object(command: &Command, shared: &Shared) -> Option<String> {
    shared.regions.as_ref()?;
    shared.registry.as_ref()?;
    let Command::Export(export) = command else {
        return None;
    };
    if export.moving_to.is_some() {
        return None;
    }
    let (_, name) = export.object.split_once('/')?;
    (!name.starts_with('_')).then(|| export.object.clone())
}

/// The reply of a backup, sent once its copy is in the tenant's DR region.
pub(super) struct AfterBackup {
    pub(super) responder: Responder,
    pub(super) shared: Arc<Shared>,
    pub(super) tenant: TenantId,
    pub(super) object: String,
}

impl Respond for AfterBackup {
    fn respond(self: Box<Self>, outcome: Outcome) {
        let runtime = self.shared.runtime.clone();
        runtime.spawn(async move {
            let AfterBackup {
                responder,
                shared,
                tenant,
                object,
            } = *self;
            let outcome = match outcome {
                Ok(Reply::Transfer(mut summary)) => {
                    match copy_to_dr(&shared, &tenant, &object).await {
                        Ok(Some(dr)) => {
                            summary["dr_copy"] = json!(dr);
                            Ok(Reply::Transfer(summary))
                        }
                        Ok(None) => Ok(Reply::Transfer(summary)),
                        Err(e) => Err(e),
                    }
                }
                other => other,
            };
            Box::new(responder).respond(outcome);
        });
    }
}

/// Copy the backup `object` to the tenant's DR region, if it has one.
async fn copy_to_dr(
    shared: &Shared,
    tenant: &TenantId,
    object: &str,
) -> Result<Option<String>, ServiceError> {
    let (Some(regions), Some(registry)) = (&shared.regions, &shared.registry) else {
        return Ok(None);
    };
    let Some(dr) = registry
        .get(tenant.as_str())
        .await?
        .and_then(|v| v.record.dr_region)
    else {
        return Ok(None);
    };
    super::region::copy_object(shared, object, regions.own(), &dr)
        .await
        .map_err(|e| {
            e.with_message(format!(
                "the backup {object} was made, but not copied to the tenant's DR region {dr}: {}; \
                 back up again",
                e.message
            ))
        })?;
    Ok(Some(dr))
}

/// `tenants failover T`, asked of a worker of T's DR region.
pub(super) async fn failover(
    tenant: &TenantId,
    shared: &Shared,
    registry: &Registry,
) -> Result<Bytes, ServiceError> {
    let regions = super::region::regions_of(shared)?;
    let own = regions.own().to_owned();
    let Home::Remote(home) = regions.home_of(tenant.as_str()) else {
        return Err(ServiceError::bad_request(format!(
            "tenant {tenant} lives in this region ({own}) already, or nowhere"
        )));
    };
    let old = regions
        .directory()
        .record(&home, tenant.as_str())
        .await?
        .ok_or_else(|| ServiceError::unknown_tenant(format!("tenant {tenant} has no record")))?;
    if old.dr_region.as_deref() != Some(own.as_str()) {
        return Err(ServiceError::bad_request(format!(
            "tenant {tenant}'s DR region is {}, not {own}: ask a worker of that region",
            old.dr_region.as_deref().unwrap_or("none")
        )));
    }
    if answers(shared, &home).await {
        return Err(ServiceError::bad_request(format!(
            "region {home}, tenant {tenant}'s home, answers: its tenants are not lost (to move \
             one, tenants move)"
        )));
    }
    let (object, taken) = latest_backup(shared, tenant, &own).await?;
    let mut record = TenantRecord::new(tenant, &record::now());
    record.settings = old.settings.clone();
    record.embedder = old.embedder.clone();
    record.home_region = Some(own.clone());
    record.home_epoch = old.home_epoch + 1;
    record.state = TenantState::Arriving;
    if registry.create(&record).await?.is_none() {
        registry
            .update(tenant.as_str(), |r| {
                *r = TenantRecord {
                    created: r.created.clone(),
                    ..record.clone()
                };
                Ok(())
            })
            .await?;
    }
    let imported = super::moving::ask(
        shared,
        &own,
        Verb::Import,
        tenant,
        json!({"object": object}),
    )
    .await;
    let imported = match imported {
        Ok(v) => v,
        Err(e) => {
            let _ = registry.remove(tenant.as_str()).await;
            return Err(e.with_message(format!(
                "tenant {tenant} was not failed over: its backup {object} did not import: {}",
                e.message
            )));
        }
    };
    let home_now = super::moving::home_from_now(tenant, &own, registry, shared).await?;
    super::pass_on(&home_now, shared).await;
    tracing::warn!(%tenant, from = %home, to = %own, backup = %object, "tenant failed over to its DR region; writes since its backup are lost");
    Ok(Bytes::from(
        json!({
            "failed_over": tenant.as_str(),
            "from": home,
            "to": own,
            "backup": object,
            "backup_time": taken,
            "documents": imported["documents"],
            "lost": format!("every write to tenant {tenant} after {taken} (its backup's time)"),
        })
        .to_string(),
    ))
}

/// Whether a worker of `region` answers.
async fn answers(shared: &Shared, region: &str) -> bool {
    let subject = format!(
        "{}.{}",
        crate::region::forward_prefix(&shared.settings.nats.prefix, region),
        shared.subjects.admin(crate::protocol::AdminVerb::Stats)
    );
    matches!(
        tokio::time::timeout(
            PROBE,
            shared.client.request(subject, Bytes::from_static(b"{}"))
        )
        .await,
        Ok(Ok(_))
    )
}

/// The tenant's newest backup in `region`'s bucket, and when it was made.
async fn latest_backup(
    shared: &Shared,
    tenant: &TenantId,
    region: &str,
) -> Result<(String, String), ServiceError> {
    use futures::StreamExt;
    let none = || {
        ServiceError::bad_request(format!(
            "region {region} holds no backup of tenant {tenant}: nothing to fail over to"
        ))
    };
    let bucket = super::region::bucket(shared, region)
        .await
        .ok_or_else(none)?;
    let mut list = bucket.list().await.map_err(|e| {
        ServiceError::unavailable(format!("listing region {region}'s backups: {e}"))
    })?;
    let head = format!("{tenant}/");
    let mut newest: Option<async_nats::jetstream::object_store::ObjectInfo> = None;
    while let Some(info) = list.next().await {
        let Ok(info) = info else { continue };
        let Some(name) = info.name.strip_prefix(&head) else {
            continue;
        };
        if name.starts_with('_') || info.deleted || info.modified.is_none() {
            continue;
        }
        if newest.as_ref().is_none_or(|n| info.modified > n.modified) {
            newest = Some(info);
        }
    }
    let newest = newest.ok_or_else(none)?;
    let when = serde_json::to_value(&newest)
        .ok()
        .and_then(|v| v.get("mtime").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_default();
    let object = newest.name;
    Ok((object, when))
}
