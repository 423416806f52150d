//! Key providers: what holds the deployment's key-encryption key and wraps
//! and unwraps tenants' data keys with it.
//!
//! Owns the trait every provider implements, and the one built in: the
//! master key in a file ([`super::MasterKey`]), which wraps with
//! XChaCha20-Poly1305 (RustCrypto). A key management service (Vault or
//! OpenBao transit first: docs/encryption.md says why) is another
//! implementation of the same trait: its `encrypt` and `decrypt` calls with
//! associated data are exactly [`KeyProvider::wrap`] and
//! [`KeyProvider::unwrap`], and the key never leaves it. The calls are
//! asynchronous for that reason. It must never hand out the
//! key-encryption key itself, nor print a key.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use futures::future::BoxFuture;
use zeroize::Zeroizing;

use super::{KeyError, MasterKey};

/// A data key as a provider wrapped it: what the tenant's key entry holds
/// besides the key's version and the provider's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The wrapping algorithm, so that a provider knows its own.
    pub alg: String,
    /// Bytes of the nonce, if the algorithm takes one from the caller.
    pub nonce: Vec<u8>,
    pub sealed: Vec<u8>,
}

/// What holds the key-encryption key.
pub trait KeyProvider: Send + Sync + std::fmt::Debug {
    /// The name of the key-encryption key in key entries and messages
    /// (never the key): two providers with the same fingerprint open each
    /// other's wrapped keys.
    fn fingerprint(&self) -> &str;

    /// Wrap `key`, bound to `aad`: a different `aad` must not unwrap it.
    fn wrap<'a>(&'a self, key: &'a [u8], aad: &'a [u8]) -> BoxFuture<'a, Result<Sealed, KeyError>>;

    /// The key `sealed` holds, if it was wrapped by this provider's key
    /// with the same `aad` and not altered since.
    fn unwrap<'a>(
        &'a self,
        sealed: &'a Sealed,
        aad: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KeyError>>;
}

/// The wrapping algorithm of the master key file.
pub const FILE_WRAP_ALG: &str = "xchacha20poly1305";

/// The master key in a file: XChaCha20-Poly1305 with a random 24-byte
/// nonce per wrap.
impl KeyProvider for MasterKey {
    fn fingerprint(&self) -> &str {
        MasterKey::fingerprint(self)
    }

    fn wrap<'a>(&'a self, key: &'a [u8], aad: &'a [u8]) -> BoxFuture<'a, Result<Sealed, KeyError>> {
        Box::pin(async move {
            let mut nonce = [0u8; 24];
            getrandom::fill(&mut nonce).map_err(|e| KeyError::Random(e.to_string()))?;
            let sealed = cipher(self)
                .encrypt(XNonce::from_slice(&nonce), Payload { msg: key, aad })
                .map_err(|_| KeyError::Tampered)?;
            Ok(Sealed {
                alg: FILE_WRAP_ALG.to_owned(),
                nonce: nonce.to_vec(),
                sealed,
            })
        })
    }

    fn unwrap<'a>(
        &'a self,
        sealed: &'a Sealed,
        aad: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KeyError>> {
        Box::pin(async move {
            if sealed.alg != FILE_WRAP_ALG {
                return Err(KeyError::Unknown(format!(
                    "wrapping algorithm {:?}",
                    sealed.alg
                )));
            }
            if sealed.nonce.len() != 24 {
                return Err(KeyError::Tampered);
            }
            cipher(self)
                .decrypt(
                    XNonce::from_slice(&sealed.nonce),
                    Payload {
                        msg: &sealed.sealed,
                        aad,
                    },
                )
                .map(Zeroizing::new)
                .map_err(|_| KeyError::Tampered)
        })
    }
}

fn cipher(master: &MasterKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(master.bytes().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    #[test]
    fn the_file_provider_unwraps_only_what_it_wrapped_with_the_same_aad() {
        let m = MasterKey::from_bytes([3; 32]);
        let sealed = block_on(m.wrap(b"a data key", b"aad")).unwrap();
        assert_eq!(sealed.alg, FILE_WRAP_ALG);
        assert_eq!(
            &block_on(m.unwrap(&sealed, b"aad")).unwrap()[..],
            b"a data key"
        );
        assert_eq!(
            block_on(m.unwrap(&sealed, b"other")),
            Err(KeyError::Tampered)
        );
        let other = MasterKey::from_bytes([4; 32]);
        assert_eq!(
            block_on(other.unwrap(&sealed, b"aad")),
            Err(KeyError::Tampered)
        );
        let mut unknown = sealed.clone();
        unknown.alg = "rot13".into();
        assert!(matches!(
            block_on(m.unwrap(&unknown, b"aad")),
            Err(KeyError::Unknown(_))
        ));
        // Each wrap takes a fresh nonce.
        assert_ne!(block_on(m.wrap(b"a data key", b"aad")).unwrap(), sealed);
    }
}
