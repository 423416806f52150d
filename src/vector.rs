//! Vectors on the wire: a JSON array of numbers, or a string holding base64
//! (standard alphabet, padded) of the vector as little-endian IEEE-754 f32,
//! which is what the OpenAI embeddings API returns with
//! `"encoding_format": "base64"`.
//!
//! Owns both encodings, in both directions, and nothing else: it decodes
//! straight into an `f32` buffer (never through `serde_json::Value`) and
//! leaves every check of the values (finite, not all zero, the tenant's
//! dimension) to the layers that know the rules. It must never allocate more
//! than the vector it returns.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Marks a decode error that is a base64 vector of a length no f32 vector
/// has: [`crate::protocol::decode`] answers it `dimension_mismatch`, as the
/// protocol says, where every other malformed body is `bad_request`.
pub const WRONG_LENGTH: &str = "base64 vector whose byte length is not a multiple of 4";

/// How a reply carries vectors: arrays unless the request asks otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VectorEncoding {
    #[default]
    Array,
    Base64,
}

/// Base64 of the vector's little-endian f32 bytes.
pub fn to_base64(vector: &[f32]) -> String {
    let mut bytes = Vec::with_capacity(vector.len() * 4);
    for x in vector {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    STANDARD.encode(bytes)
}

/// The vector a base64 string holds; `Err` names what is wrong with it.
pub fn from_base64(text: &str) -> Result<Vec<f32>, String> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| format!("vector is a string but not base64: {e}"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!("{WRONG_LENGTH} ({} bytes)", bytes.len()));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// `#[serde(deserialize_with = "crate::vector::deserialize_opt")]` on an
/// `Option<Vec<f32>>`: an array, a base64 string, or null.
pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f32>>, D::Error> {
    d.deserialize_option(OptVisitor)
}

struct OptVisitor;

impl<'de> Visitor<'de> for OptVisitor {
    type Value = Option<Vec<f32>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a vector: an array of numbers or a base64 string")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(VectorVisitor).map(Some)
    }
}

struct VectorVisitor;

impl<'de> Visitor<'de> for VectorVisitor {
    type Value = Vec<f32>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a vector: an array of numbers or a base64 string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        from_base64(text).map_err(E::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // The size hint is the caller's claim, so it only caps the first
        // allocation; the vector grows with what is really there.
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(x) = seq.next_element::<f32>()? {
            v.push(x);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        #[serde(default, deserialize_with = "deserialize_opt")]
        vector: Option<Vec<f32>>,
    }

    fn parse(json: &str) -> Result<Option<Vec<f32>>, String> {
        serde_json::from_str::<Holder>(json)
            .map(|h| h.vector)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn arrays_and_base64_mean_the_same() {
        let v = vec![0.25f32, -1.5, 3.0e-7, f32::MAX];
        let b64 = to_base64(&v);
        assert_eq!(
            parse(&format!(r#"{{"vector": "{b64}"}}"#)).unwrap(),
            Some(v)
        );
        assert_eq!(
            parse(r#"{"vector": [0.25, -1.5, 1]}"#).unwrap(),
            Some(vec![0.25, -1.5, 1.0])
        );
        assert_eq!(parse(r#"{"vector": null}"#).unwrap(), None);
        assert_eq!(parse(r#"{}"#).unwrap(), None);
    }

    /// The OpenAI embeddings API's base64 for [1.0, 2.0]: little-endian f32.
    #[test]
    fn base64_is_little_endian_f32() {
        assert_eq!(to_base64(&[1.0, 2.0]), "AACAPwAAAEA=");
        assert_eq!(from_base64("AACAPwAAAEA=").unwrap(), vec![1.0, 2.0]);
    }

    #[test]
    fn bad_strings_say_what_is_wrong() {
        let e = parse(r#"{"vector": "not base64!"}"#).unwrap_err();
        assert!(e.contains("not base64"), "{e}");
        // 3 bytes: no f32 vector has that length.
        let e = parse(r#"{"vector": "AAAA"}"#).unwrap_err();
        assert!(e.contains(WRONG_LENGTH), "{e}");
        let e = parse(r#"{"vector": {"a": 1}}"#).unwrap_err();
        assert!(e.contains("array of numbers or a base64 string"), "{e}");
    }
}
