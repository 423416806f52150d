//! The [`Router`]: where the transport and ingest hand every request of a
//! tenant, straight to a warm tenant's actor through the [`Directory`],
//! else to the supervisor.
//!
//! Owns that one decision's two outcomes. It must never start or stop an
//! actor, nor send a request to the supervisor that the directory did not
//! count on its way there (the count is what keeps a later request of the
//! tenant off the fast path until the supervisor has taken this one).

use std::sync::Arc;

use actix::Addr;

use crate::command::Envelope;
use crate::directory::Directory;
use crate::supervisor::{Route, Supervisor};

/// Where the transport hands a request: straight to a warm tenant's actor,
/// else to the supervisor.
#[derive(Clone)]
pub struct Router {
    directory: Arc<Directory>,
    supervisor: Addr<Supervisor>,
}

impl Router {
    pub fn new(directory: Arc<Directory>, supervisor: Addr<Supervisor>) -> Self {
        Self {
            directory,
            supervisor,
        }
    }

    pub fn supervisor(&self) -> &Addr<Supervisor> {
        &self.supervisor
    }

    /// Hand `env` on; queued at once, in call order per tenant.
    pub fn route(&self, env: Envelope) {
        if let Some(env) = self.directory.send_or_count(env) {
            self.supervisor.do_send(Route {
                env,
                via_directory: true,
            });
        }
    }
}
