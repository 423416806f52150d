//! `[encryption]`: per-tenant keys (docs/encryption.md).
//!
//! Owns the section's shape. It must never hold a key: the master key is
//! named by its file, read by the worker at start.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSettings {
    /// Every tenant's data encrypted at rest with a key of its own.
    pub enabled: bool,
    /// The master key: a file of 32 random bytes, mode 0600
    /// (`tenantvec keys new --out FILE`).
    pub master_key_file: PathBuf,
    /// The shared layout and the Qdrant backend: the metadata keys kept in
    /// clear (so that filters can use them); every other key, and the text,
    /// is sealed with the tenant's key.
    #[serde(default)]
    pub plaintext_metadata: Vec<String>,
    /// Refuse to start where anything of a tenant's would be readable to
    /// the store: the shared layout and the Qdrant backend, which must see
    /// vectors (and the keys of `plaintext_metadata`).
    #[serde(default)]
    pub require_full: bool,
}
