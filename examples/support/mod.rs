//! What the store examples share: the vectors they write and search, made
//! from a seed so that every run writes the same data. Never a measurement.

/// Dimensions of every vector, as in the benchmark's workload.
pub const DIM: usize = 384;

/// A vector of `DIM` values in [-0.5, 0.5), the same for the same `seed`
/// (xorshift).
pub fn vector(seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..DIM)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// Documents `d<i>` for every `i` in `range`: a short text, a category out
/// of 100 in their metadata, and the vector of seed `base + i`.
pub fn records(range: std::ops::Range<u64>, base: u64) -> Vec<tenantvec::store::Record> {
    range
        .map(|i| {
            let mut metadata = serde_json::Map::new();
            metadata.insert(
                "category".into(),
                serde_json::json!(format!("c{}", i % 100)),
            );
            tenantvec::store::Record {
                doc_id: format!("d{i}"),
                text: Some(format!("document {i}")),
                metadata,
                vector: vector(base + i),
            }
        })
        .collect()
}
