//! Per-tenant encryption keys (envelope encryption), and the kernel's
//! encryption of a tenant's files with its key.
//!
//! Owns the key hierarchy: the deployment's master key ([`master`]), held
//! by a key provider ([`provider`]: a file today, a KMS later), each
//! tenant's data key and its wrapped form kept in the tenant's registry
//! record ([`data_key`]); Linux fscrypt v2, which encrypts every file of a
//! tenant's store folder with that tenant's key ([`fscrypt`]); and the list
//! of keys this worker has added to the filesystem ([`keys_added`]), so that
//! a start after a crash removes them. It must never implement a cipher of
//! its own (RustCrypto's AEAD wraps keys, the kernel encrypts files), never
//! write a key unwrapped anywhere but into the kernel, and never let a key's
//! bytes reach a log, an error or a reply: keys print as their fingerprints.

pub mod data_key;
pub mod document;
pub mod fscrypt;
pub mod keyring;
pub mod keys_added;
pub mod master;
pub mod provider;
pub mod sealed;

pub use data_key::{DataKey, KeyError, WrappedKey};
pub use keyring::Keyring;
pub use master::MasterKey;
pub use provider::KeyProvider;

/// Lower-case hex of `bytes`, for fingerprints and key identifiers.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The bytes of lower-case or upper-case hex `text`, `None` if it is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
        assert_eq!(unhex("0001abff"), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(unhex("0001ABFF"), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(""), Some(vec![]));
    }
}
