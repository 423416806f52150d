//! The start-up guard against two workers splitting one tenant's data.
//!
//! Owns asking `$SRV.INFO.tenantvec` who else serves and deciding whether this
//! worker may join them. The Services API spreads requests over every
//! instance, so two workers with local (edge) stores on one prefix would each
//! hold part of a tenant. It must never decide anything about tenants; it only
//! refuses a start that would split them.

use std::time::Duration;

use futures::StreamExt;

use crate::protocol::SERVICE_NAME;

/// Metadata keys every instance publishes in its service info.
pub const META_BACKEND: &str = "backend";
pub const META_PREFIX: &str = "prefix";
/// The instance's fleet member name; empty without `cluster.enabled`.
pub const META_CLUSTER: &str = "cluster";
/// The instance's region (`worker.region`); empty without regions.
pub const META_REGION: &str = "region";

/// Fails when another instance on `prefix` makes this one unsafe: any other
/// instance when either side keeps tenants on local disk, unless both are
/// members of a fleet (`cluster`), whose leases keep one owner per tenant
/// and whose own checks decide who may join; and any instance whose
/// `cluster.enabled` differs from ours. Instances of other regions (which
/// the regions' joined servers show too) keep their own data and are no
/// concern.
/// The service infos of every tenantvec instance that answers
/// `$SRV.INFO.tenantvec` within `listen` (every region's, with regions).
pub async fn instances(
    client: &async_nats::Client,
    listen: Duration,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(format!("$SRV.INFO.{SERVICE_NAME}"), inbox, "".into())
        .await?;
    client.flush().await?;
    let deadline = tokio::time::Instant::now() + listen;
    let mut infos = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await {
        if let Ok(info) = serde_json::from_slice::<serde_json::Value>(&msg.payload) {
            infos.push(info);
        }
    }
    Ok(infos)
}

pub async fn ensure_compatible(
    client: &async_nats::Client,
    backend: &str,
    prefix: &str,
    region: &str,
    listen: Duration,
    cluster: bool,
) -> anyhow::Result<()> {
    for info in instances(client, listen).await? {
        let meta = &info["metadata"];
        let (Some(other_backend), Some(other_prefix)) =
            (meta[META_BACKEND].as_str(), meta[META_PREFIX].as_str())
        else {
            continue;
        };
        if other_prefix != prefix || meta[META_REGION].as_str().unwrap_or("") != region {
            continue;
        }
        let other_cluster = meta[META_CLUSTER].as_str().is_some_and(|m| !m.is_empty());
        if other_cluster != cluster {
            anyhow::bail!(
                "another tenantvec worker (id {}) serves prefix {prefix:?} with cluster.enabled = \
                 {other_cluster}, this one has {cluster}; every worker of a prefix must agree{}",
                info["id"].as_str().unwrap_or("?"),
                match other_cluster {
                    true => " (start this one with TENANTVEC_CLUSTER=true to join its fleet)",
                    false => "",
                }
            );
        }
        if !cluster && (backend == "edge" || other_backend == "edge") {
            anyhow::bail!(
                "another tenantvec worker (id {}, backend {other_backend}) already serves \
                 prefix {prefix:?}; with the edge store each worker keeps tenants on its own \
                 disk, so a second one would split them. To scale out, run every worker of \
                 the prefix as a fleet: restart that one and start this one with \
                 TENANTVEC_CLUSTER=true (cluster.enabled; a fleet splits tenants by partition \
                 and hands them over as workers come and go, docs/scaling.md). Or stop it, or \
                 choose another prefix",
                info["id"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}
