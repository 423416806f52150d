//! `tenantvec keys rotate-master`: every tenant's data key wrapped again
//! under a new master key in the key store, and the key it replaces erased;
//! the data is untouched.
//!
//! Owns that walk of the registry and the master-key census a worker checks
//! at start. It must never write a key it could not open with the old master
//! key, never replace a record changed meanwhile without reading it again
//! (each write is revision-checked), and never stop at one tenant's failure:
//! a rerun takes up what is left (a record already under the new key is
//! skipped).

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use serde::Serialize;

use crate::crypto::Keyring;
use crate::protocol::ServiceError;
use crate::registry::keys::KeyStore;

/// Records re-wrapped at once.
const PARALLEL: usize = 32;
/// Records a starting worker reads to learn which master key is in use.
pub const MASTER_SAMPLE: usize = 16;

/// What a rotation did.
#[derive(Debug, Default, Serialize)]
pub struct RotateSummary {
    /// Keys wrapped again under the new master key (the old wrapping erased).
    pub rewrapped: u64,
    /// Keys under the new master key already (an earlier, interrupted run).
    pub already: u64,
    /// Tenants whose key could not be re-wrapped, with why.
    pub failed: BTreeMap<String, String>,
}

/// Wrap every tenant's data key under `new`, opening it with `old`.
pub async fn rotate_master(
    store: &KeyStore,
    old: &Keyring,
    new: &Keyring,
    progress: impl Fn(&RotateSummary),
) -> Result<RotateSummary, ServiceError> {
    let tenants = store.tenants().await?;
    let mut summary = RotateSummary::default();
    let mut done = futures::stream::iter(tenants)
        .map(|tenant| async move {
            let outcome = rewrap(store, &tenant, old, new).await;
            (tenant, outcome)
        })
        .buffer_unordered(PARALLEL);
    while let Some((tenant, outcome)) = done.next().await {
        match outcome {
            Ok(true) => summary.rewrapped += 1,
            Ok(false) => summary.already += 1,
            Err(e) => {
                summary.failed.insert(tenant, e.message);
            }
        }
        progress(&summary);
    }
    Ok(summary)
}

/// `true`: re-wrapped now; `false`: under `new` already (or gone).
async fn rewrap(
    store: &KeyStore,
    tenant: &str,
    old: &Keyring,
    new: &Keyring,
) -> Result<bool, ServiceError> {
    loop {
        let Some(stored) = store.get(tenant).await? else {
            return Ok(false);
        };
        if stored.wrapped.master == new.fingerprint() {
            return Ok(false);
        }
        let refused = |e: crate::crypto::KeyError| ServiceError::internal(e.to_string());
        let rewrap = |wrapped| async move {
            let key = old.open(tenant, wrapped).await.map_err(refused)?;
            new.wrap(&key, tenant).await.map_err(refused)
        };
        // The next key of an unfinished rotation is re-wrapped with it.
        let again = rewrap(&stored.wrapped).await?;
        let next = match &stored.next {
            Some(next) => Some(rewrap(next).await?),
            None => None,
        };
        if store
            .replace(tenant, &again, next.as_ref(), stored.revision)
            .await?
        {
            return Ok(true);
        }
    }
}

/// The fingerprints of the master keys the first `sample` tenants' data
/// keys are wrapped with (empty: no tenant has a key yet).
pub async fn masters_in_use(
    store: &KeyStore,
    sample: usize,
) -> Result<BTreeSet<String>, ServiceError> {
    let mut in_use = BTreeSet::new();
    for tenant in store.first_tenants(sample).await? {
        if let Some(stored) = store.get(&tenant).await? {
            in_use.insert(stored.wrapped.master);
        }
    }
    Ok(in_use)
}

/// Why a worker with master key `have` must not start, if it must not:
/// the records sampled are wrapped with another key, or with several (a
/// rotation under way).
pub fn check_master(have: &str, in_use: &BTreeSet<String>) -> Result<(), String> {
    if in_use.is_empty() || (in_use.len() == 1 && in_use.contains(have)) {
        return Ok(());
    }
    let listed = in_use.iter().cloned().collect::<Vec<_>>().join(", ");
    if in_use.contains(have) {
        return Err(format!(
            "tenants' data keys are wrapped with several master keys ({listed}): a rotation \
             is under way; finish it (`tenantvec keys rotate-master --new FILE`, run again) \
             and start with the new key"
        ));
    }
    Err(format!(
        "the master key given has fingerprint {have}, and the tenants' data keys in the \
         registry are wrapped with master key {listed}: start with that key \
         (encryption.master_key_file); nothing was written"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_starts_only_with_the_master_key_in_use() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert!(check_master("a", &set(&[])).is_ok());
        assert!(check_master("a", &set(&["a"])).is_ok());
        let e = check_master("b", &set(&["a"])).unwrap_err();
        assert!(
            e.contains("fingerprint b") && e.contains("master key a"),
            "{e}"
        );
        let e = check_master("a", &set(&["a", "b"])).unwrap_err();
        assert!(e.contains("rotation"), "{e}");
    }
}
