//! From a request body to a validated [`Command`].
//!
//! Owns every check that needs only the request itself and the configured
//! limits (shape, sizes, `top_k`, filters, vectors that cannot be compared),
//! for request-reply and JetStream alike. It must never look at a store: what
//! depends on the tenant's data (its dimension) is checked by the store.

use crate::command::{Command, QueryInput, SearchCommand};
use crate::config::{Limits, Settings};
use crate::filter::Filter;
use crate::protocol::{
    decode, CountRequest, DeleteRequest, Doc, EmptyRequest, GetRequest, SearchRequest,
    ServiceError, UpsertRequest, Verb,
};
use crate::store::Selector;

/// Longest vector accepted before the store compares it with the tenant's
/// dimension (the largest dimension a store may be created with).
const MAX_VECTOR_LEN: usize = 65536;

/// The command a body asks for on `verb`.
pub fn command(verb: Verb, body: &[u8], settings: &Settings) -> Result<Command, ServiceError> {
    let limits = &settings.limits;
    match verb {
        Verb::Upsert => upsert(decode::<UpsertRequest>(body)?, limits),
        Verb::Search => search(decode::<SearchRequest>(body)?, limits),
        Verb::Get => {
            let req = decode::<GetRequest>(body)?;
            check_ids(&req.doc_ids, limits)?;
            Ok(Command::Get {
                doc_ids: req.doc_ids,
                with_vectors: req.with_vectors,
                encoding: req.vector_encoding,
            })
        }
        Verb::Delete => {
            let req = decode::<DeleteRequest>(body)?;
            match (req.doc_ids, req.filter) {
                (Some(ids), None) => {
                    check_ids(&ids, limits)?;
                    Ok(Command::Delete(Selector::Ids(ids)))
                }
                (None, Some(filter)) => {
                    Ok(Command::Delete(Selector::Filter(Filter::parse(&filter)?)))
                }
                (Some(_), Some(_)) => Err(ServiceError::bad_request(
                    "delete takes doc_ids or filter, not both",
                )),
                (None, None) => Err(ServiceError::bad_request(
                    "delete needs doc_ids or a filter (to erase a whole tenant, use drop)",
                )),
            }
        }
        Verb::Count => {
            let req = decode::<CountRequest>(body)?;
            Ok(Command::Count(Filter::parse_opt(req.filter.as_ref())?))
        }
        Verb::Drop => {
            decode::<EmptyRequest>(body)?;
            Ok(Command::Drop)
        }
        Verb::Export => crate::backup::decode_export(body).map(|r| Command::Export(Box::new(r))),
        Verb::Import => crate::backup::decode_import(body).map(|r| Command::Import(Box::new(r))),
        Verb::Rekey => {
            decode::<EmptyRequest>(body)?;
            Ok(Command::Rekey)
        }
    }
}

/// Validate an upsert request (also the body of a JetStream ingest message).
pub fn upsert(req: UpsertRequest, limits: &Limits) -> Result<Command, ServiceError> {
    if req.documents.len() > limits.max_documents {
        return Err(ServiceError::too_large(format!(
            "{} documents in one request, at most {} are allowed",
            req.documents.len(),
            limits.max_documents
        )));
    }
    for doc in &req.documents {
        check_doc(doc, limits)?;
    }
    Ok(Command::Upsert(req.documents))
}

fn check_doc(doc: &Doc, limits: &Limits) -> Result<(), ServiceError> {
    check_doc_id(&doc.doc_id, limits)?;
    if let Some(text) = &doc.text {
        if text.len() > limits.max_text_bytes {
            return Err(ServiceError::too_large(format!(
                "document {:?}: text is {} bytes, at most {} are allowed",
                doc.doc_id,
                text.len(),
                limits.max_text_bytes
            )));
        }
    }
    check_metadata(doc, limits)?;
    match &doc.vector {
        Some(v) => check_vector(v)
            .map_err(|e| e.with_message(format!("document {:?}: {}", doc.doc_id, e.message))),
        None if doc.text.is_none() => Err(ServiceError::bad_request(format!(
            "document {:?} needs text or a vector",
            doc.doc_id
        ))),
        None => Ok(()),
    }
}

fn check_metadata(doc: &Doc, limits: &Limits) -> Result<(), ServiceError> {
    fn depth(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    let levels = doc.metadata.values().map(depth).max().unwrap_or(0) + 1;
    if levels > limits.max_metadata_depth {
        return Err(ServiceError::too_large(format!(
            "document {:?}: metadata nests {levels} levels deep, at most {} are allowed",
            doc.doc_id, limits.max_metadata_depth
        )));
    }
    let bytes = serde_json::to_vec(&doc.metadata).map_or(usize::MAX, |b| b.len());
    if bytes > limits.max_metadata_bytes {
        return Err(ServiceError::too_large(format!(
            "document {:?}: metadata is {bytes} bytes of JSON, at most {} are allowed",
            doc.doc_id, limits.max_metadata_bytes
        )));
    }
    Ok(())
}

fn check_doc_id(doc_id: &str, limits: &Limits) -> Result<(), ServiceError> {
    if doc_id.is_empty() {
        return Err(ServiceError::bad_request("doc_id is empty"));
    }
    if doc_id.len() > limits.max_doc_id_bytes {
        return Err(ServiceError::bad_request(format!(
            "doc_id is {} bytes, at most {} are allowed",
            doc_id.len(),
            limits.max_doc_id_bytes
        )));
    }
    Ok(())
}

fn check_ids(ids: &[String], limits: &Limits) -> Result<(), ServiceError> {
    if ids.len() > limits.max_ids {
        return Err(ServiceError::too_large(format!(
            "{} doc_ids in one request, at most {} are allowed",
            ids.len(),
            limits.max_ids
        )));
    }
    ids.iter().try_for_each(|id| check_doc_id(id, limits))
}

/// A vector must be comparable by cosine: not empty, finite, not all zero.
fn check_vector(v: &[f32]) -> Result<(), ServiceError> {
    if v.is_empty() {
        return Err(ServiceError::bad_request("vector is empty"));
    }
    if v.len() > MAX_VECTOR_LEN {
        return Err(ServiceError::too_large(format!(
            "vector has {} dimensions, at most {MAX_VECTOR_LEN} are allowed",
            v.len()
        )));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(ServiceError::bad_request(
            "vector has a value that is not a finite f32",
        ));
    }
    if v.iter().all(|x| *x == 0.0) {
        return Err(ServiceError::bad_request(
            "vector is all zeros; cosine similarity is undefined for it",
        ));
    }
    Ok(())
}

fn search(req: SearchRequest, limits: &Limits) -> Result<Command, ServiceError> {
    let input = match (req.query, req.vector) {
        (Some(q), None) if q.trim().is_empty() => {
            return Err(ServiceError::bad_request("query is empty"))
        }
        (Some(q), None) if q.len() > limits.max_text_bytes => {
            return Err(ServiceError::too_large(format!(
                "query is {} bytes, at most {} are allowed",
                q.len(),
                limits.max_text_bytes
            )))
        }
        (Some(q), None) => QueryInput::Text(q),
        (None, Some(v)) => {
            check_vector(&v)?;
            QueryInput::Vector(v)
        }
        (Some(_), Some(_)) => {
            return Err(ServiceError::bad_request(
                "search takes query or vector, not both",
            ))
        }
        (None, None) => return Err(ServiceError::bad_request("search needs query or vector")),
    };
    let top_k = match req.top_k {
        None => None,
        Some(k) if k < 1 => {
            return Err(ServiceError::bad_request(format!(
                "top_k is {k}, it must be at least 1"
            )))
        }
        Some(k) if k as u64 > limits.max_top_k as u64 => {
            return Err(ServiceError::too_large(format!(
                "top_k is {k}, at most {} is allowed",
                limits.max_top_k
            )))
        }
        Some(k) => Some(k as usize),
    };
    Ok(Command::Search(SearchCommand {
        input,
        top_k,
        filter: Filter::parse_opt(req.filter.as_ref())?,
        with_vectors: req.with_vectors,
        encoding: req.vector_encoding,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    fn code(verb: Verb, body: &str) -> ErrorCode {
        command(verb, body.as_bytes(), &Settings::defaults())
            .unwrap_err()
            .code
    }

    #[test]
    fn refuses_with_the_right_code() {
        use ErrorCode::*;
        assert_eq!(
            code(Verb::Search, r#"{"query": "a", "top_k": 0}"#),
            BadRequest
        );
        assert_eq!(
            code(Verb::Search, r#"{"query": "a", "top_k": 1001}"#),
            TooLarge
        );
        assert_eq!(
            code(Verb::Search, r#"{"query": "a", "vector": [1]}"#),
            BadRequest
        );
        assert_eq!(code(Verb::Search, r#"{"vector": [0, 0]}"#), BadRequest);
        assert_eq!(
            code(Verb::Upsert, r#"{"documents": [{"doc_id": ""}]}"#),
            BadRequest
        );
        assert_eq!(
            code(Verb::Upsert, r#"{"documents": [{"doc_id": "a"}]}"#),
            BadRequest
        );
        let long = format!(
            r#"{{"documents": [{{"doc_id": "{}", "text": "x"}}]}}"#,
            "a".repeat(257)
        );
        assert_eq!(code(Verb::Upsert, &long), BadRequest);
        let big = format!(
            r#"{{"documents": [{{"doc_id": "a", "text": "{}"}}]}}"#,
            "a".repeat(70000)
        );
        assert_eq!(code(Verb::Upsert, &big), TooLarge);
        let deep = r#"{"documents": [{"doc_id": "a", "text": "x", "metadata": {"a": [[[[[[[[1]]]]]]]]}}]}"#;
        assert_eq!(code(Verb::Upsert, deep), TooLarge);
        let wide = format!(
            r#"{{"documents": [{{"doc_id": "a", "text": "x", "metadata": {{"a": "{}"}}}}]}}"#,
            "m".repeat(17000)
        );
        assert_eq!(code(Verb::Upsert, &wide), TooLarge);
        assert_eq!(code(Verb::Delete, r#"{}"#), BadRequest);
        assert_eq!(
            code(Verb::Delete, r#"{"doc_ids": ["a"], "filter": {"a": 1}}"#),
            BadRequest
        );
        assert_eq!(code(Verb::Count, r#"{"filter": {}}"#), BadRequest);
        assert_eq!(code(Verb::Drop, r#"{"x": 1}"#), BadRequest);
    }

    #[test]
    fn top_k_is_left_to_the_tenant_when_absent() {
        let cmd = command(Verb::Search, br#"{"query": "walk"}"#, &Settings::defaults()).unwrap();
        let Command::Search(s) = cmd else { panic!() };
        assert_eq!(s.top_k, None);
    }
}
