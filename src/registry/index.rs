//! The registry's live index: every tenant's id, stored state and document
//! count, kept in memory from a watch of the bucket, so that a page of
//! `tenants.list` costs the reads of its own records (not a scan of every
//! key) and the census of `admin.stats` and `/metrics` costs nothing.
//!
//! Owns the ids in order and the census drawn from them. It must never be
//! taken for the truth before it has read the whole bucket (`complete`):
//! until then a caller scans the bucket instead. It never holds a record's
//! settings (an actor reads its record itself), and never lets an older
//! revision replace a newer one, whichever arrives first (the worker's own
//! writes are put in at once, the watch brings everyone's a moment later).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::protocol::{DocumentsBucket, RegistryStats};
use crate::registry::record::{TenantRecord, TenantState};

/// Upper bounds of the documents-per-tenant histogram (the last bucket is
/// everything above).
pub const DOCUMENT_BOUNDS: [u64; 7] = [0, 10, 100, 1_000, 10_000, 100_000, 1_000_000];

/// What the index keeps of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// The record's revision, or the revision that removed it.
    revision: u64,
    /// `None`: removed (kept so that an older write arriving late is known
    /// as older).
    kept: Option<(TenantState, Option<u64>)>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: BTreeMap<String, Entry>,
    /// Whether every record of the bucket has been read in.
    complete: bool,
}

/// The index; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Index {
    inner: Arc<RwLock<Inner>>,
}

impl Index {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A record at `revision`, unless a later one is known.
    pub fn put(&self, record: &TenantRecord, revision: u64) {
        let kept = Some((record.state, record.documents));
        self.set(&record.id, Entry { revision, kept });
    }

    /// The record of `id` was removed at `revision` (`None`: by this worker,
    /// at a revision it does not know; any later write arriving is newer).
    pub fn remove(&self, id: &str, revision: Option<u64>) {
        let mut inner = self.write();
        let revision = match revision {
            Some(r) => r,
            None => inner.entries.get(id).map_or(0, |e| e.revision),
        };
        if let Some(e) = inner.entries.get_mut(id) {
            if e.revision <= revision {
                *e = Entry {
                    revision,
                    kept: None,
                };
            }
        }
    }

    fn set(&self, id: &str, entry: Entry) {
        let mut inner = self.write();
        match inner.entries.get_mut(id) {
            Some(e) if e.revision >= entry.revision => {}
            Some(e) => *e = entry,
            None => {
                inner.entries.insert(id.to_owned(), entry);
            }
        }
    }

    /// Start again from nothing (the watch is made again and reads the
    /// whole bucket anew).
    pub fn restart(&self) {
        let mut inner = self.write();
        inner.entries.clear();
        inner.complete = false;
    }

    /// Every record of the bucket has been read in.
    pub fn mark_complete(&self) {
        self.write().complete = true;
    }

    pub fn is_complete(&self) -> bool {
        self.read().complete
    }

    /// Tenants with a record.
    pub fn len(&self) -> usize {
        self.read()
            .entries
            .values()
            .filter(|e| e.kept.is_some())
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A page of ids in order, from after `cursor`, those starting with
    /// `prefix` for which `keep(id, stored state)` holds, and the cursor
    /// of the next page; `None` until the index is complete.
    pub fn page(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
        keep: impl Fn(&str, TenantState) -> bool,
    ) -> Option<(Vec<String>, Option<String>)> {
        let inner = self.read();
        if !inner.complete {
            return None;
        }
        let from = match cursor {
            Some(c) if c >= prefix => std::ops::Bound::Excluded(c),
            _ => std::ops::Bound::Included(prefix),
        };
        let mut matching = inner
            .entries
            .range::<str, _>((from, std::ops::Bound::Unbounded))
            .take_while(|(id, _)| id.starts_with(prefix))
            .filter_map(|(id, e)| e.kept.map(|(state, _)| (id, state)))
            .filter(|(id, state)| keep(id, *state))
            .map(|(id, _)| id);
        let ids: Vec<String> = matching.by_ref().take(limit).cloned().collect();
        let next = match (matching.next(), ids.last()) {
            (Some(_), Some(last)) => Some(last.clone()),
            _ => None,
        };
        Some((ids, next))
    }

    /// Tenants by state and by documents (as last seen; a tenant whose
    /// actor never closed since its record was made is counted apart as
    /// unknown), `active` being
    /// those of `active` (the tenants this worker's pool holds) that have a
    /// record.
    pub fn census(&self, active: &[String]) -> RegistryStats {
        let inner = self.read();
        let mut stats = RegistryStats {
            complete: inner.complete,
            ..RegistryStats::default()
        };
        let mut counts = [0u64; DOCUMENT_BOUNDS.len() + 1];
        let (mut idle, mut dropping, mut moving) = (0u64, 0u64, 0u64);
        for e in inner.entries.values() {
            let Some((state, documents)) = e.kept else {
                continue;
            };
            stats.tenants += 1;
            match documents {
                Some(documents) => {
                    stats.documents_total += documents;
                    counts[DOCUMENT_BOUNDS.partition_point(|b| *b < documents)] += 1;
                }
                None => stats.documents_unknown += 1,
            }
            match state {
                TenantState::Dropping => dropping += 1,
                TenantState::Moving | TenantState::Arriving => moving += 1,
                _ => idle += 1,
            }
        }
        let held = active
            .iter()
            .filter(|t| {
                inner
                    .entries
                    .get(t.as_str())
                    .is_some_and(|e| matches!(e.kept, Some((TenantState::Idle, _))))
            })
            .count() as u64;
        stats
            .states
            .insert("idle".into(), idle.saturating_sub(held));
        stats.states.insert("active".into(), held);
        stats.states.insert("dropping".into(), dropping);
        stats.states.insert("moving".into(), moving);
        stats.documents = counts
            .iter()
            .enumerate()
            .map(|(i, tenants)| DocumentsBucket {
                le: DOCUMENT_BOUNDS.get(i).copied(),
                tenants: *tenants,
            })
            .collect();
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, state: TenantState, documents: u64) -> TenantRecord {
        let mut r = TenantRecord::new(&crate::tenant::TenantId::parse(id).unwrap(), "t");
        r.state = state;
        r.documents = Some(documents);
        r
    }

    fn complete(ids: &[&str]) -> Index {
        let index = Index::default();
        for (n, id) in ids.iter().enumerate() {
            index.put(&record(id, TenantState::Idle, 0), n as u64 + 1);
        }
        index.mark_complete();
        index
    }

    fn all(_: &str, _: TenantState) -> bool {
        true
    }

    #[test]
    fn pages_follow_the_cursor_within_the_prefix() {
        let index = complete(&["alice", "al", "bob", "alma", "carol", "alfred"]);
        let (ids, next) = index.page("al", None, 2, all).unwrap();
        assert_eq!(ids, ["al", "alfred"]);
        let (ids, next) = index.page("al", next.as_deref(), 2, all).unwrap();
        assert_eq!(ids, ["alice", "alma"]);
        assert_eq!(next, None, "nothing of the prefix follows");
        let (ids, next) = index.page("", Some("alma"), 10, all).unwrap();
        assert_eq!(ids, ["bob", "carol"]);
        assert_eq!(next, None);
        let (ids, _) = index.page("b", Some("a"), 10, all).unwrap();
        assert_eq!(
            ids,
            ["bob"],
            "a cursor before the prefix starts at the prefix"
        );
    }

    #[test]
    fn an_incomplete_index_answers_nothing() {
        let index = Index::default();
        index.put(&record("a", TenantState::Idle, 0), 1);
        assert!(index.page("", None, 10, all).is_none());
        index.mark_complete();
        assert_eq!(index.page("", None, 10, all).unwrap().0, ["a"]);
        index.restart();
        assert!(index.page("", None, 10, all).is_none());
        assert!(index.is_empty());
    }

    #[test]
    fn an_older_revision_never_replaces_a_newer_one() {
        let index = complete(&[]);
        index.put(&record("t", TenantState::Idle, 5), 7);
        index.put(&record("t", TenantState::Idle, 1), 3);
        assert_eq!(index.census(&[]).documents_total, 5);
        // Removed here, then the watch brings the put of before: still gone.
        index.remove("t", None);
        index.put(&record("t", TenantState::Idle, 5), 7);
        assert!(index.is_empty());
        // Made again later: back.
        index.put(&record("t", TenantState::Idle, 0), 9);
        assert_eq!(index.len(), 1);
        // The watch's purge of an earlier life does not remove it.
        index.remove("t", Some(8));
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn states_filter_pages() {
        let index = complete(&[]);
        index.put(&record("a", TenantState::Idle, 0), 1);
        index.put(&record("b", TenantState::Dropping, 0), 2);
        index.put(&record("c", TenantState::Idle, 0), 3);
        let (ids, next) = index
            .page("", None, 1, |_, s| s == TenantState::Idle)
            .unwrap();
        assert_eq!((ids, next.as_deref()), (vec!["a".to_owned()], Some("a")));
        let (ids, _) = index
            .page("", Some("a"), 1, |_, s| s == TenantState::Idle)
            .unwrap();
        assert_eq!(ids, ["c"]);
    }

    #[test]
    fn the_census_counts_states_and_sizes() {
        let index = complete(&[]);
        for (n, (id, state, docs)) in [
            ("a", TenantState::Idle, 0),
            ("b", TenantState::Idle, 10),
            ("c", TenantState::Idle, 11),
            ("d", TenantState::Dropping, 5_000_000),
        ]
        .into_iter()
        .enumerate()
        {
            index.put(&record(id, state, docs), n as u64 + 1);
        }
        let stats = index.census(&["b".into(), "zz".into()]);
        assert!(stats.complete);
        assert_eq!(stats.tenants, 4);
        assert_eq!(stats.states["idle"], 2);
        assert_eq!(stats.states["active"], 1, "zz has no record");
        assert_eq!(stats.states["dropping"], 1);
        assert_eq!(stats.documents_total, 5_000_021);
        assert_eq!(stats.documents_unknown, 0);
        let per: Vec<(Option<u64>, u64)> =
            stats.documents.iter().map(|b| (b.le, b.tenants)).collect();
        assert_eq!(
            per,
            [
                (Some(0), 1),
                (Some(10), 1),
                (Some(100), 1),
                (Some(1_000), 0),
                (Some(10_000), 0),
                (Some(100_000), 0),
                (Some(1_000_000), 0),
                (None, 1),
            ]
        );
    }
}
