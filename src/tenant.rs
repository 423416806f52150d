//! Tenant identity and the tenant's place on disk.
//!
//! Owns the one rule that makes a tenant id safe everywhere it is used (a NATS
//! token, a directory name, a Qdrant collection suffix) and the mapping from a
//! tenant to its folder under the data root. It must never hand out a path for
//! a tenant that has not been validated, and never a path outside the root.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::protocol::ServiceError;

/// Longest tenant id, in bytes (docs/protocol.md, "Tenant ids").
pub const MAX_TENANT_LEN: usize = 64;

/// A validated tenant id: `[a-z0-9][a-z0-9_-]{0,63}`.
///
/// The only way to build one is [`TenantId::parse`], so holding a `TenantId`
/// proves the string is a safe path component and a safe NATS token. Lower
/// case only, so two tenants never share a folder on a case-insensitive file
/// system.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Validate `raw` as a tenant id, or say why it is not one.
    pub fn parse(raw: &str) -> Result<Self, ServiceError> {
        if raw.is_empty() {
            return Err(ServiceError::invalid_tenant("tenant id is empty"));
        }
        if raw.len() > MAX_TENANT_LEN {
            return Err(ServiceError::invalid_tenant(format!(
                "tenant id is {} bytes, at most {MAX_TENANT_LEN} are allowed",
                raw.len()
            )));
        }
        let bytes = raw.as_bytes();
        let first_ok = bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit();
        let rest_ok = bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
        if !first_ok || !rest_ok {
            return Err(ServiceError::invalid_tenant(format!(
                "tenant id {:?} must match [a-z0-9][a-z0-9_-]{{0,63}}",
                truncate_for_message(raw)
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

/// Echo at most 80 characters of a hostile id back in an error message.
fn truncate_for_message(raw: &str) -> String {
    raw.chars().take(80).collect()
}

/// The data root and the per-tenant folders below it, as in the seed
/// application: `<root>/<tenant>/vector_store/`.
#[derive(Debug, Clone)]
pub struct TenantPaths {
    root: PathBuf,
}

impl TenantPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<tenant>/`: everything the tenant owns lives below it.
    pub fn tenant_dir(&self, tenant: &TenantId) -> PathBuf {
        self.root.join(tenant.as_str())
    }

    /// `<root>/<tenant>/vector_store/`: the tenant's embedded shard.
    pub fn store_dir(&self, tenant: &TenantId) -> PathBuf {
        self.tenant_dir(tenant).join("vector_store")
    }

    /// Fails when `<root>/<tenant>` exists but is not a plain directory (a
    /// symlink planted there could point anywhere), so nothing is ever opened
    /// or removed through it.
    pub fn check_tenant_dir(&self, tenant: &TenantId) -> std::io::Result<()> {
        let dir = self.tenant_dir(tenant);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.file_type().is_symlink() || !meta.is_dir() => {
                Err(std::io::Error::other(format!(
                    "{} is not a plain directory; refusing to use it",
                    dir.display()
                )))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["a", "0", "alice", "user_42", "a-b_c", &"x".repeat(64)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok} should be valid");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "..",
            ".",
            "/",
            "a/b",
            "*",
            ">",
            "a b",
            "Alice",
            "_a",
            "-a",
            "é",
            "a.b",
            &"x".repeat(65),
        ] {
            let err = TenantId::parse(bad).unwrap_err();
            assert_eq!(err.code, crate::protocol::ErrorCode::InvalidTenant, "{bad}");
        }
    }

    #[test]
    fn paths_stay_under_the_root() {
        let paths = TenantPaths::new("/data");
        let t = TenantId::parse("bob").unwrap();
        assert_eq!(paths.store_dir(&t), PathBuf::from("/data/bob/vector_store"));
    }
}
