//! `tenantvec tenants import-files`: the records of every tenant of a data
//! folder written before the registry, made at once from their files
//! (`tenant.json`, `embedder.json`, the store folder) instead of at each
//! tenant's first activation.
//!
//! Owns the walk of the data folder. It must never load the folder's list
//! into memory (a million tenants are read one directory entry at a time),
//! never replace a record that exists (the registry's create is
//! create-if-absent), and never stop at one tenant's failure.

use std::collections::BTreeMap;

use futures::StreamExt;
use serde::Serialize;

use crate::embed::record::Records;
use crate::registry::{Found, Registry};
use crate::tenant::{TenantId, TenantPaths};

/// Tenants read at once.
const PARALLEL: usize = 32;

/// What an import found.
#[derive(Debug, Default, Serialize)]
pub struct ImportSummary {
    /// Records made from files.
    pub imported: u64,
    /// Tenants that had a record already.
    pub registered: u64,
    /// Tenant folders without any file of a tenant (left alone).
    pub empty: u64,
    /// Entries of the data folder that are no tenant's (other files, names
    /// that are no tenant id).
    pub other: u64,
    /// Tenants whose files could not be read or whose record could not be
    /// written, with why.
    pub failed: BTreeMap<String, String>,
}

/// Make the record of every tenant of `paths` that has files and no
/// record; `progress` is called after each tenant.
pub async fn import_files(
    registry: &Registry,
    paths: &TenantPaths,
    records: &Records,
    progress: impl Fn(&ImportSummary),
) -> std::io::Result<ImportSummary> {
    let mut summary = ImportSummary::default();
    let entries = std::fs::read_dir(paths.root())?;
    let tenants = entries.filter_map(|entry| {
        let entry = entry.ok()?;
        let is_dir = entry.file_type().ok()?.is_dir();
        let name = entry.file_name().into_string().ok()?;
        Some(TenantId::parse(&name).ok().filter(|_| is_dir).ok_or(name))
    });
    let mut found = futures::stream::iter(tenants)
        .map(|tenant| async move {
            match tenant {
                Ok(t) => {
                    let found = registry.activate(&t, paths, records).await;
                    Ok((t, found))
                }
                Err(name) => Err(name),
            }
        })
        .buffer_unordered(PARALLEL);
    while let Some(outcome) = found.next().await {
        match outcome {
            Err(_) => summary.other += 1,
            Ok((_, Ok(Found::Migrated(_)))) => summary.imported += 1,
            Ok((_, Ok(Found::Record(_)))) => summary.registered += 1,
            Ok((_, Ok(Found::Missing))) => summary.empty += 1,
            Ok((t, Err(e))) => {
                summary.failed.insert(t.to_string(), e.message);
            }
        }
        progress(&summary);
    }
    Ok(summary)
}
