//! The built-in offline embedder: feature hashing of words and character
//! trigrams.
//!
//! Owns a deterministic text-to-vector map that needs no model and no network.
//! It is lexical, not semantic: texts that share words and spellings land
//! close together, synonyms do not. It must never change its output for a
//! given text and dimension, since stored vectors were made with it.

use crate::embed::{Embedder, Purpose};
use crate::protocol::ServiceError;

/// Feature hashing into `dimension` buckets with a sign bit, L2-normalised.
///
/// Each lower-cased word adds weight 1.0 to its bucket, each character
/// trigram of `#word#` adds 0.5; a second hash bit picks the sign so that
/// collisions cancel out on average instead of piling up.
#[derive(Debug, Clone)]
pub struct HashingEmbedder {
    dimension: usize,
}

impl HashingEmbedder {
    pub fn new(dimension: usize) -> Self {
        Self { dimension }
    }

    fn add(&self, v: &mut [f32], feature: &[u8], weight: f32) {
        let h = fnv1a(feature);
        let bucket = (h % self.dimension as u64) as usize;
        let sign = if (h >> 63) == 0 { 1.0 } else { -1.0 };
        v[bucket] += sign * weight;
    }
}

/// FNV-1a, 64 bit: a fixed, documented hash, so vectors are the same on every
/// build and platform (std's hasher makes no such promise).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Embedder for HashingEmbedder {
    fn name(&self) -> &str {
        "hashing"
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed(&self, texts: &[&str], _: Purpose) -> Result<Vec<Vec<f32>>, ServiceError> {
        texts.iter().map(|t| self.vector(t)).collect()
    }
}

impl HashingEmbedder {
    /// The vector of one text; queries and documents alike.
    pub fn vector(&self, text: &str) -> Result<Vec<f32>, ServiceError> {
        let mut v = vec![0.0f32; self.dimension];
        let lower = text.to_lowercase();
        let mut padded = Vec::with_capacity(64);
        for word in lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            self.add(&mut v, word.as_bytes(), 1.0);
            padded.clear();
            padded.push(b'#');
            padded.extend_from_slice(word.as_bytes());
            padded.push(b'#');
            for gram in padded.windows(3) {
                self.add(&mut v, gram, 0.5);
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm == 0.0 {
            return Err(ServiceError::bad_request(
                "text has no letters or digits to embed; send a vector instead",
            ));
        }
        v.iter_mut().for_each(|x| *x /= norm);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn deterministic_normalised_and_lexical() {
        let e = HashingEmbedder::new(384);
        let a = e.vector("Morning run in the park").unwrap();
        assert_eq!(a, e.vector("morning RUN in the park").unwrap());
        assert!((cos(&a, &a) - 1.0).abs() < 1e-5);
        let near = e.vector("a run in the park each morning").unwrap();
        let far = e.vector("quarterly banking insurance report").unwrap();
        assert!(cos(&a, &near) > cos(&a, &far) + 0.2);
        assert!(e.vector("  !! ").is_err());
    }
}
