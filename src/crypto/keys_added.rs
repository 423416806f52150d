//! The fscrypt keys this worker has put into the data folder's filesystem
//! and not yet taken out: one empty file per key, named by its identifier,
//! in `<data>/_keys_added/`.
//!
//! Owns that list, so that a worker that crashed with tenants open (their
//! keys still in the filesystem, readable by anyone there) has them removed
//! by the next start. An entry is written (and synced) before its key is
//! added, and removed only after the key is out. It must never hold a key:
//! an identifier is a hash of one.

use std::path::{Path, PathBuf};

use super::fscrypt::KeyIdentifier;

/// The folder of the list under the data root (not a tenant id: those
/// start with a letter or a digit).
pub const KEYS_ADDED_DIR: &str = "_keys_added";

#[derive(Debug, Clone)]
pub struct KeysAdded {
    dir: PathBuf,
}

impl KeysAdded {
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let dir = root.join(KEYS_ADDED_DIR);
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Note `id` before its key goes in.
    pub fn remember(&self, id: &KeyIdentifier) -> std::io::Result<()> {
        let path = self.dir.join(id.hex());
        let file = std::fs::File::create(&path)?;
        file.sync_all()?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Its key is out.
    pub fn forget(&self, id: &KeyIdentifier) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir.join(id.hex())) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every key noted and not forgotten.
    pub fn all(&self) -> std::io::Result<Vec<KeyIdentifier>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(KeyIdentifier::parse) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_remembered_until_forgotten() {
        let root = std::env::temp_dir().join(format!("tv-keys-added-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let list = KeysAdded::open(&root).unwrap();
        let (a, b) = (KeyIdentifier([1; 16]), KeyIdentifier([2; 16]));
        list.remember(&a).unwrap();
        list.remember(&b).unwrap();
        list.remember(&a).unwrap();
        std::fs::write(root.join(KEYS_ADDED_DIR).join("not-a-key"), "").unwrap();
        assert_eq!(list.all().unwrap(), vec![a, b]);
        list.forget(&a).unwrap();
        list.forget(&a).unwrap();
        assert_eq!(KeysAdded::open(&root).unwrap().all().unwrap(), vec![b]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
