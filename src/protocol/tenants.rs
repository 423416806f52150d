//! The registry's operations on the wire: `<prefix>.admin.tenants.<op>`
//! and their request bodies.
//!
//! Owns the operations' names and bodies. It must never know what a
//! record holds (that is the registry's): replies are records as the
//! registry writes them.

use serde::{Deserialize, Serialize};

/// The registry's operations, each on `<prefix>.admin.tenants.<op>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenantsOp {
    List,
    Show,
    Create,
    Set,
    Delete,
    /// With regions: the tenant's home moved to another region.
    Move,
    /// With regions, asked of a worker of the tenant's DR region when its
    /// home is gone: restored there from its latest backup.
    Failover,
}

impl TenantsOp {
    pub const ALL: [TenantsOp; 7] = [
        TenantsOp::List,
        TenantsOp::Show,
        TenantsOp::Create,
        TenantsOp::Set,
        TenantsOp::Delete,
        TenantsOp::Move,
        TenantsOp::Failover,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantsOp::List => "list",
            TenantsOp::Show => "show",
            TenantsOp::Create => "create",
            TenantsOp::Set => "set",
            TenantsOp::Delete => "delete",
            TenantsOp::Move => "move",
            TenantsOp::Failover => "failover",
        }
    }

    pub fn parse(token: &str) -> Option<TenantsOp> {
        TenantsOp::ALL.into_iter().find(|v| v.as_str() == token)
    }
}

/// The token after `admin` of the registry's subjects.
pub const TENANTS: &str = "tenants";

/// Most records in one page of `tenants.list`.
pub const MAX_TENANTS_PAGE: usize = 1000;

/// `<p>.admin.tenants.list`: a page of records in id order, from after
/// `cursor` (the `next` of the page before), those whose id starts with
/// `prefix` and, with `state`, those in that state.
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TenantsListRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Records per page, 1..=1000 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `<p>.admin.tenants.{show,create,set,delete}`: the tenant, and for
/// `create` and `set` the settings to change (`null` puts one back to the
/// worker's default; a setting left out keeps its value).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRequest {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<serde_json::Map<String, serde_json::Value>>,
    /// With regions: for `create`, the tenant's home region (by default
    /// the region of the worker that answers); for `move`, where it goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// With regions, for `create` and `set`: the tenant's disaster-recovery
    /// region (`""` for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dr_region: Option<String>,
}

/// The registry as one worker's index of it sees it (`admin.stats`'s
/// `registry`): tenants by state and by size, never one by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryStats {
    /// Whether the worker has read the whole registry yet (the figures are
    /// partial until then).
    pub complete: bool,
    /// Tenants with a record.
    pub tenants: u64,
    /// Tenants by state: `idle`, `active` (held by the answering worker's
    /// pool), `dropping`.
    pub states: std::collections::BTreeMap<String, u64>,
    /// Tenants by documents as last seen (each bucket those with at most
    /// `le`, above the bucket before; the last has no bound).
    pub documents: Vec<DocumentsBucket>,
    /// Documents of all tenants whose size is known, added up.
    pub documents_total: u64,
    /// Tenants whose size is not known yet (no actor closed since their
    /// record was made).
    pub documents_unknown: u64,
}

/// One bucket of [`RegistryStats::documents`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentsBucket {
    /// Most documents a tenant of this bucket has (`null`: no bound).
    pub le: Option<u64>,
    pub tenants: u64,
}
