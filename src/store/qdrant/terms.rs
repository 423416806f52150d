//! Our documents and filters in Qdrant's terms: `must` conditions on
//! `metadata.<key>` with the tenant's condition first, and the dense vector
//! of a point read back.
//!
//! Owns the translation. It must never drop the tenant's condition from a
//! filter of the shared layout.

use qdrant_client::qdrant::{
    vector_output::Vector as VectorOutput, Condition as QCondition, Filter as QFilter,
    Range as QRange, VectorsOutput,
};

use crate::filter::{Condition, Filter, Scalar};
use crate::store::payload::{metadata_path, TENANT};

/// The default dense vector of a point, if it was asked for.
pub(super) fn dense(vectors: Option<VectorsOutput>) -> Option<Vec<f32>> {
    match vectors?.get_vector()? {
        VectorOutput::Dense(v) => Some(v.data),
        _ => None,
    }
}

/// `must` conditions in Qdrant's terms, the same as the edge store's: every
/// one of `filter`'s on `metadata.<key>` (numbers compare as a closed range,
/// so `1` equals `1.0`), plus `tenant == <tenant>` when a scope is given.
pub fn to_qdrant_filter(filter: Option<&Filter>, tenant: Option<&str>) -> Option<QFilter> {
    let mut must = Vec::new();
    if let Some(t) = tenant {
        must.push(QCondition::matches(TENANT, t.to_owned()));
    }
    for (key, cond) in filter.map(|f| f.conditions.as_slice()).unwrap_or_default() {
        let path = metadata_path(key);
        must.push(match cond {
            Condition::Equals(s) => scalar_condition(&path, s),
            Condition::AnyOf(list) => QCondition::from(QFilter::should(
                list.iter().map(|s| scalar_condition(&path, s)),
            )),
            Condition::Range(r) => {
                let r = r.tightest();
                QCondition::range(
                    path,
                    QRange {
                        lt: r.lt,
                        gt: r.gt,
                        gte: r.gte,
                        lte: r.lte,
                    },
                )
            }
        });
    }
    (!must.is_empty()).then(|| QFilter::must(must))
}

pub(super) fn scalar_condition(path: &str, s: &Scalar) -> QCondition {
    match s {
        Scalar::String(v) => QCondition::matches(path, v.clone()),
        Scalar::Bool(b) => QCondition::matches(path, *b),
        Scalar::Number(n) => QCondition::range(
            path,
            QRange {
                lt: None,
                gt: None,
                gte: Some(*n),
                lte: Some(*n),
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_condition_is_always_first_and_kept() {
        let f = Filter::parse(&serde_json::json!({"k": "v", "n": {"gte": 1, "gt": 0}})).unwrap();
        let q = to_qdrant_filter(Some(&f), Some("alice")).unwrap();
        assert_eq!(q.must.len(), 3);
        assert_eq!(q.must[0], QCondition::matches(TENANT, "alice".to_owned()));
        assert!(to_qdrant_filter(None, None).is_none());
        assert_eq!(to_qdrant_filter(None, Some("a")).unwrap().must.len(), 1);
    }
}
