//! The deployment's master key (the key-encryption key): 32 random bytes in
//! a file of mode 0600, named everywhere by its fingerprint.
//!
//! Owns reading and making that file and the fingerprint. It must never
//! print the key: `Debug` shows the fingerprint alone, and the bytes are
//! wiped when the key is dropped.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Bytes of a master key.
pub const MASTER_KEY_LEN: usize = 32;

/// The master key every tenant's data key is wrapped with.
pub struct MasterKey {
    bytes: Zeroizing<[u8; MASTER_KEY_LEN]>,
    fingerprint: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.fingerprint)
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; MASTER_KEY_LEN]) -> Self {
        let bytes = Zeroizing::new(bytes);
        let fingerprint = fingerprint(&bytes[..]);
        Self { bytes, fingerprint }
    }

    /// A new key from the operating system's random source.
    pub fn generate() -> anyhow::Result<Self> {
        let mut bytes = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        getrandom::fill(&mut bytes[..])
            .map_err(|e| anyhow::anyhow!("no random bytes from the OS: {e}"))?;
        Ok(Self::from_bytes(*bytes))
    }

    /// Read the key in `path`: exactly 32 bytes, readable by its owner only.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| {
            anyhow::anyhow!(
                "the master key file {} cannot be read: {e} (make one with `tenantvec keys new --out FILE`)",
                path.display()
            )
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "the master key file {} has mode {mode:03o}: others may read it; chmod 600 it",
                path.display()
            );
        }
        let raw = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("the master key file {}: {e}", path.display()))?,
        );
        let bytes: [u8; MASTER_KEY_LEN] = raw.as_slice().try_into().map_err(|_| {
            anyhow::anyhow!(
                "the master key file {} holds {} bytes; a master key is {MASTER_KEY_LEN} random bytes",
                path.display(),
                raw.len()
            )
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// Write the key to a new file `path` of mode 0600 (never over one).
    pub fn write_new(&self, path: &Path) -> anyhow::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        file.write_all(&self.bytes[..])?;
        file.sync_all()?;
        Ok(())
    }

    /// Its name in records and messages: 16 hex digits of a SHA-256 of it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub(crate) fn bytes(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.bytes
    }
}

fn fingerprint(key: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(b"tenantvec master key fingerprint v1\0");
    hash.update(key);
    super::hex(&hash.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_written_reads_back_with_its_fingerprint_and_owner_only_mode() {
        let dir = std::env::temp_dir().join(format!("tv-master-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("master.key");
        let key = MasterKey::generate().unwrap();
        key.write_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let read = MasterKey::load(&path).unwrap();
        assert_eq!(read.fingerprint(), key.fingerprint());
        assert_eq!(read.fingerprint().len(), 16);
        // Never over an existing key.
        assert!(MasterKey::generate().unwrap().write_new(&path).is_err());
        // Readable by others: refused.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = MasterKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        // Not 32 bytes: refused.
        let short = dir.join("short.key");
        std::fs::write(&short, [1u8; 16]).unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = MasterKey::load(&short).unwrap_err().to_string();
        assert!(e.contains("holds 16 bytes"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_shows_the_fingerprint_not_the_key() {
        let key = MasterKey::from_bytes([7u8; MASTER_KEY_LEN]);
        let shown = format!("{key:?}");
        assert_eq!(shown, format!("MasterKey({})", key.fingerprint()));
        assert_ne!(
            MasterKey::from_bytes([8u8; MASTER_KEY_LEN]).fingerprint(),
            key.fingerprint()
        );
    }
}
