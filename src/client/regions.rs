//! `tenantvec cluster` with regions: every region's workers (as the NATS
//! Services API lists them, across the joined regions) and tenants (as the
//! answering worker's directory counts them).
//!
//! Owns that view. It must never write anything, and never wait longer
//! than its listening window for workers that do not answer.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::{Client, ClientError};
use crate::protocol::AdminVerb;
use crate::transport::discovery::{instances, META_CLUSTER, META_PREFIX, META_REGION};

/// How long the workers' service infos are awaited.
const LISTEN: Duration = Duration::from_millis(500);

/// Every region of the deployment: its workers and its tenants' count.
pub async fn describe(client: &Client) -> Result<Value, ClientError> {
    let stats = client.admin(AdminVerb::Stats, &json!({})).await?;
    let regions = stats.get("regions").cloned().unwrap_or(Value::Null);
    if regions.is_null() {
        return Err(anyhow::anyhow!(
            "the answering worker has no regions (worker.region is not set)"
        )
        .into());
    }
    let mut workers: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let infos = instances(client.nats(), LISTEN)
        .await
        .map_err(|e| anyhow::anyhow!("cannot ask for the workers: {e}"))?;
    for info in infos {
        let meta = &info["metadata"];
        if meta[META_PREFIX].as_str() != Some(client.subjects().prefix()) {
            continue;
        }
        let region = meta[META_REGION].as_str().unwrap_or("").to_owned();
        workers.entry(region).or_default().push(json!({
            "id": info["id"],
            "version": info["version"],
            "member": meta[META_CLUSTER].as_str().filter(|m| !m.is_empty()),
        }));
    }
    let mut by_region = serde_json::Map::new();
    if let Some(tenants) = regions["tenants"].as_object() {
        for (region, count) in tenants {
            by_region.insert(
                region.clone(),
                json!({
                    "tenants": count,
                    "workers": workers.remove(region).unwrap_or_default(),
                }),
            );
        }
    }
    Ok(json!({
        "region": regions["region"],
        "regions": by_region,
        "unlinked": regions["unlinked"],
    }))
}
