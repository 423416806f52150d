//! The `/metrics` HTTP endpoint on `metrics.listen`.
//!
//! Owns the listener and its connections. It must never hold a connection
//! longer than [`CONNECTION_TIMEOUT`], nor answer anything but `GET` or
//! `HEAD /metrics` with the figures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::Metrics;
use crate::config::Settings;

/// Longest one connection to the endpoint may last.
pub(super) const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

impl Metrics {
    /// Serve `/metrics` on `metrics.listen`, unless it is empty. The
    /// address is bound here, so a bad or taken one stops the start; the
    /// server runs until the returned handle is dropped.
    pub async fn serve(
        self: &Arc<Self>,
        settings: &Settings,
    ) -> anyhow::Result<Option<MetricsServer>> {
        let Some(address) = settings
            .metrics
            .address()
            .map_err(|e| anyhow::anyhow!("setting metrics.listen: {e}"))?
        else {
            return Ok(None);
        };
        let default = settings.metrics.listen == Settings::defaults().metrics.listen;
        let listener = match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => listener,
            // Another worker on this host has the default port: the next
            // free one of the few after it, said in the log, rather than a
            // worker that cannot start.
            Err(e) if default && e.kind() == std::io::ErrorKind::AddrInUse => {
                next_free(address).await.ok_or_else(|| taken(address, &e))?
            }
            Err(e) => return Err(taken(address, &e)),
        };
        let address = listener.local_addr()?;
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, self.clone(), stop.clone()));
        tracing::info!("metrics on http://{address}/metrics");
        Ok(Some(MetricsServer {
            address,
            _stop: stop.drop_guard(),
        }))
    }
}

/// How many ports after the default one a worker tries when the default
/// is taken (several workers on one host).
const DEFAULT_PORT_TRIES: u16 = 16;

/// A listener on the first free port of the [`DEFAULT_PORT_TRIES`] after
/// `address`'s.
async fn next_free(address: SocketAddr) -> Option<tokio::net::TcpListener> {
    for step in 1..=DEFAULT_PORT_TRIES {
        let port = address.port().checked_add(step)?;
        let next = SocketAddr::new(address.ip(), port);
        if let Ok(listener) = tokio::net::TcpListener::bind(next).await {
            tracing::warn!(
                taken = %address,
                "the default metrics port is taken (another worker on this host?); \
                 serving on {next} instead: set TENANTVEC_METRICS_LISTEN to choose"
            );
            return Some(listener);
        }
    }
    None
}

/// The error of an address the endpoint cannot take, in one line with
/// what to do.
fn taken(address: SocketAddr, e: &std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "setting metrics.listen: cannot serve the metrics endpoint on {address}: {e}; set \
         TENANTVEC_METRICS_LISTEN to another address:port, or to \"\" to turn it off"
    )
}

/// The running `/metrics` server; stops when dropped.
pub struct MetricsServer {
    pub address: SocketAddr,
    _stop: tokio_util::sync::DropGuard,
}

async fn accept(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "metrics: accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&metrics, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection) => {}
            }
        });
    }
}

type Body = http_body_util::Full<Bytes>;

async fn respond(
    metrics: &Metrics,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    let reply = |status: u16, content_type: &'static str, body: Bytes| {
        hyper::Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Body::new(body))
            .unwrap_or_default()
    };
    if request.uri().path() != "/metrics" {
        return reply(
            404,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"not found: the metrics are at /metrics\n"),
        );
    }
    if request.method() != hyper::Method::GET && request.method() != hyper::Method::HEAD {
        return reply(
            405,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"method not allowed: GET /metrics\n"),
        );
    }
    reply(
        200,
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        Bytes::from(metrics.render().await),
    )
}
