//! What a stored point carries, the same for every backend: its id, its
//! payload keys, the payload built from a record and the document read back
//! from a payload, which payload index serves a filter condition, and which
//! filter keys get one.
//!
//! Owns the stored shape of a document, so that the edge and the qdrant
//! backends keep identical data (a tenant can be moved between them by
//! re-ingesting, and the conformance suite holds both to one answer). It must
//! never know an engine's types: backends convert at their edge.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::config::StoreSettings;
use crate::filter::{Condition, Filter, Scalar};
use crate::protocol::Doc;

/// Payload keys of a point.
pub const DOC_ID: &str = "doc_id";
pub const TEXT: &str = "text";
pub const METADATA: &str = "metadata";
/// The tenant of a point in a store shared by all tenants.
pub const TENANT: &str = "tenant";

/// The point id of a document: UUIDv5 of its `doc_id`, so an upsert of the
/// same `doc_id` replaces the point instead of adding one. In a store shared
/// by all tenants (`scope` is the tenant), the tenant is part of the key, so
/// equal `doc_id`s of two tenants never meet.
pub fn point_uuid(scope: Option<&str>, doc_id: &str) -> uuid::Uuid {
    /// Fixed namespace of tenantvec point ids; changing it orphans stored data.
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f1c_2a4e_8b7d_4c35_9a0e_5d2b_7c41_e9f3);
    match scope {
        Some(tenant) => uuid::Uuid::new_v5(&NAMESPACE, format!("{tenant}/{doc_id}").as_bytes()),
        None => uuid::Uuid::new_v5(&NAMESPACE, doc_id.as_bytes()),
    }
}

/// The payload path of a metadata key.
pub fn metadata_path(key: &str) -> String {
    format!("{METADATA}.{key}")
}

/// The payload stored with a document; `tenant` in the shared layout.
pub fn build(
    tenant: Option<&str>,
    doc_id: String,
    text: Option<String>,
    metadata: Map<String, Value>,
) -> Map<String, Value> {
    let mut payload = Map::new();
    if let Some(t) = tenant {
        payload.insert(TENANT.into(), Value::String(t.to_owned()));
    }
    payload.insert(DOC_ID.into(), Value::String(doc_id));
    if let Some(text) = text {
        payload.insert(TEXT.into(), Value::String(text));
    }
    payload.insert(METADATA.into(), Value::Object(metadata));
    payload
}

/// The tenant a stored point belongs to, if its payload names one.
pub fn tenant_of(payload: &Map<String, Value>) -> Option<&str> {
    payload.get(TENANT)?.as_str()
}

/// A stored point back as a document.
pub fn to_doc(mut payload: Map<String, Value>, vector: Option<Vec<f32>>) -> Doc {
    let doc_id = match payload.remove(DOC_ID) {
        Some(Value::String(s)) => s,
        _ => String::new(),
    };
    let text = match payload.remove(TEXT) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let metadata = match payload.remove(METADATA) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    Doc {
        doc_id,
        text,
        metadata,
        vector,
    }
}

/// The kind of payload index that serves a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    Keyword,
    Float,
    Bool,
}

impl IndexKind {
    /// The index that serves `cond`, if one does: a list of mixed kinds has
    /// none. Numbers are compared as ranges (so `1` equals `1.0`), which a
    /// float index serves.
    pub fn of(cond: &Condition) -> Option<Self> {
        let of = |s: &Scalar| match s {
            Scalar::String(_) => Self::Keyword,
            Scalar::Number(_) => Self::Float,
            Scalar::Bool(_) => Self::Bool,
        };
        match cond {
            Condition::Equals(s) => Some(of(s)),
            Condition::Range(_) => Some(Self::Float),
            Condition::AnyOf(list) => {
                let first = of(list.first()?);
                list.iter().all(|s| of(s) == first).then_some(first)
            }
        }
    }
}

/// Which filter keys get a payload index made on first use: the operator's
/// allow-list (empty: any key) and a cap on how many such indexes one store
/// holds. Tenants choose their filter keys, and an index is never removed, so
/// without the cap a tenant sending ever new keys would grow a store's
/// indexes (in a shared store, every tenant's cost) without bound. A key
/// that gets no index is still filtered, without one: the engines scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPolicy {
    allowed: HashSet<String>,
    max: usize,
}

impl IndexPolicy {
    /// The policy the settings ask for (`store.indexed_keys`,
    /// `store.max_payload_indexes`).
    pub fn from_settings(store: &StoreSettings) -> Self {
        Self::new(&store.indexed_keys, store.max_payload_indexes)
    }

    /// `allowed`: the metadata keys that may get an index (empty: any);
    /// `max`: most indexes made on first use in one store.
    pub fn new(allowed: &[String], max: usize) -> Self {
        Self {
            allowed: allowed.iter().cloned().collect(),
            max,
        }
    }

    /// The payload paths to index now for `filter`, with their kind, given
    /// the paths that have an index already. The tenant key's index is the
    /// store's own, not made on demand, so it does not count against the cap.
    pub fn to_index(&self, filter: &Filter, indexed: &HashSet<String>) -> Vec<(String, IndexKind)> {
        let mut made = indexed.iter().filter(|p| p.as_str() != TENANT).count();
        let mut out: Vec<(String, IndexKind)> = Vec::new();
        for (key, cond) in &filter.conditions {
            if made >= self.max {
                break;
            }
            if !self.allowed.is_empty() && !self.allowed.contains(key) {
                continue;
            }
            let path = metadata_path(key);
            if indexed.contains(&path) || out.iter().any(|(p, _)| *p == path) {
                continue;
            }
            if let Some(kind) = IndexKind::of(cond) {
                out.push((path, kind));
                made += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(keys: &[&str]) -> Filter {
        let map: Map<String, Value> = keys.iter().map(|k| ((*k).into(), "v".into())).collect();
        Filter::parse(&Value::Object(map)).unwrap()
    }

    fn paths(v: &[(String, IndexKind)]) -> Vec<&str> {
        v.iter().map(|(p, _)| p.as_str()).collect()
    }

    #[test]
    fn indexes_stop_at_the_cap_and_the_tenant_key_is_free() {
        let policy = IndexPolicy::new(&[], 2);
        let mut indexed: HashSet<String> = [TENANT.to_owned()].into();
        let first = policy.to_index(&filter(&["a", "b", "c"]), &indexed);
        assert_eq!(paths(&first), ["metadata.a", "metadata.b"]);
        assert_eq!(first[0].1, IndexKind::Keyword);
        indexed.extend(first.into_iter().map(|(p, _)| p));
        assert!(policy.to_index(&filter(&["c", "d"]), &indexed).is_empty());
        assert!(policy.to_index(&filter(&["a"]), &indexed).is_empty());
        assert!(IndexPolicy::new(&[], 0)
            .to_index(&filter(&["a"]), &HashSet::new())
            .is_empty());
    }

    #[test]
    fn only_allowed_keys_get_an_index() {
        let policy = IndexPolicy::new(&["color".to_owned()], 16);
        let made = policy.to_index(&filter(&["size", "color", "x"]), &HashSet::new());
        assert_eq!(paths(&made), ["metadata.color"]);
    }

    #[test]
    fn a_payload_reads_back_as_the_document() {
        let mut meta = Map::new();
        meta.insert("k".into(), Value::from(1.5));
        let p = build(Some("t"), "d".into(), Some("hi".into()), meta.clone());
        assert_eq!(tenant_of(&p), Some("t"));
        let doc = to_doc(p, Some(vec![1.0]));
        assert_eq!(
            (doc.doc_id.as_str(), doc.text.as_deref(), doc.metadata),
            ("d", Some("hi"), meta)
        );
    }

    #[test]
    fn scoped_ids_differ_per_tenant_and_are_stable() {
        assert_ne!(point_uuid(Some("a"), "x"), point_uuid(Some("b"), "x"));
        assert_ne!(point_uuid(None, "x"), point_uuid(Some("a"), "x"));
        assert_eq!(point_uuid(Some("a"), "x"), point_uuid(Some("a"), "x"));
    }
}
