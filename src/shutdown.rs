//! Shutdown: one signal, heard by every part of the worker.
//!
//! Owns turning SIGTERM and SIGINT into the cancellation of the worker's
//! [`CancellationToken`]. The order of a graceful stop lives in
//! [`crate::worker::run`]: stop taking requests, answer those in flight,
//! close every store, flush NATS. This module must never exit the process
//! itself; it only says that shutdown has begun.

use tokio_util::sync::CancellationToken;

/// Wait for SIGTERM or SIGINT, then cancel `token`. A second signal is left to
/// the default handler of nothing: the worker keeps draining until done or
/// until its shutdown timeout.
pub async fn cancel_on_signal(token: CancellationToken) {
    let name = wait_for_signal().await;
    tracing::info!(signal = name, "shutdown requested");
    token.cancel();
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the worker with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}
