//! Trying a request again when its failure may pass: no worker answered
//! (one restarting, a NATS node lost), the reply did not come in time, the
//! worker said `unavailable`, or `rate_limited` (after the wait it hints).
//!
//! Owns which failures are retried, which requests are safe to send twice,
//! and the waits between tries (exponential, fully jittered, within a
//! deadline). Plain functions: the client's request loop applies them. It
//! must never retry a request that is not safe to send twice, nor a
//! failure that cannot pass (a bad request stays bad).

use std::time::Duration;

use crate::protocol::{AdminVerb, ErrorCode, TenantsOp, Verb};

use super::ClientError;

/// The first wait, and the longest.
const FIRST_WAIT: Duration = Duration::from_millis(50);
const MAX_WAIT: Duration = Duration::from_secs(1);

/// What a request is, for whether it may be sent twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Tenant(Verb),
    Admin(AdminVerb),
    Tenants(TenantsOp),
}

/// Whether sending the request twice does what sending it once does.
/// Not so: `export` (the second finds its object made by the first),
/// `rekey` (each rotates the key once more), `tenants.create` (the second
/// finds the tenant made) and `tenants.delete` (the second finds none).
pub fn safe_to_repeat(request: Request) -> bool {
    match request {
        Request::Tenant(verb) => !matches!(verb, Verb::Export | Verb::Rekey),
        Request::Admin(_) => true,
        Request::Tenants(op) => !matches!(
            op,
            TenantsOp::Create | TenantsOp::Delete | TenantsOp::Move | TenantsOp::Failover
        ),
    }
}

/// Whether a failure may pass on a later try, and the wait the worker
/// asked for, if it did.
pub fn may_pass(error: &ClientError) -> (bool, Option<Duration>) {
    match error {
        ClientError::NoWorker { .. } | ClientError::TimedOut { .. } => (true, None),
        ClientError::Service(e) => match e.code {
            ErrorCode::Unavailable => (true, None),
            ErrorCode::RateLimited => (true, e.retry_after_ms.map(Duration::from_millis)),
            _ => (false, None),
        },
        ClientError::Other(_) => (false, None),
    }
}

/// The wait before try `tries + 1` after `tries` failed ones: a uniform
/// draw (`jitter` in [0, 1)) up to 50 ms doubled each try, at most 1 s,
/// and never less than what the worker `hint`ed.
pub fn wait(tries: u32, jitter: f64, hint: Option<Duration>) -> Duration {
    let cap = FIRST_WAIT
        .saturating_mul(1u32 << tries.saturating_sub(1).min(16))
        .min(MAX_WAIT);
    let drawn = cap.mul_f64(jitter.clamp(0.0, 1.0));
    drawn.max(hint.unwrap_or(Duration::ZERO))
}

/// A uniform draw in [0, 1) from the OS's random source (0.5 without one).
pub fn jitter() -> f64 {
    let mut b = [0u8; 4];
    match getrandom::fill(&mut b) {
        Ok(()) => f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ServiceError;

    #[test]
    fn only_requests_that_may_be_sent_twice_are_retried() {
        for verb in Verb::ALL {
            let safe = safe_to_repeat(Request::Tenant(verb));
            assert_eq!(
                safe,
                !matches!(verb, Verb::Export | Verb::Rekey),
                "{verb:?}"
            );
        }
        assert!(safe_to_repeat(Request::Admin(AdminVerb::Stats)));
        assert!(safe_to_repeat(Request::Tenants(TenantsOp::Set)));
        assert!(!safe_to_repeat(Request::Tenants(TenantsOp::Create)));
        assert!(!safe_to_repeat(Request::Tenants(TenantsOp::Delete)));
    }

    #[test]
    fn failures_that_may_pass_are_told_from_those_that_cannot() {
        let no_worker = ClientError::NoWorker {
            subject: "s".into(),
            prefix: "p".into(),
        };
        assert_eq!(may_pass(&no_worker), (true, None));
        let timed_out = ClientError::TimedOut {
            subject: "s".into(),
        };
        assert_eq!(may_pass(&timed_out), (true, None));
        let away = ClientError::Service(ServiceError::unavailable("restarting"));
        assert_eq!(may_pass(&away), (true, None));
        let limited = ClientError::Service(
            ServiceError::rate_limited("slow down").retry_after(Duration::from_millis(300)),
        );
        assert_eq!(may_pass(&limited), (true, Some(Duration::from_millis(300))));
        let bad = ClientError::Service(ServiceError::bad_request("no"));
        assert_eq!(may_pass(&bad), (false, None));
        let internal = ClientError::Service(ServiceError::internal("bug"));
        assert_eq!(may_pass(&internal), (false, None));
    }

    #[test]
    fn waits_grow_to_a_cap_are_jittered_and_honour_the_hint() {
        assert_eq!(wait(1, 1.0, None), Duration::from_millis(50));
        assert_eq!(wait(2, 1.0, None), Duration::from_millis(100));
        assert_eq!(wait(3, 0.5, None), Duration::from_millis(100));
        assert_eq!(wait(30, 1.0, None), MAX_WAIT);
        assert_eq!(wait(1, 0.0, None), Duration::ZERO);
        let hint = Some(Duration::from_millis(700));
        assert_eq!(wait(1, 1.0, hint), Duration::from_millis(700));
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }
}
