//! A tenant's data key, and its wrapped form: the only form it is ever
//! stored in.
//!
//! Owns making a data key (64 random bytes from the OS: an fscrypt v2 key
//! for AES-256-XTS), wrapping it under the master key with
//! XChaCha20-Poly1305 (RustCrypto) bound to the prefix, the tenant and the
//! key version as associated data (a wrapped key copied to another tenant
//! does not open), and unwrapping it. It must never print a key: `Debug`
//! says nothing of the bytes, which are wiped when dropped.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::MasterKey;

/// Bytes of a data key.
pub const DATA_KEY_LEN: usize = 64;
/// The wrapping algorithm's name in a wrapped key.
pub const WRAP_ALG: &str = "xchacha20poly1305";

/// One tenant's data key (one version of it), in memory only while its
/// store is open.
pub struct DataKey {
    bytes: Zeroizing<[u8; DATA_KEY_LEN]>,
    version: u32,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey(version {}, <secret>)", self.version)
    }
}

impl DataKey {
    /// A new key, version `version` of its tenant's, from the operating
    /// system's random source.
    pub fn generate(version: u32) -> Result<Self, KeyError> {
        let mut bytes = Zeroizing::new([0u8; DATA_KEY_LEN]);
        getrandom::fill(&mut bytes[..]).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self { bytes, version })
    }

    pub(crate) fn bytes(&self) -> &[u8; DATA_KEY_LEN] {
        &self.bytes
    }

    /// Which of its tenant's keys this is: 1, then one more at each
    /// `keys rotate`.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Wrap this key under `master` for `tenant` of `prefix`.
    pub fn wrap(
        &self,
        master: &MasterKey,
        prefix: &str,
        tenant: &str,
    ) -> Result<WrappedKey, KeyError> {
        let version = self.version;
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|e| KeyError::Random(e.to_string()))?;
        let aad = associated_data(prefix, tenant, version);
        let sealed = cipher(master)
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &self.bytes[..],
                    aad: &aad,
                },
            )
            .map_err(|_| KeyError::Tampered)?;
        Ok(WrappedKey {
            version,
            master: master.fingerprint().to_owned(),
            alg: WRAP_ALG.to_owned(),
            nonce: BASE64.encode(nonce),
            sealed: BASE64.encode(sealed),
        })
    }
}

/// A data key as the tenant's registry record holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The tenant's key version: 1, then one more at each `keys rotate`.
    pub version: u32,
    /// The fingerprint of the master key it is wrapped with.
    pub master: String,
    pub alg: String,
    pub nonce: String,
    pub sealed: String,
}

impl WrappedKey {
    /// The data key, if `master` is the key it was wrapped with and the
    /// record is the tenant's own.
    pub fn unwrap(
        &self,
        master: &MasterKey,
        prefix: &str,
        tenant: &str,
    ) -> Result<DataKey, KeyError> {
        if self.master != master.fingerprint() {
            return Err(KeyError::OtherMaster {
                wrapped_with: self.master.clone(),
                have: master.fingerprint().to_owned(),
            });
        }
        if self.alg != WRAP_ALG {
            return Err(KeyError::Unknown(format!(
                "wrapping algorithm {:?}",
                self.alg
            )));
        }
        let nonce = BASE64
            .decode(&self.nonce)
            .ok()
            .filter(|n| n.len() == 24)
            .ok_or(KeyError::Tampered)?;
        let sealed = BASE64
            .decode(&self.sealed)
            .map_err(|_| KeyError::Tampered)?;
        let aad = associated_data(prefix, tenant, self.version);
        let plain = Zeroizing::new(
            cipher(master)
                .decrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| KeyError::Tampered)?,
        );
        let bytes: [u8; DATA_KEY_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Tampered)?;
        Ok(DataKey {
            bytes: Zeroizing::new(bytes),
            version: self.version,
        })
    }

    /// As the record stores it.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// From the record's `key` field.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, KeyError> {
        serde_json::from_value(value.clone())
            .map_err(|e| KeyError::Unknown(format!("the record's key field: {e}")))
    }
}

/// Why a data key cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the data key is wrapped with master key {wrapped_with}, and this worker has master key {have}")]
    OtherMaster { wrapped_with: String, have: String },
    #[error("the wrapped data key does not open: it was altered, or belongs to another tenant or prefix")]
    Tampered,
    #[error("the wrapped data key is of a kind this version does not know: {0}")]
    Unknown(String),
    #[error("no random bytes from the OS: {0}")]
    Random(String),
}

fn cipher(master: &MasterKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(master.bytes().into())
}

/// What binds a wrapped key to its tenant: prefix, tenant id, key version.
fn associated_data(prefix: &str, tenant: &str, version: u32) -> Vec<u8> {
    format!("tenantvec data key v1\0{prefix}\0{tenant}\0{version}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(b: u8) -> MasterKey {
        MasterKey::from_bytes([b; 32])
    }

    #[test]
    fn a_wrapped_key_opens_for_its_tenant_only() {
        let key = DataKey::generate(1).unwrap();
        let m = master(1);
        let wrapped = key.wrap(&m, "tv", "alice").unwrap();
        assert_eq!(wrapped.master, m.fingerprint());
        let back = wrapped.unwrap(&m, "tv", "alice").unwrap();
        assert_eq!(back.bytes(), key.bytes());
        assert_eq!(back.version(), 1);
        // Another tenant, another prefix: does not open.
        assert_eq!(
            wrapped.unwrap(&m, "tv", "bob").unwrap_err(),
            KeyError::Tampered
        );
        assert_eq!(
            wrapped.unwrap(&m, "other", "alice").unwrap_err(),
            KeyError::Tampered
        );
        // Another version claimed: does not open.
        let mut bumped = wrapped.clone();
        bumped.version = 2;
        assert_eq!(
            bumped.unwrap(&m, "tv", "alice").unwrap_err(),
            KeyError::Tampered
        );
        // A flipped bit: does not open.
        let mut sealed = BASE64.decode(&wrapped.sealed).unwrap();
        sealed[3] ^= 1;
        let mut flipped = wrapped.clone();
        flipped.sealed = BASE64.encode(sealed);
        assert_eq!(
            flipped.unwrap(&m, "tv", "alice").unwrap_err(),
            KeyError::Tampered
        );
    }

    #[test]
    fn another_master_key_is_named_by_both_fingerprints() {
        let wrapped = DataKey::generate(1)
            .unwrap()
            .wrap(&master(1), "tv", "a")
            .unwrap();
        match wrapped.unwrap(&master(2), "tv", "a").unwrap_err() {
            KeyError::OtherMaster { wrapped_with, have } => {
                assert_eq!(wrapped_with, master(1).fingerprint());
                assert_eq!(have, master(2).fingerprint());
            }
            e => panic!("{e}"),
        }
        // Even with the fingerprint forged, the wrong key does not open it.
        let mut forged = wrapped.clone();
        forged.master = master(2).fingerprint().to_owned();
        assert_eq!(
            forged.unwrap(&master(2), "tv", "a").unwrap_err(),
            KeyError::Tampered
        );
    }

    #[test]
    fn a_wrapped_key_round_trips_through_the_record_and_hides_the_key() {
        let key = DataKey::generate(3).unwrap();
        let wrapped = key.wrap(&master(1), "tv", "a").unwrap();
        let value = wrapped.to_value();
        assert_eq!(WrappedKey::from_value(&value).unwrap(), wrapped);
        assert_eq!(format!("{key:?}"), "DataKey(version 3, <secret>)");
        // Two wraps of one key differ (a fresh nonce each).
        assert_ne!(
            key.wrap(&master(1), "tv", "a").unwrap().sealed,
            wrapped.sealed
        );
    }
}
