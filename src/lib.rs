//! tenantvec: a multi-tenant vector store worker. Every tenant (user) gets an
//! isolated vector store of its own, reached over NATS.
//!
//! # Layers
//!
//! A request travels down this list and its reply back up it. Each line is
//! a layer, top to bottom; a module imports only the modules of the layers
//! below its own, and those of its own layer without a cycle.
//! `tests/architecture.rs` reads `src/` and holds the code to this list.
//!
//! 1. [`worker`]: start-up, and the graceful stop in order; it wires every
//!    layer below.
//! 2. [`client`]: the client half used by the command line, as any client
//!    would talk to a worker: requests, bulk upload, backups
//!    ([`client::backup`]) and dead letters ([`client::deadletter`]).
//! 3. [`transport`]: the NATS side. [`transport::service`] serves the
//!    request-reply verbs through the NATS Services API, all on one
//!    subscription so that a tenant's requests keep their order, with a
//!    bound on requests in flight; [`transport::decode`] turns a body into a
//!    validated command; [`transport::ingest`] consumes the JetStream
//!    ingest stream, each tenant's messages in a lane of
//!    [`transport::lanes`] that applies them in stream order;
//!    [`transport::discovery`] refuses to start a worker that would split
//!    tenants with another one; [`transport::partitions`] spreads tenants'
//!    requests over connections when the NATS server maps them to request
//!    partitions; [`transport::relay`] forwards a request to its
//!    partition's owner and the reply back.
//! 4. [`cluster`]: several workers on one prefix (`cluster.enabled`): which
//!    member should own a partition ([`cluster::assign`]), the leases in
//!    JetStream KV that make an owner and the hand-over
//!    ([`cluster::fleet`]), and each partition's gate ([`cluster::gate`]).
//! 5. [`router`]: where a request of a tenant goes, to its actor directly
//!    when the tenant is warm, else to the supervisor.
//! 6. [`supervisor`]: the actor that starts one [`tenant_actor`] per active
//!    tenant, keeps them in LRU order ([`pool`]), stops the idle and the
//!    least recently used, and keeps the pool's statistics. While a
//!    tenant's actor is closing, requests for it wait here, so a tenant
//!    never has two open stores; while `2 × pool.size` actors hold a store,
//!    requests that would start another wait here too.
//! 7. [`directory`], [`pool`]: the active tenants' addresses (the warm
//!    path), and the pool's LRU order and waiting requests.
//! 8. [`tenant_actor`]: the only owner of a tenant's store while the tenant
//!    is active. Applies the tenant's requests in order: quick reads on its
//!    own thread, the rest on the blocking pool, consecutive upserts as one
//!    durable write ([`tenant_actor::jobs`]).
//! 9. [`command`]: what the transport asks of a tenant
//!    ([`command::Command`] in an [`command::Envelope`]) and where the reply
//!    goes ([`command::ReplyTo`]: straight back over NATS, or to a waiting
//!    task).
//! 10. [`backup`], [`registry`], [`region`]: per-tenant export and import
//!     (JSON lines) through a NATS Object Store bucket, each run by the
//!     tenant's actor as one job; the tenant registry, a record per tenant
//!     in a JetStream KV bucket (settings, embedder, sizes, state, home
//!     region) that every worker reads; and with regions, where each
//!     tenant's home is, from a directory of every region's records.
//! 11. [`metrics`]: the Prometheus figures the layers above record into
//!     (requests, the pool, store and embedder calls, ingest, memory) and
//!     the `/metrics` endpoint that serves them.
//! 12. [`store`], [`embed`]: the [`store::TenantStore`] trait and its
//!     backends ([`store::edge`]: Qdrant Edge shards, a shard per tenant
//!     under `<data>/<tenant>/vector_store/` or one shared by all;
//!     [`store::shard`]: one open shard; [`store::qdrant`]: a Qdrant server;
//!     [`store::payload`]: the stored shape of a document); text to vector
//!     for documents and queries sent without one.
//! 13. [`config`]: the layered settings, a file per section.
//! 14. [`policy`]: a tenant's default `top_k`, document quota and request
//!     rate.
//! 15. [`protocol`], [`names`], [`vector`], [`filter`], [`tenant`],
//!     [`partition`], [`shutdown`], [`memory`], [`crypto`], [`crash`]: the
//!     wire contract, the NATS names of a prefix, vectors on the wire (JSON
//!     arrays or base64 f32), metadata filters, the tenant id rule with the
//!     tenant's paths, a tenant's partition, signals to a cancellation, a
//!     process's memory as the kernel reports it, per-tenant keys (the
//!     master key, wrapped data keys, the kernel's fscrypt), and the crash
//!     tests' crash points (nothing outside their own build).
//!
//! The end-to-end benchmark is a tool, not part of the library: it lives
//! with the command line (`src/bench/`, modules of the binary), a client of
//! a worker it starts.
//!
//! Threads: the supervisor lives on the thread that runs the actix system,
//! tenant actors on `worker.threads` arbiters of their own (round robin);
//! the NATS transport runs on the tokio runtime's worker threads; quick
//! reads run on the tenant actor's thread, other engine work on the blocking
//! pool of the actor's arbiter (with the qdrant backend, a blocking-pool
//! thread waits there for the gRPC reply, which a small runtime of the
//! store's drives). A reply is published from where it is made.
//! NATS connections: one for requests and replies (and one more per
//! request partition, with `nats.request_partitions`), one for ingest (its
//! pulls are bounded, the request subscription's deliveries are not, and
//! the server drops a connection it cannot write to), and in a fleet one
//! for the leases.
//! No state is global: each piece is owned by one actor or handed down from
//! [`worker::run`].

// In the order of the layers above, top to bottom.
pub mod worker;

pub mod client;

pub mod transport;

pub mod cluster;

pub mod router;

pub mod supervisor;

pub mod directory;
pub mod pool;

pub mod tenant_actor;

pub mod command;

pub mod backup;
pub mod region;
pub mod registry;

pub mod metrics;

pub mod embed;
pub mod store;

pub mod config;

pub mod policy;

pub mod crash;
pub mod crypto;
pub mod filter;
pub mod memory;
pub mod names;
pub mod partition;
pub mod protocol;
pub mod shutdown;
pub mod tenant;
pub mod vector;

/// Install the log subscriber: `filter` in tracing-subscriber's env-filter
/// syntax. Logs go to stderr so stdout stays free for command output. Safe to
/// call more than once (later calls do nothing).
pub fn init_tracing(filter: &str) {
    // qdrant-edge 0.7.2 warns on every shard open that process-wide flags
    // were never initialised; the functions that would do it are private to
    // the crate, and its defaults are what we want, so those two notices are
    // kept out of the log unless a filter names them.
    let filter = if filter.contains("qdrant_edge") {
        filter.to_owned()
    } else {
        format!("{filter},qdrant_edge::common::flags=error,qdrant_edge::common::mmap::ops=error")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
