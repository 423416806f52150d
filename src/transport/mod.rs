//! The NATS side of the worker: connection, request-reply endpoints, durable
//! ingest from JetStream, and the start-up check for other instances.
//!
//! Owns everything that speaks NATS; it turns messages into commands for the
//! supervisor and outcomes into replies. It must never touch a store or hold
//! tenant state: a request lives here only between its arrival and its reply.

pub mod backlog;
pub mod decode;
pub mod discovery;
pub mod ingest;
pub mod lanes;
pub mod partitions;
pub mod record_changes;
pub mod relay;
pub mod service;

use std::time::Duration;

use crate::config::NatsSettings;

/// Connect to NATS, or say clearly why not.
///
/// Once connected, async-nats reconnects by itself, without limit, and keeps
/// subscriptions; requests made while disconnected wait or time out.
pub async fn connect(settings: &NatsSettings) -> anyhow::Result<async_nats::Client> {
    let options = authenticate(async_nats::ConnectOptions::new(), settings)
        .await?
        .name(&settings.connection_name)
        .custom_inbox_prefix(&settings.inbox_prefix)
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
        .map_err(|e| {
            anyhow::anyhow!(
                "nats.url {:?} is not a NATS address: {e}",
                settings.display_url()
            )
        })?;
    options
        .connect(addrs)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {}: {e}", settings.display_url()))
}

/// Add the configured authentication and TLS to `options`; more than one
/// kind of authentication is a configuration error, said at start.
async fn authenticate(
    mut options: async_nats::ConnectOptions,
    settings: &NatsSettings,
) -> anyhow::Result<async_nats::ConnectOptions> {
    let set = |p: &std::path::Path| !p.as_os_str().is_empty();
    let kinds = [
        !settings.user.is_empty() || settings.password.is_set(),
        settings.token.is_set(),
        settings.nkey_seed.is_set(),
        set(&settings.credentials_file),
    ];
    anyhow::ensure!(
        kinds.iter().filter(|k| **k).count() <= 1,
        "configure one kind of NATS authentication: user+password, token, nkey_seed or credentials_file"
    );
    if kinds[0] {
        anyhow::ensure!(
            !settings.user.is_empty() && settings.password.is_set(),
            "nats.user and nats.password go together"
        );
        options =
            options.user_and_password(settings.user.clone(), settings.password.expose().to_owned());
    } else if kinds[1] {
        options = options.token(settings.token.expose().to_owned());
    } else if kinds[2] {
        options = options.nkey(settings.nkey_seed.expose().to_owned());
    } else if kinds[3] {
        options = options
            .credentials_file(&settings.credentials_file)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the NATS credentials file {}: {e}",
                    settings.credentials_file.display()
                )
            })?;
    }
    if set(&settings.tls_ca_file) {
        options = options
            .add_root_certificates(settings.tls_ca_file.clone())
            .require_tls(true);
    }
    match (set(&settings.tls_cert_file), set(&settings.tls_key_file)) {
        (true, true) => {
            options = options.add_client_certificate(
                settings.tls_cert_file.clone(),
                settings.tls_key_file.clone(),
            )
        }
        (false, false) => {}
        _ => anyhow::bail!("nats.tls_cert_file and nats.tls_key_file go together"),
    }
    let tls_url = settings
        .url
        .split(',')
        .any(|u| u.trim().starts_with("tls://"));
    if settings.tls_required || tls_url {
        options = options.require_tls(true);
    }
    Ok(options)
}
