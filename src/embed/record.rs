//! Which embedder wrote a tenant's vectors.
//!
//! Owns the tenant's embedder record (`{"model", "dimension"}`), written
//! after the first write whose vectors the worker made, removed by `drop`,
//! and the check that refuses to mix another model's vectors into the
//! tenant, or to search it with them: two models' vectors have nothing to do
//! with each other, so the scores would be noise. With a shard per tenant
//! the record lives in the shard's folder,
//! `<data>/<tenant>/vector_store/embedder.json`; in the other layouts, which
//! keep no folder per tenant, in `<data>/_embedders/<tenant>.json` (`_`
//! cannot begin a tenant id). It must never follow a symlinked tenant
//! folder, and never refuse a tenant that has no record (data written before
//! records existed, or only with vectors the client sent).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::embed::Embedder;
use crate::protocol::internal;
use crate::protocol::ServiceError;
use crate::tenant::{TenantId, TenantPaths};

const FILE: &str = "embedder.json";
const SHARED_DIR: &str = "_embedders";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedderRecord {
    pub model: String,
    pub dimension: usize,
}

impl EmbedderRecord {
    pub fn of(embedder: &dyn Embedder) -> Self {
        Self {
            model: embedder.name().to_owned(),
            dimension: embedder.dimension(),
        }
    }
}

/// Where the records of a worker's tenants are kept.
#[derive(Debug, Clone)]
pub struct Records {
    paths: TenantPaths,
    /// In the tenant's shard folder (edge, a shard per tenant).
    in_shard: bool,
}

impl Records {
    pub fn new(paths: TenantPaths, in_shard: bool) -> Self {
        Self { paths, in_shard }
    }

    /// The record's file, after checking that no symlink leads there.
    fn path(&self, tenant: &TenantId) -> Result<PathBuf, ServiceError> {
        if self.in_shard {
            self.paths
                .check_tenant_dir(tenant)
                .map_err(|e| internal(&format!("tenant {tenant}"), "tenant folder", e))?;
            Ok(self.paths.store_dir(tenant).join(FILE))
        } else {
            Ok(self
                .paths
                .root()
                .join(SHARED_DIR)
                .join(format!("{}.json", tenant.as_str())))
        }
    }

    /// The tenant's record, if it has one.
    pub fn read(&self, tenant: &TenantId) -> Result<Option<EmbedderRecord>, ServiceError> {
        let who = format!("tenant {tenant}");
        match std::fs::read(self.path(tenant)?) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| internal(&who, "read embedder record", e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(internal(&who, "read embedder record", e)),
        }
    }

    /// Whether `embedder` may embed for the tenant: yes when the tenant has
    /// no record or the same one. Returns whether a record exists.
    pub fn check(&self, tenant: &TenantId, embedder: &dyn Embedder) -> Result<bool, ServiceError> {
        let Some(recorded) = self.read(tenant)? else {
            return Ok(false);
        };
        let current = EmbedderRecord::of(embedder);
        if recorded == current {
            return Ok(true);
        }
        Err(ServiceError::bad_request(format!(
            "tenant {tenant} holds vectors of embedder {:?} ({} dimensions); this worker embeds \
             with {:?} ({} dimensions), whose vectors cannot be compared with them. Send vectors \
             made by {:?}, or re-embed the tenant (docs/embeddings.md, \"Changing the model\")",
            recorded.model, recorded.dimension, current.model, current.dimension, recorded.model
        )))
    }

    /// Record `embedder` as the tenant's, atomically (a file written whole,
    /// then renamed over).
    pub fn write(&self, tenant: &TenantId, embedder: &dyn Embedder) -> Result<(), ServiceError> {
        self.write_record(tenant, &EmbedderRecord::of(embedder))
    }

    /// Record `record` as the tenant's (an import brings its vectors' model).
    pub fn write_record(
        &self,
        tenant: &TenantId,
        record: &EmbedderRecord,
    ) -> Result<(), ServiceError> {
        let who = format!("tenant {tenant}");
        let path = self.path(tenant)?;
        let dir = path
            .parent()
            .ok_or_else(|| internal(&who, "embedder record", "no folder"))?;
        std::fs::create_dir_all(dir).map_err(|e| internal(&who, "create record folder", e))?;
        let body =
            serde_json::to_vec(record).map_err(|e| internal(&who, "encode embedder record", e))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, body).map_err(|e| internal(&who, "write embedder record", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| internal(&who, "write embedder record", e))
    }

    /// Forget the tenant's record (`drop`). Missing is fine.
    pub fn remove(&self, tenant: &TenantId) -> Result<(), ServiceError> {
        match std::fs::remove_file(self.path(tenant)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(internal(
                &format!("tenant {tenant}"),
                "remove embedder record",
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::HashingEmbedder;

    #[test]
    fn another_embedder_is_refused_the_same_one_is_not() {
        for in_shard in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let records = Records::new(TenantPaths::new(dir.path()), in_shard);
            let tenant = TenantId::parse("alice").unwrap();
            let e384 = HashingEmbedder::new(384);
            assert!(!records.check(&tenant, &e384).unwrap(), "no record yet");
            records.write(&tenant, &e384).unwrap();
            assert!(records.check(&tenant, &e384).unwrap());
            let e8 = HashingEmbedder::new(8);
            let refused = records.check(&tenant, &e8).unwrap_err();
            assert!(refused.message.contains("re-embed"), "{}", refused.message);
            assert_eq!(
                dir.path().join("alice").exists(),
                in_shard,
                "a folder per tenant only with a shard per tenant"
            );
            records.remove(&tenant).unwrap();
            assert!(!records.check(&tenant, &e8).unwrap());
        }
    }
}
