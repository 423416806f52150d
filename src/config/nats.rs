//! `[nats]`: the connection (URLs, credentials, TLS), the subject prefix
//! and the request partitions.
//!
//! Owns the section's shape and the redaction of URLs for logs. It must
//! never let a password reach a log line.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::duration;
use super::Secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    pub url: String,
    pub prefix: String,
    pub connection_name: String,
    /// User and password authentication (both set, or neither).
    pub user: String,
    pub password: Secret,
    /// Token authentication.
    pub token: Secret,
    /// NKey authentication: the user's seed (`SU…`).
    pub nkey_seed: Secret,
    /// JWT authentication: a `.creds` file.
    pub credentials_file: PathBuf,
    /// CA certificate(s) to trust for TLS (PEM); setting it turns TLS on.
    pub tls_ca_file: PathBuf,
    /// Client certificate and key for mutual TLS (PEM).
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    /// Refuse to connect without TLS (also implied by a `tls://` URL).
    pub tls_required: bool,
    /// Subject prefix of this connection's reply inboxes; a per-user prefix
    /// lets the server keep each client to its own replies.
    pub inbox_prefix: String,
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Clients: how long after a request's first try it is tried again,
    /// when it is safe to repeat and its failure may pass (no worker, no
    /// reply in time, `unavailable`, `rate_limited`); 0 turns retries off.
    #[serde(with = "duration")]
    pub retry_deadline: Duration,
    #[serde(with = "duration")]
    pub discovery_timeout: Duration,
    /// Copies JetStream keeps of every stream and bucket the worker creates.
    pub replicas: usize,
    /// Request partitions the NATS server maps tenant verbs into (0: none):
    /// one connection and subscription each, so that one tenant's flood
    /// does not hold up the others' requests ([`crate::transport::partitions`]).
    pub request_partitions: usize,
}

impl NatsSettings {
    /// The URL(s) without any `user:password@` part, for logs and errors.
    pub fn display_url(&self) -> String {
        redact_urls(&self.url)
    }
}

/// Comma-separated URLs without any `user:password@` part, for logs and errors.
pub fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|u| {
            let u = u.trim();
            match (u.find("://"), u.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    format!("{}<redacted>@{}", &u[..scheme + 3], &u[at + 1..])
                }
                _ => u.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}
