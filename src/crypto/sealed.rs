//! A tenant's backups, exports and dead letters sealed with its data key: the STREAM
//! construction of RustCrypto's `aead` (Hoang, Reyhanitabar, Rogaway and
//! Vizár's nonce-based online AEAD) over XChaCha20-Poly1305, in chunks of
//! 64 KiB, keyed by a subkey of the tenant's data key (HKDF-SHA256).
//!
//! Owns that format: a magic line, the tenant's key version (4 bytes,
//! big-endian), a 19-byte random nonce prefix, then the sealed chunks, each
//! 64 KiB of plaintext and its 16-byte tag but the last, which is shorter
//! (possibly empty) and sealed as the last, so that a truncated object
//! fails to open. Each chunk is bound to the tenant (associated data). It
//! must never release a byte of a chunk that did not authenticate.

use std::io::Read;

use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use zeroize::Zeroizing;

use super::DataKey;

/// The first bytes of a sealed object.
pub const MAGIC: &[u8; 13] = b"tenantvec-e1\n";
/// Plaintext bytes of a chunk.
pub const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const NONCE: usize = 19;
/// Bytes before the first chunk.
pub const HEADER: usize = MAGIC.len() + 4 + NONCE;

fn cipher(key: &DataKey) -> XChaCha20Poly1305 {
    let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(None, key.bytes());
    let mut subkey = Zeroizing::new([0u8; 32]);
    // 32 bytes is within HKDF-SHA256's limit: this cannot fail.
    let _ = hkdf.expand(b"tenantvec backup v1", &mut subkey[..]);
    XChaCha20Poly1305::new((&*subkey).into())
}

fn aad(tenant: &str) -> Vec<u8> {
    format!("tenantvec backup v1\0{tenant}").into_bytes()
}

/// Whether `head` (the first bytes of an object) starts a sealed object.
pub fn is_sealed(head: &[u8]) -> bool {
    head.starts_with(MAGIC)
}

/// Seals a stream of bytes for `tenant`: push plaintext, take the sealed
/// bytes it gives back, then `finish`.
pub struct Sealer {
    enc: Option<EncryptorBE32<XChaCha20Poly1305>>,
    aad: Vec<u8>,
    pending: Vec<u8>,
}

impl Sealer {
    /// A sealer and the object's header (written before anything else).
    pub fn new(key: &DataKey, tenant: &str) -> std::io::Result<(Self, Vec<u8>)> {
        let key_version = key.version();
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&key_version.to_be_bytes());
        header.extend_from_slice(&nonce);
        let enc = EncryptorBE32::from_aead(cipher(key), (&nonce).into());
        Ok((
            Self {
                enc: Some(enc),
                aad: aad(tenant),
                pending: Vec::with_capacity(CHUNK * 2),
            },
            header,
        ))
    }

    /// Take `plain`; the sealed chunks it completes. A chunk is sealed only
    /// once more bytes follow it, so that the last is always sealed as last.
    pub fn push(&mut self, plain: &[u8]) -> std::io::Result<Vec<u8>> {
        self.pending.extend_from_slice(plain);
        let mut out = Vec::new();
        while self.pending.len() > CHUNK {
            let rest = self.pending.split_off(CHUNK);
            let chunk = std::mem::replace(&mut self.pending, rest);
            let enc = self.enc.as_mut().ok_or_else(finished)?;
            let sealed = enc
                .encrypt_next(Payload {
                    msg: &chunk,
                    aad: &self.aad,
                })
                .map_err(|_| std::io::Error::other("sealing a backup chunk failed"))?;
            out.extend_from_slice(&sealed);
        }
        Ok(out)
    }

    /// The last chunk, sealed as the last.
    pub fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        let enc = self.enc.take().ok_or_else(finished)?;
        let last = std::mem::take(&mut self.pending);
        enc.encrypt_last(Payload {
            msg: &last,
            aad: &self.aad,
        })
        .map_err(|_| std::io::Error::other("sealing a backup's last chunk failed"))
    }
}

fn finished() -> std::io::Error {
    std::io::Error::other("the sealed stream was finished already")
}

/// `plain` sealed whole for `tenant` (a small object: a dead letter's body).
pub fn seal(key: &DataKey, tenant: &str, plain: &[u8]) -> std::io::Result<Vec<u8>> {
    let (mut sealer, mut out) = Sealer::new(key, tenant)?;
    out.extend(sealer.push(plain)?);
    out.extend(sealer.finish()?);
    Ok(out)
}

/// The plaintext of a whole sealed object of `tenant`.
pub fn open(key: &DataKey, tenant: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
    let mut opener = Opener::new(sealed, key, tenant)?;
    let mut out = Vec::new();
    opener.read_to_end(&mut out).map_err(|e| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<OpenError>())
            .cloned()
            .unwrap_or_else(|| OpenError::Read(e.to_string()))
    })?;
    Ok(out)
}

/// Why a sealed object does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("it is not a sealed tenantvec object")]
    NotSealed,
    #[error(
        "it was sealed with version {sealed} of the tenant's data key, which the tenant no \
         longer has (destroyed by a drop, or replaced): it cannot be opened"
    )]
    KeyGone { sealed: u32 },
    #[error("it does not authenticate: altered, truncated, or sealed for another tenant")]
    Tampered,
    #[error("reading it failed: {0}")]
    Read(String),
}

/// Reads the plaintext of a sealed object from `inner`, chunk by chunk,
/// each authenticated before any of its bytes is given out.
pub struct Opener<R> {
    inner: R,
    dec: Option<DecryptorBE32<XChaCha20Poly1305>>,
    aad: Vec<u8>,
    /// The next sealed chunk, read ahead to know whether it is the last.
    ahead: Vec<u8>,
    plain: Vec<u8>,
    at: usize,
    first: bool,
    /// The key version the object says it was sealed with.
    sealed_with: u32,
}

fn read_full(r: &mut impl Read, buf: &mut Vec<u8>, n: usize) -> std::io::Result<()> {
    buf.clear();
    r.by_ref().take(n as u64).read_to_end(buf)?;
    Ok(())
}

impl<R: Read> Opener<R> {
    /// Read the header of `inner` and open it with `key` for `tenant`.
    pub fn new(mut inner: R, key: &DataKey, tenant: &str) -> Result<Self, OpenError> {
        let io = |e: std::io::Error| OpenError::Read(e.to_string());
        let mut header = Vec::new();
        read_full(&mut inner, &mut header, HEADER).map_err(io)?;
        if header.len() < HEADER || !is_sealed(&header) {
            return Err(OpenError::NotSealed);
        }
        let mut version = [0u8; 4];
        version.copy_from_slice(&header[MAGIC.len()..MAGIC.len() + 4]);
        let sealed = u32::from_be_bytes(version);
        if sealed != key.version() {
            return Err(OpenError::KeyGone { sealed });
        }
        let mut nonce = [0u8; NONCE];
        nonce.copy_from_slice(&header[MAGIC.len() + 4..HEADER]);
        let dec = DecryptorBE32::from_aead(cipher(key), (&nonce).into());
        let mut ahead = Vec::new();
        read_full(&mut inner, &mut ahead, CHUNK + TAG).map_err(io)?;
        Ok(Self {
            inner,
            dec: Some(dec),
            aad: aad(tenant),
            ahead,
            plain: Vec::new(),
            at: 0,
            first: true,
            sealed_with: sealed,
        })
    }

    /// Open the next chunk into `plain`; `false` at the end.
    fn refill(&mut self) -> std::io::Result<bool> {
        let Some(_) = self.dec.as_ref() else {
            return Ok(false);
        };
        let chunk = std::mem::take(&mut self.ahead);
        let mut next = Vec::new();
        if chunk.len() == CHUNK + TAG {
            read_full(&mut self.inner, &mut next, CHUNK + TAG)?;
        }
        let last = next.is_empty();
        let opened = if last {
            let dec = self.dec.take().ok_or_else(finished)?;
            dec.decrypt_last(Payload {
                msg: &chunk,
                aad: &self.aad,
            })
        } else {
            let dec = self.dec.as_mut().ok_or_else(finished)?;
            dec.decrypt_next(Payload {
                msg: &chunk,
                aad: &self.aad,
            })
        };
        let first = std::mem::replace(&mut self.first, false);
        self.plain = opened.map_err(|_| {
            let why = match first {
                true => OpenError::KeyGone {
                    sealed: self.sealed_with,
                },
                false => OpenError::Tampered,
            };
            std::io::Error::new(std::io::ErrorKind::InvalidData, why)
        })?;
        self.at = 0;
        self.ahead = next;
        Ok(true)
    }
}

impl<R: Read> Read for Opener<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.plain.len() {
            if !self.refill()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.plain.len() - self.at);
        buf[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal_in_steps(key: &DataKey, tenant: &str, plain: &[u8], step: usize) -> Vec<u8> {
        let (mut sealer, mut out) = Sealer::new(key, tenant).unwrap();
        for part in plain.chunks(step.max(1)) {
            out.extend(sealer.push(part).unwrap());
        }
        out.extend(sealer.finish().unwrap());
        out
    }

    #[test]
    fn sizes_on_and_around_chunk_bounds_round_trip() {
        let key = DataKey::generate(1).unwrap();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 17] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for step in [7, 4096, CHUNK + 3] {
                let sealed = seal_in_steps(&key, "alice", &plain, step);
                assert!(is_sealed(&sealed));
                assert_eq!(
                    open(&key, "alice", &sealed).unwrap(),
                    plain,
                    "len {len} step {step}"
                );
            }
        }
    }

    #[test]
    fn a_small_object_seals_whole() {
        let key = DataKey::generate(4).unwrap();
        let sealed = seal(&key, "alice", b"{\"docs\": []}").unwrap();
        assert_eq!(sealed[MAGIC.len()..MAGIC.len() + 4], 4u32.to_be_bytes());
        assert_eq!(open(&key, "alice", &sealed).unwrap(), b"{\"docs\": []}");
        assert_eq!(
            open(&key, "alice", b"plain").unwrap_err(),
            OpenError::NotSealed
        );
    }

    #[test]
    fn another_key_another_tenant_a_cut_or_a_flip_do_not_open() {
        let key = DataKey::generate(1).unwrap();
        let plain = vec![42u8; 2 * CHUNK + 10];
        let sealed = seal_in_steps(&key, "alice", &plain, 1000);
        let other = DataKey::generate(1).unwrap();
        let e = open(&other, "alice", &sealed).unwrap_err();
        assert!(e.to_string().contains("no longer has"), "{e}");
        assert!(open(&key, "bob", &sealed).is_err());
        // A newer version of the tenant's key: named as gone at once.
        let rotated = DataKey::generate(2).unwrap();
        assert_eq!(
            open(&rotated, "alice", &sealed).unwrap_err(),
            OpenError::KeyGone { sealed: 1 }
        );
        // Cut at a chunk's end: the last chunk seen was not sealed as last.
        let cut = &sealed[..HEADER + CHUNK + TAG];
        assert!(open(&key, "alice", cut).is_err());
        let mut flipped = sealed.clone();
        let at = HEADER + CHUNK + TAG + 5;
        flipped[at] ^= 1;
        assert_eq!(
            open(&key, "alice", &flipped).unwrap_err(),
            OpenError::Tampered
        );
        assert_eq!(
            Opener::new(&b"{\"format\":\"tenantvec.export\"}\n"[..], &key, "alice").err(),
            Some(OpenError::NotSealed)
        );
    }
}
