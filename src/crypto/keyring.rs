//! A worker's keyring: its key provider and the prefix whose tenants' data
//! keys it wraps and opens.
//!
//! Owns the one way data keys are made, wrapped and opened for a tenant of
//! a prefix, whatever the provider. It must never hand out a key of another
//! prefix's tenant, nor open a key for a tenant other than the one it was
//! wrapped for.

use std::sync::Arc;

use super::data_key::associated_data;
use super::provider::KeyProvider;
use super::{DataKey, KeyError, MasterKey, WrappedKey};

#[derive(Debug, Clone)]
pub struct Keyring {
    provider: Arc<dyn KeyProvider>,
    prefix: String,
}

impl Keyring {
    /// The keyring of the master key in a file.
    pub fn new(master: MasterKey, prefix: &str) -> Self {
        Self::with_provider(Arc::new(master), prefix)
    }

    pub fn with_provider(provider: Arc<dyn KeyProvider>, prefix: &str) -> Self {
        Self {
            provider,
            prefix: prefix.to_owned(),
        }
    }

    pub fn fingerprint(&self) -> &str {
        self.provider.fingerprint()
    }

    /// A new data key for `tenant` (version `version`), and its wrapped form.
    pub async fn make(
        &self,
        tenant: &str,
        version: u32,
    ) -> Result<(DataKey, WrappedKey), KeyError> {
        let key = DataKey::generate(version)?;
        let wrapped = self.wrap(&key, tenant).await?;
        Ok((key, wrapped))
    }

    /// `key` of `tenant` wrapped by this keyring's provider.
    pub async fn wrap(&self, key: &DataKey, tenant: &str) -> Result<WrappedKey, KeyError> {
        let aad = associated_data(&self.prefix, tenant, key.version());
        let sealed = self.provider.wrap(key.bytes(), &aad).await?;
        Ok(WrappedKey::new(key.version(), self.fingerprint(), sealed))
    }

    /// `tenant`'s data key from its wrapped form, if this keyring's
    /// provider wrapped it for that tenant of this prefix.
    pub async fn open(&self, tenant: &str, wrapped: &WrappedKey) -> Result<DataKey, KeyError> {
        if wrapped.master != self.fingerprint() {
            return Err(KeyError::OtherMaster {
                wrapped_with: wrapped.master.clone(),
                have: self.fingerprint().to_owned(),
            });
        }
        let aad = associated_data(&self.prefix, tenant, wrapped.version);
        let bytes = self.provider.unwrap(&wrapped.sealed()?, &aad).await?;
        DataKey::from_bytes(&bytes, wrapped.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine as _;
    use futures::executor::block_on;

    fn keyring(b: u8, prefix: &str) -> Keyring {
        Keyring::new(MasterKey::from_bytes([b; 32]), prefix)
    }

    #[test]
    fn a_wrapped_key_opens_for_its_tenant_only() {
        let ring = keyring(1, "tv");
        let (key, wrapped) = block_on(ring.make("alice", 1)).unwrap();
        assert_eq!(wrapped.master, ring.fingerprint());
        let back = block_on(ring.open("alice", &wrapped)).unwrap();
        assert_eq!(back.bytes(), key.bytes());
        assert_eq!(back.version(), 1);
        // Another tenant, another prefix: does not open.
        assert_eq!(
            block_on(ring.open("bob", &wrapped)).unwrap_err(),
            KeyError::Tampered
        );
        assert_eq!(
            block_on(keyring(1, "other").open("alice", &wrapped)).unwrap_err(),
            KeyError::Tampered
        );
        // Another version claimed: does not open.
        let mut bumped = wrapped.clone();
        bumped.version = 2;
        assert_eq!(
            block_on(ring.open("alice", &bumped)).unwrap_err(),
            KeyError::Tampered
        );
        // A flipped bit: does not open.
        let mut sealed = BASE64.decode(&wrapped.sealed).unwrap();
        sealed[3] ^= 1;
        let mut flipped = wrapped.clone();
        flipped.sealed = BASE64.encode(sealed);
        assert_eq!(
            block_on(ring.open("alice", &flipped)).unwrap_err(),
            KeyError::Tampered
        );
    }

    #[test]
    fn another_master_key_is_named_by_both_fingerprints() {
        let (_, wrapped) = block_on(keyring(1, "tv").make("a", 1)).unwrap();
        match block_on(keyring(2, "tv").open("a", &wrapped)).unwrap_err() {
            KeyError::OtherMaster { wrapped_with, have } => {
                assert_eq!(wrapped_with, keyring(1, "tv").fingerprint());
                assert_eq!(have, keyring(2, "tv").fingerprint());
            }
            e => panic!("{e}"),
        }
        // Even with the fingerprint forged, the wrong key does not open it.
        let mut forged = wrapped.clone();
        forged.master = keyring(2, "tv").fingerprint().to_owned();
        assert_eq!(
            block_on(keyring(2, "tv").open("a", &forged)).unwrap_err(),
            KeyError::Tampered
        );
    }

    #[test]
    fn a_wrapped_key_round_trips_through_its_entry_and_hides_the_key() {
        let ring = keyring(1, "tv");
        let (key, wrapped) = block_on(ring.make("a", 3)).unwrap();
        let value = wrapped.to_value();
        assert_eq!(WrappedKey::from_value(&value).unwrap(), wrapped);
        assert_eq!(format!("{key:?}"), "DataKey(version 3, <secret>)");
        // Two wraps of one key differ (a fresh nonce each).
        assert_ne!(
            block_on(ring.wrap(&key, "a")).unwrap().sealed,
            wrapped.sealed
        );
    }
}
