//! Crashes at the worst moments of durable ingest, through the worker's
//! crash points (`src/crash.rs`, tikv's `fail` crate): after a write and
//! before its ack; an ack lost, its batch's later acks confirmed, then the
//! crash; between one batch's acks and the next; in the middle of a shard's
//! close. Each test kills the worker there (SIGKILL, sent by itself), starts
//! a worker without crash points on the same data and stream, and checks
//! every document at its last version.
//!
//! The crashing worker is the binary built with `--features failpoints`
//! (`scripts/test` builds it as `tenantvec-failpoints` beside `tenantvec`,
//! or `TENANTVEC_FAILPOINTS_BIN` names one). Without it the tests say so and
//! pass without running, and fail under `CI=true`.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::{vector, NatsServer};
use serde_json::{json, Value};
use tenantvec::protocol::Verb;

const DIM: usize = 8;

/// The worker with crash points, or `None` after saying why not.
fn failpoints_bin(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("TENANTVEC_FAILPOINTS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::tenantvec_bin().with_file_name("tenantvec-failpoints"));
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "no worker with crash points at {} (scripts/test builds it: \
         cargo build --release --features failpoints, copied to that name)",
        path.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    None
}

/// Where the worker keeps its data, and how it is configured.
struct Setup {
    nats: NatsServer,
    data: tempfile::TempDir,
    config: PathBuf,
    /// `(variable, value)` for the store: layout, backend.
    store_env: Vec<(String, String)>,
    _qdrant: Option<common::qdrant::Space>,
}

impl Setup {
    /// A nats-server, a data folder and a settings file: redelivery after
    /// 2 s (not the default minute), a pool of `pool` tenants.
    fn new(store_env: Vec<(String, String)>, pool: usize) -> Self {
        let nats = NatsServer::start();
        let data = tempfile::tempdir().expect("temp dir");
        let config = data.path().join("worker.toml");
        std::fs::write(
            &config,
            format!("[ingest]\nack_wait = \"2s\"\n\n[pool]\nsize = {pool}\n"),
        )
        .expect("write the settings file");
        Self {
            nats,
            data,
            config,
            store_env,
            _qdrant: None,
        }
    }

    fn layout(layout: &str) -> Vec<(String, String)> {
        vec![("TENANTVEC_LAYOUT".into(), layout.into())]
    }

    /// A worker of `bin` on this setup, its log in `<data>/<log>`; with
    /// `FAILPOINTS` set to `failpoints`.
    fn spawn(&self, bin: &Path, failpoints: &str, log: &str) -> Child {
        let file = std::fs::File::create(self.data.path().join(log)).expect("log file");
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("NATS_URL", self.nats.url())
            .env("VECTOR_STORE_FOLDER", self.data.path().join("store"))
            .env("EMBEDDING_DIM", DIM.to_string())
            .env("TENANTVEC_METRICS_LISTEN", "")
            .env(
                "RUST_LOG",
                std::env::var("WORKER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("FAILPOINTS", failpoints)
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        for (k, v) in &self.store_env {
            cmd.env(k, v);
        }
        cmd.spawn().expect("start the worker")
    }

    /// The worker with crash points `failpoints` on, until it dies of one.
    fn crash(&self, bin: &Path, failpoints: &str) {
        wait_killed(
            self.spawn(bin, failpoints, "crashed.log"),
            self,
            "crashed.log",
        );
    }

    /// A worker without crash points on the same data and stream, once it
    /// serves and the stream is empty; and a client.
    async fn recover(&self, js: &jetstream::Context) -> (Worker, tenantvec::client::Client) {
        let worker = Worker(self.spawn(&common::tenantvec_bin(), "", "after.log"));
        self.wait_ready().await;
        wait_drained(js, self, "after.log").await;
        (worker, self.client().await)
    }

    fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.data.path().join(log)).unwrap_or_default()
    }

    /// Until a worker answers.
    async fn wait_ready(&self) {
        let settings = common::settings(&self.nats.url(), self.data.path());
        common::wait_ready(&settings, || false).await;
    }

    async fn jetstream(&self) -> jetstream::Context {
        let client = async_nats::connect(self.nats.url()).await.expect("connect");
        jetstream::new(client)
    }

    async fn client(&self) -> tenantvec::client::Client {
        let settings = common::settings(&self.nats.url(), self.data.path());
        tenantvec::client::Client::connect(&settings)
            .await
            .expect("client connects")
    }
}

/// A worker process, killed when dropped.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The stream and its consumer as a worker makes them, before any worker
/// runs, so that messages published now wait for the first one.
async fn make_stream(setup: &Setup) {
    let mut settings = common::settings(&setup.nats.url(), setup.data.path());
    settings.ingest.ack_wait = Duration::from_secs(2);
    let client = tenantvec::transport::connect(&settings.nats)
        .await
        .expect("connect");
    let js = jetstream::new(client);
    let names = match settings.ingest.partitioned() {
        true => tenantvec::names::Names::partitioned(
            &settings.storage_prefix(),
            settings.cluster.partitions,
        ),
        false => tenantvec::names::Names::new(&settings.storage_prefix()),
    };
    tenantvec::transport::ingest::ensure_streams(&js, &names, &settings.ingest, 1)
        .await
        .expect("make the ingest stream");
}

/// One ingest message: version `v` of each of `docs`, its version in its
/// metadata.
async fn publish(js: &jetstream::Context, tenant: &str, docs: &[&str], v: u64) {
    let documents: Vec<Value> = docs
        .iter()
        .map(|d| json!({"doc_id": d, "vector": vector(v, DIM), "metadata": {"v": v}}))
        .collect();
    js.publish(
        format!("tenantvec.ingest.{tenant}"),
        serde_json::to_vec(&json!({ "documents": documents }))
            .unwrap()
            .into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored by JetStream");
}

/// Wait for `worker` to die of its crash point (SIGKILL): the test's
/// positive control that the crash happened where it was meant to.
fn wait_killed(mut worker: Child, setup: &Setup, log: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = worker.try_wait().expect("wait") {
            assert_eq!(
                status.signal(),
                Some(9),
                "the worker ended without its crash ({status}); its log:\n{}",
                setup.log(log)
            );
            assert!(setup.log(log).contains("crash point"), "{}", setup.log(log));
            return;
        }
        if Instant::now() > deadline {
            let _ = worker.kill();
            panic!(
                "the crash point never fired; the worker's log:\n{}",
                setup.log(log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn left(js: &jetstream::Context) -> u64 {
    common::ingest_left(js).await
}

async fn wait_drained(js: &jetstream::Context, setup: &Setup, log: &str) {
    let context = || format!("; the worker's log:\n{}", setup.log(log));
    common::wait_ingest_empty(js, Duration::from_secs(60), context).await
}

/// The version each of `docs` of `tenant` is at (`None`: missing).
async fn versions(
    client: &tenantvec::client::Client,
    tenant: &str,
    docs: &[&str],
) -> Vec<Option<u64>> {
    let got = client
        .tenant(Verb::Get, tenant, &json!({ "doc_ids": docs }))
        .await
        .expect("get");
    docs.iter()
        .map(|d| {
            got["documents"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|doc| doc["doc_id"] == *d)
                .and_then(|doc| doc["metadata"]["v"].as_u64())
        })
        .collect()
}

/// An ack lost (the connection cut between worker and server), the later
/// acks of its batch confirmed, then the crash: the message comes again
/// after the ack wait, to a worker that never saw it, after the later one
/// of its tenant was written. The tenant's applied mark, read back from its
/// store, says it is written already: it is acked, never written again over
/// the later version.
async fn a_lost_ack_then_a_crash_never_puts_an_old_version_back(setup: Setup, test: &str) {
    let Some(bin) = failpoints_bin(test) else {
        return;
    };
    make_stream(&setup).await;
    let js = setup.jetstream().await;
    // A first message with many documents keeps the tenant's first batch
    // busy while the next two arrive: they make its second batch together.
    let bulk: Vec<String> = (0..500).map(|i| format!("bulk-{i}")).collect();
    let bulk: Vec<&str> = bulk.iter().map(String::as_str).collect();
    publish(&js, "t", &bulk, 1).await;
    publish(&js, "t", &["d"], 2).await;
    publish(&js, "t", &["d"], 3).await;
    setup.crash(
        &bin,
        "ingest-lose-ack=1*return;ingest-after-lost-ack=return",
    );
    assert!(left(&js).await > 0, "nothing was left to come again");

    let (_worker, client) = setup.recover(&js).await;
    assert_eq!(
        versions(&client, "t", &["d"]).await,
        vec![Some(3)],
        "the crashed worker's log:\n{}\nthe next one's:\n{}",
        setup.log("crashed.log"),
        setup.log("after.log")
    );
    let count = client
        .tenant(Verb::Count, "t", &json!({}))
        .await
        .expect("count");
    assert_eq!(count["count"], 501, "the mark is never counted");
    let log = setup.log("after.log");
    assert!(
        log.contains("not written again"),
        "the lost ack's message never came again to the new worker; its log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_then_a_crash_never_puts_an_old_version_back_per_tenant() {
    a_lost_ack_then_a_crash_never_puts_an_old_version_back(
        Setup::new(Setup::layout("per_tenant"), 10),
        "a_lost_ack_then_a_crash_never_puts_an_old_version_back_per_tenant",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_then_a_crash_never_puts_an_old_version_back_shared() {
    a_lost_ack_then_a_crash_never_puts_an_old_version_back(
        Setup::new(Setup::layout("shared"), 10),
        "a_lost_ack_then_a_crash_never_puts_an_old_version_back_shared",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_then_a_crash_never_puts_an_old_version_back_on_qdrant() {
    let test = "a_lost_ack_then_a_crash_never_puts_an_old_version_back_on_qdrant";
    let Some(url) = common::qdrant::url_or_skip(test) else {
        return;
    };
    let space = common::qdrant::Space::new(&url);
    let mut env = Setup::layout("per_tenant");
    env.push(("TENANTVEC_BACKEND".into(), "qdrant".into()));
    env.push(("QDRANT_URL".into(), url.clone()));
    env.push(("QDRANT_COLLECTION_PREFIX".into(), space.prefix.clone()));
    let mut setup = Setup::new(env, 10);
    setup._qdrant = Some(space);
    a_lost_ack_then_a_crash_never_puts_an_old_version_back(setup, test).await
}

/// Killed after a batch is written and before any of its acks: every
/// message of it comes again, and the mark says each is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_write_before_the_ack_loses_and_reorders_nothing() {
    let test = "a_crash_after_the_write_before_the_ack_loses_and_reorders_nothing";
    let Some(bin) = failpoints_bin(test) else {
        return;
    };
    let setup = Setup::new(Setup::layout("per_tenant"), 10);
    make_stream(&setup).await;
    let js = setup.jetstream().await;
    let docs = ["a", "b", "c"];
    for v in 1..=30u64 {
        publish(&js, "t", &docs[..(v % 3 + 1) as usize], v).await;
    }
    setup.crash(&bin, "ingest-after-write=return");

    let (_worker, client) = setup.recover(&js).await;
    // The last message to write each: a at 30 (30 % 3 = 0 writes a), b at
    // 29, c at 29 (29 % 3 = 2 writes all three).
    assert_eq!(
        versions(&client, "t", &docs).await,
        vec![Some(30), Some(29), Some(29)]
    );
    assert!(
        setup.log("after.log").contains("not written again"),
        "the batch written before the crash never came again; its log:\n{}",
        setup.log("after.log")
    );
}

/// Killed between one batch's acks and the next batch: what was acked is
/// there, what was not comes again and is written in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_batches_loses_and_reorders_nothing() {
    let test = "a_crash_between_batches_loses_and_reorders_nothing";
    let Some(bin) = failpoints_bin(test) else {
        return;
    };
    let setup = Setup::new(Setup::layout("per_tenant"), 10);
    make_stream(&setup).await;
    let js = setup.jetstream().await;
    for v in 1..=40u64 {
        publish(&js, &format!("t{}", v % 2), &["a", "b"], v).await;
    }
    setup.crash(&bin, "ingest-after-acks=1*off->return");
    assert!(
        left(&js).await > 0,
        "everything was written before the crash"
    );

    let (_worker, client) = setup.recover(&js).await;
    assert_eq!(
        versions(&client, "t0", &["a", "b"]).await,
        vec![Some(40), Some(40)]
    );
    assert_eq!(
        versions(&client, "t1", &["a", "b"]).await,
        vec![Some(39), Some(39)]
    );
}

/// Killed in the middle of a shard's close (an eviction: the pool holds one
/// tenant, and a second one arrives), before the engine's last flush: every
/// acknowledged write is there when the tenant opens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_close_loses_nothing() {
    let test = "a_crash_during_a_close_loses_nothing";
    let Some(bin) = failpoints_bin(test) else {
        return;
    };
    let setup = Setup::new(Setup::layout("per_tenant"), 1);
    make_stream(&setup).await;
    let js = setup.jetstream().await;
    let worker = setup.spawn(&bin, "shard-close=return", "crashed.log");
    setup.wait_ready().await;
    for v in 1..=10u64 {
        publish(&js, "first", &["a", "b"], v).await;
    }
    wait_drained(&js, &setup, "crashed.log").await;
    // The second tenant's write evicts the first: its close crashes.
    let client = setup.client().await;
    let _ = client
        .tenant(
            Verb::Upsert,
            "second",
            &json!({"documents": [{"doc_id": "x", "vector": vector(1, DIM)}]}),
        )
        .await;
    wait_killed(worker, &setup, "crashed.log");

    let (_worker, client) = setup.recover(&js).await;
    assert_eq!(
        versions(&client, "first", &["a", "b"]).await,
        vec![Some(10), Some(10)]
    );
}
