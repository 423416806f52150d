//! Request partitions: tenant requests spread over connections by tenant.
//!
//! Owns the subjects of `nats.request_partitions`, the NATS server's mapping
//! that makes them, and the start-up check that the server's mapping and the
//! worker's setting agree. Why: every request reaches the worker through one
//! subscription, which keeps each tenant's requests in order, and so through
//! one TCP connection, where a flood of one tenant's large requests queues
//! ahead of everybody else's (head-of-line blocking in the server's outbound
//! buffer and in the connection's reader). NATS cannot split one
//! subscription's subjects by tenant, but its server can: a subject mapping
//! with `partition()` rewrites `<p>.<verb>.<tenant>` to
//! `<p>.<verb>.<tenant>.<k>`, k a hash of the tenant token, before any
//! subscription sees it. The worker then takes `<p>.*.*.<k>` on connection
//! k: a tenant's requests still arrive on one subscription, in order, and a
//! flood fills only its own partition's connection. Clients see nothing of
//! it; they publish to the subjects of the protocol as before.
//!
//! It must never guess: a worker whose setting disagrees with the server's
//! mapping would leave requests without a responder, so [`check`] refuses
//! to start it, with the configuration to apply.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::protocol::Verb;

/// Tenant tokens of the start-up probes (`_tenantvec-probe-0` to `-3`):
/// never a valid tenant id (they start with `_`), so no worker opens a
/// store for one, and dispatch drops them without a reply.
const PROBE_PREFIX: &str = "_tenantvec-probe-";

/// Whether `token` is the tenant token of a start-up probe.
pub fn is_probe(token: &str) -> bool {
    token.starts_with(PROBE_PREFIX)
}

/// What partition `k`'s connection subscribes to: `<p>.*.*.<k>`.
pub fn subscription(prefix: &str, k: usize) -> String {
    format!("{prefix}.*.*.{k}")
}

/// The subject a client sent, from the subject a partition's subscription
/// received (`<p>.<verb>.<tenant>.<k>` → `<p>.<verb>.<tenant>`).
pub fn unpartitioned(subject: &str) -> Option<&str> {
    let (original, k) = subject.rsplit_once('.')?;
    (!k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())).then_some(original)
}

/// The tenant verbs request partitions map (see [`Verb::partitioned`]).
fn mapped_verbs() -> impl Iterator<Item = Verb> {
    Verb::ALL.into_iter().filter(|v| v.partitioned())
}

/// The server's subject mappings for `partitions` partitions: one per tenant
/// verb of a tenant's data. Admin verbs and the stream subjects (ingest, dead letters) are not
/// mapped: the former are served on the main connection, the latter are
/// JetStream's.
pub fn mappings(prefix: &str, partitions: usize) -> Vec<(String, String)> {
    mapped_verbs()
        .map(|v| {
            let v = v.as_str();
            (
                format!("{prefix}.{v}.*"),
                format!("{prefix}.{v}.{{{{wildcard(1)}}}}.{{{{partition({partitions},1)}}}}"),
            )
        })
        .collect()
}

/// The `mappings` block of a nats-server configuration file (for the
/// server's default account; inside an `accounts` entry for another).
pub fn server_config(prefix: &str, partitions: usize) -> String {
    let mut out = format!(
        "# tenantvec request partitions: nats.request_partitions = {partitions}, prefix {prefix:?}\n\
         mappings = {{\n"
    );
    for (from, to) in mappings(prefix, partitions) {
        out.push_str(&format!("  \"{from}\": \"{to}\"\n"));
    }
    out.push_str("}\n");
    out
}

/// Probe tenants per verb: each probe lands in its tenant's partition, so
/// more tenants make a server that maps to more partitions than the worker
/// serves likelier to show (with 4 a verb, 32 in all, a mapping one larger
/// than a worker's 8 partitions shows with 98% odds).
const PROBES_PER_VERB: usize = 4;

/// Wait until the server has taken every subscription `client` sent so far:
/// a message to itself comes back once the server processed what came
/// before it on this connection. (`flush` only empties our write buffer.)
/// Needed before the worker says it serves: its PING is answered on another
/// connection, which says nothing of this one.
pub async fn settled(client: &async_nats::Client, timeout: Duration) -> anyhow::Result<()> {
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await?;
    client.publish(inbox, Bytes::new()).await?;
    client.flush().await?;
    match tokio::time::timeout(timeout, echo.next()).await {
        Ok(Some(_)) => Ok(()),
        _ => anyhow::bail!("the NATS server did not confirm a request partition's subscription"),
    }
}

/// What the probes found: for each verb and probe, the partition its subject
/// was mapped to, or `None` when it arrived unmapped. Probes that did not
/// arrive are missing.
type Found = BTreeMap<(&'static str, usize), Option<usize>>;

/// Whether what the probes found agrees with `partitions`, as the error to
/// stop the start with. Plain logic, apart from [`check`] for its tests.
fn verdict(found: &Found, prefix: &str, partitions: usize) -> Result<(), String> {
    let mapped: BTreeSet<usize> = found.values().flatten().copied().collect();
    let unmapped: BTreeSet<&str> = found
        .iter()
        .filter(|(_, k)| k.is_none())
        .map(|((v, _), _)| *v)
        .collect();
    let unmapped: Vec<&str> = unmapped.into_iter().collect();
    let missing: Vec<&str> = mapped_verbs()
        .map(|v| v.as_str())
        .filter(|v| (0..PROBES_PER_VERB).any(|i| !found.contains_key(&(*v, i))))
        .collect();
    let config = || server_config(prefix, partitions);
    if partitions == 0 {
        if mapped.is_empty() {
            return Ok(());
        }
        return Err(format!(
            "the NATS server maps tenant requests to request partitions (up to partition {}), \
             but nats.request_partitions is 0, so nobody would serve them: set it to the \
             mapping's partition count, or remove the mapping",
            mapped.last().copied().unwrap_or(0)
        ));
    }
    if !unmapped.is_empty() || !missing.is_empty() {
        return Err(format!(
            "nats.request_partitions is {partitions}, but the NATS server does not map \
             {} of prefix {prefix:?} to partitions{}: add this to the server's configuration \
             and reload it (`tenantvec nats-mappings` prints it):\n{}",
            [unmapped, missing.clone()].concat().join(", "),
            if missing.is_empty() {
                String::new()
            } else {
                " (their probes did not arrive at all: does the worker's NATS user may \
                 publish and subscribe to the prefix's subjects?)"
                    .to_owned()
            },
            config()
        ));
    }
    if let Some(k) = mapped.iter().find(|k| **k >= partitions) {
        return Err(format!(
            "the NATS server maps requests to partition {k}, but nats.request_partitions is \
             {partitions}: the two must be the same count (the server's mapping for \
             {partitions} is:\n{})",
            config()
        ));
    }
    Ok(())
}

/// Ask the server how it maps each tenant verb, with a probe per verb
/// published on `client`, and stop the start when the answer disagrees with
/// `partitions`. A probe that does not arrive within `timeout` (a user
/// without the permission, say) is fine when no partitions are configured,
/// and an error when they are.
pub async fn check(
    client: &async_nats::Client,
    prefix: &str,
    partitions: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    // The same names at every start, so that a server's permissions can
    // allow exactly them; two workers starting at once on one prefix see
    // each other's probes, which the same server mapped the same way.
    let probe = |i: usize| format!("{PROBE_PREFIX}{i}");
    let mut arrivals = Vec::new();
    for i in 0..PROBES_PER_VERB {
        arrivals.push(client.subscribe(format!("{prefix}.*.{}", probe(i))).await?);
        arrivals.push(
            client
                .subscribe(format!("{prefix}.*.{}.*", probe(i)))
                .await?,
        );
    }
    let mut arrivals = futures::stream::select_all(arrivals);
    for verb in mapped_verbs() {
        for i in 0..PROBES_PER_VERB {
            let subject = format!("{prefix}.{}.{}", verb.as_str(), probe(i));
            client.publish(subject, Bytes::new()).await?;
        }
    }
    client.flush().await?;
    // `<p>.<verb>.<probe>`, and with a mapping `.<k>` after it.
    let read = |subject: &str| {
        let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
        let mut tokens = rest.split('.');
        let verb = Verb::parse(tokens.next()?)?.as_str();
        let i = tokens.next()?.strip_prefix(PROBE_PREFIX)?.parse().ok()?;
        let k = match tokens.next() {
            None => None,
            Some(k) => Some(k.parse().ok()?),
        };
        Some(((verb, i), k))
    };
    let mut found = Found::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while found.len() < mapped_verbs().count() * PROBES_PER_VERB {
        let next = tokio::select! {
            m = arrivals.next() => m,
            _ = tokio::time::sleep_until(deadline) => None,
        };
        let Some(message) = next else {
            break;
        };
        if let Some((key, k)) = read(message.subject.as_str()) {
            found.insert(key, k);
        }
    }
    drop(arrivals);
    if partitions == 0 && found.is_empty() {
        tracing::debug!("no request-partition probe arrived; not checked");
        return Ok(());
    }
    verdict(&found, prefix, partitions).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(mapped: Option<usize>) -> Found {
        mapped_verbs()
            .flat_map(|v| (0..PROBES_PER_VERB).map(move |i| ((v.as_str(), i), mapped)))
            .collect()
    }

    #[test]
    fn the_original_subject_comes_back() {
        assert_eq!(unpartitioned("tv.search.bob.3"), Some("tv.search.bob"));
        assert_eq!(
            unpartitioned("a.b.tv.upsert.x-1.12"),
            Some("a.b.tv.upsert.x-1")
        );
        assert_eq!(unpartitioned("tv.search.bob"), None);
        assert_eq!(unpartitioned("tv.search.bob."), None);
        assert_eq!(unpartitioned("nodots"), None);
    }

    #[test]
    fn a_partition_subscribes_to_its_own_suffix() {
        assert_eq!(subscription("tv", 7), "tv.*.*.7");
    }

    #[test]
    fn every_tenant_verb_is_mapped_and_nothing_else() {
        let m = mappings("tv", 8);
        assert_eq!(m.len(), mapped_verbs().count());
        assert!(m.contains(&(
            "tv.search.*".to_owned(),
            "tv.search.{{wildcard(1)}}.{{partition(8,1)}}".to_owned()
        )));
        assert!(!m.iter().any(|(from, _)| from.contains("ingest")
            || from.contains("admin")
            || from.contains("deadletter")));
        let config = server_config("tv", 8);
        assert!(config.contains("mappings = {"));
        assert!(
            config.contains("\"tv.upsert.*\": \"tv.upsert.{{wildcard(1)}}.{{partition(8,1)}}\"")
        );
    }

    #[test]
    fn the_setting_and_the_server_must_agree() {
        // Unmapped server, no partitions: fine.
        assert!(verdict(&found(None), "tv", 0).is_ok());
        // Mapped server, partitions as many or more than the server's.
        assert!(verdict(&found(Some(3)), "tv", 4).is_ok());
        // Mapped server, worker not partitioned: nobody would serve.
        let e = verdict(&found(Some(3)), "tv", 0).unwrap_err();
        assert!(e.contains("nats.request_partitions is 0"), "{e}");
        // Partitions configured, server not mapped: the configuration to add.
        let e = verdict(&found(None), "tv", 4).unwrap_err();
        assert!(
            e.contains("does not map") && e.contains("partition(4,1)"),
            "{e}"
        );
        // A verb mapped beyond the worker's count.
        let e = verdict(&found(Some(5)), "tv", 4).unwrap_err();
        assert!(e.contains("partition 5"), "{e}");
        // A probe that never arrived, with partitions configured.
        let mut partial = found(Some(1));
        partial.remove(&("get", 2));
        let e = verdict(&partial, "tv", 4).unwrap_err();
        assert!(e.contains("get") && e.contains("did not arrive"), "{e}");
    }

    #[test]
    fn probes_are_never_tenants() {
        let token = format!("{PROBE_PREFIX}abc");
        assert!(is_probe(&token));
        assert!(crate::tenant::TenantId::parse(&token).is_err());
        assert!(!is_probe("bob"));
    }
}
