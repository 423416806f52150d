//! The registry's operations on `<p>.admin.tenants.<op>`: list (a page),
//! show, create, set and delete a tenant's record.
//!
//! Owns their bodies and replies. It must never change a record but
//! through the registry's revision-checked writes, and never erase a
//! tenant's data but through its `drop` request (which reaches the
//! tenant's owner, on this worker or another one of the fleet).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::admin::to_json;
use super::reply::respond;
use super::{pass_on, Incoming, Shared};
use crate::policy::{TenantPolicy, TenantSettings};
use crate::protocol::{
    decode, unknown_verb, ServiceError, Subjects, TenantRequest, TenantsListRequest, TenantsOp,
    Verb, MAX_TENANTS_PAGE,
};
use crate::region::Home;
use crate::registry::{record, Registry, TenantRecord, TenantState};
use crate::supervisor::{ActiveAmong, GetStats};
use crate::tenant::{TenantId, TenantPaths};

/// Records per page of `tenants.list` when the request gives none.
const DEFAULT_PAGE: usize = 100;

/// Answer the registry's operations until shutdown, each in a task of its
/// own (they wait on JetStream, never on a tenant's queue).
pub(super) async fn serve(
    mut endpoint: async_nats::service::endpoint::Endpoint,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = endpoint.next() => match r {
                Some(r) => r,
                None => return,
            },
        };
        handle(Incoming::Service(request), shared.clone());
    }
}

/// Whether `subject` is one of the registry's operations.
pub(super) fn is_tenants_subject(subjects: &Subjects, subject: &str) -> bool {
    subject
        .strip_prefix(subjects.tenants_requests().trim_end_matches('*'))
        .is_some_and(|op| TenantsOp::parse(op).is_some())
}

/// Answer one operation in a task of its own: here, or, with regions, in
/// the region where its tenant lives (or, for `create --region`, will).
pub(super) fn handle(request: Incoming, shared: Arc<Shared>) {
    tokio::spawn(async move {
        let subject = request.message().subject.to_string();
        let body = request.message().payload.clone();
        let op = subject.rsplit('.').next().and_then(TenantsOp::parse);
        let elsewhere = match op {
            Some(op) => home_elsewhere(op, &body, &shared, request.message()),
            None => None,
        };
        let outcome = match (op, shared.registry.clone(), elsewhere) {
            (None, _, _) => Err(unknown_verb(&subject)),
            (Some(_), None, _) => Err(ServiceError::bad_request(
                "this worker keeps no tenant registry (tenants.registry = false)",
            )),
            (Some(_), Some(_), Some(region)) => {
                in_region(&region, request.message(), &shared).await
            }
            (Some(op), Some(registry), None) => operate(op, &body, &shared, &registry).await,
        };
        respond(&request, outcome).await;
    });
}

/// With regions, the region other than this one that must answer: the
/// tenant's home, or the region a `create` asks for (unless the tenant
/// lives somewhere already: its home then says it exists). `None`: here.
/// A request forwarded once is answered where it arrived.
fn home_elsewhere(
    op: TenantsOp,
    body: &[u8],
    shared: &Shared,
    message: &async_nats::Message,
) -> Option<String> {
    let regions = shared.regions.as_ref()?;
    // A failover is asked of the DR region itself, whatever the directory
    // says of the tenant's home.
    if matches!(op, TenantsOp::List | TenantsOp::Failover) || super::placement::hops(message) > 0 {
        return None;
    }
    let req: TenantRequest = decode(body).ok()?;
    let target = match (regions.home_of(&req.tenant), req.region) {
        (Home::Remote(home), _) => home,
        (Home::Local, Some(asked)) if op == TenantsOp::Create => asked,
        (Home::Local, _) => return None,
    };
    (target != regions.own()).then_some(target)
}

/// The operation answered by a worker of `region`, its reply as it comes.
async fn in_region(
    region: &str,
    message: &async_nats::Message,
    shared: &Shared,
) -> Result<Bytes, ServiceError> {
    if let Some(regions) = &shared.regions {
        regions.known("region", region)?;
    }
    let mut headers = message.headers.clone().unwrap_or_default();
    headers.insert(super::HEADER_HOPS, "1");
    // A move is an export and an import: it takes as long as they do.
    let timeout = match message.subject.ends_with(TenantsOp::Move.as_str()) {
        true => Duration::from_secs(3600),
        false => shared.settings.nats.request_timeout,
    };
    let reply = super::region::request_in(
        shared,
        region,
        &message.subject,
        message.payload.clone(),
        headers,
        timeout,
    )
    .await?;
    // A tenant made there is known here at once (the directory's copy
    // follows a moment later).
    if let (Some(regions), Ok(record)) = (
        &shared.regions,
        serde_json::from_slice::<TenantRecord>(&reply.payload),
    ) {
        if message.subject.ends_with(TenantsOp::Create.as_str()) {
            regions.directory().note(region, &record.id, Some(&record));
        }
    }
    Ok(reply.payload)
}

async fn operate(
    op: TenantsOp,
    body: &Bytes,
    shared: &Shared,
    registry: &Registry,
) -> Result<Bytes, ServiceError> {
    let max_top_k = shared.settings.limits.max_top_k;
    match op {
        TenantsOp::List => {
            let req: TenantsListRequest = decode(body)?;
            let limit = req.limit.unwrap_or(DEFAULT_PAGE);
            if !(1..=MAX_TENANTS_PAGE).contains(&limit) {
                return Err(ServiceError::bad_request(format!(
                    "limit must be 1..={MAX_TENANTS_PAGE}"
                )));
            }
            let state = req.state.as_deref().map(parse_state).transpose()?;
            let held: HashSet<String> = match state {
                Some(TenantState::Active | TenantState::Idle) => held(shared).await,
                _ => HashSet::new(),
            };
            let keep = |id: &str, stored: TenantState| match state {
                None => true,
                Some(TenantState::Active) => held.contains(id),
                Some(TenantState::Idle) => stored == TenantState::Idle && !held.contains(id),
                Some(other) => stored == other,
            };
            let prefix = req.prefix.as_deref().unwrap_or("");
            let (page, next) = registry
                .page(prefix, req.cursor.as_deref(), limit, keep)
                .await?;
            let page: Vec<&str> = page.iter().map(String::as_str).collect();
            let mut records = registry.records(&page).await?;
            mark_active(&mut records, shared).await;
            // A page scanned from the bucket (the index not yet complete)
            // is filtered here; one from the index is already.
            if let Some(state) = state {
                records.retain(|r| r.state == state);
            }
            to_json(&json!({ "tenants": records, "next": next }))
        }
        TenantsOp::Show => {
            let (tenant, _, _) = tenant_of(body, false, false)?;
            let mut record = registry
                .get(tenant.as_str())
                .await?
                .ok_or_else(|| unknown(&tenant))?
                .record;
            mark_active(std::slice::from_mut(&mut record), shared).await;
            to_json(&record)
        }
        TenantsOp::Create => {
            let (tenant, changes, asked) = tenant_of(body, true, true)?;
            let mut settings = TenantSettings::default();
            settings
                .apply(&changes)
                .and_then(|()| settings.check(max_top_k))
                .map_err(ServiceError::bad_request)?;
            let mut record = TenantRecord::new(&tenant, &record::now());
            record.settings = settings;
            record.home_region = match (&shared.regions, asked) {
                (Some(regions), _) => Some(regions.own().to_owned()),
                (None, Some(_)) => {
                    return Err(ServiceError::bad_request(
                        "region: this deployment has no regions (worker.region is not set)",
                    ))
                }
                (None, None) => None,
            };
            if let Some(dr) = dr_region_of(body, shared)? {
                record.dr_region = dr;
            }
            if registry.create(&record).await?.is_none() {
                return Err(ServiceError::bad_request(format!(
                    "tenant {tenant} exists already (tenants set changes its settings)"
                )));
            }
            tracing::info!(%tenant, "tenant created");
            pass_on(&record, shared).await;
            to_json(&record)
        }
        TenantsOp::Set => {
            let (tenant, changes, _) = tenant_of(body, true, false)?;
            let dr = dr_region_of(body, shared)?;
            if changes.is_empty() && dr.is_none() {
                return Err(ServiceError::bad_request(
                    "settings: give at least one of top_k, max_documents, max_rps (or dr_region)",
                ));
            }
            let record = registry
                .update(tenant.as_str(), |r| {
                    if let Some(dr) = &dr {
                        if dr.as_deref() == r.home_region.as_deref() && dr.is_some() {
                            return Err(ServiceError::bad_request(
                                "dr_region: the tenant's home region cannot be its DR region",
                            ));
                        }
                        r.dr_region = dr.clone();
                    }
                    r.settings
                        .apply(&changes)
                        .and_then(|()| r.settings.check(max_top_k))
                        .map_err(ServiceError::bad_request)
                })
                .await?
                .ok_or_else(|| unknown(&tenant))?;
            tracing::info!(%tenant, settings = ?record.settings, "tenant settings changed");
            pass_on(&record, shared).await;
            to_json(&record)
        }
        TenantsOp::Move => {
            let (tenant, _, to) = tenant_of(body, false, true)?;
            let to = to.ok_or_else(|| ServiceError::bad_request("move: give the region"))?;
            super::moving::move_tenant(&tenant, &to, shared, registry).await
        }
        TenantsOp::Failover => {
            let (tenant, _, _) = tenant_of(body, false, false)?;
            super::disaster::failover(&tenant, shared, registry).await
        }
        TenantsOp::Delete => {
            let (tenant, _, _) = tenant_of(body, false, false)?;
            registry
                .update(tenant.as_str(), |r| {
                    r.state = TenantState::Dropping;
                    Ok(())
                })
                .await?
                .ok_or_else(|| unknown(&tenant))?;
            drop_data(&tenant, shared).await?;
            // Its settings went with the record; a tenant.json left from
            // before would make the record again at the next activation.
            let file =
                TenantPolicy::file(&TenantPaths::new(&shared.settings.store.folder), &tenant);
            if let Err(e) = std::fs::remove_file(&file) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(%tenant, error = %e, file = %file.display(), "cannot remove the tenant's settings file");
                }
            }
            registry.remove(tenant.as_str()).await?;
            tracing::info!(%tenant, "tenant deleted: its data and its record");
            to_json(&json!({ "deleted": tenant.as_str() }))
        }
    }
}

fn parse_state(raw: &str) -> Result<TenantState, ServiceError> {
    TenantState::parse(raw).ok_or_else(|| {
        ServiceError::bad_request(format!(
            "state {raw:?} is none of idle, active, dropping, moving, arriving"
        ))
    })
}

fn unknown(tenant: &TenantId) -> ServiceError {
    ServiceError::unknown_tenant(format!("tenant {tenant} has no record in the registry"))
}

/// The DR region a `create` or `set` asks for: `Some(None)` to clear it,
/// `None` when the body does not say.
fn dr_region_of(body: &[u8], shared: &Shared) -> Result<Option<Option<String>>, ServiceError> {
    let req: TenantRequest = decode(body)?;
    let Some(dr) = req.dr_region else {
        return Ok(None);
    };
    if dr.is_empty() {
        return Ok(Some(None));
    }
    let Some(regions) = &shared.regions else {
        return Err(ServiceError::bad_request(
            "dr_region: this deployment has no regions (worker.region is not set)",
        ));
    };
    regions.known("dr_region", &dr)?;
    if dr == regions.own() {
        return Err(ServiceError::bad_request(
            "dr_region: the tenant's home region cannot be its DR region",
        ));
    }
    Ok(Some(Some(dr)))
}

/// A tenant, its settings changes and the region asked for.
type Asked = (TenantId, Map<String, Value>, Option<String>);

/// The tenant a body names, its settings changes (refused unless
/// `with_settings`) and the region asked for (refused unless
/// `with_region`).
fn tenant_of(body: &[u8], with_settings: bool, with_region: bool) -> Result<Asked, ServiceError> {
    let req: TenantRequest = decode(body)?;
    let tenant = TenantId::parse(&req.tenant)?;
    if req.region.is_some() && !with_region {
        return Err(ServiceError::bad_request(
            "region is for tenants.create and tenants.move",
        ));
    }
    match (req.settings, with_settings) {
        (Some(_), false) => Err(ServiceError::bad_request(
            "settings are for tenants.create and tenants.set",
        )),
        (settings, _) => Ok((tenant, settings.unwrap_or_default(), req.region)),
    }
}

/// The tenants this worker's pool holds.
async fn held(shared: &Shared) -> HashSet<String> {
    match shared.router.supervisor().send(GetStats).await {
        Ok(stats) => stats.keys.into_iter().collect(),
        Err(_) => HashSet::new(),
    }
}

/// Show the records of tenants this worker's pool holds as `active`.
async fn mark_active(records: &mut [TenantRecord], shared: &Shared) {
    let ids: Vec<TenantId> = records
        .iter()
        .filter_map(|r| TenantId::parse(&r.id).ok())
        .collect();
    let Ok(active) = shared.router.supervisor().send(ActiveAmong(ids)).await else {
        return;
    };
    for r in records.iter_mut() {
        if r.state == TenantState::Idle && active.iter().any(|t| t.as_str() == r.id) {
            r.state = TenantState::Active;
        }
    }
}

/// Erase the tenant's data through its `drop` request, which reaches the
/// actor that owns the tenant wherever it is served.
async fn drop_data(tenant: &TenantId, shared: &Shared) -> Result<(), ServiceError> {
    let subject = shared.subjects.tenant(Verb::Drop, tenant.as_str());
    let reply = tokio::time::timeout(
        shared.settings.nats.request_timeout,
        shared.client.request(subject, Bytes::from_static(b"{}")),
    )
    .await
    .map_err(|_| ServiceError::unavailable(format!("tenant {tenant}: its drop timed out; retry")))?
    .map_err(|e| {
        ServiceError::unavailable(format!("tenant {tenant}: its drop failed: {e}; retry"))
    })?;
    super::reply::error_in(&reply, &format!("tenant {tenant}'s drop"))?;
    Ok(())
}
