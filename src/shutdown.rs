//! Shutdown: one signal, heard by every part of the worker.
//!
//! Owns turning SIGTERM and SIGINT into the cancellation of the worker's
//! [`CancellationToken`], and noticing a second signal. The order of a
//! graceful stop, and its time bound, live in [`crate::worker::run`]: stop
//! taking requests, answer those in flight, close every store, flush NATS.
//! This module must never exit the process itself; it only says that
//! shutdown has begun, and when it was asked for twice
//! ([`crate::worker::run_blocking`] exits then).

use tokio_util::sync::CancellationToken;

/// Wait for SIGTERM or SIGINT, then cancel `token`.
pub async fn cancel_on_signal(token: CancellationToken) {
    let mut signals = Signals::install();
    let name = signals.next().await;
    tracing::info!(signal = name, "shutdown requested");
    token.cancel();
}

/// Wait for SIGTERM or SIGINT and cancel `token`, then wait for a second
/// one; returns its name and the exit code it calls for (128 + its number).
///
/// The handlers are installed once and kept: once tokio handles a signal,
/// one that arrives while nothing listens is lost rather than fatal, so the
/// same listener must be waiting for the second.
pub async fn second_signal(token: CancellationToken) -> (&'static str, i32) {
    let mut signals = Signals::install();
    let first = signals.next().await;
    tracing::info!(
        signal = first,
        "shutdown requested; a second signal exits at once"
    );
    token.cancel();
    let second = signals.next().await;
    (second, exit_code(second))
}

/// The conventional exit code of a process ended by `signal`.
fn exit_code(signal: &str) -> i32 {
    match signal {
        "SIGINT" => 130,
        _ => 143,
    }
}

#[cfg(unix)]
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

#[cfg(unix)]
impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Self(Some((term, int))),
            _ => {
                tracing::error!("cannot install signal handlers; stop the worker with SIGKILL");
                Self(None)
            }
        }
    }

    async fn next(&mut self) -> &'static str {
        let Some((term, int)) = self.0.as_mut() else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Self {
        Self
    }

    async fn next(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code("SIGINT"), 130);
        assert_eq!(exit_code("SIGTERM"), 143);
    }
}
