//! A tenant's data key, and its wrapped form: the only form it is ever
//! stored in.
//!
//! Owns making a data key (64 random bytes from the OS: an fscrypt v2 key
//! for AES-256-XTS), the wrapped form's fields, and the associated data a
//! key is wrapped with: the prefix, the tenant and the key version, so that
//! a wrapped key copied to another tenant does not open (the wrapping is
//! the key provider's, [`super::provider`]). It must never print a key:
//! `Debug` says nothing of the bytes, which are wiped when dropped.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::provider::Sealed;

/// Bytes of a data key.
pub const DATA_KEY_LEN: usize = 64;

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

    /// The key of `bytes` (an unwrapped key), as version `version`.
    pub(crate) fn from_bytes(bytes: &[u8], version: u32) -> Result<Self, KeyError> {
        let bytes: [u8; DATA_KEY_LEN] = bytes.try_into().map_err(|_| KeyError::Tampered)?;
        Ok(Self {
            bytes: Zeroizing::new(bytes),
            version,
        })
    }
}

/// A data key as the tenant's registry record holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The tenant's key version: 1, then one more at each `keys rotate`.
    pub version: u32,
    /// The fingerprint of the master key (the key provider's key) it is
    /// wrapped with.
    pub master: String,
    pub alg: String,
    pub nonce: String,
    pub sealed: String,
}

impl WrappedKey {
    /// Version `version` of a tenant's key as `provider` wrapped it.
    pub fn new(version: u32, provider: &str, sealed: Sealed) -> Self {
        Self {
            version,
            master: provider.to_owned(),
            alg: sealed.alg,
            nonce: BASE64.encode(sealed.nonce),
            sealed: BASE64.encode(sealed.sealed),
        }
    }

    /// What the provider unwraps.
    pub fn sealed(&self) -> Result<Sealed, KeyError> {
        Ok(Sealed {
            alg: self.alg.clone(),
            nonce: BASE64.decode(&self.nonce).map_err(|_| KeyError::Tampered)?,
            sealed: BASE64
                .decode(&self.sealed)
                .map_err(|_| KeyError::Tampered)?,
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
    /// A key provider that is a service, away for now: worth a retry.
    #[error("the key provider cannot be reached: {0}")]
    Unreachable(String),
}

/// What binds a wrapped key to its tenant: prefix, tenant id, key version.
pub(crate) fn associated_data(prefix: &str, tenant: &str, version: u32) -> Vec<u8> {
    format!("tenantvec data key v1\0{prefix}\0{tenant}\0{version}").into_bytes()
}
