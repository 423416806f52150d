//! The portable export format, `tenantvec.export` version 1: JSON lines.
//!
//! Line 1 is the header:
//!
//! ```text
//! {"format":"tenantvec.export","version":1,"tenant":"alice","dimension":384,
//!  "embedder":{"model":"hashing","dimension":384},"count":2,"exported_at":"2026-11-30T12:00:00Z"}
//! ```
//!
//! then exactly `count` lines, one document each:
//!
//! ```text
//! {"id":"a1","text":"Morning run","metadata":{"category":"sport"},"vector":"<base64>"}
//! ```
//!
//! `embedder` is the tenant's embedder record (the model that made its
//! vectors), or `null` when the worker never embedded for it (vectors sent by
//! clients). `vector` is the base64 (standard alphabet, padded) of the
//! vector's `dimension` floats as little-endian IEEE-754 f32: 4 bytes each,
//! exact (no decimal round trip), about a third the size of a JSON array.
//! `text` is absent for a document stored without one; `metadata` is always
//! an object.
//!
//! Owns encoding and decoding of one line at a time, with every check a line
//! can have on its own (format, version, base64, dimension, finite and
//! non-zero vectors). Plain functions: it must never do I/O, and never hold
//! more than the line it is given.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::embed::record::EmbedderRecord;
use crate::protocol::ServiceError;
use crate::store::Record;

/// The `format` of line 1.
pub const FORMAT: &str = "tenantvec.export";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;

/// Line 1 of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// The tenant it was exported from (an import may go to another one).
    pub tenant: String,
    pub dimension: usize,
    /// The model that made the vectors, if the worker made them.
    pub embedder: Option<EmbedderRecord>,
    /// Document lines that follow.
    pub count: u64,
    /// RFC 3339, UTC.
    pub exported_at: String,
}

impl Header {
    pub fn new(
        tenant: &str,
        dimension: usize,
        embedder: Option<EmbedderRecord>,
        count: u64,
    ) -> Self {
        Self {
            format: FORMAT.to_owned(),
            version: VERSION,
            tenant: tenant.to_owned(),
            dimension,
            embedder,
            count,
            exported_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
        }
    }
}

/// A document line as written.
#[derive(Serialize)]
struct LineOut<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    metadata: &'a Map<String, Value>,
    vector: String,
}

/// A document line as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn {
    id: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
    vector: String,
}

/// The header as one line, with its newline.
pub fn encode_header(header: &Header) -> Vec<u8> {
    let mut line = serde_json::to_vec(header).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Append one document's line, with its newline, to `out`.
pub fn encode_doc(record: &Record, out: &mut Vec<u8>) {
    let line = LineOut {
        id: &record.doc_id,
        text: record.text.as_deref(),
        metadata: &record.metadata,
        vector: encode_vector(&record.vector),
    };
    // Strings, a map of JSON values and base64 cannot fail to serialise.
    let _ = serde_json::to_writer(&mut *out, &line);
    out.push(b'\n');
}

pub fn encode_vector(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    BASE64.encode(bytes)
}

/// The vector a `vector` field holds; `dimension` floats exactly.
pub fn decode_vector(text: &str, dimension: usize) -> Result<Vec<f32>, String> {
    let bytes = BASE64
        .decode(text)
        .map_err(|e| format!("vector is not base64: {e}"))?;
    if bytes.len() != dimension * 4 {
        return Err(format!(
            "vector has {} bytes, {dimension} dimensions take {}",
            bytes.len(),
            dimension * 4
        ));
    }
    let vector: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if vector.iter().any(|x| !x.is_finite()) {
        return Err("vector has a value that is not a finite f32".into());
    }
    if vector.iter().all(|x| *x == 0.0) {
        return Err("vector is all zeros".into());
    }
    Ok(vector)
}

/// Line 1, checked: this format, a version this build reads.
pub fn decode_header(line: &str) -> Result<Header, ServiceError> {
    let refuse = |why: String| ServiceError::bad_request(format!("not a tenantvec export: {why}"));
    let value: Value = serde_json::from_str(line).map_err(|e| refuse(format!("line 1: {e}")))?;
    if value.get("format").and_then(Value::as_str) != Some(FORMAT) {
        return Err(refuse(format!("line 1 has no \"format\": \"{FORMAT}\"")));
    }
    let header: Header =
        serde_json::from_value(value).map_err(|e| refuse(format!("line 1: {e}")))?;
    if header.version != VERSION {
        return Err(ServiceError::bad_request(format!(
            "export format version {} is not supported (this worker reads version {VERSION})",
            header.version
        )));
    }
    if header.dimension == 0 {
        return Err(refuse("line 1: dimension is 0".into()));
    }
    Ok(header)
}

/// Document line `n` (1-based, the header is line 1). With `dimension`,
/// the vector is decoded and checked; without (re-embedding), it is
/// ignored and the text is required instead.
pub fn decode_doc(line: &str, n: u64, dimension: Option<usize>) -> Result<Record, ServiceError> {
    let bad = |why: String| ServiceError::bad_request(format!("export line {n}: {why}"));
    let doc: LineIn = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
    if doc.id.is_empty() {
        return Err(bad("id is empty".into()));
    }
    let vector = match dimension {
        Some(d) => decode_vector(&doc.vector, d).map_err(|e| {
            let err = bad(format!("document {:?}: {e}", doc.id));
            if e.contains("dimensions take") {
                ServiceError::dimension_mismatch(err.message)
            } else {
                err
            }
        })?,
        None if doc.text.as_deref().is_none_or(|t| t.trim().is_empty()) => {
            return Err(bad(format!(
                "document {:?} has no text to embed again",
                doc.id
            )))
        }
        None => Vec::new(),
    };
    Ok(Record {
        doc_id: doc.id,
        text: doc.text,
        metadata: doc.metadata,
        vector,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;
    use serde_json::json;

    fn record(id: &str, vector: Vec<f32>) -> Record {
        let Value::Object(metadata) = json!({"category": "sport", "n": 1.5, "tags": ["a"]}) else {
            unreachable!()
        };
        Record {
            doc_id: id.into(),
            text: Some("Morning run, \"5 km\"\nin the park".into()),
            metadata,
            vector,
        }
    }

    #[test]
    fn a_document_round_trips_bit_for_bit() {
        let r = record("a1", vec![0.1, -2.5e-8, f32::MAX, 1.0 / 3.0]);
        let mut out = Vec::new();
        encode_doc(&r, &mut out);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        let line = std::str::from_utf8(&out).unwrap().trim_end();
        let back = decode_doc(line, 2, Some(4)).unwrap();
        assert_eq!(back, r);
        let no_text = Record { text: None, ..r };
        out.clear();
        encode_doc(&no_text, &mut out);
        assert!(!String::from_utf8_lossy(&out).contains("\"text\""));
    }

    #[test]
    fn the_header_is_checked() {
        let h = Header::new("alice", 8, None, 3);
        let line = encode_header(&h);
        let back = decode_header(std::str::from_utf8(&line).unwrap().trim_end()).unwrap();
        assert_eq!(back, h);
        let foreign = decode_header(r#"{"format":"other","version":1}"#).unwrap_err();
        assert!(
            foreign.message.contains("not a tenantvec export"),
            "{foreign}"
        );
        let future = json!({"format": FORMAT, "version": 2, "tenant": "a", "dimension": 8,
            "embedder": null, "count": 0, "exported_at": ""});
        let e = decode_header(&future.to_string()).unwrap_err();
        assert!(e.message.contains("version 2"), "{e}");
        assert_eq!(
            decode_header("{nope").unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn bad_vectors_are_refused_with_the_line() {
        let r = record("a1", vec![0.5; 8]);
        let mut out = Vec::new();
        encode_doc(&r, &mut out);
        let line = std::str::from_utf8(&out).unwrap().trim_end();
        let e = decode_doc(line, 7, Some(4)).unwrap_err();
        assert_eq!(e.code, ErrorCode::DimensionMismatch);
        assert!(e.message.contains("line 7"), "{e}");
        let zero = line.replace(&encode_vector(&[0.5; 8]), &encode_vector(&[0.0; 8]));
        assert!(decode_doc(&zero, 1, Some(8)).is_err());
        let nan = line.replace(&encode_vector(&[0.5; 8]), &encode_vector(&[f32::NAN; 8]));
        assert!(decode_doc(&nan, 1, Some(8)).is_err());
        let junk = line.replace(&encode_vector(&[0.5; 8]), "!!!");
        assert!(decode_doc(&junk, 1, Some(8))
            .unwrap_err()
            .message
            .contains("base64"));
        assert!(decode_doc(r#"{"id":"x"}"#, 1, Some(8)).is_err());
        assert!(decode_doc(r#"{"id":"","vector":""}"#, 1, Some(8)).is_err());
        // Re-embedding ignores the vector and needs the text.
        assert!(decode_doc(&junk, 1, None).is_ok());
        assert!(decode_doc(r#"{"id":"x","vector":""}"#, 1, None).is_err());
    }
}
