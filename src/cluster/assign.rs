//! Which member should own each partition: rendezvous (highest random
//! weight) hashing over the live members.
//!
//! Owns the assignment as a pure function of the member names and P, so
//! every worker that sees the same members computes the same owners, with
//! no message exchanged. A member that joins takes about P/N partitions,
//! each from whichever member had it; one that leaves gives up only its
//! own. It must never decide who holds a partition: the lease does; this
//! only says who should try to.

use crate::partition::fnv1a32;

/// The member (by name) that should own `partition`, or `None` with no
/// members. Ties, which need equal hashes, go to the smaller name, so the
/// answer never depends on the order of `members`.
pub fn owner_of(partition: u32, members: &[String]) -> Option<&str> {
    members
        .iter()
        .map(|m| (weight(m, partition), m.as_str()))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, m)| m)
}

/// The partitions, ascending, that `member` should own among `members`.
pub fn partitions_of(member: &str, members: &[String], partitions: u32) -> Vec<u32> {
    (0..partitions)
        .filter(|p| owner_of(*p, members) == Some(member))
        .collect()
}

/// The weight of `member` for `partition`: the splitmix64 finaliser over
/// the name's FNV-1a hash and the partition, a bijection of that pair, so
/// every (member, partition) weight is as good as independent.
fn weight(member: &str, partition: u32) -> u64 {
    mix(u64::from(fnv1a32(member.as_bytes())) << 32 | u64::from(partition))
}

/// The splitmix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("worker-{i}-a1b2")).collect()
    }

    #[test]
    fn every_partition_has_one_owner_whatever_the_order() {
        let members = names(3);
        let mut reversed = members.clone();
        reversed.reverse();
        for p in 0..64 {
            assert_eq!(owner_of(p, &members), owner_of(p, &reversed));
        }
        let total: usize = members
            .iter()
            .map(|m| partitions_of(m, &members, 64).len())
            .sum();
        assert_eq!(total, 64);
        assert_eq!(owner_of(0, &[]), None);
    }

    #[test]
    fn partitions_spread_evenly() {
        let members = names(4);
        for m in &members {
            let n = partitions_of(m, &members, 256).len();
            // 64 expected each.
            assert!((40..=90).contains(&n), "{m}: {n}");
        }
    }

    #[test]
    fn a_member_that_joins_takes_partitions_only_for_itself() {
        let before = names(3);
        let mut after = before.clone();
        after.push("worker-new-ffff".into());
        let mut moved = 0;
        for p in 0..256 {
            let (old, new) = (owner_of(p, &before), owner_of(p, &after));
            if old != new {
                assert_eq!(new, Some("worker-new-ffff"));
                moved += 1;
            }
        }
        // About a quarter move, all of them to the newcomer.
        assert!((40..=90).contains(&moved), "{moved}");
    }

    #[test]
    fn a_member_that_leaves_gives_up_only_its_own() {
        let before = names(4);
        let after: Vec<String> = before[1..].to_vec();
        for p in 0..256 {
            let old = owner_of(p, &before).unwrap();
            if old != before[0] {
                assert_eq!(owner_of(p, &after), Some(old));
            }
        }
    }
}
