//! The per-tenant layout's store folders under fscrypt: each tenant's
//! `vector_store/` encrypted by the kernel with the tenant's data key,
//! which is in the filesystem only while the tenant's store is open.
//!
//! Owns the data folder's encryption (refused at start when its filesystem
//! cannot), putting a tenant's key in before its store opens and taking it
//! out after it closes (again while the kernel reports its files busy), the
//! policy of a new store folder, and the removal at start of keys a crashed
//! worker left in the filesystem. It must never open a store folder whose
//! policy names another key, never leave a key in the filesystem past its
//! store's close, and never see a key's bytes for longer than the call that
//! hands them to the kernel.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::crypto::fscrypt::{Fscrypt, KeyIdentifier, Removal};
use crate::crypto::keys_added::KeysAdded;
use crate::crypto::DataKey;
use crate::protocol::ServiceError;
use crate::store::internal;

/// How often a key whose files are still busy is tried again at close.
const REMOVE_TRIES: u32 = 50;
const REMOVE_PAUSE: Duration = Duration::from_millis(20);

/// A data folder on a filesystem that encrypts.
#[derive(Debug)]
pub struct EncryptedFolders {
    fscrypt: Fscrypt,
    added: KeysAdded,
}

impl EncryptedFolders {
    /// The data folder `root`'s encryption: refused, with the fix, when its
    /// filesystem cannot; the keys a worker before this one left in the
    /// filesystem are taken out.
    pub fn open(root: &Path) -> anyhow::Result<Arc<Self>> {
        let fscrypt = Fscrypt::open(root)?;
        let added = KeysAdded::open(root)
            .map_err(|e| anyhow::anyhow!("the data folder {}: {e}", root.display()))?;
        let this = Self { fscrypt, added };
        let left = this.added.all()?;
        let mut removed = 0;
        for id in &left {
            match this.fscrypt.remove_key(id) {
                Ok(Removal::Removed) => removed += 1,
                Ok(Removal::Absent) => {}
                Ok(other) => {
                    tracing::warn!(key = %id.hex(), removal = ?other, "a key left in the filesystem could not be removed fully");
                    continue;
                }
                Err(e) => {
                    anyhow::bail!("removing a key left in the filesystem ({}): {e}", id.hex())
                }
            }
            this.added.forget(id)?;
        }
        if !left.is_empty() {
            tracing::warn!(
                listed = left.len(),
                removed,
                "tenants' keys left in the filesystem by a worker that did not close them (a crash?) were removed"
            );
        }
        Ok(Arc::new(this))
    }

    /// Put `key` into the filesystem (noted first, so a crash never leaves
    /// it unlisted); taken out when the returned guard is released or dropped.
    pub fn unlock(self: &Arc<Self>, key: &DataKey, who: &str) -> Result<Unlocked, ServiceError> {
        let id = KeyIdentifier::of(key);
        self.added
            .remember(&id)
            .map_err(|e| internal(who, "note the key added", e))?;
        let added = self
            .fscrypt
            .add_key(key)
            .map_err(|e| internal(who, "add the tenant's key to the filesystem", e))?;
        if added != id {
            // The kernel names keys by a hash this code computes too; a
            // kernel that disagrees would leave keys unlisted.
            let _ = self.fscrypt.remove_key(&added);
            return Err(internal(
                who,
                "add the tenant's key to the filesystem",
                format!(
                    "the kernel named the key {}, expected {}",
                    added.hex(),
                    id.hex()
                ),
            ));
        }
        Ok(Unlocked {
            folders: self.clone(),
            id: Some(id),
        })
    }

    /// Make `dir` (missing or empty) a store folder encrypted with `id`'s key.
    pub fn make_dir(&self, dir: &Path, id: &KeyIdentifier, who: &str) -> Result<(), ServiceError> {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| internal(who, "create the tenant folder", e))?;
        }
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(internal(who, "create the store folder", e))
            }
            _ => {}
        }
        self.fscrypt
            .set_policy(dir, id)
            .map_err(|e| internal(who, "encrypt the store folder", e))
    }

    /// The key `dir`'s policy names (`None`: not encrypted); NotFound when
    /// there is no such folder.
    pub fn policy(&self, dir: &Path) -> std::io::Result<Option<KeyIdentifier>> {
        self.fscrypt.policy(dir)
    }

    /// Take key `id` out, again while its files are busy (closed files may
    /// still be in use for a moment).
    fn remove(&self, id: &KeyIdentifier) -> std::io::Result<Removal> {
        let mut removal = Removal::FilesBusy;
        for _ in 0..REMOVE_TRIES {
            removal = self.fscrypt.remove_key(id)?;
            if removal != Removal::FilesBusy {
                break;
            }
            std::thread::sleep(REMOVE_PAUSE);
        }
        if matches!(removal, Removal::Removed | Removal::Absent) {
            self.added.forget(id)?;
        }
        Ok(removal)
    }
}

/// A tenant's key in the filesystem while its store is open.
#[derive(Debug)]
pub struct Unlocked {
    folders: Arc<EncryptedFolders>,
    id: Option<KeyIdentifier>,
}

impl Unlocked {
    pub fn id(&self) -> KeyIdentifier {
        self.id.unwrap_or(KeyIdentifier([0; 16]))
    }

    /// Take the key out of the filesystem now; an error if files it
    /// unlocked are still open (the key stays listed, and the next start
    /// removes it).
    pub fn release(mut self, who: &str) -> Result<(), ServiceError> {
        let Some(id) = self.id.take() else {
            return Ok(());
        };
        match self.folders.remove(&id) {
            Ok(Removal::Removed | Removal::Absent) => Ok(()),
            Ok(other) => Err(internal(
                who,
                "remove the tenant's key from the filesystem",
                format!("{other:?} after {REMOVE_TRIES} tries"),
            )),
            Err(e) => Err(internal(
                who,
                "remove the tenant's key from the filesystem",
                e,
            )),
        }
    }
}

impl Drop for Unlocked {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            if let Err(e) = self.folders.remove(&id) {
                tracing::error!(key = %id.hex(), error = %e, "a tenant's key could not be removed from the filesystem");
            }
        }
    }
}
