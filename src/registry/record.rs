//! A tenant's record: the versioned JSON value of its key in the registry.
//!
//! Owns the record's shape (id, times, state, settings, embedder, sizes as
//! last seen, last activity, and the fields kept for what comes next: a
//! home region and key material), its encoding, and the plain functions
//! over records: a page of ids, the figures a closing actor writes. It must
//! never drop a field a later version wrote: a record this version rewrites
//! keeps them as they were.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::embed::record::EmbedderRecord;
use crate::policy::TenantSettings;
use crate::protocol::ServiceError;
use crate::tenant::TenantId;

/// The record's schema. A later version that changes what a field means
/// raises it; this version refuses a record of a later schema rather than
/// rewrite what it does not understand.
pub const SCHEMA: u32 = 1;

/// Where a tenant stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantState {
    /// Known, no actor holds it (the state a record is written in).
    #[default]
    Idle,
    /// An actor holds it now. Never written: derived, when a record is
    /// shown, from the pool of the worker that answers.
    Active,
    /// `tenants delete` is erasing it.
    Dropping,
    /// `tenants move` is copying it to another region (`moving_to`): its
    /// writes are refused (retryably) until the move ends.
    Moving,
    /// `tenants move` is copying it here: its record made, its data on
    /// the way; not its home yet.
    Arriving,
}

impl TenantState {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "idle" => Some(Self::Idle),
            "active" => Some(Self::Active),
            "dropping" => Some(Self::Dropping),
            "moving" => Some(Self::Moving),
            "arriving" => Some(Self::Arriving),
            _ => None,
        }
    }
}

/// One tenant, as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub schema: u32,
    pub id: String,
    /// When the record was made (RFC 3339, UTC), and last written.
    pub created: String,
    pub updated: String,
    #[serde(default)]
    pub state: TenantState,
    /// The tenant's own settings over the worker's defaults.
    #[serde(default)]
    pub settings: TenantSettings,
    /// The embedder that made the tenant's vectors, as last seen.
    #[serde(default)]
    pub embedder: Option<EmbedderRecord>,
    /// Documents and bytes on disk when its actor last closed.
    #[serde(default)]
    pub documents: Option<u64>,
    #[serde(default)]
    pub bytes: Option<u64>,
    /// When its actor last closed after serving it.
    #[serde(default)]
    pub last_active: Option<String>,
    /// The region whose workers alone hold its data (kept for regions).
    #[serde(default)]
    pub home_region: Option<String>,
    /// Its data key, wrapped (kept for per-tenant encryption).
    #[serde(default)]
    pub key: Option<Value>,
    /// In state `moving`: the region it is being moved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_to: Option<String>,
    /// Its disaster-recovery region: its backups are copied there, and
    /// `tenants failover` restores it there when its home is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dr_region: Option<String>,
    /// Raised by each failover: of two regions that both hold the tenant as
    /// its home, the one with the higher epoch is (the failed-over copy
    /// wins over the old home when that returns).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub home_epoch: u64,
    /// Fields of a later version, kept as they are.
    #[serde(flatten)]
    pub later: Map<String, Value>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TenantRecord {
    /// A new tenant's record, in state `idle` with no settings of its own.
    pub fn new(tenant: &TenantId, now: &str) -> Self {
        Self {
            schema: SCHEMA,
            id: tenant.as_str().to_owned(),
            created: now.to_owned(),
            updated: now.to_owned(),
            state: TenantState::Idle,
            settings: TenantSettings::default(),
            embedder: None,
            documents: None,
            bytes: None,
            last_active: None,
            home_region: None,
            key: None,
            moving_to: None,
            dr_region: None,
            home_epoch: 0,
            later: Map::new(),
        }
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// The record stored under `tenant`'s key.
    pub fn decode(tenant: &str, raw: &[u8]) -> Result<Self, ServiceError> {
        let record: Self = serde_json::from_slice(raw).map_err(|e| {
            ServiceError::internal(format!(
                "tenant {tenant}: its registry record is invalid: {e}"
            ))
        })?;
        if record.schema > SCHEMA {
            return Err(ServiceError::internal(format!(
                "tenant {tenant}: its registry record has schema {}, this worker knows {SCHEMA}: \
                 upgrade the worker",
                record.schema
            )));
        }
        Ok(record)
    }

    /// What a closing actor saw: the tenant's size, its embedder, and that
    /// it was used until `now`.
    pub fn closed(
        &mut self,
        documents: Option<u64>,
        bytes: Option<u64>,
        embedder: Option<EmbedderRecord>,
        now: &str,
    ) {
        if documents.is_some() {
            self.documents = documents;
        }
        if bytes.is_some() {
            self.bytes = bytes;
        }
        if embedder.is_some() {
            self.embedder = embedder;
        }
        self.last_active = Some(now.to_owned());
    }
}

/// How stale a record's `last_active` may get before a closing actor that
/// only read writes it again: a read-only activation costs no write within
/// this (a tenant's last activity is known to within it).
pub const ACTIVITY_PRECISION: std::time::Duration = std::time::Duration::from_secs(60);

/// What a closing actor writes into its tenant's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseWrite {
    /// Its figures: documents, bytes, embedder, last activity (it wrote).
    Figures,
    /// Its last activity alone (it only read, and the record's is stale).
    Activity,
    /// Nothing (it only read, and the record's last activity is recent).
    Nothing,
}

/// What to write at a close: the figures after writes; after reads only,
/// the last activity when the record's (`last_active`) is older than
/// [`ACTIVITY_PRECISION`] or unknown.
pub fn on_close(wrote: bool, last_active: Option<&str>, now: std::time::SystemTime) -> CloseWrite {
    if wrote {
        return CloseWrite::Figures;
    }
    let recent = last_active
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|age| age < ACTIVITY_PRECISION);
    match recent {
        true => CloseWrite::Nothing,
        false => CloseWrite::Activity,
    }
}

/// Now, as records write times (RFC 3339, UTC, whole seconds).
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// One page of `keys` (sorted): those after `cursor` that start with
/// `prefix`, at most `limit`, and the cursor of the next page when more
/// follow.
pub fn page<'a>(
    keys: &'a [String],
    prefix: &str,
    cursor: Option<&str>,
    limit: usize,
) -> (Vec<&'a str>, Option<String>) {
    let start = match cursor {
        Some(c) => keys.partition_point(|k| k.as_str() <= c),
        None => keys.partition_point(|k| k.as_str() < prefix),
    };
    let mut matching = keys[start..]
        .iter()
        .map(String::as_str)
        .skip_while(|k| *k < prefix)
        .take_while(|k| k.starts_with(prefix));
    let ids: Vec<&str> = matching.by_ref().take(limit).collect();
    let next = match (matching.next(), ids.last()) {
        (Some(_), Some(last)) => Some((*last).to_owned()),
        _ => None,
    };
    (ids, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ids: &[&str]) -> Vec<String> {
        let mut k: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        k.sort();
        k
    }

    #[test]
    fn pages_follow_the_cursor_within_the_prefix() {
        let all = keys(&["alice", "al", "bob", "alma", "carol", "alfred"]);
        let (ids, next) = page(&all, "al", None, 2);
        assert_eq!(ids, ["al", "alfred"]);
        let (ids, next) = page(&all, "al", next.as_deref(), 2);
        assert_eq!(ids, ["alice", "alma"]);
        assert_eq!(next, None, "nothing of the prefix follows");
        let (ids, next) = page(&all, "", None, 10);
        assert_eq!(ids.len(), 6);
        assert_eq!(next, None);
        let (ids, next) = page(&all, "", Some("bob"), 1);
        assert_eq!((ids, next), (vec!["carol"], None));
        assert!(page(&all, "zed", None, 5).0.is_empty());
    }

    #[test]
    fn a_record_keeps_what_a_later_version_wrote() {
        let t = TenantId::parse("alice").unwrap();
        let mut r = TenantRecord::new(&t, "2026-12-07T05:00:00Z");
        r.later.insert("quota_class".into(), Value::from("gold"));
        let back = TenantRecord::decode("alice", &r.encode()).unwrap();
        assert_eq!(back, r);
        let text = String::from_utf8(r.encode().to_vec()).unwrap();
        assert!(text.contains("\"quota_class\":\"gold\""), "{text}");
    }

    #[test]
    fn a_record_of_a_later_schema_is_refused() {
        let t = TenantId::parse("alice").unwrap();
        let mut r = TenantRecord::new(&t, "2026-12-07T05:00:00Z");
        r.schema = SCHEMA + 1;
        let e = TenantRecord::decode("alice", &r.encode()).unwrap_err();
        assert!(e.message.contains("upgrade"), "{e}");
        assert!(TenantRecord::decode("alice", b"{").is_err());
    }

    #[test]
    fn a_read_only_activation_writes_its_activity_once_a_minute() {
        let now = humantime::parse_rfc3339("2026-12-07T05:00:00Z").unwrap();
        assert_eq!(
            on_close(true, Some("2026-12-07T04:59:59Z"), now),
            CloseWrite::Figures
        );
        assert_eq!(
            on_close(false, Some("2026-12-07T04:59:30Z"), now),
            CloseWrite::Nothing
        );
        assert_eq!(
            on_close(false, Some("2026-12-07T04:58:00Z"), now),
            CloseWrite::Activity
        );
        assert_eq!(on_close(false, None, now), CloseWrite::Activity);
        assert_eq!(
            on_close(false, Some("yesterday"), now),
            CloseWrite::Activity
        );
    }

    #[test]
    fn closing_keeps_what_it_did_not_see() {
        let t = TenantId::parse("alice").unwrap();
        let mut r = TenantRecord::new(&t, "t0");
        r.closed(Some(3), Some(4096), None, "t1");
        r.closed(None, None, None, "t2");
        assert_eq!((r.documents, r.bytes), (Some(3), Some(4096)));
        assert_eq!(r.last_active.as_deref(), Some("t2"));
    }
}
