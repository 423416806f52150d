//! Forwarding a request to its partition's owner, and its reply back.
//!
//! Owns the requests this worker has forwarded and not yet seen answered.
//! A request goes to the owner with a reply subject of this worker's (one
//! relay inbox, a number per request), published in place so that forwards
//! leave in arrival order; the owner's reply comes back here and goes on,
//! body and headers unchanged, to the client's reply subject. The cost is
//! one hop more than a forward with the client's own reply subject; what it
//! buys: when the owner is gone (killed, its lease not yet expired), NATS
//! answers the forward with "no responders", which only the forwarder can
//! see, and the request, known to be undelivered, waits for the next owner
//! instead of timing out at the client. It must never answer a request
//! twice, nor drop one: every entry ends in a relayed reply, a re-route, or
//! after `nats.request_timeout` an `unavailable` reply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};

/// A request forwarded and not yet answered.
pub struct Forwarded {
    /// The request as it reached this worker (original subject, the
    /// client's reply subject).
    pub message: async_nats::Message,
    /// Where it went.
    pub owner: String,
    sent: Instant,
    /// The forwarder's in-flight permit: a stop waits for the reply.
    pub permit: tokio::sync::OwnedSemaphorePermit,
}

/// What became of a forwarded request.
pub enum Relayed {
    /// The owner answered; the reply went to the client.
    Answered,
    /// Nobody listens for the owner any more: route it again, avoiding it.
    Undelivered(Box<Forwarded>),
    /// Not ours, or answered already.
    Unknown,
}

pub struct Relay {
    client: async_nats::Client,
    inbox: String,
    next: AtomicU64,
    pending: Mutex<HashMap<u64, Forwarded>>,
}

impl Relay {
    /// A relay with an inbox of its own (under `nats.inbox_prefix`, as the
    /// worker's permissions allow); `subscribe` must be called before the
    /// first forward.
    pub fn new(client: async_nats::Client) -> Self {
        let inbox = client.new_inbox();
        Self {
            client,
            inbox,
            next: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
        }
    }

    pub async fn subscribe(&self) -> anyhow::Result<async_nats::Subscriber> {
        let subject = format!("{}.*", self.inbox);
        self.client
            .subscribe(subject.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot subscribe {subject}: {e}"))
    }

    /// Forward `message` to `subject` (the owner's), headers `headers`.
    /// Published in place when the connection's queue has room, else by a
    /// task of `runtime`.
    pub fn forward(
        self: &Arc<Self>,
        subject: String,
        owner: &str,
        headers: async_nats::HeaderMap,
        message: async_nats::Message,
        permit: tokio::sync::OwnedSemaphorePermit,
        runtime: &tokio::runtime::Handle,
    ) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let reply = format!("{}.{id}", self.inbox);
        let payload = message.payload.clone();
        self.lock().insert(
            id,
            Forwarded {
                message,
                owner: owner.to_owned(),
                sent: Instant::now(),
                permit,
            },
        );
        let client = self.client.clone();
        let publish = async move {
            if let Err(e) = client
                .publish_with_reply_and_headers(subject, reply, headers, payload)
                .await
            {
                // The entry stays: the sweep answers it.
                tracing::warn!(error = %e, "cannot forward a request to its partition's owner");
            }
        };
        let mut publish = Box::pin(publish);
        if (&mut publish).now_or_never().is_none() {
            runtime.spawn(publish);
        }
    }

    /// Take a reply that reached the relay inbox.
    pub async fn relay(&self, reply: async_nats::Message) -> Relayed {
        let id = reply
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .and_then(|t| t.parse::<u64>().ok());
        let Some(forwarded) = id.and_then(|id| self.lock().remove(&id)) else {
            return Relayed::Unknown;
        };
        if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            return Relayed::Undelivered(Box::new(forwarded));
        }
        let Some(to) = forwarded.message.reply.clone() else {
            return Relayed::Answered;
        };
        let sent = match reply.headers {
            Some(h) => self.client.publish_with_headers(to, h, reply.payload).await,
            None => self.client.publish(to, reply.payload).await,
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "relayed reply not sent");
        }
        Relayed::Answered
    }

    /// Forwards unanswered for longer than `limit`, or for longer than a
    /// second by an owner that no longer owns their partition (`moved`):
    /// the owner died with them, or never answered. Removed; the caller
    /// answers them. (A graceful owner answers every request it took before
    /// it gives its partition up, so a reply still missing a second after
    /// the lease moved is not coming.)
    pub fn expired(&self, limit: Duration, moved: impl Fn(&Forwarded) -> bool) -> Vec<Forwarded> {
        let mut pending = self.lock();
        let old: Vec<u64> = pending
            .iter()
            .filter(|(_, f)| {
                let age = f.sent.elapsed();
                age >= limit || (age >= Duration::from_secs(1) && moved(f))
            })
            .map(|(id, _)| *id)
            .collect();
        old.iter().filter_map(|id| pending.remove(id)).collect()
    }

    /// Forwards not yet answered.
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Forwarded>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Take replies from the relay inbox until it closes, handing undelivered
/// forwards to `reroute`; answer forwards older than `limit` through
/// `expire`, checked every second.
pub async fn run(
    relay: Arc<Relay>,
    mut replies: async_nats::Subscriber,
    limit: Duration,
    moved: impl Fn(&Forwarded) -> bool,
    reroute: impl Fn(Forwarded),
    expire: impl Fn(Forwarded),
) {
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            next = replies.next() => match next {
                Some(reply) => {
                    if let Relayed::Undelivered(f) = relay.relay(reply).await {
                        tracing::debug!(owner = %f.owner, "forward undelivered (the owner is gone); routing again");
                        reroute(*f);
                    }
                }
                None => return,
            },
            _ = sweep.tick() => {
                for f in relay.expired(limit, &moved) {
                    expire(f);
                }
            }
        }
    }
}
