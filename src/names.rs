//! The NATS names of one subject prefix: its subjects, the ingest and
//! dead-letter streams, the durable consumers and the suffix every bucket
//! of the prefix carries.
//!
//! Owns the naming rule, so that two deployments on one NATS account (two
//! prefixes) never share a stream, a consumer or a bucket, and so that the
//! worker, its tools and its clients agree on every name. It must never
//! talk to NATS: it only names.

use async_nats::jetstream::stream;

use crate::protocol::DEFAULT_PREFIX;
use crate::tenant::TenantId;

/// Names of the streams and the consumer for one prefix: the defaults for the
/// default prefix, suffixed with the prefix otherwise so two deployments on
/// one NATS account do not share a queue.
#[derive(Debug, Clone)]
pub struct Names {
    pub ingest_stream: String,
    pub deadletter_stream: String,
    pub consumer: String,
    pub ingest_subjects: String,
    pub deadletter_subjects: String,
    prefix: String,
    /// With `cluster.enabled`: the stream files each message under its
    /// tenant's partition, `<p>.ingest.<partition>.<tenant>`.
    partitions: Option<u32>,
}

/// What the names of a prefix's streams, consumer and bucket end with:
/// nothing for the default prefix, else `_` and the prefix in capitals with
/// anything but letters and digits as `_`, so two deployments on one NATS
/// account never share one.
pub fn name_suffix(prefix: &str) -> String {
    if prefix == DEFAULT_PREFIX {
        return String::new();
    }
    let clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("_{clean}")
}

impl Names {
    /// The partitions the stream files messages by, when it does.
    pub fn partitions(&self) -> Option<u32> {
        self.partitions
    }

    pub fn new(prefix: &str) -> Self {
        let suffix = name_suffix(prefix);
        Self {
            ingest_stream: format!("TENANTVEC_INGEST{suffix}"),
            deadletter_stream: format!("TENANTVEC_DEADLETTER{suffix}"),
            consumer: format!("tenantvec-ingest{}", suffix.to_ascii_lowercase()),
            ingest_subjects: format!("{prefix}.ingest.*"),
            deadletter_subjects: format!("{prefix}.deadletter.>"),
            prefix: prefix.to_owned(),
            partitions: None,
        }
    }

    /// The names of a prefix whose tenants are partitioned over a fleet.
    pub fn partitioned(prefix: &str, partitions: u32) -> Self {
        Self {
            partitions: Some(partitions),
            ..Self::new(prefix)
        }
    }

    /// The subject the stream files a tenant's message under.
    pub fn stored_subject(&self, tenant: &str) -> String {
        match self.partitions {
            Some(p) => format!(
                "{}.ingest.{}.{tenant}",
                self.prefix,
                crate::partition::partition_of(tenant, p)
            ),
            None => self.ingest_subject(tenant),
        }
    }

    /// Filters that together match every stored message of `tenant`,
    /// whether or not the stream partitions (a client does not know).
    pub fn stored_filters(&self, tenant: &str) -> [String; 2] {
        [
            self.ingest_subject(tenant),
            format!("{}.ingest.*.{tenant}", self.prefix),
        ]
    }

    /// A filter that matches every message filed by partition.
    pub fn all_partitioned(&self) -> String {
        format!("{}.ingest.*.*", self.prefix)
    }

    /// Whether `name` is one of the partitions' durable consumers.
    pub fn is_partition_consumer(&self, name: &str) -> bool {
        name.strip_prefix(&self.consumer)
            .and_then(|rest| rest.strip_prefix("-p"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }

    /// A filter that matches every stored ingest message.
    pub fn all_stored(&self) -> String {
        format!("{}.ingest.>", self.prefix)
    }

    /// The durable consumer of one partition, and its filter.
    pub fn partition_consumer(&self, partition: u32) -> (String, String) {
        (
            format!("{}-p{partition}", self.consumer),
            format!("{}.ingest.{partition}.*", self.prefix),
        )
    }

    /// The stream's subject transform: `partition(P, 1)` of the tenant
    /// token, the function [`partition_of`](crate::partition::partition_of) computes.
    pub fn transform(&self) -> Option<stream::SubjectTransform> {
        self.partitions.map(|p| stream::SubjectTransform {
            source: self.ingest_subjects.clone(),
            destination: format!(
                "{}.ingest.{{{{partition({p},1)}}}}.{{{{wildcard(1)}}}}",
                self.prefix
            ),
        })
    }

    /// `<p>.ingest.<tenant>`
    pub fn ingest_subject(&self, tenant: &str) -> String {
        format!("{}.ingest.{tenant}", self.prefix)
    }

    /// `<p>.deadletter.<tenant>`, `_invalid` for a tenant token that is not one.
    pub fn deadletter_subject(&self, tenant: Option<&TenantId>) -> String {
        let token = tenant.map_or("_invalid", |t| t.as_str());
        format!("{}.deadletter.{token}", self.prefix)
    }
}

/// The prefix a worker names its streams, buckets and stored subjects
/// from: the subject prefix, and in a region `<prefix>.<region>` (the
/// region's names never take another region's subjects).
pub fn storage_prefix(prefix: &str, region: Option<&str>) -> String {
    match region {
        Some(r) => format!("{prefix}.{r}"),
        None => prefix.to_owned(),
    }
}

/// The tenant registry's bucket of a prefix: `TENANTVEC_TENANTS`, and for
/// another prefix `TENANTVEC_TENANTS_<PREFIX>` (as every bucket).
pub fn tenants_bucket(prefix: &str) -> String {
    format!("TENANTVEC_TENANTS{}", name_suffix(prefix))
}

/// The KV bucket of the prefix's tenants' wrapped data keys
/// (`encryption.enabled`).
pub fn keys_bucket(prefix: &str) -> String {
    format!("TENANTVEC_KEYS{}", name_suffix(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_consumers_are_told_from_the_others() {
        let names = Names::new("tenantvec");
        assert!(names.is_partition_consumer("tenantvec-ingest-p0"));
        assert!(names.is_partition_consumer("tenantvec-ingest-p15"));
        assert!(!names.is_partition_consumer("tenantvec-ingest"));
        assert!(!names.is_partition_consumer("tenantvec-ingest-px"));
        assert!(!names.is_partition_consumer("tenantvec-ingest-p"));
    }
}
