//! The tenants' wrapped data keys (`encryption.enabled`): one key per
//! tenant in a KV bucket of their own, `TENANTVEC_KEYS[_<PREFIX>]`, beside
//! the registry's records.
//!
//! Owns where a wrapped key is kept and how it is destroyed. Apart from the
//! records because a record is rewritten often (each close of a tenant that
//! wrote) and JetStream drops a superseded revision without erasing its
//! bytes from the stream's files: a key kept in the record would leave a
//! copy in the server's store at every rewrite. Here a key is written once,
//! replaced only by a rotation, and every revision that goes is erased by
//! sequence (the server overwrites its bytes), so that destroying a
//! tenant's key leaves no copy on the server's disks. A tenant's key
//! rotation (`keys rotate T`) keeps the next key beside the current one
//! until the tenant's data is encrypted with it, so that an interruption
//! at any step leaves a key that opens the data. It must never remove a
//! key's message without erasing it, never write a key that is not
//! wrapped, and never drop a key that may still encrypt data.

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use super::{CHANGE_TRIES, TIMEOUT};
use crate::crypto::{DataKey, KeyError, Keyring, WrappedKey};
use crate::names::keys_bucket;
use crate::protocol::ServiceError;

const KEY_STORE: &str = "the tenant key store";

fn unavailable(what: &str, e: impl std::fmt::Display) -> ServiceError {
    super::unreachable(KEY_STORE, what, e)
}

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ServiceError> {
    super::timed_in(KEY_STORE, what, f).await
}

fn refused(tenant: &str, e: KeyError) -> ServiceError {
    let why = format!("tenant {tenant}: its data key cannot be opened: {e}");
    match e {
        KeyError::Unreachable(_) => ServiceError::unavailable(why),
        _ => ServiceError::internal(why),
    }
}

/// The prefix's wrapped data keys.
#[derive(Clone)]
pub struct KeyStore {
    kv: kv::Store,
    stream: String,
    js: jetstream::Context,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyStore({})", self.stream)
    }
}

/// A wrapped key and the stream sequence it is stored at.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub wrapped: WrappedKey,
    /// The key a rotation begun and not finished encrypts the data with
    /// next: beside the current one until the data is encrypted with it.
    pub next: Option<WrappedKey>,
    pub revision: u64,
}

/// A tenant's entry in the bucket: its wrapped key's fields, and `next`
/// during a rotation.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    current: WrappedKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<WrappedKey>,
}

fn entry_bytes(current: &WrappedKey, next: Option<&WrappedKey>) -> bytes::Bytes {
    let entry = Entry {
        current: current.clone(),
        next: next.cloned(),
    };
    serde_json::to_vec(&entry).unwrap_or_default().into()
}

impl KeyStore {
    /// Open the prefix's key bucket, made with `replicas` copies when
    /// missing. Two revisions a key: while a rotation replaces one, the
    /// one replaced is still there to be erased.
    pub async fn open(
        js: &jetstream::Context,
        prefix: &str,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let bucket = keys_bucket(prefix);
        let kv = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => {
                // The stream a KV bucket of two revisions a key is, made
                // here because a KV bucket's stream is made with deletes
                // denied, and erasing a key is a delete by sequence.
                js.get_or_create_stream(jetstream::stream::Config {
                    name: format!("KV_{bucket}"),
                    description: Some(
                        "tenantvec tenants' data keys, wrapped by the master key".into(),
                    ),
                    subjects: vec![format!("$KV.{bucket}.>")],
                    max_messages_per_subject: 2,
                    allow_rollup: true,
                    deny_delete: false,
                    deny_purge: false,
                    allow_direct: true,
                    num_replicas: replicas.max(1),
                    discard: jetstream::stream::DiscardPolicy::New,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("cannot create the key bucket {bucket}: {e}"))?;
                js.get_key_value(&bucket)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot open the key bucket {bucket}: {e}"))?
            }
        };
        Ok(Self {
            kv,
            stream: format!("KV_{bucket}"),
            js: js.clone(),
        })
    }

    /// The tenant's wrapped key, if it has one.
    pub async fn get(&self, tenant: &str) -> Result<Option<StoredKey>, ServiceError> {
        let entry = timed("read", self.kv.entry(tenant)).await?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let entry: Entry = serde_json::from_slice(&e.value).map_err(|err| {
                    ServiceError::internal(format!(
                        "tenant {tenant}: its stored key is invalid: {err}"
                    ))
                })?;
                Ok(Some(StoredKey {
                    wrapped: entry.current,
                    next: entry.next,
                    revision: e.revision,
                }))
            }
            _ => Ok(None),
        }
    }

    /// The tenant's data key: its stored one opened, or, when it has none,
    /// a new one stored (when two workers race, both take the one stored
    /// first).
    pub async fn data_key(&self, tenant: &str, keys: &Keyring) -> Result<DataKey, ServiceError> {
        for _ in 0..CHANGE_TRIES {
            if let Some(stored) = self.get(tenant).await? {
                return keys
                    .open(tenant, &stored.wrapped)
                    .await
                    .map_err(|e| refused(tenant, e));
            }
            let (key, wrapped) = keys.make(tenant, 1).await.map_err(|e| refused(tenant, e))?;
            let body = entry_bytes(&wrapped, None);
            match tokio::time::timeout(TIMEOUT, self.kv.create(tenant, body)).await {
                Ok(Ok(_)) => return Ok(key),
                Ok(Err(e)) if super::is_taken(&e) => continue,
                Ok(Err(e)) => return Err(unavailable("create", e)),
                Err(_) => return Err(unavailable("create", "timed out")),
            }
        }
        Err(changed_meanwhile(tenant))
    }

    /// Replace the tenant's entry stored at `revision` with `wrapped` (and
    /// `next`), and erase the one replaced. `false`: it changed meanwhile
    /// (read again).
    pub async fn replace(
        &self,
        tenant: &str,
        wrapped: &WrappedKey,
        next: Option<&WrappedKey>,
        revision: u64,
    ) -> Result<bool, ServiceError> {
        let body = entry_bytes(wrapped, next);
        match tokio::time::timeout(TIMEOUT, self.kv.update(tenant, body, revision)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if super::is_revision_conflict(&e) => return Ok(false),
            Ok(Err(e)) => return Err(unavailable("update", e)),
            Err(_) => return Err(unavailable("update", "timed out")),
        }
        self.erase(revision).await?;
        Ok(true)
    }

    /// Destroy the tenant's key: every revision of it erased from the
    /// stream (its bytes overwritten on the server), so that no copy of it
    /// is left. Idempotent.
    pub async fn destroy(&self, tenant: &str) -> Result<(), ServiceError> {
        let history = timed("history", self.kv.history(tenant)).await?;
        let revisions: Vec<u64> = tokio::time::timeout(
            TIMEOUT,
            history.map_ok(|e| e.revision).try_collect::<Vec<u64>>(),
        )
        .await
        .map_err(|_| unavailable("history", "timed out"))?
        .map_err(|e| unavailable("history", e))?;
        for revision in revisions {
            self.erase(revision).await?;
        }
        Ok(())
    }

    /// Erase one message of the bucket's stream (a secure delete: the
    /// server overwrites it).
    async fn erase(&self, sequence: u64) -> Result<(), ServiceError> {
        let stream = timed("stream", self.js.get_stream(&self.stream)).await?;
        match tokio::time::timeout(TIMEOUT, stream.delete_message(sequence)).await {
            Ok(Ok(_)) => Ok(()),
            // Gone already (erased by an earlier, interrupted run).
            Ok(Err(e)) if e.to_string().contains("no message found") => Ok(()),
            Ok(Err(e)) => Err(unavailable("erase", e)),
            Err(_) => Err(unavailable("erase", "timed out")),
        }
    }

    /// At most `n` tenants that have a key, the first the stream gives.
    pub async fn first_tenants(&self, n: usize) -> Result<Vec<String>, ServiceError> {
        super::keys_of(&self.kv, KEY_STORE, n, TIMEOUT).await
    }

    /// Every tenant that has a key, sorted.
    pub async fn tenants(&self) -> Result<Vec<String>, ServiceError> {
        let mut ids = super::keys_of(&self.kv, KEY_STORE, usize::MAX, TIMEOUT * 10).await?;
        ids.sort_unstable();
        Ok(ids)
    }
}

/// What a worker opens tenants' keys with: its keyring and the key store.
#[derive(Debug, Clone)]
pub struct Keys {
    pub keyring: Keyring,
    pub store: KeyStore,
}

/// A tenant's data key, and the next one while a rotation is unfinished.
#[derive(Debug)]
pub struct TenantKeys {
    pub current: DataKey,
    pub next: Option<DataKey>,
}

impl Keys {
    /// The tenant's data key, made when it has none.
    pub async fn data_key(&self, tenant: &str) -> Result<DataKey, ServiceError> {
        self.store.data_key(tenant, &self.keyring).await
    }

    /// The tenant's data key (made when it has none), and the next one if
    /// a rotation of it was begun and not finished.
    pub async fn tenant_keys(&self, tenant: &str) -> Result<TenantKeys, ServiceError> {
        // One read of the entry when the tenant has a key (every activation
        // but its first).
        let Some(stored) = self.store.get(tenant).await? else {
            let current = self.data_key(tenant).await?;
            return Ok(TenantKeys {
                current,
                next: None,
            });
        };
        let current = self.open(tenant, &stored.wrapped).await?;
        let next = match &stored.next {
            Some(next) => Some(self.open(tenant, next).await?),
            None => None,
        };
        Ok(TenantKeys { current, next })
    }

    /// The tenant's data key if it has one (never made here).
    pub async fn existing(&self, tenant: &str) -> Result<Option<DataKey>, ServiceError> {
        match self.store.get(tenant).await? {
            Some(stored) => self.open(tenant, &stored.wrapped).await.map(Some),
            None => Ok(None),
        }
    }

    /// Begin a rotation of the tenant's key: the next key (one version on
    /// from the current), stored beside the current one before anything
    /// is encrypted with it; the one an unfinished rotation left, if any.
    pub async fn begin_rotation(&self, tenant: &str) -> Result<DataKey, ServiceError> {
        for _ in 0..CHANGE_TRIES {
            let Some(stored) = self.store.get(tenant).await? else {
                return Err(ServiceError::bad_request(format!(
                    "tenant {tenant} has no data key: it has written nothing to rotate"
                )));
            };
            if let Some(next) = &stored.next {
                return self.open(tenant, next).await;
            }
            let version = stored.wrapped.version.saturating_add(1);
            let (key, wrapped) = self
                .keyring
                .make(tenant, version)
                .await
                .map_err(|e| refused(tenant, e))?;
            if self
                .store
                .replace(tenant, &stored.wrapped, Some(&wrapped), stored.revision)
                .await?
            {
                return Ok(key);
            }
        }
        Err(changed_meanwhile(tenant))
    }

    /// Finish a rotation once the data is encrypted with the next key: it
    /// becomes the tenant's only key, and the entry that held the old one
    /// is erased. Done already: nothing to do.
    pub async fn finish_rotation(&self, tenant: &str) -> Result<(), ServiceError> {
        for _ in 0..CHANGE_TRIES {
            let Some(stored) = self.store.get(tenant).await? else {
                return Ok(());
            };
            let Some(next) = &stored.next else {
                return Ok(());
            };
            if self
                .store
                .replace(tenant, next, None, stored.revision)
                .await?
            {
                return Ok(());
            }
        }
        Err(changed_meanwhile(tenant))
    }

    async fn open(&self, tenant: &str, wrapped: &WrappedKey) -> Result<DataKey, ServiceError> {
        self.keyring
            .open(tenant, wrapped)
            .await
            .map_err(|e| refused(tenant, e))
    }
}

fn changed_meanwhile(tenant: &str) -> ServiceError {
    ServiceError::unavailable(format!(
        "tenant {tenant}: its key changed under every one of {CHANGE_TRIES} tries; retry"
    ))
}
