//! Test harness: a real nats-server per test (free loopback port, JetStream
//! in a temp dir), or a cluster of them (`cluster`), a worker in-process or
//! as the built binary, and a client.
//! Every process and folder it makes is owned by a guard that cleans up on
//! drop, also when a test fails.
#![allow(dead_code)]

pub mod cluster;
pub mod embedder;
pub mod qdrant;
pub mod regions;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use tenantvec::client::{Client, ClientError};
use tenantvec::config::Settings;
use tenantvec::protocol::{AdminVerb, ErrorCode, Verb};
use tenantvec::worker::WorkerHandle;

/// The pinned nats-server that scripts/setup installs, or one named by
/// NATS_SERVER_BIN, or one on PATH.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let local = project_dir().join(".tools/venv/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// The checkout the tests run from. Read at run time (cargo sets it for each
/// test process): builds are shared between checkouts through one target
/// folder, and a test binary compiled in another clone would carry that
/// clone's path in `env!("CARGO_MANIFEST_DIR")`.
pub fn project_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A nats-server process with JetStream; killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub store: TempDir,
    config: Option<PathBuf>,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_on(tempfile::tempdir().expect("temp dir"), None)
    }

    /// Start with a config file (its port and store dir are set here).
    pub fn start_with_config(config: PathBuf) -> Self {
        Self::start_on(tempfile::tempdir().expect("temp dir"), Some(config))
    }

    fn start_on(store: TempDir, config: Option<PathBuf>) -> Self {
        let mut server = Self {
            child: None,
            port: 0,
            store,
            config,
        };
        on_free_ports("nats-server", |port| {
            server.port = port;
            server.spawn()
        });
        server
    }

    /// Start the server; `false` when it exited instead of listening.
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new(nats_server_bin());
        if let Some(config) = &self.config {
            cmd.arg("-c").arg(config);
        }
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(self.store.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}); run scripts/setup first",
                nats_server_bin().display()
            )
        });
        wait_child_listening(
            &mut self.child,
            child,
            self.port,
            Duration::from_secs(10),
            "nats-server",
        )
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Start again on the same port with the same JetStream store.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "nats-server did not start again on {}",
            self.port
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Start a server with `start(port)` on a free port, and again on another
/// when it exits instead of listening: a port free when picked can be taken
/// before the server binds it.
pub fn on_free_ports(what: &str, mut start: impl FnMut(u16) -> bool) {
    for _ in 0..5 {
        if start(free_port()) {
            return;
        }
    }
    panic!("{what} did not start on five free ports in a row");
}

/// Whether a connection to the loopback `port` reaches a listener. A connect
/// to a free port in the ephemeral range can meet itself (Linux's
/// simultaneous open: source port = destination port) and succeed with no
/// listener at all; such a connection is not counted.
fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port))
        .is_ok_and(|c| c.local_addr().ok() != c.peer_addr().ok())
}

/// Wait until `child` itself listens on the loopback `port`: `false` when it
/// exits first (the port was taken between `free_port` and its bind, say).
/// Asking whether *something* listens is not enough: another test's server
/// may hold the port while this child, still loading, has yet to fail its bind.
/// The child is kept in `slot` either way, to be killed with it.
pub fn wait_child_listening(
    slot: &mut Option<Child>,
    child: Child,
    port: u16,
    limit: Duration,
    what: &str,
) -> bool {
    let child = slot.insert(child);
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        if accepts(port) && listens(child.id(), port) {
            return true;
        }
        assert!(Instant::now() < deadline, "{what} never listened on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` holds the socket listening on loopback `port`
/// (`/proc/net/tcp`'s listening inode among the process's descriptors).
fn listens(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return true; // not Linux: the connect alone has to do
    };
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let listening = cols.get(1) == Some(&local.as_str()) && cols.get(3) == Some(&"0A");
            Some(format!("socket:[{}]", cols.get(9)?)).filter(|_| listening)
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// Kill a test's child process, if it runs, and reap it.
pub fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Settings for a test worker: the given server, data root and small pool.
pub fn settings(nats_url: &str, data: &Path) -> Settings {
    let mut s = Settings::defaults();
    s.nats.url = nats_url.to_owned();
    s.nats.request_timeout = Duration::from_secs(20);
    // Tests see each failure as it comes; tests/retry.rs turns retries on.
    s.nats.retry_deadline = Duration::ZERO;
    s.store.folder = data.to_owned();
    s.store.dimension = 8;
    s.worker.threads = 2;
    s.log.filter = "warn".into();
    // Tests run side by side: no worker takes the default metrics port.
    s.metrics.listen = String::new();
    s
}

/// A nats-server, a data folder, an in-process worker and a client.
pub struct Harness {
    pub worker: Option<WorkerHandle>,
    pub client: Client,
    pub settings: Settings,
    pub data: TempDir,
    pub nats: NatsServer,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Settings)) -> Self {
        Self::start_on(NatsServer::start(), configure).await
    }

    /// [`Harness::start_with`] on a nats-server the test started.
    pub async fn start_on(nats: NatsServer, configure: impl FnOnce(&mut Settings)) -> Self {
        tenantvec::init_tracing(&std::env::var("TEST_LOG").unwrap_or_else(|_| "error".into()));
        let data = tempfile::tempdir().expect("temp dir");
        let mut settings = settings(&nats.url(), data.path());
        configure(&mut settings);
        let client = Client::connect(&settings).await.expect("client connects");
        let mut h = Self {
            worker: None,
            client,
            settings,
            data,
            nats,
        };
        h.start_worker().await;
        h
    }

    pub async fn start_worker(&mut self) {
        let worker = tenantvec::worker::spawn(self.settings.clone());
        wait_ready(&self.settings, || worker.is_finished()).await;
        self.worker = Some(worker);
    }

    /// Graceful stop of the in-process worker; returns how it ended.
    pub fn stop_worker(&mut self) -> anyhow::Result<()> {
        match self.worker.take() {
            Some(w) => w.stop(),
            None => Ok(()),
        }
    }

    pub async fn call(&self, verb: Verb, tenant: &str, body: Value) -> Result<Value, ClientError> {
        self.client.tenant(verb, tenant, &body).await
    }

    /// A call that must succeed.
    pub async fn ok(&self, verb: Verb, tenant: &str, body: Value) -> Value {
        match self.call(verb, tenant, body).await {
            Ok(v) => v,
            Err(e) => panic!("{verb:?} {tenant}: {e}"),
        }
    }

    /// A call that must fail with `code`.
    pub async fn fails(&self, verb: Verb, tenant: &str, body: Value, code: ErrorCode) -> String {
        match self.call(verb, tenant, body).await {
            Err(ClientError::Service(e)) => {
                assert_eq!(e.code, code, "{verb:?} {tenant}: {}", e.message);
                e.message
            }
            other => panic!("{verb:?} {tenant}: expected {code}, got {other:?}"),
        }
    }

    pub async fn admin(&self, verb: AdminVerb, body: Value) -> Value {
        self.client.admin(verb, &body).await.expect("admin call")
    }

    /// The worker's ingest figures (`admin.stats`).
    pub async fn ingest_stats(&self) -> Value {
        self.admin(AdminVerb::Stats, serde_json::json!({})).await["ingest"].clone()
    }

    /// The ingest figures, asked until `done` says they are what the test
    /// waits for; fails with `what` after `limit`.
    pub async fn ingest_until(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let stats = self.ingest_stats().await;
            if done(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "{what}: {stats}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A plain NATS connection with the harness's settings, for what the
    /// client does not do (raw requests, subscriptions).
    pub async fn nats(&self) -> async_nats::Client {
        tenantvec::transport::connect(&self.settings.nats)
            .await
            .expect("connect to nats-server")
    }

    /// JetStream on a connection of its own, to publish ingest messages.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.nats().await)
    }

    pub fn tenant_dir(&self, tenant: &str) -> PathBuf {
        self.data.path().join(tenant)
    }
}

/// Wait until `$SRV.PING.tenantvec` answers; fail early if the worker died.
pub async fn wait_ready(settings: &Settings, finished: impl Fn() -> bool) {
    let nats = tenantvec::transport::connect(&settings.nats)
        .await
        .expect("connect for readiness");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            !finished(),
            "the worker stopped during start-up (see its log)"
        );
        let ping = tokio::time::timeout(
            Duration::from_millis(500),
            nats.request("$SRV.PING.tenantvec", "".into()),
        )
        .await;
        if let Ok(Ok(_)) = ping {
            return;
        }
        assert!(Instant::now() < deadline, "the worker never answered PING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A deterministic unit vector of `dim` floats from a seed.
pub fn vector(seed: u64, dim: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f32> = (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= n);
    v
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// The binary built for these tests.
pub fn tenantvec_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tenantvec"))
}

/// `tenantvec <args>` (the command line) against the NATS server at
/// `nats_url`, as a child.
pub fn cli_command(nats_url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(tenantvec_bin());
    cmd.args(args)
        .env("NATS_URL", nats_url)
        .env("RUST_LOG", "error");
    cmd
}

/// `cmd` run to its end, which must be a success: its JSON output.
pub fn json_output(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("run tenantvec");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// The built binary as a worker on `nats`, with `data` as its data root and
/// vectors of `dim` dimensions.
pub fn spawn_worker_binary(nats: &NatsServer, data: &Path, dim: usize) -> Child {
    Command::new(tenantvec_bin())
        .arg("serve")
        .env("NATS_URL", nats.url())
        .env("VECTOR_STORE_FOLDER", data)
        .env("EMBEDDING_DIM", dim.to_string())
        .env("TENANTVEC_METRICS_LISTEN", "")
        .env(
            "RUST_LOG",
            std::env::var("WORKER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the tenantvec binary")
}

/// Declare `#[tokio::test]`s `<name>::per_tenant` and `<name>::shared` that
/// run `async fn <name>(layout: Layout)` under each layout of the edge store.
#[macro_export]
macro_rules! both_layouts {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn per_tenant() {
                super::$name(tenantvec::config::Layout::PerTenant).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn shared() {
                super::$name(tenantvec::config::Layout::Shared).await
            }
        }
    )*};
}

/// The default prefix's ingest stream.
pub const INGEST_STREAM: &str = "TENANTVEC_INGEST";

/// Messages left in the ingest stream (`u64::MAX` while it cannot be read).
pub async fn ingest_left(js: &async_nats::jetstream::Context) -> u64 {
    match js.get_stream(INGEST_STREAM).await {
        Ok(mut s) => s.info().await.map_or(u64::MAX, |i| i.state.messages),
        Err(_) => u64::MAX,
    }
}

/// Wait until the ingest stream is empty (every message acked), at most
/// `limit`; a failure says how many were left, then `context()`.
pub async fn wait_ingest_empty(
    js: &async_nats::jetstream::Context,
    limit: Duration,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    loop {
        let left = ingest_left(js).await;
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} ingest messages never acked{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
