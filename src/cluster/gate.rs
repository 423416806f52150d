//! A partition's gate: whether this worker serves the partition, and how
//! many of its requests are between arrival and reply.
//!
//! Owns the hand-off between the request path and a release: a request
//! enters only while the gate is open, and a release closes the gate and
//! then waits until every request that entered has left, so no request of
//! the partition reaches its stores after the release has begun. It must
//! never block a request: entering is two atomic operations.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Gate {
    open: AtomicBool,
    /// Until when (ms past [`epoch`]) the lease is surely held: renewed by
    /// the lease loop, checked by every entry, so a gate stops admitting
    /// on time even if the loop that would close it is held up (a renewal
    /// stuck while NATS elects a leader).
    valid_until: AtomicU64,
    inside: AtomicUsize,
    empty: Notify,
}

/// The instant gate times count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_millis() as u64
}

/// A request inside the gate; leaves when dropped.
pub struct Entry(Arc<Gate>);

impl Drop for Entry {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl Gate {
    /// Enter if the gate is open. Counted first and checked second (both
    /// sequentially consistent), so a [`Gate::close`] either sees this
    /// request inside or this request sees the gate closed.
    pub fn enter(gate: &Arc<Gate>) -> Option<Entry> {
        gate.inside.fetch_add(1, Ordering::SeqCst);
        if gate.is_open() {
            Some(Entry(gate.clone()))
        } else {
            gate.leave();
            None
        }
    }

    fn leave(&self) {
        if self.inside.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.empty.notify_waiters();
        }
    }

    /// Open the gate while the lease is valid, until `until`.
    pub fn open(&self, until: Instant) {
        self.extend(until);
        self.open.store(true, Ordering::SeqCst);
    }

    /// The lease was renewed: valid until `until`.
    pub fn extend(&self, until: Instant) {
        self.valid_until.store(millis(until), Ordering::SeqCst);
    }

    /// Until when this gate admitted (or admits) requests at most.
    pub fn valid_until(&self) -> Instant {
        epoch() + Duration::from_millis(self.valid_until.load(Ordering::SeqCst))
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
            && millis(Instant::now()) < self.valid_until.load(Ordering::SeqCst)
    }

    /// Requests inside now.
    pub fn inside(&self) -> usize {
        self.inside.load(Ordering::SeqCst)
    }

    /// Stop admitting (without waiting for those inside).
    pub fn shut(&self) {
        self.open.store(false, Ordering::SeqCst);
    }

    /// Close the gate and wait until every request inside has left, at most
    /// `limit`; false when some were still inside then.
    pub async fn close(&self, limit: Duration) -> bool {
        self.open.store(false, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let empty = self.empty.notified();
            tokio::pin!(empty);
            empty.as_mut().enable();
            if self.inside() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, empty).await.is_err() {
                return self.inside() == 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_gate_lets_nobody_in() {
        let gate = Arc::new(Gate::default());
        assert!(Gate::enter(&gate).is_none());
        gate.open(Instant::now() + Duration::from_secs(60));
        let entry = Gate::enter(&gate).expect("open");
        assert_eq!(gate.inside(), 1);
        drop(entry);
        assert_eq!(gate.inside(), 0);
    }

    #[test]
    fn a_gate_whose_lease_ran_out_lets_nobody_in() {
        let gate = Arc::new(Gate::default());
        gate.open(Instant::now() + Duration::from_millis(30));
        assert!(Gate::enter(&gate).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(Gate::enter(&gate).is_none(), "admitted past the lease");
        gate.extend(Instant::now() + Duration::from_secs(60));
        assert!(Gate::enter(&gate).is_some());
    }

    #[tokio::test]
    async fn close_waits_for_those_inside() {
        let gate = Arc::new(Gate::default());
        gate.open(Instant::now() + Duration::from_secs(60));
        let entry = Gate::enter(&gate).unwrap();
        let closing = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.close(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !closing.is_finished(),
            "close returned with a request inside"
        );
        assert!(Gate::enter(&gate).is_none(), "entered a closing gate");
        drop(entry);
        assert!(closing.await.unwrap());
    }

    #[tokio::test]
    async fn close_gives_up_at_its_limit() {
        let gate = Arc::new(Gate::default());
        gate.open(Instant::now() + Duration::from_secs(60));
        let _entry = Gate::enter(&gate).unwrap();
        assert!(!gate.close(Duration::from_millis(20)).await);
    }
}
