//! A document's text and metadata sealed with its tenant's data key, for a
//! store that holds every tenant's data together (the edge `shared` layout,
//! the Qdrant server), where the kernel cannot encrypt per tenant.
//!
//! Owns that format: `tenantvec-sealed:1:<key version>:<base64 of a 24-byte
//! random nonce and the XChaCha20-Poly1305 ciphertext>`, keyed by a subkey
//! of the tenant's data key (HKDF-SHA256) and bound to the tenant and the
//! document's id (associated data), so that a sealed value moved to another
//! document or tenant does not open. It must never release a byte that did
//! not authenticate, and never choose what is sealed (the store does).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use super::{DataKey, KeyError};

/// The start of a sealed value.
pub const SEALED_PREFIX: &str = "tenantvec-sealed:1:";

/// Seals and opens one tenant's documents with one version of its key.
pub struct DocumentCipher {
    cipher: XChaCha20Poly1305,
    version: u32,
}

impl std::fmt::Debug for DocumentCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DocumentCipher(version {})", self.version)
    }
}

/// Whether `value` is a sealed value (of any key version).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// The key version a sealed value says it was sealed with.
pub fn sealed_version(value: &str) -> Option<u32> {
    let rest = value.strip_prefix(SEALED_PREFIX)?;
    rest.split_once(':')?.0.parse().ok()
}

impl DocumentCipher {
    pub fn new(key: &DataKey) -> Self {
        let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(None, key.bytes());
        let mut subkey = Zeroizing::new([0u8; 32]);
        // 32 bytes is within HKDF-SHA256's limit: this cannot fail.
        let _ = hkdf.expand(b"tenantvec document v1", &mut subkey[..]);
        Self {
            cipher: XChaCha20Poly1305::new((&*subkey).into()),
            version: key.version(),
        }
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// `plain` sealed for document `doc_id` of `tenant`.
    pub fn seal(&self, tenant: &str, doc_id: &str, plain: &[u8]) -> Result<String, KeyError> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|e| KeyError::Random(e.to_string()))?;
        let aad = aad(tenant, doc_id);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| KeyError::Tampered)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!(
            "{SEALED_PREFIX}{}:{}",
            self.version,
            BASE64.encode(out)
        ))
    }

    /// The plaintext of `value`, sealed by this key version for document
    /// `doc_id` of `tenant`.
    pub fn open(&self, tenant: &str, doc_id: &str, value: &str) -> Result<Vec<u8>, KeyError> {
        let version = sealed_version(value).ok_or(KeyError::Tampered)?;
        if version != self.version {
            return Err(KeyError::Unknown(format!(
                "a document sealed with version {version} of the tenant's key, which it no \
                 longer has (it has version {})",
                self.version
            )));
        }
        let body = value
            .strip_prefix(SEALED_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, b64)| b64)
            .ok_or(KeyError::Tampered)?;
        let raw = BASE64.decode(body).map_err(|_| KeyError::Tampered)?;
        if raw.len() < 24 {
            return Err(KeyError::Tampered);
        }
        let (nonce, sealed) = raw.split_at(24);
        let aad = aad(tenant, doc_id);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| KeyError::Tampered)
    }
}

fn aad(tenant: &str, doc_id: &str) -> Vec<u8> {
    format!("tenantvec document v1\0{tenant}\0{doc_id}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_document_opens_for_its_tenant_and_id_only() {
        let key = DataKey::generate(2).unwrap();
        let c = DocumentCipher::new(&key);
        let sealed = c.seal("alice", "note-1", b"a health note").unwrap();
        assert!(is_sealed(&sealed));
        assert_eq!(sealed_version(&sealed), Some(2));
        assert!(!sealed.contains("health"));
        assert_eq!(
            c.open("alice", "note-1", &sealed).unwrap(),
            b"a health note"
        );
        assert_eq!(c.open("alice", "note-2", &sealed), Err(KeyError::Tampered));
        assert_eq!(c.open("bob", "note-1", &sealed), Err(KeyError::Tampered));
        let other = DocumentCipher::new(&DataKey::generate(2).unwrap());
        assert_eq!(
            other.open("alice", "note-1", &sealed),
            Err(KeyError::Tampered)
        );
        let newer = DocumentCipher::new(&DataKey::generate(3).unwrap());
        assert!(matches!(
            newer.open("alice", "note-1", &sealed),
            Err(KeyError::Unknown(_))
        ));
        // A fresh nonce each time.
        assert_ne!(c.seal("alice", "note-1", b"a health note").unwrap(), sealed);
        assert!(!is_sealed("a plain text"));
        assert_eq!(
            c.open("alice", "note-1", "tenantvec-sealed:1:2:%%"),
            Err(KeyError::Tampered)
        );
    }
}
