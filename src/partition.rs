//! A tenant's partition: which of the prefix's `cluster.partitions` slices
//! of the tenant space it belongs to.
//!
//! Owns the one hash that decides it. It must agree, bit for bit, with the
//! `partition(P, n)` function of NATS subject transforms, because the ingest
//! stream files a tenant's messages under `<p>.ingest.<partition>.<tenant>`
//! through such a transform while requests are placed by this function:
//! nats-server hashes the selected token with 32-bit FNV-1a and takes the
//! remainder by P (`getHashPartition` in `server/subject_transform.go`). A
//! test publishes through a real stream with that transform and compares.
//! It must never depend on anything but the tenant's id and P, so every
//! worker, of any version, computes the same partition.

/// 32-bit FNV-1a of `bytes`, as Go's `hash/fnv` `New32a`.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u32::from(*b)).wrapping_mul(PRIME))
}

/// The partition, `0..partitions`, of the tenant whose id (its subject
/// token) is `tenant`. `partitions` is at least 1 (checked with the
/// settings).
pub fn partition_of(tenant: &str, partitions: u32) -> u32 {
    fnv1a32(tenant.as_bytes()) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a32_matches_the_published_test_vectors() {
        // From the FNV reference (draft-eastlake-fnv): "", "a", "foobar".
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn a_partition_is_in_range_and_stable() {
        for p in [1u32, 2, 7, 16, 1024] {
            for t in ["alice", "bob", "user-42", "x"] {
                let n = partition_of(t, p);
                assert!(n < p);
                assert_eq!(n, partition_of(t, p));
            }
        }
        assert_eq!(partition_of("anyone", 1), 0);
    }

    #[test]
    fn tenants_spread_over_the_partitions() {
        let p = 16u32;
        let mut counts = vec![0usize; p as usize];
        for i in 0..16_000 {
            counts[partition_of(&format!("user-{i}"), p) as usize] += 1;
        }
        // 1,000 expected per partition; FNV-1a keeps each well within 20 %.
        assert!(
            counts.iter().all(|c| (800..=1200).contains(c)),
            "{counts:?}"
        );
    }
}
