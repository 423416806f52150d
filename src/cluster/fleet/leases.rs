//! The lease loop of one fleet member: take the partitions the assignment
//! gives it, renew their leases at each tick, fence a lease it could not
//! renew in time, and hand partitions over one at a time.
//!
//! Owns every lease write and the order of a hand-over (gate closed,
//! partition settled, lease deleted). It must never serve a partition
//! without its lease, nor delete a lease whose partition is not settled.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::future::join_all;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{json, lease_key, member_key, read_members, read_owners, Member, Partitions};
use crate::cluster::assign::partitions_of;
use crate::cluster::Cluster;
use crate::registry::is_revision_conflict;

/// A lease this worker holds.
pub(super) struct Held {
    revision: u64,
    /// When the last renewal that succeeded was sent: the server's clock
    /// for its expiry started no earlier.
    renewed: Instant,
}

/// A partition's settling finished.
pub(super) struct Settled {
    partition: u32,
    /// Delete the lease (a hand-over); false after a fence, when the lease
    /// is no longer ours.
    release: bool,
}

pub(super) struct Run {
    pub(super) client: async_nats::Client,
    pub(super) leases: kv::Store,
    pub(super) cluster: Arc<Cluster>,
    pub(super) partitions: Arc<dyn Partitions>,
    pub(super) me: Member,
    pub(super) tick: Duration,
    pub(super) ttl: Duration,
    pub(super) settle_limit: Duration,
    pub(super) nudge_subject: String,
    pub(super) held: BTreeMap<u32, Held>,
    /// Partitions whose gate is closed and whose settling has not finished.
    pub(super) settling: BTreeSet<u32>,
    /// The one partition being handed over at a time.
    pub(super) releasing: Option<u32>,
}

impl Run {
    pub(super) async fn run(
        mut self,
        mut nudges: async_nats::Subscriber,
        leave: CancellationToken,
        left: tokio::sync::watch::Sender<bool>,
        close: CancellationToken,
    ) {
        let (settled_tx, mut settled_rx) = mpsc::unbounded_channel::<Settled>();
        let mut ticks = tokio::time::interval(self.tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                Some(_) = nudges.next() => {}
                Some(done) = settled_rx.recv() => self.settled(done).await,
                _ = leave.cancelled(), if !self.me.draining => {
                    self.me.draining = true;
                    tracing::info!(held = self.held.len(), "leaving the fleet: handing every partition over");
                }
            }
            // Nudges come in bursts; take them all as one.
            while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, nudges.next()).await {}
            if self.step(&settled_tx).await {
                break;
            }
        }
        if let Err(e) = self.leases.delete(member_key(&self.me.member)).await {
            tracing::warn!(error = %e, "cannot remove this worker's record; it expires by itself");
        }
        self.nudge().await;
        tracing::info!(member = %self.me.member, "left the fleet");
        let _ = left.send(true);
        // Still reading the owners, for requests forwarded while the
        // endpoint drains.
        loop {
            tokio::select! {
                _ = close.cancelled() => return,
                _ = ticks.tick() => {}
                Some(_) = nudges.next() => {}
            }
            if let Ok(owners) = read_owners(&self.leases, self.cluster.partitions).await {
                self.cluster.set_owners(owners);
            }
        }
    }

    /// One round: renew, look, release, take. True once a leaving worker
    /// holds nothing more.
    async fn step(&mut self, settled: &mpsc::UnboundedSender<Settled>) -> bool {
        self.renew(settled).await;
        let (members, owners) = match tokio::try_join!(
            read_members(&self.leases),
            read_owners(&self.leases, self.cluster.partitions)
        ) {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the fleet; trying again");
                return false;
            }
        };
        self.cluster.set_owners(owners.clone());
        let mut live: Vec<String> = members
            .iter()
            .filter(|m| !m.draining)
            .map(|m| m.member.clone())
            .collect();
        if !self.me.draining && !live.contains(&self.me.member) {
            // Our record expired or is not yet listed; we are live.
            live.push(self.me.member.clone());
        }
        let wanted: BTreeSet<u32> = if self.me.draining {
            BTreeSet::new()
        } else {
            partitions_of(&self.me.member, &live, self.cluster.partitions)
                .into_iter()
                .collect()
        };
        // Hand over one partition at a time.
        if self.releasing.is_none() {
            if let Some(p) = self
                .held
                .keys()
                .copied()
                .find(|p| !wanted.contains(p) && !self.settling.contains(p))
            {
                self.release(p, true, settled);
            }
        }
        // Takes wait on JetStream (the lease, the partition's consumer):
        // past a tick the rest wait for the next pass, so the renewals of
        // what is held never stall behind them (a NATS node that restarts
        // can make each of them wait for its timeout).
        let pass = Instant::now();
        for p in wanted {
            if self.held.contains_key(&p)
                || self.settling.contains(&p)
                || owners[p as usize].is_some()
            {
                continue;
            }
            if pass.elapsed() >= self.tick {
                break;
            }
            self.take(p).await;
        }
        self.me.draining && self.held.is_empty() && self.settling.is_empty()
    }

    /// Renew this worker's record and every held lease; fence a lease that
    /// is lost or about to expire unrenewed.
    async fn renew(&mut self, settled: &mpsc::UnboundedSender<Settled>) {
        self.me.serving = self.cluster.served();
        self.me.releasing = self.settling.iter().copied().collect();
        if let Err(e) = self
            .leases
            .put(member_key(&self.me.member), json(&self.me))
            .await
        {
            tracing::warn!(error = %e, "cannot renew this worker's record");
        }
        let member = Bytes::from(self.me.member.clone());
        let renewals = join_all(self.held.iter().map(|(p, held)| {
            let sent = Instant::now();
            let update = self
                .leases
                .update(lease_key(*p), member.clone(), held.revision);
            async move { (*p, sent, update.await) }
        }))
        .await;
        let mut fence = Vec::new();
        for (p, sent, mut outcome) in renewals {
            if matches!(&outcome, Err(e) if is_revision_conflict(e)) {
                // A renewal that timed out may have been stored all the
                // same, and then this one expected the revision before it.
                // The name is this worker's alone (new at every start), so
                // a lease that carries it is still ours.
                if let Some(revision) = self.ours(p).await {
                    outcome = self
                        .leases
                        .update(lease_key(p), member.clone(), revision)
                        .await;
                }
            }
            let Some(held) = self.held.get_mut(&p) else {
                continue;
            };
            match outcome {
                Ok(revision) => {
                    held.revision = revision;
                    held.renewed = sent;
                    self.cluster.gate(p).extend(sent + self.safe());
                }
                Err(e) if is_revision_conflict(&e) => {
                    tracing::error!(
                        partition = p,
                        "partition lease lost (it expired unrenewed, or another worker holds it); fencing"
                    );
                    fence.push(p);
                }
                Err(e) => {
                    // The gate stopped admitting at the same point.
                    if held.renewed.elapsed() >= self.safe() {
                        tracing::error!(partition = p, error = %e, "partition lease about to expire unrenewed; fencing");
                        fence.push(p);
                    } else {
                        tracing::warn!(partition = p, error = %e, "cannot renew a partition lease; trying again");
                    }
                }
            }
        }
        for p in fence {
            self.held.remove(&p);
            self.release(p, false, settled);
        }
    }

    /// The revision of `p`'s lease if it still names this worker.
    async fn ours(&self, p: u32) -> Option<u64> {
        match self.leases.entry(lease_key(p)).await {
            Ok(Some(e))
                if e.operation == kv::Operation::Put && e.value == self.me.member.as_bytes() =>
            {
                Some(e.revision)
            }
            _ => None,
        }
    }

    /// Try to take `p`'s lease; on success start and open it.
    async fn take(&mut self, p: u32) {
        let sent = Instant::now();
        let revision = match self
            .leases
            .create(lease_key(p), Bytes::from(self.me.member.clone()))
            .await
        {
            Ok(r) => r,
            Err(e) if crate::registry::is_taken(&e) => return,
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "cannot take a partition lease");
                return;
            }
        };
        // Bounded like the lease calls: a start that hangs would hold up the
        // renewal of every partition held, until their leases expired under
        // their gates while this worker still logged them as its own.
        let started = match tokio::time::timeout(self.tick, self.partitions.start(p)).await {
            Ok(started) => started,
            Err(_) => Err(anyhow::anyhow!(
                "no answer from JetStream within {:?}",
                self.tick
            )),
        };
        if let Err(e) = started {
            tracing::warn!(partition = p, error = %e, "cannot start a partition; giving its lease back");
            let _ = self
                .leases
                .delete_expect_revision(lease_key(p), Some(revision))
                .await;
            return;
        }
        self.held.insert(
            p,
            Held {
                revision,
                renewed: sent,
            },
        );
        // The lines the fleet tests read to check that no partition ever
        // had two owners at once: this one, taken before the gate opens, and
        // "partition closing", after it shut.
        tracing::info!(
            partition = p,
            member = %self.me.member,
            at_ms = unix_ms(),
            "partition acquired"
        );
        self.cluster.gate(p).open(sent + self.safe());
        self.cluster.bump();
        self.nudge().await;
    }

    /// How long after a renewal was sent the partition is served at most
    /// without another: four fifths of the lease, leaving a fifth of it
    /// between the last request admitted and the server's expiry.
    fn safe(&self) -> Duration {
        self.ttl - self.ttl / 5
    }

    /// Close `p`'s gate and settle it in a task of its own; the lease is
    /// deleted when it reports back (for a hand-over) or left to expire
    /// (after a fence).
    fn release(&mut self, p: u32, hand_over: bool, settled: &mpsc::UnboundedSender<Settled>) {
        self.settling.insert(p);
        if hand_over {
            self.releasing = Some(p);
        }
        let gate = self.cluster.gate(p).clone();
        let partitions = self.partitions.clone();
        let limit = self.settle_limit;
        let settled = settled.clone();
        let cluster = self.cluster.clone();
        gate.shut();
        // When it stopped admitting: now, or earlier if the lease ran out.
        let served_until = unix_ms().saturating_sub(gate.valid_until().elapsed().as_millis());
        tracing::info!(
            partition = p,
            member = %self.me.member,
            served_until_ms = served_until,
            hand_over,
            "partition closing"
        );
        tokio::spawn(async move {
            let closing = gate.close(limit);
            cluster.bump();
            if !closing.await {
                tracing::warn!(
                    partition = p,
                    inside = gate.inside(),
                    "requests still in flight at the hand-over limit"
                );
            }
            partitions.settle(p).await;
            let _ = settled.send(Settled {
                partition: p,
                release: hand_over,
            });
        });
    }

    async fn settled(&mut self, done: Settled) {
        let p = done.partition;
        self.settling.remove(&p);
        if self.releasing == Some(p) {
            self.releasing = None;
        }
        if done.release {
            if let Some(held) = self.held.remove(&p) {
                if let Err(e) = self
                    .leases
                    .delete_expect_revision(lease_key(p), Some(held.revision))
                    .await
                {
                    tracing::warn!(partition = p, error = %e, "cannot delete a released lease; it expires by itself");
                }
            }
        }
        tracing::info!(
            partition = p,
            member = %self.me.member,
            at_ms = unix_ms(),
            handed_over = done.release,
            "partition released"
        );
        self.nudge().await;
    }

    /// Tell the other workers to look at the fleet now rather than at
    /// their next tick.
    async fn nudge(&self) {
        if let Err(e) = self
            .client
            .publish(self.nudge_subject.clone(), Bytes::new())
            .await
        {
            tracing::debug!(error = %e, "fleet nudge not sent");
        }
    }
}

/// Milliseconds since the Unix epoch, for ownership log lines.
pub(super) fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
