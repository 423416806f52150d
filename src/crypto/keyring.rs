//! A worker's keyring: its master key and the prefix whose tenants' data
//! keys it wraps and opens.
//!
//! Owns the one way data keys are made and opened for a tenant of a prefix.
//! It must never hand out a key of another prefix's tenant.

use std::sync::Arc;

use super::{DataKey, KeyError, MasterKey, WrappedKey};

#[derive(Debug, Clone)]
pub struct Keyring {
    master: Arc<MasterKey>,
    prefix: String,
}

impl Keyring {
    pub fn new(master: MasterKey, prefix: &str) -> Self {
        Self {
            master: Arc::new(master),
            prefix: prefix.to_owned(),
        }
    }

    pub fn fingerprint(&self) -> &str {
        self.master.fingerprint()
    }

    /// A new data key for `tenant`, and its wrapped form (version `version`).
    pub fn make(&self, tenant: &str, version: u32) -> Result<(DataKey, WrappedKey), KeyError> {
        let key = DataKey::generate(version)?;
        let wrapped = key.wrap(&self.master, &self.prefix, tenant)?;
        Ok((key, wrapped))
    }

    /// `key` of `tenant` wrapped under this keyring's master key.
    pub fn wrap(&self, key: &DataKey, tenant: &str) -> Result<WrappedKey, KeyError> {
        key.wrap(&self.master, &self.prefix, tenant)
    }

    /// `tenant`'s data key from its wrapped form.
    pub fn open(&self, tenant: &str, wrapped: &WrappedKey) -> Result<DataKey, KeyError> {
        wrapped.unwrap(&self.master, &self.prefix, tenant)
    }
}
