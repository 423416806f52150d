//! `tenants move T --region R`: a tenant's home moved to another region.
//! Run by a worker of the tenant's home region, as export, copy, import,
//! flip, erase:
//!
//! 1. the record is set `moving` (to R); the export that follows is the
//!    last thing the tenant's actor takes before it refuses writes
//!    (`unavailable`, which clients retry), and ingest publishes for it are
//!    refused meanwhile (a producer publishes again);
//! 2. R gets an `arriving` record (not a home yet: requests still come
//!    here, reads are served);
//! 3. the export is copied to R's backup bucket and imported there;
//! 4. the flip: the record here names R; from then on every region sends
//!    the tenant's requests to R, and what waited in this region's ingest
//!    stream is sent on to R's, in order, before R's record becomes a home;
//! 5. the copy here is erased (its data, then its record).
//!
//! Owns that order. It must never let a write be acknowledged here after
//! the export (the actor refuses them), never let R serve before it holds
//! the export, and never leave the tenant without a home: a failure
//! before the flip puts everything back as it was; one after it leaves R
//! the home and says what is left to erase here.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use super::region::HEADER_HERE;
use super::Shared;
use crate::names::{storage_prefix, Names};
use crate::protocol::{ServiceError, Verb};
use crate::registry::{record, Registry, TenantRecord, TenantState};
use crate::tenant::TenantId;

/// How long the export and the import of one tenant may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long the flip waits for this region's ingest stream to hand over
/// the tenant's messages.
const HANDOVER: Duration = Duration::from_secs(120);

/// Move `tenant` from this region to `to`.
pub(super) async fn move_tenant(
    tenant: &TenantId,
    to: &str,
    shared: &Shared,
    registry: &Registry,
) -> Result<Bytes, ServiceError> {
    let regions = super::region::regions_of(shared)?;
    let own = regions.own().to_owned();
    regions.known("region", to)?;
    if to == own {
        return Err(ServiceError::bad_request(format!(
            "tenant {tenant} lives in region {own} already"
        )));
    }
    if shared.settings.encryption.enabled {
        return Err(ServiceError::bad_request(
            "moving an encrypted tenant between regions is not supported yet: its data key \
             would have to move with it; export it in clear (export --plaintext) and import it \
             in the other region",
        ));
    }
    // 1. Moving: writes stop here from the export on.
    let record = registry
        .update(tenant.as_str(), |r| match r.state {
            TenantState::Idle => {
                r.state = TenantState::Moving;
                r.moving_to = Some(to.to_owned());
                Ok(())
            }
            state => Err(ServiceError::bad_request(format!(
                "tenant {tenant} is {}; only an idle tenant moves",
                serde_json::to_value(state).unwrap_or_default()
            ))),
        })
        .await?
        .ok_or_else(|| ServiceError::unknown_tenant(format!("tenant {tenant} has no record")))?;
    super::pass_on(&record, shared).await;
    regions
        .directory()
        .note(&own, tenant.as_str(), Some(&record));
    let there = remote_registry(shared, to).await?;
    let object = format!("{tenant}/_move/{}", nuid::next());
    let copied = copy(tenant, to, &record, &object, shared, &there).await;
    let documents = match copied {
        Ok(documents) => documents,
        Err(e) => {
            tracing::warn!(%tenant, %to, error = %e.message, "move failed before its flip; the tenant stays");
            undo(tenant, to, shared, registry, &there).await;
            return Err(e.with_message(format!(
                "tenant {tenant} was not moved (it stays in region {own}): {}",
                e.message
            )));
        }
    };
    // 4. The flip.
    let flipped = registry
        .update(tenant.as_str(), |r| {
            r.home_region = Some(to.to_owned());
            Ok(())
        })
        .await?
        .ok_or_else(|| ServiceError::internal(format!("tenant {tenant}: its record vanished")))?;
    regions
        .directory()
        .note(&own, tenant.as_str(), Some(&flipped));
    tracing::info!(%tenant, from = %own, %to, "tenant's home flipped");
    let handed = handover(tenant, shared).await;
    home_from_now(tenant, to, &there, shared).await?;
    // 5. The copy here erased.
    let erased = erase(tenant, shared, registry).await;
    if let Some(b) = super::region::bucket(shared, &own).await {
        let _ = b.delete(&object).await;
    }
    if let Some(b) = super::region::bucket(shared, to).await {
        let _ = b.delete(&object).await;
    }
    if let Some(regions) = &shared.regions {
        regions.directory().note(&own, tenant.as_str(), None);
    }
    tracing::info!(%tenant, from = %own, %to, documents, "tenant moved");
    Ok(Bytes::from(
        json!({
            "moved": tenant.as_str(),
            "from": own,
            "to": to,
            "documents": documents,
            "handed_over": handed.is_ok(),
            "erased": erased.is_ok(),
            "left_here": erased.err().or(handed.err()),
        })
        .to_string(),
    ))
}

/// `region`'s `arriving` record of `tenant` made its home (`idle`), and
/// known so here at once.
pub(super) async fn home_from_now(
    tenant: &TenantId,
    region: &str,
    registry: &Registry,
    shared: &Shared,
) -> Result<TenantRecord, ServiceError> {
    let home = registry
        .update(tenant.as_str(), |r| {
            r.state = TenantState::Idle;
            Ok(())
        })
        .await?
        .ok_or_else(|| {
            ServiceError::internal(format!("tenant {tenant}: its new record vanished"))
        })?;
    if let Some(regions) = &shared.regions {
        regions
            .directory()
            .note(region, tenant.as_str(), Some(&home));
    }
    Ok(home)
}

/// The registry of `region`, through its JetStream domain.
async fn remote_registry(shared: &Shared, region: &str) -> Result<Registry, ServiceError> {
    let js = async_nats::jetstream::with_domain(shared.client.clone(), region);
    Registry::open(
        &js,
        &storage_prefix(&shared.settings.nats.prefix, Some(region)),
        shared.settings.nats.replicas,
    )
    .await
    .map_err(|e| ServiceError::unavailable(format!("region {region}'s registry: {e}")))
}

/// Steps 2 and 3: the arriving record in `to`, the export, its copy, the
/// import. The documents moved.
async fn copy(
    tenant: &TenantId,
    to: &str,
    record: &TenantRecord,
    object: &str,
    shared: &Shared,
    there: &Registry,
) -> Result<u64, ServiceError> {
    let mut arriving = TenantRecord::new(tenant, &record::now());
    arriving.settings = record.settings.clone();
    arriving.embedder = record.embedder.clone();
    arriving.home_region = Some(to.to_owned());
    arriving.state = TenantState::Arriving;
    if there.create(&arriving).await?.is_none() {
        // Left by a move that failed: taken over; anything else refuses.
        there
            .update(tenant.as_str(), |r| match r.state {
                TenantState::Arriving => Ok(()),
                _ => Err(ServiceError::bad_request(format!(
                    "region {to} has a record of tenant {tenant} already"
                ))),
            })
            .await?;
    }
    let own = shared
        .regions
        .as_ref()
        .map(|r| r.own().to_owned())
        .unwrap_or_default();
    let exported = ask(
        shared,
        &own,
        Verb::Export,
        tenant,
        json!({"object": object, "moving_to": to}),
    )
    .await?;
    super::region::copy_object(shared, object, &own, to).await?;
    ask(shared, to, Verb::Import, tenant, json!({"object": object})).await?;
    Ok(exported["documents"].as_u64().unwrap_or(0))
}

/// `verb` of `tenant` served in `region` itself (never sent on by the
/// directory), its reply.
pub(super) async fn ask(
    shared: &Shared,
    region: &str,
    verb: Verb,
    tenant: &TenantId,
    body: serde_json::Value,
) -> Result<serde_json::Value, ServiceError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HEADER_HERE, "1");
    let reply = super::region::request_in(
        shared,
        region,
        &shared.subjects.tenant(verb, tenant.as_str()),
        Bytes::from(body.to_string()),
        headers,
        JOB_TIMEOUT,
    )
    .await
    .map_err(|e| {
        e.with_message(format!(
            "{} of tenant {tenant} in region {region}: {}",
            verb.as_str(),
            e.message
        ))
    })?;
    serde_json::from_slice(&reply.payload).map_err(|e| {
        ServiceError::internal(format!("an unreadable reply from region {region}: {e}"))
    })
}

/// After the flip: wait until this region's ingest stream holds no message
/// of the tenant (its lanes send them on to the new home), so that none
/// arrives there after a later one published to the new home directly.
async fn handover(tenant: &TenantId, shared: &Shared) -> Result<(), String> {
    if !shared.settings.ingest.enabled {
        return Ok(());
    }
    let names = Names::new(&shared.settings.storage_prefix());
    let js = async_nats::jetstream::new(shared.client.clone());
    let deadline = tokio::time::Instant::now() + HANDOVER;
    loop {
        let mut waiting = false;
        if let Ok(stream) = js.get_stream_no_info(&names.ingest_stream).await {
            for filter in names.stored_filters(tenant.as_str()) {
                if stream
                    .get_last_raw_message_by_subject(&filter)
                    .await
                    .is_ok()
                {
                    waiting = true;
                }
            }
        }
        if !waiting {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "ingest messages of tenant {tenant} still wait in this region's stream after \
                 {HANDOVER:?}; they go on to the new home as they are retried"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Step 5: the tenant's data here, then its record.
async fn erase(tenant: &TenantId, shared: &Shared, registry: &Registry) -> Result<(), String> {
    let own = shared
        .regions
        .as_ref()
        .map(|r| r.own().to_owned())
        .unwrap_or_default();
    ask(shared, &own, Verb::Drop, tenant, json!({}))
        .await
        .map_err(|e| format!("its data here was not erased: {}", e.message))?;
    registry
        .remove(tenant.as_str())
        .await
        .map_err(|e| format!("its record here was not removed: {}", e.message))
}

/// A move that failed before its flip: the tenant back to `idle` here, and
/// what reached `to` erased (best effort; logged).
async fn undo(tenant: &TenantId, to: &str, shared: &Shared, registry: &Registry, there: &Registry) {
    match registry
        .update(tenant.as_str(), |r| {
            r.state = TenantState::Idle;
            r.moving_to = None;
            Ok(())
        })
        .await
    {
        Ok(Some(record)) => {
            super::pass_on(&record, shared).await;
            if let Some(regions) = &shared.regions {
                regions
                    .directory()
                    .note(regions.own(), tenant.as_str(), Some(&record));
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(%tenant, error = %e.message, "a failed move could not set the tenant idle again; run tenants move again")
        }
    }
    if let Err(e) = ask(shared, to, Verb::Drop, tenant, json!({})).await {
        tracing::warn!(%tenant, %to, error = %e.message, "a failed move's copy was not erased there");
    }
    if let Err(e) = there.remove(tenant.as_str()).await {
        tracing::warn!(%tenant, %to, error = %e.message, "a failed move's record was not removed there");
    }
}
