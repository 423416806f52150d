//! The applied mark: the newest ingest message of a tenant that its store
//! holds, kept in the store itself and written in the same engine write as
//! the documents that message brought.
//!
//! Owns the mark's meaning and its stored shape (a reserved point of the
//! tenant's store, without a vector, so that no search can find it). Any
//! worker that opens the tenant after any crash reads it back and so knows
//! which messages are applied already, whoever applied them. It must never
//! say a message is applied that the store does not hold: the mark only
//! ever travels in the write that holds its documents.

use std::sync::Arc;

use serde_json::{Map, Value};

/// Payload key of the mark's point: `{"stream": .., "seq": ..}`.
pub const MARK: &str = "tenantvec_applied";

/// The `tenant` payload value of marks in a store shared by all tenants: no
/// tenant id can take it (`_` cannot begin one), so a tenant's reads, which
/// are all scoped to its own value, never meet a mark.
pub const SHARED_MARKS: &str = "_applied";

/// The newest ingest message applied to a tenant's store: its stream
/// (named with the stream's creation time, so a stream deleted and made
/// again never matches an old mark) and its sequence there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMark {
    pub stream: Arc<str>,
    pub seq: u64,
}

impl AppliedMark {
    pub fn new(stream: Arc<str>, seq: u64) -> Self {
        Self { stream, seq }
    }

    /// Whether message `seq` of `stream` is applied already: the mark is of
    /// the same stream and at it or past it. A mark of another stream
    /// answers nothing (the stream check alone decides then).
    pub fn covers(&self, stream: &str, seq: u64) -> bool {
        self.stream.as_ref() == stream && seq <= self.seq
    }

    /// The mark after `other` is applied too: the later of the two on one
    /// stream, `other` when the stream changed.
    pub fn advanced(current: Option<&AppliedMark>, other: &AppliedMark) -> AppliedMark {
        match current {
            Some(c) if c.stream == other.stream && c.seq > other.seq => c.clone(),
            _ => other.clone(),
        }
    }

    /// The payload of the mark's point; `shared`: in a store shared by all
    /// tenants, which carries the tenant by name and [`SHARED_MARKS`] as
    /// its `tenant`.
    pub fn to_payload(&self, shared: Option<&str>) -> Map<String, Value> {
        let mut mark = Map::new();
        mark.insert("stream".into(), Value::String(self.stream.to_string()));
        mark.insert("seq".into(), Value::from(self.seq));
        let mut payload = Map::new();
        if let Some(tenant) = shared {
            mark.insert("for".into(), Value::String(tenant.to_owned()));
            payload.insert(
                super::payload::TENANT.into(),
                Value::String(SHARED_MARKS.into()),
            );
        }
        payload.insert(MARK.into(), Value::Object(mark));
        payload
    }

    /// The mark a stored payload holds; `None` when it holds none (a
    /// document, or a shape this version does not know).
    pub fn from_payload(payload: &Map<String, Value>) -> Option<Self> {
        let mark = payload.get(MARK)?.as_object()?;
        Some(Self {
            stream: Arc::from(mark.get("stream")?.as_str()?),
            seq: mark.get("seq")?.as_u64()?,
        })
    }
}

/// Whether a stored payload is a mark rather than a document.
pub fn is_mark(payload: &Map<String, Value>) -> bool {
    payload.contains_key(MARK)
}

/// The point id of a tenant's mark (`scope`: the tenant, in a store shared
/// by all tenants). From its own namespace: no `doc_id` can make it.
pub fn point_uuid(scope: Option<&str>) -> uuid::Uuid {
    /// Fixed namespace of marks; changing it forgets every stored mark.
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x3b9e_71d2_0c4f_4a86_b5e1_92d7_4f60_a1c8);
    uuid::Uuid::new_v5(&NAMESPACE, scope.unwrap_or("").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(stream: &str, seq: u64) -> AppliedMark {
        AppliedMark::new(Arc::from(stream), seq)
    }

    #[test]
    fn a_mark_covers_its_stream_up_to_its_sequence_only() {
        let m = mark("S@1", 10);
        assert!(m.covers("S@1", 10));
        assert!(m.covers("S@1", 3));
        assert!(!m.covers("S@1", 11));
        // The stream made again: its sequences start over, the mark says nothing.
        assert!(!m.covers("S@2", 3));
    }

    #[test]
    fn a_mark_only_moves_forward_on_its_stream() {
        let m = mark("S@1", 10);
        assert_eq!(AppliedMark::advanced(Some(&m), &mark("S@1", 4)), m);
        assert_eq!(
            AppliedMark::advanced(Some(&m), &mark("S@1", 12)),
            mark("S@1", 12)
        );
        assert_eq!(
            AppliedMark::advanced(Some(&m), &mark("S@2", 1)),
            mark("S@2", 1)
        );
        assert_eq!(AppliedMark::advanced(None, &m), m);
    }

    #[test]
    fn a_mark_reads_back_from_its_payload_in_both_layouts() {
        let m = mark("TENANTVEC_INGEST@1765000000000000000", 42);
        let own = m.to_payload(None);
        assert!(is_mark(&own));
        assert!(own.get(super::super::payload::TENANT).is_none());
        assert_eq!(AppliedMark::from_payload(&own), Some(m.clone()));
        let shared = m.to_payload(Some("alice"));
        assert_eq!(shared["tenant"], SHARED_MARKS);
        assert_eq!(shared[MARK]["for"], "alice");
        assert_eq!(AppliedMark::from_payload(&shared), Some(m));
        assert!(crate::tenant::TenantId::parse(SHARED_MARKS).is_err());
    }

    #[test]
    fn a_document_is_no_mark_and_mark_ids_meet_no_document() {
        let doc = super::super::payload::build(None, "d".into(), None, Map::new());
        assert!(!is_mark(&doc));
        assert_eq!(AppliedMark::from_payload(&doc), None);
        assert_ne!(
            point_uuid(None),
            super::super::payload::point_uuid(None, "")
        );
        assert_ne!(point_uuid(Some("a")), point_uuid(Some("b")));
        assert_eq!(point_uuid(Some("a")), point_uuid(Some("a")));
    }
}
