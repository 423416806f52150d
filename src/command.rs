//! The command contract between the transport and the tenant actors: what a
//! validated request asks of a tenant ([`Command`]), the envelope it travels
//! in ([`Envelope`]), and where its outcome goes ([`ReplyTo`]).
//!
//! Owns these types and the promise that every envelope is answered exactly
//! once: a [`ReplyTo`] that is dropped unanswered (a job that panicked, an
//! actor that is gone) answers `internal` itself. It must never decode a body
//! (that is [`crate::transport::decode`]) nor touch a store.

use tokio::sync::oneshot;

use crate::backup::{Backups, ExportRequest, ImportRequest};
use crate::filter::Filter;
use crate::protocol::{Doc, Reply, ServiceError};
use crate::store::Selector;
use crate::tenant::TenantId;
use crate::vector::VectorEncoding;

/// A request's outcome.
pub type Outcome = Result<Reply, ServiceError>;

/// A validated request for one tenant.
#[derive(Debug)]
pub enum Command {
    Upsert(Vec<Doc>),
    /// Consecutive ingest messages of the tenant, in stream order. Each part
    /// gets its own outcome; a part that fails for a reason that may pass
    /// stops the parts after it (they are answered without being written),
    /// so a retry of the rest can never land behind a later message.
    Ingest(Vec<IngestPart>),
    Search(SearchCommand),
    Get {
        doc_ids: Vec<String>,
        with_vectors: bool,
        encoding: VectorEncoding,
    },
    Delete(Selector),
    Count(Option<Filter>),
    Drop,
    /// Write the tenant's export to the backup bucket, as one job.
    Export(Box<ExportRequest>),
    /// Replace the tenant's documents with an export, as one job.
    Import(Box<ImportRequest>),
    /// Rotate the tenant's data key (its data encrypted again), as one job.
    Rekey,
}

impl Command {
    /// Give an export or import command the backup bucket; other commands
    /// pass unchanged.
    pub fn with_backups(self, backups: &Backups) -> Command {
        match self {
            Command::Export(mut r) => {
                r.backups = Some(backups.clone());
                Command::Export(r)
            }
            Command::Import(mut r) => {
                r.backups = Some(backups.clone());
                Command::Import(r)
            }
            other => other,
        }
    }

    /// A write that joins a group commit: an upsert or ingest messages.
    pub fn is_upsert(&self) -> bool {
        matches!(self, Command::Upsert(_) | Command::Ingest(_))
    }

    /// Whether the command changes the tenant's data.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Command::Upsert(_)
                | Command::Ingest(_)
                | Command::Delete(_)
                | Command::Drop
                | Command::Import(_)
        )
    }

    /// How the reply carries vectors.
    pub fn vector_encoding(&self) -> VectorEncoding {
        match self {
            Command::Search(s) => s.encoding,
            Command::Get { encoding, .. } => *encoding,
            _ => VectorEncoding::Array,
        }
    }
}

/// One ingest message inside [`Command::Ingest`].
#[derive(Debug)]
pub struct IngestPart {
    pub docs: Vec<Doc>,
    pub reply: ReplyTo,
    /// The message itself (its stream and sequence): the tenant's applied
    /// mark once it is written, and what says it was written already.
    pub message: crate::store::AppliedMark,
}

#[derive(Debug)]
pub enum QueryInput {
    Text(String),
    Vector(Vec<f32>),
}

#[derive(Debug)]
pub struct SearchCommand {
    pub input: QueryInput,
    /// `None`: the tenant's default, else the worker's.
    pub top_k: Option<usize>,
    pub filter: Option<Filter>,
    pub with_vectors: bool,
    pub encoding: VectorEncoding,
}

/// A command on its way to a tenant, with where its reply goes.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub struct Envelope {
    pub tenant: TenantId,
    pub command: Command,
    pub reply: ReplyTo,
    /// The request's span (tenant and request id): entered while the job
    /// works on it, so whatever it logs on the blocking pool says whose it is.
    pub span: tracing::Span,
}

impl Envelope {
    /// Answer the request with `error`: its reply, and each ingest part's.
    pub fn fail(self, error: ServiceError) {
        if let Command::Ingest(parts) = self.command {
            for part in parts {
                part.reply.send(Err(error.clone()));
            }
        }
        self.reply.send(Err(error));
    }
}

/// What answers a request directly where its outcome is made: the
/// transport's reply to a NATS request implements it, so a tenant actor
/// publishes the reply itself rather than waking a task to do it.
pub trait Respond: Send {
    /// Deliver the outcome. Called at most once.
    fn respond(self: Box<Self>, outcome: Outcome);
}

/// Where a request's outcome goes.
pub struct ReplyTo(Target);

enum Target {
    /// Whoever holds the receiver awaits it (ingest, admin, tests).
    Channel(oneshot::Sender<Outcome>),
    Direct(Box<dyn Respond>),
    Sent,
}

impl std::fmt::Debug for ReplyTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Target::Channel(_) => "ReplyTo::Channel",
            Target::Direct(_) => "ReplyTo::Direct",
            Target::Sent => "ReplyTo::Sent",
        })
    }
}

impl ReplyTo {
    /// A reply awaited on the returned receiver. Dropping the `ReplyTo`
    /// unanswered closes the receiver (its awaiter sees a `RecvError`).
    pub fn channel() -> (Self, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        (Self(Target::Channel(tx)), rx)
    }

    /// A reply delivered by `responder`; dropped unanswered, it answers
    /// `internal`.
    pub fn direct(responder: Box<dyn Respond>) -> Self {
        Self(Target::Direct(responder))
    }

    /// A reply nobody waits for.
    pub fn ignored() -> Self {
        Self(Target::Sent)
    }

    pub fn send(mut self, outcome: Outcome) {
        match std::mem::replace(&mut self.0, Target::Sent) {
            // The receiver may be gone (a caller that gave up): fine.
            Target::Channel(tx) => drop(tx.send(outcome)),
            Target::Direct(r) => r.respond(outcome),
            Target::Sent => {}
        }
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if let Target::Direct(r) = std::mem::replace(&mut self.0, Target::Sent) {
            r.respond(Err(ServiceError::internal(
                "the tenant's job failed; see the worker log",
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Recorder(Arc<Mutex<Vec<Outcome>>>);

    impl Respond for Recorder {
        fn respond(self: Box<Self>, outcome: Outcome) {
            self.0.lock().unwrap().push(outcome);
        }
    }

    #[test]
    fn a_direct_reply_answers_once_and_internal_when_dropped() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        ReplyTo::direct(Box::new(Recorder(seen.clone()))).send(Ok(Reply::Count { count: 1 }));
        drop(ReplyTo::direct(Box::new(Recorder(seen.clone()))));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], Ok(Reply::Count { count: 1 }));
        assert_eq!(
            seen[1].as_ref().unwrap_err().code,
            crate::protocol::ErrorCode::Internal
        );
    }

    #[test]
    fn a_channel_reply_reaches_its_receiver() {
        let (reply, mut rx) = ReplyTo::channel();
        reply.send(Ok(Reply::Dropped { dropped: true }));
        assert_eq!(rx.try_recv().unwrap(), Ok(Reply::Dropped { dropped: true }));
        let (reply, mut rx) = ReplyTo::channel();
        drop(reply);
        assert!(rx.try_recv().is_err());
    }
}
