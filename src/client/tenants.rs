//! The command line's side of the tenant registry: `tenantvec tenants
//! list|show|create|set|delete`, as requests on `<p>.admin.tenants.<op>`.
//!
//! Owns reading settings written as `key=value`, following a list's pages,
//! and the table a person reads. It must never read or write the registry's
//! bucket itself: every change goes through a worker, which checks it.

use serde_json::{json, Map, Value};

use crate::client::retry::Request;
use crate::client::{check_tenant, Client, ClientError};
use crate::protocol::{TenantsOp, MAX_TENANTS_PAGE};

/// Settings written as `key=value` (`top_k=5`, `max_rps=2.5`), a value of
/// `default` putting one back to the worker's default.
pub fn parse_settings(pairs: &[String]) -> Result<Map<String, Value>, ClientError> {
    let mut out = Map::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(anyhow::anyhow!(
                "{pair:?} is not key=value (e.g. top_k=5, max_documents=1000, max_rps=2.5, \
                 max_rps=default)"
            )
            .into());
        };
        let value = match value.trim() {
            "default" | "null" => Value::Null,
            v => serde_json::from_str::<Value>(v)
                .ok()
                .filter(Value::is_number)
                .ok_or_else(|| anyhow::anyhow!("{key}: {v:?} is not a number"))?,
        };
        out.insert(key.trim().to_owned(), value);
    }
    Ok(out)
}

/// One operation on one tenant.
pub async fn one(
    client: &Client,
    op: TenantsOp,
    tenant: &str,
    settings: Option<Map<String, Value>>,
) -> Result<Value, ClientError> {
    check_tenant(tenant)?;
    let mut body = json!({ "tenant": tenant });
    if let Some(settings) = settings {
        body["settings"] = Value::Object(settings);
    }
    let subject = client.subjects().tenants(op);
    client
        .request_as(Request::Tenants(op), subject, &body)
        .await
}

/// With regions: a tenant's home region and its DR region, each as asked
/// (none: the default).
#[derive(Debug, Default)]
pub struct Regions {
    pub home: Option<String>,
    pub dr: Option<String>,
}

/// Create `tenant` with `settings`, homed in `regions.home` (with regions;
/// by default the answering worker's).
pub async fn create(
    client: &Client,
    tenant: &str,
    settings: Map<String, Value>,
    regions: Regions,
) -> Result<Value, ClientError> {
    check_tenant(tenant)?;
    let mut body = json!({ "tenant": tenant, "settings": settings });
    if let Some(region) = regions.home {
        body["region"] = json!(region);
    }
    if let Some(dr) = regions.dr {
        body["dr_region"] = json!(dr);
    }
    let subject = client.subjects().tenants(TenantsOp::Create);
    client
        .request_as(Request::Tenants(TenantsOp::Create), subject, &body)
        .await
}

/// Change `tenant`'s settings, and with regions its DR region (`""`: none).
pub async fn set(
    client: &Client,
    tenant: &str,
    settings: Map<String, Value>,
    dr_region: Option<String>,
) -> Result<Value, ClientError> {
    check_tenant(tenant)?;
    let mut body = json!({ "tenant": tenant, "settings": settings });
    if let Some(dr) = dr_region {
        body["dr_region"] = json!(dr);
    }
    let subject = client.subjects().tenants(TenantsOp::Set);
    client
        .request_as(Request::Tenants(TenantsOp::Set), subject, &body)
        .await
}

/// Restore `tenant` in the region of the worker that answers (its DR
/// region) from its latest backup there.
pub async fn failover(client: &Client, tenant: &str) -> Result<Value, ClientError> {
    check_tenant(tenant)?;
    let body = json!({ "tenant": tenant });
    let subject = client.subjects().tenants(TenantsOp::Failover);
    client
        .request_timeout(subject, body.to_string().into(), MOVE_TIMEOUT)
        .await
}

/// How long `tenants move` waits for the move (an export and an import).
const MOVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Move `tenant`'s home to `region`; what was moved.
pub async fn move_to(client: &Client, tenant: &str, region: &str) -> Result<Value, ClientError> {
    check_tenant(tenant)?;
    let body = json!({ "tenant": tenant, "region": region });
    let subject = client.subjects().tenants(TenantsOp::Move);
    client
        .request_timeout(subject, body.to_string().into(), MOVE_TIMEOUT)
        .await
}

/// Every record whose id starts with `prefix` (in `state`, if given), page
/// by page in id order.
pub async fn list(
    client: &Client,
    prefix: Option<&str>,
    state: Option<&str>,
    page: usize,
) -> Result<Vec<Value>, ClientError> {
    let mut records = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let body = json!({
            "prefix": prefix,
            "state": state,
            "cursor": cursor,
            "limit": page.clamp(1, MAX_TENANTS_PAGE),
        });
        let reply = client
            .request_as(
                Request::Tenants(TenantsOp::List),
                client.subjects().tenants(TenantsOp::List),
                &strip_nulls(body),
            )
            .await?;
        if let Some(Value::Array(page)) = reply.get("tenants") {
            records.extend(page.iter().cloned());
        }
        match reply.get("next").and_then(Value::as_str) {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(records),
        }
    }
}

fn strip_nulls(mut body: Value) -> Value {
    if let Value::Object(map) = &mut body {
        map.retain(|_, v| !v.is_null());
    }
    body
}

/// The records as a table: id, state, documents, bytes, settings, last
/// activity.
pub fn table(records: &[Value]) -> String {
    let cell = |r: &Value, key: &str| match r.get(key) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let mut rows = vec![[
        "tenant".to_owned(),
        "state".to_owned(),
        "documents".to_owned(),
        "bytes".to_owned(),
        "settings".to_owned(),
        "last active".to_owned(),
    ]];
    for r in records {
        let settings = r
            .get("settings")
            .and_then(Value::as_object)
            .map(|s| {
                s.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".to_owned());
        rows.push([
            cell(r, "id"),
            cell(r, "state"),
            cell(r, "documents"),
            cell(r, "bytes"),
            settings,
            cell(r, "last_active"),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_read_as_numbers_or_default() {
        let s = parse_settings(&[
            "top_k=5".into(),
            "max_rps=2.5".into(),
            "max_documents=default".into(),
        ])
        .unwrap();
        assert_eq!(
            Value::Object(s),
            json!({"top_k": 5, "max_rps": 2.5, "max_documents": null})
        );
        assert!(parse_settings(&["top_k".into()]).is_err());
        assert!(parse_settings(&["top_k=five".into()]).is_err());
    }

    #[test]
    fn the_table_has_a_row_per_record() {
        let t = table(&[
            json!({"id": "alice", "state": "idle", "documents": 3, "settings": {"top_k": 5, "max_rps": null}}),
            json!({"id": "bob", "state": "active"}),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        let cells = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            cells(lines[1]),
            ["alice", "idle", "3", "-", "top_k=5", "-"],
            "{t}"
        );
        assert_eq!(
            cells(lines[2]),
            ["bob", "active", "-", "-", "-", "-"],
            "{t}"
        );
    }
}
