//! Ingest lanes: the order in which each tenant's ingest messages are applied.
//!
//! Owns, per tenant, the messages a worker holds (by stream sequence), which
//! of them form the batch being applied, and when a stalled lane may try
//! again. A lane applies one batch at a time, always from its oldest message,
//! so a message is never applied after a later one of its tenant; a lane that
//! waits (a retry, an earlier message still held elsewhere) waits alone, and
//! the others go on. It is plain bookkeeping: it must never touch NATS, a
//! store or a clock of its own (callers pass `now`), so every rule here has a
//! unit test.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::tenant::TenantId;

/// What became of an arriving message.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Held in its tenant's lane.
    Held,
    /// Its sequence was held already (a redelivery while the first copy
    /// waited): the new copy replaced the old one, which is returned.
    Replaced,
    /// Its tenant is stalled and holds as many messages as it may: hand it
    /// back to the stream (a delayed `nak`).
    Deferred,
    /// This lane already settled a later message of its tenant, so this one
    /// (applied in order before it) was settled too and its ack was lost:
    /// a redelivery after a NATS node's loss. Ack it, never apply it again,
    /// which would put an old version over a newer one.
    Stale,
}

/// A message held by a lane.
#[derive(Debug)]
pub struct Held<M> {
    pub message: M,
    /// Tries that failed for a reason that may pass.
    pub attempts: u32,
    /// Written to the store already, but its ack did not go through: the
    /// next batch acks it without writing it again (which would put it
    /// after the later messages of that same batch).
    pub applied: bool,
    /// Failed for good, but its dead letter was not stored: the next batch
    /// dead-letters it again and never sends it to the store (whose applied
    /// mark may be past it by then, from the later messages of its batch).
    pub doomed: Option<crate::protocol::ServiceError>,
}

#[derive(Debug)]
struct Lane<M> {
    held: BTreeMap<u64, Held<M>>,
    /// Sequences of the batch being applied (the oldest held ones).
    running: Vec<u64>,
    /// Sequences this lane handed back to the stream that have not come back:
    /// a batch never reaches past one, or a later message would overtake it.
    deferred: BTreeSet<u64>,
    /// A stalled lane starts nothing before this.
    wait_until: Option<Instant>,
}

impl<M> Lane<M> {
    fn new() -> Self {
        Self {
            held: BTreeMap::new(),
            running: Vec::new(),
            deferred: BTreeSet::new(),
            wait_until: None,
        }
    }

    fn stalled(&self, now: Instant) -> bool {
        self.wait_until.is_some_and(|t| t > now)
    }
}

/// How a batch ended, as the lane needs to know it.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Sequences acked or dead-lettered: released from the lane.
    pub settled: Vec<u64>,
    /// Sequences written but not acked: kept, and never written again.
    pub applied: Vec<u64>,
    /// Sequences failed for good whose dead letter was not stored, with why:
    /// kept, and dead-lettered again (see [`Held::doomed`]).
    pub doomed: Vec<(u64, crate::protocol::ServiceError)>,
    /// Try the unsettled ones again after this long. `count` says whether the
    /// failure counts as a try of the oldest of them (a wait for an earlier
    /// message or for the rate limit does not).
    pub retry: Option<Retry>,
    /// The batch found no older message of its tenant in the stream, so
    /// whatever the lane handed back before its first message is gone.
    pub checked: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub after: Duration,
    pub count: bool,
}

/// Most tenants whose highest settled sequence is remembered (16 bytes and a
/// tenant id each); past it the memory starts again.
const MAX_SETTLED: usize = 1_000_000;

/// What the stream says of a batch's order (see [`order_questions`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Order {
    /// The first this many messages of the batch are the tenant's oldest in
    /// the stream, with none of its messages between them: they may be
    /// applied. Never zero.
    Prefix(usize),
    /// An older message of the tenant is still in the stream (held by
    /// another worker, or due for redelivery): the batch must wait for it.
    Older(u64),
    /// The batch's first message is no longer in the stream: another worker
    /// (or an earlier delivery) settled it. Applying it again would write an
    /// old version after newer ones, so it is dropped.
    FirstGone,
}

/// The questions a batch's order check asks the stream: `(i, from)` asks for
/// the tenant's next message at or after `from`, which must be the batch's
/// message `i`. The first message must be the tenant's oldest; each later one
/// must follow the one before it, which needs no question when their
/// sequences are adjacent (nothing fits between).
pub fn order_questions(batch: &[u64]) -> Vec<(usize, u64)> {
    let mut questions = Vec::new();
    for (i, seq) in batch.iter().enumerate() {
        match i.checked_sub(1).map(|before| batch[before]) {
            None => questions.push((0, 0)),
            Some(before) if *seq > before + 1 => questions.push((i, before + 1)),
            Some(_) => {}
        }
    }
    questions
}

/// Judge a batch by the stream's answers to [`order_questions`]: the
/// sequence found for each question, `None` when the tenant had no message
/// from there on.
pub fn judge_order(batch: &[u64], answers: &[(usize, Option<u64>)]) -> Order {
    let mut prefix = batch.len();
    for (i, found) in answers {
        let expected = batch[*i];
        if *i == 0 {
            match found {
                Some(first) if *first < expected => return Order::Older(*first),
                Some(first) if *first == expected => {}
                _ => return Order::FirstGone,
            }
        } else if *found != Some(expected) {
            // Another message of the tenant lies between (or this one is
            // gone): apply only up to it, the rest waits for a new check.
            prefix = prefix.min(*i);
        }
    }
    Order::Prefix(prefix)
}

/// Every tenant's lane in one worker.
///
/// A lane cannot see an older message of its tenant that the stream still
/// holds for someone else (a delivery to a worker that stopped, to another
/// worker, or dropped on the way), so every batch asks the stream first
/// ([`order_questions`]). No lane ever "knows" it holds its tenant's oldest
/// message for good: after a worker dies, its deliveries come back only
/// when their ack wait runs out, while the stream's newer messages reach
/// the next worker at once, first deliveries that nothing marks as
/// suspect. A shortcut that skipped the check once one had passed applied
/// such a newer message before the older one came back, and then took the
/// older one for a duplicate (`tests/ingest.rs`, the SIGKILL test, about
/// one run in five).
#[derive(Debug)]
pub struct Lanes<M> {
    lanes: HashMap<TenantId, Lane<M>>,
    /// Most messages a stalled lane may hold.
    stalled_cap: usize,
    /// Most messages in one batch.
    max_batch: usize,
    /// The highest sequence settled (acked or dead-lettered) per tenant.
    settled: HashMap<TenantId, u64>,
}

impl<M> Lanes<M> {
    pub fn new(stalled_cap: usize, max_batch: usize) -> Self {
        Self {
            lanes: HashMap::new(),
            stalled_cap: stalled_cap.max(1),
            max_batch: max_batch.max(1),
            settled: HashMap::new(),
        }
    }

    /// Take an arriving message. `must_hold`: never defer it (its last
    /// delivery: handed back, the server would not deliver it again). A
    /// deferred message is returned with the outcome, as is the old copy of
    /// a replaced one.
    pub fn arrive(
        &mut self,
        tenant: &TenantId,
        seq: u64,
        message: M,
        must_hold: bool,
        now: Instant,
    ) -> (Arrival, Option<M>) {
        if self.settled.get(tenant).is_some_and(|s| seq <= *s) {
            return (Arrival::Stale, Some(message));
        }
        let lane = self.lanes.entry(tenant.clone()).or_insert_with(Lane::new);
        if let Some(held) = lane.held.get_mut(&seq) {
            let old = std::mem::replace(&mut held.message, message);
            return (Arrival::Replaced, Some(old));
        }
        // A message older than every held one is what a stalled lane may be
        // waiting for: handing it back could make the lane wait forever.
        let oldest = lane.held.keys().next().is_none_or(|first| seq < *first);
        if !must_hold && !oldest && lane.stalled(now) && lane.held.len() >= self.stalled_cap {
            lane.deferred.insert(seq);
            return (Arrival::Deferred, Some(message));
        }
        lane.deferred.remove(&seq);
        lane.held.insert(
            seq,
            Held {
                message,
                attempts: 0,
                applied: false,
                doomed: None,
            },
        );
        (Arrival::Held, None)
    }

    /// Start a batch in every lane that is idle, not stalled and holds
    /// messages: its oldest ones, up to the batch size. Returns the tenants
    /// with the sequences of their batch; [`Lanes::batch`] lends the messages.
    pub fn start(&mut self, now: Instant) -> Vec<(TenantId, Vec<u64>)> {
        let mut started = Vec::new();
        for (tenant, lane) in &mut self.lanes {
            if !lane.running.is_empty() || lane.held.is_empty() || lane.stalled(now) {
                continue;
            }
            lane.wait_until = None;
            // Up to the first message handed back, but at least one: its
            // order check then says whether the handed-back one is still
            // in the stream.
            let limit = lane.deferred.first().copied().unwrap_or(u64::MAX);
            let mut keys = lane.held.keys().copied();
            lane.running = keys.next().into_iter().collect();
            lane.running
                .extend(keys.take_while(|seq| *seq < limit).take(self.max_batch - 1));
            started.push((tenant.clone(), lane.running.clone()));
        }
        started
    }

    /// The held message of `seq`.
    pub fn get(&self, tenant: &TenantId, seq: u64) -> Option<&Held<M>> {
        self.lanes.get(tenant)?.held.get(&seq)
    }

    /// A batch has ended: release what it settled, and stall the lane when
    /// the rest must wait. Returns the released messages.
    pub fn finish(&mut self, tenant: &TenantId, outcome: Outcome, now: Instant) -> Vec<M> {
        let Some(lane) = self.lanes.get_mut(tenant) else {
            return Vec::new();
        };
        if outcome.checked {
            if let Some(first) = lane.running.first().copied() {
                lane.deferred = lane.deferred.split_off(&first);
            }
        }
        lane.running.clear();
        if let Some(max) = outcome.settled.iter().max().copied() {
            if self.settled.len() >= MAX_SETTLED {
                self.settled.clear();
            }
            let upto = self.settled.entry(tenant.clone()).or_insert(0);
            *upto = (*upto).max(max);
        }
        let released: Vec<M> = outcome
            .settled
            .iter()
            .filter_map(|seq| lane.held.remove(seq).map(|h| h.message))
            .collect();
        for seq in &outcome.applied {
            if let Some(held) = lane.held.get_mut(seq) {
                held.applied = true;
            }
        }
        for (seq, error) in outcome.doomed {
            if let Some(held) = lane.held.get_mut(&seq) {
                held.doomed = Some(error);
            }
        }
        if let Some(retry) = outcome.retry {
            lane.wait_until = Some(now + retry.after);
            if retry.count {
                if let Some(oldest) = lane.held.values_mut().next() {
                    oldest.attempts += 1;
                }
            }
        }
        if lane.held.is_empty() && lane.deferred.is_empty() {
            self.lanes.remove(tenant);
        }
        released
    }

    /// Every held message (for progress acks).
    pub fn held(&self) -> impl Iterator<Item = &M> {
        self.lanes
            .values()
            .flat_map(|l| l.held.values().map(|h| &h.message))
    }

    /// Take out every message that is not in a running batch (shutdown).
    pub fn take_idle(&mut self) -> Vec<(M, bool)> {
        let mut out = Vec::new();
        for lane in self.lanes.values_mut() {
            let keep: Vec<u64> = lane.running.clone();
            let idle: Vec<u64> = lane
                .held
                .keys()
                .filter(|s| !keep.contains(s))
                .copied()
                .collect();
            out.extend(
                idle.iter()
                    .filter_map(|s| lane.held.remove(s).map(|h| (h.message, h.applied))),
            );
        }
        self.lanes
            .retain(|_, l| !l.held.is_empty() || !l.running.is_empty());
        out
    }

    /// Whether any batch is running.
    pub fn running(&self) -> bool {
        self.lanes.values().any(|l| !l.running.is_empty())
    }

    /// When the next stalled lane may start again.
    pub fn next_wake(&self) -> Option<Instant> {
        self.lanes
            .values()
            .filter(|l| l.running.is_empty() && !l.held.is_empty())
            .filter_map(|l| l.wait_until)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TenantId {
        TenantId::parse(name).unwrap()
    }

    /// The batch running for `tenant` settled `settled` after its order check.
    fn settle(lanes: &mut Lanes<u64>, tenant: &str, settled: &[u64], now: Instant) -> Vec<u64> {
        let outcome = Outcome {
            settled: settled.to_vec(),
            checked: true,
            ..Outcome::default()
        };
        lanes.finish(&t(tenant), outcome, now)
    }

    #[test]
    fn an_order_check_asks_only_where_a_message_could_hide() {
        assert_eq!(order_questions(&[7]), vec![(0, 0)]);
        // 8 follows 7 directly; 11 could hide 9 or 10 before it.
        assert_eq!(order_questions(&[7, 8, 11, 12]), vec![(0, 0), (2, 9)]);
        assert!(order_questions(&[]).is_empty());
    }

    #[test]
    fn an_order_check_stops_a_batch_at_the_first_gap() {
        let batch = [131, 139, 143];
        let questions = order_questions(&batch);
        assert_eq!(questions, vec![(0, 0), (1, 132), (2, 140)]);
        // 135 is still in the stream, not held here: only 131 may go.
        let answers = [(0, Some(131)), (1, Some(135)), (2, Some(143))];
        assert_eq!(judge_order(&batch, &answers), Order::Prefix(1));
        let answers = [(0, Some(131)), (1, Some(139)), (2, Some(143))];
        assert_eq!(judge_order(&batch, &answers), Order::Prefix(3));
        // A message the batch holds that is gone also ends the prefix.
        let answers = [(0, Some(131)), (1, Some(139)), (2, Some(147))];
        assert_eq!(judge_order(&batch, &answers), Order::Prefix(2));
    }

    #[test]
    fn an_order_check_waits_for_an_older_message_and_drops_a_settled_one() {
        let batch = [131, 132];
        assert_eq!(judge_order(&batch, &[(0, Some(127))]), Order::Older(127));
        assert_eq!(judge_order(&batch, &[(0, Some(132))]), Order::FirstGone);
        assert_eq!(judge_order(&batch, &[(0, None)]), Order::FirstGone);
    }

    #[test]
    fn a_redelivery_of_a_settled_message_is_stale() {
        let now = Instant::now();
        let mut lanes: Lanes<u64> = Lanes::new(16, 64);
        hold(&mut lanes, "a", &[5, 9], now);
        assert_eq!(lanes.start(now), vec![(t("a"), vec![5, 9])]);
        settle(&mut lanes, "a", &[5, 9], now);
        // 5 comes again (its ack was lost): never applied after 9.
        assert!(matches!(
            lanes.arrive(&t("a"), 5, 5, false, now),
            (Arrival::Stale, Some(5))
        ));
        assert!(lanes.start(now).is_empty());
        // A later one is applied as usual; another tenant is unaffected.
        hold(&mut lanes, "a", &[10], now);
        hold(&mut lanes, "b", &[3], now);
        assert_eq!(lanes.start(now).len(), 2);
    }

    /// The batch running for `tenant` must be tried again after `after`.
    fn stall(lanes: &mut Lanes<u64>, tenant: &str, after: Duration, count: bool, now: Instant) {
        let outcome = Outcome {
            retry: Some(Retry { after, count }),
            ..Outcome::default()
        };
        lanes.finish(&t(tenant), outcome, now);
    }

    fn hold(lanes: &mut Lanes<u64>, tenant: &str, seqs: &[u64], now: Instant) {
        for seq in seqs {
            assert_eq!(
                lanes.arrive(&t(tenant), *seq, *seq, false, now).0,
                Arrival::Held
            );
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_lane_applies_its_oldest_messages_first_one_batch_at_a_time() {
        let now = Instant::now();
        let mut lanes = Lanes::new(4, 2);
        hold(&mut lanes, "a", &[7, 3, 5], now);
        assert_eq!(lanes.start(now), vec![(t("a"), vec![3, 5])]);
        // Nothing more starts while the batch runs, even with new messages.
        hold(&mut lanes, "a", &[9], now);
        assert!(lanes.start(now).is_empty());
        assert_eq!(settle(&mut lanes, "a", &[3, 5], now), vec![3, 5]);
        assert_eq!(lanes.start(now), vec![(t("a"), vec![7, 9])]);
    }

    #[test]
    fn a_failed_message_is_retried_before_anything_later_of_its_tenant() {
        let now = Instant::now();
        let mut lanes = Lanes::new(4, 8);
        hold(&mut lanes, "a", &[1, 2], now);
        hold(&mut lanes, "b", &[3], now);
        let mut started = lanes.start(now);
        started.sort();
        assert_eq!(started, vec![(t("a"), vec![1, 2]), (t("b"), vec![3])]);
        // a: message 1 failed, so 2 was not applied either.
        stall(&mut lanes, "a", 1000 * MS, true, now);
        settle(&mut lanes, "b", &[3], now);
        hold(&mut lanes, "b", &[4], now);
        // b goes on; a waits out its delay, then starts from message 1.
        assert_eq!(lanes.start(now), vec![(t("b"), vec![4])]);
        assert_eq!(lanes.get(&t("a"), 1).unwrap().attempts, 1);
        assert_eq!(lanes.next_wake(), Some(now + 1000 * MS));
        assert_eq!(lanes.start(now + 1000 * MS), vec![(t("a"), vec![1, 2])]);
    }

    #[test]
    fn a_stalled_lane_holds_a_bounded_number_of_messages() {
        let now = Instant::now();
        let mut lanes = Lanes::new(2, 8);
        hold(&mut lanes, "a", &[1], now);
        lanes.start(now);
        stall(&mut lanes, "a", 5000 * MS, false, now);
        hold(&mut lanes, "a", &[2], now);
        assert_eq!(
            lanes.arrive(&t("a"), 3, 3, false, now),
            (Arrival::Deferred, Some(3))
        );
        // A last delivery is held all the same; other tenants are not capped.
        assert_eq!(lanes.arrive(&t("a"), 4, 4, true, now).0, Arrival::Held);
        hold(&mut lanes, "b", &[5, 6, 7], now);
        // An older message is held: the lane may be waiting for it.
        hold(&mut lanes, "a", &[0], now);
        // A wait does not count as a try.
        assert_eq!(lanes.get(&t("a"), 1).unwrap().attempts, 0);
    }

    /// Stall lane "a" holding message 1, hand back 2, then hold 3 and 4 and
    /// settle 1: what is left is 3 and 4, with 2 away.
    fn with_two_handed_back(now: Instant) -> Lanes<u64> {
        let mut lanes = Lanes::new(1, 8);
        hold(&mut lanes, "a", &[1], now);
        lanes.start(now);
        stall(&mut lanes, "a", MS, false, now);
        assert_eq!(lanes.arrive(&t("a"), 2, 2, false, now).0, Arrival::Deferred);
        hold(&mut lanes, "a", &[3, 4], now + MS);
        assert_eq!(lanes.start(now + MS), vec![(t("a"), vec![1])]);
        settle(&mut lanes, "a", &[1], now + MS);
        // 3 alone: its order check says whether 2 is still in the stream.
        assert_eq!(lanes.start(now + MS), vec![(t("a"), vec![3])]);
        lanes
    }

    #[test]
    fn a_batch_never_reaches_past_a_message_handed_back() {
        let now = Instant::now();
        let mut lanes = with_two_handed_back(now);
        stall(&mut lanes, "a", MS, false, now + MS);
        // 2 comes back: one batch, in order.
        hold(&mut lanes, "a", &[2], now + 2 * MS);
        assert_eq!(lanes.start(now + 2 * MS), vec![(t("a"), vec![2, 3, 4])]);
    }

    #[test]
    fn a_message_handed_back_and_gone_elsewhere_stops_nothing() {
        let now = Instant::now();
        let mut lanes = with_two_handed_back(now);
        // The check found nothing older: 2 went to another worker.
        settle(&mut lanes, "a", &[3], now + MS);
        assert_eq!(lanes.start(now + MS), vec![(t("a"), vec![4])]);
    }

    #[test]
    fn a_redelivered_copy_replaces_the_held_one() {
        let now = Instant::now();
        let mut lanes = Lanes::new(2, 8);
        lanes.arrive(&t("a"), 1, 10, false, now);
        assert_eq!(
            lanes.arrive(&t("a"), 1, 11, false, now),
            (Arrival::Replaced, Some(10))
        );
        assert_eq!(lanes.get(&t("a"), 1).unwrap().message, 11);
        assert_eq!(lanes.held().count(), 1);
    }

    #[test]
    fn shutdown_takes_what_is_not_running() {
        let now = Instant::now();
        let mut lanes = Lanes::new(8, 1);
        hold(&mut lanes, "a", &[1, 2, 3], now);
        lanes.start(now);
        let mut idle = lanes.take_idle();
        idle.sort();
        assert_eq!(idle, vec![(2, false), (3, false)]);
        assert!(lanes.running());
        settle(&mut lanes, "a", &[1], now);
        assert!(!lanes.running());
        assert_eq!(lanes.held().count(), 0);
    }
}
