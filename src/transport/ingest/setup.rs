//! Set-up: the ingest and dead-letter streams, the durable consumer made or
//! replaced when a setting cannot change in place, and the single worker's
//! consumer from before a prefix was partitioned, applied until empty.
//!
//! Owns what exists in JetStream before the first pull. It must never
//! delete a stream that holds messages, nor replace a consumer whose
//! settings can change in place.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{start, ORDER_RECHECK, PIN_GROUP};
use crate::config::{IngestSettings, Settings};
use crate::metrics::IngestCounters;
use crate::names::Names;
use crate::router::Router;

/// Create or update the streams and the durable consumer. Idempotent; an
/// existing stream keeps its messages.
///
/// With partitions (`cluster.enabled`) the stream files each message under
/// its tenant's partition and each partition's owner makes and pulls its own
/// consumer ([`PartitionIngest`]); what is returned then is the single
/// worker's consumer from before, while it still holds messages
/// ([`consumer_from_before`], [`apply_from_before`]).
pub async fn ensure_streams(
    js: &jetstream::Context,
    names: &Names,
    settings: &IngestSettings,
    replicas: usize,
) -> anyhow::Result<Option<consumer::PullConsumer>> {
    if let Some(partitions) = names.partitions() {
        refuse_other_partitions(js, names, partitions).await?;
    }
    let ingest = stream::Config {
        name: names.ingest_stream.clone(),
        subjects: vec![names.ingest_subjects.clone()],
        subject_transform: names.transform(),
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    js.create_or_update_stream(ingest)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create stream {}: {e}", names.ingest_stream))?;
    let deadletter = stream::Config {
        name: names.deadletter_stream.clone(),
        subjects: vec![names.deadletter_subjects.clone()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: settings.deadletter_max_age,
        num_replicas: replicas,
        ..Default::default()
    };
    js.create_or_update_stream(deadletter)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create stream {}: {e}", names.deadletter_stream))?;
    // No server-side backoff: with one, nats-server takes its first step
    // as the ack wait (1 s), and a message queued behind its tenant's burst
    // was delivered again while its first copy still waited. The worker
    // retries failures itself, in order (`ingest.backoff`).
    let mut config = consumer_config(settings, &names.consumer);
    if settings.ordered {
        config.priority_policy = consumer::PriorityPolicy::PinnedClient;
        config.priority_groups = vec![PIN_GROUP.into()];
        config.priority_timeout = settings.pin_timeout;
    }
    let stream = js
        .get_stream(&names.ingest_stream)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open stream {}: {e}", names.ingest_stream))?;
    if names.partitions().is_some() {
        return consumer_from_before(&stream, names, config).await;
    }
    // The other way round: the partitions' consumers of an earlier fleet
    // overlap the single consumer, which a work-queue stream refuses.
    if let Some(p) = first_message(&stream, &names.all_partitioned()).await? {
        anyhow::bail!(
            "the ingest stream {} still holds messages filed by partition, the first \
             at sequence {p}; start a worker with ingest.ordered = false to apply them, \
             then this one",
            names.ingest_stream
        );
    }
    let mut partition_consumers = stream.consumer_names();
    while let Some(name) = partition_consumers.next().await {
        let name = name.map_err(|e| anyhow::anyhow!("cannot list ingest consumers: {e}"))?;
        if names.is_partition_consumer(&name) {
            stream
                .delete_consumer(&name)
                .await
                .map_err(|e| anyhow::anyhow!("cannot delete consumer {name}: {e}"))?;
            tracing::info!(consumer = %name, "deleted a fleet partition's ingest consumer (nothing left in it)");
        }
    }
    create_or_replace(&stream, config).await.map(Some)
}

/// A stream that files messages by another number of partitions may change
/// only once it holds none of them: a tenant's partition would change, and
/// its waiting messages would sit under a partition no consumer takes (or
/// one whose order check does not see them).
pub(super) async fn refuse_other_partitions(
    js: &jetstream::Context,
    names: &Names,
    partitions: u32,
) -> anyhow::Result<()> {
    let Ok(stream) = js.get_stream(&names.ingest_stream).await else {
        return Ok(()); // Not made yet.
    };
    let before = stream
        .cached_info()
        .config
        .subject_transform
        .as_ref()
        .and_then(|t| partitions_in(&t.destination));
    match before {
        Some(before) if before != partitions => {
            match first_message(&stream, &names.all_partitioned()).await? {
                Some(first) => anyhow::bail!(
                    "the ingest stream {} files messages by {before} partitions and still holds \
                     some (the first at sequence {first}); cluster.partitions is {partitions}: \
                     keep it at {before} until they are applied",
                    names.ingest_stream
                ),
                None => {
                    tracing::info!(
                        before,
                        now = partitions,
                        "the ingest stream is empty: partitions changed"
                    );
                    Ok(())
                }
            }
        }
        _ => Ok(()),
    }
}

/// The partition count in a stream's subject transform destination
/// (`…{{partition(16,1)}}…`).
pub(super) fn partitions_in(destination: &str) -> Option<u32> {
    let rest = &destination[destination.find("partition(")? + "partition(".len()..];
    rest[..rest.find(',')?].trim().parse().ok()
}

/// With partitions: the single consumer of before (an earlier version, or
/// `ingest.ordered`), if its messages are not all applied yet
/// ([`apply_from_before`] applies them before the partitions are pulled);
/// with none left it is deleted. It is
/// narrowed to the subjects of before (`<p>.ingest.<tenant>`; the
/// partitions' are one token longer) and never pinned, whatever it was.
pub(super) async fn consumer_from_before(
    stream: &stream::Stream,
    names: &Names,
    mut config: consumer::pull::Config,
) -> anyhow::Result<Option<consumer::PullConsumer>> {
    let exists = match stream.consumer_info(&names.consumer).await {
        Ok(_) => true,
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => false,
        Err(e) => anyhow::bail!("cannot read consumer {}: {e}", names.consumer),
    };
    let left = first_message(stream, &names.ingest_subjects).await?;
    match left {
        None if exists => {
            stream
                .delete_consumer(&names.consumer)
                .await
                .map_err(|e| anyhow::anyhow!("cannot delete consumer {}: {e}", names.consumer))?;
            tracing::info!(consumer = %names.consumer, "deleted the single worker's ingest consumer (nothing left in it)");
            Ok(None)
        }
        None => Ok(None),
        Some(first) => {
            tracing::warn!(
                consumer = %names.consumer,
                first_seq = first,
                "ingest messages filed before the stream partitioned wait in it; \
                 applying them before pulling the partitions"
            );
            config.filter_subject = names.ingest_subjects.clone();
            // Not pinned, whatever it was: every member pulls it.
            config.priority_policy = consumer::PriorityPolicy::None;
            config.priority_groups = Vec::new();
            config.priority_timeout = Duration::ZERO;
            create_or_replace(stream, config).await.map(Some)
        }
    }
}

/// Before a worker pulls partitions (or a fleet member joins): apply the
/// messages that the single consumer still holds (filed before the stream partitioned), in
/// lanes as always, wait until none is left in the stream (members starting
/// together pull it side by side, and each waits for the others' too), then
/// delete that consumer. The partitions' consumers are made only after it
/// is gone: a work-queue stream refuses consumers that overlap, and with the
/// narrowed consumer beside them nats-server 2.15 kept the messages the
/// partitions' consumers acked (found by the test), so the two never live
/// side by side. The member serves nothing meanwhile; this happens once, on
/// the first start of a fleet on a prefix one worker served.
pub async fn apply_from_before(
    js: jetstream::Context,
    consumer: consumer::PullConsumer,
    settings: &Settings,
    router: Router,
    counters: Arc<IngestCounters>,
    tenancy: super::Tenancy,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let names = Names::new(&settings.storage_prefix());
    let stream = js
        .get_stream(&names.ingest_stream)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open stream {}: {e}", names.ingest_stream))?;
    let began = Instant::now();
    let stop = shutdown.child_token();
    let ingesting = start(
        js.clone(),
        consumer,
        settings,
        router,
        counters,
        tenancy,
        stop.clone(),
    );
    while first_message(&stream, &names.ingest_subjects)
        .await?
        .is_some()
    {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(ORDER_RECHECK) => {}
        }
    }
    stop.cancel();
    ingesting.drain(settings.worker.shutdown_timeout).await;
    if shutdown.is_cancelled() {
        anyhow::bail!(
            "stopped while applying the ingest messages filed before the stream partitioned"
        );
    }
    // Another member may have deleted it first.
    if let Err(e) = stream.delete_consumer(&names.consumer).await {
        tracing::debug!(error = %e, consumer = %names.consumer, "consumer of before not deleted");
    }
    tracing::info!(
        consumer = %names.consumer,
        took = ?began.elapsed(),
        "applied every ingest message filed before the stream partitioned; pulling the partitions"
    );
    Ok(())
}

/// The sequence of the stream's first message on `subject` (wildcards
/// allowed), if it has one.
pub(super) async fn first_message(
    stream: &stream::Stream,
    subject: &str,
) -> anyhow::Result<Option<u64>> {
    next_message(stream, subject, 0)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the ingest stream: {e}"))
}

/// The sequence of the stream's next message on `subject` at or after
/// `from`, if there is one.
pub(super) async fn next_message<I>(
    stream: &stream::Stream<I>,
    subject: &str,
    from: u64,
) -> Result<Option<u64>, jetstream::stream::RawMessageError> {
    match stream.get_first_raw_message_by_subject(subject, from).await {
        Ok(m) => Ok(Some(m.sequence)),
        Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Create the durable consumer, or replace it when its settings cannot
/// change in place.
pub(super) async fn create_or_replace(
    stream: &stream::Stream,
    config: consumer::pull::Config,
) -> anyhow::Result<consumer::PullConsumer> {
    let name = config.durable_name.clone().unwrap_or_default();
    // create_consumer updates a durable consumer whose config changed.
    match stream.create_consumer(config.clone()).await {
        Ok(c) => Ok(c),
        Err(first) => {
            // The server does not change a consumer's priority policy or its
            // filter in place. Deleting it loses nothing: the messages stay
            // in the stream and those delivered but unacked go to the new
            // consumer. The same goes for a consumer made by an earlier
            // version with a server-side backoff.
            let replace = match stream.consumer_info(&name).await {
                Ok(info) => {
                    info.config.priority_policy != config.priority_policy
                        || info.config.filter_subject != config.filter_subject
                        || !info.config.backoff.is_empty()
                }
                Err(_) => false,
            };
            if !replace {
                anyhow::bail!("cannot create consumer {name}: {first}");
            }
            tracing::warn!(
                consumer = %name,
                "the ingest consumer's settings cannot change in place: recreating it"
            );
            stream
                .delete_consumer(&name)
                .await
                .map_err(|e| anyhow::anyhow!("cannot recreate consumer {name}: {e}"))?;
            stream
                .create_consumer(config)
                .await
                .map_err(|e| anyhow::anyhow!("cannot create consumer {name}: {e}"))
        }
    }
}

/// The consumer config shared by the single consumer and the partitions'.
pub(super) fn consumer_config(settings: &IngestSettings, durable: &str) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(durable.to_owned()),
        description: Some("tenantvec workers: durable ingest".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_deliver: settings.max_deliver,
        // See ensure_streams: the worker retries failures itself.
        backoff: Vec::new(),
        max_ack_pending: settings.max_ack_pending as i64,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_count_is_read_back_from_the_transform() {
        let names = Names::partitioned("tenantvec", 16);
        let destination = names.transform().unwrap().destination;
        assert_eq!(partitions_in(&destination), Some(16));
        assert_eq!(partitions_in("tenantvec.ingest.{{wildcard(1)}}"), None);
    }
}
