//! Our documents and filters in the engine's terms: conditions on
//! `metadata.<key>`, payload index kinds, and a stored point read back as a
//! document.
//!
//! Owns the translation. It must never widen a filter: a scope given is
//! always one of its conditions.

use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    Condition as EdgeCondition, FieldCondition, Filter as EdgeFilter, HasIdCondition, Match,
    Payload, PayloadSchemaType, PointId, PointStructPersisted, Range as EdgeRange, ValueVariants,
    VectorInternal, VectorStructInternal, VectorStructPersisted, DEFAULT_VECTOR_NAME,
};

use crate::filter::{Condition, Filter, Scalar};
use crate::protocol::{Doc, ServiceError};
use crate::store::mark::AppliedMark;
use crate::store::payload::{self, metadata_path, IndexKind, TENANT};

pub(super) fn json_path(path: &str) -> Result<qdrant_edge::JsonPath, ServiceError> {
    path.parse()
        .map_err(|()| ServiceError::bad_request(format!("filter key path {path:?} is not usable")))
}

/// The engine's index type of an [`IndexKind`].
pub(super) fn schema_type(kind: IndexKind) -> PayloadSchemaType {
    match kind {
        IndexKind::Keyword => PayloadSchemaType::Keyword,
        IndexKind::Float => PayloadSchemaType::Float,
        IndexKind::Bool => PayloadSchemaType::Bool,
    }
}

/// `must` conditions in the engine's terms: every one of `filter`'s on
/// `metadata.<key>` (numbers compare as a closed range, so `1` equals `1.0`),
/// plus `tenant == <tenant>` when a tenant scope is given.
pub fn to_edge_filter(
    filter: Option<&Filter>,
    tenant: Option<&str>,
) -> Result<Option<EdgeFilter>, ServiceError> {
    let mut must = Vec::new();
    if let Some(t) = tenant {
        must.push(scalar_condition(
            &json_path(TENANT)?,
            &Scalar::String(t.to_owned()),
        ));
    }
    for (key, cond) in filter.map(|f| f.conditions.as_slice()).unwrap_or_default() {
        let path = json_path(&metadata_path(key))?;
        let c = match cond {
            Condition::Equals(s) => scalar_condition(&path, s),
            Condition::AnyOf(list) => EdgeCondition::Filter(EdgeFilter {
                should: Some(list.iter().map(|s| scalar_condition(&path, s)).collect()),
                min_should: None,
                must: None,
                must_not: None,
            }),
            Condition::Range(r) => {
                let r = r.tightest();
                EdgeCondition::Field(FieldCondition::new_range(
                    path,
                    EdgeRange {
                        lt: r.lt.map(OrderedFloat),
                        gt: r.gt.map(OrderedFloat),
                        gte: r.gte.map(OrderedFloat),
                        lte: r.lte.map(OrderedFloat),
                    },
                ))
            }
        };
        must.push(c);
    }
    Ok((!must.is_empty()).then_some(EdgeFilter {
        should: None,
        min_should: None,
        must: Some(must),
        must_not: None,
    }))
}

/// `filter` that also leaves out the point `mark` (a tenant's applied
/// mark, kept beside its documents in its own shard).
pub fn without_mark(filter: Option<EdgeFilter>, mark: PointId) -> EdgeFilter {
    let mut filter = filter.unwrap_or(EdgeFilter {
        should: None,
        min_should: None,
        must: None,
        must_not: None,
    });
    filter
        .must_not
        .get_or_insert_with(Vec::new)
        .push(EdgeCondition::HasId(HasIdCondition::from_iter([mark])));
    filter
}

/// The point that stores a tenant's applied mark: no vector (a search
/// never finds it), the mark in its payload.
pub fn mark_point(id: PointId, mark: &AppliedMark, shared: Option<&str>) -> PointStructPersisted {
    PointStructPersisted {
        id,
        vector: VectorStructPersisted::Named(Default::default()),
        payload: Some(Payload(mark.to_payload(shared))),
    }
}

/// The mark a stored point holds, if it is a mark.
pub fn stored_mark(payload: Option<&Payload>) -> Option<AppliedMark> {
    AppliedMark::from_payload(&payload?.0)
}

pub(super) fn scalar_condition(path: &qdrant_edge::JsonPath, s: &Scalar) -> EdgeCondition {
    let field = match s {
        Scalar::String(v) => FieldCondition::new_match(
            path.clone(),
            Match::new_value(ValueVariants::String(v.clone())),
        ),
        Scalar::Bool(b) => {
            FieldCondition::new_match(path.clone(), Match::new_value(ValueVariants::Bool(*b)))
        }
        Scalar::Number(n) => FieldCondition::new_range(
            path.clone(),
            EdgeRange {
                lt: None,
                gt: None,
                gte: Some(OrderedFloat(*n)),
                lte: Some(OrderedFloat(*n)),
            },
        ),
    };
    EdgeCondition::Field(field)
}

/// A point read from the engine as a document.
pub fn to_doc(payload: Option<Payload>, vector: Option<VectorStructInternal>) -> Doc {
    let vector = vector.and_then(|v| match v {
        VectorStructInternal::Single(v) => Some(v),
        VectorStructInternal::Named(mut named) => match named.remove(DEFAULT_VECTOR_NAME) {
            Some(VectorInternal::Dense(v)) => Some(v),
            _ => None,
        },
        _ => None,
    });
    payload::to_doc(payload.map(|p| p.0).unwrap_or_default(), vector)
}
