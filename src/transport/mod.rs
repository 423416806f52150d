//! The NATS side of the worker: connection, request-reply endpoints, durable
//! ingest from JetStream, and the start-up check for other instances.
//!
//! Owns everything that speaks NATS; it turns messages into commands for the
//! supervisor and outcomes into replies. It must never touch a store or hold
//! tenant state: a request lives here only between its arrival and its reply.

pub mod decode;
pub mod discovery;
pub mod ingest;
pub mod service;

use std::time::Duration;

use crate::config::NatsSettings;

/// Connect to NATS, or say clearly why not.
///
/// Once connected, async-nats reconnects by itself, without limit, and keeps
/// subscriptions; requests made while disconnected wait or time out.
pub async fn connect(settings: &NatsSettings) -> anyhow::Result<async_nats::Client> {
    let options = async_nats::ConnectOptions::new()
        .name(&settings.connection_name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(settings.request_timeout))
        .max_reconnects(None::<usize>)
        .event_callback(|event| async move {
            tracing::info!(%event, "nats connection event");
        });
    let urls: Vec<&str> = settings.url.split(',').map(str::trim).collect();
    let addrs: Vec<async_nats::ServerAddr> = urls
        .iter()
        .map(|u| u.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("nats.url {:?} is not a NATS address: {e}", settings.url))?;
    options
        .connect(addrs)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {}: {e}", settings.url))
}
