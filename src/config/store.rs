//! `[store]`: the backend, the layout and the engine's options.
//!
//! Owns the section's shape.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{duration, keys};
use super::Secret;

/// Where tenants' points are kept (docs/storage.md, "Backends").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Backend {
    Edge,
    Qdrant,
}

/// Where tenants' points live (docs/storage.md, "Layouts").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Layout {
    /// A store per tenant: a shard (edge) or a collection (qdrant) each.
    PerTenant,
    /// One store for all tenants, each point tagged with its tenant.
    Shared,
}

impl Layout {
    /// Its name in settings.
    pub fn name(self) -> &'static str {
        match self {
            Layout::PerTenant => "per_tenant",
            Layout::Shared => "shared",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub backend: Backend,
    pub layout: Layout,
    pub folder: PathBuf,
    pub dimension: usize,
    pub wal_capacity_kb: usize,
    pub vectors_on_disk: bool,
    pub optimize_threshold: usize,
    pub qdrant_url: String,
    pub qdrant_api_key: Secret,
    /// Longest a request to the Qdrant server may take before it is
    /// answered `unavailable`.
    #[serde(with = "duration")]
    pub qdrant_timeout: Duration,
    /// Longest a connection attempt to the Qdrant server may take.
    #[serde(with = "duration")]
    pub qdrant_connect_timeout: Duration,
    pub collection_prefix: String,
    /// Metadata keys that may get a payload index; empty: any key a filter
    /// uses. A list, or one string of comma-separated keys (the environment).
    #[serde(with = "keys")]
    pub indexed_keys: Vec<String>,
    /// Most payload indexes made on first use in one store (one shard or
    /// collection; in the shared layout, the one all tenants share).
    pub max_payload_indexes: usize,
    /// Edge: writes are refused while the data folder's disk has less free
    /// space than this, in MiB (0: never).
    pub min_free_disk_mb: u64,
    /// Where `dimension` was set when not by the defaults (a file, the
    /// environment, a flag): a remote embedder's dimension must then agree.
    #[serde(skip)]
    pub dimension_given: Option<String>,
}
